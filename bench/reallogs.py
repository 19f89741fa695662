"""Quality on demo worlds of either exposure kind: generate, train (the exposure detected from the log),
evaluate per seed; a section per (exposure, scale) in docs/reallogs.md.

    python -m bench.reallogs --exposure organic --scale 0.03 --seeds 1 2 3

Each seed gets its own SQLite file and artifact folder under data/reallogs/<exposure>-<scale>/. The
section says, per seed, what training detected and chose per slot (on validation), and the held-out
figures of every ranker on the protocol that fits the exposure and on the others, with the ratio of the
served models to popularity and the share of the popularity -> oracle gap they close.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
from datetime import UTC, datetime
from pathlib import Path

from app.config import PROJECT_ROOT, get_settings
from bench.quality import _cell, run_seed

RANKERS = ("popularity", "segment_popularity", "control", "test", "oracle")
ROWS = (("hitrate@5", "full-catalogue hitrate@5"), ("shown_hitrate@5", "shown-set hitrate@5"),
        ("expected_hitrate@5", "expected hitrate@5"))


def seed_lines(seed: int, r: dict) -> list[str]:
    e = r["exposure"]
    lines = [f"### seed {seed} (model {r['protocol']['model_version']}; generate {r['seconds']['generate']} s, "
             f"train {r['seconds']['train']} s, evaluate {r['seconds']['evaluate']} s; load average after "
             f"{' '.join(r['loadavg'] or [])})", "",
             f"Exposure detected: **{e['detected']}** (users x topics {e['user_topic']}, posts x weeks "
             f"{e['post_week']}); the protocol that fits it: `{r['fitting_protocol']}`.", ""]
    for name, choice in r.get("slots", {}).items():
        cold = choice.get("cold", {})
        lines.append(f"- `{name}` serves **{choice['serves']}**: {choice['reason']}; validation "
                     f"{choice['validation_hitrate@5']}. Users without history: **{cold.get('serves')}** "
                     f"(validation {cold.get('validation_hitrate@5')}).")
    lines += ["", "| metric | " + " | ".join(RANKERS) + " |", "|---" * (len(RANKERS) + 1) + "|"]
    for key, label in ROWS:
        if key in r:
            lines.append(f"| {label} | " + " | ".join(_cell(r, key, n) for n in RANKERS) + " |")
    cold = r.get("cold_start", {})
    for key, label in (("hitrate@5", "cold start: full-catalogue hitrate@5"),
                       ("shown_hitrate@5", "cold start: shown-set hitrate@5"),
                       ("expected_hitrate@5", "cold start: expected hitrate@5")):
        if key in cold:
            lines.append(f"| {label} | " + " | ".join(_cell(cold, key, n) for n in RANKERS[:-1]) + " | |")
    fit = r["fitting_protocol"]
    pop = r[fit]["popularity"]
    ratios = {n: round(r[fit][n] / pop, 2) if pop else None for n in ("control", "test")}
    lines += ["", f"On the fitting protocol ({fit}) the served models reach {ratios['control']}x (control) and "
                  f"{ratios['test']}x (test) popularity ({r['requests']} requests; shown-set eligible "
                  f"{r['shown_requests']})."]
    if "gap_closed" in r:
        g = r["gap_closed"]
        lines.append(f"Popularity -> oracle gap closed (expected hitrate@5): segment popularity "
                     f"{g['segment_popularity']}, control {g['control']}, test {g['test']}.")
    return lines + [""]


def section(exposure: str, scale: float, results: dict[int, dict], command: str) -> str:
    lines = [f"## {exposure} exposure, scale {scale}", "", f"Command: `{command}`  ",
             f"Machine: {platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}; "
             f"{datetime.now(UTC).strftime('%Y-%m-%d %H:%M')} UTC; text encoder {get_settings().embedding_model}. "
             "Cells: mean [95% bootstrap interval over requests].", ""]
    for seed, r in results.items():
        lines += seed_lines(seed, r)
    return "\n".join(lines)


def write_section(path: Path, exposure: str, scale: float, text: str) -> None:
    """Replace this (exposure, scale)'s section of the doc, or append it."""
    old = path.read_text() if path.is_file() else "# Learning from real logs: quality by exposure kind\n\n" \
                                                  "Written by `bench/reallogs.py`; see README, Evaluation.\n\n"
    pattern = re.compile(rf"^## {re.escape(exposure)} exposure, scale {re.escape(str(scale))}\n.*?(?=^## |\Z)",
                         re.S | re.M)
    new = pattern.sub(lambda _: text + "\n", old) if pattern.search(old) else old.rstrip("\n") + "\n\n" + text + "\n"
    path.write_text(new)


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.reallogs")
    parser.add_argument("--exposure", choices=("random", "organic"), default="organic")
    parser.add_argument("--scale", type=float, default=0.1)
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    parser.add_argument("--requests", type=int, default=1000)
    parser.add_argument("--out", type=Path, default=PROJECT_ROOT / "docs" / "reallogs.md")
    parser.add_argument("--folder", type=Path, default=None,
                        help="where the worlds and models go; default data/reallogs/<exposure>-<scale>")
    parser.add_argument("--collect", type=Path, nargs="*", default=None,
                        help="write the section from these seeds' metrics.json (seeds run apart) instead of running")
    args = parser.parse_args()
    command = (f"python -m bench.reallogs --exposure {args.exposure} --scale {args.scale} --seeds "
               f"{' '.join(map(str, args.seeds))} --requests {args.requests}")
    folder = args.folder or PROJECT_ROOT / "data" / "reallogs" / f"{args.exposure}-{args.scale}"
    if args.collect:
        results = dict(zip(args.seeds, (json.loads(p.read_text()) for p in args.collect), strict=True))
    else:
        results = {s: run_seed(args.scale, s, args.requests, folder / f"seed{s}", exposure=args.exposure)
                   for s in args.seeds}
    text = section(args.exposure, args.scale, results, command)
    write_section(args.out, args.exposure, args.scale, text)
    print(text)


if __name__ == "__main__":
    main()
