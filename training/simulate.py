"""Simulated users driving the live service: the world's timeline continues after its data ends.

Each simulated day, a sample of users opens the feed once, at an hour drawn from the world's
activity profile. The service is asked for recommendations at that moment (`time=`), the user sees
them one after another, and likes each with the world's true probability. Views and likes go to
`feed_data` as the platform writes them: target 1 on a view followed by its like seconds later.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from datetime import UTC, datetime

import httpx
import numpy as np
import pandas as pd
from sqlalchemy import Engine
from tqdm import tqdm

from app import columns as c
from app.tables import feed_data
from training import data
from training.bulk import epoch_to_datetime, write_frame
from training.metrics import expected_hit
from training.world import reference as ref
from training.world.model import World

DAY = 86_400


@dataclass
class SimConfig:
    days: int = 3
    users_per_day: int = 1000
    limit: int = 5
    seed: int = 0
    max_rps: float = 200.0  # the simulation never asks faster than this
    timeout: float = 5.0


@dataclass
class SimSummary:
    requests: int = 0
    errors: int = 0
    views: int = 0
    likes: int = 0
    by_group: dict = field(default_factory=lambda: {g: {"requests": 0, "views": 0, "likes": 0}
                                                    for g in ("control", "test")})
    first_moment: str = ""
    last_moment: str = ""
    seconds: float = 0.0


def day_requests(world: World, day_start: int, n: int, rng: np.random.Generator) -> pd.DataFrame:
    """n distinct users with the moment each opens the feed that day, in time order."""
    users = rng.choice(world.user_ids, size=min(n, len(world.user_ids)), replace=False)
    hours = rng.choice(24, size=len(users), p=ref.hour_activity())
    ts = day_start + hours * 3600 + rng.integers(0, 3600, size=len(users))
    return pd.DataFrame({c.USER_ID: users, "ts": ts}).sort_values("ts", kind="stable").reset_index(drop=True)


def reactions(world: World, user_id: int, post_ids: np.ndarray, ts: int,
              rng: np.random.Generator) -> tuple[pd.DataFrame, float]:
    """Feed rows for one screen (views seconds apart, likes as the world decides), and the true
    probability that the screen gets at least one like."""
    if len(post_ids) == 0:
        return pd.DataFrame(columns=list(c.FEED_COLUMNS)), 0.0
    gaps = rng.integers(3, 30, size=len(post_ids))  # seconds spent on each post before the next
    view_ts = ts + np.concatenate([[0], np.cumsum(gaps[:-1])])
    p = world.like_probability(np.full(len(post_ids), user_id), post_ids, view_ts)
    liked = rng.random(len(p)) < p
    like_ts = view_ts[liked] + rng.exponential(40.0, size=int(liked.sum())).astype(np.int64) + 1
    n_views, n_likes = len(post_ids), int(liked.sum())
    return pd.DataFrame({
        c.TIMESTAMP: np.concatenate([view_ts, like_ts]),
        c.USER_ID: np.full(n_views + n_likes, user_id),
        c.POST_ID: np.concatenate([post_ids, post_ids[liked]]),
        c.ACTION: [c.VIEW] * n_views + [c.LIKE] * n_likes,
        c.TARGET: pd.array(list(liked.astype(int)) + [None] * n_likes, dtype="Int64"),
    }), expected_hit(p)


def simulate(engine: Engine, client: httpx.Client, world: World, config: SimConfig) -> SimSummary:
    rng = np.random.default_rng(config.seed)
    with engine.connect() as conn:
        _, end = data.data_range(conn)
    first_day = -(-end // DAY) * DAY  # the next midnight after the data
    summary = SimSummary()
    started = time.perf_counter()
    min_gap = 1.0 / config.max_rps
    for day in range(config.days):
        plan = day_requests(world, first_day + day * DAY, config.users_per_day, rng)
        rows = []
        for u, ts in tqdm(zip(plan[c.USER_ID].to_numpy(), plan["ts"].to_numpy(), strict=True), total=len(plan),
                          desc=f"day {day + 1}/{config.days}", disable=None):
            sent = time.perf_counter()
            moment = datetime.fromtimestamp(int(ts), tz=UTC).isoformat()
            try:
                r = client.get("/post/recommendations/", params={"id": int(u), "time": moment, "limit": config.limit},
                               timeout=config.timeout)
                r.raise_for_status()
                body = r.json()
            except (httpx.HTTPError, ValueError):
                summary.errors += 1
                continue
            posts = np.array([p["id"] for p in body["recommendations"]], dtype=np.int64)
            screen, expected = reactions(world, int(u), posts, int(ts), rng)
            rows.append(screen)
            summary.requests += 1
            n_likes = int((screen[c.ACTION] == c.LIKE).sum())
            group = summary.by_group.setdefault(body["exp_group"], {"requests": 0, "views": 0, "likes": 0})
            group["requests"] += 1
            group["expected_hits"] = group.get("expected_hits", 0.0) + expected
            group["hits"] = group.get("hits", 0) + int(n_likes > 0)
            group["views"] += len(posts)
            group["likes"] += n_likes
            summary.views += len(posts)
            summary.likes += n_likes
            pause = min_gap - (time.perf_counter() - sent)
            if pause > 0:
                time.sleep(pause)
        if rows:
            frame = pd.concat(rows, ignore_index=True)
            frame[c.TIMESTAMP] = epoch_to_datetime(frame[c.TIMESTAMP].to_numpy()).to_numpy()
            with engine.begin() as conn:  # a day's reactions land together
                write_frame(conn, feed_data, frame)
    for group in summary.by_group.values():  # the truth the A/B report should find
        if group["requests"]:
            group["expected_hitrate"] = round(group.pop("expected_hits", 0.0) / group["requests"], 4)
            group["hitrate"] = round(group.pop("hits", 0) / group["requests"], 4)
    summary.first_moment = datetime.fromtimestamp(first_day, tz=UTC).isoformat()
    summary.last_moment = datetime.fromtimestamp(first_day + config.days * DAY, tz=UTC).isoformat()
    summary.seconds = round(time.perf_counter() - started, 1)
    return summary
