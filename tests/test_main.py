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
