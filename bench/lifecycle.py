"""The model lifecycle's goals, measured: swaps under load, refused candidates, weeks of daily retraining.

    python -m bench.lifecycle swap --db URL --models DIR [--duration 60] [--every 15] [--workers 2]
    python -m bench.lifecycle simulate --db URL --models DIR --world PATH [--days 28] [--users-per-day 800]
    python -m bench.lifecycle daily --db URL --models DIR --world PATH --days 2

`swap` serves two copies of one trained version under a closed-loop load of 8 concurrent clients and
flips `models/current` between them every `--every` seconds; then points it at broken candidates
(truncated file, wrong schema, missing file). Each request's time, latency, status and serving version
are recorded, so latency during a swap (from the flip until every worker answers with the new version)
is compared with latency outside it in the same run. `simulate` runs the world forward on two copies of
the database and artifacts — one service retrained every day by `training.retrain`, one never — with the
same users at the same moments, and compares the weeks (`--report-only` writes the report again from
the arms a finished run left in `--work`). Results are appended to docs/lifecycle.md.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import pickle
import shutil
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

import httpx
import numpy as np

from app.artifacts import MANIFEST, set_current
from app.config import get_settings
from app.db import make_engine, masked
from app.engine import Recommender
from bench.live_state import _service, append_section, copy_database, drop_database
from bench.serving import stop, tree_rss_mb

OUT = Path(__file__).resolve().parent.parent / "docs" / "lifecycle.md"


def append(title: str, body: list[str]) -> None:
    append_section(OUT, "bench.lifecycle", "Model lifecycle", title, body)


def _copy_version(models: Path, source: Path, name: str) -> Path:
    dst = models / name
    shutil.copytree(source, dst)
    manifest = json.loads((dst / MANIFEST).read_text())
    (dst / MANIFEST).write_text(json.dumps({**manifest, "version": name}))
    return dst


# ------------------------------------------------------------------ swap under load
def _settle(port: int, version: str, timeout: float = 180.0, streak: int = 20) -> None:
    """Wait until `streak` answers in a row come from `version` (whichever worker answers)."""
    deadline, run = time.monotonic() + timeout, 0
    while run < streak and time.monotonic() < deadline:
        ok = httpx.get(f"http://127.0.0.1:{port}/model", timeout=10).json()["version"] == version
        run = run + 1 if ok else 0
        time.sleep(0.05)


def _refusal_seen(port: int, name: str, timeout: float = 60.0) -> dict:
    """/ready once it names the refusal of `name` (or the last answer when the timeout passes)."""
    deadline = time.monotonic() + timeout
    while True:
        ready = httpx.get(f"http://127.0.0.1:{port}/ready", timeout=10).json()
        if name in ready["models"]["refused"] or time.monotonic() > deadline:
            return ready
        time.sleep(0.2)


def _went_back(records: list[tuple], flips: list[tuple[float, str]]) -> int:
    """Answers carrying the old version after the same client already had an answer from the new one
    (between one flip and the next); clients share the connection pool, so a client's requests reach
    any worker, as a user's would."""
    bounds = [at for at, _ in flips] + [float("inf")]
    back = 0
    for client in {r[4] for r in records}:
        mine = sorted((r for r in records if r[4] == client and r[3]), key=lambda r: r[0])
        for (at, name), nxt in zip(flips, bounds[1:], strict=True):
            seen_new = False
            for r in mine:
                if at <= r[0] < nxt:
                    seen_new |= r[3] == name
                    back += int(seen_new and r[3] != name)
    return back


async def _load(port: int, pairs: list[tuple[int, str]], seconds: float, concurrency: int) -> list[tuple]:
    """Closed loop: each client sends its next request when the previous one is answered."""
    records: list[tuple] = []  # (start, latency s, status, version, client)
    deadline = time.monotonic() + seconds
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", limits=limits, timeout=10) as client:
        async def worker(i: int) -> None:
            k = i
            while time.monotonic() < deadline:
                user, moment = pairs[k % len(pairs)]
                k += concurrency
                started = time.monotonic()
                try:
                    r = await client.get("/post/recommendations/", params={"id": user, "time": moment, "limit": 5})
                    version = r.json().get("model_version") if r.status_code == 200 else None
                    records.append((started, time.monotonic() - started, r.status_code, version, i))
                except httpx.HTTPError:
                    records.append((started, time.monotonic() - started, 0, None, i))

        await asyncio.gather(*(worker(i) for i in range(concurrency)))
    return records


def cmd_swap(args) -> None:
    work = Path(args.work)
    shutil.rmtree(work, ignore_errors=True)
    models = work / "models"
    models.mkdir(parents=True)
    source = Path(args.models) / (Path(args.models) / "current").read_text().strip()
    for name in ("va", "vb"):
        _copy_version(models, source, name)
    set_current(models, "va")
    recommender = Recommender.load(models)
    split = recommender.manifest.data["split"]
    rng = np.random.default_rng(0)
    users = rng.choice(recommender.state.snapshot.user_ids, size=1000)
    times = rng.integers(int(split["test_start"]), int(split["end"]), size=1000)
    pairs = [(int(u), datetime.fromtimestamp(int(t), tz=UTC).strftime("%Y-%m-%dT%H:%M:%S"))
             for u, t in zip(users, times, strict=True)]
    del recommender
    port = 8031
    proc, _ = _service(args.db, models, port, workers=args.workers, model_watch_seconds=1)
    try:
        asyncio.run(_load(port, pairs, 10, 8))  # warm: memory that serving itself takes is not the swap's
        rss_before = tree_rss_mb(proc.pid)
        flips: list[tuple[float, str]] = []
        peak = [rss_before]

        async def run() -> list[tuple]:
            async def flipper() -> None:
                names = ["vb", "va"]
                for i in range(int(args.duration // args.every) - 1):
                    await asyncio.sleep(args.every)
                    set_current(models, names[i % 2], how="bench")
                    flips.append((time.monotonic(), names[i % 2]))

            async def sampler() -> None:
                end = time.monotonic() + args.duration
                while time.monotonic() < end:
                    peak[0] = max(peak[0], tree_rss_mb(proc.pid))
                    await asyncio.sleep(0.2)

            results = await asyncio.gather(_load(port, pairs, args.duration, 8), flipper(), sampler())
            return results[0]

        records = asyncio.run(run())
        rss_after = tree_rss_mb(proc.pid)
        # the last flip's swap may still be under way (the workers load one at a time, then switch together)
        _settle(port, flips[-1][1] if flips else "va")
        # broken candidates: the old version must keep serving, visibly refusing them
        refusals = []
        for damage in ("truncated", "schema", "missing"):
            bad = _copy_version(models, source, f"vbad-{damage}")
            if damage == "truncated":
                (bad / "state.npz").write_bytes((bad / "state.npz").read_bytes()[:4096])
            elif damage == "schema":
                manifest = json.loads((bad / MANIFEST).read_text())
                (bad / MANIFEST).write_text(json.dumps({**manifest, "schema": 99}))
            else:
                (bad / "control.cbm").unlink()
            serving = httpx.get(f"http://127.0.0.1:{port}/model", timeout=10).json()["version"]
            set_current(models, bad.name, how="bench")
            during = asyncio.run(_load(port, pairs, 6, 8))
            ready = _refusal_seen(port, bad.name)
            metrics = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=10).text
            refusals.append({"damage": damage, "requests": len(during),
                             "failed": sum(1 for r in during if r[2] != 200),
                             "served_by": sorted({r[3] for r in during if r[3]}), "was": serving,
                             "reason": ready["models"]["refused"].get(bad.name, "(not yet seen by this worker)"),
                             "metric": next((line for line in metrics.splitlines()
                                             if line.startswith("model_refusals_total")), "")})
            set_current(models, serving, how="bench")
    finally:
        stop(proc)
    # windows: from each flip until the last answer still carrying the old version (any worker)
    starts = np.array([r[0] for r in records])
    lat = np.array([r[1] for r in records]) * 1000
    ok = np.array([r[2] == 200 for r in records])
    versions = np.array([r[3] or "" for r in records])
    ends = starts + lat / 1000
    in_swap = np.zeros(len(records), bool)
    bounds = [at for at, _ in flips] + [float("inf")]
    for (at, name), nxt in zip(flips, bounds[1:], strict=True):
        old = (starts >= at) & (starts < nxt) & (versions != name) & (versions != "")
        until = ends[old].max() if old.any() else at
        in_swap |= (starts >= at) & (starts <= until)
    went_back = _went_back(records, flips)
    p99_in = float(np.percentile(lat[in_swap], 99)) if in_swap.any() else float("nan")
    p99_out = float(np.percentile(lat[~in_swap], 99))
    body = [f"Artifacts `{source.name}` copied as versions va and vb; {args.workers} workers; 8 concurrent clients "
            f"for {args.duration} s, `models/current` flipped every {args.every} s ({len(flips)} swaps); held-out "
            "users and times, limit=5.", "",
            "| requests | failed | p50 ms | p99 ms outside swaps | p99 ms during swaps (requests) | ratio |",
            "|---|---|---|---|---|---|",
            f"| {len(records)} | {int((~ok).sum())} | {np.percentile(lat, 50):.1f} | {p99_out:.1f} | "
            f"{p99_in:.1f} ({int(in_swap.sum())}) | {p99_in / p99_out:.2f} |", "",
            f"Every answer came from va or vb: {set(v for v in versions if v) <= {'va', 'vb'}}. Answers that went "
            f"back to the old version after the same client had seen the new one: {went_back}. Service RSS (all "
            f"workers): {rss_before:.0f} MB before (after 10 s of the same load), peak {peak[0]:.0f} MB during the "
            f"swaps ({peak[0] / rss_before:.2f}x), {rss_after:.0f} MB after.", "",
            "Broken candidates (6 s of the same load each):", "",
            "| damage | requests | failed | served by | refusal seen in /ready | /metrics |",
            "|---|---|---|---|---|---|"]
    for r in refusals:
        body.append(f"| {r['damage']} | {r['requests']} | {r['failed']} | {', '.join(r['served_by'])} | "
                    f"{r['reason'][:90]} | `{r['metric']}` |")
    append("Swaps under load", body)


# ------------------------------------------------------------------ weeks of retraining
def _simulate_arm(args, mode: str) -> None:
    """One arm of the comparison (never or daily retrained), saved to `--work`/<mode>.pkl."""
    from training.retrain import retrain
    from training.simulate import SimConfig, simulate
    from training.train import TrainConfig
    from training.world.model import World

    settings = get_settings()
    world = World.load(args.world)
    db = copy_database(args.db, f"life-{mode}")
    models = Path(args.work) / mode
    shutil.rmtree(models, ignore_errors=True)
    models.mkdir(parents=True)
    source = Path(args.models) / (Path(args.models) / "current").read_text().strip()
    shutil.copytree(source, models / source.name)
    set_current(models, source.name, how="bench")
    port = 8032 if mode == "never" else 8033
    proc, _ = _service(db, models, port, model_watch_seconds=1)
    timings: list[float] = []

    def retrainer():
        started = time.perf_counter()
        config = TrainConfig(max_train_rows=args.max_train_rows, max_val_rows=args.max_train_rows // 2)
        result = retrain(db, models, settings.cache_dir, settings.embedding_model, keep=4, world=args.world,
                         requests=args.requests, config=config)
        timings.append(time.perf_counter() - started)
        return result

    config = SimConfig(days=args.days, users_per_day=args.users_per_day, seed=args.seed,
                       retrain_every=args.retrain_every if mode == "daily" else 0)
    try:
        engine = make_engine(db)
        with httpx.Client(base_url=f"http://127.0.0.1:{port}") as client:
            summary = simulate(engine, client, world, config, retrainer if mode == "daily" else None)
        engine.dispose()
    finally:
        stop(proc)
        drop_database(db)
    with open(Path(args.work) / f"{mode}.pkl", "wb") as fh:
        pickle.dump((summary, timings), fh)


def cmd_simulate(args) -> None:
    """Both arms at once, each in its own process (same users, same moments, own database copy)."""
    from training.metrics import bootstrap_ci, difference_ci
    from training.simulate import day_table

    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    if args.arm:
        _simulate_arm(args, args.arm)
        return
    if not args.report_only:
        arms = [subprocess.Popen([sys.executable, "-m", "bench.lifecycle", *sys.argv[1:], "--arm", mode])
                for mode in ("never", "daily")]
        if any(p.wait() != 0 for p in arms):
            raise SystemExit("an arm of the simulation failed")
    results = {}
    for mode in ("never", "daily"):
        if not (work / f"{mode}.pkl").is_file():
            raise SystemExit(f"{work / f'{mode}.pkl'} missing: no finished run of that arm in --work {work}")
        with open(work / f"{mode}.pkl", "rb") as fh:
            results[mode] = pickle.load(fh)
    never, daily = results["never"][0], results["daily"][0]
    timings = results["daily"][1]

    def week(summary, w: int) -> np.ndarray:
        return np.concatenate(summary.expected[7 * w:7 * w + 7])

    last = args.days // 7 - 1
    diff = week(daily, last) - week(never, last)  # the same users at the same moments
    lo, hi = bootstrap_ci(diff, n_boot=2000)
    rows = ["| week | days | expected hitrate@5, never retrained | retrained | oracle |",
            "|---|---|---|---|---|"]
    for w in range(args.days // 7):
        oracle = np.mean([d["oracle_expected"] for d in daily.days[7 * w:7 * w + 7]])
        rows.append(f"| {w + 1} | {7 * w + 1}-{7 * w + 7} | {week(never, w).mean():.4f} | "
                    f"{week(daily, w).mean():.4f} | {oracle:.4f} |")
    decisions = [d["retrain"]["decision"] for d in daily.days if d.get("retrain")]
    # the last week against the first: other requests (most users come back), each week resampled on its own
    slips = {name: (week(arm, last).mean() - week(arm, 0).mean(), difference_ci(week(arm, last), week(arm, 0)))
             for name, arm in (("retrained", daily), ("never retrained", never))}
    body = [f"Demo world behind `{masked(args.db)}`, starting from artifacts `{Path(args.models).name}`; "
            f"{args.days} days, "
            f"{args.users_per_day} users a day, seed {args.seed}; both services follow their own copy of the database; "
            f"the retrained one runs `retrain` every {args.retrain_every} day(s) on {args.max_train_rows:,} "
            f"training rows ({args.requests} held-out requests for the gate).",
            "", *rows, "",
            f"Week {last + 1}, retrained minus never, paired by request: {diff.mean():+.4f} "
            f"[95% CI {lo:+.4f}, {hi:+.4f}]. Week {last + 1} minus week 1 (each week's requests resampled on "
            f"their own): " + "; ".join(f"{name} {d:+.4f} [95% CI {ci[0]:+.4f}, {ci[1]:+.4f}]"
                                        for name, (d, ci) in slips.items()) + ". "
            f"Retrainings: {len(decisions)} ({decisions.count('promoted')} promoted, "
            f"{decisions.count('refused')} refused by the gate); seconds each (retrain + evaluation of both "
            f"versions): median {np.median(timings):.0f}, max {np.max(timings):.0f}.", "",
            "<details><summary>Per day, retrained</summary>", "", day_table(daily), "", "</details>", "",
            "<details><summary>Per day, never retrained</summary>", "", day_table(never), "", "</details>"]
    every = "daily" if args.retrain_every == 1 else f"every {args.retrain_every} days"
    append(f"Weeks of retraining {every}", body)


def cmd_daily(args) -> None:
    """The daily job as a scheduler runs it, on a copy of the database with the service serving: each
    day the simulated users use the feed for a day, then `python -m training retrain` runs as the cron line
    runs it; its output, exit code and the version the service serves afterwards are recorded."""
    db = copy_database(args.db, "daily-job")
    models = Path(args.work) / "models"
    shutil.rmtree(models, ignore_errors=True)
    models.mkdir(parents=True)
    source = Path(args.models) / (Path(args.models) / "current").read_text().strip()
    shutil.copytree(source, models / source.name)
    set_current(models, source.name, how="bench")
    env = {**os.environ, "DATABASE_URL": db, "MODEL_DIR": str(models), "WORLD_PATH": str(args.world)}
    proc, _ = _service(db, models, 8034, model_watch_seconds=1)
    body = [f"Demo world behind `{masked(args.db)}` (a copy), artifacts `{source.name}`; each day "
            f"`python -m training simulate --days 1 --users-per-day {args.users_per_day}` against the serving "
            f"service, then the daily job exactly as `deploy/retrain.cron` runs it "
            f"(`python -m training retrain --keep 5`, here with `--requests {args.requests}`).", ""]
    try:
        for day in range(1, args.days + 1):
            sim = subprocess.run([sys.executable, "-m", "training", "simulate", "--url", "http://127.0.0.1:8034",
                                  "--days", "1", "--users-per-day", str(args.users_per_day), "--seed",
                                  str(args.seed + day)], env=env, capture_output=True, text=True)
            if sim.returncode != 0:
                raise RuntimeError(f"simulate failed: {sim.stderr[-2000:]}")
            started = time.perf_counter()
            job = subprocess.run([sys.executable, "-m", "training", "retrain", "--keep", "5", "--requests",
                                  str(args.requests)], env=env, capture_output=True, text=True)
            seconds = time.perf_counter() - started
            time.sleep(3)  # the workers look at models/current every second
            served = httpx.get("http://127.0.0.1:8034/model", timeout=10).json()
            log = [line for line in job.stderr.splitlines() if "| INFO" in line or "| WARNING" in line
                   or "error" in line.lower()]
            body += [f"### Day {day}", "", f"Exit code **{job.returncode}** after {seconds:.0f} s; the service "
                     f"then serves `{served.get('version')}`.", "", "stdout:", "", "```", job.stdout.strip(), "```",
                     "", "stderr (the job's log, INFO and above):", "", "```", *log, "```", ""]
    finally:
        stop(proc)
        drop_database(db)
    append("The daily job, day after day", body)


def main() -> None:
    ap = argparse.ArgumentParser(prog="python -m bench.lifecycle")
    sub = ap.add_subparsers(dest="command", required=True)
    for name in ("swap", "simulate", "daily"):
        p = sub.add_parser(name)
        p.add_argument("--db", required=True)
        p.add_argument("--models", type=Path, required=True)
        p.add_argument("--work", default=f"/tmp/bench-lifecycle-{name}")
        if name == "swap":
            p.add_argument("--duration", type=float, default=60)
            p.add_argument("--every", type=float, default=15)
            p.add_argument("--workers", type=int, default=2)
        else:
            p.add_argument("--world", type=Path, required=True)
            p.add_argument("--arm", choices=("never", "daily"), help=argparse.SUPPRESS)
            p.add_argument("--days", type=int, default=28)
            p.add_argument("--users-per-day", type=int, default=800)
            p.add_argument("--requests", type=int, default=1000)
            p.add_argument("--seed", type=int, default=3)
            p.add_argument("--retrain-every", type=int, default=1, help="days between retrainings (simulate)")
            p.add_argument("--max-train-rows", type=int, default=400_000, help="training rows per retraining")
            if name == "simulate":
                p.add_argument("--report-only", action="store_true",
                               help="write the report from the arms a finished run left in --work")
    args = ap.parse_args()
    {"swap": cmd_swap, "simulate": cmd_simulate, "daily": cmd_daily}[args.command](args)


if __name__ == "__main__":
    main()
