"""Simulated users driving the live service: the world's timeline continues after its data ends.

Each simulated day, a sample of users opens the feed once, at an hour drawn from the world's
activity profile. The service is asked for recommendations at that moment (`time=`), the user sees
them one after another, and likes each with the world's true probability — never a post they already
liked (a like is once). Views and likes reach `feed_data` as they happen: every event waits in a
queue until the simulated clock passes its moment, so the database receives the feed in time order
and a request at t finds exactly the events before t. Before asking for a user whose own earlier
events are not yet known to be applied, the simulation waits for the service's state to reach them
(`/ready`), as a real user's next screen comes long after their last like.

Per simulated day it reports requests, observed and expected hit rate per group, and three staleness
figures over the served posts: already liked before t, viewed in the 72 hours before t, and on the same
user's previous screen. With `new_posts_per_day`, also the share of screens holding a post inserted in
the previous 24 hours, and how many of the inserted posts had been viewed and liked by the day's end.
"""

from __future__ import annotations

import heapq
import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime

import httpx
import numpy as np
import pandas as pd
from sqlalchemy import Engine, func, insert, select
from tqdm import tqdm

from app import columns as c
from app.feed_events import max_seq
from app.tables import feed_data, post_text_df
from training import data
from training.bulk import epoch_to_datetime, write_frame
from training.metrics import bootstrap_ci, expected_hit
from training.world import reference as ref
from training.world.model import World

DAY = 86_400
RECENT_SECONDS = 72 * 3600  # the staleness figure "viewed in the previous 72 hours"


@dataclass
class SimConfig:
    days: int = 3
    users_per_day: int = 1000
    limit: int = 5
    seed: int = 0
    max_rps: float = 200.0  # the simulation never asks faster than this
    timeout: float = 5.0
    sync_timeout: float = 10.0  # longest wait for the service to apply a user's earlier events
    retrain_every: int = 0  # days between retrainings (0: never); needs `retrainer`
    swap_timeout: float = 900.0  # longest wait for the service to serve a promoted version
    new_posts_per_day: int = 0  # the world's held-back posts inserted into post_text_df, at moments of the day
    young_hours: float = 24.0  # a screen "holds a young post" when one was inserted this many hours before


@dataclass
class DayReport:
    day: str
    requests: int = 0
    errors: int = 0
    served: int = 0  # posts served
    liked_before: int = 0  # of which the user had liked before t
    viewed_recently: int = 0  # viewed in the 72 hours before t
    repeated: int = 0  # on the same user's previous screen
    served_hidden: int = 0  # served although the service's rules, as the simulation knows them, hide it
    hidden_by_rules: int = 0  # posts the rules on viewed posts hid (not liked), summed over the screens
    groups: dict = field(default_factory=dict)
    versions: list[str] = field(default_factory=list)  # model versions that served the day
    retrain: dict | None = None  # the retraining that ran before the day, if any
    expected_hitrate: float | None = None  # all groups
    expected_ci95: tuple | None = None
    oracle_expected: float | None = None  # the true best screen of posts the user has not liked
    # the true best screen of the posts the service may show: not liked, and not excluded by its rules on
    # viewed posts (`EXCLUDE_VIEWED_HOURS`, `EXCLUDE_LAST_VIEWS`, read from `/model`)
    oracle_same_rules: float | None = None
    posts_inserted: int = 0  # held-back posts inserted into post_text_df that day
    screens_with_young: int = 0  # screens holding a post inserted within young_hours before the request
    new_post_views: int = 0  # views that day of posts the simulation inserted
    new_post_likes: int = 0
    new_posts_viewed: int = 0  # inserted posts viewed at least once, from the first day to the end of this one
    new_posts_liked: int = 0  # inserted posts liked at least once, likewise
    posts_inserted_total: int = 0

    def shares(self) -> dict[str, float | None]:
        n = self.served
        out = {k: round(getattr(self, k) / n, 4) if n else None
               for k in ("liked_before", "viewed_recently", "repeated")}
        out["screens_with_young"] = round(self.screens_with_young / self.requests, 4) if self.requests else None
        return out


@dataclass
class SimSummary:
    requests: int = 0
    errors: int = 0
    views: int = 0
    likes: int = 0
    by_group: dict = field(default_factory=lambda: {g: {"requests": 0, "views": 0, "likes": 0}
                                                    for g in ("control", "test")})
    days: list[dict] = field(default_factory=list)
    staleness: dict = field(default_factory=dict)
    waits: int = 0  # requests that waited for the service to apply the user's earlier events
    expected: list[list[float]] = field(default_factory=list, repr=False)  # per day, per request, in plan order
    young: list[list[int]] = field(default_factory=list, repr=False)  # per day, per request: a young post shown
    first_moment: str = ""
    last_moment: str = ""
    seconds: float = 0.0


class _NewPosts:
    """The world's held-back posts, inserted into post_text_df when the simulated clock passes their moment."""

    def __init__(self, world: World, per_day: int, seed: int) -> None:
        self.ids = world.held_back_ids()
        if per_day and not len(self.ids):
            raise ValueError("the world holds no held-back posts: generate it with --held-back N")
        self.texts = world.held_back_text
        self.topics = np.asarray(c.TOPICS)[world.post_topic[world.post_index(self.ids)]] if len(self.ids) else []
        self.per_day = per_day
        self.rng = np.random.default_rng([seed, 2])  # apart from the plan: the same users come either way
        self.queue: list[tuple[int, int]] = []  # (moment, index into ids)
        self.next = 0
        self.inserted: dict[int, int] = {}  # post id -> moment inserted
        self.viewed: set[int] = set()  # inserted posts viewed at least once
        self.liked: set[int] = set()
        self.unreleased = np.zeros(len(world.post_ids), bool)
        if len(self.ids):
            self.unreleased[world.post_index(self.ids)] = True
        self.world = world

    def plan_day(self, day_start: int) -> None:
        k = min(self.per_day, len(self.ids) - self.next)
        moments = np.sort(day_start + self.rng.integers(0, DAY, size=k))
        self.queue.extend(zip(moments.tolist(), range(self.next, self.next + k), strict=True))
        self.next += k

    def insert_until(self, engine: Engine, t: int) -> int:
        due = [(m, i) for m, i in self.queue if m <= t]
        if not due:
            return 0
        self.queue = [(m, i) for m, i in self.queue if m > t]
        rows = [{c.POST_ID: int(self.ids[i]), c.TEXT: str(self.texts[i]), c.TOPIC: str(self.topics[i])}
                for _, i in due]
        with engine.begin() as conn:
            conn.execute(insert(post_text_df), rows)
        for m, i in due:
            self.inserted[int(self.ids[i])] = m
            self.unreleased[self.world.post_index(np.array([self.ids[i]]))[0]] = False
        return len(due)

    def react(self, screen: pd.DataFrame) -> tuple[int, int]:
        """(views, likes) of inserted posts in one screen's feed rows, remembered per post."""
        new = screen[screen[c.POST_ID].isin(list(self.inserted))] if self.inserted else screen.iloc[:0]
        views = new.loc[new[c.ACTION] == c.VIEW, c.POST_ID].astype(int).tolist()
        likes = new.loc[new[c.ACTION] == c.LIKE, c.POST_ID].astype(int).tolist()
        self.viewed.update(views)
        self.liked.update(likes)
        return len(views), len(likes)

    def young(self, posts: np.ndarray, t: int, seconds: float) -> bool:
        return any(t - seconds < self.inserted.get(int(p), -10**18) <= t for p in posts)


def day_requests(world: World, day_start: int, n: int, rng: np.random.Generator) -> pd.DataFrame:
    """n distinct users with the moment each opens the feed that day, in time order."""
    users = rng.choice(world.user_ids, size=min(n, len(world.user_ids)), replace=False)
    hours = rng.choice(24, size=len(users), p=ref.hour_activity())
    ts = day_start + hours * 3600 + rng.integers(0, 3600, size=len(users))
    return pd.DataFrame({c.USER_ID: users, "ts": ts}).sort_values("ts", kind="stable").reset_index(drop=True)


def reactions(world: World, user_id: int, post_ids: np.ndarray, ts: int, rng: np.random.Generator,
              liked_before: set[int] | None = None) -> tuple[pd.DataFrame, float]:
    """Feed rows for one screen (views seconds apart, likes as the world decides; a post the user
    already liked is not liked again), and the true probability that the screen gets at least one like."""
    if len(post_ids) == 0:
        return pd.DataFrame(columns=list(c.FEED_COLUMNS)), 0.0
    gaps = rng.integers(3, 30, size=len(post_ids))  # seconds spent on each post before the next
    view_ts = ts + np.concatenate([[0], np.cumsum(gaps[:-1])])
    p = world.like_probability(np.full(len(post_ids), user_id), post_ids, view_ts)
    if liked_before:
        p = np.where(np.isin(post_ids, list(liked_before)), 0.0, p)
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


class _Feed:
    """What users did, as the simulation knows it: likes and recent views per user (from the database
    at the start, then the simulation's own), and the queue of events not yet due."""

    def __init__(self, engine: Engine, start: int, rules: tuple[int, int] = (0, 0)) -> None:
        # rules: the service's exclusion of viewed posts, (seconds before t, last N views); the views
        # they reach back to before the start are read too: the window, then each user's last N before it
        self.rules = rules
        since = start - max(RECENT_SECONDS, rules[0])
        with engine.connect() as conn:
            likes = data.likes(conn)
            recent = conn.execute(
                select(feed_data.c.user_id, feed_data.c.post_id, data.epoch(feed_data.c.timestamp))
                .where(feed_data.c.action == c.VIEW, feed_data.c.timestamp >= data.to_datetime(since))
            ).all()
            earlier = _last_views(conn, since, rules[1]) if rules[1] else []
        self.liked: dict[int, dict[int, int]] = defaultdict(dict)  # user -> post -> first like second
        for u, p, ts in zip(likes[c.USER_ID].to_numpy(), likes[c.POST_ID].to_numpy(), likes["ts"].to_numpy(),
                            strict=True):
            self.liked[int(u)].setdefault(int(p), int(ts))
        self.viewed: dict[int, list[tuple[int, int]]] = defaultdict(list)  # user -> (second, post)
        for u, p, ts in recent:
            self.viewed[int(u)].append((int(ts), int(p)))
        self.earlier: dict[int, list[tuple[int, int]]] = defaultdict(list)  # user -> their last views before
        for u, p, ts in earlier:
            self.earlier[int(u)].append((int(ts), int(p)))
        self.queue: list[tuple[int, int, tuple]] = []  # (second, order, row)
        self._order = 0
        self.last_seq: dict[int, int] = {}  # user -> highest sequence number of their written events
        self.screens: dict[int, set[int]] = {}  # user -> the posts of their previous screen

    def push(self, rows: pd.DataFrame) -> None:
        for row in rows.itertuples(index=False):
            self._order += 1
            heapq.heappush(self.queue, (int(getattr(row, c.TIMESTAMP)), self._order, tuple(row)))

    def flush(self, engine: Engine, until: int | None) -> int:
        """Write the queued events before `until` (all if None) in time order; returns how many."""
        due = []
        while self.queue and (until is None or self.queue[0][0] < until):
            due.append(heapq.heappop(self.queue)[2])
        if not due:
            return 0
        frame = pd.DataFrame(due, columns=list(c.FEED_COLUMNS))
        for u, p, ts, action in zip(frame[c.USER_ID], frame[c.POST_ID], frame[c.TIMESTAMP], frame[c.ACTION],
                                    strict=True):
            if action == c.LIKE:
                self.liked[int(u)].setdefault(int(p), int(ts))
            else:
                self.viewed[int(u)].append((int(ts), int(p)))
        frame[c.TIMESTAMP] = epoch_to_datetime(frame[c.TIMESTAMP].to_numpy()).to_numpy()
        frame[c.TARGET] = frame[c.TARGET].astype("Int64")
        with engine.begin() as conn:
            write_frame(conn, feed_data, frame)
            seq = max_seq(conn)
        for u in frame[c.USER_ID].unique():
            self.last_seq[int(u)] = seq
        return len(frame)

    def liked_before(self, user: int, t: int) -> set[int]:
        return {p for p, ts in self.liked.get(user, {}).items() if ts < t}

    def viewed_since(self, user: int, lo: int, t: int) -> set[int]:
        return {p for ts, p in self.viewed.get(user, []) if lo <= ts < t}

    def hidden_views(self, user: int, t: int) -> set[int]:
        """The viewed posts the service leaves out of a screen at t under `rules` (beside the liked ones):
        viewed in the window before t, and the user's last N views before t however long ago."""
        seconds, last = self.rules
        out = self.viewed_since(user, t - seconds, t)
        if last:
            views = sorted(v for v in self.viewed.get(user, []) if v[0] < t)
            if len(views) < last:
                views = sorted(self.earlier.get(user, [])) + views
            # views in the same second as the first one left out may be ordered otherwise by the service:
            # those are not counted (a subset of what the service hides, never more)
            edge = views[-last - 1][0] if len(views) > last else None
            out |= {p for ts, p in views[-last:] if ts != edge}
        return out


def _last_views(conn, before: int, n: int) -> list[tuple[int, int, int]]:
    """(user, post, second) of each user's last n views before `before` (a window function: SQLite and
    PostgreSQL alike)."""
    rank = func.row_number().over(partition_by=feed_data.c.user_id,
                                  order_by=feed_data.c.timestamp.desc()).label("rank")
    inner = (select(feed_data.c.user_id, feed_data.c.post_id, data.epoch(feed_data.c.timestamp).label("ts"), rank)
             .where(feed_data.c.action == c.VIEW, feed_data.c.timestamp < data.to_datetime(before)).subquery())
    return [tuple(map(int, r)) for r in conn.execute(select(inner.c.user_id, inner.c.post_id, inner.c.ts)
                                                     .where(inner.c.rank <= n)).all()]


def _service_rules(client: httpx.Client) -> tuple[int, int]:
    """The service's exclusion of viewed posts (seconds, last N views), from `/model`; none if it does not say."""
    try:
        info = client.get("/model", timeout=10).json()
        return int(float(info.get("exclude_viewed_hours") or 0) * 3600), int(info.get("exclude_last_views") or 0)
    except (httpx.HTTPError, ValueError):
        return 0, 0


def _wait_applied(client: httpx.Client, seq: int, timeout: float) -> bool:
    """Wait until the service's state holds every event up to `seq` (a frozen service never will)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            state = client.get("/ready", timeout=timeout).json().get("state", {})
        except (httpx.HTTPError, ValueError):
            state = {}
        if not state.get("following", True):
            return False
        if int(state.get("applied_seq") or 0) >= seq:
            return True
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)


def _wait_serving(client: httpx.Client, version: str, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if client.get("/model", timeout=10).json().get("version") == version:
                return True
        except (httpx.HTTPError, ValueError):
            pass
        time.sleep(0.5)
    return False


def simulate(engine: Engine, client: httpx.Client, world: World, config: SimConfig,
             retrainer: Callable[[], object] | None = None) -> SimSummary:
    """Run the simulated days. With `config.retrain_every` and a `retrainer` (a call that retrains and
    returns a `training.retrain.RetrainResult`), every that many days the day starts with a retraining
    on everything the database holds, and, when the candidate is promoted, waits until the service
    serves it (every worker watches models/current)."""
    # who comes when is drawn apart from how they react: two runs with one seed (a frozen and a live
    # service, say) see the same users at the same moments, so their days compare request by request
    plan_rng, rng = np.random.default_rng(config.seed), np.random.default_rng([config.seed, 1])
    with engine.connect() as conn:
        _, end = data.data_range(conn)
    first_day = -(-end // DAY) * DAY  # the next midnight after the data
    feed = _Feed(engine, first_day, _service_rules(client))
    new_posts = _NewPosts(world, config.new_posts_per_day, config.seed)
    summary = SimSummary()
    started = time.perf_counter()
    min_gap = 1.0 / config.max_rps
    applied_seq, following = 0, True
    for day in range(config.days):
        day_start = first_day + day * DAY
        report = DayReport(day=datetime.fromtimestamp(day_start, tz=UTC).date().isoformat())
        if config.retrain_every and retrainer is not None and day > 0 and day % config.retrain_every == 0:
            feed.flush(engine, until=day_start)
            started_retrain = time.perf_counter()
            result = retrainer()
            promoted = result.decision == "promoted"
            swapped = promoted and _wait_serving(client, result.candidate, config.swap_timeout)
            report.retrain = {"candidate": result.candidate, "decision": result.decision, "reason": result.reason,
                              "swapped": swapped, "seconds": round(time.perf_counter() - started_retrain, 1)}
        expected: dict[str, list[float]] = defaultdict(list)
        young: list[int] = []
        oracle: list[float] = []
        oracle_rules: list[float] = []
        if config.new_posts_per_day:
            new_posts.plan_day(day_start)
        hits: dict[str, list[int]] = defaultdict(list)
        plan = day_requests(world, day_start, config.users_per_day, plan_rng)
        for u, ts in tqdm(zip(plan[c.USER_ID].to_numpy(), plan["ts"].to_numpy(), strict=True), total=len(plan),
                          desc=f"day {day + 1}/{config.days}", disable=None):
            u, ts = int(u), int(ts)
            feed.flush(engine, until=ts)
            report.posts_inserted += new_posts.insert_until(engine, ts)
            need = feed.last_seq.get(u, 0)
            if following and need > applied_seq:
                summary.waits += 1
                following = _wait_applied(client, need, config.sync_timeout)
                applied_seq = need
            sent = time.perf_counter()
            moment = datetime.fromtimestamp(ts, tz=UTC).isoformat()
            try:
                r = client.get("/post/recommendations/", params={"id": u, "time": moment, "limit": config.limit},
                               timeout=config.timeout)
                r.raise_for_status()
                body = r.json()
            except (httpx.HTTPError, ValueError):
                summary.errors += 1
                report.errors += 1
                continue
            posts = np.array([p["id"] for p in body["recommendations"]], dtype=np.int64)
            liked = feed.liked_before(u, ts)
            hidden = liked | feed.hidden_views(u, ts)  # before this screen's views are queued
            recent = feed.viewed_since(u, ts - RECENT_SECONDS, ts)
            report.served_hidden += sum(int(p) in hidden for p in posts)
            report.hidden_by_rules += len(hidden) - len(liked)  # the liked are among the hidden
            report.served += len(posts)
            report.liked_before += sum(int(p) in liked for p in posts)
            report.viewed_recently += sum(int(p) in recent for p in posts)
            report.repeated += sum(int(p) in feed.screens.get(u, ()) for p in posts)
            feed.screens[u] = {int(p) for p in posts}
            screen, p_hit = reactions(world, u, posts, ts, rng, liked)
            truth = world.all_posts_probability(u, ts)
            truth[new_posts.unreleased] = 0.0  # the oracle too can only show what exists
            if liked:
                truth[world.post_index(np.fromiter(liked, np.int64))] = 0.0
            oracle.append(expected_hit(np.sort(truth)[-config.limit:]))
            if hidden:
                truth[world.post_index(np.fromiter(hidden, np.int64))] = 0.0
            oracle_rules.append(expected_hit(np.sort(truth)[-config.limit:]))
            feed.push(screen)
            new_views, new_likes = new_posts.react(screen)
            report.new_post_views += new_views
            report.new_post_likes += new_likes
            n_likes = int((screen[c.ACTION] == c.LIKE).sum())
            g = body["exp_group"]
            if body.get("model_version") not in report.versions:
                report.versions.append(body.get("model_version"))
            expected[g].append(p_hit)
            young.append(int(new_posts.young(posts, ts, config.young_hours * 3600)))
            report.screens_with_young += young[-1]
            hits[g].append(int(n_likes > 0))
            group = summary.by_group.setdefault(g, {"requests": 0, "views": 0, "likes": 0})
            group["requests"] += 1
            group["expected_hits"] = group.get("expected_hits", 0.0) + p_hit
            group["hits"] = group.get("hits", 0) + int(n_likes > 0)
            group["views"] += len(posts)
            group["likes"] += n_likes
            summary.requests += 1
            report.requests += 1
            summary.views += len(posts)
            summary.likes += n_likes
            pause = min_gap - (time.perf_counter() - sent)
            if pause > 0:
                time.sleep(pause)
        report.groups = {g: {"requests": len(expected[g]), "hitrate": round(float(np.mean(hits[g])), 4),
                             "expected_hitrate": round(float(np.mean(expected[g])), 4)} for g in sorted(expected)}
        everyone = np.concatenate([expected[g] for g in sorted(expected)]) if expected else np.empty(0)
        report.expected_hitrate = round(float(everyone.mean()), 4) if len(everyone) else None
        report.expected_ci95 = bootstrap_ci(everyone, seed=day) if len(everyone) else None
        report.oracle_expected = round(float(np.mean(oracle)), 4) if oracle else None
        report.oracle_same_rules = round(float(np.mean(oracle_rules)), 4) if oracle_rules else None
        report.posts_inserted_total = len(new_posts.inserted)
        report.new_posts_viewed, report.new_posts_liked = len(new_posts.viewed), len(new_posts.liked)
        summary.expected.append(everyone.tolist())
        summary.young.append(young)
        summary.days.append({**report.__dict__, "shares": report.shares()})
    feed.flush(engine, until=None)  # the last screens' events
    for group in summary.by_group.values():  # the truth the A/B report should find
        if group["requests"]:
            group["expected_hitrate"] = round(group.pop("expected_hits", 0.0) / group["requests"], 4)
            group["hitrate"] = round(group.pop("hits", 0) / group["requests"], 4)
    served = sum(d["served"] for d in summary.days)
    summary.staleness = {k: round(sum(d[k] for d in summary.days) / served, 4) if served else None
                         for k in ("liked_before", "viewed_recently", "repeated")}
    summary.first_moment = datetime.fromtimestamp(first_day, tz=UTC).isoformat()
    summary.last_moment = datetime.fromtimestamp(first_day + config.days * DAY, tz=UTC).isoformat()
    summary.seconds = round(time.perf_counter() - started, 1)
    return summary


def day_table(summary: SimSummary) -> str:
    """The per-day report as a Markdown table."""
    lines = ["| day | requests | hit rate control / test | expected control / test | expected, all [95% CI] | "
             "oracle | oracle, the service's exclusions | liked before t | viewed in 72 h | on previous screen | "
             "new posts / screens with a young post | new posts so far: viewed / liked / inserted | version |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for d in summary.days:
        g = d["groups"]

        def pair(key: str, g=g) -> str:
            return " / ".join(str(g.get(x, {}).get(key, "-")) for x in ("control", "test"))

        sh = d["shares"]
        ci = d["expected_ci95"] or ("-", "-")
        lines.append(f"| {d['day']} | {d['requests']} | {pair('hitrate')} | {pair('expected_hitrate')} | "
                     f"{d['expected_hitrate']} [{ci[0]}, {ci[1]}] | {d['oracle_expected']} | "
                     f"{d.get('oracle_same_rules', '-')} | "
                     f"{sh['liked_before']} | {sh['viewed_recently']} | {sh['repeated']} | "
                     f"{d['posts_inserted']} / {sh['screens_with_young']} | "
                     f"{d['new_posts_viewed']} / {d['new_posts_liked']} / {d['posts_inserted_total']} | "
                     f"{', '.join(v or '-' for v in d['versions'])} |")
    return "\n".join(lines)
