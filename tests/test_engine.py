"""The scoring engine against an independent slow reference, exclusion by time, cold start, batch form."""

from datetime import UTC, datetime

import numpy as np
import pandas as pd
import pytest

from app import columns as c
from app.engine import POPULAR, Recommender, ScreenPolicy, spread_top_k, top_k
from app.features import (
    CROSS,
    POST_COUNTERS,
    POST_STATIC,
    POST_TEXT,
    TEXT_CROSS,
    TIME,
    USER_NUM,
    assemble,
    feature_names,
)
from app.user_state import LIKE

FULL = ScreenPolicy(retrieval="full")  # these tests compare with scoring every post


@pytest.fixture(scope="module")
def engine(trained) -> Recommender:
    return Recommender.load(trained["model_dir"], policy=FULL)


def reference_features(user, posts, ts: int, text: bool) -> pd.DataFrame:
    """One dict per post, feature by feature, in plain Python: the way a course solution builds a frame."""
    moment = datetime.fromtimestamp(ts, tz=UTC)
    v = user.view
    u = dict(zip(USER_NUM, v.num[0].tolist(), strict=True))
    last, first = int(v.last_view[0]), int(v.first_view[0])
    rows = []
    for j in range(len(posts.topic)):
        post = {**dict(zip(POST_STATIC, posts.static[j].tolist(), strict=True)),
                **dict(zip(POST_COUNTERS, posts.counters[j].tolist(), strict=True))}
        topic = c.TOPICS[int(posts.topic[j])]
        row = {**u, **post,
               "hour": moment.hour, "weekday": moment.weekday(),
               "u_days_since_last_view": (ts - last) / 86400 if last >= 0 else np.nan,
               "u_days_since_first_view": (ts - first) / 86400 if first >= 0 else np.nan,
               "u_like_rate_post_topic": u[f"u_like_rate_{topic}"],
               "u_view_share_post_topic": u[f"u_view_share_{topic}"],
               "u_like_lift_post_topic": u[f"u_like_rate_{topic}"] - u["u_like_rate"],
               "sim_cf": float(np.dot(posts.cf[j], v.cf[0]))}
        if text:
            k = int(posts.topic[j])
            row.update(dict(zip(POST_TEXT, posts.text[j].tolist(), strict=True)))
            row["sim_liked"] = float(np.dot(posts.vec[j], v.vec[0]))
            row["sim_contrast"] = float(np.dot(posts.vec[j], v.contrast[0]))
            row["sim_liked_topic"] = float(np.dot(posts.vec[j], v.topic_vec[0, k]))
            row["sim_tfidf_topic"] = float(np.dot(posts.tfidf_vec[j], v.topic_tfidf[0, k]))
        rows.append(row)
    return pd.DataFrame(rows)[list(feature_names(text))]


def reference_recommend(engine: Recommender, model: str, user_id: int, ts: int, k: int) -> list[int]:
    state = engine.state
    user, posts = state.at(state.user_row(user_id), ts)
    frame = reference_features(user, posts, ts, text=model == "test")
    scores = engine.models[model].predict(frame.to_numpy(np.float32), prediction_type="RawFormulaVal")
    hidden = {int(p) for p in engine.post_ids[np.concatenate([user.liked, user.viewed])]}
    ranked = sorted(((-s, int(p)) for s, p in zip(scores, engine.post_ids, strict=True) if int(p) not in hidden))
    return [p for _, p in ranked[:k]]


def test_feature_blocks_cover_the_names():
    assert len(feature_names(False)) == len(USER_NUM) + len(POST_STATIC) + len(POST_COUNTERS) + len(TIME) + len(CROSS)
    assert len(feature_names(True)) == len(feature_names(False)) + len(POST_TEXT) + len(TEXT_CROSS)


@pytest.mark.parametrize("model", ["control", "test"])
def test_ranking_matches_slow_reference(engine, model):
    snap = engine.state.snapshot
    rng = np.random.default_rng(1)
    lo, hi = int(engine.manifest.data["split"]["test_start"]), int(engine.manifest.data["split"]["end"])
    for user_id in rng.choice(snap.user_ids, size=4, replace=False):
        ts = int(rng.integers(lo - 30 * 86400, hi))
        got = engine.recommend(model, int(user_id), ts, 10)
        assert got.model == model
        assert got.post_ids.tolist() == reference_recommend(engine, model, int(user_id), ts, 10)


def test_served_row_is_one_row_of_the_batch(engine):
    """The request's whole-catalogue matrix and a batch of rows for the same (user, posts, time) agree."""
    state = engine.state
    ts = state.base_as_of + 5 * 86400
    user, posts = state.at(3, ts)
    served = assemble(user.view, np.int64(0), posts, None, np.int64(ts), text=True)
    picks = np.array([0, 17, len(engine.post_ids) - 1])
    batch = assemble(user.view, np.zeros(3, np.int64), posts, picks, np.full(3, ts), text=True)
    np.testing.assert_array_equal(served[picks], batch)
    # CatBoost converts a row-major matrix at about the cost of scoring it (bench/catboost_layout.py)
    assert served.flags.f_contiguous and served.dtype == np.float32


def test_exclusion_is_by_requested_time(trained):
    engine = Recommender.load(trained["model_dir"], exclude_viewed_hours=0, exclude_last_views=0, policy=FULL)
    snap = engine.state.snapshot
    ev = snap.events
    i = int(np.flatnonzero(ev.kind == LIKE)[0])
    row = int(np.searchsorted(ev.indptr, i, side="right") - 1)
    user_id, liked_post, liked_at = int(snap.user_ids[row]), int(snap.post_ids[ev.post[i]]), int(ev.ts[i])
    k = len(engine.post_ids)  # everything: exclusion is the only reason a post is missing
    at_like = engine.recommend("control", user_id, liked_at, k).post_ids
    after = engine.recommend("control", user_id, liked_at + 1, k).post_ids
    assert liked_post in at_like  # liked at ts is not "before ts"
    assert liked_post not in after
    user, _ = engine.state.at(row, liked_at)
    assert len(at_like) == k - len(np.unique(user.liked))


def test_recently_viewed_posts_are_left_out(trained):
    """With the default window a post viewed an hour ago is not served; with a window of 0 it may be."""
    hidden = Recommender.load(trained["model_dir"], policy=FULL)
    shown = Recommender.load(trained["model_dir"], exclude_viewed_hours=0, exclude_last_views=0, policy=FULL)
    snap = hidden.state.snapshot
    ev = snap.events
    i = int(np.flatnonzero(ev.kind == 0)[-1])  # the last view the snapshot holds
    row = int(np.searchsorted(ev.indptr, i, side="right") - 1)
    user_id, post, t = int(snap.user_ids[row]), int(snap.post_ids[ev.post[i]]), int(ev.ts[i]) + 3600
    k = len(hidden.post_ids)
    assert post not in hidden.recommend("control", user_id, t, k).post_ids
    user, _ = shown.state.at(row, t)
    if post not in snap.post_ids[user.liked]:
        assert post in shown.recommend("control", user_id, t, k).post_ids
    assert post in hidden.recommend("control", user_id, t + 73 * 3600, k).post_ids or \
        post in snap.post_ids[hidden.state.at(row, t + 73 * 3600)[0].liked]


def test_last_views_are_left_out_however_old(trained):
    """The user's last views stay out of the screen after the 72-hour window has passed: a user who comes
    back a week later does not get the same screen again. The oldest of them come from before the
    snapshot's base cut."""
    engine = Recommender.load(trained["model_dir"], exclude_viewed_hours=0, exclude_last_views=50, policy=FULL)
    plain = Recommender.load(trained["model_dir"], exclude_viewed_hours=0, exclude_last_views=0, policy=FULL)
    snap = engine.state.snapshot
    row = int(np.argmax(np.diff(snap.seen_indptr) - 50 * np.diff(snap.events.indptr)))  # many old, few new views
    user_id = int(snap.user_ids[row])
    t = snap.events_until + 30 * 86400
    user, _ = engine.state.at(row, t)
    views = snap.events.kind[snap.events.indptr[row]:snap.events.indptr[row + 1]] == 0
    old_needed = max(0, 50 - int(views.sum()))
    expected_old = snap.seen[snap.seen_indptr[row + 1] - old_needed:snap.seen_indptr[row + 1]] if old_needed else []
    assert set(expected_old) <= set(user.viewed.tolist()) and len(np.unique(user.viewed)) <= 50
    k = len(engine.post_ids)
    served, everything = (set(e.recommend("control", user_id, t, k).post_ids.tolist()) for e in (engine, plain))
    hidden = set(engine.post_ids[user.viewed].tolist()) - set(engine.post_ids[user.liked].tolist())
    assert hidden and not hidden & served and hidden <= everything


def test_unknown_user_gets_popular_as_of_the_moment(engine):
    unknown = int(engine.state.snapshot.user_ids.max()) + 1000
    t = engine.state.base_as_of + 86400
    got = engine.recommend("test", unknown, t, 5)
    assert got.model == POPULAR
    likes = engine.state.counts_at(t)[:, 1]
    expected = engine.post_ids[np.lexsort((engine.post_ids, -likes))[:5]]
    assert got.post_ids.tolist() == expected.tolist()


def test_batch_equals_single(engine):
    users, times = engine.state.snapshot.user_ids[:5], np.full(5, engine.state.base_as_of + 3600)
    batch = engine.recommend_many("test", users, times, 7)
    for u, ts, ranking in zip(users, times, batch, strict=True):
        assert ranking.post_ids.tolist() == engine.recommend("test", int(u), int(ts), 7).post_ids.tolist()


def test_features_as_of(engine):
    base = engine.state.base_as_of
    assert engine.recommend("test", int(engine.state.snapshot.user_ids[0]), base + 10, 3).features_as_of == base + 10
    assert engine.recommend("test", int(engine.state.snapshot.user_ids[0]), base - 10, 3).features_as_of == base


def test_top_k_orders_ties_by_id():
    scores = np.array([0.5, 0.9, 0.5, 0.5, 0.1])
    ids = np.array([40, 10, 30, 20, 50])
    assert top_k(scores, ids, 3).tolist() == [1, 3, 2]  # 0.9, then ties 0.5 by id: 20, 30
    assert top_k(scores, ids, 10).tolist() == [1, 3, 2, 0, 4]
    assert top_k(scores, ids, 0).tolist() == []


def test_spread_top_k_takes_one_per_topic_first():
    # topics 0, 0, 0, 1, 2: by score 0.9 (t0), 0.8 (t0), 0.7 (t1), 0.6 (t0), 0.1 (t2, excluded: -inf)
    scores = np.array([0.9, 0.8, 0.6, 0.7, -np.inf])
    ids = np.array([10, 20, 30, 40, 50])
    topics = np.array([0, 0, 0, 1, 2])
    assert spread_top_k(scores, ids, topics, 2).tolist() == [0, 3]  # the best of topic 0, then of topic 1
    # round one: 0 (t0), 3 (t1); round two: 1 (t0); round three: 2 (t0); the excluded post last
    assert spread_top_k(scores, ids, topics, 10).tolist() == [0, 3, 1, 2, 4]
    assert spread_top_k(np.array([0.5, 0.5]), np.array([7, 3]), np.array([1, 1]), 1).tolist() == [1]  # tie: id
    assert spread_top_k(scores, ids, topics, 0).tolist() == []


def test_models_loaded_for_prediction_keep_every_prediction(trained, engine):
    """`load_for_prediction` cuts the parameters CatBoost re-parses on every predict; what it predicts
    is the file's model's, to the bit, and the file is unchanged."""
    from catboost import CatBoostClassifier

    from app.artifacts import MODEL_FILES
    from app.catboost_models import load_for_prediction

    rng = np.random.default_rng(0)
    for name, file in MODEL_FILES.items():
        path = trained["version_dir"] / file
        plain = CatBoostClassifier()
        plain.load_model(str(path))
        before = path.read_bytes()
        lean = load_for_prediction(CatBoostClassifier, path)
        assert path.read_bytes() == before
        assert len(lean.get_metadata()["params"]) < len(plain.get_metadata()["params"]) / 10
        assert lean.get_metadata()["class_params"] == plain.get_metadata()["class_params"]
        x = np.asfortranarray(rng.normal(size=(300, len(plain.feature_names_))).astype(np.float32))
        for kind in ("RawFormulaVal", "Probability", "Class"):
            assert np.array_equal(lean.predict(x, prediction_type=kind), plain.predict(x, prediction_type=kind))
        assert engine.models[name].get_metadata()["params"] == lean.get_metadata()["params"]
