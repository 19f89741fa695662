"""Entry points: the multi-worker listener keeps TCP_NODELAY; bad settings are refused in one line."""

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import uvicorn.config

from app.__main__ import _bind_tcp_socket


def test_listener_is_tcp_so_accepted_sockets_get_nodelay():
    config = uvicorn.config.Config("app.main:create_app", host="127.0.0.1", port=0)
    listener = _bind_tcp_socket(config)
    try:
        assert listener.proto == socket.IPPROTO_TCP  # asyncio sets TCP_NODELAY only when it sees this
        listener.listen()
        client = socket.create_connection(listener.getsockname())
        accepted, _ = listener.accept()
        assert accepted.proto == socket.IPPROTO_TCP
        accepted.close()
        client.close()
    finally:
        listener.close()


@pytest.mark.parametrize("module", ["app", "training"])
def test_bad_setting_is_one_line_error(module, tmp_path):
    # run outside the checkout so that a developer's .env cannot mask the bad values
    root = str(Path(__file__).resolve().parent.parent)
    env = {**os.environ, "PYTHONPATH": root, "SCORING_THREADS": "0", "AB_CONTROL_PERCENT": "200"}
    args = [sys.executable, "-m", module] + (["evaluate", "--requests", "1"] if module == "training" else [])
    out = subprocess.run(args, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=120,
                         check=False)
    assert out.returncode == 1
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: invalid settings:"), out.stderr
    assert "SCORING_THREADS='0'" in lines[0] and "AB_CONTROL_PERCENT='200'" in lines[0]


@pytest.mark.parametrize("console", ["true", "false"])
def test_serving_prints_the_api_and_console_addresses(trained, tmp_path, console):
    """`make demo` ends in `python -m app`: it names the API's address and, beside it, the console's."""
    import shutil
    import time
    import urllib.error
    import urllib.request

    from tests.test_console_browser import _free_port

    shutil.copy(trained["db_url"].removeprefix("sqlite:///"), tmp_path / "w.db")
    port = _free_port()
    root = str(Path(__file__).resolve().parent.parent)
    env = {**os.environ, "PYTHONPATH": root, "MODEL_DIR": str(trained["model_dir"]), "STATE_FOLLOW": "false",
           "DATABASE_URL": f"sqlite:///{tmp_path / 'w.db'}", "CONSOLE_ENABLED": console}
    proc = subprocess.Popen([sys.executable, "-m", "app", "--port", str(port)], env=env, cwd=tmp_path,
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        lines = [proc.stdout.readline().strip() for _ in range(2)]
        assert lines[0].startswith(f"API:     http://127.0.0.1:{port}/post/recommendations/")
        url = f"http://127.0.0.1:{port}/console/"
        if console == "false":
            assert lines[1] == "console: off (CONSOLE_ENABLED=false)"
            return
        assert lines[1] == f"console: {url}"
        deadline = time.monotonic() + 60
        while True:
            try:
                with urllib.request.urlopen(url, timeout=5) as r:  # the address printed is the console's
                    assert r.status == 200 and "Recommender console" in r.read().decode()
                break
            except (urllib.error.URLError, ConnectionError):
                assert time.monotonic() < deadline and proc.poll() is None
                time.sleep(0.2)
    finally:
        proc.terminate()
        proc.wait(20)


def _serve(trained, tmp_path, env_extra: dict, workers: int = 1):
    import shutil

    from tests.test_console_browser import _free_port

    shutil.copy(trained["db_url"].removeprefix("sqlite:///"), tmp_path / "w.db")
    port = _free_port()
    root = str(Path(__file__).resolve().parent.parent)
    env = {**os.environ, "PYTHONPATH": root, "MODEL_DIR": str(trained["model_dir"]), "STATE_FOLLOW": "false",
           "DATABASE_URL": f"sqlite:///{tmp_path / 'w.db'}", "CONSOLE_ENABLED": "false", "SCORING_THREADS": "1",
           **env_extra}
    env.pop("PROMETHEUS_MULTIPROC_DIR", None)
    proc = subprocess.Popen([sys.executable, "-m", "app", "--port", str(port), "--workers", str(workers)], env=env,
                            cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    return proc, f"http://127.0.0.1:{port}"


def _wait_healthy(proc, base: str, timeout: float = 120) -> None:
    import time

    import httpx

    deadline = time.monotonic() + timeout
    while True:
        try:
            if httpx.get(f"{base}/health", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        assert time.monotonic() < deadline and proc.poll() is None, "the service did not start"
        time.sleep(0.3)


def _sample_sum(text: str, name: str) -> float:
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith(name + "{"))


def test_a_scrape_counts_every_worker(trained, tmp_path):
    """Two workers: every scrape, whichever worker answers it, counts the responses of both."""
    import httpx

    proc, base = _serve(trained, tmp_path, {}, workers=2)
    try:
        _wait_healthy(proc, base)
        for i in range(40):  # a new connection each: the kernel spreads them over the two workers
            r = httpx.get(f"{base}/post/recommendations/", params={"id": 1 + i, "time": "2021-12-24T12:00:00"})
            assert r.status_code == 200
        pids = set()
        for _ in range(6):
            text = httpx.get(f"{base}/metrics").text
            assert _sample_sum(text, "recommendations_total") == 40
            pids |= {line.split('pid="')[1].split('"')[0] for line in text.splitlines()
                     if line.startswith("state_users{")}
        assert len(pids) == 2  # both workers' state gauges, each with its pid
    finally:
        proc.terminate()
        proc.wait(30)


def test_the_database_password_is_never_shown(trained, tmp_path):
    import time

    import httpx

    secret = "s3cret-Pa55"
    proc, base = _serve(trained, tmp_path, {"DATABASE_URL": f"postgresql+psycopg2://feed:{secret}@127.0.0.1:1/feed",
                                            "DB_TIMEOUT_SECONDS": "1"})
    try:
        _wait_healthy(proc, base)
        bodies = [httpx.get(f"{base}{path}").text for path in ("/ready", "/model", "/metrics", "/user/1")]
        time.sleep(1)
    finally:
        proc.terminate()
        out, _ = proc.communicate(timeout=30)
    assert "database: postgresql+psycopg2://feed:***@127.0.0.1:1/feed" in out
    assert secret not in out and not any(secret in b for b in bodies)


def test_the_service_turns_numpys_huge_pages_off_unless_told_otherwise():
    """`python -m app` sets NUMPY_MADVISE_HUGEPAGE=0 before NumPy is imported (its workers inherit it),
    and keeps a value the environment already gives."""
    code = ("import os, app.__main__, numpy; "
            "print(os.environ['NUMPY_MADVISE_HUGEPAGE'], numpy._core.multiarray._get_madvise_hugepage())")
    env = {k: v for k, v in os.environ.items() if k != "NUMPY_MADVISE_HUGEPAGE"}
    default = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    given = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                           env={**env, "NUMPY_MADVISE_HUGEPAGE": "1"})
    assert default.stdout.split() == ["0", "False"], default.stderr[-500:]
    assert given.stdout.split()[0] == "1", given.stderr[-500:]
