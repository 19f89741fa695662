"""Faults a review found: a database that hangs instead of going away, and what must keep answering."""

import threading
import time

import pytest
from fastapi.testclient import TestClient
from sqlalchemy.engine import make_url

from app.config import Settings
from app.engine import Recommender
from app.main import create_app
from tests.tcp_proxy import TcpProxy


def _timed(client: TestClient, path: str, params: dict | None = None, limit: float = 30.0):
    """(status, seconds) of one request, or (None, limit) if it did not come back within `limit`: a request
    hanging with the database must fail the test, not hang it."""
    out: dict = {}

    def go() -> None:
        started = time.perf_counter()
        out["status"] = client.get(path, params=params).status_code
        out["seconds"] = time.perf_counter() - started

    t = threading.Thread(target=go, daemon=True)
    t.start()
    t.join(limit)
    return out.get("status"), out.get("seconds", limit)


@pytest.mark.parametrize("world_db", ["postgresql"], indirect=True)
def test_a_hanging_database_times_out_into_503_and_liveness_answers(trained, world_db):
    recommender = Recommender.load(trained["model_dir"])
    url = make_url(world_db)
    proxy = TcpProxy((url.host or "127.0.0.1", url.port or 5432))
    via_proxy = url.set(host="127.0.0.1", port=proxy.port).render_as_string(hide_password=False)
    # what is asserted is structure, not speed: a data request ends at the timeout instead of hanging,
    # and liveness never waits for the database (it answers well inside the timeout, even on a loaded machine)
    timeout = 3.0
    settings = Settings(database_url=via_proxy, model_dir="unused", db_timeout_seconds=timeout,
                        log_flush_seconds=0.05, state_poll_seconds=0.05)
    uid = int(recommender.state.snapshot.user_ids[0])
    try:
        with TestClient(create_app(settings, load_recommender=lambda _: recommender)) as client:
            assert _timed(client, f"/user/{uid}")[0] == 200
            proxy.hang()  # connections stay open, nothing comes back
            data = [_timed(client, path) for path in (f"/user/{uid}", f"/post/{uid}/feed", "/ready")]
            assert all(status == 503 for status, _ in data), data
            assert all(seconds < 3 * timeout for _, seconds in data), data  # ended by the timeout, not a hang
            for _ in range(10):
                status, seconds = _timed(client, "/health")
                assert status == 200 and seconds < timeout, seconds  # not queued behind the database
            for path in ("/model", "/metrics"):
                assert _timed(client, path)[0] == 200
            status, _ = _timed(client, "/post/recommendations/", {"id": uid, "time": "2021-12-24T12:00:00"})
            assert status == 200
            proxy.resume()
            deadline = time.monotonic() + 20
            while _timed(client, f"/user/{uid}")[0] != 200:
                assert time.monotonic() < deadline, "the data endpoints did not come back"
                time.sleep(0.1)
    finally:
        proxy.close()


@pytest.mark.parametrize("world_db", ["postgresql"], indirect=True)
def test_a_stopped_database_is_not_asked_again_by_every_request(trained, world_db):
    """After a connection failed, the data endpoints answer 503 at once for RECONNECT_AFTER_SECONDS instead of
    each taking a thread and a connection attempt (which made the 503s of a stopped database slower than
    /health under load); after the window, a request tries again and finds the database back."""
    from sqlalchemy import event

    from app.api.deps import RECONNECT_AFTER_SECONDS

    recommender = Recommender.load(trained["model_dir"])
    url = make_url(world_db)
    proxy = TcpProxy((url.host or "127.0.0.1", url.port or 5432))
    via_proxy = url.set(host="127.0.0.1", port=proxy.port).render_as_string(hide_password=False)
    settings = Settings(database_url=via_proxy, model_dir="unused", db_timeout_seconds=3.0, log_flush_seconds=60,
                        state_follow=False)
    uid = int(recommender.state.snapshot.user_ids[0])
    try:
        with TestClient(create_app(settings, load_recommender=lambda _: recommender, watch_models=False)) as client:
            assert client.get(f"/user/{uid}").status_code == 200
            attempts = []
            event.listen(client.app.state.db, "do_connect", lambda *a: attempts.append(time.monotonic()))
            proxy.cut()
            started = time.monotonic()
            statuses = [client.get(f"/user/{uid}").status_code for _ in range(30)]
            elapsed = time.monotonic() - started
            assert statuses == [503] * 30
            assert 1 <= len(attempts) <= 1 + elapsed / RECONNECT_AFTER_SECONDS, (len(attempts), elapsed)
            proxy.restore()
            time.sleep(RECONNECT_AFTER_SECONDS)
            assert client.get(f"/user/{uid}").status_code == 200
    finally:
        proxy.close()
