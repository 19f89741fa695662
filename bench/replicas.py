"""Service replicas behind nginx on loopback: start them, load them, kill one, count what failed.

    python -m bench.replicas --db postgresql+psycopg2://... --models models --replicas 2 --duration 30

Each replica is a `python -m app` process of its own (one worker): it loads the artifact, follows the
database on its own (`app.follower`) and writes its exposures to the database's log. nginx (Debian's
package; `make nginx`) balances them round-robin and, when a replica fails — refused or reset
connection, timeout, 502/503/504 — passes the same GET to the next one (`proxy_next_upstream`), so a
replica's death costs latency, not answers. deploy/replicas/ has the same setup for docker compose.

The run: measure one replica alone (directly and through nginx), then N replicas through nginx; under
that load, SIGKILL one replica halfway and count the responses that were not 200. Load comes from
threads of this process on the same two cores, so throughputs are lower bounds; the estimate for N
hosts is N times one replica's throughput, less what nginx costs (the direct/nginx ratio measured).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import numpy as np

ROOT = Path(__file__).resolve().parent.parent

NGINX_CONF = """\
worker_processes 1;
pid {prefix}/nginx.pid;
error_log {prefix}/error.log warn;
events {{ worker_connections 1024; }}
http {{
    access_log off;
    client_body_temp_path {prefix}/body;
    proxy_temp_path {prefix}/proxy;
    fastcgi_temp_path {prefix}/fastcgi;
    uwsgi_temp_path {prefix}/uwsgi;
    scgi_temp_path {prefix}/scgi;
    upstream feed {{
{servers}
        keepalive 32;
    }}
    server {{
        listen 127.0.0.1:{port};
        location / {{
            proxy_pass http://feed;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_connect_timeout 1s;
            proxy_read_timeout 10s;
            proxy_max_temp_file_size 0;
            # a replica that refuses, resets, times out or answers 502-504: the same GET goes to the next
            proxy_next_upstream error timeout http_502 http_503 http_504;
            proxy_next_upstream_tries 3;
            add_header X-Upstream $upstream_addr always;
        }}
    }}
}}
"""


def nginx_conf(prefix: Path, port: int, upstreams: list[int]) -> str:
    # a replica that failed once is left out for 10 s, then tried again (nginx's passive health check)
    servers = "\n".join(f"        server 127.0.0.1:{p} max_fails=1 fail_timeout=10s;" for p in upstreams)
    return NGINX_CONF.format(prefix=prefix, port=port, servers=servers)


def run_nginx(prefix: Path, port: int, conf_text: str) -> subprocess.Popen:
    """Start nginx in the foreground with `conf_text` as its configuration; return once it listens on `port`."""
    binary = nginx_binary()
    if binary is None:
        raise RuntimeError("nginx not found: `make nginx` installs Debian's package")
    conf = prefix / "nginx.conf"
    conf.write_text(conf_text)
    proc = subprocess.Popen([binary, "-p", str(prefix), "-c", str(conf), "-g", "daemon off;"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 10
    while True:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return proc
        except OSError:
            if proc.poll() is not None or time.monotonic() > deadline:
                proc.kill()
                raise RuntimeError(f"nginx did not start: {(prefix / 'error.log').read_text()}") from None
            time.sleep(0.05)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def nginx_binary() -> str | None:
    return shutil.which("nginx") or next((p for p in ("/usr/sbin/nginx",) if os.path.exists(p)), None)


@dataclass
class Replicas:
    """N `python -m app` processes and one nginx in front of them, all on 127.0.0.1."""

    db_url: str
    model_dir: Path
    n: int = 2
    env: dict = field(default_factory=dict)
    ports: list[int] = field(default_factory=list)
    procs: list[subprocess.Popen] = field(default_factory=list)
    lb_port: int = 0
    _nginx: subprocess.Popen | None = None
    _prefix: Path | None = None

    def __enter__(self) -> Replicas:
        self._prefix = Path(tempfile.mkdtemp(prefix="replicas-"))
        self.ports = [free_port() for _ in range(self.n)]
        env = {**os.environ, "PYTHONPATH": str(ROOT), "DATABASE_URL": self.db_url, "MODEL_DIR": str(self.model_dir),
               "CONSOLE_ENABLED": "false", **self.env}
        for i, port in enumerate(self.ports):
            with open(self._prefix / f"replica-{i}.log", "w") as log:  # the child keeps its own descriptor
                self.procs.append(subprocess.Popen([sys.executable, "-m", "app", "--port", str(port)], env=env,
                                                   stdout=log, stderr=subprocess.STDOUT, cwd=self._prefix))
        self.lb_port = free_port()
        try:
            self.start_nginx(self.ports)
            for port in self.ports:
                self.wait_ready(port)
        except BaseException:
            self.__exit__()
            raise
        return self

    def start_nginx(self, upstreams: list[int]) -> None:
        self.stop_nginx()
        self._nginx = run_nginx(self._prefix, self.lb_port, nginx_conf(self._prefix, self.lb_port, upstreams))

    def stop_nginx(self) -> None:
        if self._nginx is not None and self._nginx.poll() is None:
            self._nginx.terminate()
            self._nginx.wait(10)
        self._nginx = None

    def wait_ready(self, port: int, timeout: float = 120) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            i = self.ports.index(port)
            if self.procs[i].poll() is not None:
                raise RuntimeError(f"replica on {port} exited: {(self._prefix / f'replica-{i}.log').read_text()}")
            try:
                if httpx.get(f"http://127.0.0.1:{port}/ready", timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        raise RuntimeError(f"replica on {port} not ready after {timeout}s")

    def kill(self, i: int) -> None:
        """A crash, not a shutdown: SIGKILL, no draining, unflushed exposures lost with the process."""
        self.procs[i].send_signal(signal.SIGKILL)
        self.procs[i].wait(10)

    def __exit__(self, *exc) -> None:
        self.stop_nginx()
        for p in self.procs:
            if p.poll() is None:
                p.terminate()
        for p in self.procs:
            try:
                p.wait(20)
            except subprocess.TimeoutExpired:
                p.kill()
        shutil.rmtree(self._prefix, ignore_errors=True)


@dataclass
class LoadResult:
    statuses: Counter
    upstreams: Counter  # the upstream that answered (the last one nginx tried)
    retried: int  # requests nginx passed on to another upstream after one failed
    latencies_ms: list[float]
    seconds: float
    errors: list[str]
    after_kill: Counter  # statuses of the responses that finished after the kill

    @property
    def failed(self) -> int:
        return sum(n for s, n in self.statuses.items() if s != 200)

    def summary(self) -> dict:
        lat = np.array(self.latencies_ms) if self.latencies_ms else np.zeros(1)
        total = sum(self.statuses.values())
        return {"requests": total, "failed": self.failed, "statuses": {str(k): v for k, v in self.statuses.items()},
                "requests_per_second": round(total / self.seconds, 1),
                "p50_ms": round(float(np.percentile(lat, 50)), 1), "p99_ms": round(float(np.percentile(lat, 99)), 1),
                "max_ms": round(float(lat.max()), 1), "upstreams": dict(self.upstreams), "retried": self.retried,
                "after_kill": {str(k): v for k, v in self.after_kill.items()}, "errors": self.errors[:5]}


def load(url: str, users: np.ndarray, times: np.ndarray, threads: int, requests: int | None = None,
         seconds: float | None = None, on_half=None) -> LoadResult:
    """`threads` clients sending GET /post/recommendations/ for (user, time) pairs in turn, until
    `requests` were sent or `seconds` passed (whichever is given; both bounded). `on_half` runs once,
    when half of them are done. A transport error counts as a failed request (status 0)."""
    statuses, upstreams, after = Counter(), Counter(), Counter()
    retried = [0]
    latencies: list[float] = []
    errors: list[str] = []
    lock = threading.Lock()
    sent = [0]
    half = [False]
    killed_at = [None]
    budget = requests if requests is not None else 10**9
    t0 = time.monotonic()
    stop_at = t0 + (seconds if seconds is not None else 600)

    def client(k: int) -> None:
        with httpx.Client(timeout=30) as http:
            while True:
                with lock:
                    i = sent[0]
                    if i >= budget or time.monotonic() >= stop_at:
                        return
                    sent[0] += 1
                    fire = on_half is not None and not half[0] and (
                        i >= budget // 2 if requests is not None else time.monotonic() - t0 >= seconds / 2)
                    if fire:
                        half[0] = True
                if fire:
                    on_half()
                    killed_at[0] = time.monotonic()
                j = i % len(users)
                start = time.perf_counter()
                try:
                    r = http.get(url, params={"id": int(users[j]), "time": str(np.datetime64(int(times[j]), "s")),
                                              "limit": 5})
                    status, upstream = r.status_code, r.headers.get("x-upstream", "")
                except httpx.HTTPError as exc:
                    status, upstream = 0, ""
                    with lock:
                        errors.append(f"{type(exc).__name__}: {exc}")
                ms = (time.perf_counter() - start) * 1000
                with lock:
                    statuses[status] += 1
                    tried = [u.strip() for u in upstream.split(",")]  # "a, b" when a failed and b answered
                    upstreams[tried[-1]] += 1
                    retried[0] += len(tried) > 1
                    latencies.append(ms)
                    if killed_at[0] is not None:
                        after[status] += 1

    workers = [threading.Thread(target=client, args=(k,)) for k in range(threads)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    return LoadResult(statuses, upstreams, retried[0], latencies, time.monotonic() - t0, errors, after)


def request_pairs(db_url: str, model_dir: Path, n: int = 2000, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(user, moment) pairs in the held-out window of the served artifact: users with views there."""
    from sqlalchemy import text

    from app.artifacts import current_version_dir, load_manifest
    from app.db import make_engine

    split = load_manifest(current_version_dir(model_dir)).data["split"]
    engine = make_engine(db_url)
    with engine.connect() as conn:
        users = np.array([r[0] for r in conn.execute(text("SELECT DISTINCT user_id FROM feed_data LIMIT 5000"))])
    engine.dispose()
    rng = np.random.default_rng(seed)
    return rng.choice(users, n), rng.integers(split["test_start"], split["end"], n)


def exposures(db_url: str) -> int:
    from sqlalchemy import text

    from app.db import make_engine

    engine = make_engine(db_url)
    try:
        with engine.connect() as conn:
            return int(conn.execute(text("SELECT COUNT(*) FROM recommendation_log")).scalar() or 0)
    except Exception:  # no log table yet: nothing logged
        return 0
    finally:
        engine.dispose()


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.replicas")
    parser.add_argument("--db", required=True, help="SQLAlchemy URL every replica follows (PostgreSQL)")
    parser.add_argument("--models", type=Path, required=True)
    parser.add_argument("--replicas", type=int, default=2)
    parser.add_argument("--duration", type=float, default=30, help="Seconds of each load phase")
    parser.add_argument("--threads", type=int, default=8)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    users, times = request_pairs(args.db, args.models)
    url = "/post/recommendations/"
    out: dict = {"replicas": args.replicas, "threads": args.threads, "duration": args.duration}
    with Replicas(args.db, args.models, n=args.replicas) as rs:
        for port in rs.ports:  # warm-up: first requests load lazily built tables
            load(f"http://127.0.0.1:{port}{url}", users, times, 2, requests=40)
        # one replica: directly, then through nginx with that replica as its only upstream
        one = load(f"http://127.0.0.1:{rs.ports[0]}{url}", users, times, args.threads, seconds=args.duration)
        out["one_direct"] = one.summary()
        rs.start_nginx(rs.ports[:1])
        out["one_nginx"] = load(f"http://127.0.0.1:{rs.lb_port}{url}", users, times, args.threads,
                                seconds=args.duration).summary()
        rs.start_nginx(rs.ports)
        out["all_nginx"] = load(f"http://127.0.0.1:{rs.lb_port}{url}", users, times, args.threads,
                                seconds=args.duration).summary()
        time.sleep(3)  # the writers flush every second: the log holds every earlier answer
        before = exposures(args.db)
        kill = load(f"http://127.0.0.1:{rs.lb_port}{url}", users, times, args.threads, seconds=args.duration,
                    on_half=lambda: rs.kill(args.replicas - 1))
        time.sleep(3)  # the survivors' writers flush every second
        out["kill"] = kill.summary()
        out["kill"]["exposures_logged"] = exposures(args.db) - before
    per = out["one_direct"]["requests_per_second"]
    overhead = out["one_nginx"]["requests_per_second"] / max(per, 1e-9)
    out["estimate_two_hosts_rps"] = round(2 * per * min(overhead, 1.0), 1)
    out["loadavg"] = Path("/proc/loadavg").read_text().split()[:3]
    print(json.dumps(out, indent=1))
    if args.json:
        args.json.write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
