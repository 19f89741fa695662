"""The one place that turns (user, posts, time) into a model's input matrix.

Training builds every row with `assemble`, and the service builds every request with it, so what a
model learned is exactly what it is served. Inputs are `FeatureTables`: per-user and per-post arrays
computed from events before a cut-off (`as_of`), plus each user's full like history for exclusion.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from pathlib import Path

import numpy as np

from app import columns as c

N_TOPICS = len(c.TOPICS)
SECONDS_PER_DAY = 86_400

# Columns of FeatureTables.user_num, in order.
USER_NUM = (
    c.GENDER, c.AGE, "country_code", "os_ios", "source_organic", c.EXP_GROUP,
    "city_like_rate", "city_users_log",
    "u_views", "u_likes", "u_like_rate", "u_active_days",
    *(f"u_view_share_{t}" for t in c.TOPICS),
    *(f"u_like_rate_{t}" for t in c.TOPICS),
)
# Columns of FeatureTables.post_num (control); the text block is FeatureTables.post_text.
TFIDF_COMPONENTS = 10
TFIDF_CLUSTERS = 8
POST_NUM = (
    "topic_code", "text_len_log", "words_log", "p_views", "p_likes", "p_like_rate",
    *(f"tfidf_pc{i}" for i in range(TFIDF_COMPONENTS)),
    *(f"tfidf_dist{i}" for i in range(TFIDF_CLUSTERS)),
)
EMB_COMPONENTS = 16
POST_TEXT = tuple(f"emb_pc{i}" for i in range(EMB_COMPONENTS))
TIME = ("hour", "weekday", "u_days_since_last_view", "u_days_since_first_view")
CROSS = ("u_like_rate_post_topic", "u_view_share_post_topic", "u_like_lift_post_topic")
TEXT_CROSS = ("sim_liked", "sim_contrast", "sim_liked_topic", "sim_tfidf_topic")

CONTROL_FEATURES = (*USER_NUM, *POST_NUM, *TIME, *CROSS)
TEST_FEATURES = (*CONTROL_FEATURES, *POST_TEXT, *TEXT_CROSS)

_U_RATE = USER_NUM.index("u_like_rate")
_U_SHARE0 = USER_NUM.index(f"u_view_share_{c.TOPICS[0]}")
_U_RATE0 = USER_NUM.index(f"u_like_rate_{c.TOPICS[0]}")


def feature_names(text: bool) -> tuple[str, ...]:
    return TEST_FEATURES if text else CONTROL_FEATURES


@dataclass
class FeatureTables:
    """Arrays indexed by row; `user_ids` and `post_ids` are sorted and map ids to rows."""

    as_of: int  # features use events strictly before this second
    user_ids: np.ndarray  # (U,) int64
    user_num: np.ndarray  # (U, len(USER_NUM)) float32
    user_first_view: np.ndarray  # (U,) int64, -1 if none before as_of
    user_last_view: np.ndarray  # (U,) int64, -1 if none
    user_vec: np.ndarray  # (U, d) float16: mean text vector of posts liked before as_of, unit length
    user_contrast: np.ndarray  # (U, d) float16: liked mean minus seen-not-liked mean, unit length
    user_topic_vec: np.ndarray  # (U, n_topics, d) float16: shrunk mean of liked posts' post_vec per topic
    user_topic_tfidf: np.ndarray  # (U, n_topics, d) float16: the same over post_tfidf_vec
    post_ids: np.ndarray  # (P,) int64
    post_num: np.ndarray  # (P, len(POST_NUM)) float32
    post_text: np.ndarray  # (P, EMB_COMPONENTS) float32
    post_vec: np.ndarray  # (P, d) float32: sentence embedding relative to its topic centre, unit length
    post_tfidf_vec: np.ndarray  # (P, d) float32: TF-IDF components relative to the topic centre, unit length
    post_topic: np.ndarray  # (P,) int64 topic code
    likes_indptr: np.ndarray  # (U+1,) int64: user row i's likes are [indptr[i], indptr[i+1])
    likes_post: np.ndarray  # int32 post ids, each user's likes in time order (all likes known, any time)
    likes_ts: np.ndarray  # like times, int64 seconds

    def save(self, path: Path) -> None:
        np.savez(path, **{f.name: np.asarray(getattr(self, f.name)) for f in fields(self)})

    @classmethod
    def load(cls, path: Path) -> FeatureTables:
        with np.load(path) as data:
            kwargs = {f.name: data[f.name] for f in fields(cls)}
        kwargs["as_of"] = int(kwargs["as_of"])
        return cls(**kwargs)

    def user_row(self, user_ids: np.ndarray) -> np.ndarray:
        """Rows of known users; -1 for ids the tables do not hold."""
        user_ids = np.asarray(user_ids, dtype=np.int64)
        idx = np.clip(np.searchsorted(self.user_ids, user_ids), 0, max(len(self.user_ids) - 1, 0))
        found = (len(self.user_ids) > 0) & (self.user_ids[idx] == user_ids)
        return np.where(found, idx, -1)

    def post_row(self, post_ids: np.ndarray) -> np.ndarray:
        post_ids = np.asarray(post_ids, dtype=np.int64)
        idx = np.clip(np.searchsorted(self.post_ids, post_ids), 0, len(self.post_ids) - 1)
        if not np.all(self.post_ids[idx] == post_ids):
            raise KeyError("post id not in the feature tables")
        return idx

    def liked_before(self, user_row: int, ts: int) -> np.ndarray:
        """Post ids the user liked strictly before `ts`."""
        lo, hi = self.likes_indptr[user_row], self.likes_indptr[user_row + 1]
        cut = lo + np.searchsorted(self.likes_ts[lo:hi], ts, side="left")
        return self.likes_post[lo:cut]


def _time_block(tables: FeatureTables, ui: np.ndarray, ts: np.ndarray) -> np.ndarray:
    days = ts // SECONDS_PER_DAY
    hour = (ts // 3600) % 24
    weekday = (days + 3) % 7  # 1970-01-01 was a Thursday; Monday = 0
    last, first = tables.user_last_view[ui], tables.user_first_view[ui]
    since_last = np.where(last >= 0, (ts - last) / SECONDS_PER_DAY, np.nan)
    since_first = np.where(first >= 0, (ts - first) / SECONDS_PER_DAY, np.nan)
    return np.stack(np.broadcast_arrays(hour, weekday, since_last, since_first), axis=-1)


def _rowwise(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.einsum("nd,nd->n", a, b)


def assemble(tables: FeatureTables, ui: np.ndarray, pj: np.ndarray | None, ts: np.ndarray, text: bool) -> np.ndarray:
    """Feature matrix (n, n_features) float32, column-major, for user rows `ui`, post rows `pj` at times `ts`.

    The three arguments broadcast: a request is one user row and one time against every post row
    (`pj=None`: all posts in table order, read in place rather than gathered); a training batch has one
    entry per row. Columns follow `feature_names(text)`.
    """
    ui, ts = np.asarray(ui, dtype=np.int64), np.asarray(ts, dtype=np.int64)
    # a slice selects without copying; an index array gathers
    posts = slice(None) if pj is None else np.asarray(pj, dtype=np.int64)
    posts_shape = (len(tables.post_ids),) if pj is None else posts.shape
    n = np.broadcast_shapes(ui.shape, posts_shape, ts.shape)
    n_rows = n[0] if n else 1
    user = tables.user_num[ui]
    topic = tables.post_topic[posts]
    if ui.ndim == 0:  # one user: gather from its row only
        rate_t = user[_U_RATE0 + topic]
        share_t = user[_U_SHARE0 + topic]
        u_rate = user[_U_RATE]
    else:
        rate_t = user[np.arange(len(ui)), _U_RATE0 + topic]
        share_t = user[np.arange(len(ui)), _U_SHARE0 + topic]
        u_rate = user[:, _U_RATE]
    blocks = [
        np.broadcast_to(user, (n_rows, user.shape[-1])),
        np.broadcast_to(tables.post_num[posts], (n_rows, tables.post_num.shape[1])),
        np.broadcast_to(_time_block(tables, ui, ts), (n_rows, len(TIME))),
        np.stack(np.broadcast_arrays(rate_t, share_t, rate_t - u_rate), axis=-1).reshape(n_rows, len(CROSS)),
    ]
    if text:
        pvec, tvec = tables.post_vec[posts], tables.post_tfidf_vec[posts]
        if ui.ndim == 0:  # one user: convert its vectors once; the same row-wise products as a batch
            sim = _rowwise(pvec, np.broadcast_to(tables.user_vec[ui].astype(np.float32), pvec.shape))
            contrast = _rowwise(pvec, np.broadcast_to(tables.user_contrast[ui].astype(np.float32), pvec.shape))
            sim_topic = _rowwise(pvec, tables.user_topic_vec[ui].astype(np.float32)[topic])
            sim_tfidf = _rowwise(tvec, tables.user_topic_tfidf[ui].astype(np.float32)[topic])
        else:
            sim = _rowwise(pvec, tables.user_vec[ui].astype(np.float32))
            contrast = _rowwise(pvec, tables.user_contrast[ui].astype(np.float32))
            sim_topic = _rowwise(pvec, tables.user_topic_vec[ui, topic].astype(np.float32))
            sim_tfidf = _rowwise(tvec, tables.user_topic_tfidf[ui, topic].astype(np.float32))
        blocks.append(np.broadcast_to(tables.post_text[posts], (n_rows, EMB_COMPONENTS)))
        blocks.append(np.stack(np.broadcast_arrays(sim, contrast, sim_topic, sim_tfidf), axis=-1)
                      .reshape(n_rows, len(TEXT_CROSS)))
    # column-major: CatBoost reads features column by column, and converting a row-major matrix
    # took about as long as scoring it (bench/catboost_layout.py)
    out = np.empty((n_rows, sum(b.shape[1] for b in blocks)), dtype=np.float32, order="F")
    return np.concatenate(blocks, axis=1, out=out)
