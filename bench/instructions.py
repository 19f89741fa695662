"""Instructions per request, counted by valgrind's callgrind: the in-process request path of two
checkouts compared without the host's noise.

    python -m bench.instructions --models DIR [--a CHECKOUT] [--b CHECKOUT] [--requests 300] [--model test]
                                 [--keep DIR]

Latency and CPU time on a shared two-core host move by a quarter from one run to the next
(`bench.serving_ab`'s rounds); callgrind counts the instructions executed, the same for the same code,
inputs and environment whatever else the machine does. Each checkout serves the same held-out
(user, moment) pairs (`bench.serving.held_out_requests`) in process, as `Recommender.recommend` does
for the API: twice untimed (the hourly retrieval sources of their hours computed, as in a service
that has run a while), then once with callgrind counting (`callgrind_control -i on`/`off`), so that
loading the artifact is not counted. What it does not count: the HTTP server, and time spent waiting
for memory (an instruction is an instruction). Prints a table; writes nothing unless `--keep DIR`,
which keeps each side's callgrind file there (`a.callgrind.out`, `b.callgrind.out`) for
`callgrind_annotate --inclusive=yes DIR/b.callgrind.out`: where the instructions go, by function. Needs
`valgrind`.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

TOTAL = re.compile(r"^totals:\s+(\d+)", re.MULTILINE)


def inner(models: Path, requests: int, model: str) -> None:
    """Run inside valgrind (instrumentation off at start): serve the requests, counted the third time."""
    from threadpoolctl import threadpool_limits

    from app.engine import Recommender
    from bench.serving import held_out_requests

    threadpool_limits(limits=1, user_api="blas")  # as the service does (app.main)
    engine = Recommender.load(models)
    users, times = held_out_requests(engine, requests)
    pairs = list(zip(users.tolist(), times.tolist(), strict=True))
    for _ in range(2):
        for user_id, t in pairs:
            engine.recommend(model, user_id, t, 5)
    toggle = ["callgrind_control", "-i"]
    subprocess.run([*toggle, "on", str(os.getpid())], check=True, capture_output=True)
    for user_id, t in pairs:
        engine.recommend(model, user_id, t, 5)
    subprocess.run([*toggle, "off", str(os.getpid())], check=True, capture_output=True)


def count(checkout: Path, models: Path, requests: int, model: str, out: Path | None = None) -> int:
    """Instructions the checkout's `recommend` executed for the requests (callgrind's total); the
    callgrind file written to `out` (default: a temporary directory)."""
    out = out if out is not None else Path(tempfile.mkdtemp()) / "callgrind.out"
    cmd = ["valgrind", "--tool=callgrind", "--instr-atstart=no", f"--callgrind-out-file={out}",
           sys.executable, str(Path(__file__).resolve()), "--inner", "--models", str(models),
           "--requests", str(requests), "--model", model]
    # this file runs as a script, the checkout's `app` and `bench.serving` from PYTHONPATH: a checkout of
    # a commit before this file is measured as well
    env = {**os.environ, "PYTHONPATH": str(checkout)}
    done = subprocess.run(cmd, cwd=checkout, env=env, capture_output=True, text=True)
    if done.returncode != 0:
        sys.exit(f"error: {checkout}: valgrind run failed:\n{done.stderr[-2000:]}")
    match = TOTAL.search(out.read_text())
    if match is None:
        sys.exit(f"error: {out}: no callgrind totals line")
    return int(match.group(1))


def main() -> None:
    ap = argparse.ArgumentParser(prog="python -m bench.instructions")
    ap.add_argument("--models", type=Path, required=True)
    ap.add_argument("--a", type=Path, help="a checkout (a `git worktree` of another commit, say)")
    ap.add_argument("--b", type=Path, default=Path.cwd(), help="a checkout (default: this one)")
    ap.add_argument("--requests", type=int, default=300)
    ap.add_argument("--model", default="test")
    ap.add_argument("--keep", type=Path, help="keep the callgrind files in this directory")
    ap.add_argument("--inner", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.inner:
        inner(args.models, args.requests, args.model)
        return
    if shutil.which("valgrind") is None:
        sys.exit("error: valgrind not found: apt-get install valgrind")
    sides = [("a", args.a), ("b", args.b)] if args.a is not None else [("b", args.b)]
    if args.keep is not None:
        args.keep.mkdir(parents=True, exist_ok=True)
    counts = {name: count(path.resolve(), args.models.resolve(), args.requests, args.model,
                          None if args.keep is None else args.keep.resolve() / f"{name}.callgrind.out")
              for name, path in sides}
    print(f"`python -m bench.instructions --models {args.models}"
          + (f" --a {args.a} --b {args.b}" if args.a is not None else "")
          + f" --requests {args.requests} --model {args.model}"
          + (f" --keep {args.keep}" if args.keep is not None else "") + "`\n")
    print("| side | checkout | instructions per request (millions) |")
    print("|---|---|---|")
    for name, path in sides:
        print(f"| {name} | {path} | {counts[name] / args.requests / 1e6:.2f} |")
    if "a" in counts:
        print(f"\nb / a: {counts['b'] / counts['a']:.3f}")


if __name__ == "__main__":
    main()
