"""Users without history on a demo world: each cold ranker, its screen by score or spread over topics,
against the best the profile alone allows (`World.profile_best`) under the world's truth.

    python -m bench.cold_start --db sqlite:///data/quality/seed1/world.db --models data/quality/seed1/models \
        --world data/quality/seed1/world.npz --requests 1000

The held-out requests are those `training evaluate` draws (same seed), each user's history hidden. Also
the log's own evidence for spreading: how much more often two views of one user in the same topic are both
liked than two in different topics, against the same ratio when each like is drawn from its post's rate.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import pandas as pd

from app import columns as c
from app.db import make_engine
from app.engine import LIKE_RATE, POPULAR, SEGMENT_POPULAR, Recommender, spread_top_k, top_k
from training import data
from training.evaluate import PROFILE_SAMPLE, PROFILE_SAMPLE_SEED, load_world_for, read_truth, sample_requests
from training.metrics import expected_hit, hit_at

RANKERS = (POPULAR, SEGMENT_POPULAR, LIKE_RATE, "control", "test")


def topic_colike(views: pd.DataFrame, topic: np.ndarray, seed: int = 0) -> dict[str, float]:
    """P(both liked) of two views of one user in the same topic over that of two in different topics: on
    the log, and with each like drawn from its post's own rate (what topic means alone would give)."""
    def ratio(liked: np.ndarray) -> float:
        d = pd.DataFrame({"u": views[c.USER_ID].to_numpy(), "t": topic, "y": liked})
        g = d.groupby(["u", "t"]).y.agg(["sum", "count"])
        same = (g["sum"] * (g["sum"] - 1)).sum() / max((g["count"] * (g["count"] - 1)).sum(), 1)
        per_user = g.groupby(level=0).sum()
        sq = (g ** 2).groupby(level=0).sum()
        diff = (per_user["sum"] ** 2 - sq["sum"]).sum() / max((per_user["count"] ** 2 - sq["count"]).sum(), 1)
        return float(same / diff)
    y = views[c.TARGET].to_numpy(np.int64)
    rate = views.groupby(c.POST_ID)[c.TARGET].transform("mean").to_numpy()
    drawn = (np.random.default_rng(seed).random(len(y)) < rate).astype(np.int64)
    return {"log": round(ratio(y), 3), "posts' rates alone": round(ratio(drawn), 3)}


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.cold_start")
    parser.add_argument("--db", required=True)
    parser.add_argument("--models", type=Path, required=True)
    parser.add_argument("--world", type=Path, required=True)
    parser.add_argument("--requests", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=0, help="the requests `training evaluate --seed` draws")
    args = parser.parse_args()
    engine = Recommender.load(args.models)
    split = engine.manifest.data["split"]
    lo, end = int(split["test_start"]), int(split["end"])
    db = make_engine(args.db)
    with db.connect() as conn:
        requests = sample_requests(conn, lo, end, args.requests, args.seed)
        truth = read_truth(conn, requests, end, 24 * 3600)
        world = load_world_for(args.world, data.read_users(conn)[c.USER_ID].to_numpy())
        views = data.sample_views(conn, int(split["val_start"]), lo, max_rows=2_000_000)
    db.dispose()
    if world is None:
        raise SystemExit(f"{args.world} is not the world behind {args.db}")
    state = engine.state
    sample = np.random.default_rng(PROFILE_SAMPLE_SEED).choice(
        len(world.user_ids), min(PROFILE_SAMPLE, len(world.user_ids)), replace=False)
    expected: dict[str, list] = {}
    shown: dict[str, list] = {}
    for i, (u, t) in enumerate(zip(requests[c.USER_ID].to_numpy(), requests["ts"].to_numpy(), strict=True)):
        u, t = int(u), int(t)
        cold, posts = state.at(state.user_row(u), t, cold=True)
        p = world.all_posts_probability(u, t)
        cand, liked = truth.shown[i], truth.shown_liked[i]
        rows = state.post_rows(cand)
        for ranker in RANKERS:
            s = engine.scores_of(ranker, cold, posts, t)
            for spread in (False, True):
                name = ranker + (" spread" if spread else "")
                top = (spread_top_k(s, engine.post_ids, posts.topic, 5) if spread
                       else top_k(s, engine.post_ids, 5))
                expected.setdefault(name, []).append(expected_hit(p[world.post_index(engine.post_ids[top])]))
                if len(cand) > 5 and liked:
                    order = (spread_top_k(s[rows], cand, posts.topic[rows], 5) if spread
                             else top_k(s[rows], cand, 5))
                    shown.setdefault(name, []).append(hit_at(cand[order], liked, 5))
        expected.setdefault("the profile's best", []).append(
            expected_hit(p[world.post_index(world.profile_best(u, t, 5, sample))]))
    lines = [f"Requests: {len(requests)} (shown-set eligible: {len(shown[POPULAR])}), each user's history hidden.",
             "", "| cold ranker | expected hitrate@5 | shown-set hitrate@5 |", "|---|---|---|"]
    for name, v in expected.items():
        lines.append(f"| {name} | {np.mean(v):.4f} | " + (f"{np.mean(shown[name]):.4f}" if name in shown else "")
                     + " |")
    topic = np.array([engine.posts[int(p)]["topic"] for p in views[c.POST_ID]])
    lines += ["", f"Two views of one user both liked, same topic over different topics (validation window, "
                  f"{len(views)} views): {topic_colike(views, topic)}"]
    print("\n".join(lines))


if __name__ == "__main__":
    main()
