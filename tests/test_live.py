"""The live state end to end: what is written to the database while the service runs reaches the next
answers — likes, views, new users — on SQLite and PostgreSQL, through out-of-order commits and a lost
database."""

import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime

import numpy as np
import pytest
from fastapi.testclient import TestClient
from sqlalchemy import func, insert, select, text
from sqlalchemy.engine import make_url

from app import columns as c
from app.api.routes_ops import state_report
from app.config import Settings
from app.db import make_engine
from app.engine import POPULAR, Recommender
from app.follower import Follower
from app.main import create_app
from app.tables import feed_data, user_data
from tests.tcp_proxy import TcpProxy

BOTH = pytest.mark.parametrize("world_db", ["sqlite", "postgresql"], indirect=True)


def _wait(predicate: Callable[[], bool], timeout: float = 10.0) -> float:
    started = time.monotonic()
    while not predicate():
        if time.monotonic() - started > timeout:
            raise AssertionError(f"not reached within {timeout}s")
        time.sleep(0.02)
    return time.monotonic() - started


def _client(db_url: str, recommender: Recommender) -> TestClient:
    settings = Settings(database_url=db_url, model_dir="unused", log_flush_seconds=0.05, state_poll_seconds=0.05)
    return TestClient(create_app(settings, load_recommender=lambda _: recommender))


def _iso(ts: int) -> str:
    return datetime.fromtimestamp(ts, tz=UTC).isoformat()


def _ids(body: dict) -> list[int]:
    return [p["id"] for p in body["recommendations"]]


def _events(rng, users, posts, t0: int, n: int) -> list[dict]:
    rows = []
    for i in range(n):
        ts = datetime.fromtimestamp(t0 + i, tz=UTC).replace(tzinfo=None)
        rows.append({c.TIMESTAMP: ts, c.USER_ID: int(rng.choice(users)), c.POST_ID: int(rng.choice(posts)),
                     c.ACTION: c.VIEW, c.TARGET: int(rng.random() < 0.2)})
    return rows


@BOTH
def test_a_like_removes_the_post_from_the_next_answer(trained, world_db):
    recommender = Recommender.load(trained["model_dir"])  # a state of its own: the test writes to it
    snap = recommender.state.snapshot
    uid, t = int(snap.user_ids[3]), snap.events_until + 3600
    with _client(world_db, recommender) as client:
        _wait(lambda: client.get("/ready").status_code == 200)
        ask = {"id": uid, "time": _iso(t), "limit": 5}
        first = client.get("/post/recommendations/", params=ask).json()
        top = _ids(first)[0]
        assert first["features_as_of"] == _iso(t).replace("+00:00", "")
        engine = make_engine(world_db)
        with engine.begin() as conn:  # the platform records a view and its like a minute before t
            moment = datetime.fromtimestamp(t - 60, tz=UTC).replace(tzinfo=None)
            conn.execute(insert(feed_data), [
                {c.TIMESTAMP: moment, c.USER_ID: uid, c.POST_ID: top, c.ACTION: c.VIEW, c.TARGET: 1},
                {c.TIMESTAMP: moment, c.USER_ID: uid, c.POST_ID: top, c.ACTION: c.LIKE, c.TARGET: None}])
        engine.dispose()
        _wait(lambda: top not in _ids(client.get("/post/recommendations/", params=ask).json()), timeout=5)
        state = client.get("/ready").json()["state"]
        assert state["events_applied"] == 2 and state["applied_seq"] == state["database_seq"]
        # the same request a minute before the like still sees the post: answers are as of their moment
        earlier = client.get("/post/recommendations/", params={**ask, "time": _iso(t - 120)}).json()
        assert _ids(earlier) == _ids(first)
        metrics = client.get("/metrics").text
        assert "state_events_applied_total 2.0" in metrics and "state_lag_seconds" in metrics


@BOTH
def test_a_new_user_is_ranked_by_a_model(trained, world_db):
    recommender = Recommender.load(trained["model_dir"])
    # users without history get what validated best for them (selection may choose a counter ranker over
    # the model, tests/test_reallogs.py); this test is about the new user reaching the model at all
    recommender.cold_ranker, recommender.cold_spread = {}, set()
    uid = int(recommender.state.snapshot.user_ids.max()) + 1000
    t = recommender.state.snapshot.events_until + 60
    ask = {"id": uid, "time": _iso(t), "limit": 5}
    with _client(world_db, recommender) as client:
        _wait(lambda: client.get("/ready").status_code == 200)
        assert client.get("/post/recommendations/", params=ask).json()["model"] == POPULAR
        engine = make_engine(world_db)
        with engine.begin() as conn:
            conn.execute(insert(user_data), [{c.USER_ID: uid, c.GENDER: 0, c.AGE: 23, c.COUNTRY: "Russia",
                                              c.CITY: "Moscow", c.EXP_GROUP: 1, c.OS: "iOS", c.SOURCE: "ads"}])
        engine.dispose()
        _wait(lambda: client.get("/post/recommendations/", params=ask).json()["model"] != POPULAR, timeout=3)
        body = client.get("/post/recommendations/", params=ask).json()
    assert body["model"] in ("control", "test")
    assert _ids(body) == recommender.recommend(body["model"], uid, t, 5).post_ids.tolist()
    user, _ = recommender.state.at(recommender.state.user_row(uid), t)
    assert user.view.num[0, 8] == 0  # no views yet: ranked from the profile


@pytest.mark.parametrize("world_db", ["postgresql"], indirect=True)
@pytest.mark.parametrize("outcome", ["commit", "rollback"])
def test_out_of_order_commits_are_applied_once(trained, world_db, outcome):
    """A row whose sequence number was taken before a row that committed first is applied when it
    commits, exactly once; a rolled-back number is given up once its transaction has ended."""
    recommender = Recommender.load(trained["model_dir"])
    engine = make_engine(world_db)
    follower = Follower(engine, recommender.state)
    rng = np.random.default_rng(0)
    snap = recommender.state.snapshot
    slow, fast = (_events(rng, snap.user_ids, snap.post_ids, snap.events_until + k, 1) for k in (10, 20))
    with engine.connect() as a, engine.connect() as b:
        a.execute(insert(feed_data), slow)  # takes the lower number, commits later
        b.execute(insert(feed_data), fast)
        b.commit()
        follower.poll()
        assert recommender.state.events_applied == 1 and follower.status.open_gaps == 1
        a.commit() if outcome == "commit" else a.rollback()
    for _ in range(3):
        follower.poll()
    expected = 2 if outcome == "commit" else 1
    assert recommender.state.events_applied == expected
    with engine.connect() as conn:  # txids are the cluster's: another session's open write holds gaps open
        others = conn.execute(text("SELECT count(*) FROM pg_stat_activity WHERE backend_xid IS NOT NULL "
                                   "AND pid <> pg_backend_pid()")).scalar()
    if outcome == "commit" or not others:
        assert follower.status.open_gaps == 0
    engine.dispose()


@pytest.mark.parametrize("world_db", ["postgresql"], indirect=True)
def test_a_poll_leaves_no_transaction_open(trained, world_db):
    """Idle polls and busy ones end their transaction on the server: an open one would hold
    PostgreSQL's cleanup horizon back for as long as the service runs (the idle poll's statements go
    by the driver's cursor, whose transaction SQLAlchemy does not know of)."""
    recommender = Recommender.load(trained["model_dir"])
    engine = make_engine(world_db)
    follower = Follower(engine, recommender.state, users_poll_seconds=0.0, posts_poll_seconds=0.0)
    snap = recommender.state.snapshot
    rng = np.random.default_rng(1)

    def state_of_follower() -> str:
        pid = follower._conn.connection.driver_connection.info.backend_pid
        with engine.connect() as conn:
            return conn.execute(text("SELECT state FROM pg_stat_activity WHERE pid = :p"), {"p": pid}).scalar()

    try:
        follower.poll()  # catches up (a busy poll)
        assert state_of_follower() == "idle"
        for _ in range(3):  # nothing new: only the driver's statements
            follower.poll()
            assert state_of_follower() == "idle"
        with engine.begin() as conn:
            conn.execute(insert(feed_data), _events(rng, snap.user_ids, snap.post_ids, snap.events_until + 5, 3))
        before = recommender.state.events_applied
        follower.poll()
        assert recommender.state.events_applied == before + 3
        assert state_of_follower() == "idle"
    finally:
        follower.stop()
        engine.dispose()


@pytest.mark.parametrize("world_db", ["postgresql"], indirect=True)
def test_a_lost_database_keeps_serving_and_catches_up(trained, world_db):
    """PostgreSQL goes away mid-stream (a proxy cuts every connection): recommendations keep coming from
    the last state, /ready says so, and once it is back every event is applied exactly once."""
    recommender = Recommender.load(trained["model_dir"])
    snap = recommender.state.snapshot
    url = make_url(world_db)
    proxy = TcpProxy((url.host or "127.0.0.1", url.port or 5432))
    via_proxy = url.set(host="127.0.0.1", port=proxy.port).render_as_string(hide_password=False)
    direct = make_engine(world_db)
    rng = np.random.default_rng(1)
    t0 = snap.events_until + 10
    try:
        with _client(via_proxy, recommender) as client:
            _wait(lambda: client.get("/ready").status_code == 200)
            with direct.begin() as conn:
                conn.execute(insert(feed_data), _events(rng, snap.user_ids, snap.post_ids, t0, 300))
            _wait(lambda: recommender.state.events_applied == 300)
            proxy.cut()
            for k in range(3):  # written while the service cannot see the database
                with direct.begin() as conn:
                    conn.execute(insert(feed_data), _events(rng, snap.user_ids, snap.post_ids, t0 + 300 + 100 * k, 100))
            uid = int(snap.user_ids[0])
            for _ in range(20):
                r = client.get("/post/recommendations/", params={"id": uid, "time": _iso(t0 + 1000), "limit": 5})
                assert r.status_code == 200 and len(r.json()["recommendations"]) == 5
            ready = client.get("/ready")
            assert ready.status_code == 503 and ready.json()["database"].startswith("unreachable")
            assert recommender.state.events_applied == 300
            proxy.restore()
            _wait(lambda: recommender.state.events_applied >= 600, timeout=30)
            time.sleep(0.3)  # a few more polls: nothing may be applied twice
            assert recommender.state.events_applied == 600
            assert client.get("/ready").json()["state"]["applied_seq"] == _max_seq(direct)
    finally:
        proxy.close()
        direct.dispose()
    # every written event once in the state: the views per user equal the database's
    with make_engine(world_db).connect() as conn:
        rows = conn.execute(select(feed_data.c.user_id, func.count()).where(feed_data.c.seq > snap.seq)
                            .group_by(feed_data.c.user_id)).all()
    for user_id, n in rows:
        user, _ = recommender.state.at(recommender.state.user_row(user_id), t0 + 10**6)
        base, _ = recommender.state.at(recommender.state.user_row(user_id), snap.events_until)
        assert user.view.num[0, 8] - base.view.num[0, 8] == n


def _max_seq(engine) -> int:
    with engine.connect() as conn:
        return int(conn.execute(text(f"SELECT MAX({c.SEQ}) FROM {feed_data.name}")).scalar())


def test_an_older_postgres_database_is_refused_then_migrated(trained, pg_url):
    """A feed_data made before the insertion sequence existed: the service says to migrate, in one line;
    `migrate` adds the sequence (numbering the existing rows) and the log's new column."""
    import subprocess
    import sys

    engine = make_engine(pg_url)
    with engine.begin() as conn:
        conn.execute(text("CREATE TABLE feed_data (timestamp timestamp NOT NULL, user_id int NOT NULL, "
                          "post_id int NOT NULL, action text NOT NULL, target int)"))
        conn.execute(text("INSERT INTO feed_data VALUES (now(), 1, 2, 'view', 0), (now(), 1, 2, 'like', NULL)"))
        conn.execute(text("CREATE TABLE recommendation_log (request_id varchar(36) PRIMARY KEY, user_id bigint NOT "
                          "NULL, requested_at timestamp NOT NULL, served_at timestamp NOT NULL, exp_group text NOT "
                          "NULL, model_name text NOT NULL, model_version text NOT NULL, post_ids text NOT NULL)"))
    env = {"MODEL_DIR": str(trained["model_dir"]), "DATABASE_URL": pg_url, "PATH": "/usr/bin:/bin"}
    out = subprocess.run([sys.executable, "-m", "app", "--port", "0"], capture_output=True, text=True, env=env,
                         timeout=120)
    assert out.returncode == 1 and len(out.stderr.strip().splitlines()) == 1 and "migrate" in out.stderr
    for expected in ("insertion sequence added", "up to date"):  # and a second run changes nothing
        run = subprocess.run([sys.executable, "-m", "training", "migrate", "--db", pg_url], capture_output=True,
                             text=True, env=env, timeout=120)
        assert run.returncode == 0 and expected in run.stdout
    with engine.connect() as conn:
        assert conn.execute(text("SELECT seq FROM feed_data ORDER BY seq")).scalars().all() == [1, 2]
        columns = conn.execute(text("SELECT column_name FROM information_schema.columns "
                                    "WHERE table_name = 'recommendation_log'")).scalars().all()
    engine.dispose()
    assert "features_as_of" in columns


def test_the_follower_folds_old_events_once_a_step_has_passed_the_horizon(trained):
    """Compaction runs once STATE_COMPACT_HOURS of events lie past STATE_KEEP_HOURS behind the latest
    event, never past the wall clock (a row stamped in the future folds nothing), and a request after
    the cut is answered as before."""
    day = 86_400
    recommender = Recommender.load(trained["model_dir"])
    state = recommender.state
    engine = make_engine(trained["db_url"])
    follower = Follower(engine, state, keep_seconds=170 * 3600, compact_seconds=day)
    base, uid = state.base_as_of, int(state.snapshot.user_ids[0])
    t = state.snapshot.events_until
    before, _ = state.at(state.user_row(uid), t)
    state.latest_event = base + 170 * 3600 + day - 1
    assert follower.compact(now=10**10) == 0 and state.compactions == 0  # not a whole step yet
    state.latest_event += 1
    assert follower.compact(now=base + 170 * 3600) == 0 and state.compactions == 0  # the clock is behind
    follower.compact(now=10**10)
    assert state.compactions == 1 and state.base_as_of == base + day
    after, _ = state.at(state.user_row(uid), t)
    np.testing.assert_array_equal(before.view.num, after.view.num)
    assert np.isfinite(recommender.segment_scores(after, t, state.n_posts)).all()  # lifts from the compacted base
    engine.dispose()


def test_likes_keep_arriving_while_a_compaction_is_built(trained, world_db, monkeypatch):
    """The follower builds a compaction's base in a thread beside it: a like committed while the base is
    built (held here until the like has been answered) reaches the next answer at once, and the
    compaction is published at the follower's next poll after the build, with the like kept."""
    from app.live_state import Compaction

    release = threading.Event()
    real_build = Compaction.build_in_child  # the follower's way on Linux: held before the fork

    def held_build(job, **kwargs) -> None:
        release.wait(30)
        real_build(job, **kwargs)

    monkeypatch.setattr(Compaction, "build_in_child", held_build)
    day = 86_400
    recommender = Recommender.load(trained["model_dir"])
    state = recommender.state
    engine = make_engine(world_db)
    follower = Follower(engine, state, poll_seconds=0.05, keep_seconds=72 * 3600, compact_seconds=day)
    snap = state.snapshot
    uid, t = int(snap.user_ids[3]), snap.events_until + 3600
    assert follower._due_cut() is not None  # the artifact's events span more than the horizon and a step
    follower.start()
    try:
        _wait(lambda: follower.compacting, timeout=10)  # building, and held
        assert state_report(recommender, follower)["compacting"] is True  # /ready says so
        top = int(recommender.recommend("test", uid, t, 5).post_ids[0])
        with engine.begin() as conn:
            moment = datetime.fromtimestamp(t - 60, tz=UTC).replace(tzinfo=None)
            conn.execute(insert(feed_data), [
                {c.TIMESTAMP: moment, c.USER_ID: uid, c.POST_ID: top, c.ACTION: c.VIEW, c.TARGET: 1},
                {c.TIMESTAMP: moment, c.USER_ID: uid, c.POST_ID: top, c.ACTION: c.LIKE, c.TARGET: None}])
        _wait(lambda: top not in recommender.recommend("test", uid, t, 5).post_ids.tolist(), timeout=5)
        assert state.compactions == 0 and follower.compacting  # answered before the build ended
        release.set()
        _wait(lambda: state.compactions == 1, timeout=30)
        assert state_report(recommender, follower)["compacting"] is False
        assert state.events_applied == 2 and state.base_as_of > snap.base_as_of
        assert follower.status.last_error == ""  # nothing went wrong on the follower's side of the publish
        assert top not in recommender.recommend("test", uid, t, 5).post_ids.tolist()
        assert int(state.post_rows(np.array([top]))[0]) in state.at(state.user_row(uid), t)[0].liked.tolist()
    finally:
        release.set()
        follower.stop()
        engine.dispose()


def test_new_rows_are_found_by_the_highest_id_and_ids_below_it_at_the_recount(tmp_path):
    from app.db import create_course_tables
    from app.follower import TableWatch

    engine = make_engine(f"sqlite:///{tmp_path / 'feed.db'}")
    create_course_tables(engine)

    def add(*ids: int) -> None:
        with engine.begin() as conn:
            conn.execute(insert(user_data), [{c.USER_ID: u, c.GENDER: 0, c.AGE: 30, c.COUNTRY: "Russia",
                                              c.CITY: "Moscow", c.EXP_GROUP: 1, c.OS: "iOS", c.SOURCE: "ads"}
                                             for u in ids])

    add(10, 20, 30)
    watch = TableWatch(user_data, user_data.c.user_id, c.USER_COLUMNS, np.array([10, 20, 30]), poll_seconds=0.0,
                       recount_seconds=3600.0)

    def poll() -> list[int] | None:
        with engine.connect() as conn:  # a connection per poll, as the follower does
            rows = watch.poll(conn)
        return None if rows is None else sorted(rows[c.USER_ID].tolist())

    assert poll() is None  # the first poll counts: nothing new
    add(40, 25)
    assert poll() == [40]  # above the highest: at once
    assert poll() is None  # 25 lies below the highest: only a count finds it
    watch.recount_seconds = 0.0
    assert poll() == [10, 20, 25, 30, 40]  # all read; the caller keeps the ones it does not know
    assert watch.known == (5, 40) and poll() is None
    add(50)
    assert poll() == [50]
    watch.forget_last()  # not taken in: the next poll returns it again
    assert poll() == [50]
    engine.dispose()
