"""A catalogue that grows, measured: retrieval quality, cost per request by catalogue size, time from a
new post's insert to candidate, and the fresh-post exposure sweep.

    python -m bench.catalogue recall --db URL --models DIR --world PATH [--requests 1000]
    python -m bench.catalogue cost --db URL --models DIR [--posts 7023 70000 1000000] [--requests 300] [--at held-out]
    python -m bench.catalogue newposts --db URL --models DIR [--inserts 50]
    python -m bench.catalogue fresh --db URL --models DIR --world PATH [--shares 0 0.1 0.2 0.4]
    python -m bench.catalogue young --db URL --models DIR --world PATH [--requests 1000]
    python -m bench.catalogue simcompare --runs A.json B.json ... (`training simulate --json`, one seed)
    python -m bench.catalogue ivf --models DIR [--sizes 10000 60000 150000 512000 1000000]
    python -m bench.catalogue searched --db URL --models DIR [--size N] [--values 7 3 2 1] [--requests 200]

Each appends its result to docs/catalogue.md with the command, the machine and the load average.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pandas as pd

from app import columns as c
from app.config import PROJECT_ROOT
from app.db import make_engine, masked
from app.engine import Recommender, ScreenPolicy
from app.follower import catch_up
from training.metrics import bootstrap_ci, expected_hit

OUT = PROJECT_ROOT / "docs" / "catalogue.md"


def _load(models: Path, **policy) -> Recommender:
    return Recommender.load(models, policy=ScreenPolicy(**policy))


def _machine() -> str:
    return (f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}, "
            f"load average {' '.join(open('/proc/loadavg').read().split()[:3])}")


def _append(title: str, body: str) -> None:
    OUT.parent.mkdir(parents=True, exist_ok=True)
    head = "" if OUT.exists() else "# A catalogue that grows: measurements\n\nWritten by `bench/catalogue.py`.\n"
    stamp = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    with open(OUT, "a") as fh:
        fh.write(f"{head}\n## {title} ({stamp})\n\n`python -m bench.catalogue {' '.join(sys.argv[1:])}`\n\n"
                 f"Machine: {_machine()}\n\n{body}\n")
    print(body)


def _requests(db: str, engine: Recommender, n: int, seed: int) -> pd.DataFrame:
    from training.evaluate import sample_requests

    split = engine.manifest.data["split"]
    conn_engine = make_engine(db)
    with conn_engine.connect() as conn:
        requests = sample_requests(conn, int(split["test_start"]), int(split["end"]), n, seed)
    conn_engine.dispose()
    return requests


def _truth(world, user_id: int, t: int) -> np.ndarray:
    """The world's like probabilities at t; a post it releases later cannot be liked yet (the tables
    hold no release time, so the service may show it)."""
    p = world.all_posts_probability(user_id, t)
    if len(world.post_release):
        p = np.where(world.post_release > t, 0.0, p)
    return p


def _ci(values: np.ndarray) -> str:
    lo, hi = bootstrap_ci(np.asarray(values, float))
    return f"{np.mean(values):.4f} [{lo:.4f}, {hi:.4f}]"


# ------------------------------------------------------------------ recall
def recall(args) -> None:
    """Recall of full scoring's top 5 by the candidates, and expected hitrate@5 of both screens."""
    from training.world.model import World

    full, cand = _load(args.models, retrieval="full"), _load(args.models, retrieval="candidates")
    db = make_engine(args.db)
    for e in (full, cand):
        catch_up(db, e.state)
    db.dispose()
    world = World.load(args.world)
    requests = _requests(args.db, full, args.requests, args.seed)
    rows = []
    for u, t in zip(requests[c.USER_ID].to_numpy(), requests["ts"].to_numpy(), strict=True):
        u, t = int(u), int(t)
        p = _truth(world, u, t)
        for model in args.models_ranked:
            top = full.recommend(model, u, t, 5).post_ids
            user, posts = cand.state.at(cand.state.user_row(u), t)
            if user is None:
                continue
            started = time.perf_counter()
            got = cand.recommend(model, u, t, 5).post_ids
            ms = (time.perf_counter() - started) * 1000
            ids = cand.post_ids[cand.candidates(model, user, t, len(posts.topic))]
            rows.append({"model": model, "recall": len(set(top.tolist()) & set(ids.tolist())) / max(len(top), 1),
                         "candidates": len(ids), "exp_full": expected_hit(p[world.post_index(top)]),
                         "exp_cand": expected_hit(p[world.post_index(got)]), "ms": ms})
    df = pd.DataFrame(rows)
    lines = [f"{len(requests)} held-out requests (`training.evaluate.sample_requests`, seed {args.seed}) on "
             f"{masked(args.db)} ({len(full.post_ids):,} posts), models {args.models}.", "",
             "| model | recall of full top 5 | candidates median / p90 | expected hitrate@5 full | candidates | "
             "difference (paired) | ms per request, candidates, p50 |", "|---|---|---|---|---|---|---|"]
    for model, g in df.groupby("model"):
        lines.append(f"| {model} | {g.recall.mean():.4f} | {g.candidates.median():.0f} / "
                     f"{g.candidates.quantile(0.9):.0f} | {_ci(g.exp_full)} | {_ci(g.exp_cand)} | "
                     f"{_ci(g.exp_cand.to_numpy() - g.exp_full.to_numpy())} | {g.ms.median():.2f} |")
    lines.append(f"\nBoth models: recall {df.recall.mean():.4f}, expected hitrate@5 full {df.exp_full.mean():.4f}, "
                 f"candidates {df.exp_cand.mean():.4f}.")
    _append("Retrieval: recall and expected hit rate, candidates vs full scoring", "\n".join(lines))


# ------------------------------------------------------------------ new posts
def newposts(args) -> None:
    """Seconds from a post_text_df insert to the post being among a user's candidates, through the
    follower thread (poll, encode, index), `--inserts` times, on a copy of the database."""
    from sqlalchemy import func, insert, select

    from app.follower import Follower
    from app.tables import post_text_df
    from bench.live_state import copy_database, drop_database

    url = copy_database(args.db, "newposts")
    try:
        engine = _load(args.models)
        db = make_engine(url)
        catch_up(db, engine.state)
        with db.connect() as conn:
            top = int(conn.execute(select(func.max(post_text_df.c.post_id))).scalar())
            texts = pd.DataFrame(conn.execute(select(post_text_df.c.text, post_text_df.c.topic)).mappings().all())
        follower = Follower(db, engine.state, poll_seconds=args.poll, posts_poll_seconds=args.poll)
        follower.start()
        state = engine.state
        user_id = int(state.snapshot.user_ids[0])
        rng = np.random.default_rng(0)
        times = []
        for i in range(args.inserts):
            new_id = top + 1 + i
            src = texts.iloc[int(rng.integers(len(texts)))]
            started = time.monotonic()
            with db.begin() as conn:
                conn.execute(insert(post_text_df), [{c.POST_ID: new_id, c.TEXT: f"{src[c.TEXT]} (update {i})",
                                                     c.TOPIC: src[c.TOPIC]}])
            while True:
                row = int(state.post_rows(np.array([new_id]))[0])
                if row >= 0:
                    t = state.latest_event + 1
                    user, posts = state.at(state.user_row(user_id), t)
                    if row in set(engine.candidates("test", user, t, len(posts.topic)).tolist()):
                        break
                if time.monotonic() - started > 120:
                    raise SystemExit(f"post {new_id} not a candidate after 120 s")
                time.sleep(0.01)
            times.append(time.monotonic() - started)
            time.sleep(args.gap)
        follower.stop()
        db.dispose()
    finally:
        drop_database(url)
    t = np.array(times)
    body = (f"{args.inserts} posts inserted one at a time into a copy of {masked(args.db)} while a follower thread "
            f"(poll {args.poll} s, encoder {state.text_transforms.encoder_name}) serves; time from the insert's "
            f"commit to the post being among the candidates of user {user_id}: p50 {np.median(t):.2f} s, "
            f"p99 {np.quantile(t, 0.99):.2f} s, max {t.max():.2f} s.")
    _append("New posts: insert to candidate", body)


# ------------------------------------------------------------------ cost
def cost(args) -> None:
    """Per-request time with candidates vs full scoring, on catalogues grown to each size in memory
    (the artifact's posts repeated with new ids: the vectors and columns of real posts), each size and
    mode in a process of its own so that its RSS is its own."""
    import json
    import subprocess

    results = []
    for size in args.posts:
        for mode in ("candidates", "full"):
            if mode == "full" and size > args.full_max:
                continue
            out = subprocess.run([sys.executable, "-m", "bench.catalogue", "cost-one", "--models", str(args.models),
                                  "--size", str(size), "--mode", mode, "--requests", str(args.requests),
                                  "--at", args.at, "--jitter", str(args.jitter), "--recall", str(args.recall),
                                  "--seed", str(args.seed)],
                                 check=True, capture_output=True, text=True).stdout
            results.append(json.loads(out.strip().splitlines()[-1]))
            print(results[-1], flush=True)
    moments = ("at the moment after the latest event, after 10 warm-up requests" if args.at == "latest" else
               "at random moments of the held-out window (a fresh hour's retrieval sources now and then), after "
               "the same requests once as a warm-up")
    grown = ("same columns, and vectors made distinct by noise of "
             f"{args.jitter:g} of each dimension's spread (`_jittered`)" if args.jitter else "same columns and vectors")
    recall = (f" Recall: the share of full scoring's top 5 (every post scored by the same engine) the candidates "
              f"hold, over the first {args.recall} requests." if args.recall else "")
    lines = [f"One thread, in process, model `test`, {args.requests} requests per row {moments}; catalogues grown "
             f"in memory from the artifact's posts (new ids, {grown}); each row a process of its "
             "own (RSS after the requests). The parts: medians of the same requests again, each part timed on its "
             "own (`bench.serving.profile`: the user as of t, candidates, assemble, CatBoost, exclusion and "
             f"top-k).{recall}", "",
             "| posts | retrieval | p50 ms | p99 ms | candidates median | recall of full top 5 | process RSS MB | "
             "grow + index s | parts ms: user / candidates / assemble / CatBoost / exclusion |",
             "|---|---|---|---|---|---|---|---|---|"]
    lines += [f"| {r['size']:,} | {r['mode']} | {r['p50']:.2f} | {r['p99']:.2f} | {r['candidates']} | "
              f"{'' if r.get('recall') is None else format(r['recall'], '.3f')} | "
              f"{r['rss_mb']:.0f} | {r['grow_s']:.1f} | {_parts(r['parts'])} |" for r in results]
    if args.plot is not None:
        _plot_cost(results, args.plot)
        lines += ["", f"Plotted in `{args.plot.name}` (p50 and p99 per request against the catalogue's size)."]
    _append("Cost per request by catalogue size", "\n".join(lines))


def _plot_cost(results: list[dict], path: Path) -> None:
    """The cost curve: per-request p50 (line) and p99 (dashed) against catalogue size, both retrievals."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.0))
    for mode, colour in (("candidates", "tab:blue"), ("full", "tab:red")):
        rows = sorted((r for r in results if r["mode"] == mode), key=lambda r: r["size"])
        if not rows:
            continue
        sizes = [r["size"] for r in rows]
        label = "candidates, then CatBoost" if mode == "candidates" else "every post scored (RETRIEVAL=full)"
        ax.plot(sizes, [r["p50"] for r in rows], "o-", color=colour, label=f"{label}: p50")
        ax.plot(sizes, [r["p99"] for r in rows], "o--", color=colour, alpha=0.5, label=f"{label}: p99")
        for r in rows:
            ax.annotate(f"{r['p50']:.1f}", (r["size"], r["p50"]), textcoords="offset points", xytext=(4, -10),
                        fontsize=8)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("posts in the catalogue")
    ax.set_ylabel("ms per request (one thread, in process)")
    ax.set_title("Cost per request by catalogue size")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _parts(p: dict) -> str:
    return " / ".join(f"{p[k]:.2f}" for k in ("state as of t", "candidates", "assemble", "catboost", "exclude+top_k"))


def cost_one(args) -> None:
    import gc
    import json

    engine = _load(args.models, retrieval=args.mode)
    state = engine.state
    started = time.perf_counter()
    _grow(engine, args.size, args.jitter, args.seed)
    gc.collect()
    grow = time.perf_counter() - started
    rng = np.random.default_rng(1)
    users = rng.choice(state.snapshot.user_ids, size=args.requests)
    if args.at == "latest":
        times = np.full(args.requests, state.latest_event + 60)
        warm = 10
    else:  # past moments, as bench.serving asks: the hour changes from request to request
        split = engine.manifest.data["split"]
        times = rng.integers(int(split["test_start"]), int(split["end"]), size=args.requests)
        warm = args.requests
    for u, t in zip(users[:warm], times[:warm], strict=True):  # warm up (the hourly sources)
        engine.recommend("test", int(u), int(t), 5)
    ms, sizes = [], []
    for u, t in zip(users, times, strict=True):
        t = int(t)
        started = time.perf_counter()
        engine.recommend("test", int(u), t, 5)
        ms.append((time.perf_counter() - started) * 1000)
        if args.mode == "candidates":
            user, posts = state.at(state.user_row(int(u)), t)
            sizes.append(len(engine.candidates("test", user, t, len(posts.topic))))
    from bench.serving import profile

    parts = profile(engine, list(zip(users.tolist(), times.tolist(), strict=True)), args.requests)
    rss = _rss_mb()  # before full scoring's arrays, which the recall below makes
    recall = None
    if args.mode == "candidates" and args.recall:
        recall = _recall_of_full(engine, users[:args.recall], times[:args.recall])
    print(json.dumps({"size": args.size, "mode": args.mode, "p50": float(np.median(ms)),
                      "p99": float(np.quantile(ms, 0.99)), "parts": parts,
                      "candidates": int(np.median(sizes)) if sizes else state.n_posts,
                      "rss_mb": rss, "grow_s": grow, "jitter": args.jitter, "recall": recall}))


def _grow(engine: Recommender, size: int, jitter: float, seed: int) -> None:
    """Grow the engine's catalogue in memory to `size` posts: the artifact's posts repeated under new ids
    (their columns, and their vectors made distinct by `_jittered`), as if there from the base cut on."""
    from app.features import PostView

    state = engine.state
    base = state.catalogue.frame
    if size <= base.n:
        return
    reps = np.resize(np.arange(base.n), size - base.n)
    p = base.posts
    rng = np.random.default_rng(seed)
    view = PostView(p.static[reps], p.counters[:0], p.text[reps], _jittered(p.vec[reps], jitter, rng),
                    _jittered(p.tfidf_vec[reps], jitter, rng), p.topic[reps], _jittered(p.cf[reps], jitter, rng))
    ids = base.ids.max() + 1 + np.arange(size - base.n)
    state.add_posts(pd.DataFrame({c.POST_ID: ids, c.TEXT: "", c.TOPIC: ""}), view, born=state.base_as_of)


def searched(args) -> None:
    """How many favourite topics get faiss taste searches (`Budget.searched`): per value, the candidates'
    recall of full scoring's top 5 (the same engine) and the candidates step's p50, on the same requests:
    at the moment after the latest event, and at held-out moments from the database. Only topics held in
    a faiss index are searched, so a catalogue below `exact_below` posts a topic shows no difference."""
    from dataclasses import replace

    if min(args.values) < 0 or args.requests < 1 or args.jitter < 0:
        sys.exit(f"error: --values and --jitter must not be negative and --requests at least 1 "
                 f"(got --values {args.values}, --jitter {args.jitter}, --requests {args.requests})")
    engine = _load(args.models, retrieval="candidates")
    _grow(engine, args.size, args.jitter, args.seed)
    state, retriever = engine.state, engine.retriever
    kept = retriever.budget
    rng = np.random.default_rng(1)
    latest = [(int(u), int(state.latest_event + 60)) for u in rng.choice(state.snapshot.user_ids, size=args.requests)]
    held = _requests(args.db, engine, args.requests, args.seed)
    held = list(zip(held[c.USER_ID].astype(int).tolist(), held["ts"].astype(int).tolist(), strict=True))
    rows = []
    for label, requests in (("latest", latest), ("held-out", held)):
        tops = _full_tops(engine, requests)
        users = []  # each request's user as of t and catalogue size, once for every value
        for u, t in requests:
            user, posts = state.at(state.user_row(u), t)
            users.append((user, len(posts.topic)))
        found = {v: [0, 0, [], []] for v in args.values}
        for rnd in range(2):  # the first round warms the hourly sources; the second is timed
            for v in args.values:
                retriever.budget = replace(kept, searched=v)
                for (_, t), top, (user, n) in zip(requests, tops, users, strict=True):
                    started = time.perf_counter()
                    got = engine.candidates("test", user, t, n)
                    ms = (time.perf_counter() - started) * 1000
                    if rnd:
                        f = found[v]
                        f[0] += len(top & set(engine.post_ids[got].tolist()))
                        f[1] += len(top)
                        f[2].append(ms)
                        f[3].append(len(got))
        retriever.budget = kept
        for v, (hit, total, ms, sizes) in found.items():
            rows.append(f"| {label} | {v}{' (the default)' if v == kept.searched else ''} | {hit / max(total, 1):.4f} "
                        f"| {np.median(ms):.2f} | {np.median(sizes):.0f} |")
    topics = sum(index.index is not None for index in retriever.topics)
    _append("Favourite topics searched in faiss (`Budget.searched`)",
            f"Artifact {args.models} with {state.n_posts:,} posts ({topics} of {len(retriever.topics)} topics in a "
            f"faiss index); model `test`; {args.requests} requests at the moment after the latest event and "
            f"{args.requests} held-out requests (`training.evaluate.sample_requests`, seed {args.seed}) from "
            f"{masked(args.db)}; recall: the share of full scoring's top 5 (every post scored by the same engine) "
            "the candidates hold; the candidates step timed in process, one thread, on a second pass over the "
            "same requests.\n\n| requests | searched | recall of full top 5 | candidates p50 ms | candidates median |"
            "\n|---|---|---|---|---|\n" + "\n".join(rows) + "\n")


def _jittered(vecs: np.ndarray, jitter: float, rng: np.random.Generator) -> np.ndarray:
    """Copies of the artifact's unit vectors made distinct posts of the same themes: Gaussian noise of
    `jitter` times each dimension's spread, back to unit length; zero rows (no collaborative vector) stay
    zero. Exact copies are no catalogue a service meets, and an IVF index searched them 2.2x slower than
    distinct vectors while scanning as many codes (a throwaway check, 2026-12-01: 158 vs 70 us)."""
    if not jitter:
        return vecs
    out = vecs + (jitter * vecs.std(axis=0) * rng.standard_normal(vecs.shape)).astype(np.float32)
    norm = np.linalg.norm(out, axis=1, keepdims=True)
    has = vecs.any(axis=1, keepdims=True)
    return np.where(has, out / np.where(norm > 0, norm, 1), 0).astype(np.float32)


def _full_tops(engine: Recommender, requests: list[tuple[int, int]]) -> list[set[int]]:
    """Full scoring's top 5 (every post scored by the same engine and state) at each (user, t)."""
    from dataclasses import replace

    candidates_policy = engine.policy
    engine.policy = replace(candidates_policy, retrieval="full")
    try:
        return [set(engine.recommend("test", u, t, 5).post_ids.tolist()) for u, t in requests]
    finally:
        engine.policy = candidates_policy


def _recall_of_full(engine: Recommender, users: np.ndarray, times: np.ndarray) -> float:
    """Share of full scoring's top 5 (every post scored, the same engine and state) that the candidates
    hold, over the given requests."""
    state = engine.state
    requests = [(int(u), int(t)) for u, t in zip(users, times, strict=True)]
    hits = total = 0
    for (u, t), top in zip(requests, _full_tops(engine, requests), strict=True):
        user, posts = state.at(state.user_row(u), t)
        ids = engine.post_ids[engine.candidates("test", user, t, len(posts.topic))]
        hits += len(top & set(ids.tolist()))
        total += len(top)
    return hits / max(total, 1)


def _rss_mb() -> float:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


# ------------------------------------------------------------------ fresh share
def fresh(args) -> None:
    """Expected hitrate@5 and the share of screens holding a fresh post, by FRESH_SHARE."""
    from training.world.model import World

    world = World.load(args.world)
    engines = {s: _load(args.models, fresh_share=s, fresh_hours=args.fresh_hours, fresh_views=args.fresh_views)
               for s in args.shares}
    db = make_engine(args.db)
    for e in engines.values():
        catch_up(db, e.state)
    db.dispose()
    any_engine = next(iter(engines.values()))
    requests = _requests(args.db, any_engine, args.requests, args.seed)
    out = {s: {"exp": [], "fresh": []} for s in args.shares}
    for u, t in zip(requests[c.USER_ID].to_numpy(), requests["ts"].to_numpy(), strict=True):
        p = _truth(world, int(u), int(t))
        for s, e in engines.items():
            got = e.recommend("test", int(u), int(t), 5).post_ids
            out[s]["exp"].append(expected_hit(p[world.post_index(got)]))
            rows = e.state.post_rows(got)
            _, posts = e.state.at(-1, int(t))
            out[s]["fresh"].append(float(e._fresh(rows, posts, int(t)).any()))
    base = np.array(out[args.shares[0]]["exp"])
    lines = [f"{len(requests)} held-out requests, model `test`, fresh = fewer than {args.fresh_views} views or "
             f"younger than {args.fresh_hours} h.", "",
             "| FRESH_SHARE | expected hitrate@5 | difference to the first row (paired) | screens with a fresh post |",
             "|---|---|---|---|"]
    for s in args.shares:
        exp = np.array(out[s]["exp"])
        lines.append(f"| {s} | {_ci(exp)} | {_ci(exp - base)} | {np.mean(out[s]['fresh']):.3f} |")
    _append("Fresh-post exposure sweep", "\n".join(lines))


# ------------------------------------------------------------------ young posts
def young(args) -> None:
    """On a world whose posts are released over its days: how many training rows show a post released
    less than 24 h before, and how well each ranker picks among such posts at held-out requests."""
    from sqlalchemy import text

    from training.world.model import World

    day = 86_400
    engine = _load(args.models, retrieval="full")
    db = make_engine(args.db)
    catch_up(db, engine.state)
    world = World.load(args.world)
    split = engine.manifest.data["split"]
    release = world.post_release[world.post_index(engine.post_ids)]
    with db.connect() as conn:
        feed = pd.read_sql_query(text("SELECT post_id, timestamp FROM feed_data WHERE action = 'view'"), conn)
    db.dispose()
    ts = ((pd.to_datetime(feed["timestamp"]) - pd.Timestamp("1970-01-01")) // pd.Timedelta(seconds=1)).to_numpy()
    age = ts - world.post_release[world.post_index(feed[c.POST_ID].to_numpy())]
    lines = []
    for name, lo, hi in (("training", "train_start", "val_start"), ("validation", "val_start", "test_start")):
        m = (ts >= int(split[lo])) & (ts < int(split[hi]))
        lines.append(f"- {name} window: {m.sum():,} views, {(m & (age < day)).sum():,} of them "
                     f"({(m & (age < day)).sum() / max(m.sum(), 1):.4f}) of a post released less than 24 h before")
    requests = _requests(args.db, engine, args.requests, args.seed)
    out = {k: [] for k in ("test", "control", "popular", "random", "oracle")}
    pools, model_top, oracle_top = [], [], []
    rng = np.random.default_rng(args.seed)
    for u, t in zip(requests[c.USER_ID].to_numpy(), requests["ts"].to_numpy(), strict=True):
        u, t = int(u), int(t)
        user, posts = engine.state.at(engine.state.user_row(u), t)
        if user is None:
            continue
        n = len(posts.topic)
        released = engine.eligible(np.arange(n), user, t, n) & (release <= t)
        pool = np.flatnonzero(released & (release > t - day))
        if len(pool) < 6:
            continue
        p = np.where(release > t, 0.0, world.all_posts_probability(u, t)[world.post_index(engine.post_ids)])
        pools.append(len(pool))
        for name in ("test", "control"):
            s = engine.model_scores(name, user, posts, t)
            out[name].append(expected_hit(p[pool[np.argsort(-s[pool], kind="stable")[:5]]]))
            if name == "test":
                model_top.append(np.isin(np.argsort(-np.where(released, s, -np.inf))[:5], pool).any())
        pop = engine.popular_scores(t)[:n]
        out["popular"].append(expected_hit(p[pool[np.argsort(-pop[pool], kind="stable")[:5]]]))
        out["random"].append(expected_hit(p[rng.choice(pool, 5, replace=False)]))
        out["oracle"].append(expected_hit(np.sort(p[pool])[-5:]))
        oracle_top.append(np.isin(np.argsort(-np.where(released, p, 0.0))[:5], pool).any())
    lines += ["", f"{len(pools)} of {len(requests)} held-out requests with at least 6 eligible posts released in the "
              f"24 h before (median {np.median(pools):.0f}); each ranker's five best of those posts:", "",
              "| ranker | expected hitrate@5 among young posts | difference to popularity (paired) |", "|---|---|---|"]
    base = np.array(out["popular"])
    lines += [f"| {k} | {_ci(np.array(v))} | {_ci(np.array(v) - base)} |" for k, v in out.items()]
    lines.append(f"\nScreens of the test model's full ranking holding a post younger than 24 h: "
                 f"{np.mean(model_top):.3f}; the oracle's top 5 holding one: {np.mean(oracle_top):.3f}.")
    _append("Young posts: in training, and ranked among themselves", "\n".join(lines))


# ------------------------------------------------------------------ closed-loop runs compared
def simcompare(args) -> None:
    """Runs of `training simulate --json` with one seed (the same users at the same moments), compared
    with the first: expected hit rate, screens with a young post, inserted posts viewed and liked."""
    import json

    runs = [json.loads(Path(p).read_text()) for p in args.runs]
    lines = ["| run | expected hitrate@5, all days | difference to the first (paired) | screens with a post "
             "younger than 24 h | inserted posts viewed / liked / inserted | oracle |", "|---|---|---|---|---|---|"]
    first = runs[0]
    for path, run in zip(args.runs, runs, strict=True):
        exp = np.concatenate([np.array(d, float) for d in run["expected"]])
        # paired on the days where both runs answered every request (an error shifts the order)
        pairs = [np.array(a, float) - np.array(b, float) for a, b, da, db in
                 zip(run["expected"], first["expected"], run["days"], first["days"], strict=True)
                 if len(a) == len(b) and da["errors"] == db["errors"] == 0]
        young_share = np.mean(np.concatenate([np.array(d, float) for d in run["young"]]))
        last = run["days"][-1]
        oracle = np.mean([d["oracle_expected"] for d in run["days"]])
        lines.append(f"| {path} | {_ci(exp)} | {_ci(np.concatenate(pairs))} ({len(pairs)} days) | {young_share:.3f} | "
                     f"{last['new_posts_viewed']} / {last['new_posts_liked']} / {last['posts_inserted_total']} | "
                     f"{oracle:.4f} |")
    lines.append("\nPer day (expected hitrate@5, all groups):\n")
    lines.append("| day | " + " | ".join(Path(p).stem for p in args.runs) + " |")
    lines.append("|---|" + "---|" * len(runs))
    for i, d in enumerate(first["days"]):
        lines.append(f"| {d['day']} | " + " | ".join(
            f"{r['days'][i]['expected_hitrate']} (young {r['days'][i]['shares']['screens_with_young']}, "
            f"viewed {r['days'][i]['new_posts_viewed']})" for r in runs) + " |")
    _append("Closed-loop runs with new posts", "\n".join(lines))


def ivf(args) -> None:
    """The faiss IVF index's list count against search time and recall, on the artifact's post vectors
    grown to each size with noise (each copy a post of its own near the original): per rule, the seconds
    to build, microseconds per single-query search (nprobe as the service's), and recall@k against
    exact inner-product search over the same vectors."""
    import faiss

    from app.candidates import _ivf, ivf_lists

    if min(args.sizes) < args.k or min(args.queries, args.k, args.nprobe) < 1 or args.noise < 0:
        sys.exit(f"error: --queries, --k and --nprobe must be at least 1, every --sizes at least --k, --noise not "
                 f"negative (got --sizes {args.sizes}, --queries {args.queries}, --k {args.k}, --nprobe "
                 f"{args.nprobe}, --noise {args.noise})")
    faiss.omp_set_num_threads(1)
    engine = _load(args.models)
    real = np.ascontiguousarray(engine.state.catalogue.frame.posts.vec, np.float32)
    rules = {"2 sqrt(n), at most 1,024 (before 2026-12-01)": lambda n: int(min(1024, max(16, 2 * np.sqrt(n)))),
             "2 sqrt(n), at most 4,096 (the service's)": ivf_lists,
             "4 sqrt(n), at most 4,096": lambda n: int(min(4096, max(16, 4 * np.sqrt(n))))}
    rng = np.random.default_rng(args.seed)
    rows = []
    for n in args.sizes:
        vecs = real[rng.integers(0, len(real), n)]
        vecs = (vecs + args.noise * vecs.std() * rng.standard_normal(vecs.shape).astype(np.float32)).astype(np.float32)
        queries = vecs[rng.integers(0, n, args.queries)] + np.float32(0.01)
        exact = np.argsort(-(vecs @ queries.T), axis=0)[:args.k].T
        for label, rule in rules.items():
            started = time.perf_counter()
            index = _ivf(vecs, args.nprobe, nlist=rule(n))
            build = time.perf_counter() - started
            for q in queries[:5]:
                index.search(q[None], args.k)
            started = time.perf_counter()
            found = [index.search(q[None], args.k)[1][0] for q in queries]
            us = (time.perf_counter() - started) / len(queries) * 1e6
            recall = np.mean([len(np.intersect1d(f, e)) / args.k for f, e in zip(found, exact, strict=True)])
            rows.append(f"| {n:,} | {label} | {rule(n):,} | {build:.1f} | {us:.0f} | {recall:.3f} |")
            print(rows[-1], flush=True)
    _append("IVF lists: search time and recall", "\n".join([
        f"`python -m bench.catalogue ivf --models {args.models.name} --sizes {' '.join(map(str, args.sizes))}`: "
        f"the artifact's {len(real):,} post vectors (the sentence space, {real.shape[1]} dimensions) drawn "
        f"with replacement to each size plus Gaussian noise ({args.noise} of their spread), one faiss "
        f"IndexIVFScalarQuantizer per size and rule as the service builds it (8-bit codes, 32 training "
        f"vectors a list, nprobe {args.nprobe}); {args.queries} single-query searches for the {args.k} nearest, "
        f"recall against exact search over the same vectors.", "",
        "| vectors | lists | nlist | build s | search us | recall@k |", "|---|---|---|---|---|---|", *rows]))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.catalogue")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("simcompare").add_argument("--runs", type=Path, nargs="+", required=True)
    p = sub.add_parser("ivf")
    p.add_argument("--models", type=Path, default=PROJECT_ROOT / "models")
    p.add_argument("--sizes", type=int, nargs="+", default=[10_000, 60_000, 150_000, 512_000, 1_000_000])
    p.add_argument("--queries", type=int, default=100)
    p.add_argument("--k", type=int, default=40)
    p.add_argument("--nprobe", type=int, default=24)
    p.add_argument("--noise", type=float, default=0.3)
    p.add_argument("--seed", type=int, default=0)
    for name in ("recall", "cost", "cost-one", "newposts", "fresh", "young", "searched"):
        p = sub.add_parser(name)
        p.add_argument("--db", default=f"sqlite:///{PROJECT_ROOT / 'data' / 'feed.db'}")
        p.add_argument("--models", type=Path, default=PROJECT_ROOT / "models")
        p.add_argument("--seed", type=int, default=0)
        if name in ("recall", "fresh", "young"):
            p.add_argument("--world", type=Path, default=PROJECT_ROOT / "data" / "world.npz")
            p.add_argument("--requests", type=int, default=1000)
        if name == "recall":
            p.add_argument("--models-ranked", nargs="+", default=["control", "test"])
        if name == "cost":
            p.add_argument("--posts", type=int, nargs="+", default=[7023, 70_000, 1_000_000])
            p.add_argument("--requests", type=int, default=300)
            p.add_argument("--full-max", type=int, default=100_000, help="largest catalogue scored in full")
            p.add_argument("--plot", type=Path, default=PROJECT_ROOT / "docs" / "catalogue_cost.png",
                           help="where the cost curve goes (PNG)")
        if name in ("cost", "cost-one"):
            p.add_argument("--at", choices=("latest", "held-out"), default="latest",
                           help="requests at the moment after the latest event, or at moments of the held-out window")
            p.add_argument("--jitter", type=float, default=0.3,
                           help="noise on the grown posts' vectors, times each dimension's spread (0: exact copies)")
            p.add_argument("--recall", type=int, default=0,
                           help="requests on which the candidates' recall of full scoring's top 5 is measured")
        if name == "cost-one":
            p.add_argument("--size", type=int, required=True)
            p.add_argument("--mode", choices=("candidates", "full"), required=True)
            p.add_argument("--requests", type=int, default=300)
        if name == "searched":
            p.add_argument("--size", type=int, default=0, help="grow the catalogue to this many posts first")
            p.add_argument("--jitter", type=float, default=0.3)
            p.add_argument("--requests", type=int, default=200)
            p.add_argument("--values", type=int, nargs="+", default=[7, 3, 2, 1])
        if name == "newposts":
            p.add_argument("--inserts", type=int, default=50)
            p.add_argument("--poll", type=float, default=0.5)
            p.add_argument("--gap", type=float, default=0.2)
        if name == "fresh":
            p.add_argument("--shares", type=float, nargs="+", default=[0.0, 0.1, 0.2, 0.4])
            p.add_argument("--fresh-hours", type=float, default=24.0)
            p.add_argument("--fresh-views", type=int, default=20)
    args = parser.parse_args(argv)
    if args.command in ("cost", "cost-one") and (args.jitter < 0 or args.recall < 0):
        sys.exit(f"error: --jitter and --recall must not be negative (got --jitter {args.jitter}, "
                 f"--recall {args.recall})")
    from threadpoolctl import threadpool_limits

    threadpool_limits(limits=1, user_api="blas")  # as the service does (app/main.py)
    {"recall": recall, "cost": cost, "cost-one": cost_one, "newposts": newposts, "fresh": fresh, "young": young,
     "simcompare": simcompare, "ivf": ivf, "searched": searched}[args.command](args)


if __name__ == "__main__":
    main()
