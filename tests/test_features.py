"""Point-in-time features: no leakage, hand-computable values, one answer whichever way the state is
reached (rebuilt from scratch, applied incrementally, or computed for a training row)."""

from dataclasses import replace
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest

from app import columns as c
from app.db import make_engine
from app.features import (
    COUNT_DAYS,
    COUNT_FIRST,
    COUNT_LAST,
    COUNT_LIKED,
    COUNT_VIEWS,
    MAX_WEIGHT,
    N_TOPICS,
    USER_NUM,
    WEIGHT_UNIT,
    Priors,
    _time_block,
    assemble,
    empty_counts,
    feature_names,
    finalize_posts,
)
from app.feed_events import EventBatch
from app.live_state import LiveState
from app.post_counters import PostTimeline, counts_before
from app.user_state import LIKE, VIEW, fold_user, taste_at
from training.features import History, build_snapshot, history_from, rows_matrix, sample_views, view_weight_table
from training.train import prepare

DAY = 86_400


@pytest.fixture(scope="module")
def prepared(trained):
    engine = make_engine(trained["db_url"])
    with engine.connect() as conn:
        prep = prepare(conn, {}, trained["cache"], "hashing")
    engine.dispose()
    return prep


def _rows(prep, n=300, seed=0) -> pd.DataFrame:
    s = prep.split
    rows = sample_views(prep.history, s.val_start, s.end, 10**9)
    return rows.sample(n=min(n, len(rows)), random_state=seed).reset_index(drop=True)


def _with_events(history: History, extra: EventBatch) -> History:
    ev = history.events
    rows = np.repeat(np.arange(len(history.user_ids)), np.diff(ev.indptr))
    batch = EventBatch(np.concatenate([ev.ts, extra.ts]),
                       np.concatenate([history.user_ids[rows], extra.user_id]),
                       np.concatenate([history.post_ids[ev.post], extra.post_id]),
                       np.concatenate([ev.kind, extra.kind]), np.concatenate([ev.target, extra.target]))
    return history_from(batch, history.user_ids, history.post_ids)


def test_rows_see_exactly_the_events_before_their_moment(prepared):
    """A row's features from the whole history equal those from the history cut just before its moment,
    with events exactly at the moment added to the row's user: they do not count either."""
    h = prepared.history
    rows = _rows(prepared, 12, seed=4)
    full = rows_matrix(h, prepared.profile, prepared.static, prepared.priors, rows, text=True)
    ev = h.events
    for i, r in rows.iterrows():
        t = int(r["ts"])
        cut = History(h.user_ids, h.post_ids, _subset(ev, ev.ts < t, len(h.user_ids)), h.user_id_of_event[ev.ts < t],
                      h.seq, h.start, t)
        cut.weigh(prepared.priors, prepared.static.topic)
        extra = EventBatch(np.array([t, t]), np.array([r[c.USER_ID]] * 2), np.array([r[c.POST_ID]] * 2),
                           np.array([VIEW, LIKE], np.int8), np.array([1, 0], np.int8))
        at_moment = _with_events(cut, extra)
        at_moment.weigh(prepared.priors, prepared.static.topic)
        for history in (cut, at_moment):
            one = rows_matrix(history, prepared.profile, prepared.static, prepared.priors, rows.iloc[[i]], text=True)
            np.testing.assert_array_equal(one[0], full[i])
    # and a second later the events at the moment count
    later = rows.iloc[[0]].assign(ts=rows["ts"].iloc[0] + 1)
    views = list(feature_names(True)).index("u_views")
    assert rows_matrix(at_moment, prepared.profile, prepared.static, prepared.priors, later, True)[0, views] == \
        full[0, views] + 1 or len(rows) > 1


def test_fold_by_hand():
    topic = np.array([0, 1, 1])
    day = 2 * DAY
    ts = np.array([day + 10, day + 20, day + 30, 3 * day + 5, 3 * day + 6])
    post = np.array([0, 1, 0, 2, 1])
    kind = np.array([VIEW, VIEW, LIKE, VIEW, LIKE])
    target = np.array([1, 0, 0, 1, 0])
    out = fold_user(empty_counts()[0], np.array([]), ts, post, kind, target, topic, np.array([day, day + 21, 4 * day]))
    assert out[:, COUNT_VIEWS].tolist() == [0, 2, 3]
    assert out[:, COUNT_LIKED].tolist() == [0, 1, 2]
    assert out[:, COUNT_FIRST].tolist() == [-1, day + 10, day + 10]
    assert out[:, COUNT_LAST].tolist() == [-1, day + 20, 3 * day + 5]
    assert out[:, COUNT_DAYS].tolist() == [0, 1, 2]
    # topic 0: post 0 (liked view); topic 1: posts 1 and 2 (one liked view)
    assert out[2, 5:7].tolist() == [1, 2] and out[2, 12:14].tolist() == [1, 1]


def test_smoothed_rates_are_hand_computable(prepared):
    rows = _rows(prepared, 300)
    x = rows_matrix(prepared.history, prepared.profile, prepared.static, prepared.priors, rows, text=False)
    names = list(feature_names(False))
    views, likes, rate = (x[:, names.index(n)] for n in ("u_views", "u_likes", "u_like_rate"))
    g = prepared.priors.global_rate
    np.testing.assert_allclose(rate, (likes + 20 * g) / (views + 20), rtol=1e-5)
    shares = x[:, [names.index(f"u_view_share_{t}") for t in c.TOPICS]]
    np.testing.assert_allclose(shares[views > 0].sum(axis=1), 1.0, rtol=1e-5)
    # views before each row's moment, counted straight from the history
    ev = prepared.history.events
    for _, r in rows.head(30).iterrows():
        lo, hi = ev.indptr[r["user_row"]], ev.indptr[r["user_row"] + 1]
        expected = int(((ev.kind[lo:hi] == VIEW) & (ev.ts[lo:hi] < r["ts"])).sum())
        assert views[_] == expected


def test_split_fold_equals_whole_fold():
    """Counts from a base plus the later events equal the counts from all events (days counted once)."""
    rng = np.random.default_rng(3)
    n = 400
    ts = np.sort(rng.integers(0, 20 * DAY, size=n))
    post = rng.integers(0, 50, size=n)
    kind = (rng.random(n) < 0.2).astype(np.int8)
    target = ((kind == VIEW) & (rng.random(n) < 0.3)).astype(np.int8)
    topic = rng.integers(0, 7, size=50)
    times = np.sort(rng.integers(8 * DAY, 21 * DAY, size=20))
    whole = fold_user(empty_counts()[0], np.array([]), ts, post, kind, target, topic, times)
    cut = 8 * DAY + 4321  # not at midnight: the cut day has views on both sides
    old = ts < cut
    base = fold_user(empty_counts()[0], np.array([]), ts[old], post[old], kind[old], target[old], topic,
                     np.array([cut]))[0]
    days = np.unique(ts[old & (kind == VIEW)] // DAY)
    perm = rng.permutation((~old).sum())  # later events in any order
    split = fold_user(base, days, ts[~old][perm], post[~old][perm], kind[~old][perm], target[~old][perm], topic, times)
    np.testing.assert_array_equal(whole, split)
    vec = rng.normal(size=(50, 8)).astype(np.float32)
    likes = kind == LIKE
    cf = rng.normal(size=(50, 4)).astype(np.float32)
    a = taste_at(np.empty(0, np.int64), ts[likes], post[likes], times, vec, vec, topic, cf)
    b = taste_at(post[likes & old], ts[likes & ~old], post[likes & ~old], times, vec, vec, topic, cf)
    np.testing.assert_array_equal(a.likes, b.likes)
    np.testing.assert_allclose(a.topic_sum, b.topic_sum, atol=1e-9)
    np.testing.assert_allclose(a.cf_sum, b.cf_sum, atol=1e-9)
    assert np.abs(a.cf_sum).sum() > 0  # the users in this draw liked posts: the sums are not trivially equal


def _random_views(seed: int, n_posts: int, n: int):
    """n views (times, posts, liked, weight) of n_posts posts in random order, and a base of earlier counts."""
    rng = np.random.default_rng(seed)
    ts = rng.integers(0, 10_000, size=n)
    post = rng.integers(0, n_posts, size=n)
    target = (rng.random(n) < 0.3).astype(np.int8)
    weight = rng.integers(1, MAX_WEIGHT + 1, size=n)
    return ts, post, target, weight, rng.integers(0, 9, size=(n_posts, 3))


def test_post_timeline_equals_counts_before(monkeypatch):
    """Blocks, checkpoints and late views: the timeline answers as the straightforward count does."""
    n_posts, n = 30, 3000
    ts, post, target, weight, base = _random_views(5, n_posts, n)
    timeline = PostTimeline(base, block=97)
    for part in np.array_split(np.arange(n), 17):  # batches in arrival order, many late
        timeline.add(ts[part], post[part], target[part], weight[part])
    # a moment inside a block is counted from the nearer of its two checkpoints: moments all over the
    # blocks and the head, both halves of each, and the edges
    edges = [int(x) for b in timeline.frame.blocks for x in (b.ts[0], b.ts[0] + 1, b.ts[-1], b.ts[-1] + 1)]
    moments = [-1, 0, 17, 5000, 9999, 10_000, 20_000, *edges, *np.random.default_rng(2).integers(-5, 10_100, 200)]
    assert len(timeline.frame.blocks) > 10
    for t in moments:
        expected = base + counts_before(post, ts, target, weight, np.arange(n_posts), np.full(n_posts, t))
        np.testing.assert_array_equal(timeline.counts_at(int(t)), expected)
    # many (post, moment) pairs at once: the same numbers, in sealed blocks, the head and past the last view
    rng = np.random.default_rng(1)
    rows, times = rng.integers(0, n_posts, 500), rng.integers(-5, 10_100, 500)
    expected = np.stack([timeline.counts_at(int(t))[r] for r, t in zip(rows, times, strict=True)])
    np.testing.assert_array_equal(timeline.counts_of(rows, times), expected)
    # some rows at one moment (a request's candidates): the same numbers, whichever way the views are placed
    # among the rows (a map over the catalogue, or a binary search when the catalogue is much larger)
    for per_view in (8, 0):
        monkeypatch.setattr("app.post_counters._MAP_PER_VIEW", per_view)
        for t in moments[::3]:
            some = np.unique(rng.integers(0, n_posts, int(rng.integers(1, n_posts))))
            np.testing.assert_array_equal(timeline.counts_at_rows(int(t), some), timeline.counts_at(int(t))[some])
    timeline.compact(4000)  # moments before the cut read as of it
    expected = np.stack([timeline.counts_at(int(t))[r] for r, t in zip(rows, times, strict=True)])
    np.testing.assert_array_equal(timeline.counts_of(rows, times), expected)
    timeline.add_posts(3)  # posts with no views yet, beyond every checkpoint
    every = np.arange(n_posts + 3)
    for t in (17, 4000, 7777, 20_000):
        np.testing.assert_array_equal(timeline.counts_at_rows(t, every), timeline.counts_at(t))


def test_post_timeline_compaction_keeps_counts_from_the_cut():
    """Forgetting the blocks before a cut changes no count from the cut on; earlier moments read as of the
    cut; late views and new batches after a compaction still land in place."""
    n_posts, n = 30, 4000
    ts, post, target, weight, base = _random_views(6, n_posts, n)
    timeline = PostTimeline(base, block=97)
    first, second = np.arange(n) < 3000, np.arange(n) >= 3000
    late = second & (ts < 4000)  # the second part holds views from before the cut
    timeline.add(ts[first], post[first], target[first], weight[first])
    blocks = len(timeline.frame.blocks)
    timeline.compact(4000)
    assert 0 < len(timeline.frame.blocks) < blocks

    def expected(t, seen):
        return base + counts_before(post[seen], ts[seen], target[seen], weight[seen], np.arange(n_posts),
                                    np.full(n_posts, t))

    for t in (4000, 4001, 7777, 20_000):
        np.testing.assert_array_equal(timeline.counts_at(t), expected(t, first))
    np.testing.assert_array_equal(timeline.counts_at(17), expected(4000, first))  # before the cut: as of it
    timeline.add(ts[second], post[second], target[second], weight[second])
    assert late.any()
    for t in (4000, 4001, 7777, 20_000):
        np.testing.assert_array_equal(timeline.counts_at(t), expected(t, first | second))


def test_served_request_equals_training_row(trained, prepared):
    """What the service computes for (u, p, t) is the row training builds for (u, p, t). Rows of the
    held-out window read the collaborative vectors the artifact serves (fitted before its cut); rows before
    it, those of their own period — the same function of other fitted vectors, checked with the served ones."""
    from app.engine import Recommender

    state = Recommender.load(trained["model_dir"]).state
    rows = _rows(prepared, 150, seed=1)
    rows = rows[rows["ts"] >= state.base_as_of]
    served_cf = state.catalogue.frame.posts.cf
    schedule = prepared.schedule
    np.testing.assert_array_equal(served_cf, schedule.vectors[schedule.period([prepared.split.test_start])[0]])
    assert (np.abs(served_cf).sum(axis=1) > 0).sum() > (np.abs(schedule.vectors[0]).sum(axis=1) > 0).sum()
    held = rows["ts"].to_numpy() >= prepared.split.test_start
    assert held.sum() > 20 and (~held).sum() > 5
    by_period = rows_matrix(prepared.history, prepared.profile, prepared.static, prepared.priors, rows, text=True,
                            schedule=schedule)
    trained_rows = rows_matrix(prepared.history, prepared.profile, replace(prepared.static, cf=served_cf),
                               prepared.priors, rows, text=True)
    np.testing.assert_array_equal(by_period[held], trained_rows[held])
    served = state.features_for(rows[c.USER_ID].to_numpy(), rows[c.POST_ID].to_numpy(), rows["ts"].to_numpy(), True)
    np.testing.assert_allclose(served, trained_rows, rtol=1e-6, atol=1e-6)
    assert (served[:, feature_names(True).index("sim_cf")] != 0).mean() > 0.2
    counts = [i for i, n in enumerate(feature_names(True)) if n in USER_NUM[8:12] or n.startswith("p_")]
    np.testing.assert_array_equal(served[:, counts], trained_rows[:, counts])


def test_a_request_reads_the_counters_of_its_candidates_as_of_its_moment(trained):
    """A request that ranks candidates reads their counters alone (`LiveState.at(every_post=False)`): the
    feature rows equal those of the view with every post's counters, at moments in the held-out window
    (counted from checkpoints) and after the last event (the running totals)."""
    from app.engine import Recommender

    engine = Recommender.load(trained["model_dir"])
    state = engine.state
    rng = np.random.default_rng(4)
    split = engine.manifest.data["split"]
    times = [*rng.integers(int(split["test_start"]), int(split["end"]), 20).tolist(), state.latest_event + 1]
    for user_id, t in zip(rng.choice(state.snapshot.user_ids, len(times)), times, strict=True):
        row = state.user_row(int(user_id))
        every, lazy = state.at(row, int(t))[1], state.at(row, int(t), every_post=False)[1]
        assert lazy.counters_of_rows is not None and len(lazy.counters) == 0
        rows = np.unique(rng.integers(0, state.n_posts, 300))
        np.testing.assert_array_equal(lazy.counters_of(rows), every.counters[rows])
        user = state.at(row, int(t))[0]
        np.testing.assert_array_equal(assemble(user.view, np.int64(0), lazy, rows, np.int64(t), text=True),
                                      assemble(user.view, np.int64(0), every, rows, np.int64(t), text=True))


def test_incremental_state_equals_rebuilt_state(prepared):
    """A snapshot cut early plus the later events applied in batches (late ones included) answers as a
    snapshot cut at the end does, for moments after both cuts."""
    h, s = prepared.history, prepared.split
    early, late = s.val_start, s.test_start
    ev = h.events
    old = ev.ts < early
    rows = np.repeat(np.arange(len(h.user_ids)), np.diff(ev.indptr))
    early_history = History(h.user_ids, h.post_ids, _subset(ev, old, len(h.user_ids)), h.user_ids[rows[old]],
                            h.seq, h.start, early)
    early_history.weigh(prepared.priors, prepared.static.topic)
    state = LiveState(build_snapshot(early_history, prepared.users, prepared.static, prepared.priors,
                                     early - 3 * DAY), 72 * 3600)
    later = np.flatnonzero(~old)
    rng = np.random.default_rng(2)
    later = later[np.argsort(ev.ts[later] + rng.integers(-600, 600, size=len(later)))]  # jittered: late rows
    for part in np.array_split(later, 23):
        state.apply(EventBatch(ev.ts[part], h.user_ids[rows[part]], h.post_ids[ev.post[part]], ev.kind[part],
                               ev.target[part]))
    rebuilt = LiveState(build_snapshot(h, prepared.users, prepared.static, prepared.priors, late - 3 * DAY), 72 * 3600)
    assert state.late_events > 0
    users = rng.choice(h.user_ids, size=25, replace=False)
    _assert_same_answers(state, rebuilt, users, (late + 7, late + 3 * DAY + 11, h.end + DAY))  # exclusion in both


def test_features_for_many_triples_equal_one_request_each(prepared, monkeypatch):
    """`LiveState.features_for` (each user's moments folded at once, each post's counters at its moment)
    gives, row for row, what a request at that moment assembles: events applied in batches after the
    snapshot (late ones, sealed blocks), moments before and after the snapshot's cut, a user who signed up
    after it."""
    h, s = prepared.history, prepared.split
    ev = h.events
    rows = np.repeat(np.arange(len(h.user_ids)), np.diff(ev.indptr))
    old = ev.ts < s.val_start
    early_history = History(h.user_ids, h.post_ids, _subset(ev, old, len(h.user_ids)), h.user_ids[rows[old]],
                            h.seq, h.start, s.val_start)
    early_history.weigh(prepared.priors, prepared.static.topic)
    state = LiveState(build_snapshot(early_history, prepared.users, prepared.static, prepared.priors,
                                     s.val_start - 3 * DAY), 72 * 3600)
    state.timeline.block = 997
    later = np.flatnonzero(~old)
    rng = np.random.default_rng(4)
    later = later[np.argsort(ev.ts[later] + rng.integers(-600, 600, size=len(later)))]
    for part in np.array_split(later, 7):
        state.apply(EventBatch(ev.ts[part], h.user_ids[rows[part]], h.post_ids[ev.post[part]], ev.kind[part],
                               ev.target[part]))
    newcomer = int(h.user_ids.max()) + 1
    state.add_users(prepared.users.head(1).assign(**{c.USER_ID: newcomer}))
    assert len(state.timeline.frame.blocks) > 3 and state.late_events > 0
    n = 400
    users = np.r_[rng.choice(h.user_ids, n - 5), np.full(5, newcomer)]
    posts = rng.choice(h.post_ids, n)
    times = rng.integers(s.val_start - 5 * DAY, h.end + DAY, n)
    times[:50] = times[0]  # one moment for many rows, and one user at many moments
    users[50:80] = users[50]

    def one_request(u: int, p: int, t: int, text: bool) -> np.ndarray:
        user, catalogue = state.at(state.user_row(u), t)
        return assemble(user.view, np.int64(0), catalogue, state.post_rows(np.array([p])), np.int64(t), text)[0]

    monkeypatch.setattr("app.live_state.FEATURES_CHUNK", 64)  # chunks that cut through one user's triples
    for text in (True, False):
        expected = np.stack([one_request(int(u), int(p), int(t), text) for u, p, t in zip(users, posts, times,
                                                                                            strict=True)])
        np.testing.assert_array_equal(state.features_for(users, posts, times, text), expected)
    assert state.features_for(users[:0], posts[:0], times[:0], True).shape == (0, len(feature_names(True)))
    with pytest.raises(KeyError, match="unknown"):
        state.features_for(np.array([newcomer + 1]), posts[:1], times[:1], True)


def _assert_same_answers(state: LiveState, other: LiveState, users, times, viewed: bool = True) -> None:
    for u in users:
        for t in times:
            a, pa = state.at(state.user_row(int(u)), t)
            b, pb = other.at(other.user_row(int(u)), t)
            np.testing.assert_array_equal(a.view.num, b.view.num)
            np.testing.assert_array_equal(a.view.last_view, b.view.last_view)
            for name in ("vec", "contrast", "topic_vec", "topic_tfidf"):
                np.testing.assert_allclose(getattr(a.view, name), getattr(b.view, name), atol=1e-5)
            np.testing.assert_array_equal(np.sort(a.liked), np.sort(b.liked))
            if viewed:
                np.testing.assert_array_equal(np.sort(a.viewed), np.sort(b.viewed))
            np.testing.assert_array_equal(pa.counters, pb.counters)


def _replayed(prepared):
    """For the compaction tests: a factory of states over a snapshot of the events before validation
    (small timeline blocks, so that a compaction has some to forget), the `EventBatch` of some event rows,
    and the rows of every event after that snapshot, which the tests apply."""
    h, s = prepared.history, prepared.split
    early = s.val_start
    ev = h.events
    rows = np.repeat(np.arange(len(h.user_ids)), np.diff(ev.indptr))
    old = ev.ts < early
    early_history = History(h.user_ids, h.post_ids, _subset(ev, old, len(h.user_ids)), h.user_ids[rows[old]],
                            h.seq, h.start, early)
    early_history.weigh(prepared.priors, prepared.static.topic)

    def fresh() -> LiveState:
        state = LiveState(build_snapshot(early_history, prepared.users, prepared.static, prepared.priors,
                                         early - 3 * DAY), 72 * 3600)
        state.timeline.block = 997
        return state

    def batch(part) -> EventBatch:
        return EventBatch(ev.ts[part], h.user_ids[rows[part]], h.post_ids[ev.post[part]], ev.kind[part],
                          ev.target[part])

    return fresh, batch, np.flatnonzero(~old)


def test_compacted_state_equals_uncompacted_and_rebuilt(prepared):
    """Events applied after an early snapshot, then folded into the base at a later cut: the base equals
    the one a snapshot built from scratch at that cut holds (counts, days and likes exactly), and every
    answer from the cut on equals the uncompacted state's and the rebuilt one's; events applied after the
    compaction land as they would have."""
    h, s = prepared.history, prepared.split
    late = s.test_start
    cut = late - 3 * DAY
    ev = h.events
    fresh, batch, later = _replayed(prepared)
    state, kept = fresh(), fresh()
    rng = np.random.default_rng(3)
    later = later[np.argsort(ev.ts[later] + rng.integers(-600, 600, size=len(later)))]  # jittered: late rows
    before, after = later[ev.ts[later] < late], later[ev.ts[later] >= late]  # the second part: after compacting

    for part in np.array_split(before, 11):
        state.apply(batch(part))
        kept.apply(batch(part))
    blocks = len(state.timeline.frame.blocks)
    folded = state.compact(cut)
    assert folded > 0 and state.base_as_of == cut and state.compactions == 1
    assert len(state.timeline.frame.blocks) < blocks and not state._tails
    assert state.compact(cut - DAY) == 0  # never backwards
    rebuilt_early = build_snapshot(h, prepared.users, prepared.static, prepared.priors, cut)
    got = state.snapshot
    np.testing.assert_array_equal(got.base_counts, rebuilt_early.base_counts)
    np.testing.assert_array_equal(got.days_indptr, rebuilt_early.days_indptr)
    np.testing.assert_array_equal(got.days, rebuilt_early.days)
    np.testing.assert_array_equal(got.likes_indptr, rebuilt_early.likes_indptr)
    for r in range(len(h.user_ids)):
        lo, hi = got.likes_indptr[r], got.likes_indptr[r + 1]
        np.testing.assert_array_equal(np.sort(got.likes[lo:hi]), np.sort(rebuilt_early.likes[lo:hi]))
    np.testing.assert_array_equal(got.seen_indptr, rebuilt_early.seen_indptr)
    assert (got.events.ts >= cut).all()
    users = rng.choice(h.user_ids, size=25, replace=False)
    # the features from the cut on; the posts viewed in the exclusion window once it lies after the cut
    _assert_same_answers(state, kept, users, (cut, cut + DAY), viewed=False)
    _assert_same_answers(state, kept, users, (cut + 3 * DAY, late + 11))
    for part in np.array_split(after, 7):
        state.apply(batch(part))
        kept.apply(batch(part))
    rebuilt = LiveState(build_snapshot(h, prepared.users, prepared.static, prepared.priors, cut), 72 * 3600)
    times = (cut + 3 * DAY, late + 7, late + 3 * DAY + 11, h.end + DAY)  # the exclusion window inside all
    _assert_same_answers(state, kept, users, times)
    _assert_same_answers(state, rebuilt, users, times)
    assert state.compact(late) > 0  # again, with the events applied since
    _assert_same_answers(state, rebuilt, users, times[2:])
    assert state.features_as_of(cut) == late


def test_a_compaction_built_while_events_arrive_equals_compacting_first(prepared):
    """The follower builds a compaction's base beside it and goes on applying events: events applied
    while the base is built (new ones, and late ones from before the cut) are answered at once, and once
    the compaction is published the state holds exactly what compacting first and applying them after
    holds — the same base arrays, the same per-user tails, the same answers."""
    h, s = prepared.history, prepared.split
    late = s.test_start
    cut = late - 3 * DAY
    ev = h.events
    fresh, batch, later = _replayed(prepared)
    rng = np.random.default_rng(5)
    first, withheld = later[ev.ts[later] < late], later[ev.ts[later] >= late]
    late_rows = rng.random(len(first)) < 0.02  # rows before the cut that arrive while the base is built
    first, withheld = first[~late_rows], np.concatenate([first[late_rows], withheld])
    beside, first_then, everything = fresh(), fresh(), fresh()
    for part in np.array_split(first, 5):
        for state in (beside, first_then, everything):
            state.apply(batch(part))
    job = beside.start_compaction(cut)
    assert job is not None and beside.start_compaction(beside.base_as_of) is None
    first_then.compact(cut)
    for part in np.array_split(withheld, 4):
        for state in (beside, first_then, everything):
            state.apply(batch(part))
    users = rng.choice(h.user_ids, size=25, replace=False)
    times = (cut + 3 * DAY, late + 7, late + 3 * DAY + 11, h.end + DAY)
    _assert_same_answers(beside, everything, users, times)  # while it builds: every event, at once
    job.build_in_child()  # as the follower builds it: in a forked child (`compact` above: in this thread)
    assert beside.publish_compaction(job) > 0 and beside.base_as_of == cut and beside.compactions == 1
    for name in ("base_counts", "days_indptr", "days", "likes_indptr", "likes", "seen_indptr", "seen"):
        np.testing.assert_array_equal(getattr(beside.snapshot, name), getattr(first_then.snapshot, name))
    for name in ("indptr", "ts", "post", "kind", "target"):
        np.testing.assert_array_equal(getattr(beside.snapshot.events, name), getattr(first_then.snapshot.events, name))
    assert beside.snapshot.profile is job.base.profile and beside.snapshot.posts is job.base.posts  # not sent back
    assert beside._tails.keys() == first_then._tails.keys() and beside._tails
    for row, tail in beside._tails.items():
        np.testing.assert_array_equal(tail, first_then._tails[row])
    _assert_same_answers(beside, first_then, users, times)
    # against the state that never compacted, all but the last views: a row from before the cut that
    # arrives after a compaction stays outside the base's list of last views, built or published
    _assert_same_answers(beside, everything, users, times, viewed=False)
    with pytest.raises(RuntimeError, match="changed"):
        beside.publish_compaction(job)  # published once only


def _subset(ev, mask, n_users):
    from app.snapshot import UserEvents

    rows = np.repeat(np.arange(n_users), np.diff(ev.indptr))
    return UserEvents.build(rows[mask], ev.ts[mask], ev.post[mask], ev.kind[mask], ev.target[mask], n_users)


def test_view_weights_keep_the_like_rate_of_a_post_shown_to_its_fans():
    """Fans of a topic like its posts five times as often as the others. With each view weighted by the
    viewer's fitted affinity, a post's like rate is the same whether the feed shows it to anyone or to
    fans only, where the plain rate more than doubles; over the views they were fitted on, the weights
    average one unit."""
    rng = np.random.default_rng(0)
    n_users, fans = 2000, 400
    p_like = np.where(np.arange(n_users) < fans, 0.5, 0.1)
    topic_views = np.zeros((n_users, N_TOPICS))
    topic_views[:, 0] = 100  # the fit: every user viewed 100 posts of topic 0, chosen at random
    topic_liked = np.zeros_like(topic_views)
    topic_liked[:, 0] = rng.binomial(100, p_like)
    rate = topic_liked.sum() / topic_views.sum()
    weight, new = view_weight_table(topic_views, topic_liked, rate)
    assert abs(weight[:, 0].mean() / WEIGHT_UNIT - 1) < 0.01
    assert np.median(weight[:fans, 0]) > 2 * WEIGHT_UNIT > WEIGHT_UNIT > np.median(weight[fans:, 0])
    priors = Priors(rate, np.zeros(4), (), np.zeros(0), np.zeros(0), weight, new)
    no_weights = Priors(rate, np.zeros(4), (), np.zeros(0), np.zeros(0))

    def like_rate(viewers: np.ndarray, p: Priors) -> float:
        liked = int((rng.random(len(viewers)) < p_like[viewers]).sum())
        w = p.view_weights(viewers, np.zeros(len(viewers), np.int64))
        return float(finalize_posts(np.array([[len(viewers), liked, w.sum()]]), p)[0, 2])

    anyone, to_fans = rng.integers(0, n_users, 20_000), rng.integers(0, fans, 20_000)
    assert abs(like_rate(to_fans, priors) / like_rate(anyone, priors) - 1) < 0.1
    assert like_rate(to_fans, no_weights) > 2 * like_rate(anyone, no_weights)
    # a viewer unknown at the fit weighs as a user with no history: the global rate over the topic's mean
    # rate, about one unit here (topic 0 holds every view); topics never viewed weigh one unit
    assert priors.view_weights(np.array([n_users + 5]), np.array([0]))[0] == new[0]
    assert abs(new[0] / WEIGHT_UNIT - 1) < 0.02 and (new[1:] == WEIGHT_UNIT).all()


def test_view_index_counts_across_its_prefix_blocks(monkeypatch):
    """The weights' prefix sums are kept per block of positions: with blocks of 16 views, counts whose
    range starts or ends on either side of a block boundary equal the direct count."""
    import app.post_counters as post_counters

    monkeypatch.setattr(post_counters, "_BLOCK_BITS", 4)
    rng = np.random.default_rng(0)
    for n in (0, 1, 15, 16, 17, 32, 33, 1000):
        post, ts = rng.integers(0, 7, n), rng.integers(0, 500, n)
        target, weight = rng.integers(0, 2, n), rng.integers(1, MAX_WEIGHT + 1, n)
        at_post, at_time = rng.integers(0, 7, 300), rng.integers(-5, 520, 300)
        got = post_counters.ViewIndex(post, ts, target, weight).counts(at_post, at_time)
        for (p, t), row in zip(zip(at_post, at_time, strict=True), got, strict=True):
            seen = (post == p) & (ts < t)
            assert row.tolist() == [seen.sum(), (seen & (target > 0)).sum(), weight[seen].sum()], (n, p, t)


def test_proxy_samples_are_training_rows_of_the_whole_catalogue(prepared):
    """The retrieval proxy learns from requests scored over every post (`catalogue_samples`): each kept
    row is the training row of (user, post, moment) that `rows_matrix` builds, and the scorer's best posts
    of the whole catalogue are among them."""
    from training.retrieval import catalogue_samples, proxy_requests

    requests = proxy_requests(_rows(prepared, 200), n=3, seed=1)
    names = list(feature_names(True))
    rate, sim = names.index("p_like_rate"), names.index("sim_cf")

    def score(x, rows, ts):  # any function of the row's features
        return x[:, rate] + 0.5 * x[:, sim]

    x, s, request, post = catalogue_samples(prepared, requests, score, top=5, random=20)
    n = len(prepared.static.topic)
    assert len(requests) == 3 and set(request.tolist()) == {0, 1, 2}
    for i, r in requests.iterrows():
        kept = request == i
        assert 20 <= kept.sum() <= 25 and len(np.unique(post[kept])) == kept.sum()
        every = pd.DataFrame({"user_row": int(r["user_row"]), "post_row": np.arange(n), "ts": int(r["ts"])})
        rows = rows_matrix(prepared.history, prepared.profile, prepared.static, prepared.priors, every, True,
                           schedule=prepared.schedule)
        scores = score(rows, None, None)
        np.testing.assert_allclose(x[kept], rows[post[kept]], rtol=1e-6, atol=1e-7)
        np.testing.assert_allclose(s[kept], scores[post[kept]], rtol=1e-6)
        # the five best scores of the catalogue are the five best kept (ties may keep either post)
        np.testing.assert_allclose(np.sort(s[kept])[-5:], np.sort(scores)[-5:], rtol=1e-6)


def test_time_features_of_one_request_equal_the_batch_path():
    """A request's four time features (one user, one moment) are computed directly; they equal the batch
    path's bit for bit, users who never viewed (NaN) included."""
    user = SimpleNamespace(last_view=np.array([1_640_000_000, -1, 1_639_999_999, 86_399]),
                           first_view=np.array([1_630_000_000, -1, -1, 0]))
    for ui in range(4):
        for t in (86_400, 1_640_000_000, 1_640_003_601, 1_641_234_567, 1_700_000_123):
            one = _time_block(user, np.asarray(ui, np.int64), np.asarray(t, np.int64))
            batch = _time_block(user, np.array([ui]), np.array([t]))[0]
            assert one.dtype == batch.dtype
            np.testing.assert_array_equal(one, batch)  # NaN equals NaN here
