"""Two checkouts of the service on the same machine, rounds alternating, to attribute a change.

    python -m bench.serving_ab --db URL --a DIR:MODELS[:PYTHON] --b DIR:MODELS[:PYTHON] [--rounds 3]

Each side is a checkout (a `git worktree` of another commit, say), the artifact it serves and the
interpreter that runs it (default: this one; another venv when the two commits pin other packages):
`python -m app --workers 2` started from the checkout, the same held-out requests for both
(`bench.serving`'s wrk script). Per round and side: concurrency 1 then 8, and the
CPU seconds the service's processes spent per request (utime + stime from /proc, workers and their
threads), which a busy neighbour on a shared host disturbs far less than latency or throughput, and
the part of it spent in the workers' main threads (their event loops). Medians over the rounds; the
rounds themselves printed too. Prints, writes nothing.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
from datetime import UTC, datetime
from pathlib import Path

from app.engine import Recommender
from bench.serving import LUA, cpu_seconds, held_out_requests, load, start, stop, tree_pids


def run_side(checkout: Path, models: Path, python: str, db: str, script: Path, duration: int) -> dict:
    env = {**os.environ, "DATABASE_URL": db, "MODEL_DIR": str(models), "LOG_QUEUE_SIZE": "100000",
           "PYTHONPATH": str(checkout)}
    cwd = os.getcwd()
    os.chdir(checkout)
    try:
        proc, _ = start([python, "-m", "app", "--port", "8013", "--workers", "2"], env, 8013)
    finally:
        os.chdir(cwd)
    try:
        load(8013, script, 5, 8)  # warm-up: the hourly retrieval sources, the caches
        pids = tree_pids(proc.pid)
        out = {}
        for concurrency in (1, 8):
            before, loop_before = cpu_seconds(pids), cpu_seconds(pids, main_thread_only=True)
            r = load(8013, script, duration if concurrency > 1 else max(5, duration // 2), concurrency)
            r["cpu_ms_per_request"] = round((cpu_seconds(pids) - before) * 1000 / max(r["requests"], 1), 3)
            r["loop_cpu_ms_per_request"] = round((cpu_seconds(pids, main_thread_only=True) - loop_before) * 1000
                                                 / max(r["requests"], 1), 3)
            out[concurrency] = r
        return out
    finally:
        stop(proc)


def main() -> None:
    ap = argparse.ArgumentParser(prog="python -m bench.serving_ab")
    ap.add_argument("--db", required=True)
    ap.add_argument("--a", required=True, help="CHECKOUT:MODELS")
    ap.add_argument("--b", required=True, help="CHECKOUT:MODELS")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--duration", type=int, default=20)
    args = ap.parse_args()
    sides = {}
    for name, spec in (("a", args.a), ("b", args.b)):
        checkout, models, *python = spec.split(":", 2)
        sides[name] = (Path(checkout), Path(models), python[0] if python else sys.executable)
    engine = Recommender.load(sides["b"][1])  # the requests: known users, moments of the held-out window
    users, times = held_out_requests(engine, 2000)
    del engine
    pairs = ",".join(f'{{{u},"{datetime.fromtimestamp(t, tz=UTC).strftime("%Y-%m-%dT%H:%M:%S")}"}}'
                     for u, t in zip(users.tolist(), times.tolist(), strict=True))
    script = Path(tempfile.mkdtemp()) / "load.lua"
    script.write_text(LUA % (pairs, 42))
    rounds: dict[str, list[dict]] = {"a": [], "b": []}
    for i in range(args.rounds):
        for name in ("a", "b") if i % 2 == 0 else ("b", "a"):
            result = run_side(*sides[name], args.db, script, args.duration)
            rounds[name].append(result)
            print(f"round {i + 1} {name}: " + json.dumps({c: {k: r[k] for k in ("p50_ms", "p99_ms", "rps",
                                                                                 "cpu_ms_per_request",
                                                                                 "loop_cpu_ms_per_request", "errors",
                                                                                 "split")}
                                                        for c, r in result.items()}), flush=True)
    print(f"\n`python -m bench.serving_ab {' '.join(sys.argv[1:])}`; medians of {args.rounds} rounds, "
          f"sides alternating; load average after: {' '.join(open('/proc/loadavg').read().split()[:3])}\n")
    print("| side | checkout | concurrency | p50 ms | p99 ms | requests/s | service CPU ms per request "
          "| of it in the workers' event loops |")
    print("|---|---|---|---|---|---|---|---|")
    for name in ("a", "b"):
        for c in (1, 8):
            med = {k: statistics.median(r[c][k] for r in rounds[name])
                   for k in ("p50_ms", "p99_ms", "rps", "cpu_ms_per_request", "loop_cpu_ms_per_request")}
            print(f"| {name} | {sides[name][0]} | {c} | {med['p50_ms']:.2f} | {med['p99_ms']:.2f} | {med['rps']:.1f} | "
                  f"{med['cpu_ms_per_request']:.2f} | {med['loop_cpu_ms_per_request']:.2f} |")


if __name__ == "__main__":
    main()
