"""The live state's goals, measured: simulation frozen vs live, freshness, apply rate, request path, memory.

    python -m bench.live_state simulate --db URL --models DIR --world PATH [--days 10] [--users-per-day 800]
    python -m bench.live_state ablate --db URL --models DIR --world PATH [--sim-db URL] [--ablate-days 1,10]
    python -m bench.live_state freshness --db URL --models DIR [--trials 200]
    python -m bench.live_state apply --db URL --models DIR [--days 1]
    python -m bench.live_state serving --db URL --models DIR [--duration 30] [--workers 2]
    python -m bench.live_state compaction --models DIR [--days 3] [--requests 3000]
    python -m bench.live_state encoder
    python -m bench.live_state memory --models DIR

Each command works on a copy of the database (a file copy on SQLite, `CREATE DATABASE ... TEMPLATE` on
PostgreSQL), starts the services it compares as their own processes on loopback, and appends its
result to docs/live_state.md with the command and the machine. Events "replayed" below are the
feed's own latest events, shifted forward in time by whole weeks: the same users, posts, hours and
like rates as the real feed, at the real feed's rate. `ablate` runs the live simulation (or takes a
database it ran on) and ranks the requests of chosen days again offline, each part of the state as of
the snapshot or live in turn: what the decline of the live hit rate over the days comes from.
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path

import httpx
import numpy as np
import pandas as pd
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

from app import child_process
from app import columns as c
from app.config import PROJECT_ROOT, Settings
from app.db import make_engine, masked
from app.engine import Recommender
from app.feed_events import EventBatch
from app.follower import catch_up, return_memory
from app.tables import feed_data
from app.user_state import LIKE
from bench.serving import LUA, load, start, stop, tree_rss_mb
from training.bulk import epoch_to_datetime, write_frame

OUT = PROJECT_ROOT / "docs" / "live_state.md"
WEEK = 7 * 86_400
TRICKLE_SHIFT = 86_400  # the trickle writes the applied day again, this many seconds later


# ------------------------------------------------------------------ databases
def copy_database(url: str, name: str) -> str:
    """A throw-away copy of the database; returns its URL."""
    u = make_url(url)
    if u.get_backend_name() == "sqlite":
        src = Path(u.database)
        engine = create_engine(url)
        with engine.connect() as conn:  # fold the write-ahead log into the file before copying it
            conn.exec_driver_sql("PRAGMA wal_checkpoint(TRUNCATE)")
        engine.dispose()
        dst = src.with_name(f"{src.stem}-{name}.db")
        shutil.copy(src, dst)
        return f"sqlite:///{dst}"
    copy = f"{u.database}_{name}_{uuid.uuid4().hex[:6]}"
    admin = create_engine(u.set(database="postgres"), isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{copy}" TEMPLATE "{u.database}"'))
    admin.dispose()
    return u.set(database=copy).render_as_string(hide_password=False)


def drop_database(url: str) -> None:
    u = make_url(url)
    if u.get_backend_name() == "sqlite":
        for suffix in ("", "-wal", "-shm"):
            Path(u.database + suffix).unlink(missing_ok=True)
        return
    admin = create_engine(u.set(database="postgres"), isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'DROP DATABASE IF EXISTS "{u.database}" WITH (FORCE)'))
    admin.dispose()


def replayed_events(recommender: Recommender, days: float, shift_weeks: int) -> pd.DataFrame:
    """The last `days` of the snapshot's events, moved forward by whole weeks (feed_data rows)."""
    snap = recommender.state.snapshot
    ev = snap.events
    lo = snap.events_until - int(days * 86_400)
    keep = ev.ts >= lo
    rows = np.repeat(np.arange(len(snap.user_ids)), np.diff(ev.indptr))[keep]
    order = np.argsort(ev.ts[keep], kind="stable")
    is_like = ev.kind[keep][order] == LIKE
    ts = ev.ts[keep][order] + shift_weeks * WEEK
    target = pd.array(ev.target[keep][order].astype(np.int64), dtype="Int64")
    target[is_like] = pd.NA
    return pd.DataFrame({  # "ts" (seconds) rides along; write_frame writes only the table's columns
        c.TIMESTAMP: epoch_to_datetime(ts).to_numpy(), "ts": ts,
        c.USER_ID: snap.user_ids[rows[order]], c.POST_ID: snap.post_ids[ev.post[keep][order]],
        c.ACTION: np.where(is_like, c.LIKE, c.VIEW), c.TARGET: target,
    })


def insert(url: str, frame: pd.DataFrame) -> None:
    engine = make_engine(url)
    with engine.begin() as conn:
        write_frame(conn, feed_data, frame)
    engine.dispose()


# ------------------------------------------------------------------ report
def _machine() -> str:
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor())
    load = " ".join(f"{x:.2f}" for x in os.getloadavg())
    return f"{os.cpu_count()} cores ({cpu}), Python {platform.python_version()}; load average {load} when written"


def append_section(out: Path, module: str, heading: str, title: str, body: list[str]) -> None:
    """Append a dated section with the command that produced it and the machine to a measurements doc
    (created with `heading` when new), and print it."""
    command = " ".join([f"python -m {module}", *sys.argv[1:]])
    text = "\n".join([f"## {title}, {datetime.now(UTC).strftime('%Y-%m-%d %H:%M UTC')}", "", f"Command: `{command}`  ",
                      f"Machine: {_machine()}.", "", *body, ""])
    out.parent.mkdir(parents=True, exist_ok=True)
    with open(out, "a") as fh:
        if fh.tell() == 0:
            fh.write(f"# {heading}: measurements\n\nWritten by `{module.replace('.', '/')}.py`; newest last.\n\n")
        fh.write(text + "\n")
    print(text)


def append(title: str, body: list[str]) -> None:
    append_section(OUT, "bench.live_state", "Live state", title, body)


def _in_batches(batch: EventBatch, size: int) -> Iterator[EventBatch]:
    """`batch` cut into consecutive batches of at most `size` events, as the follower reads them."""
    for i in range(0, len(batch), size):
        yield batch.take(np.arange(i, min(i + size, len(batch))))


def _pct(values: list[float]) -> dict[str, float]:
    p = np.percentile(values, [50, 90, 99])
    return {"p50": round(float(p[0]), 3), "p90": round(float(p[1]), 3), "p99": round(float(p[2]), 3),
            "max": round(float(np.max(values)), 3)}


def _service(db: str, models: Path, port: int, workers: int = 1, **env) -> tuple[subprocess.Popen, float]:
    environ = {**os.environ, "DATABASE_URL": db, "MODEL_DIR": str(models), "LOG_QUEUE_SIZE": "100000",
               **{k.upper(): str(v) for k, v in env.items()}}
    proc, started = start([sys.executable, "-m", "app", "--port", str(port), "--workers", str(workers)], environ,
                          port)
    deadline = time.monotonic() + 600
    while httpx.get(f"http://127.0.0.1:{port}/ready", timeout=5).status_code != 200:  # caught up
        if time.monotonic() > deadline:
            stop(proc)
            raise RuntimeError("service did not become ready")
        time.sleep(0.2)
    return proc, started


# ------------------------------------------------------------------ simulate
def cmd_simulate(args) -> None:
    from training.metrics import bootstrap_ci, difference_ci
    from training.simulate import SimConfig, day_table, simulate
    from training.world.model import World

    world = World.load(args.world)
    config = SimConfig(days=args.days, users_per_day=args.users_per_day, seed=args.seed, max_rps=args.max_rps)
    results = {}
    live_env = dict(kv.split("=", 1) for kv in args.live_setting)
    for mode, env in (("frozen", {"state_follow": "false", "exclude_viewed_hours": "0", "exclude_last_views": "0"}),
                      ("live", {"state_follow": "true", **live_env})):
        db = copy_database(args.db, mode)
        proc, _ = _service(db, args.models, 8021, **env)
        try:
            engine = make_engine(db)
            with httpx.Client(base_url="http://127.0.0.1:8021") as client:
                results[mode] = simulate(engine, client, world, config)
            engine.dispose()
        finally:
            stop(proc)
            drop_database(db)
    live, frozen = results["live"], results["frozen"]
    last = len(live.days) - 1
    diff = np.array(live.expected[last]) - np.array(frozen.expected[last])  # same users, same moments
    lo, hi = bootstrap_ci(diff, n_boot=2000)
    # day 10 against day 1: other users at other moments (about 8 in 10 of day 10's came back), each
    # day's requests resampled on their own
    slip = np.mean(live.expected[last]) - np.mean(live.expected[0])
    slip_lo, slip_hi = difference_ci(live.expected[last], live.expected[0])
    body = [f"Demo world behind `{masked(args.db)}` (`{args.world}`), artifacts `{args.models.name}`; "
            f"{args.days} simulated "
            f"days, {args.users_per_day} users a day, seed {args.seed}. Each service on its own copy of the database; "
            "the same users open the feed at the same moments in both runs.", "",
            "**Frozen** (`STATE_FOLLOW=false EXCLUDE_VIEWED_HOURS=0 EXCLUDE_LAST_VIEWS=0`: the snapshot only, as "
            "before the live state):", "", day_table(frozen), "",
            f"**Live** (following the database; {' '.join(args.live_setting) or 'default settings'}):",
            "", day_table(live), "",
            f"Served posts over all days — frozen: liked before t {frozen.staleness['liked_before']}, viewed in "
            f"the previous 72 h {frozen.staleness['viewed_recently']}, on the previous screen "
            f"{frozen.staleness['repeated']}; live: {live.staleness['liked_before']}, "
            f"{live.staleness['viewed_recently']}, {live.staleness['repeated']}.", "",
            f"Expected hit rate (all groups), live: day 1 {live.days[0]['expected_hitrate']}, day {last + 1} "
            f"{live.days[last]['expected_hitrate']}; frozen day {last + 1} {frozen.days[last]['expected_hitrate']}. "
            f"Live minus frozen on day {last + 1}, paired by request: {diff.mean():+.4f} "
            f"[95% CI {lo:+.4f}, {hi:+.4f}]. Live, day {last + 1} minus day 1 (other requests, each day "
            f"resampled on its own): {slip:+.4f} [95% CI {slip_lo:+.4f}, {slip_hi:+.4f}]; the oracle's "
            f"{live.days[last]['oracle_expected'] - live.days[0]['oracle_expected']:+.4f}, and under the "
            f"service's exclusions (the true best posts the live service may show: not liked, not viewed in "
            f"its window, not among the last views it leaves out) "
            f"{live.days[last]['oracle_same_rules'] - live.days[0]['oracle_same_rules']:+.4f} "
            f"({live.days[0]['oracle_same_rules']} on day 1, {live.days[last]['oracle_same_rules']} on day "
            f"{last + 1}). Requests that waited for the live state to apply the user's own earlier events: "
            f"{live.waits}."]
    append("Simulation, frozen vs live", body)


# ------------------------------------------------------------------ ablation
# Each variant ranks a request of the live simulation again from a mix of two states: L, the live state
# holding every event the simulation wrote (read as of the request), and S, the artifact's snapshot
# alone. Unless a variant says otherwise, every variant hides the same posts (the live user's liked and
# recently viewed ones) and is scored with the world's probabilities at the request's moment.
ABLATION_VARIANTS = {
    "live": "user L, post counters L: what the live service served",
    "posts_at_snapshot": "user L, post counters S",
    "user_at_snapshot": "user S, post counters L",
    "live_clock_day1": "user L, post counters L, the user's days since first and last view as on day 1 "
                       "(counted from the snapshot's last view)",
    "depleted_day1": "user S, post counters S, the whole request on day 1's clock (same hour, the number of "
                     "days earlier): the day-1 service, but hiding what the user liked and viewed in the simulation",
    "as_if_day1": "the same users served by the day-1 service as if the simulation had not happened: user S, "
                  "post counters S, the snapshot's exclusions, day 1's clock, scored on day 1's clock",
    "posts_rate_at_snapshot": "user L, post counters L but the smoothed like rate `p_like_rate` from S",
    "posts_counts_at_snapshot": "user L, post counters L but the counts `p_views`, `p_likes` from S",
    "popular_live": "popularity (liked views) from L",
    "popular_snapshot": "popularity (liked views) from S",
}


def _screen(model: str, user_rec: Recommender, post_rec: Recommender, row: int, ts: int, k: int,
            hide, shift_first: int = 0, shift_last: int = 0, popular: bool = False,
            columns_from: tuple[Recommender, list[int]] | None = None) -> np.ndarray:
    """Post ids of one screen ranked with the user side of `user_rec` and the post side of `post_rec`;
    `hide` (a UserAt) says what the screen leaves out. `shift_first` and `shift_last` move the user's
    first and last view that many seconds forward (the time features only); `columns_from` takes those
    POST_COUNTERS columns from another recommender's state."""
    import dataclasses

    from app.engine import POPULAR

    user, _ = user_rec.state.at(row, ts)
    _, posts = post_rec.state.at(row, ts)
    if columns_from is not None:
        other, cols = columns_from
        counters = posts.counters.copy()
        counters[:, cols] = other.state.at(row, ts)[1].counters[:, cols]
        posts = dataclasses.replace(posts, counters=counters)
    if shift_first or shift_last:
        v = user.view
        moved = dataclasses.replace(v, last_view=np.where(v.last_view >= 0, v.last_view + shift_last, -1),
                                    first_view=np.where(v.first_view >= 0, v.first_view + shift_first, -1))
        user = dataclasses.replace(user, view=moved)
    n = len(posts.topic)
    ranker = POPULAR if popular else post_rec.ranker_for(model, user)
    if ranker == POPULAR:
        rows, scores = np.arange(n), post_rec.popular_scores(ts)[:n]
    else:
        if post_rec.retrieval == "candidates":
            rows = post_rec.retriever.candidates(ranker, user.view, ts, post_rec.state.timeline,
                                                 post_rec.state.catalogue.frame)
            rows = rows[rows < n]
        else:
            rows = np.arange(n)
        scores = post_rec.model_scores(ranker, user, posts, ts, rows)
    scores = np.where(post_rec.eligible(rows, hide, ts, n), scores, -np.inf)
    keep = post_rec._select(rows, scores, posts, ts, k, 0.0)
    return post_rec.state.catalogue.frame.ids[rows[keep]]


def cmd_ablate(args) -> None:
    from app.ab import CONTROL, exp_group
    from app.engine import ScreenPolicy
    from app.features import USER_NUM
    from training import data
    from training.metrics import bootstrap_ci, expected_hit
    from training.simulate import DAY, SimConfig, day_requests, simulate
    from training.world.model import World

    world = World.load(args.world)
    settings = Settings()
    base = make_engine(args.db)
    with base.connect() as conn:
        _, end = data.data_range(conn)
    base.dispose()
    first_day = -(-end // DAY) * DAY  # as training.simulate: the next midnight after the data
    sim_db, made, sim_days = args.sim_db, False, None
    if sim_db is None:  # run the live simulation, as `simulate` does for its live service
        sim_db, made = copy_database(args.db, f"ablate{args.port}"), True
        proc, _ = _service(sim_db, args.models, args.port, state_follow="true",
                           **dict(kv.split("=", 1) for kv in args.live_setting))
        try:
            engine = make_engine(sim_db)
            with httpx.Client(base_url=f"http://127.0.0.1:{args.port}") as client:
                summary = simulate(engine, client, world, SimConfig(days=args.days, users_per_day=args.users_per_day,
                                                                    seed=args.seed, max_rps=args.max_rps))
            engine.dispose()
        finally:
            stop(proc)
        sim_days = [d["expected_hitrate"] for d in summary.days]
        print("live simulation:", sim_days, "kept at", sim_db, flush=True)
    views = USER_NUM.index("u_views")
    chosen = list(ABLATION_VARIANTS) if args.variants == "all" else args.variants.split(",")
    unknown = set(chosen) - set(ABLATION_VARIANTS)
    if unknown:
        sys.exit(f"error: unknown variants {sorted(unknown)}; choose from {list(ABLATION_VARIANTS)}")
    names = [*chosen, "oracle"]
    try:
        def load_rec() -> Recommender:
            return Recommender.load(args.models, settings.exclude_viewed_hours, settings.exclude_last_views,
                                    ScreenPolicy.from_settings(settings))

        live, snap = load_rec(), load_rec()
        engine = make_engine(sim_db)
        catch_up(engine, live.state)
        engine.dispose()
        snap_rates = snap.state.at(-1, first_day)[1].counters[:, 2]
        p99 = float(np.percentile(snap_rates, 99))
        before = snap.state.counts_at(first_day)
        feed_rate = float(before[:, 1].sum() / max(before[:, 0].sum(), 1))
        counters: dict[int, tuple] = {}
        plan_rng = np.random.default_rng(args.seed)  # the simulation's plan: the same users at the same moments
        wanted = ({int(d) for d in args.ablate_days.split(",")} if args.ablate_days != "all"
                  else set(range(1, args.days + 1)))
        per_day: dict[int, dict[str, np.ndarray]] = {}
        returning: dict[int, np.ndarray] = {}
        for day in range(args.days):
            plan = day_requests(world, first_day + day * DAY, args.users_per_day, plan_rng)
            if day + 1 not in wanted:
                continue
            shift = day * DAY
            got: dict[str, list[float]] = {k: [] for k in names}
            rates: tuple[list, list] = ([], [])
            back: list[bool] = []
            for u, ts in zip(plan[c.USER_ID].to_numpy(), plan["ts"].to_numpy(), strict=True):
                u, ts = int(u), int(ts)
                row = live.state.user_row(u)
                group = exp_group(u, settings.ab_salt, settings.ab_control_percent)
                model = settings.ab_control_model if group == CONTROL else settings.ab_test_model
                hide, _ = live.state.at(row, ts)
                snap_user, _ = snap.state.at(row, ts - shift)
                last, snap_last = int(hide.view.last_view[0]), int(snap_user.view.last_view[0])
                back.append(bool(hide.view.num[0, views] > snap_user.view.num[0, views]))  # seen in the simulation
                day1 = ts - shift
                specs = {  # (user side, post side, moment ranked, what is hidden, options)
                    "live": (live, live, ts, hide, {}),
                    "posts_at_snapshot": (live, snap, ts, hide, {}),
                    "user_at_snapshot": (snap, live, ts, hide, {}),
                    "live_clock_day1": (live, live, ts, hide, {"shift_first": shift,
                                                               "shift_last": shift + snap_last - last}),
                    "depleted_day1": (snap, snap, day1, hide, {}),
                    "as_if_day1": (snap, snap, day1, snap_user, {}),
                    "posts_rate_at_snapshot": (live, live, ts, hide, {"columns_from": (snap, [2])}),
                    "posts_counts_at_snapshot": (live, live, ts, hide, {"columns_from": (snap, [0, 1])}),
                    "popular_live": (live, live, ts, hide, {"popular": True}),
                    "popular_snapshot": (live, snap, ts, hide, {"popular": True}),
                }
                for name in chosen:
                    user_rec, post_rec, at, hidden, options = specs[name]
                    ids = _screen(model, user_rec, post_rec, row, at, args.limit, hidden, **options)
                    got[name].append(expected_hit(world.like_probability(np.full(len(ids), u), ids, at)))
                    if name == "live":  # the served posts' smoothed like rate, live and as of the snapshot
                        served = live.state.post_rows(ids)
                        rates[0].append(live.state.at(-1, ts)[1].counters[served, 2])
                        rates[1].append(snap_rates[served])
                truth = world.all_posts_probability(u, ts)
                truth[world.post_index(live.state.post_ids[np.concatenate([hide.liked, hide.viewed])])] = 0.0
                got["oracle"].append(expected_hit(np.sort(truth)[-args.limit:]))
            per_day[day + 1] = {k: np.array(v) for k, v in got.items()}
            if rates[0]:
                lr, sr = np.concatenate(rates[0]), np.concatenate(rates[1])
                day_start = live.state.counts_at(first_day + day * DAY) - snap.state.counts_at(first_day)
                counters[day + 1] = (float(lr.mean()), float(sr.mean()), float((lr > p99).mean()),
                                     float((sr > p99).mean()), int(day_start[:, 0].sum()),
                                     float(day_start[:, 1].sum() / max(day_start[:, 0].sum(), 1)),
                                     int((day_start[:, 0] > 0).sum()))
            returning[day + 1] = np.array(back)
            print(day + 1, {k: round(float(np.mean(v)), 4) for k, v in got.items()}, "returning",
                  round(float(np.mean(back)), 3), flush=True)
    finally:
        if made and not args.keep:
            drop_database(sim_db)
    if not per_day:  # the simulation alone (`--ablate-days 0`): its figures, nothing re-ranked
        append("Live simulation", [f"The live simulation's expected hit rate per day (through the service"
                                   f"{'; ' + ' '.join(args.live_setting) if args.live_setting else ''}): {sim_days}."])
        return
    body = [f"Demo world `{args.world}`, artifacts `{args.models.name}`: the live simulation of {args.days} days "
            f"({args.users_per_day} users a day, seed {args.seed}; run here unless `--sim-db` names a database it "
            "already ran on) replayed offline. Every request of the listed days is ranked again by each variant "
            "and scored with the world's true like probabilities (the screen's expected hit rate, 5 posts). L: "
            "the live state holding every simulated event, read as of the request; S: the artifact's snapshot "
            "alone. Unless a variant says otherwise it hides the live user's liked and recently viewed posts "
            "and is scored at the request's moment.", "",
            *[f"- `{k}`: {ABLATION_VARIANTS[k]}" for k in chosen],
            "- `oracle`: the world's best 5 posts the live user has not liked or recently viewed", ""]
    if sim_days is not None:
        body += [f"The live simulation's expected hit rate per day (through the service"
                 f"{'; ' + ' '.join(args.live_setting) if args.live_setting else ''}): {sim_days}.", ""]
    if per_day:
        body += ["| day | requests | returning | " + " | ".join(f"`{n}`" for n in names) + " |",
                 "|---|---|---|" + "---|" * len(names)]
    for day, got in per_day.items():
        body.append(f"| {day} | {len(got['live'])} | {returning[day].mean():.3f} | "
                    + " | ".join(f"{got[n].mean():.4f}" for n in names) + " |")
    if per_day and "as_if_day1" in chosen:
        last = max(per_day)
        got, back = per_day[last], returning[last]
        body += ["", f"Day {last}, by whether the user was served before in the simulation (returning) or not, "
                 "with the 95% bootstrap interval of the paired difference from `as_if_day1` (the same requests):",
                 "", "| variant | all | returning | first visit | all minus `as_if_day1` [95% CI] |",
                 "|---|---|---|---|---|"]
        for n in names:
            diff = got[n] - got["as_if_day1"]
            lo, hi = bootstrap_ci(diff, seed=last)
            ret = f"{got[n][back].mean():.4f}" if back.any() else "-"
            new = f"{got[n][~back].mean():.4f}" if (~back).any() else "-"
            body.append(f"| `{n}` | {got[n].mean():.4f} | {ret} | {new} | {diff.mean():+.4f} [{lo:+.4f}, {hi:+.4f}] |")
    if counters:
        body += ["", f"The posts `live` served, and the simulated views before each day (the snapshot's like rate "
                 f"`p_like_rate` has its 99th percentile over the catalogue at {p99:.4f}; the feed before the "
                 f"simulation was liked at {feed_rate:.4f} a view):",
                 "", "| day | served `p_like_rate`, L | S | served above the 99th percentile, L | S | simulated views "
                 "before the day | liked per simulated view | posts with a simulated view |",
                 "|---|---|---|---|---|---|---|---|",
                 *[f"| {d} | {a:.4f} | {b:.4f} | {x:.3f} | {y:.3f} | {n:,} | {r:.4f} | {k:,} |"
                   for d, (a, b, x, y, n, r, k) in counters.items()]]
    append("Ablation of the live decline", body)


# ------------------------------------------------------------------ freshness
def cmd_freshness(args) -> None:
    db = copy_database(args.db, "fresh")
    recommender = Recommender.load(args.models)
    snap = recommender.state.snapshot
    rng = np.random.default_rng(args.seed)
    port = 8022
    proc, _ = _service(db, args.models, port)
    engine = make_engine(db)
    seconds, polls = [], []
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{port}") as client:
            for trial in range(args.trials):
                uid = int(rng.choice(snap.user_ids))
                t = snap.events_until + 3600 + trial * 600
                ask = {"id": uid, "time": datetime.fromtimestamp(t, tz=UTC).isoformat(), "limit": 5}
                top = client.get("/post/recommendations/", params=ask).json()["recommendations"][0]["id"]
                moment = datetime.fromtimestamp(t - 60, tz=UTC).replace(tzinfo=None)
                with engine.begin() as conn:
                    conn.execute(feed_data.insert(), [
                        {c.TIMESTAMP: moment, c.USER_ID: uid, c.POST_ID: top, c.ACTION: c.VIEW, c.TARGET: 1},
                        {c.TIMESTAMP: moment, c.USER_ID: uid, c.POST_ID: top, c.ACTION: c.LIKE, c.TARGET: None}])
                committed = time.perf_counter()
                n = 0
                while True:
                    n += 1
                    ids = [p["id"] for p in client.get("/post/recommendations/", params=ask).json()["recommendations"]]
                    if top not in ids:
                        break
                    if time.perf_counter() - committed > 30:
                        raise RuntimeError(f"trial {trial}: the like never reached the answer")
                seconds.append(time.perf_counter() - committed)
                polls.append(n)
            state = client.get("/ready").json()["state"]  # did a trial meet a compaction?
    finally:
        stop(proc)
        engine.dispose()
        drop_database(db)
    q = _pct(seconds)
    backend = make_url(args.db).get_backend_name()
    append(f"Freshness on {backend}", [
        f"{args.trials} trials against one worker with the default `STATE_POLL_SECONDS=0.2`: a view and a like of "
        "the user's top post are committed to feed_data, then the same request is repeated until the post is "
        "gone. Seconds from the commit to the first answer without it:", "",
        "| p50 | p90 | p99 | max | requests per trial (median) |", "|---|---|---|---|---|",
        f"| {q['p50']} | {q['p90']} | {q['p99']} | {q['max']} | {int(np.median(polls))} |", "",
        f"The service's state compacted {state['compactions']} time(s) during the trials "
        f"({state['events_folded']:,} user events folded; `STATE_COMPACT_IN_CHILD` "
        f"{os.environ.get('STATE_COMPACT_IN_CHILD', 'true, the default')})."])


# ------------------------------------------------------------------ apply rate
def cmd_apply(args) -> None:
    recommender = Recommender.load(args.models)
    frame = replayed_events(recommender, args.days, shift_weeks=2)
    batch = EventBatch.from_frame(frame)
    state = recommender.state
    started = time.perf_counter()
    for part in _in_batches(batch, args.batch):
        state.apply(part)
    in_process = len(batch) / (time.perf_counter() - started)
    db = copy_database(args.db, "apply")
    try:
        insert(db, frame)
        fresh = Recommender.load(args.models)
        engine = make_engine(db)
        started = time.perf_counter()
        applied = catch_up(engine, fresh.state, batch_rows=args.batch)
        end_to_end = applied / (time.perf_counter() - started)
        engine.dispose()
    finally:
        drop_database(db)
    backend = make_url(args.db).get_backend_name()
    append(f"Apply rate on {backend}", [
        f"{len(batch):,} events ({args.days} day(s) of the feed replayed two weeks later), batches of "
        f"{args.batch:,}, one thread:", "",
        "| path | events/s |", "|---|---|",
        f"| `LiveState.apply` (in memory) | {in_process:,.0f} |",
        f"| follower: read from {backend} + apply | {end_to_end:,.0f} |"])


# ------------------------------------------------------------------ compaction
def cmd_compaction(args) -> None:
    """One thread answers requests in a loop while no compaction runs, then while a day's compaction is
    built in another thread (as the follower builds it), over and over until every request is answered:
    what a compaction costs the requests of a worker, and how long it takes, built in a thread and in a
    forked child process."""
    if args.requests < 1 or args.days <= 0:
        sys.exit(f"error: --requests must be at least 1 (got {args.requests}) and --days above 0 (got {args.days})")
    recommender = Recommender.load(args.models)
    state = recommender.state
    snap = state.snapshot
    replay = replayed_events(recommender, args.days, shift_weeks=2)
    batch = EventBatch.from_frame(replay)
    for part in _in_batches(batch, 50_000):
        state.apply(part)
    rng = np.random.default_rng(args.seed)
    users = rng.choice(snap.user_ids, size=args.requests)
    now = state.latest_event + 60  # the clock's moment, after every event, as live traffic asks
    for u in users[:200]:
        recommender.recommend("test", int(u), now, 5)  # warm: the hourly retrieval sources, the caches

    def answer(building: Callable[[], bool] | None) -> list[float]:
        out = []
        for u in users:
            if building is not None and not building():
                break
            started = time.perf_counter()
            recommender.recommend("test", int(u), now, 5)
            out.append((time.perf_counter() - started) * 1000)
        return out

    idle = answer(None)
    job = state.start_compaction(state.base_as_of + 86_400)  # a day's fold, as the follower's daily one
    if job is None:
        sys.exit("error: no events to fold")
    ways = {"a thread of the worker": job.build}
    if child_process.available():  # the service's way (STATE_COMPACT_IN_CHILD)
        ways["a forked child process"] = job.build_in_child
    during: dict[str, list[float]] = {}
    builds: dict[str, list[float]] = {}
    for way, build in ways.items():
        during[way], builds[way] = [], []
        while len(during[way]) < args.requests:  # the same build again until every request was answered beside one
            started = time.perf_counter()
            thread = threading.Thread(target=build)
            thread.start()
            during[way] += answer(thread.is_alive)
            thread.join()
            builds[way].append(time.perf_counter() - started)

    def publish() -> None:  # as the follower publishes it, the freed memory returned to the system after
        state.publish_compaction(job)
        return_memory()

    started = time.perf_counter()
    thread = threading.Thread(target=publish)
    thread.start()
    at_publish = answer(thread.is_alive)
    thread.join()
    published = time.perf_counter() - started
    try:
        defrag = Path("/sys/kernel/mm/transparent_hugepage/defrag").read_text().strip()
    except OSError:
        defrag = "unknown"
    # the service sets NUMPY_MADVISE_HUGEPAGE=0 for itself (app/__main__.py); this process has whatever
    # its environment says, read by NumPy at import
    madvise = os.environ.get("NUMPY_MADVISE_HUGEPAGE", "unset: NumPy asks for huge pages")
    a = _pct(idle)
    rows = [f"| no compaction | {len(idle)} | – | {a['p50']} | {a['p90']} | {a['p99']} | {a['max']} |"]
    for way in ways:
        b = _pct(during[way][:args.requests])
        rows.append(f"| built in {way} | {len(during[way][:args.requests])} | {np.median(builds[way]):.2f} "
                    f"({len(builds[way])}) | {b['p50']} | {b['p90']} | {b['p99']} | {b['max']} |")
    append("Requests while a compaction is built", [
        f"`NUMPY_MADVISE_HUGEPAGE` {madvise}; the kernel's transparent_hugepage/defrag `{defrag}`.", "",
        f"Artifacts `{args.models.name}` ({len(snap.user_ids):,} users), {len(batch):,} replayed events applied "
        f"({args.days} day(s)); one thread asks `recommend` (test model, limit 5, {args.requests} users at the "
        f"moment after the latest event), first with no compaction running, then while a day's compaction (the "
        f"first day after the base cut, {job.folded:,} user events) is built beside it, the same one again "
        f"until every request was answered beside a build: in a second thread, then in a forked child process "
        f"read back by a second thread, as the service builds it (`STATE_COMPACT_IN_CHILD`). Milliseconds per "
        f"request; the build's median seconds (and how many builds):", "",
        "| while | requests | build s (n) | p50 | p90 | p99 | max |", "|---|---|---|---|---|---|---|", *rows, "",
        f"Then published as the follower does (the events applied since the start kept, the freed memory "
        f"returned): {published * 1000:.0f} ms, {len(at_publish)} requests answered meanwhile"
        + (f", the longest in {max(at_publish):.1f} ms." if at_publish else ".")])


# ------------------------------------------------------------------ serving
def _even_load(port: int, script: Path, duration: int, concurrency: int, tries: int) -> dict:
    """One wrk run, repeated (at most `tries` runs in all) while its connections fall unevenly between the
    workers (5/3 of 8 queues five requests at one worker and moves p50 and p99 as much as the state can):
    every service gets the same treatment, so live and frozen are compared at the same split. The result
    lists the splits seen, the kept run's last."""
    splits = []
    for _ in range(tries):
        result = load(port, script, duration, concurrency)
        splits.append(result["split"])
        if len(set(str(result["split"]).split("/"))) == 1:  # even (or one connection)
            break
    result["splits"] = splits
    return result


def cmd_serving(args) -> None:
    if args.even_tries < 1:
        sys.exit(f"error: --even-tries must be at least 1 (got {args.even_tries})")
    if shutil.which("wrk") is None:
        sys.exit("error: wrk not found: apt-get install wrk")
    recommender = Recommender.load(args.models)
    snap = recommender.state.snapshot
    day = replayed_events(recommender, 1, shift_weeks=2)
    del recommender
    latest = int(day["ts"].max())
    rng = np.random.default_rng(0)
    users = rng.choice(snap.user_ids, size=2000)
    # "now": after every event the service holds or the trickle below writes (the day after the applied
    # one), as in production, where a request's moment is the clock's and the events come before it. A
    # request before applied events reads the counters' partial-block path instead (a past moment: the
    # checker's case, costed by bench.catalogue); the runs before 2026-11-29 10:00 mixed both
    times = latest + TRICKLE_SHIFT + 1 + rng.integers(0, 3600, size=2000)
    pairs = ",".join(f'{{{u},"{datetime.fromtimestamp(t, tz=UTC).strftime("%Y-%m-%dT%H:%M:%S")}"}}'
                     for u, t in zip(users, times, strict=True))
    script = Path(args.work) / "live_load.lua"
    script.parent.mkdir(parents=True, exist_ok=True)
    script.write_text(LUA % (pairs, 7))
    db = copy_database(args.db, "serve")
    runs, rss = {}, {}
    try:
        insert(db, day)  # a day after the snapshot, for the live service to apply
        # frozen, live, frozen again: the machine's speed drifts (other jobs, the host's steal), and a live
        # run compared with the frozen runs on either side of it is not the drift's
        for mode, env in (("frozen", {"state_follow": "false"}), ("live", {"state_follow": "true"}),
                          ("frozen again", {"state_follow": "false"})):
            proc, startup = _service(db, args.models, 8023, workers=args.workers, **env)
            writer = None
            try:
                if mode == "live":  # steady state: the day applied and the compaction it calls for done
                    _wait_caught_up(8023, _max_seq(db), timeout=1800)
                    _wait_compacted(8023, timeout=600)
                    writer = _Trickle(db, day, rate=args.trickle)
                load(8023, script, 5, 8)  # warm-up
                for conc in (1, 8):
                    runs[(mode, conc)] = _even_load(8023, script, args.duration, conc, args.even_tries)
                    print(mode, conc, runs[(mode, conc)])
                rss[mode] = tree_rss_mb(proc.pid) / args.workers
                if mode == "live":
                    writer.stop()
                    week = replayed_events(Recommender.load(args.models), 7, shift_weeks=3)
                    insert(db, week)
                    _wait_caught_up(8023, _max_seq(db), timeout=1800)
                    _wait_compacted(8023, timeout=600)
                    rss["live after a week"] = tree_rss_mb(proc.pid) / args.workers
                    state = httpx.get("http://127.0.0.1:8023/ready", timeout=5).json()["state"]
            finally:
                if writer is not None:
                    writer.stop()
                stop(proc)
    finally:
        drop_database(db)
    body = [f"Artifacts `{args.models.name}` ({len(snap.user_ids):,} users); {args.workers} workers per service; "
            f"wrk on the same machine, {args.duration} s per run, limit=5, request times in the hour after the "
            f"trickled day (after every event, as a request at the clock's moment is); the frozen service runs "
            f"before and again after the live one. Frozen: `STATE_FOLLOW=false`. "
            f"Live: the day of events ({len(day):,}) applied at startup (and the "
            f"compaction it calls for done) before the runs, and "
            f"more written at {args.trickle} events/s during the runs for the follower to apply.", "",
            # how wrk's connections fell between the workers moves p50 as much as the state can (`_even_load`)
            f"Each row is the first run whose connections fell evenly between the workers, of at most "
            f"{args.even_tries} (every service alike; the last column lists the splits seen, the kept run's last).",
            "",
            "| service | concurrency | p50 ms | p90 ms | p99 ms | requests/s | errors | connections per worker |",
            "|---|---|---|---|---|---|---|---|"]
    for (mode, conc), r in runs.items():
        body.append(f"| {mode} | {conc} | {r['p50_ms']} | {r['p90_ms']} | {r['p99_ms']} | {r['rps']} | "
                    f"{r['errors'] + r['non_2xx']} | {', '.join(map(str, r['splits']))} |")
    for conc in (1, 8):
        before, live, after = runs[("frozen", conc)], runs[("live", conc)], runs[("frozen again", conc)]
        ratio = {q: live[q] / ((before[q] + after[q]) / 2) for q in ("p50_ms", "p99_ms")}
        body.append(f"\nConcurrency {conc}: live / frozen (the mean of the runs before and after) p50 "
                    f"{ratio['p50_ms']:.3f}, p99 {ratio['p99_ms']:.3f}; frozen after / before p50 "
                    f"{after['p50_ms'] / before['p50_ms']:.3f}, p99 {after['p99_ms'] / before['p99_ms']:.3f} "
                    "(the machine's own drift).")
    body.append(f"\nRSS per worker: frozen {rss['frozen']:.0f} MB, live after a day {rss['live']:.0f} MB, live after "
                f"a further week of events ({state['events_applied']:,} applied in all; {state['compactions']} "
                f"compaction(s) folded {state['events_folded']:,} user events into the base, now as of "
                f"{state['base_as_of']}) {rss['live after a week']:.0f} MB "
                f"({rss['live after a week'] / rss['frozen']:.3f}x frozen). The replayed days lie two and three weeks "
                "after the artifact's data, so the first "
                "compaction folds the snapshot's own events too.")
    append("Request path and memory, frozen vs live", body)


class _Trickle:
    """Writes replayed events at a steady rate in a thread, so that the follower works during a run."""

    def __init__(self, db: str, frame: pd.DataFrame, rate: float) -> None:
        self.engine = make_engine(db)
        shifted = frame.assign(**{c.TIMESTAMP: frame[c.TIMESTAMP] + pd.Timedelta(seconds=TRICKLE_SHIFT),
                                   "ts": frame["ts"] + TRICKLE_SHIFT})
        self.frame, self.rate = shifted, rate
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        i, step = 0, max(1, int(self.rate / 10))
        while not self._stop.is_set() and i < len(self.frame):
            with self.engine.begin() as conn:
                write_frame(conn, feed_data, self.frame.iloc[i:i + step])
            i += step
            self._stop.wait(0.1)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(10)
        self.engine.dispose()


def _max_seq(db: str) -> int:
    from app.feed_events import max_seq

    engine = make_engine(db)
    with engine.connect() as conn:
        seq = max_seq(conn)
    engine.dispose()
    return seq


def _wait_caught_up(port: int, seq: int, timeout: float, streak: int = 10) -> None:
    """Until `streak` answers in a row (new connections: any worker) hold every event up to `seq`."""
    deadline, ok = time.monotonic() + timeout, 0
    while ok < streak:
        state = httpx.get(f"http://127.0.0.1:{port}/ready", timeout=10, headers={"Connection": "close"}).json()
        ok = ok + 1 if state["state"].get("applied_seq", 0) >= seq else 0
        if time.monotonic() > deadline:
            raise RuntimeError("the live service did not catch up")
        time.sleep(0.2 if ok else 1)


def _wait_compacted(port: int, timeout: float, streak: int = 10) -> None:
    """Until `streak` answers in a row (any worker) show no compaction due: the events held one by one
    span at most STATE_KEEP_HOURS + STATE_COMPACT_HOURS behind the latest."""
    settings = Settings()
    span = (settings.state_keep_hours + settings.state_compact_hours) * 3600
    deadline, ok = time.monotonic() + timeout, 0
    while ok < streak:
        state = httpx.get(f"http://127.0.0.1:{port}/ready", timeout=10, headers={"Connection": "close"}).json()["state"]
        held = datetime.fromisoformat(state["latest_event"]) - datetime.fromisoformat(state["base_as_of"])
        ok = ok + 1 if held.total_seconds() <= span else 0
        if time.monotonic() > deadline:
            raise RuntimeError("the live service did not compact")
        time.sleep(0.2 if ok else 1)


# ------------------------------------------------------------------ encoder memory
def _vm_rss_mb() -> float:
    line = next(x for x in Path("/proc/self/status").read_text().splitlines() if x.startswith("VmRSS"))
    return int(line.split()[1]) / 1024


def _encoder_rss(lean: bool) -> None:
    """In this process: resident MB before the encoder, after loading it, after one batch of 64 texts."""
    from app.text_encoder import make_encoder

    before = _vm_rss_mb()
    encoder = make_encoder("minilm-int8", lean=lean)
    loaded = _vm_rss_mb()
    encoder.encode([" ".join(["word"] * 200) + f" {i}" for i in range(64)])  # 128 tokens each
    print(f"{before:.0f} {loaded:.0f} {_vm_rss_mb():.0f}")


def cmd_encoder(args) -> None:
    rows = ["| onnxruntime session | MB before | after loading | after one batch of 64 texts of 128 tokens |",
            "|---|---|---|---|"]
    for lean in (False, True):
        out = subprocess.run([sys.executable, "-c", f"from bench.live_state import _encoder_rss; _encoder_rss({lean})"],
                             check=True, capture_output=True, text=True).stdout.split()
        name = "arena off (`make_encoder(..., lean=True)`: the follower)" if lean else "default (training)"
        rows.append(f"| {name} | {out[0]} | {out[1]} | {out[2]} |")
    append("Text encoder memory (minilm-int8), one process each", rows)


# ------------------------------------------------------------------ memory, in process
def _state_rss(models: str, compact: bool, batch: int) -> None:
    """In this process: resident MB with the artifact loaded, after a replayed day and after a further
    week applied in batches as the follower applies them, compacting as it does (or never)."""
    import gc

    from app.follower import Follower, return_memory

    recommender = Recommender.load(Path(models))
    frames = [replayed_events(recommender, 1, shift_weeks=2), replayed_events(recommender, 7, shift_weeks=3)]
    batches = [EventBatch.from_frame(f) for f in frames]
    del frames
    gc.collect()
    return_memory()
    state = recommender.state
    follower = Follower(None, state, keep_seconds=240 * 3600 if compact else 10**9)  # type: ignore[arg-type]
    out = [_vm_rss_mb()]
    for b in batches:
        for part in _in_batches(b, batch):
            state.apply(part)
            follower.compact(now=state.latest_event)
        out.append(_vm_rss_mb())
    print(" ".join(f"{x:.0f}" for x in out), state.events_applied, state.compactions, state.events_folded)


def cmd_memory(args) -> None:
    rows = ["| state | MB loaded | after a day | after a further week | events applied | compactions | user events "
            "folded |", "|---|---|---|---|---|---|---|"]
    for compact in (False, True):
        out = subprocess.run([sys.executable, "-c", "from bench.live_state import _state_rss; "
                              f"_state_rss({str(args.models)!r}, {compact}, {args.batch})"],
                             check=True, capture_output=True, text=True).stdout.split()
        name = "compacted (STATE_KEEP_HOURS=240, STATE_COMPACT_HOURS=24)" if compact else "never compacted"
        rows.append(f"| {name} | {' | '.join(out[:3])} | {int(out[3]):,} | {out[4]} | {int(out[5]):,} |")
    append(f"Live state memory in one process, artifacts `{args.models}`", [
        "`LiveState.apply` in batches of the follower's size, no service and no database: a day of the feed "
        "replayed two weeks after the artifact's data, then a week three weeks after; the compaction "
        "as the follower runs it after each batch. Each row in a process of its own.", "", *rows])


def cmd_poll(args) -> None:
    """CPU of one follower poll on its thread (`time.thread_time`: what it takes from the serving process,
    whatever the machine's load), idle and with a few new rows, against the database itself; the rows it
    writes are deleted at the end."""
    from sqlalchemy import insert as sql_insert

    from app.follower import Follower

    recommender = Recommender.load(args.models)
    engine = make_engine(args.db)
    follower = Follower(engine, recommender.state)
    while follower.poll():  # whatever the database holds after the artifact: applied first
        pass
    start_seq = _max_seq(args.db)
    snap, rng = recommender.state.snapshot, np.random.default_rng(args.seed)

    def measure(n: int, rows: int) -> dict[str, float]:
        cpu = []
        for i in range(n):
            if rows:
                moment = datetime.fromtimestamp(snap.events_until + 10 + i, tz=UTC).replace(tzinfo=None)
                with engine.begin() as conn:
                    conn.execute(sql_insert(feed_data), [
                        {c.TIMESTAMP: moment, c.USER_ID: int(rng.choice(snap.user_ids)),
                         c.POST_ID: int(rng.choice(snap.post_ids)), c.ACTION: c.VIEW, c.TARGET: 0}
                        for _ in range(rows)])
            before = time.thread_time()
            follower.poll()
            cpu.append((time.thread_time() - before) * 1000)
            time.sleep(0.02)
        return {"p50": float(np.percentile(cpu, 50)), "p90": float(np.percentile(cpu, 90))}

    try:
        results = {rows: measure(args.polls, rows) for rows in (0, args.rows)}
    finally:
        follower.stop()
        with engine.begin() as conn:
            conn.execute(text(f"DELETE FROM {feed_data.name} WHERE seq > :s"), {"s": start_seq})
        engine.dispose()
    body = [f"Artifacts `{args.models.name}` on {masked(args.db).split('@')[-1]}; {args.polls} polls each, "
            f"the follower's own connection; CPU on the polling thread (`time.thread_time`), which the "
            "serving process's requests wait for while the poll holds the GIL.", "",
            "| poll | CPU p50 ms | CPU p90 ms |", "|---|---|---|"]
    for rows, r in results.items():
        body.append(f"| {'nothing new' if rows == 0 else f'{rows} new rows'} | {r['p50']:.3f} | {r['p90']:.3f} |")
    append("Follower poll cost", body)


def main() -> None:
    ap = argparse.ArgumentParser(prog="python -m bench.live_state")
    sub = ap.add_subparsers(dest="command", required=True)
    sub.add_parser("encoder")
    mem = sub.add_parser("memory")
    mem.add_argument("--models", type=Path, required=True)
    mem.add_argument("--batch", type=int, default=50_000)
    comp = sub.add_parser("compaction")
    comp.add_argument("--models", type=Path, required=True)
    comp.add_argument("--seed", type=int, default=3)
    comp.add_argument("--days", type=float, default=3.0)
    comp.add_argument("--requests", type=int, default=3000)
    for name in ("simulate", "ablate", "freshness", "apply", "serving", "poll"):
        p = sub.add_parser(name)
        p.add_argument("--db", required=True)
        p.add_argument("--models", type=Path, required=True)
        p.add_argument("--seed", type=int, default=3)
        if name in ("simulate", "ablate"):
            p.add_argument("--world", type=Path, required=True)
            p.add_argument("--days", type=int, default=10)
            p.add_argument("--users-per-day", type=int, default=800)
            p.add_argument("--max-rps", type=float, default=200.0)
            p.add_argument("--live-setting", action="append", default=[], metavar="NAME=VALUE",
                           help="a setting of the live service, e.g. EXCLUDE_LAST_VIEWS=0 (repeatable)")
        if name == "ablate":
            p.add_argument("--sim-db", help="a database the live simulation already ran on (else it runs here)")
            p.add_argument("--keep", action="store_true", help="keep the simulated copy of the database")
            p.add_argument("--ablate-days", default="1,10", help="days to re-rank (comma-separated, or all)")
            p.add_argument("--limit", type=int, default=5)
            p.add_argument("--port", type=int, default=8024)
            p.add_argument("--variants", default="all", help=f"comma-separated, of {', '.join(ABLATION_VARIANTS)}")
        if name == "freshness":
            p.add_argument("--trials", type=int, default=200)
        if name == "apply":
            p.add_argument("--days", type=float, default=1.0)
            p.add_argument("--batch", type=int, default=50_000)
        if name == "poll":
            p.add_argument("--polls", type=int, default=200)
            p.add_argument("--rows", type=int, default=20, help="rows written before each poll of the second kind")
        if name == "serving":
            p.add_argument("--duration", type=int, default=30)
            p.add_argument("--workers", type=int, default=2)
            p.add_argument("--trickle", type=float, default=100.0)
            p.add_argument("--even-tries", type=int, default=3,
                           help="runs per row at most while wrk's connections fall unevenly between the workers")
            p.add_argument("--work", default="/tmp/bench-live")
    args = ap.parse_args()
    commands = {"simulate": cmd_simulate, "ablate": cmd_ablate, "freshness": cmd_freshness, "apply": cmd_apply,
                "serving": cmd_serving, "poll": cmd_poll, "compaction": cmd_compaction,
                "encoder": cmd_encoder, "memory": cmd_memory}
    commands[args.command](args)


if __name__ == "__main__":
    main()
