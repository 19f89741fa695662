"""Model versions while serving: a swap under requests (no failure, versions never go back), refused
candidates (the old version keeps serving), the admin endpoint."""

import json
import shutil
import threading
import time

import pytest
from fastapi.testclient import TestClient

from app.artifacts import MANIFEST, set_current
from app.config import Settings
from app.main import create_app


def _version(models, source, name: str):
    """A copy of a trained version under another name (the manifest says which version it is)."""
    dst = models / name
    shutil.copytree(source, dst)
    manifest = json.loads((dst / MANIFEST).read_text())
    (dst / MANIFEST).write_text(json.dumps({**manifest, "version": name}))
    return dst


@pytest.fixture
def versions(trained, tmp_path):
    models = tmp_path / "models"
    models.mkdir()
    for name in ("v1", "v2"):
        _version(models, trained["version_dir"], name)
    set_current(models, "v1")
    return models


def _client(trained, models, **settings) -> TestClient:
    settings = {"state_follow": False, **settings}
    s = Settings(database_url=trained["db_url"], model_dir=models, log_flush_seconds=0.05, model_watch_seconds=0.05,
                 **settings)
    return TestClient(create_app(s))


def _wait(predicate, timeout=20.0) -> None:
    started = time.monotonic()
    while not predicate():
        assert time.monotonic() - started < timeout, "not reached in time"
        time.sleep(0.02)


@pytest.mark.parametrize("follow", [False, True])
def test_swap_while_requests_run(trained, versions, tmp_path, follow):
    seen: list[list[str]] = [[] for _ in range(3)]
    failures: list[int] = []
    stop = threading.Event()
    db = tmp_path / "w.db"  # the state follows a database of its own
    shutil.copy(trained["db_url"].removeprefix("sqlite:///"), db)
    with _client({"db_url": f"sqlite:///{db}"}, versions, state_follow=follow) as client:
        def hammer(i: int) -> None:
            while not stop.is_set():
                r = client.get("/post/recommendations/", params={"id": 200 + i, "time": "2021-12-24T10:00:00"})
                if r.status_code != 200:
                    failures.append(r.status_code)
                else:
                    seen[i].append(r.json()["model_version"])

        threads = [threading.Thread(target=hammer, args=(i,)) for i in range(3)]
        for t in threads:
            t.start()
        _wait(lambda: all(len(s) > 5 for s in seen))
        set_current(versions, "v2")
        _wait(lambda: all(s and s[-1] == "v2" for s in seen))
        time.sleep(0.2)
        stop.set()
        for t in threads:
            t.join()
        model = client.get("/model").json()
        ready = client.get("/ready").json()
    assert failures == []
    for s in seen:  # every answer from one of the two versions, and none goes back after the switch
        assert set(s) == {"v1", "v2"}
        assert s == sorted(s)
    assert model["version"] == "v2" and model["swaps"][-1]["outcome"] == "swapped"
    assert model["swaps"][-1]["previous"] == "v1"
    assert ready["state"]["following"] is follow and ready["status"] == "ready"


@pytest.mark.parametrize("damage", ["truncated", "schema", "missing"])
def test_a_broken_candidate_is_refused_and_the_old_one_keeps_serving(trained, versions, damage):
    broken = _version(versions, trained["version_dir"], "v3")
    if damage == "truncated":
        path = broken / "state.npz"
        path.write_bytes(path.read_bytes()[:1000])
    elif damage == "schema":
        manifest = json.loads((broken / MANIFEST).read_text())
        (broken / MANIFEST).write_text(json.dumps({**manifest, "schema": 99}))
    else:
        (broken / "test.cbm").unlink()
    with _client(trained, versions) as client:
        set_current(versions, "v3")
        _wait(lambda: client.get("/ready").json()["models"]["refusals"] == 1)
        ready = client.get("/ready").json()
        r = client.get("/post/recommendations/", params={"id": 201, "time": "2021-12-24T10:00:00"})
        metrics = client.get("/metrics").text
    assert r.status_code == 200 and r.json()["model_version"] == "v1"
    assert ready["model_version"] == "v1" and "v3" in ready["models"]["refused"]
    reason = ready["models"]["refused"]["v3"]
    assert {"truncated": "checksum", "schema": "schema", "missing": "missing"}[damage] in reason
    assert 'model_version_info{version="v1"} 1.0' in metrics and "model_refusals_total 1.0" in metrics


def test_admin_reload_needs_its_token(trained, versions):
    with _client(trained, versions) as client:  # no token configured: no endpoint
        assert client.post("/admin/reload").status_code == 404
    s = Settings(database_url=trained["db_url"], model_dir=versions, state_follow=False, admin_token="s3cret")
    with TestClient(create_app(s, watch_models=False)) as client:
        set_current(versions, "v2")
        assert client.post("/admin/reload").status_code == 401
        assert client.post("/admin/reload", headers={"Authorization": "Bearer nope"}).status_code == 401
        r = client.post("/admin/reload", headers={"Authorization": "Bearer s3cret"})
        assert r.status_code == 200 and r.json()["outcome"] == "swapped" and r.json()["serving"] == "v2"
        again = client.post("/admin/reload", headers={"Authorization": "Bearer s3cret"}).json()
        assert again == {"outcome": "unchanged", "version": "v2"}


# ------------------------------------------------------------------ workers of one server agree
def test_workers_switch_at_one_agreed_moment(tmp_path):
    """Two workers ready at different times get the same switch moment, after the later one's mark."""
    from app.lifecycle import WorkerBarrier

    stop, moments = threading.Event(), {}

    def worker(me: str, ready_after: float) -> None:
        time.sleep(ready_after)
        moments[me] = WorkerBarrier(tmp_path, workers=2, me=me, delay=0.5).switch_at("v2@1", lambda: True, stop)

    threads = [threading.Thread(target=worker, args=(me, d)) for me, d in (("a", 0.0), ("b", 0.4))]
    before = time.time()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert moments["a"] == moments["b"]
    assert moments["a"] >= before + 0.4 + 0.5 - 0.05  # after b's mark (file times are coarse), plus the margin


def test_a_worker_that_never_gets_ready_holds_no_one_and_a_newer_flip_cancels(tmp_path):
    from app.lifecycle import WorkerBarrier

    stop = threading.Event()
    started = time.monotonic()
    at = WorkerBarrier(tmp_path, workers=2, me="a", timeout=0.3).switch_at("v2@1", lambda: True, stop)
    assert at is not None and time.monotonic() - started >= 0.3
    # flipped again before the other worker was ready: no switch, and the mark is taken back, so that the
    # other worker, ready later, does not count it and switch alone to a version no longer current
    assert WorkerBarrier(tmp_path, workers=2, me="a").switch_at("v3@2", lambda: False, stop) is None
    assert not (tmp_path / "v3@2" / "a").exists()
    assert WorkerBarrier(tmp_path, workers=2, me="b").switch_at("v3@2", lambda: False, stop) is None
    assert WorkerBarrier(None).switch_at("v3@2", lambda: True, stop) <= time.time()  # one worker: at once


def test_a_request_after_the_agreed_moment_gets_the_new_version():
    from types import SimpleNamespace

    from app.lifecycle import serving_now

    state = SimpleNamespace(serving="old", pending=(time.time() + 0.3, "new"))
    assert serving_now(state) == "old"
    time.sleep(0.35)
    assert serving_now(state) == "new" and state.pending is None and state.serving == "new"
