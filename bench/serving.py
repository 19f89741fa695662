"""Serving benchmark: the service and a pandas-per-request reference under the same HTTP load.

    python -m bench.serving --db URL --models DIR [--duration 60] [--concurrency 8] [--workers 2]

Each service runs as its own process tree on loopback; wrk (Debian package `wrk`) drives it with
random known users at times inside the held-out window. Reported: latency percentiles, throughput,
errors, service RSS, startup time, and an in-process profile of one request's parts. The result is
appended to docs/benchmarks.md with the command and the machine.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path

import httpx
import numpy as np

from app.config import PROJECT_ROOT
from app.engine import Recommender
from app.features import assemble

LUA = """
local pairs = {%s}
math.randomseed(%d)
request = function()
  local p = pairs[math.random(#pairs)]
  return wrk.format("GET", "/post/recommendations/?id=" .. p[1] .. "&time=" .. p[2] .. "&limit=5")
end
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format('RESULT {"requests": %%d, "duration_s": %%.3f, "errors": %%d, "non_2xx": %%d, '
    .. '"p50_ms": %%.2f, "p90_ms": %%.2f, "p99_ms": %%.2f, "max_ms": %%.2f}\\n',
    summary.requests, summary.duration / 1e6, e.connect + e.read + e.write + e.timeout, e.status,
    latency:percentile(50) / 1000, latency:percentile(90) / 1000, latency:percentile(99) / 1000,
    latency.max / 1000))
end
"""


def tree_pids(pid: int) -> list[int]:
    """A process and all its descendants (those alive now)."""
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        try:
            children = Path(f"/proc/{p}/task/{p}/children").read_text().split()
        except OSError:
            continue
        out.append(p)
        todo.extend(int(x) for x in children)
    return out


def tree_rss_mb(pid: int) -> float:
    """Resident memory of a process and all its descendants."""
    total = 0
    for p in tree_pids(pid):
        try:
            status = Path(f"/proc/{p}/status").read_text()
            total += int(next(line.split()[1] for line in status.splitlines() if line.startswith("VmRSS")))
        except (OSError, StopIteration):
            continue
    return total / 1024


TICK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pids: list[int], main_thread_only: bool = False) -> float:
    """utime + stime of the processes, all their threads, or only their main threads (a worker's event
    loop: /proc/<pid>/task/<pid>/stat)."""
    total = 0.0
    for pid in pids:
        path = f"/proc/{pid}/task/{pid}/stat" if main_thread_only else f"/proc/{pid}/stat"
        try:
            fields = Path(path).read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += (int(fields[11]) + int(fields[12])) / TICK
    return total


def start(cmd: list[str], env: dict, port: int) -> tuple[subprocess.Popen, float]:
    started = time.perf_counter()
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    for _ in range(1200):
        try:
            if httpx.get(f"{url}/post/recommendations/?id=1&limit=1", timeout=1).status_code < 500:
                return proc, time.perf_counter() - started
        except httpx.HTTPError:
            pass
        if proc.poll() is not None:
            raise RuntimeError(f"{cmd} exited: {proc.stderr.read().decode()[-2000:]}")
        time.sleep(0.1)
    raise RuntimeError(f"{cmd} did not start")


def stop(proc: subprocess.Popen) -> None:
    os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)


def connections_by_process(port: int) -> list[int]:
    """How many established connections to `port` each server process holds, most first (`ss -tnp`):
    uvicorn's workers accept from one shared socket and a keep-alive connection stays with the worker
    that accepted it, so wrk's few connections can fall unevenly (6/2 of 8), which moves p50."""
    try:
        out = subprocess.run(["ss", "-tnpH", "state", "established", f"sport = :{port}"], capture_output=True,
                             text=True, check=True, timeout=5).stdout
    except (OSError, subprocess.SubprocessError):
        return []
    pids = Counter(x.split("pid=", 1)[1].split(",", 1)[0] for x in out.splitlines() if "pid=" in x)
    return sorted(pids.values(), reverse=True)


def load(port: int, script: Path, duration: int, concurrency: int, threads: int = 2) -> dict:
    """One wrk run; with the result, how its connections fell between the server's processes (read a
    moment after the start, `split`)."""
    cmd = ["wrk", "-t", str(min(threads, concurrency)), "-c", str(concurrency), "-d", f"{duration}s",
           "--timeout", "5s", "-s", str(script), f"http://127.0.0.1:{port}"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    time.sleep(min(1.0, duration / 2))
    split = connections_by_process(port)
    stdout, stderr = proc.communicate()
    if proc.returncode:
        raise subprocess.CalledProcessError(proc.returncode, cmd, stdout, stderr)
    line = next(x for x in stdout.splitlines() if x.startswith("RESULT "))
    result = json.loads(line.removeprefix("RESULT "))
    result["rps"] = round(result["requests"] / result["duration_s"], 1)
    result["split"] = "/".join(map(str, split)) or "?"
    return result


def held_out_requests(engine: Recommender, n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """n (known user id, second) pairs with times in the artifacts' held-out window."""
    split = engine.manifest.data["split"]
    rng = np.random.default_rng(seed)
    users = rng.choice(engine.state.snapshot.user_ids, size=n)
    return users, rng.integers(int(split["test_start"]), int(split["end"]), size=n)


def profile(engine: Recommender, pairs: list[tuple[int, int]], n: int = 200) -> dict:
    """Median milliseconds of each part of one request as the service runs it (the engine's retrieval
    mode, the test model), in process on one thread, and of the whole `recommend`; the same requests
    once before, as a warm-up (a service that has run a while holds the hourly retrieval sources of their
    hours)."""
    state = engine.state
    parts: dict[str, list[float]] = {"state as of t": [], "candidates": [], "assemble": [], "catboost": [],
                                     "exclude+top_k": [], "recommend": []}
    model = engine.models["test"]
    for user_id, ts in pairs[:n]:
        engine.recommend("test", int(user_id), int(ts), 5)
    for user_id, ts in pairs[:n]:
        user_id, ts = int(user_id), int(ts)
        s0 = time.perf_counter()
        # the engine's steps (`Recommender._scored`): with candidates, the post counters of those alone
        # (read while assembling) and the excluded ones dropped before scoring
        candidates = engine.retrieval == "candidates"
        user, posts = state.at(state.user_row(user_id), ts, every_post=not candidates)
        a = time.perf_counter()
        size = len(posts.topic)
        rows = None
        if candidates:
            rows = engine.candidates("test", user, ts, size)
            rows = rows[engine.eligible(rows, user, ts, size)]
        b = time.perf_counter()
        x = assemble(user.view, np.int64(0), posts, rows, np.int64(ts), text=True)
        cc = time.perf_counter()
        s = model.predict(x, prediction_type="RawFormulaVal", thread_count=1)
        d = time.perf_counter()
        if rows is None:
            rows = np.arange(size)
            s = np.where(engine.eligible(rows, user, ts, size), s, -np.inf)
        engine._select(rows, s, posts, ts, 5, 0.0)
        e = time.perf_counter()
        engine.recommend("test", user_id, ts, 5)
        f = time.perf_counter()
        for key, v in zip(parts, (a - s0, b - a, cc - b, d - cc, e - d, f - e), strict=True):
            parts[key].append(v * 1000)
    return {k: round(float(np.median(v)), 2) for k, v in parts.items()}


def main() -> None:
    ap = argparse.ArgumentParser(prog="python -m bench.serving")
    ap.add_argument("--db", required=True)
    ap.add_argument("--models", type=Path, required=True)
    ap.add_argument("--duration", type=int, default=60)
    ap.add_argument("--reference-duration", type=int, default=30)
    ap.add_argument("--concurrency", type=int, default=8)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--out", type=Path, default=PROJECT_ROOT / "docs" / "benchmarks.md")
    args = ap.parse_args()
    if shutil.which("wrk") is None:
        sys.exit("error: wrk not found: apt-get install wrk")

    engine = Recommender.load(args.models)
    users, times = held_out_requests(engine, 2000)
    pairs = list(zip(users.tolist(), times.tolist(), strict=True))
    prof = profile(engine, pairs)
    retrieval = engine.retrieval
    lua_pairs = ",".join(f'{{{u},"{datetime.fromtimestamp(t, tz=UTC).strftime("%Y-%m-%dT%H:%M:%S")}"}}'
                         for u, t in pairs)
    script = Path(tempfile.mkdtemp()) / "load.lua"
    script.write_text(LUA % (lua_pairs, 42))
    del engine

    env = {**os.environ, "DATABASE_URL": args.db, "MODEL_DIR": str(args.models), "LOG_QUEUE_SIZE": "100000"}
    py = sys.executable
    runs = {}
    services = (
        ("service", [py, "-m", "app", "--port", "8011", "--workers", str(args.workers)], 8011, args.duration),
        ("reference", [py, "-m", "bench.reference_app", "--port", "8012", "--workers", str(args.workers)], 8012,
         args.reference_duration),
    )
    for name, cmd, port, duration in services:
        proc, startup = start(cmd, env, port)
        try:
            load(port, script, 5, args.concurrency)  # warm-up
            pids = tree_pids(proc.pid)
            for concurrency in (1, args.concurrency):
                before = cpu_seconds(pids)
                result = load(port, script, duration if concurrency > 1 else max(10, duration // 3), concurrency)
                # the service's own CPU per request (its processes and threads, not wrk's nor the
                # database's): on two shared cores the throughput at concurrency 8 is about 2 / this
                result["cpu_ms"] = round((cpu_seconds(pids) - before) * 1000 / max(result["requests"], 1), 2)
                result["rss_mb"] = round(tree_rss_mb(proc.pid), 0)
                result["startup_s"] = round(startup, 1)
                runs[(name, concurrency)] = result
                print(name, concurrency, json.dumps(result))
        finally:
            stop(proc)

    c = args.concurrency
    ratio_p50 = runs[("reference", 1)]["p50_ms"] / runs[("service", 1)]["p50_ms"]
    ratio_rps = runs[("service", c)]["rps"] / runs[("reference", c)]["rps"]
    command = " ".join(["python -m bench.serving", *sys.argv[1:]])
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor())
    lines = [
        f"## Serving, {datetime.now(UTC).strftime('%Y-%m-%d %H:%M UTC')}", "",
        f"Command: `{command}`  ",
        f"Machine: {os.cpu_count()} cores ({cpu}), Python {platform.python_version()}; artifacts "
        f"{args.models.name} ({len(users)} distinct request pairs over {len(set(users.tolist()))} users); "
        f"wrk on the same machine, {args.workers} workers per service, limit=5, times in the held-out window; "
        "the reference is `bench/reference_app.py` (a pandas frame per request, then CatBoost).", "",
        "| service | concurrency | p50 ms | p90 ms | p99 ms | max ms | requests/s | requests | errors | non-2xx "
        "| RSS MB | startup s | connections per worker | CPU ms per request |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for (name, conc), r in runs.items():
        lines.append(f"| {name} | {conc} | {r['p50_ms']} | {r['p90_ms']} | {r['p99_ms']} | {r['max_ms']} | "
                     f"{r['rps']} | {r['requests']} | {r['errors']} | {r['non_2xx']} | {r['rss_mb']:.0f} | "
                     f"{r['startup_s']} | {r['split']} | {r['cpu_ms']} |")
    lines += ["", f"Service vs reference in the same run: p50 at concurrency 1 {ratio_p50:.1f}x lower; throughput "
              f"at concurrency {c} {ratio_rps:.1f}x higher.", "",
              f"In-process profile of one request (test model, retrieval {retrieval}, median of 200, one "
              f"thread): the state as of the request's moment {prof['state as of t']} ms, candidates (less the "
              f"excluded posts) {prof['candidates']} ms, assemble (with the candidates' post counters) "
              f"{prof['assemble']} ms, CatBoost {prof['catboost']} ms, top-k (and with full scoring the "
              f"exclusions) {prof['exclude+top_k']} ms; `recommend` as a whole {prof['recommend']} "
              "ms; the rest of the HTTP latency is the server (routing, validation, JSON) and the load "
              "generator sharing the two cores.", ""]
    text = "\n".join(lines)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    with open(args.out, "a") as fh:
        if fh.tell() == 0:
            fh.write("# Benchmarks\n\nAppended by the commands named in each section.\n\n")
        fh.write(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
