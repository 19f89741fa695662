"""Learning from real logs: segment popularity, recent popularity, exposure detection, the horizon rows,
the per-slot choice with its popularity floor, and the cold-start routing the engine applies."""

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from app import columns as c
from app.artifacts import write_manifest
from app.engine import POPULAR, SEGMENT_POPULAR, Recommender, ScreenPolicy, spread_top_k
from app.feed_events import EventBatch
from app.recent_popularity import RECENT_SECONDS, recent_features
from app.segment_popularity import N_SEGMENTS, SHARE_PRIOR_LIKES, segment_of, segment_scores, segment_shares
from app.user_state import LIKE, VIEW
from training.exposure_kind import dependence, detect
from training.features import history_from
from training.horizon import horizon_rows, recent_columns
from training.selection import RATE_PRIOR_VIEWS, choose, later_rates

FULL = ScreenPolicy(retrieval="full")


def test_segment_of_bands_and_gender():
    profile = np.array([[0, 14], [0, 20], [0, 21], [1, 30], [1, 31], [1, 45], [1, 46], [0, 90]], np.float32)
    assert segment_of(profile).tolist() == [0, 0, 1, 5, 6, 6, 7, 3]


def test_segment_shares_by_hand():
    # segment 0 gave 3 of the 4 likes of post 0; segment 1 the only like of post 1; overall shares 3/5, 2/5
    shares = segment_shares(np.array([0, 0, 0, 1, 1]), np.array([0, 0, 0, 0, 1]), 3)
    a = SHARE_PRIOR_LIKES
    assert shares[0, 0] == pytest.approx((3 + a * 0.6) / (4 + a) / 0.6, rel=1e-5)
    assert shares[1, 1] == pytest.approx((1 + a * 0.4) / (1 + a) / 0.4, rel=1e-5)
    assert shares[0, 2] == pytest.approx(1.0) and shares[1, 2] == pytest.approx(1.0)  # no likes: no lift
    assert np.all(shares[2:] == 1.0)  # segments without likes
    scores = segment_scores(np.array([10.0, 1.0, 0.0]), shares, 1)
    assert scores[0] == pytest.approx(10 * shares[1, 0]) and scores[2] == 0.0


def test_recent_features_by_hand():
    out = recent_features(np.array([[10, 4], [3, 0], [0, 0]]), np.array([[10, 4], [0, 0], [0, 0]]))
    assert out[0].tolist() == [0.0, 0.0, 0.0]  # nothing in the window
    assert out[1].tolist() == pytest.approx([np.log1p(3), 0.0, 1.0])  # all views recent: a new post
    assert out[2].tolist() == [0.0, 0.0, 0.0]


def test_dependence_is_near_one_when_independent_and_large_when_not():
    rng = np.random.default_rng(0)
    independent = rng.multinomial(2000, [0.5, 0.3, 0.2], size=300)  # 300 users, same topic mix
    assert 0.8 < dependence(independent) < 1.2
    skewed = np.array([rng.multinomial(2000, rng.dirichlet([1, 1, 1])) for _ in range(300)])
    assert dependence(skewed) > 50


def _history(events: list[tuple[int, int, int, str, int]], n_users: int = 2, n_posts: int = 6):
    """events: (ts, user id, post id, action, target) with ids 1..n."""
    ts, u, p, a, t = (np.array(x) for x in zip(*events, strict=True))
    batch = EventBatch(ts=ts.astype(np.int64), user_id=u.astype(np.int64), post_id=p.astype(np.int64),
                       kind=np.where(a == "like", LIKE, VIEW).astype(np.int8), target=t.astype(np.int8),
                       seq=np.arange(1, len(ts) + 1))
    return history_from(batch, np.arange(1, n_users + 1), np.arange(1, n_posts + 1))


def test_detect_random_and_forced():
    rng = np.random.default_rng(1)
    events = [(int(rng.integers(0, 60 * 86_400)), int(u), int(rng.integers(1, 7)), "view", 0)
              for u in rng.integers(1, 41, size=8000)]
    history = _history(events, n_users=40)
    topic = np.array([0, 0, 1, 1, 2, 2])
    found = detect(history, topic, before=10**9)
    assert found.detected == "random" and found.kind == "random" and not found.forced
    forced = detect(history, topic, before=10**9, forced="organic")
    assert forced.kind == "organic" and forced.detected == "random" and forced.forced
    with pytest.raises(ValueError, match="exposure"):
        detect(history, topic, before=10**9, forced="chosen")


def test_horizon_rows_label_the_next_likes_and_stop_at_the_window():
    day = 86_400
    events = [(10, 1, 1, "view", 1), (11, 1, 1, "like", 0),  # liked before t: never a row
              (2 * day, 1, 2, "view", 1), (2 * day + 5, 1, 2, "like", 0),  # within the horizon: positive
              (4 * day, 1, 3, "view", 1), (4 * day + 5, 1, 3, "like", 0),  # after `until`: not a positive
              (5, 2, 4, "view", 0)]
    history = _history(events)
    requests = pd.DataFrame({"user_row": [0], c.USER_ID: [1], "ts": [day]})
    rows = horizon_rows(history, requests, until=3 * day, negatives=200, seed=0)
    positives = rows[rows[c.TARGET] == 1]
    assert positives[c.POST_ID].tolist() == [2]
    negatives = rows[rows[c.TARGET] == 0]
    assert len(negatives) > 0 and not negatives[c.POST_ID].isin([1, 2]).any()
    assert (rows["ts"] == day).all() and (rows[c.USER_ID] == 1).all()


def test_horizon_rows_take_opened_unliked_posts_as_negatives():
    """Posts the user opened within the horizon and did not like are negatives (at most `viewed_negatives`,
    the first opened first); opened before t, after the window, or opened and liked: never."""
    day = 86_400
    events = [(10, 1, 5, "view", 0),  # opened before t: not a viewed negative
              (2 * day, 1, 2, "view", 1), (2 * day + 5, 1, 2, "like", 0),  # opened and liked: positive
              (2 * day + 60, 1, 6, "view", 0), (2 * day + 90, 1, 7, "view", 0), (2 * day + 99, 1, 8, "view", 0),
              (4 * day, 1, 9, "view", 0)]  # after `until`
    history = _history(events, n_posts=9)
    requests = pd.DataFrame({"user_row": [0], c.USER_ID: [1], "ts": [day]})
    plain = horizon_rows(history, requests, until=3 * day, negatives=0, seed=0)
    assert plain[c.TARGET].tolist() == [1]
    rows = horizon_rows(history, requests, until=3 * day, negatives=0, seed=0, viewed_negatives=2)
    assert rows[rows[c.TARGET] == 0][c.POST_ID].tolist() == [6, 7]
    assert rows[rows[c.TARGET] == 1][c.POST_ID].tolist() == [2]


def test_later_rates_by_hand():
    """Segment rates of the views in [lo, hi), shrunk to the post's rate there, itself shrunk to the
    window's: user 1 (segment 0) viewed post 1 twice in the window and liked once; user 2 (segment 5)
    viewed post 1 once, no like; a view before lo and one at hi do not count."""
    events = [(5, 1, 1, "view", 1), (10, 1, 1, "view", 1), (11, 1, 1, "view", 0), (12, 2, 1, "view", 0),
              (20, 2, 2, "view", 1)]
    history = _history(events, n_posts=2)
    profile = np.array([[0, 15.0], [1, 25.0]], np.float32)  # gender, age: segments 0 and 5
    rates = later_rates(history, profile, 10, 20)
    a = RATE_PRIOR_VIEWS
    overall = 1 / 3
    post1 = (1 + a * overall) / (3 + a)
    post2 = overall  # no views in the window: the window's rate
    assert rates.shape == (N_SEGMENTS, 2)
    assert rates[0, 0] == pytest.approx((1 + a * post1) / (2 + a))
    assert rates[5, 0] == pytest.approx(a * post1 / (1 + a))
    assert rates[3, 0] == pytest.approx(post1) and rates[0, 1] == pytest.approx(post2)


def test_choose_prefers_the_simpler_on_ties():
    metric = {"popular": 0.3, "a": 0.3, "b": 0.31}
    assert choose(metric, ["popular", "a"]) == "popular"
    assert choose(metric, ["popular", "a", "b"]) == "b"


def test_recent_columns_in_training_equal_the_services(trained):
    """One path: the recent popularity a horizon model reads, computed from the log as training does and
    from the live state as the service does, for every post at a held-out moment."""
    from app.db import make_engine
    from training.train import prepare

    engine = Recommender.load(trained["model_dir"], policy=FULL)
    db = make_engine(trained["db_url"])
    with db.connect() as conn:
        prep = prepare(conn, {}, trained["cache"], "hashing")
    db.dispose()
    t = int(engine.manifest.data["split"]["test_start"]) + 30 * 3600
    rows = np.arange(len(engine.post_ids))
    served = recent_features(engine.state.counts_at(t), engine.state.counts_at(t - RECENT_SECONDS))
    assert np.array_equal(prep.history.post_ids, engine.post_ids)
    trained_side = recent_columns(prep.history, rows, np.full(len(rows), t))
    assert np.array_equal(served, trained_side)
    assert served[:, 0].max() > 0  # the window holds views


def _edited_version(trained, tmp_path: Path, selection: dict) -> Path:
    """A copy of the trained version whose manifest says what each slot serves."""
    src = Path(trained["version_dir"])
    dst = tmp_path / src.name
    shutil.copytree(src, dst)
    data = json.loads((dst / "manifest.json").read_text())
    data["selection"] = selection
    write_manifest(dst, {k: v for k, v in data.items() if k not in ("schema", "files")})
    return dst


def test_floor_and_cold_routing(trained, tmp_path):
    selection = {"protocol": "shown_set", "slots": {
        "control": {"serves": POPULAR, "reason": "no model beat popularity on validation (test)",
                    "cold": {"serves": POPULAR}},
        "test": {"serves": "like_given_shown", "reason": "best", "cold": {"serves": SEGMENT_POPULAR}}}}
    engine = Recommender.load_version(_edited_version(trained, tmp_path, selection), policy=FULL)
    split = engine.manifest.data["split"]
    t = int(split["test_start"]) + 3600
    user = int(engine.state.snapshot.user_ids[0])
    # the floor: the control slot serves popularity, and says so
    got = engine.recommend("control", user, t, 5)
    assert got.model == POPULAR
    assert got.post_ids.tolist() == engine.recommend(POPULAR, user, t, 5).post_ids.tolist()
    # a user with history gets the test model; the same user before any view gets segment popularity
    assert engine.recommend("test", user, t, 5).model == "test"
    user_at, _ = engine.state.at(engine.state.user_row(user), t)
    hidden, posts = engine.state.at(engine.state.user_row(user), t, cold=True)  # as if just signed up
    assert engine.ranker_for("test", user_at) == "test"
    assert engine.ranker_for("test", hidden) == SEGMENT_POPULAR
    assert engine.ranker_for("control", hidden) == POPULAR
    scores = engine.scores_of(SEGMENT_POPULAR, hidden, posts, t)
    assert scores.shape == (len(engine.post_ids),) and np.all(scores >= 0)
    # /model says what serves and why (the manifest's selection)
    assert engine.manifest.data["selection"]["slots"]["control"]["reason"].startswith("no model beat popularity")


def test_cold_spread_routing(trained, tmp_path):
    """A slot whose validation chose the spread screen for users without history gives such a user one
    post per topic; the same user with history, and a slot that did not choose it, get the top by score."""
    selection = {"protocol": "shown_set", "slots": {
        "control": {"serves": "like_given_shown", "reason": "best", "cold": {"serves": "model"}},
        "test": {"serves": "like_given_shown", "reason": "best",
                 "cold": {"serves": SEGMENT_POPULAR, "spread": True}}}}
    engine = Recommender.load_version(_edited_version(trained, tmp_path, selection), policy=FULL)
    t = int(engine.manifest.data["split"]["test_start"]) + 3600
    row = engine.state.user_row(int(engine.state.snapshot.user_ids[0]))
    user_at, _ = engine.state.at(row, t)
    hidden, posts = engine.state.at(row, t, cold=True)  # as if just signed up
    assert engine.spreads("test", hidden) and engine.ranker_for("test", hidden) == SEGMENT_POPULAR
    assert not engine.spreads("test", user_at)  # with history: the model, by score
    assert not engine.spreads("control", hidden)  # its validation kept the ranking by score
    # the screen the service makes for such a user (`Recommender._select`, as `recommend` calls it)
    scores = engine.scores_of(SEGMENT_POPULAR, hidden, posts, t)
    rows = np.arange(len(scores))
    keep = engine._select(rows, scores, posts, t, 5, 0.0, engine.spreads("test", hidden))
    assert keep.tolist() == spread_top_k(scores, engine.post_ids, posts.topic, 5).tolist()
    assert len({engine.posts[int(p)]["topic"] for p in engine.post_ids[keep]}) == 5
    assert keep.tolist() != engine._select(rows, scores, posts, t, 5, 0.0).tolist()  # by score: topics repeat


def test_windows_sized_by_the_data():
    from training.train import DAY, make_split

    lo = 1_600_000_000 - 1_600_000_000 % DAY + 3600  # 01:00 on a day
    # a sparse log: 20 liked views a day for 140 days, then a busy last week of 500 a day
    sparse = np.concatenate([lo + d * DAY + np.arange(20) * 60 for d in range(143)])
    busy = np.concatenate([lo + d * DAY + np.arange(500) * 60 for d in range(143, 150)])
    liked = np.sort(np.concatenate([sparse, busy]))
    hi = int(liked[-1]) + 1  # the log ends on day 149
    end = -(-hi // DAY) * DAY
    split = make_split(lo, hi, window_likes=1000, liked_ts=liked, train_days=0)
    assert split.test_start == end - 2 * DAY  # 500 a day: two days hold 1,000
    # before it: five busy days (2,500) would do, but a window is the fewest days holding 1,000
    assert split.val_start == split.test_start - 2 * DAY
    assert split.train_start == -(-lo // DAY) * DAY + DAY  # every day before validation but the first
    sparse_only = make_split(lo, int(sparse[-1]) + 1, window_likes=1000, liked_ts=sparse)
    assert sparse_only.test_start == -(-int(sparse[-1]) // DAY) * DAY - 50 * DAY  # 20 a day: 50 days
    assert sparse_only.val_start == sparse_only.test_start - 50 * DAY
    assert sparse_only.train_start == sparse_only.val_start - 14 * DAY
    # the calendar's windows when not asked: the defaults, whatever the log
    fixed = make_split(lo, hi, liked_ts=liked)
    assert (fixed.test_start, fixed.val_start, fixed.train_start) == (end - 7 * DAY, end - 14 * DAY, end - 28 * DAY)
    with pytest.raises(ValueError, match="too short"):
        make_split(lo, lo + 30 * DAY, window_likes=10_000, liked_ts=sparse)


def test_train_cli_names_windows_the_log_cannot_hold(trained, tmp_path):
    from typer.testing import CliRunner

    from training.cli import app

    out = tmp_path / "models"
    r = CliRunner().invoke(app, ["train", "--db", trained["db_url"], "--out", str(out),
                                 "--window-likes", "1000000000"])
    assert r.exit_code == 2 and "--window-likes 1000000000" in r.output and "too short" in r.output
    assert not out.exists()  # refused before anything is written
