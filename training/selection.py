"""Per model slot, serve what validates best on the protocol that fits the log — or popularity.

For each slot (control, test) the candidates are the P(like | shown) model, the "liked within the next
horizon" model (`training.horizon`) and popularity; for users with no history, the slot's chosen model
seeing the profile alone, popularity within the user's segment (`app.segment_popularity`), the posts' like
rate per view and popularity, their screens spread over topics (one post per topic before a second: with
the user's tastes unknown, likes within a topic go together, so a spread screen more often holds one;
`select`). They are compared on requests sampled from the validation window, as the evaluation samples
held-out ones:

- shown set (random exposure): rank the posts shown to the user in [t, t + 24 h); a hit is a liked one
  in the top 5 (requests with a liked candidate and more than 5 candidates). For users without history:
  the screen from the whole catalogue, judged by its posts' like rate among the user's segment later in
  the window (`screen_rates`) — ~25 random shown posts cannot tell a ranker that picks the catalogue's
  best from one that picks outliers;
- full catalogue (organic exposure): rank every post not liked before t nor viewed in the 72 hours
  before it; a hit is a top-5 post the user likes after t within the validation window.

A model serves a slot only if it beats popularity there (the floor); otherwise the slot serves popularity
and the manifest says why. Ties go to the simpler ranker (popularity, then P(like | shown)).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import pandas as pd

from app.engine import spread_top_k
from app.features import CONTROL_FEATURES, POST_COUNTERS, PostView, Priors, assemble
from app.segment_popularity import N_SEGMENTS, segment_of, segment_scores, segment_shares
from app.user_state import LIKE, VIEW
from training.collaborative import Schedule
from training.features import History, post_counters_at, user_views_at
from training.horizon import recent_columns

LIKE_GIVEN_SHOWN = "like_given_shown"
LIKED_WITHIN_HORIZON = "liked_within_horizon"
POPULAR = "popular"
SEGMENT_POPULAR = "segment_popular"
LIKE_RATE = "like_rate"  # the post's smoothed like rate per view (`app.engine.LIKE_RATE`)
MODEL_OBJECTIVE = "model"  # for cold users: the slot's chosen model on the profile alone
SPREAD = "+spread"  # a cold screen with one post per topic before a second (`app.engine.spread_top_k`)
K = 5
SHOWN_WINDOW = 24 * 3600
SCREEN_REQUESTS = 300  # cold validation requests whose whole-catalogue screens are judged (`screen_rates`)
RATE_PRIOR_VIEWS = 10.0
EXCLUDE_VIEWED = 72 * 3600


@dataclass
class Protocol:
    name: str  # "shown_set" or "full_catalogue"
    requests: pd.DataFrame  # user_row, user_id, ts
    end: int  # likes count up to here (full catalogue)


def protocol_for(kind: str) -> str:
    return "full_catalogue" if kind == "organic" else "shown_set"


def request_truth(history: History, protocol: Protocol) -> list[tuple[np.ndarray, set, np.ndarray]]:
    """Per request: (candidate post rows, liked post rows that count as hits, post rows to exclude)."""
    out = []
    for row, t in zip(protocol.requests["user_row"].to_numpy(), protocol.requests["ts"].to_numpy(np.int64),
                      strict=True):
        ts, post, kind, target = history.events.of(int(row))
        liked_before = post[(kind == LIKE) & (ts < t)]
        if protocol.name == "shown_set":
            m = (kind == VIEW) & (ts >= t) & (ts < t + SHOWN_WINDOW)
            cand = np.unique(post[m]).astype(np.int64)
            liked = set(post[m & (target == 1)].tolist())
            out.append((cand, liked, np.empty(0, np.int64)))
        else:
            liked = set(post[(kind == LIKE) & (ts > t) & (ts < protocol.end)].tolist()) - set(liked_before.tolist())
            recent = post[(kind == VIEW) & (ts < t) & (ts >= t - EXCLUDE_VIEWED)]
            out.append((np.empty(0, np.int64), liked, np.unique(np.r_[liked_before, recent]).astype(np.int64)))
    return out


def eligible(protocol: Protocol, truth) -> np.ndarray:
    if protocol.name == "shown_set":
        return np.array([len(cand) > K and len(liked) > 0 for cand, liked, _ in truth], bool)
    return np.ones(len(truth), bool)


Scorer = Callable[[np.ndarray, np.ndarray, np.ndarray, bool], np.ndarray]
# (user rows, moments, post rows per request as a (n, m) matrix, cold) -> (n, m) scores


def make_scorers(history: History, profile: np.ndarray, posts: PostView, priors: Priors, models: dict,
                 shares: np.ndarray, schedule: Schedule | None = None) -> dict[str, Scorer]:
    """Scorers of every candidate ranker over the same feature rows (built once per batch of requests)."""
    index = history.view_index

    def popular(rows, times, post_rows, cold):
        flat_t = np.repeat(times, post_rows.shape[1])
        return index.counts(post_rows.ravel(), flat_t)[:, 1].reshape(post_rows.shape) * 1.0

    def segment(rows, times, post_rows, cold):
        seg = segment_of(profile[rows])
        pop = popular(rows, times, post_rows, cold)
        return np.stack([segment_scores(pop[i], shares[:, post_rows[i]], seg[i]) for i in range(len(rows))])

    def like_rate(rows, times, post_rows, cold):
        counters = post_counters_at(history, priors, post_rows.ravel(), np.repeat(times, post_rows.shape[1]))
        return counters[:, POST_COUNTERS.index("p_like_rate")].reshape(post_rows.shape).astype(np.float64)

    cache: dict = {}

    def matrix(rows, times, post_rows, cold):
        """The shared features of every (request, post) pair: the user side once per request (as of its
        moment, or the profile alone when cold), the posts as of each moment, through `assemble`."""
        # one batch's features serve every scorer: keyed by the batch's own array, which the cache holds
        # (an id alone is reused by the next batch's array once the last one is freed: a stale hit)
        key = (id(post_rows), cold)
        hit = cache.get(key)
        if hit is None or hit[0] is not post_rows:
            cache.clear()
            m = post_rows.shape[1]
            flat_posts, flat_t = post_rows.ravel(), np.repeat(times, m)
            counters = post_counters_at(history, priors, flat_posts, flat_t)
            # each request with the collaborative vectors of its period (all of them one period, usually)
            period = np.zeros(len(rows), np.int64) if schedule is None else schedule.period(times)
            x = None
            for k in np.unique(period):
                req = np.flatnonzero(period == k)
                flat = (req[:, None] * m + np.arange(m)).ravel()
                p = posts if schedule is None else schedule.posts(posts, int(k))
                view = user_views_at(history, profile, p, priors, rows[req], times[req], np.full(len(req), cold))
                part = assemble(view, np.repeat(np.arange(len(req)), m), p, flat_posts[flat], flat_t[flat], True,
                                counters=counters[flat])
                if x is None:
                    x = np.empty((len(flat_posts), part.shape[1]), np.float32, order="F")
                x[flat] = part
            hit = cache[key] = (post_rows, x, recent_columns(history, flat_posts, flat_t))
        return hit[1], hit[2]

    def model_scorer(name: str, objective: str, text: bool):
        model = models[(name, objective)]

        def score(rows, times, post_rows, cold):
            x, recent = matrix(rows, times, post_rows, cold)
            x = x if text else x[:, :len(CONTROL_FEATURES)]
            if objective == LIKED_WITHIN_HORIZON:
                x = np.column_stack([x, recent])
            return model.predict(x, prediction_type="RawFormulaVal").reshape(post_rows.shape)
        return score

    out: dict[str, Scorer] = {POPULAR: popular, SEGMENT_POPULAR: segment, LIKE_RATE: like_rate}
    for (name, objective) in models:
        out[f"{name}:{objective}"] = model_scorer(name, objective, text=name == "test")
    return out


def _top(scores: np.ndarray, rows: np.ndarray, topics: np.ndarray | None) -> np.ndarray:
    """The K best post `rows` by `scores` (ties by row), spread over `topics` when given (`spread_top_k`)."""
    scores = np.asarray(scores, np.float64)
    if topics is None:
        return rows[np.lexsort((rows, -scores))[:K]]
    return rows[spread_top_k(scores, rows, topics[rows], K)]


def hits(protocol: Protocol, truth, scorers: dict[str, Scorer], names: list[str], cold: bool, n_posts: int,
         batch: int = 8, topics: np.ndarray | None = None) -> dict[str, np.ndarray]:
    """hit@5 per eligible request for each named scorer; a name ending in SPREAD is its scorer's screen
    with one post per topic first (`topics`: each post row's topic)."""
    req = protocol.requests
    ok = np.flatnonzero(eligible(protocol, truth))
    out: dict[str, list] = {n: [] for n in names}
    bases = list(dict.fromkeys(n.removesuffix(SPREAD) for n in names))  # each scorer runs once per batch
    variants = {b: [(n, topics if n.endswith(SPREAD) else None) for n in names if n.removesuffix(SPREAD) == b]
                for b in bases}
    for lo in range(0, len(ok), batch):
        idx = ok[lo:lo + batch]
        rows = req["user_row"].to_numpy(np.int64)[idx]
        times = req["ts"].to_numpy(np.int64)[idx]
        if protocol.name == "shown_set":  # candidate lists differ in length: pad with the first, then cut
            width = max(len(truth[i][0]) for i in idx)
            post_rows = np.stack([np.r_[truth[i][0], np.full(width - len(truth[i][0]), truth[i][0][0])]
                                  for i in idx]).astype(np.int64)
        else:
            post_rows = np.tile(np.arange(n_posts, dtype=np.int64), (len(idx), 1))
        for b in bases:
            s = scorers[b](rows, times, post_rows, cold)
            for j, i in enumerate(idx):
                if protocol.name == "shown_set":
                    cand, sj = truth[i][0], s[j, :len(truth[i][0])]
                else:
                    cand, sj = post_rows[j], s[j].astype(np.float64)
                    sj[truth[i][2]] = -np.inf
                for n, t in variants[b]:
                    out[n].append(float(bool(set(_top(sj, cand, t).tolist()) & truth[i][1])))
    return {n: np.array(v) for n, v in out.items()}


def later_rates(history: History, profile: np.ndarray, lo: int, hi: int) -> np.ndarray:
    """(N_SEGMENTS, posts): each post's like rate per view among one segment's views in [lo, hi), shrunk
    to the post's rate there, itself shrunk to the window's (RATE_PRIOR_VIEWS views each)."""
    ev = history.events
    owner = ev.rows()
    m = (ev.kind == VIEW) & (ev.ts >= lo) & (ev.ts < hi)
    at = (segment_of(profile[owner[m]]), ev.post[m].astype(np.int64))
    views, likes = np.zeros((N_SEGMENTS, len(history.post_ids))), np.zeros((N_SEGMENTS, len(history.post_ids)))
    np.add.at(views, at, 1.0)
    np.add.at(likes, at, (ev.target[m] == 1).astype(np.float64))
    a = RATE_PRIOR_VIEWS
    overall = likes.sum() / max(views.sum(), 1.0)
    post_rate = (likes.sum(axis=0) + a * overall) / (views.sum(axis=0) + a)
    return (likes + a * post_rate[None, :]) / (views + a)


def screen_rates(protocol: Protocol, profile: np.ndarray, scorers: dict[str, Scorer], names: list[str],
                 topics: np.ndarray, rates: np.ndarray, before: int, n_posts: int,
                 batch: int = 8) -> dict[str, np.ndarray]:
    """Per request made before `before` (at most SCREEN_REQUESTS of them, spaced evenly), the mean of
    `rates` (`later_rates` from `before` on: nothing a ranker saw) over the 5 posts each named scorer puts
    first in the whole catalogue for the user seen without history: the screen a new user gets, judged
    by how its posts were liked by that user's segment afterwards. Under a random feed each post's later
    rate is unbiased; the shown sets are ~25 random posts, among which any fair ranker does alike."""
    req = protocol.requests
    early = np.flatnonzero(req["ts"].to_numpy(np.int64) < before)
    pick = early[np.unique(np.linspace(0, len(early) - 1, min(SCREEN_REQUESTS, len(early))).astype(np.int64))] \
        if len(early) else early
    out: dict[str, list] = {n: [] for n in names}
    bases = list(dict.fromkeys(n.removesuffix(SPREAD) for n in names))
    for lo in range(0, len(pick), batch):
        idx = pick[lo:lo + batch]
        rows = req["user_row"].to_numpy(np.int64)[idx]
        times = req["ts"].to_numpy(np.int64)[idx]
        seg = segment_of(profile[rows])
        post_rows = np.tile(np.arange(n_posts, dtype=np.int64), (len(idx), 1))
        for b in bases:
            s = scorers[b](rows, times, post_rows, True)
            for j in range(len(idx)):
                for n in (n for n in names if n.removesuffix(SPREAD) == b):
                    top = _top(s[j], post_rows[j], topics if n.endswith(SPREAD) else None)
                    out[n].append(float(rates[seg[j], top].mean()))
    return {n: np.array(v) for n, v in out.items()}


def choose(metric: dict[str, float], order: list[str]) -> str:
    """The best by metric; ties go to the earlier name in `order` (the simpler ranker)."""
    best = order[0]
    for name in order[1:]:
        if metric[name] > metric[best] + 1e-12:
            best = name
    return best


def select(history: History, profile: np.ndarray, posts: PostView, priors: Priors, models: dict,
           protocol: Protocol, shares_cut: int, spread: bool = True, schedule: Schedule | None = None) -> dict:
    """The manifest's "selection": per slot what serves users with history and users without, with the
    validation figures each choice rests on. `spread`: the screens of users without history take one post
    per topic before a second, whichever ranker serves them. Validation cannot decide it: a spread screen
    trades a little of its posts' mean like rate (what `screen_rates` measures) for likes that do not
    all hang on one unknown taste, a gain seen only in P(at least one like); the shown sets, ~25 posts,
    leave little to spread over, and their ~600 requests resolve ±0.03. Under a demo world's truth
    (scale 0.03, seed 11, 1000 held-out requests) it lifts popularity's expected hitrate@5 from 0.712 to
    0.742 and the like rate's from 0.740 to 0.762, while the shown set moves by noise (0.611 → 0.614,
    0.642 → 0.638); the figures of both screens are kept beside the choice."""
    ev = history.events
    owner = ev.rows()
    liked = (ev.kind == LIKE) & (ev.ts < shares_cut)
    shares = segment_shares(segment_of(profile[owner[liked]]), ev.post[liked], len(history.post_ids))
    scorers = make_scorers(history, profile, posts, priors, models, shares, schedule)
    truth = request_truth(history, protocol)
    slots = sorted({name for name, _ in models})
    warm_names = [POPULAR] + [f"{s}:{o}" for s in slots for o in (LIKE_GIVEN_SHOWN, LIKED_WITHIN_HORIZON)
                              if (s, o) in models]
    warm = hits(protocol, truth, scorers, warm_names, False, len(history.post_ids))
    cold_names = [POPULAR, SEGMENT_POPULAR, LIKE_RATE, *warm_names[1:]]
    cold = hits(protocol, truth, scorers, cold_names + [n + SPREAD for n in cold_names], True,
                len(history.post_ids), topics=posts.topic)
    mean = {n: round(float(v.mean()), 4) if len(v) else 0.0 for n, v in warm.items()}
    cold_mean = {n: round(float(v.mean()), 4) if len(v) else 0.0 for n, v in cold.items()}
    # what a new user is served is a screen from the whole catalogue: under a random feed (shown-set
    # protocol) the cold choice rests on how that screen's posts were liked later (`screen_rates`)
    cold_metric, cold_key = cold_mean, f"{protocol.name}_hitrate@5"
    if protocol.name == "shown_set":
        before = (shares_cut + protocol.end) // 2
        rated = screen_rates(protocol, profile, scorers, cold_names + [n + SPREAD for n in cold_names],
                             posts.topic, later_rates(history, profile, before, protocol.end), before,
                             len(history.post_ids))
        cold_metric = {n: round(float(v.mean()), 5) if len(v) else 0.0 for n, v in rated.items()}
        cold_key = "screen_like_rate"
    out = {"protocol": protocol.name, "requests": int(len(next(iter(warm.values())))), "slots": {}}
    for s in slots:
        options = [POPULAR] + [f"{s}:{o}" for o in (LIKE_GIVEN_SHOWN, LIKED_WITHIN_HORIZON) if (s, o) in models]
        best = choose(mean, options)
        serves = POPULAR if best == POPULAR else best.split(":")[1]
        model_figure = max(mean[o] for o in options[1:])
        reason = (f"no model beat popularity on validation ({protocol.name} hitrate@5: best model "
                  f"{model_figure} vs popularity {mean[POPULAR]})" if serves == POPULAR else
                  f"best on validation ({protocol.name} hitrate@5 {mean[best]} vs popularity {mean[POPULAR]})")
        cold_options = [POPULAR, SEGMENT_POPULAR, LIKE_RATE] + ([best] if best != POPULAR else [])
        screen = [o + SPREAD for o in cold_options] if spread else cold_options  # as the screen is made
        cold_ranker = choose(cold_metric, screen).removesuffix(SPREAD)
        both = cold_options + [o + SPREAD for o in cold_options]
        out["slots"][s] = {
            "serves": serves, "reason": reason,
            "validation_hitrate@5": {o: mean[o] for o in options},
            "cold": {"serves": MODEL_OBJECTIVE if cold_ranker == best else cold_ranker, "spread": spread,
                     "chosen_on": cold_key, "validation_hitrate@5": {o: cold_mean[o] for o in both}},
        }
        if cold_key == "screen_like_rate":
            out["slots"][s]["cold"]["validation_screen_like_rate"] = {o: cold_metric[o] for o in both}
    return out

