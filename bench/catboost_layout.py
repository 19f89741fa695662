"""How the memory layout of one request's feature matrix changes CatBoost's scoring time.

    python -m bench.catboost_layout --models DIR [--requests 200]

In process, one thread: for random known users, the same matrix from `assemble` scored as row-major
(C order) and as column-major (Fortran order, what `assemble` returns). Prints medians and the ratio,
and checks that both layouts give identical scores.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np

from app.engine import Recommender
from app.features import assemble
from bench.serving import held_out_requests


def main() -> None:
    ap = argparse.ArgumentParser(prog="python -m bench.catboost_layout")
    ap.add_argument("--models", type=Path, required=True)
    ap.add_argument("--requests", type=int, default=200)
    args = ap.parse_args()
    engine = Recommender.load(args.models)
    state, model = engine.state, engine.models["test"]
    users, times = held_out_requests(engine, args.requests)
    spent: dict[str, list[float]] = {"row-major": [], "column-major": []}
    for user_id, ts in zip(users, times, strict=True):
        user, posts = state.at(state.user_row(int(user_id)), int(ts))
        x = assemble(user.view, np.int64(0), posts, None, np.int64(ts), text=True)
        scores = {}
        for name, matrix in (("row-major", np.ascontiguousarray(x)), ("column-major", np.asfortranarray(x))):
            started = time.perf_counter()
            scores[name] = model.predict(matrix, prediction_type="RawFormulaVal", thread_count=1)
            spent[name].append((time.perf_counter() - started) * 1000)
        if not np.array_equal(scores["row-major"], scores["column-major"]):
            raise SystemExit("error: the two layouts gave different scores")
    c, f = (float(np.median(spent[k])) for k in ("row-major", "column-major"))
    print(f"CatBoost on {len(engine.post_ids)} x {x.shape[1]} float32, median of {args.requests}: "
          f"row-major {c:.2f} ms, column-major {f:.2f} ms ({c / f:.1f}x); scores identical")


if __name__ == "__main__":
    main()
