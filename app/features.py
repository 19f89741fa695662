"""The one place that turns (user, posts, time) into a model's input matrix.

Training builds every row with `assemble`, and the service builds every request with it, so what a
model learned is exactly what it is served. Its inputs are a `UserView` (the user side as of the
request's moment, from `app.user_state`) and a `PostView` (the catalogue with its counters as of the
same moment, from `app.post_counters`); `finalize_users` and `finalize_posts` turn the event counts
both sides keep into feature values, with the artifact's fitted `Priors`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import ClassVar

import numpy as np
import pandas as pd

from app import columns as c

N_TOPICS = len(c.TOPICS)
SECONDS_PER_DAY = 86_400

# Profile block: what a user_data row says, plus the city's fitted prior (see Priors).
PROFILE = (c.GENDER, c.AGE, "country_code", "os_ios", "source_organic", c.EXP_GROUP,
           "city_like_rate", "city_users_log")
# Columns of UserView.num, in order.
USER_NUM = (
    *PROFILE,
    "u_views", "u_likes", "u_like_rate", "u_active_days",
    *(f"u_view_share_{t}" for t in c.TOPICS),
    *(f"u_like_rate_{t}" for t in c.TOPICS),
)
TFIDF_COMPONENTS = 10
TFIDF_CLUSTERS = 8
# Post columns that never change, then the counters that follow the feed (PostView.counters).
POST_STATIC = (
    "topic_code", "text_len_log", "words_log",
    *(f"tfidf_pc{i}" for i in range(TFIDF_COMPONENTS)),
    *(f"tfidf_dist{i}" for i in range(TFIDF_CLUSTERS)),
)
POST_COUNTERS = ("p_views", "p_likes", "p_like_rate")
POST_NUM = (*POST_STATIC, *POST_COUNTERS)
EMB_COMPONENTS = 16
POST_TEXT = tuple(f"emb_pc{i}" for i in range(EMB_COMPONENTS))
TIME = ("hour", "weekday", "u_days_since_last_view", "u_days_since_first_view")
CROSS = ("u_like_rate_post_topic", "u_view_share_post_topic", "u_like_lift_post_topic", "sim_cf")
CF_DIM = 32  # collaborative post vectors (`training.collaborative`)
TEXT_CROSS = ("sim_liked", "sim_contrast", "sim_liked_topic", "sim_tfidf_topic")

CONTROL_FEATURES = (*USER_NUM, *POST_NUM, *TIME, *CROSS)
TEST_FEATURES = (*CONTROL_FEATURES, *POST_TEXT, *TEXT_CROSS)

_U_RATE = USER_NUM.index("u_like_rate")
_U_SHARE0 = USER_NUM.index(f"u_view_share_{c.TOPICS[0]}")
_U_RATE0 = USER_NUM.index(f"u_like_rate_{c.TOPICS[0]}")

# Smoothing weights (pseudo-views) toward a prior rate.
PRIOR_VIEWS_USER = 20  # toward the global like rate
PRIOR_VIEWS_TOPIC = 10  # toward the user's own rate
PRIOR_VIEWS_POST = 200
PRIOR_VIEWS_CITY = 2000
# A view's weight in the post's like rate (`Priors.view_weight`), in thousandths, capped so that a
# weight fits 14 bits of `app.post_counters.ViewIndex`'s sort key.
WEIGHT_UNIT = 1000
MAX_WEIGHT = 16_383
TOPIC_VEC_PRIOR = 2.0  # pseudo-likes pulling a user's per-topic taste vector toward zero


def feature_names(text: bool) -> tuple[str, ...]:
    return TEST_FEATURES if text else CONTROL_FEATURES


# --------------------------------------------------------------------------------------- user side
# Columns of the per-user event counts (`app.user_state.fold_user`), int64: additive over events
# except first/last view (min/max, -1 = none) and active days (distinct days, kept exact with the
# day lists of `app.user_state`).
COUNT_VIEWS, COUNT_LIKED, COUNT_FIRST, COUNT_LAST, COUNT_DAYS = range(5)
COUNT_TOPIC_VIEWS = slice(5, 5 + N_TOPICS)
COUNT_TOPIC_LIKED = slice(5 + N_TOPICS, 5 + 2 * N_TOPICS)
N_COUNTS = 5 + 2 * N_TOPICS


def empty_counts(n: int = 1) -> np.ndarray:
    out = np.zeros((n, N_COUNTS), dtype=np.int64)
    out[:, COUNT_FIRST] = out[:, COUNT_LAST] = -1
    return out


@dataclass
class Taste:
    """Sums of the text vectors of the posts a user liked before a moment, one row per moment."""

    likes: np.ndarray  # (n,) like events counted
    vec_sum: np.ndarray  # (n, d) float64, sentence space
    topic_likes: np.ndarray  # (n, n_topics)
    topic_sum: np.ndarray  # (n, n_topics, d) float64, sentence space
    topic_tfidf_sum: np.ndarray  # (n, n_topics, d) float64, TF-IDF space
    cf_sum: np.ndarray  # (n, CF_DIM) float64, collaborative space


@dataclass(frozen=True)
class Priors:
    """Constants fitted once per artifact on events before the first training row, like the text
    transforms: the smoothing target of every rate, the centre of the contrast vector, and the city
    table. Constants keep every feature a function of one user's (or one post's) events, which is what
    lets the state answer "as of t" per user and per post."""

    global_rate: float
    exposure_mean: np.ndarray  # (d,) view-weighted mean of the posts' sentence vectors
    city_names: tuple[str, ...]
    city_rate: np.ndarray  # smoothed like rate per city
    city_users_log: np.ndarray  # log1p(users) per city
    # Each view's weight in its post's like rate, in WEIGHT_UNITs: the viewer's smoothed like rate in the
    # post's topic over the topic's view-weighted mean rate (1 on average over the views it was fitted
    # on). A post shown to the users who like its topic most is liked more often than under the feed the
    # model learnt from; dividing its likes by these weighted views keeps `p_like_rate` the post's appeal
    # to that feed's audience, instead of a rate the service's own choices inflate (docs/live_state.md).
    # Constants of the artifact, so the post counters stay sums over views, exact under late rows.
    view_weight: np.ndarray = field(default_factory=lambda: np.zeros((0, N_TOPICS), np.int16))  # (U, topics)
    # users unknown at the fit (no row in view_weight): the global rate over the topic's mean; older
    # artifacts have neither array, and every view weighs one unit (their models' plain rate)
    view_weight_new: np.ndarray = field(default_factory=lambda: np.full(N_TOPICS, WEIGHT_UNIT, np.int16))

    def view_weights(self, user_rows: np.ndarray, topics: np.ndarray) -> np.ndarray:
        """The weights (int64, WEIGHT_UNITs) of views by `user_rows` of posts of `topics`."""
        user_rows, topics = np.asarray(user_rows, np.int64), np.asarray(topics, np.int64)
        out = self.view_weight_new[topics].astype(np.int64)
        known = user_rows < len(self.view_weight)
        out[known] = self.view_weight[user_rows[known], topics[known]]
        return out

    def city_features(self, cities: pd.Series) -> tuple[np.ndarray, np.ndarray]:
        """(like rate, log users) per city; an unseen city gets the global rate and no users."""
        index = pd.Index(self.city_names)
        pos = index.get_indexer(cities.astype(str))
        known = pos >= 0
        rate = np.where(known, self.city_rate[np.maximum(pos, 0)], self.global_rate)
        users = np.where(known, self.city_users_log[np.maximum(pos, 0)], 0.0)
        return rate, users


def profile_features(users: pd.DataFrame, priors: Priors) -> np.ndarray:
    """The PROFILE block (n, 8) float32 of user_data rows."""
    rate, users_log = priors.city_features(users[c.CITY])
    return np.column_stack([
        users[c.GENDER].to_numpy(float), users[c.AGE].to_numpy(float),
        pd.Categorical(users[c.COUNTRY], categories=c.COUNTRIES).codes.astype(float),
        (users[c.OS] == c.OS_VALUES[1]).to_numpy(float), (users[c.SOURCE] == c.SOURCES[1]).to_numpy(float),
        users[c.EXP_GROUP].to_numpy(float), rate, users_log,
    ]).astype(np.float32)


@dataclass
class UserView:
    """The user side of `assemble` for n (user, moment) pairs."""

    num: np.ndarray  # (n, len(USER_NUM)) float32
    first_view: np.ndarray  # (n,) int64, -1 if none
    last_view: np.ndarray  # (n,) int64, -1 if none
    vec: np.ndarray  # (n, d) float32: unit mean of liked posts' vectors
    contrast: np.ndarray  # (n, d) float32: unit (liked mean - exposure mean)
    topic_vec: np.ndarray  # (n, n_topics, d) float32: shrunk mean of liked posts' vectors per topic
    topic_tfidf: np.ndarray  # (n, n_topics, d) float32: the same in TF-IDF space
    cf: np.ndarray  # (n, CF_DIM) float32: unit mean of liked posts' collaborative vectors


def _unit(x: np.ndarray) -> np.ndarray:
    norm = np.linalg.norm(x, axis=-1, keepdims=True)
    return np.where(norm > 0, x / np.maximum(norm, 1e-12), 0.0).astype(np.float32)


def finalize_users(profile: np.ndarray, counts: np.ndarray, taste: Taste, priors: Priors) -> UserView:
    """Feature values from a user's profile, event counts and taste sums (one row per moment)."""
    counts = np.atleast_2d(counts)
    n = len(counts)
    num = np.empty((n, len(USER_NUM)), dtype=np.float64)
    num[:, :len(PROFILE)] = profile
    views = counts[:, COUNT_VIEWS].astype(np.float64)
    liked = counts[:, COUNT_LIKED].astype(np.float64)
    u_rate = (liked + PRIOR_VIEWS_USER * priors.global_rate) / (views + PRIOR_VIEWS_USER)
    topic_views = counts[:, COUNT_TOPIC_VIEWS].astype(np.float64)
    topic_liked = counts[:, COUNT_TOPIC_LIKED].astype(np.float64)
    k = len(PROFILE)
    num[:, k], num[:, k + 1], num[:, k + 2], num[:, k + 3] = views, liked, u_rate, counts[:, COUNT_DAYS]
    k += 4
    num[:, k:k + N_TOPICS] = topic_views / np.maximum(topic_views.sum(axis=1, keepdims=True), 1)
    num[:, k + N_TOPICS:] = (topic_liked + PRIOR_VIEWS_TOPIC * u_rate[:, None]) / (topic_views + PRIOR_VIEWS_TOPIC)
    has = taste.likes > 0
    mean = taste.vec_sum / np.maximum(taste.likes, 1)[:, None]
    contrast = np.where(has[:, None], mean - priors.exposure_mean[None, :], 0.0)
    shrink = (taste.topic_likes + TOPIC_VEC_PRIOR)[..., None]
    return UserView(
        num=num.astype(np.float32), first_view=counts[:, COUNT_FIRST].copy(), last_view=counts[:, COUNT_LAST].copy(),
        vec=_unit(mean), contrast=_unit(contrast),
        topic_vec=(taste.topic_sum / shrink).astype(np.float32),
        topic_tfidf=(taste.topic_tfidf_sum / shrink).astype(np.float32),
        cf=_unit(taste.cf_sum),
    )


# --------------------------------------------------------------------------------------- post side
@dataclass
class PostView:
    """The catalogue side of `assemble`: static columns and text, counters as of one moment."""

    static: np.ndarray  # (P, len(POST_STATIC)) float32
    counters: np.ndarray  # (P, len(POST_COUNTERS)) float32, as of the moment
    text: np.ndarray  # (P, EMB_COMPONENTS) float32
    vec: np.ndarray  # (P, d) float32 sentence embedding relative to its topic centre, unit length
    tfidf_vec: np.ndarray  # (P, d) float32 TF-IDF components relative to the topic centre, unit length
    topic: np.ndarray  # (P,) int64
    cf: np.ndarray  # (P, CF_DIM) float32 collaborative vector, unit length; zero if unliked at the fit
    # set on a view whose `counters` were left empty: the counters of some rows alone, as of the view's
    # moment (`app.live_state.LiveState.at` with every_post=False, for a request that ranks candidates).
    # Not a field: a snapshot saves the fields, and `replace` gives a view without it
    counters_of_rows: ClassVar[Callable[[np.ndarray], np.ndarray] | None] = None

    def counters_of(self, rows: np.ndarray) -> np.ndarray:
        """POST_COUNTERS of the post `rows`."""
        if self.counters_of_rows is not None:
            return self.counters_of_rows(np.asarray(rows, np.int64))
        return np.take(self.counters, rows, axis=0)


def finalize_posts(counts: np.ndarray, priors: Priors) -> np.ndarray:
    """POST_COUNTERS (n, 3) float32 from (views, liked views, weighted views) counts (n, 3): the like
    rate is liked views over weighted views (`Priors.view_weight`), shrunk to the global rate."""
    rate = (counts[:, 1] + PRIOR_VIEWS_POST * priors.global_rate) / (counts[:, 2] / WEIGHT_UNIT + PRIOR_VIEWS_POST)
    # counts below 2**24 are exact in float32 either way; built side by side rather than written into
    # the columns of an (n, 3) array, which cost several times as much (strided stores; once a request)
    return np.column_stack([counts[:, 0].astype(np.float32), counts[:, 1].astype(np.float32),
                            rate.astype(np.float32)])


# --------------------------------------------------------------------------------------- assembly
def _time_block(user: UserView, ui, ts: np.ndarray) -> np.ndarray:
    days = ts // SECONDS_PER_DAY
    hour = (ts // 3600) % 24
    weekday = (days + 3) % 7  # 1970-01-01 was a Thursday; Monday = 0
    last, first = user.last_view[ui], user.first_view[ui]
    since_last = np.where(last >= 0, (ts - last) / SECONDS_PER_DAY, np.nan)
    since_first = np.where(first >= 0, (ts - first) / SECONDS_PER_DAY, np.nan)
    if ui.ndim == 0 and ts.ndim == 0:  # a request: four numbers; stacking broadcast views cost most of it
        return np.array([hour, weekday, since_last, since_first], dtype=np.float64)
    return np.stack(np.broadcast_arrays(hour, weekday, since_last, since_first), axis=-1)


def _rowwise(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.einsum("nd,nd->n", a, b)


def assemble(user: UserView, ui, posts: PostView, pj: np.ndarray | None, ts, text: bool,
             counters: np.ndarray | None = None) -> np.ndarray:
    """Feature matrix (n, n_features) float32, column-major, for user-view rows `ui`, post rows `pj` at
    times `ts`.

    The three arguments broadcast: a request is one user row and one time against every post row
    (`pj=None`: the whole catalogue, read in place rather than gathered); a training batch has one
    entry per row. `counters` (n, 3) overrides `posts.counters[pj]` when each row sees its post at its
    own moment (training). Columns follow `feature_names(text)`.
    """
    ui, ts = np.asarray(ui, dtype=np.int64), np.asarray(ts, dtype=np.int64)
    # a slice selects without copying; an index array gathers
    sel = slice(None) if pj is None else np.asarray(pj, dtype=np.int64)

    def take(a: np.ndarray) -> np.ndarray:  # rows by `np.take`: 1.5-3x faster than `a[sel]`, the same values
        return a if pj is None else np.take(a, sel, axis=0)

    posts_shape = (len(posts.topic),) if pj is None else sel.shape
    n = np.broadcast_shapes(ui.shape, posts_shape, ts.shape)
    n_rows = n[0] if n else 1
    unum = user.num[ui]
    topic = take(posts.topic)
    if ui.ndim == 0:  # one user: gather from its row only
        rate_t = unum[_U_RATE0 + topic]
        share_t = unum[_U_SHARE0 + topic]
        u_rate = unum[_U_RATE]
    else:
        rate_t = unum[np.arange(len(ui)), _U_RATE0 + topic]
        share_t = unum[np.arange(len(ui)), _U_SHARE0 + topic]
        u_rate = unum[:, _U_RATE]
    pcf = take(posts.cf)
    sim_cf = _rowwise(pcf, np.broadcast_to(user.cf[ui], pcf.shape))  # one user: its row against every post
    post_counters = counters if counters is not None else posts.counters if pj is None else posts.counters_of(sel)
    blocks = [
        np.broadcast_to(unum, (n_rows, unum.shape[-1])),
        np.broadcast_to(take(posts.static), (n_rows, posts.static.shape[1])),
        np.broadcast_to(post_counters, (n_rows, len(POST_COUNTERS))),
        np.broadcast_to(_time_block(user, ui, ts), (n_rows, len(TIME))),
        np.stack(np.broadcast_arrays(rate_t, share_t, rate_t - u_rate, sim_cf), axis=-1).reshape(n_rows, len(CROSS)),
    ]
    if text:
        pvec, tvec = take(posts.vec), take(posts.tfidf_vec)
        if ui.ndim == 0:  # one user: the same row-wise products as a batch, on its row broadcast
            sim = _rowwise(pvec, np.broadcast_to(user.vec[ui], pvec.shape))
            contrast = _rowwise(pvec, np.broadcast_to(user.contrast[ui], pvec.shape))
            sim_topic = _rowwise(pvec, user.topic_vec[ui][topic])
            sim_tfidf = _rowwise(tvec, user.topic_tfidf[ui][topic])
        else:
            sim = _rowwise(pvec, user.vec[ui])
            contrast = _rowwise(pvec, user.contrast[ui])
            sim_topic = _rowwise(pvec, user.topic_vec[ui, topic])
            sim_tfidf = _rowwise(tvec, user.topic_tfidf[ui, topic])
        blocks.append(np.broadcast_to(take(posts.text), (n_rows, EMB_COMPONENTS)))
        blocks.append(np.stack(np.broadcast_arrays(sim, contrast, sim_topic, sim_tfidf), axis=-1)
                      .reshape(n_rows, len(TEXT_CROSS)))
    # column-major: CatBoost reads features column by column, and converting a row-major matrix
    # took about as long as scoring it (bench/catboost_layout.py)
    out = np.empty((n_rows, sum(b.shape[1] for b in blocks)), dtype=np.float32, order="F")
    return np.concatenate(blocks, axis=1, out=out)
