"""`make bench`: scale-1.0 world into PostgreSQL, training on it, then the serving benchmark and the cost
per request by catalogue size (7k, 70k and 1M posts, candidates vs full scoring: docs/catalogue.md and
its plot docs/catalogue_cost.png).

    python -m bench [--db URL] [--scale 1.0] [--skip-generate] [--skip-train]

Each step runs as a child process under GNU time, so wall time and peak RSS are the step's own. The
results are appended to docs/benchmarks.md with the commands and the machine.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import subprocess
import sys
from datetime import UTC, datetime

from app.config import PROJECT_ROOT

DEFAULT_DB = "postgresql+psycopg2://postgres@127.0.0.1:5432/feedbench"


def timed(cmd: list[str]) -> dict:
    """Run under /usr/bin/time -v; wall seconds and peak RSS in MB."""
    out = subprocess.run(["/usr/bin/time", "-v", *cmd], capture_output=True, text=True)
    if out.returncode != 0:
        sys.exit(f"error: {' '.join(cmd)} failed:\n{out.stderr[-3000:]}")
    wall = re.search(r"Elapsed \(wall clock\) time \(h:mm:ss or m:ss\): (\S+)", out.stderr).group(1)
    parts = [float(p) for p in wall.split(":")]
    seconds = sum(p * 60 ** i for i, p in enumerate(reversed(parts)))
    rss = int(re.search(r"Maximum resident set size \(kbytes\): (\d+)", out.stderr).group(1)) / 1024
    return {"seconds": round(seconds, 1), "rss_mb": round(rss), "stdout": out.stdout.strip().splitlines()[-1:]}


def quality_line(metrics: dict) -> str:
    """One sentence of the evaluation's headline numbers, as `evaluate --json` wrote them."""
    def fmt(d: dict) -> str:
        return " / ".join(f"{k} {v:.3f}" for k, v in d.items())
    text = f"Evaluation ({metrics['requests']} requests): full-catalogue hitrate@5 {fmt(metrics['hitrate@5'])}"
    for key in ("shown_hitrate@5", "expected_hitrate@5", "gap_closed"):
        if key in metrics:
            text += f"; {key.replace('_', ' ')} {fmt(metrics[key])}"
    return text + "."


def ensure_database(url: str) -> None:
    """Create the benchmark database on the server if it is missing."""
    from sqlalchemy import create_engine, text
    from sqlalchemy.engine import make_url

    target = make_url(url)
    admin = create_engine(target.set(database="postgres"), isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        exists = conn.execute(text("SELECT 1 FROM pg_database WHERE datname = :n"), {"n": target.database}).first()
        if not exists:
            conn.execute(text(f'CREATE DATABASE "{target.database}"'))
    admin.dispose()


def main() -> None:
    ap = argparse.ArgumentParser(prog="python -m bench")
    ap.add_argument("--db", default=os.environ.get("BENCH_DATABASE_URL", DEFAULT_DB))
    ap.add_argument("--scale", type=float, default=1.0)
    ap.add_argument("--seed", type=int, default=11)
    ap.add_argument("--skip-generate", action="store_true")
    ap.add_argument("--skip-train", action="store_true")
    ap.add_argument("--duration", type=int, default=60)
    args = ap.parse_args()
    work = PROJECT_ROOT / "data" / "bench"
    models = work / "models"
    py = sys.executable
    steps = {}
    if not args.skip_generate:
        ensure_database(args.db)
        steps["generate"] = (timed([py, "-m", "training", "generate", "--scale", str(args.scale), "--seed",
                                    str(args.seed), "--db", args.db, "--world", str(work / "world.npz"),
                                    "--replace"]), f"python -m training generate --scale {args.scale} "
                                                   f"--seed {args.seed} --db <bench db> --replace")
    if not args.skip_train:
        steps["train"] = (timed([py, "-m", "training", "train", "--db", args.db, "--out", str(models)]),
                          "python -m training train --db <bench db>")
        steps["evaluate"] = (timed([py, "-m", "training", "evaluate", "--db", args.db, "--models", str(models),
                                    "--world", str(work / "world.npz"), "--requests", "1000",
                                    "--json", str(work / "metrics.json")]),
                             "python -m training evaluate --db <bench db> --requests 1000")
    if steps:
        lines = [f"## Pipeline at scale {args.scale} on PostgreSQL, {datetime.now(UTC).strftime('%Y-%m-%d %H:%M UTC')}",
                 "", f"Command: `python -m bench {' '.join(sys.argv[1:])}` (each step under GNU time).  ",
                 f"Machine: {os.cpu_count()} cores, {platform.machine()}, Python {platform.python_version()}.", "",
                 "| step | command | wall time | peak RSS |", "|---|---|---|---|"]
        for name, (r, cmd) in steps.items():
            lines.append(f"| {name} | `{cmd}` | {r['seconds'] / 60:.1f} min | {r['rss_mb'] / 1024:.2f} GB |")
        if "evaluate" in steps:
            lines += ["", quality_line(json.loads((work / "metrics.json").read_text()))]
        out = PROJECT_ROOT / "docs" / "benchmarks.md"
        out.parent.mkdir(parents=True, exist_ok=True)
        with open(out, "a") as fh:
            if fh.tell() == 0:
                fh.write("# Benchmarks\n\nAppended by the commands named in each section.\n\n")
            fh.write("\n".join(lines) + "\n\n")
        print("\n".join(lines))
    subprocess.run([py, "-m", "bench.serving", "--db", args.db, "--models", str(models), "--duration",
                    str(args.duration)], check=True)
    subprocess.run([py, "-m", "bench.catalogue", "cost", "--db", args.db, "--models", str(models), "--posts", "7023",
                    "70000", "1000000", "--requests", "200", "--full-max", "70000"], check=True)


if __name__ == "__main__":
    main()
