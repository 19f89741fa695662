"""Offline quality over several demo worlds: generate, train, evaluate per seed; a table in docs/.

    python -m bench.quality --scale 0.1 --seeds 1 2 3

Each seed gets its own SQLite file and artifact folder under data/quality/. The table is written to
docs/quality.md (replacing the previous one for the same scale) with the command and the machine.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import time
from concurrent.futures import ProcessPoolExecutor
from datetime import UTC, datetime
from pathlib import Path

from app.config import PROJECT_ROOT, get_settings
from app.db import make_engine
from app.engine import Recommender
from training.evaluate import PROFILE_BEST, EvalConfig, run_evaluation
from training.train import TrainConfig, train
from training.world.generate import generate_world

ROWS = [("hitrate@5", "full-catalogue hitrate@5"), ("shown_hitrate@5", "shown-set hitrate@5"),
        ("expected_hitrate@5", "expected hitrate@5"), ("roc_auc", "ROC-AUC (held-out views)"),
        ("ndcg@5", "NDCG@5 (full catalogue)"), ("coverage@5", "coverage@5")]
RANKERS = ("random", "popularity", "control", "test", "oracle")


def run_seed(scale: float, seed: int, requests: int, out: Path, exposure: str = "random") -> dict:
    """Generate a demo world (`exposure`: how its users came to view posts), train and evaluate it."""
    out.mkdir(parents=True, exist_ok=True)
    url = f"sqlite:///{out / 'world.db'}"
    settings = get_settings()
    t0 = time.perf_counter()
    generate_world(url, scale=scale, seed=seed, world_path=out / "world.npz", replace=True, exposure=exposure)
    t1 = time.perf_counter()
    train(url, out / "models", settings.cache_dir, settings.embedding_model, TrainConfig())
    t2 = time.perf_counter()
    engine = make_engine(url)
    with engine.connect() as conn:
        result, _ = run_evaluation(conn, Recommender.load(out / "models"), out / "world.npz",
                                   EvalConfig(requests=requests, seed=seed))
    engine.dispose()
    t3 = time.perf_counter()
    result["seconds"] = {"generate": round(t1 - t0, 1), "train": round(t2 - t1, 1), "evaluate": round(t3 - t2, 1)}
    result["loadavg"] = Path("/proc/loadavg").read_text().split()[:3] if Path("/proc/loadavg").exists() else None
    (out / "metrics.json").write_text(json.dumps(result, indent=2, default=str))
    return result


def _cell(result: dict, key: str, ranker: str) -> str:
    value = result.get(key, {}).get(ranker)
    if value is None:
        return ""
    lo, hi = result.get("ci95", {}).get(key, {}).get(ranker, (None, None))
    return f"{value:.3f} [{lo:.3f}, {hi:.3f}]" if lo is not None else f"{value:.3f}"


def table(results: dict[int, dict], scale: float, requests: int, command: str) -> str:
    lines = [f"## Offline quality at scale {scale} ({len(results)} seeds, {requests} requests each)", "",
             f"Command: `{command}`  ",
             f"Machine: {platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}; "
             f"{datetime.now(UTC).strftime('%Y-%m-%d')}. Cells: mean [95% bootstrap interval over requests].", ""]
    for seed, r in results.items():
        lines += [f"### seed {seed} (model {r['protocol']['model_version']}, "
                  f"{r['shown_requests']} shown-set requests; generate {r['seconds']['generate']} s, "
                  f"train {r['seconds']['train']} s, evaluate {r['seconds']['evaluate']} s)", "",
                  "| metric | " + " | ".join(RANKERS) + " |", "|---" * (len(RANKERS) + 1) + "|"]
        for key, label in ROWS:
            if key in r:
                lines.append(f"| {label} | " + " | ".join(_cell(r, key, n) for n in RANKERS) + " |")
        cold = r.get("cold_start", {})
        for key, label in (("expected_hitrate@5", "cold start: expected hitrate@5 (oracle: the profile's best)"),
                           ("shown_hitrate@5", "cold start: shown-set hitrate@5")):
            if key in cold:
                cells = " | ".join(_cell(cold, key, n) for n in ("popularity", "control", "test", PROFILE_BEST))
                lines.append(f"| {label} | | {cells} |")
        if "gap_closed" in r:
            lines.append("")
            lines.append(f"Gap to the oracle closed (expected hitrate@5): control {r['gap_closed']['control']:.3f}, "
                         f"test {r['gap_closed']['test']:.3f}.")
        served = {name: choice.get("cold", {}) for name, choice in r.get("slots", {}).items()}
        if served:
            lines.append("")
            lines.append("Users without history, as training chose on validation: " + "; ".join(
                f"{name} serves {cold.get('serves')}{', one post per topic first' if cold.get('spread') else ''}"
                for name, cold in served.items()) + ".")
        lines.append("")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.quality")
    parser.add_argument("--scale", type=float, default=0.1)
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    parser.add_argument("--requests", type=int, default=1000)
    parser.add_argument("--out", type=Path, default=PROJECT_ROOT / "docs" / "quality.md")
    parser.add_argument("--jobs", type=int, default=1, help="seeds run at once, each in its own process "
                                                           "(same figures; step times then overlap)")
    args = parser.parse_args()
    command = f"python -m bench.quality --scale {args.scale} --seeds {' '.join(map(str, args.seeds))} " \
              f"--requests {args.requests}" + (f" --jobs {args.jobs}" if args.jobs > 1 else "")
    dirs = {s: PROJECT_ROOT / "data" / "quality" / f"seed{s}" for s in args.seeds}
    if args.jobs > 1:
        with ProcessPoolExecutor(max_workers=args.jobs) as pool:
            futures = {s: pool.submit(run_seed, args.scale, s, args.requests, d) for s, d in dirs.items()}
            results = {s: f.result() for s, f in futures.items()}
    else:
        results = {s: run_seed(args.scale, s, args.requests, d) for s, d in dirs.items()}
    text = table(results, args.scale, args.requests, command)
    peak = max(resource.getrusage(who).ru_maxrss for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN)) / 1024
    text += (f"\nPeak RSS of the whole run: {peak:.0f} MB.\n" if args.jobs == 1 else
             f"\nPeak RSS of one seed's process: {peak:.0f} MB ({args.jobs} at once).\n")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("# Offline quality\n\nWritten by `bench/quality.py`.\n\n" + text)
    print(text)


if __name__ == "__main__":
    main()
