"""What the collaborative candidate source costs a request: the same held-out requests with and without it,
in one process, alternating three times (medians of the medians), model `test`.

    python -m bench.collaborative_cost --models data/quality/seed1/models

Prints the median number of candidates and the median milliseconds of each part of a request
(`bench.serving.profile`) for both.
"""

from __future__ import annotations

import argparse
from dataclasses import replace
from pathlib import Path

import numpy as np

from app.engine import Recommender
from bench.serving import held_out_requests, profile


def main() -> None:
    ap = argparse.ArgumentParser(prog="python -m bench.collaborative_cost")
    ap.add_argument("--models", type=Path, required=True)
    ap.add_argument("--requests", type=int, default=200)
    args = ap.parse_args()
    engine = Recommender.load(args.models)
    users, times = held_out_requests(engine, args.requests, seed=0)
    pairs = list(zip(users.tolist(), times.tolist(), strict=True))
    with_cf = engine.retriever.budget
    budgets = {"with": with_cf, "without": replace(with_cf, cf=0)}
    sizes = {}
    for name, budget in budgets.items():
        engine.retriever.budget = budget
        n = []
        for u, t in pairs:
            user, posts = engine.state.at(engine.state.user_row(int(u)), int(t))
            n.append(len(engine.candidates("test", user, int(t), len(posts.topic))))
        sizes[name] = float(np.median(n))
    runs: dict[str, list[dict]] = {name: [] for name in budgets}
    for _ in range(3):
        for name, budget in budgets.items():
            engine.retriever.budget = budget
            runs[name].append(profile(engine, pairs, args.requests))
    for name, r in runs.items():
        parts = {k: round(float(np.median([x[k] for x in r])), 2) for k in r[0]}
        print(f"{name} the collaborative source: {sizes[name]:.0f} candidates (median), ms {parts}")


if __name__ == "__main__":
    main()
