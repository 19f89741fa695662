"""Fault injection, hostile input and soak against the running service: `make chaos` writes docs/reliability.md.

    python -m bench.chaos [--quick] [--soak-seconds 600 --soak-rate 150] [--fuzz-examples 1000]

A private PostgreSQL cluster (initdb in a temporary folder, its own port) holds a small demo world, so it
can really be stopped without disturbing anything else on the machine; the service (`python -m app
--workers 2`) reaches it through a TCP proxy that can stop forwarding (a database that hangs). wrk drives
the load (concurrency 8, random known users at moments of the held-out window) while a prober measures
/health and a data endpoint. For each fault: the requests wrk made and how many failed, the
recommendation responses the service counted (Prometheus, every worker) against the rows that reached
`recommendation_log` once the writer drained, the writer's connection attempts, and the probes' latency.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import httpx
import numpy as np
from sqlalchemy import create_engine, func, select, text

from app.artifacts import current_version_dir
from app.config import PROJECT_ROOT
from app.tables import recommendation_log, user_data
from bench.replicas import nginx_binary, run_nginx
from tests.tcp_proxy import TcpProxy

LUA = """
local pairs = {%s}
local delay_ms = %f
math.randomseed(%d)
request = function()
  local p = pairs[math.random(#pairs)]
  return wrk.format("GET", "/post/recommendations/?id=" .. p[1] .. "&time=" .. p[2] .. "&limit=5")
end
if delay_ms > 0 then
  delay = function() return delay_ms end
end
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format('RESULT {"requests": %%d, "duration_s": %%.3f, "socket_errors": %%d, "non_2xx": %%d, '
    .. '"connect_errors": %%d, "read_errors": %%d, "write_errors": %%d, "timeouts": %%d, '
    .. '"p50_ms": %%.2f, "p99_ms": %%.2f, "max_ms": %%.2f}\\n',
    summary.requests, summary.duration / 1e6, e.connect + e.read + e.write + e.timeout, e.status,
    e.connect, e.read, e.write, e.timeout,
    latency:percentile(50) / 1000, latency:percentile(99) / 1000, latency.max / 1000))
end
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# ------------------------------------------------------------------ a PostgreSQL of our own
class PgCluster:
    """initdb + pg_ctl in a temporary folder, run as the `postgres` user when we are root."""

    def __init__(self) -> None:
        root = Path(tempfile.mkdtemp(prefix="chaos-pg-"))  # its own folder: the postgres user must enter it
        self.root, self.dir, self.port = root, root / "pg", free_port()
        self.dir.mkdir(parents=True)
        self._as = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
        if self._as:
            shutil.chown(root, "postgres")
            shutil.chown(self.dir, "postgres")
        bindir = Path(subprocess.run(["pg_config", "--bindir"], capture_output=True, text=True).stdout.strip())
        self.pg_ctl = str(bindir / "pg_ctl") if (bindir / "pg_ctl").exists() else "pg_ctl"
        initdb = str(bindir / "initdb") if (bindir / "initdb").exists() else "initdb"
        subprocess.run([*self._as, initdb, "-D", str(self.dir), "-U", "postgres", "-A", "trust"], check=True,
                       capture_output=True)
        self.start()

    def _ctl(self, *args: str) -> None:
        subprocess.run([*self._as, self.pg_ctl, "-D", str(self.dir), "-w", *args], check=True, capture_output=True)

    def start(self) -> None:
        self._ctl("-o", f"-p {self.port} -k {self.dir} -c listen_addresses=127.0.0.1", "-l",
                  str(self.dir / "log"), "start")

    def stop(self) -> None:
        self._ctl("-m", "fast", "stop")

    def url(self, db: str = "postgres", port: int | None = None) -> str:
        return f"postgresql+psycopg2://postgres@127.0.0.1:{port or self.port}/{db}"


# ------------------------------------------------------------------ the service and what it reports
@dataclass
class Service:
    proc: subprocess.Popen
    base: str
    direct_url: str
    log: Path

    def workers(self) -> list[int]:
        """The uvicorn workers: the supervisor's children but for multiprocessing's resource tracker."""
        try:
            children = Path(f"/proc/{self.proc.pid}/task/{self.proc.pid}/children").read_text().split()
        except OSError:
            return []
        out = []
        for pid in children:
            try:
                if b"spawn_main" in Path(f"/proc/{pid}/cmdline").read_bytes():
                    out.append(int(pid))
            except OSError:
                pass
        return out

    def rss_mb(self) -> float:
        total = 0
        for pid in [self.proc.pid, *self.workers()]:
            try:
                status = Path(f"/proc/{pid}/status").read_text()
                total += int(next(line.split()[1] for line in status.splitlines() if line.startswith("VmRSS")))
            except (OSError, StopIteration):
                pass
        return total / 1024

    def metrics(self) -> dict[str, float]:
        """Sum of each metric's samples over labels and workers (live ones only for gauges); the gauges of
        each worker also under "name@pid"."""
        out: dict[str, float] = Counter()
        for line in httpx.get(f"{self.base}/metrics", timeout=10).text.splitlines():
            if line.startswith("#") or not line.strip():
                continue
            name_labels, value = line.rsplit(" ", 1)
            name = name_labels.split("{", 1)[0]
            out[name] += float(value)
            if 'pid="' in name_labels:
                pid = name_labels.split('pid="', 1)[1].split('"', 1)[0]
                out[f"{name}@{pid}"] += float(value)
        return out

    def log_rows(self) -> int:
        engine = create_engine(self.direct_url)
        try:
            with engine.connect() as conn:
                return int(conn.execute(select(func.count()).select_from(recommendation_log)).scalar_one())
        finally:
            engine.dispose()

    def wait_drained(self, spool: Path, timeout: float = 90) -> bool:
        """Every worker's queue empty and nothing spooled, twice in a row: each worker refreshes its gauges
        once a second, so one reading may be a second old."""
        deadline, empty_since = time.monotonic() + timeout, None
        while time.monotonic() < deadline:
            try:  # spools and journals (*.jsonl), and files a worker is replaying (*.draining)
                empty = self.metrics()["exposure_log_queue_depth"] == 0 and not list(spool.glob("*.jsonl")) \
                    and not list(spool.glob("*.draining"))
            except httpx.HTTPError:
                empty = False
            if not empty:
                empty_since = None
            elif empty_since is None:
                empty_since = time.monotonic()
            elif time.monotonic() - empty_since > 2.5:
                return True
            time.sleep(0.5)
        return False


def start_service(models: Path, db_url: str, direct_url: str, tmp: Path, workers: int = 2) -> Service:
    port = free_port()
    prom = tmp / f"prom-{port}"
    env = {**os.environ, "PYTHONPATH": str(PROJECT_ROOT), "MODEL_DIR": str(models), "DATABASE_URL": db_url,
           "DB_TIMEOUT_SECONDS": "1", "LOG_SPOOL_DIR": str(tmp / "spool"), "PROMETHEUS_MULTIPROC_DIR": str(prom),
           "CONSOLE_ENABLED": "false", "SCORING_THREADS": "1"}
    log = tmp / f"service-{port}.log"
    proc = subprocess.Popen([sys.executable, "-m", "app", "--port", str(port), "--workers", str(workers)],
                            env=env, cwd=tmp, stdout=log.open("w"), stderr=subprocess.STDOUT)
    svc = Service(proc, f"http://127.0.0.1:{port}", direct_url, log)
    deadline = time.monotonic() + 180
    while True:
        try:
            if httpx.get(f"{svc.base}/ready", timeout=2).status_code == 200 and len(svc.workers()) == workers:
                return svc
        except httpx.HTTPError:
            pass
        if proc.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"the service did not start: {log.read_text()[-2000:]}")
        time.sleep(0.3)


# ------------------------------------------------------------------ load and probes
def wrk_script(tmp: Path, pairs: list[tuple[int, str]], delay_ms: float = 0.0, seed: int = 0) -> Path:
    path = tmp / f"load-{delay_ms:g}-{seed}.lua"
    path.write_text(LUA % (", ".join(f'{{{u}, "{t}"}}' for u, t in pairs), delay_ms, seed))
    return path


class Wrk:
    def __init__(self, base: str, script: Path, seconds: float, connections: int = 8) -> None:
        self.proc = subprocess.Popen(["wrk", "-t", "2", "-c", str(connections), "-d", f"{seconds:g}s", "--timeout",
                                      "10s", "-s", str(script), base], stdout=subprocess.PIPE, text=True)

    def result(self) -> dict:
        out, _ = self.proc.communicate()
        line = next(x for x in out.splitlines() if x.startswith("RESULT "))
        return json.loads(line.removeprefix("RESULT "))


class Prober:
    """/health every 50 ms and a data endpoint every 100 ms, each in its own thread (a data call that waits
    for its timeout must not thin out the liveness samples), each sample tagged with the current phase."""

    def __init__(self, base: str, data_path: str) -> None:
        self.base, self.data_path = base, data_path
        self.phase = "before"
        self.samples: list[tuple[str, str, int | None, float]] = []  # (phase, what, status, ms)
        self._halt = threading.Event()
        self._threads = [threading.Thread(target=self._loop, args=(what, path, pause), daemon=True)
                         for what, path, pause in (("health", "/health", 0.05), ("data", data_path, 0.1))]

    def start(self) -> None:
        for t in self._threads:
            t.start()

    def _loop(self, what: str, path: str, pause: float) -> None:
        with httpx.Client(base_url=self.base, timeout=10) as client:
            while not self._halt.is_set():
                phase, started = self.phase, time.perf_counter()
                try:
                    status = client.get(path).status_code
                except httpx.HTTPError:
                    status = None
                self.samples.append((phase, what, status, (time.perf_counter() - started) * 1000))
                self._halt.wait(pause)

    def stop(self) -> None:
        self._halt.set()
        for t in self._threads:
            t.join(15)

    def summary(self, phase: str, what: str) -> dict:
        ms = [m for p, w, _, m in self.samples if p == phase and w == what]
        statuses = Counter(str(s) for p, w, s, _ in self.samples if p == phase and w == what)
        if not ms:
            return {"n": 0}
        return {"n": len(ms), "p50_ms": round(float(np.percentile(ms, 50)), 1),
                "p99_ms": round(float(np.percentile(ms, 99)), 1), "max_ms": round(max(ms), 1),
                "statuses": dict(statuses)}


@dataclass
class FaultResult:
    name: str
    how: str
    fault_seconds: float
    wrk: dict
    served: int
    logged: int
    drained: bool
    write_attempts_failed: int
    spooled: int
    dropped: int
    health: dict
    data: dict
    recovered: int = 0
    extra: dict = field(default_factory=dict)

    @property
    def failed(self) -> int:
        return self.wrk["non_2xx"] + self.wrk["socket_errors"]


class Nginx:
    """Debian's nginx in front of the service with deploy/nginx-one-host.conf — the file as shipped, but for
    the addresses and the folders: a GET the service resets, refuses or times out is passed again to the
    same listening socket (the address is listed twice), which a surviving worker accepts."""

    def __init__(self, service_port: int, tmp: Path) -> None:
        self.prefix = tmp / "nginx"
        self.prefix.mkdir(exist_ok=True)
        self.port = free_port()
        conf = (PROJECT_ROOT / "deploy" / "nginx-one-host.conf").read_text()
        temp = "".join(f"    {kind}_temp_path {self.prefix}/{kind};\n"
                       for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"))
        for old, new in (("127.0.0.1:8000", f"127.0.0.1:{service_port}"),
                         ("listen 80;", f"listen 127.0.0.1:{self.port};"), ("http {", "http {\n" + temp)):
            assert old in conf, old
            conf = conf.replace(old, new)
        conf = f"pid {self.prefix}/nginx.pid;\nerror_log {self.prefix}/error.log warn;\n" + conf
        self.proc = run_nginx(self.prefix, self.port, conf)
        self.base = f"http://127.0.0.1:{self.port}"

    def upstream_errors(self) -> dict[str, int]:
        """Failed upstream attempts nginx logged, by message (each one passed to the next upstream if a try was
        left, else answered 502/504)."""
        log = self.prefix / "error.log"
        lines = log.read_text().splitlines() if log.exists() else []
        return dict(Counter(line.split(": *", 1)[-1].split(" ", 1)[-1].split(", client:", 1)[0]
                            for line in lines if "upstream" in line))

    def close(self) -> None:
        self.proc.terminate()
        self.proc.wait(10)


def _gauge_delta(before: dict, after: dict, name: str) -> int:
    """A per-worker gauge's growth over the workers alive at the end (a killed worker's count leaves the scrape
    with it; its replacement starts from 0)."""
    pids = [k.split("@", 1)[1] for k in after if k.startswith(f"{name}@")]
    return int(sum(after[f"{name}@{p}"] - before.get(f"{name}@{p}", 0) for p in pids))


def run_fault(svc: Service, script: Path, spool: Path, name: str, how: str, inject: Callable[[], object],
              recover: Callable[[], object], fault_seconds: float, lead: float = 5, tail: float = 10,
              data_path: str = "/user/1", base: str | None = None) -> FaultResult:
    """`base`: where the clients (wrk, the probes) go, the service itself unless given (nginx)."""
    base = base or svc.base
    before, rows_before = svc.metrics(), svc.log_rows()
    probe = Prober(base, data_path)
    probe.start()
    load = Wrk(base, script, lead + fault_seconds + tail)
    time.sleep(lead)
    probe.phase = "fault"
    extra = inject() or {}
    time.sleep(fault_seconds)
    probe.phase = "recovering"
    extra.update(recover() or {})
    result = load.result()
    probe.phase = "after"
    probe.stop()
    drained = svc.wait_drained(spool)
    after, rows_after = svc.metrics(), svc.log_rows()
    delta = {k: _gauge_delta(before, after, k) for k in ("exposure_log_write_failures_total",
                                                          "exposure_log_spooled_total", "exposure_log_dropped_total",
                                                          "exposure_log_recovered_total")}
    return FaultResult(name, how, fault_seconds, result, int(after["recommendations_total"] -
                                                             before["recommendations_total"]),
                       rows_after - rows_before, drained, delta["exposure_log_write_failures_total"],
                       delta["exposure_log_spooled_total"], delta["exposure_log_dropped_total"],
                       probe.summary("fault", "health"), probe.summary("fault", "data"),
                       delta["exposure_log_recovered_total"], extra)


# ------------------------------------------------------------------ hostile input
def hostile_cases() -> list[tuple[str, str]]:
    """(what, path with query) pairs a careless or hostile client sends."""
    big = "9" * 30
    cases = [
        ("id beyond int64", "/post/recommendations/?id=9223372036854775808"), ("id of 30 digits", f"/user/{big}"),
        ("negative id", "/post/recommendations/?id=-1"), ("negative path id", "/post/-5/feed"),
        ("float id", "/post/recommendations/?id=1.5"), ("exponent id", "/user/1e3"),
        ("unicode digits", "/post/recommendations/?id=%D9%A1%D9%A2%D9%A3"), ("emoji id", "/user/%F0%9F%98%80"),
        ("SQL in id", "/post/recommendations/?id=1%3B%20DROP%20TABLE%20feed_data"),
        ("SQL in path", "/user/1%27%20OR%20%271%27%3D%271"), ("NUL byte", "/post/recommendations/?id=1%00"),
        ("SQL in time", "/post/recommendations/?id=1&time=2021-12-24%27%3B--"),
        ("unicode time", "/post/recommendations/?id=1&time=%E2%80%8F2021-12-24T12%3A00"),
        ("repeated id", "/post/recommendations/?id=1&id=2&id=3"), ("repeated limit", "/user/1/feed?limit=1&limit=500"),
        ("10 kB query string", "/post/recommendations/?id=1&x=" + "a" * 10_000),
        ("10 kB id", "/post/recommendations/?id=" + "1" * 10_000),
        ("10 kB time", "/post/recommendations/?id=1&time=" + "2" * 10_000),
        ("huge limit", "/post/recommendations/?id=1&limit=99999999999999999999"),
        ("time +23:59", "/post/recommendations/?id=1&time=2021-12-24T12%3A00%3A00%2B23%3A59"),
        ("time -23:59", "/post/recommendations/?id=1&time=2021-12-24T12%3A00%3A00-23%3A59"),
        ("time +24:00", "/post/recommendations/?id=1&time=2021-12-24T12%3A00%3A00%2B24%3A00"),
        ("year 1 pushed out by its zone", "/post/recommendations/?id=1&time=0001-01-01T00%3A00%3A00%2B01%3A00"),
        ("year 9999 pushed out by its zone", "/post/recommendations/?id=1&time=9999-12-31T23%3A30%3A00-05%3A00"),
        ("year 0", "/post/recommendations/?id=1&time=0000-01-01T00%3A00"),
        ("nanoseconds", "/post/recommendations/?id=1&time=2021-12-24T12%3A00%3A00.123456789Z"),
        ("last microsecond", "/post/recommendations/?id=1&time=9999-12-31T23%3A59%3A59.999999"),
        ("bare epoch seconds", "/post/recommendations/?id=1&time=1640000000"),
        ("bare epoch milliseconds", "/post/recommendations/?id=1&time=1640000000000"),
        ("leap second", "/post/recommendations/?id=1&time=2016-12-31T23%3A59%3A60Z"),
        ("unicode in limit", "/user/1/feed?limit=%EF%BC%95"), ("path traversal", "/user/..%2F..%2Fetc%2Fpasswd"),
        ("console: SQL in user", "/console/feed?user=1%27--&time=2021-12-24T12%3A00"),
        ("console: year 1 pushed out", "/console/feed?user=1&time=0001-01-01T00%3A00%3A00%2B01%3A00"),
    ]
    return cases


def run_hostile(base: str) -> list[dict]:
    out = []
    with httpx.Client(base_url=base, timeout=30) as client:
        for what, path in hostile_cases():
            r = client.get(path)
            out.append({"case": what, "status": r.status_code, "body": r.text[:120]})
    return out


def run_fuzz(base: str, examples: int) -> list[dict]:
    """schemathesis over every operation of the OpenAPI schema, `examples` generated cases each."""
    import schemathesis

    schema = schemathesis.openapi.from_url(f"{base}/openapi.json")
    out = []
    from schemathesis.generation import GenerationMode

    for result in schema.get_all_operations():
        op = result.ok()
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
            out.append({**_fuzz_operation(base, op, examples, mode), "mode": mode.value})
    return out


def _fuzz_operation(base: str, op, examples: int, mode) -> dict:
    from hypothesis import HealthCheck, given, settings
    from hypothesis.errors import Unsatisfiable

    counts: Counter = Counter()
    failures: list[str] = []

    @given(case=op.as_strategy(generation_mode=mode))
    @settings(max_examples=examples, deadline=None, suppress_health_check=list(HealthCheck), database=None)
    def check(case) -> None:
        response = case.call(base_url=base, timeout=30)
        counts["total"] += 1
        counts["5xx" if response.status_code >= 500 else str(response.status_code)] += 1
        if response.status_code >= 500 and len(failures) < 3:
            failures.append(f"{case.path_parameters} {case.query} -> {response.status_code}")

    try:
        check()
    except Unsatisfiable:  # an operation without parameters has no input its schema forbids
        pass
    return {"operation": op.label, "examples": counts.pop("total", 0), "server_errors": counts.pop("5xx", 0),
            "statuses": dict(counts), "failures": failures}


# ------------------------------------------------------------------ soak
def paced_delay(rate: float, delay_ms: float, target: float, connections: int = 8) -> float:
    """The next run's per-connection delay for `target` requests/s, from a run at `delay_ms` that gave
    `rate`: wrk is closed-loop, each connection's interval is its delay plus the answer's latency, so the
    latency the run showed is taken off the nominal interval.

    >>> paced_delay(rate=40.0, delay_ms=150.0, target=50.0, connections=8)  # 200 ms a cycle: 50 ms latency
    110.0
    """
    latency = max(connections * 1000 / max(rate, 1e-9) - delay_ms, 0.0)
    return max(connections * 1000 / target - latency, 0.0)


def run_soak(svc: Service, make_script: Callable[[float], Path], delay_ms: float, rate: float, seconds: float,
             out_dir: Path) -> dict:
    """One-minute wrk runs; each minute's delay is corrected by the latency the minute before showed
    (the machine's speed drifts with its load), so the soak holds `rate` on average."""
    minutes = []
    for m in range(max(1, round(seconds / 60))):
        res = Wrk(svc.base, make_script(delay_ms), min(60, seconds), connections=8).result()
        res["rss_mb"] = round(svc.rss_mb(), 1)
        res["rate"] = round(res["requests"] / res["duration_s"], 1)
        res["delay_ms"] = round(delay_ms, 2)
        res["load"] = Path("/proc/loadavg").read_text().split()[0]
        minutes.append(res)
        print(f"soak minute {m + 1}: {res}", flush=True)
        delay_ms = paced_delay(res["requests"] / res["duration_s"], delay_ms, rate)
    first = minutes[0]
    later = minutes[1:] or minutes
    summary = {"minutes": minutes, "errors": sum(m["non_2xx"] + m["socket_errors"] for m in minutes),
               "rss_growth": round(max(m["rss_mb"] for m in later) / first["rss_mb"] - 1, 4),
               "p99_ratio": round(max(m["p99_ms"] for m in later) / first["p99_ms"], 2),
               "mean_rate": round(sum(m["requests"] for m in minutes) / sum(m["duration_s"] for m in minutes), 1)}
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 3.2))
    x = np.arange(1, len(minutes) + 1)
    for key in ("p50_ms", "p99_ms", "max_ms"):
        ax.plot(x, [m[key] for m in minutes], marker="o", label=key.removesuffix("_ms"))
    ax.set_xlabel("minute")
    ax.set_ylabel("latency, ms")
    ax.set_yscale("log")
    ax.set_xticks(x)
    ax.legend()
    ax2 = ax.twinx()
    ax2.plot(x, [m["rss_mb"] for m in minutes], color="grey", linestyle="--", label="RSS")
    ax2.set_ylabel("RSS, MB (dashed)")
    fig.tight_layout()
    fig.savefig(out_dir / "reliability-soak.png", dpi=110)
    plt.close(fig)
    return summary


# ------------------------------------------------------------------ the exposure journal's cost
def journal_cost(tmp: Path, records: int = 20_000, runs: int = 5) -> dict:
    """Microseconds per `ExposureWriter.submit` without and with the journal (LOG_SPOOL_DIR set): what the
    journal adds to each recommendation request (its JSON line and one write())."""
    import uuid

    from app.db import make_engine
    from app.exposure import Exposure, ExposureWriter

    now = datetime(2022, 1, 1, 12)
    batch = [Exposure(str(uuid.uuid4()), i, now, now, "control", "control", "v20261124-133749",
                      tuple(range(1000, 1010)), now) for i in range(records)]
    out: dict = {"records": records, "runs": runs}
    for label in ("without", "with"):
        per_record = []
        for run in range(runs):
            spool = tmp / f"journal-cost-{run}" if label == "with" else None
            writer = ExposureWriter(make_engine("sqlite://"), max_queue=records + 1, batch_size=records + 1,
                                    spool_dir=spool)  # never flushed: only the request side is timed
            started = time.perf_counter_ns()
            for e in batch:
                writer.submit(e)
            per_record.append((time.perf_counter_ns() - started) / records / 1000)
            if spool is not None:
                shutil.rmtree(spool)
        out[label] = {"median_us": round(float(np.median(per_record)), 2), "runs_us": [round(x, 2) for x in per_record]}
    return out


# ------------------------------------------------------------------ dependency scan
def run_audit(audit_bin: str | None) -> dict:
    if not audit_bin or shutil.which(audit_bin) is None and not Path(audit_bin).exists():
        return {"ran": False, "reason": "pip-audit is not installed (`make chaos` installs it into .venv-audit)"}
    site = next((PROJECT_ROOT / ".venv" / "lib").glob("python3*/site-packages"))
    cmd = [audit_bin, "--path", str(site), "-f", "json"]
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
    except subprocess.TimeoutExpired:
        return {"ran": False, "reason": "pip-audit did not finish in 15 min (advisory data unreachable?)"}
    try:
        deps = json.loads(out.stdout)["dependencies"]
    except (ValueError, KeyError):
        return {"ran": False, "reason": f"pip-audit could not report (exit {out.returncode}): "
                                        f"{' '.join(out.stderr.split()[-30:])}"}
    vulns = [{"name": d["name"], "version": d["version"], "ids": [v["id"] for v in d["vulns"]],
              "fix": sorted({f for v in d["vulns"] for f in v.get("fix_versions", [])})}
             for d in deps if d.get("vulns")]
    shown = Path(audit_bin).relative_to(PROJECT_ROOT) if Path(audit_bin).is_relative_to(PROJECT_ROOT) else audit_bin
    return {"ran": True, "command": f"{shown} --path .venv/lib/python3*/site-packages -f json",
            "packages": len(deps), "vulnerable": vulns}


# ------------------------------------------------------------------ the suite
def build_world(url: str, tmp: Path, scale: float, seed: int) -> Path:
    """A small demo world in the database and models trained on it (hashing text encoder: fast)."""
    from training.train import TrainConfig, train
    from training.world.generate import generate_world

    generate_world(url, scale=scale, seed=seed, world_path=tmp / "world.npz")
    config = TrainConfig(max_train_rows=30_000, max_val_rows=10_000, iterations=60, threads=1)
    train(url, tmp / "models", tmp / "cache", "hashing", config)
    return tmp / "models"


def request_pairs(url: str, models: Path, n: int = 500, seed: int = 0) -> list[tuple[int, str]]:
    manifest = json.loads((current_version_dir(models) / "manifest.json").read_text())
    lo, hi = int(manifest["split"]["test_start"]), int(manifest["split"]["end"])
    engine = create_engine(url)
    with engine.connect() as conn:
        users = np.array([r[0] for r in conn.execute(select(user_data.c.user_id))])
    engine.dispose()
    rng = np.random.default_rng(seed)
    return [(int(u), datetime.fromtimestamp(int(t), tz=UTC).strftime("%Y-%m-%dT%H:%M:%S"))
            for u, t in zip(rng.choice(users, n), rng.integers(lo, hi, n), strict=True)]


def fault_suite(svc: Service, pg: PgCluster | None, proxy: TcpProxy, script: Path, spool: Path,
                outage: float, quick: bool) -> list[FaultResult]:
    results = []
    lead, tail = (2, 4) if quick else (5, 15)

    def stop_db():
        if pg is not None:
            pg.stop()
        else:
            proxy.cut()

    def start_db():
        if pg is not None:
            pg.start()
        else:
            proxy.restore()

    how_stop = (f"`pg_ctl stop -m fast` on the service's PostgreSQL for {outage:g} s, then `pg_ctl start`"
                if pg is not None else f"a proxy drops every connection and refuses new ones for {outage:g} s")
    results.append(run_fault(svc, script, spool, "PostgreSQL stopped", how_stop, stop_db, start_db, outage, lead, tail))
    print(results[-1], flush=True)
    hang = min(outage, 20)
    results.append(run_fault(svc, script, spool, "PostgreSQL hanging",
                             f"a proxy keeps connections open but forwards nothing for {hang:g} s "
                             "(DB_TIMEOUT_SECONDS=1)", proxy.hang, proxy.resume, hang, lead, tail))
    print(results[-1], flush=True)

    def kill_worker():
        victim = svc.workers()[0]
        os.kill(victim, signal.SIGKILL)
        return {"killed_pid": victim, "killed_at": time.monotonic()}

    state: dict = {}

    def wait_restart():
        deadline = time.monotonic() + 60
        while len(svc.workers()) < 2 and time.monotonic() < deadline:
            time.sleep(0.1)
        state["workers_after"] = len(svc.workers())
        return {}

    killed = run_fault(svc, script, spool, "Worker killed, clients on uvicorn", "`SIGKILL` to one of the two "
                       "uvicorn workers; uvicorn's supervisor starts a new one; wrk and the probes connect to uvicorn "
                       "itself", kill_worker, wait_restart, 2 if quick else 5, lead, tail)
    killed.extra.update(state)
    results.append(killed)
    print(results[-1], flush=True)
    lb = Nginx(int(svc.base.rsplit(":", 1)[1]), spool.parent)
    try:
        killed = run_fault(svc, script, spool, "Worker killed, clients through nginx", "the same `SIGKILL`, with wrk "
                           "and the probes going through nginx, which passes a GET the dying worker reset to the "
                           "surviving one (`deploy/nginx-one-host.conf`)", kill_worker, wait_restart,
                           2 if quick else 5, lead, tail, base=lb.base)
        killed.extra.update(state)
        killed.extra["nginx_upstream_errors"] = lb.upstream_errors()
    finally:
        lb.close()
    results.append(killed)
    print(results[-1], flush=True)

    engine = create_engine(svc.direct_url, isolation_level="AUTOCOMMIT")

    def disk_full():
        with engine.connect() as conn:  # every insert into the log fails as a full disk fails it (SQLSTATE 53100)
            conn.execute(text("CREATE OR REPLACE FUNCTION chaos_disk_full() RETURNS trigger AS $$ BEGIN "
                              "RAISE EXCEPTION 'could not extend file: No space left on device' "
                              "USING ERRCODE = 'disk_full'; END $$ LANGUAGE plpgsql"))
            conn.execute(text("CREATE TRIGGER chaos_disk_full BEFORE INSERT ON recommendation_log "
                              "FOR EACH STATEMENT EXECUTE FUNCTION chaos_disk_full()"))

    def disk_freed():
        with engine.connect() as conn:
            conn.execute(text("DROP TRIGGER chaos_disk_full ON recommendation_log"))

    results.append(run_fault(svc, script, spool, "Log table's disk full",
                             f"every insert into recommendation_log fails with SQLSTATE 53100 (disk_full) for "
                             f"{outage:g} s", disk_full, disk_freed, outage, lead, tail))
    print(results[-1], flush=True)
    engine.dispose()
    return results


SECTIONS = ("faults", "journal", "hostile", "fuzz", "soak", "audit")
TITLES = {"faults": "Faults under load", "journal": "The exposure journal's cost", "hostile": "Hostile input",
          "fuzz": "Generated input (schemathesis)",
          "soak": "Soak", "audit": "Dependency scan"}


def _run_line(args) -> str:
    load = " ".join(Path("/proc/loadavg").read_text().split()[:3])
    return (f"_Run {datetime.now(UTC):%Y-%m-%d %H:%M} UTC by `{' '.join(['python -m bench.chaos', *sys.argv[1:]])}`"
            f"; {os.cpu_count()} cores ({platform.processor() or platform.machine()}), load average {load} at the "
            f"end; demo world at scale {args.scale}._")


def _socket_kinds(wrk: dict) -> str:
    """': read 3, timeout 1' — which socket errors wrk saw (a timeout: no answer within wrk's 10 s)."""
    kinds = [(k, wrk.get(f"{k}_errors" if k != "timeout" else "timeouts", 0)) for k in ("connect", "read", "write",
                                                                                        "timeout")]
    return (": " + ", ".join(f"{k} {n}" for k, n in kinds if n)) if wrk["socket_errors"] else ""


def render_sections(args, faults, hostile, fuzz, soak, audit, journal=None) -> dict[str, list[str]]:
    """Markdown of each section that ran (a section that did not run keeps the previous run's text)."""
    out: dict[str, list[str]] = {}
    run = _run_line(args)
    if faults is not None:
        lines = [run, "",
                 "*served*: recommendation responses the service counted (Prometheus, every worker, killed ones "
                 "included); *logged*: rows that reached `recommendation_log` once the writer drained; *lost* = "
                 "served − logged (below 0 when a killed worker had journaled the record of a request it was "
                 "still answering: the record is written, the answer never left — wrk counts it failed, or nginx "
                 "passed the request on and another answer was served and logged). *Recovered*: records a killed "
                 "worker had served and journaled (LOG_SPOOL_DIR) but not yet written, written by another worker. "
                 "*Failed*: wrk's non-2xx responses and socket errors (resets, timeouts). *Writer attempts "
                 "failed*: the exposure writer's failed writes (the workers alive at the end), which follow its "
                 "back-off (2, 4, 8, 10, 10 … s after a first failure). Probes: `/health` every "
                 "50 ms and a data endpoint (`/user/1`) every 100 ms while the fault lasts.", "",
                 "| fault | how | wrk requests | failed | served | logged | lost | recovered | writer attempts failed "
                 "| spooled | dropped | /health during (p50 / p99 / max ms) "
                 "| data endpoint during (statuses; p50 / p99 / max ms) |",
                 "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
        for f in faults:
            d, h = f.data, f.health
            statuses = ", ".join(f"{k}: {v}" for k, v in sorted(d.get("statuses", {}).items()))
            lines.append(f"| {f.name} | {f.how} | {f.wrk['requests']:,} | {f.failed} (non-2xx {f.wrk['non_2xx']}, "
                         f"socket {f.wrk['socket_errors']}{_socket_kinds(f.wrk)}) | {f.served:,} | {f.logged:,} | "
                         f"{f.served - f.logged} | "
                         f"{f.recovered} | {f.write_attempts_failed} | {f.spooled} | {f.dropped} | {h.get('p50_ms')} / "
                         f"{h.get('p99_ms')} / {h.get('max_ms')} | {statuses}; {d.get('p50_ms')} / "
                         f"{d.get('p99_ms')} / {d.get('max_ms')} |")
        lines += ["", "Details (JSON):", "", "```json",
                  json.dumps([{**vars(f), "failed": f.failed} for f in faults], indent=1, default=str), "```"]
        out["faults"] = lines
    if hostile is not None:
        bad = [h for h in hostile if h["status"] >= 500]
        lines = [run, "", f"{len(hostile)} hand-made requests; responses ≥ 500: **{len(bad)}**.", "",
                 "| case | status | body (first 120 characters) |", "|---|---|---|"]
        lines += [f"| {h['case']} | {h['status']} | `{h['body'].replace('|', '/').replace('`', '')}` |"
                  for h in hostile]
        out["hostile"] = lines
    if fuzz is not None:
        total = sum(f["server_errors"] for f in fuzz)
        lines = [run, "", f"Every operation of `/openapi.json`, up to {args.fuzz_examples} generated cases per "
                 "operation and mode — *positive* (inputs the schema allows) and *negative* (inputs it forbids); "
                 "hypothesis stops early on an operation with fewer distinct inputs (those without parameters). "
                 f"Responses ≥ 500: **{total}**.", "",
                 "| operation | mode | examples | responses ≥ 500 | statuses |", "|---|---|---|---|---|"]
        lines += [f"| `{f['operation']}` | {f.get('mode', 'positive')} | {f['examples']} | {f['server_errors']} | "
                  f"{', '.join(f'{k}: {v}' for k, v in sorted(f['statuses'].items()))} |" for f in fuzz]
        out["fuzz"] = lines
    if soak is not None:
        lines = [run, "", f"{len(soak['minutes'])} consecutive one-minute wrk runs, 8 connections paced for "
                 f"{args.soak_rate:g} requests/s in all (wrk's `delay` hook; wrk is closed-loop, so the delay is "
                 "shortened by the latency a 10-s calibration run measured, then each minute by the latency the "
                 "minute before showed; the rate in the table is what the machine gave). Mean rate: "
                 f"**{soak.get('mean_rate', '-')} requests/s**. Errors: **{soak['errors']}**; RSS growth after "
                 "the first "
                 f"minute: **{soak['rss_growth']:+.1%}**; worst p99 over the first minute's: "
                 f"**{soak['p99_ratio']}×**.", "", "![soak](reliability-soak.png)", "",
                 "| minute | delay ms | requests/s | p50 ms | p99 ms | max ms | errors | RSS MB (service, all "
                 "processes) | load average |", "|---|---|---|---|---|---|---|---|---|"]
        lines += [f"| {i + 1} | {m.get('delay_ms', '-')} | {m['rate']} | {m['p50_ms']} | {m['p99_ms']} | "
                  f"{m['max_ms']} | "
                  f"{m['non_2xx'] + m['socket_errors']} | {m['rss_mb']} | {m['load']} |"
                  for i, m in enumerate(soak["minutes"])]
        out["soak"] = lines
    if audit is not None:
        lines = [run, ""]
        if audit.get("ran"):
            vuln = audit["vulnerable"]
            lines.append(f"`{audit['command']}` over the {audit['packages']} packages installed in `.venv` (the "
                         "pinned requirements and everything they pull in), advisory data from PyPI: "
                         + ("no known vulnerabilities." if not vuln else f"{len(vuln)} vulnerable:"))
            lines += [f"- {v['name']} {v['version']}: {', '.join(v['ids'])} (fixed in {', '.join(v['fix']) or '—'})"
                      for v in vuln]
        else:
            lines.append(f"Not run: {audit['reason']}.")
        out["audit"] = lines
    if journal is not None:
        w, j = journal["without"], journal["with"]
        out["journal"] = [run, "", f"`ExposureWriter.submit` of {journal['records']:,} records, {journal['runs']} runs "
                          "each (the request side only; the writer thread is not started): without a journal "
                          f"**{w['median_us']} µs** per record (median; runs {w['runs_us']}), with the journal "
                          f"(LOG_SPOOL_DIR set) **{j['median_us']} µs** (runs {j['runs_us']}): a JSON line and one "
                          "`write()` to the page cache, no fsync (a killed process's writes survive it; only a "
                          "machine crash loses what the kernel had not written back)."]
    return out


def write_report(path: Path, sections: dict[str, list[str]]) -> None:
    """Replace the sections that ran in `path`, keep the others as the last run left them."""
    kept: dict[str, str] = {}
    if path.exists():
        by_title = {v: k for k, v in TITLES.items()}
        old_head, *chunks = path.read_text().split("\n## ")
        # a file written before sections carried their own run line says it once, at the top
        old_run = next((line for line in old_head.splitlines() if line.startswith("Written by `python")), None)
        for chunk in chunks:
            title, _, body = chunk.partition("\n")
            if title.strip() in by_title:
                body = body.strip("\n")
                if not body.startswith("_Run") and old_run:
                    body = f"_{old_run.split('; the run took')[0]} (the whole suite in that run)._\n\n{body}"
                kept[by_title[title.strip()]] = body
    head = ["# Reliability: faults, hostile input, soak", "",
            "Written by `make chaos` (`python -m bench.chaos`; `--sections` reruns some sections and keeps the "
            "others). A small demo world in a private PostgreSQL cluster (initdb in a temporary folder, so that "
            "it can really be stopped); the service as `python -m app --workers 2` (DB_TIMEOUT_SECONDS=1, "
            "LOG_SPOOL_DIR set, SCORING_THREADS=1) reaching it through a TCP proxy (which can stop forwarding); "
            "load from wrk, 8 connections, random known users at moments of the held-out window — straight on "
            "uvicorn, and for the second worker kill through Debian's nginx with `deploy/nginx-one-host.conf` "
            "(the deployment's retry of idempotent GETs). Each section "
            "says when and with which command it ran, and the machine's load then: timings on this shared 2-core "
            "machine are the machine's as much as the service's.", ""]
    body = []
    for key in SECTIONS:
        text = "\n".join(sections[key]) if key in sections else kept.get(key)
        if text is not None:
            body += [f"## {TITLES[key]}", "", text, ""]
    path.write_text("\n".join(head + body))


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.chaos", description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="short faults, no soak: the version in make test")
    parser.add_argument("--scale", type=float, default=0.005)
    parser.add_argument("--outage", type=float, default=30.0, help="seconds each fault lasts")
    parser.add_argument("--fuzz-examples", type=int, default=1000)
    parser.add_argument("--soak-seconds", type=float, default=600)
    parser.add_argument("--soak-rate", type=float, default=150)
    parser.add_argument("--audit-bin", default=str(PROJECT_ROOT / ".venv-audit" / "bin" / "pip-audit"))
    parser.add_argument("--out", type=Path, default=PROJECT_ROOT / "docs" / "reliability.md")
    parser.add_argument("--sections", default=",".join(SECTIONS), help=f"comma-separated subset of {SECTIONS}")
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        sys.exit("error: wrk not found: apt-get install wrk (make chaos does)")
    if nginx_binary() is None:
        sys.exit("error: nginx not found: apt-get install nginx-light (make chaos does)")
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(1))  # a stopped run still stops its cluster and service
    tmp = Path(tempfile.mkdtemp(prefix="chaos-"))
    want = set(args.sections.split(","))
    journal = journal_cost(tmp) if "journal" in want else None
    if want <= {"journal"}:  # no service needed
        write_report(args.out, render_sections(args, None, None, None, None, None, journal))
        shutil.rmtree(tmp, ignore_errors=True)
        print(f"written {args.out}")
        return
    pg = PgCluster()
    proxy = TcpProxy(("127.0.0.1", pg.port))
    admin = create_engine(pg.url(), isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text("CREATE DATABASE chaos"))
    admin.dispose()
    svc = None
    try:
        print("building the world and training ...", flush=True)
        models = build_world(pg.url("chaos"), tmp, args.scale, seed=5)
        pairs = request_pairs(pg.url("chaos"), models)
        svc = start_service(models, pg.url("chaos", port=proxy.port), pg.url("chaos"), tmp)
        script = wrk_script(tmp, pairs)
        Wrk(svc.base, script, 5).result()  # warm up; creates the log table
        svc.wait_drained(tmp / "spool")
        faults = fault_suite(svc, pg, proxy, script, tmp / "spool", args.outage, args.quick) \
            if "faults" in want else None
        hostile = run_hostile(svc.base) if "hostile" in want else None
        fuzz = run_fuzz(svc.base, args.fuzz_examples) if "fuzz" in want else None
        print(f"fuzz: {fuzz}", flush=True)
        soak = None
        if "soak" in want and args.soak_seconds > 0 and not args.quick:
            # wrk is closed-loop: each connection waits `delay` after an answer, so the latency adds to the
            # interval; a 10-s calibration at the nominal delay measures it, and the soak's delay is shortened by it
            nominal = 8 * 1000 / args.soak_rate
            probe = Wrk(svc.base, wrk_script(tmp, pairs, delay_ms=nominal, seed=1), 10).result()
            delay = paced_delay(probe["requests"] / probe["duration_s"], nominal, args.soak_rate)
            soak = run_soak(svc, lambda d: wrk_script(tmp, pairs, delay_ms=d, seed=2), delay, args.soak_rate,
                            args.soak_seconds, args.out.parent)
        audit = run_audit(args.audit_bin) if "audit" in want else None
        args.out.parent.mkdir(parents=True, exist_ok=True)
        write_report(args.out, render_sections(args, faults, hostile, fuzz, soak, audit, journal))
        print(f"written {args.out}")
    finally:
        if svc is not None:
            svc.proc.send_signal(signal.SIGINT)
            try:
                svc.proc.wait(30)
            except subprocess.TimeoutExpired:
                svc.proc.kill()
        proxy.close()
        try:
            pg.stop()
        except subprocess.CalledProcessError:
            pass
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.rmtree(pg.root, ignore_errors=True)


if __name__ == "__main__":
    main()
