"""The scoring engine against an independent slow reference, exclusion by time, cold start, batch form."""

from datetime import UTC, datetime

import numpy as np
import pandas as pd
import pytest

from app import columns as c
from app.engine import POPULAR, Recommender, top_k
from app.features import CROSS, POST_NUM, POST_TEXT, TEXT_CROSS, TIME, USER_NUM, assemble, feature_names


@pytest.fixture(scope="module")
def engine(trained) -> Recommender:
    return Recommender.load(trained["model_dir"])


def reference_features(t, user_row: int, ts: int, text: bool) -> pd.DataFrame:
    """One dict per post, feature by feature, in plain Python: the way a course solution builds a frame."""
    moment = datetime.fromtimestamp(ts, tz=UTC)
    user = dict(zip(USER_NUM, t.user_num[user_row].tolist(), strict=True))
    last, first = int(t.user_last_view[user_row]), int(t.user_first_view[user_row])
    rows = []
    for j in range(len(t.post_ids)):
        post = dict(zip(POST_NUM, t.post_num[j].tolist(), strict=True))
        topic = c.TOPICS[int(t.post_topic[j])]
        row = {**user, **post,
               "hour": moment.hour, "weekday": moment.weekday(),
               "u_days_since_last_view": (ts - last) / 86400 if last >= 0 else np.nan,
               "u_days_since_first_view": (ts - first) / 86400 if first >= 0 else np.nan,
               "u_like_rate_post_topic": user[f"u_like_rate_{topic}"],
               "u_view_share_post_topic": user[f"u_view_share_{topic}"],
               "u_like_lift_post_topic": user[f"u_like_rate_{topic}"] - user["u_like_rate"]}
        if text:
            row.update(dict(zip(POST_TEXT, t.post_text[j].tolist(), strict=True)))
            k = int(t.post_topic[j])
            row["sim_liked"] = float(np.dot(t.post_vec[j], t.user_vec[user_row]))
            row["sim_contrast"] = float(np.dot(t.post_vec[j], t.user_contrast[user_row]))
            row["sim_liked_topic"] = float(np.dot(t.post_vec[j], t.user_topic_vec[user_row, k].astype(np.float32)))
            row["sim_tfidf_topic"] = float(np.dot(t.post_tfidf_vec[j],
                                                  t.user_topic_tfidf[user_row, k].astype(np.float32)))
        rows.append(row)
    return pd.DataFrame(rows)[list(feature_names(text))]


def reference_recommend(engine: Recommender, model: str, user_id: int, ts: int, k: int) -> list[int]:
    t = engine.tables
    row = int(np.flatnonzero(t.user_ids == user_id)[0])
    frame = reference_features(t, row, ts, text=model == "test")
    scores = engine.models[model].predict(frame.to_numpy(np.float32), prediction_type="RawFormulaVal")
    liked = {int(p) for p, lt in zip(t.likes_post[t.likes_indptr[row]:t.likes_indptr[row + 1]],
                                     t.likes_ts[t.likes_indptr[row]:t.likes_indptr[row + 1]], strict=True) if lt < ts}
    ranked = sorted(((-s, int(p)) for s, p in zip(scores, t.post_ids, strict=True) if int(p) not in liked))
    return [p for _, p in ranked[:k]]


def test_feature_blocks_cover_the_names():
    assert len(feature_names(False)) == len(USER_NUM) + len(POST_NUM) + len(TIME) + len(CROSS)
    assert len(feature_names(True)) == len(feature_names(False)) + len(POST_TEXT) + len(TEXT_CROSS)


@pytest.mark.parametrize("model", ["control", "test"])
def test_ranking_matches_slow_reference(engine, model):
    t = engine.tables
    rng = np.random.default_rng(1)
    lo, hi = int(engine.manifest.data["split"]["test_start"]), int(engine.manifest.data["split"]["end"])
    for user_id in rng.choice(t.user_ids, size=4, replace=False):
        ts = int(rng.integers(lo - 30 * 86400, hi))
        got = engine.recommend(model, int(user_id), ts, 10)
        assert got.model == model
        assert got.post_ids.tolist() == reference_recommend(engine, model, int(user_id), ts, 10)


def test_training_row_equals_served_row(engine):
    """A row built for training and the same (user, post, time) built for a request are identical."""
    t = engine.tables
    row, ts = 3, int(t.as_of) + 5 * 3600
    served = assemble(t, np.int64(row), None, np.int64(ts), text=True)
    picks = np.array([0, 17, len(t.post_ids) - 1])
    batch = assemble(t, np.full(3, row), picks, np.full(3, ts), text=True)
    np.testing.assert_array_equal(served[picks], batch)
    # CatBoost converts a row-major matrix at about the cost of scoring it (bench/catboost_layout.py)
    assert served.flags.f_contiguous and served.dtype == np.float32


def test_exclusion_is_by_requested_time(engine):
    t = engine.tables
    counts = np.diff(t.likes_indptr)
    row = int(np.argmax(counts))
    lo = t.likes_indptr[row]
    liked_post, liked_at = int(t.likes_post[lo]), int(t.likes_ts[lo])
    user_id = int(t.user_ids[row])
    k = len(t.post_ids)  # everything: exclusion is the only reason a post is missing
    at_like = engine.recommend("control", user_id, liked_at, k).post_ids
    after = engine.recommend("control", user_id, liked_at + 1, k).post_ids
    assert liked_post in at_like  # liked at ts is not "before ts"
    assert liked_post not in after
    assert len(at_like) == k - len(t.liked_before(row, liked_at))


def test_cold_start_gets_popular(engine):
    unknown = int(engine.tables.user_ids.max()) + 1000
    got = engine.recommend("test", unknown, int(engine.tables.as_of), 5)
    assert got.model == POPULAR
    likes = engine.popular_scores
    expected = engine.tables.post_ids[np.lexsort((engine.tables.post_ids, -likes))[:5]]
    assert got.post_ids.tolist() == expected.tolist()


def test_batch_equals_single(engine):
    t = engine.tables
    users, times = t.user_ids[:5], np.full(5, t.as_of + 3600)
    batch = engine.recommend_many("test", users, times, 7)
    for u, ts, ranking in zip(users, times, batch, strict=True):
        assert ranking.post_ids.tolist() == engine.recommend("test", int(u), int(ts), 7).post_ids.tolist()


def test_top_k_orders_ties_by_id():
    scores = np.array([0.5, 0.9, 0.5, 0.5, 0.1])
    ids = np.array([40, 10, 30, 20, 50])
    assert top_k(scores, ids, 3).tolist() == [1, 3, 2]  # 0.9, then ties 0.5 by id: 20, 30
    assert top_k(scores, ids, 10).tolist() == [1, 3, 2, 0, 4]
    assert top_k(scores, ids, 0).tolist() == []
