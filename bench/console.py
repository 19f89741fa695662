"""Console page timing: server time of each page for random users and moments, in process.

    python -m bench.console --db URL --models DIR [--report DIR] [--requests 100] [--out docs/console.md]

The app is built as `python -m app` builds it (artifacts loaded, the live state caught up with the
database) and driven through its ASGI interface by FastAPI's TestClient: the time measured is the
app's own, from the request entering it to the whole page rendered — routing, validation, the
engine, the database reads and Jinja2 — without the network or a browser. Users and moments are
drawn as the serving benchmark draws them (known users, times in the held-out window); the post of
"Why this post" is the user's first recommendation. Appends a table to `--out` with the command and
the machine.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
from fastapi.testclient import TestClient

from app.config import PROJECT_ROOT, Settings
from app.db import masked
from app.engine import Recommender
from app.main import create_app
from bench.serving import held_out_requests

GOAL_MS = 300


def _iso(ts: int) -> str:
    return datetime.fromtimestamp(int(ts), tz=UTC).strftime("%Y-%m-%dT%H:%M:%S")


def measure(client: TestClient, recommender: Recommender, n: int, seed: int = 0) -> dict[str, list[float]]:
    users, times = held_out_requests(recommender, n, seed)
    pages: dict[str, list[float]] = {"feed": [], "why": [], "experiment": [], "service": []}
    for u, t in zip(users.tolist(), times.tolist(), strict=True):
        post = int(recommender.recommend("test", u, t, 1).post_ids[0])
        urls = {"feed": f"/console/feed?user={u}&time={_iso(t)}&limit=10",
                "why": f"/console/why?user={u}&post={post}&time={_iso(t)}&model=test",
                "experiment": "/console/experiment", "service": "/console/service"}
        for name, url in urls.items():
            started = time.perf_counter()
            r = client.get(url)
            pages[name].append((time.perf_counter() - started) * 1000)
            if r.status_code != 200:
                raise RuntimeError(f"{url}: {r.status_code} {r.text[:200]}")
    return pages


def main() -> None:
    ap = argparse.ArgumentParser(prog="python -m bench.console", description=__doc__.split("\n\n")[0])
    ap.add_argument("--db", required=True, help="SQLAlchemy URL of the world the models were trained on")
    ap.add_argument("--models", type=Path, required=True, help="Artifact folder (with `current`)")
    ap.add_argument("--report", type=Path, default=None, help="ab-report folder for the Experiment page")
    ap.add_argument("--requests", type=int, default=100, help="(user, moment) pairs, each on every page")
    ap.add_argument("--warmup", type=int, default=5, help="pairs run first and not counted")
    ap.add_argument("--label", default="", help="what the world is, for the table (e.g. scale 0.1, SQLite)")
    ap.add_argument("--out", type=Path, default=PROJECT_ROOT / "docs" / "console.md")
    args = ap.parse_args()

    settings = Settings(database_url=args.db, model_dir=args.models,
                        **({"console_report_dir": args.report} if args.report else {}))
    recommender = Recommender.load(args.models, settings.exclude_viewed_hours, settings.exclude_last_views)
    app = create_app(settings, load_recommender=lambda _: recommender)
    with TestClient(app) as client:
        follower = app.state.serving.follower
        while follower is not None and not follower.status.caught_up.wait(1):
            pass  # as /ready: measure the state the service would serve
        measure(client, recommender, args.warmup, seed=1)  # templates compiled, CatBoost's SHAP set up
        load_before = os.getloadavg()[0]
        pages = measure(client, recommender, args.requests)
        load_after = os.getloadavg()[0]
    result = {name: {"p50_ms": round(float(np.percentile(v, 50)), 1), "p95_ms": round(float(np.percentile(v, 95)), 1),
                     "max_ms": round(max(v), 1), "requests": len(v)} for name, v in pages.items()}
    print(json.dumps(result))
    state = recommender.state
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor())
    cmd = "python -m bench.console " + " ".join(sys.argv[1:])
    lines = [f"\n## Console pages, {datetime.now(UTC):%Y-%m-%d %H:%M} UTC\n",
             f"Command: `{cmd}`  ",
             f"World: {args.label or masked(args.db)} — {state.n_users:,} users, {state.n_posts:,} posts, "
             f"model version "
             f"{recommender.version}; machine: {os.cpu_count()} cores ({cpu}), Python "
             f"{platform.python_version()}; in process (TestClient), one request at a time, after "
             f"{args.warmup} warm-up pairs; load average {load_before:.1f} before, {load_after:.1f} after "
             "(other work shares the machine).\n",
             f"| page | requests | p50 ms | p95 ms | max ms | goal ≤ {GOAL_MS} ms |", "|---|---|---|---|---|---|"]
    for name, r in result.items():
        ok = "met" if r["max_ms"] <= GOAL_MS else ("p95 met" if r["p95_ms"] <= GOAL_MS else "missed")
        lines.append(f"| {name} | {r['requests']} | {r['p50_ms']} | {r['p95_ms']} | {r['max_ms']} | {ok} |")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    with open(args.out, "a") as fh:
        fh.write("\n".join(lines) + "\n")
    print(f"appended to {args.out}")


if __name__ == "__main__":
    main()
