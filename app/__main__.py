"""`python -m app [--host H] [--port P] [--workers N]`: check the artifacts, then serve."""

import os

# Before NumPy is imported, here and in the workers uvicorn spawns (they inherit the environment):
# NumPy asks the kernel for huge pages for every large array, and where the kernel then compacts memory
# at the page fault (transparent_hugepage/defrag = madvise, a common default) the first touch of a
# compaction's arrays stalled for seconds while holding the GIL — and every request of the worker with
# it (`python -m bench.live_state compaction`, docs/live_state.md). Set it to 1 to ask again.
os.environ.setdefault("NUMPY_MADVISE_HUGEPAGE", "0")

import argparse
import socket
import sys
import tempfile
from pathlib import Path

import uvicorn
import uvicorn.config
from pydantic import ValidationError

from app.artifacts import ArtifactsInvalid, current_version_dir, load_manifest
from app.config import get_settings, settings_error
from app.db import make_engine, masked
from app.follower import check_feed

_bind_socket = uvicorn.config.Config.bind_socket


def _bind_tcp_socket(self: uvicorn.config.Config) -> socket.socket:
    """uvicorn's multi-worker path binds the listener with proto 0, so asyncio never sets TCP_NODELAY
    on accepted connections and every keep-alive response waits ~40 ms for a delayed ACK (uvicorn
    issue #3149). Re-wrapping the same descriptor with IPPROTO_TCP restores TCP_NODELAY."""
    sock = _bind_socket(self)
    if sock.family in (socket.AF_INET, socket.AF_INET6) and sock.proto == 0:
        sock = socket.socket(sock.family, sock.type, socket.IPPROTO_TCP, fileno=sock.detach())
        sock.set_inheritable(True)
    return sock


def _multiprocess_metrics() -> None:
    """Workers are separate processes: without a shared directory a scrape sees the one that answered it.
    The directory is set here, before any worker imports prometheus_client, and emptied of earlier runs."""
    path = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    if path:
        Path(path).mkdir(parents=True, exist_ok=True)
        for stale in Path(path).glob("*.db"):
            stale.unlink()
    else:
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = tempfile.mkdtemp(prefix="prometheus-")


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m app", description="Serve post recommendations.")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--workers", type=int, default=1)
    args = parser.parse_args()
    try:
        settings = get_settings()
    except ValidationError as exc:
        print(f"error: {settings_error(exc)}", file=sys.stderr)
        sys.exit(1)
    try:  # refuse early, in one line, rather than with a traceback from inside the server
        load_manifest(current_version_dir(settings.model_dir))
    except ArtifactsInvalid as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(1)
    if settings.state_follow:
        problem = check_feed(make_engine(settings.database_url))
        if problem and "insertion sequence" in problem:  # an unreachable database is not fatal: it returns
            print(f"error: {problem}", file=sys.stderr)
            sys.exit(1)
    uvicorn.config.Config.bind_socket = _bind_tcp_socket
    # uvicorn runs with log_level=warning (no access log on the request path), so say where to look
    shown = "127.0.0.1" if args.host in ("0.0.0.0", "::") else args.host
    print(f"API:     http://{shown}:{args.port}/post/recommendations/?id=<user>  (docs: http://{shown}:{args.port}/docs)")
    print(f"console: http://{shown}:{args.port}/console/" if settings.console_enabled
          else "console: off (CONSOLE_ENABLED=false)")
    print(f"database: {masked(settings.database_url)}", flush=True)  # never the password
    if args.workers > 1:
        # each worker's share of the cores: scoring threads beyond it only add GIL hand-offs and
        # context switches between workers that already keep every core busy
        if "scoring_threads" not in settings.model_fields_set:  # not set in the environment or .env
            os.environ["SCORING_THREADS"] = str(max(1, (os.cpu_count() or 1) // args.workers))
        _multiprocess_metrics()
        # the workers switch model versions at one agreed moment (app.lifecycle.WorkerBarrier)
        os.environ["SWAP_BARRIER_DIR"] = tempfile.mkdtemp(prefix="swap-")
        os.environ["SWAP_WORKERS"] = str(args.workers)
    uvicorn.run("app.main:create_app", factory=True, host=args.host, port=args.port, workers=args.workers,
                log_level="warning", access_log=False)


if __name__ == "__main__":
    main()
