"""Offline evaluation of the served artifacts on the held-out window after their feature snapshot.

Requests are (user, time) pairs taken from held-out views, as the course's checker does. Two protocols:

- full catalogue (the course's): rank every post the user had not liked before t; a hit at k is a post
  in the top k that the user likes after t within the horizon. Informative on real logs where users
  chose what to view; under a random feed a user sees well under 1% of the catalogue, so hits are
  rare for every ranker and differences are mostly noise.
- shown set: the candidates are the posts shown to the user in [t, t + window); the ranker orders
  them; a hit at k is a liked candidate in the top k. Unbiased under a random feed. Only requests
  with at least one liked candidate and more than k candidates count.

On demo-world data the true like probabilities also give each ranker's expected hit rate and the
oracle's (the best possible top k).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
from loguru import logger
from sklearn.metrics import roc_auc_score
from sqlalchemy import Connection
from tqdm import tqdm

from app import columns as c
from app.ab import exp_group
from app.artifacts import LIKED_WITHIN_HORIZON
from app.engine import POPULAR, SEGMENT_POPULAR, Recommender, spread_top_k, top_k
from app.features import CONTROL_FEATURES, feature_names
from training import data
from training.metrics import ap_at, bootstrap_ci, expected_hit, hit_at, ndcg_at
from training.world.model import World

RANKERS = ("random", "popularity", "segment_popularity", "control", "test")
# cold start under the world's truth: the best a ranker that sees the profile alone can do
PROFILE_BEST = "profile_best"
PROFILE_SAMPLE, PROFILE_SAMPLE_SEED = 256, 0  # the users whose tastes stand in for the unknown ones
K_MAX = 10
ENGINE_MODEL = {"popularity": POPULAR, "segment_popularity": SEGMENT_POPULAR, "control": "control", "test": "test"}
# the protocol whose figures decide, by exposure kind (as training.selection chooses on validation)
FITTING_PROTOCOL = {"random": "shown_hitrate@5", "organic": "hitrate@5"}


@dataclass
class Truth:
    """What happened after each request, read once from the database."""

    future_likes: list[set[int]]  # per request: posts liked in (t, t + horizon]
    shown: list[np.ndarray]  # per request: posts shown in [t, t + window)
    shown_liked: list[set[int]]
    users: pd.DataFrame = field(repr=False, default_factory=pd.DataFrame)


def sample_requests(conn: Connection, lo: int, hi: int, n: int, seed: int) -> pd.DataFrame:
    """n (user_id, ts) pairs drawn uniformly from the views in [lo, hi)."""
    pool = data.sample_views(conn, lo, hi, max_rows=max(20 * n, 20_000), salt=seed % 9973)
    if pool.empty:
        raise ValueError("no held-out views to sample requests from")
    rng = np.random.default_rng(seed)
    pick = rng.choice(len(pool), size=min(n, len(pool)), replace=False)
    return pool.iloc[np.sort(pick)][[c.USER_ID, "ts"]].reset_index(drop=True)


def read_truth(conn: Connection, requests: pd.DataFrame, horizon_end: int, window: int) -> Truth:
    """Per request: the posts liked after t up to `horizon_end`, and those shown in [t, t + window) with
    the liked ones among them. Only the request users' rows from the first request on are read (every
    like in the database was 57% of an evaluation's time at scale 1.0)."""
    users = requests[c.USER_ID].to_numpy()
    lo = int(requests["ts"].min())
    views = data.views_of_users(conn, users, lo, horizon_end + window)
    by_user_views = {u: g for u, g in views.groupby(c.USER_ID)}
    likes = data.likes_of_users(conn, users, lo, horizon_end + 1)
    by_user_likes = {u: g for u, g in likes.groupby(c.USER_ID)}
    future, shown, shown_liked = [], [], []
    empty = pd.DataFrame({c.POST_ID: [], "ts": [], c.TARGET: []})
    for u, t in zip(users, requests["ts"].to_numpy(), strict=True):
        lk = by_user_likes.get(u, empty)
        ts = lk["ts"].to_numpy()
        future.append(set(lk[c.POST_ID].to_numpy()[(ts > t) & (ts <= horizon_end)].tolist()))
        v = by_user_views.get(u, empty)
        vt = v["ts"].to_numpy()
        m = (vt >= t) & (vt < t + window)
        shown.append(v[c.POST_ID].to_numpy()[m].astype(np.int64))
        shown_liked.append(set(v[c.POST_ID].to_numpy()[m & (v[c.TARGET].to_numpy() == 1)].tolist()))
    return Truth(future, shown, shown_liked)


def ranker_scores(engine: Recommender, name: str, user_id: int, ts: int, rng: np.random.Generator) -> np.ndarray:
    """A score for every post, through the service's own scoring path (the state as of ts)."""
    if name == "random":
        return rng.random(len(engine.post_ids))
    return engine.scores(ENGINE_MODEL[name], user_id, ts)[0]


def full_catalogue_top(engine: Recommender, name: str, user_id: int, ts: int, rng) -> np.ndarray:
    if name == "random":
        scores = ranker_scores(engine, name, user_id, ts, rng)
        user, _ = engine.state.at(engine.state.user_row(user_id), ts)
        if user is not None:  # the service's exclusions apply to every ranker
            scores[user.liked] = -np.inf
            scores[user.viewed] = -np.inf
        return engine.post_ids[np.argsort(-scores, kind="stable")[:K_MAX]]
    return engine.recommend(ENGINE_MODEL[name], user_id, ts, K_MAX).post_ids


def _summary(values: dict[str, np.ndarray], seed: int, users: np.ndarray) -> tuple[dict, dict]:
    """Means, and 95% intervals that resample users (each with all their requests), not requests."""
    means = {k: round(float(np.mean(v)), 4) if len(v) else None for k, v in values.items()}
    cis = {k: bootstrap_ci(v, seed=seed, clusters=users) for k, v in values.items()}
    return means, cis


def evaluate_rankings(tops: dict[str, list[np.ndarray]], truth: Truth) -> dict[str, dict[str, np.ndarray]]:
    """Per-request metric arrays for each ranker on the full-catalogue protocol."""
    out = {}
    for name, ranked in tops.items():
        rel = truth.future_likes
        out[name] = {
            "hitrate@1": np.array([hit_at(r, f, 1) for r, f in zip(ranked, rel, strict=True)]),
            "hitrate@5": np.array([hit_at(r, f, 5) for r, f in zip(ranked, rel, strict=True)]),
            "hitrate@10": np.array([hit_at(r, f, 10) for r, f in zip(ranked, rel, strict=True)]),
            "ndcg@5": np.array([ndcg_at(r, f, 5) for r, f in zip(ranked, rel, strict=True)]),
            "map@5": np.array([ap_at(r, f, 5) for r, f in zip(ranked, rel, strict=True)]),
        }
    return out


def shown_set_hits(engine: Recommender, requests: pd.DataFrame, truth: Truth, rankers, seed: int,
                   k: int = 5) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """Hit@1..K_MAX per eligible request for each ranker, ranking only the shown candidates."""
    rng = np.random.default_rng(seed + 1)
    eligible = np.array([len(s) > k and len(sl) > 0 for s, sl in zip(truth.shown, truth.shown_liked, strict=True)])
    curves = {name: [] for name in rankers}
    for i in np.flatnonzero(eligible):
        u, t = int(requests.at[i, c.USER_ID]), int(requests.at[i, "ts"])
        cand = truth.shown[i]
        rows = engine.state.post_rows(cand)
        for name in rankers:
            s = ranker_scores(engine, name, u, t, rng)[rows]
            order = cand[np.lexsort((cand, -s))]
            curves[name].append([hit_at(order, truth.shown_liked[i], kk) for kk in range(1, K_MAX + 1)])
    return {n: np.array(v).reshape(-1, K_MAX) for n, v in curves.items()}, eligible


def heldout_auc(engine: Recommender, views: pd.DataFrame, seed: int) -> dict[str, float]:
    """ROC-AUC of each ranker's score on held-out views (label: target), each view's features as of its
    own moment."""
    state = engine.state
    views = views[state.user_rows(views[c.USER_ID].to_numpy()) >= 0]
    y = views[c.TARGET].to_numpy()
    users, posts, ts = views[c.USER_ID].to_numpy(), views[c.POST_ID].to_numpy(), views["ts"].to_numpy(np.int64)
    x = state.features_for(users, posts, ts, text=True)
    # popularity: the post's liked views before the view's moment, the p_likes feature (exact integers)
    popular = x[:, feature_names(True).index("p_likes")]
    out = {"random": roc_auc_score(y, np.random.default_rng(seed).random(len(y))),
           "popularity": roc_auc_score(y, popular)}
    for name in ("control", "test"):
        if engine.objective.get(name) == LIKED_WITHIN_HORIZON:  # another target: AUC on views says nothing
            continue
        cols = slice(None) if name == "test" else slice(0, len(CONTROL_FEATURES))
        out[name] = roc_auc_score(y, engine.models[name].predict(x[:, cols], prediction_type="RawFormulaVal"))
    return {k: round(float(v), 4) for k, v in out.items()}


def world_expectations(world: World, engine: Recommender, requests: pd.DataFrame,
                       tops: dict[str, list[np.ndarray]], k: int = 5) -> dict[str, np.ndarray]:
    """Expected hit@k of each ranker's top k under the world's true probabilities, and the oracle's
    (the true best k among the posts the service may show: not liked, not recently viewed)."""
    out = {name: [] for name in (*tops, "oracle")}
    for i, (u, t) in enumerate(zip(requests[c.USER_ID].to_numpy(), requests["ts"].to_numpy(), strict=True)):
        p = world.all_posts_probability(int(u), int(t))
        user, _ = engine.state.at(engine.state.user_row(int(u)), int(t))
        for name, ranked in tops.items():
            out[name].append(expected_hit(p[world.post_index(ranked[i][:k])]))
        p = p.copy()
        if user is not None:
            p[world.post_index(engine.post_ids[user.liked])] = 0.0
            p[world.post_index(engine.post_ids[user.viewed])] = 0.0
        out["oracle"].append(expected_hit(np.sort(p)[-k:]))
    return {n: np.array(v) for n, v in out.items()}


def _first(engine: Recommender, scores: np.ndarray, rows: np.ndarray, topics: np.ndarray | None,
           m: int) -> np.ndarray:
    """The m best of the post `rows` by their `scores`, as the slot's screen orders them: spread over
    the `topics` (one per topic first, `spread_top_k`) when given, else by score."""
    ids = engine.post_ids[rows]
    return rows[spread_top_k(scores, ids, topics[rows], m) if topics is not None else top_k(scores, ids, m)]


def cold_start(world: World | None, engine: Recommender, requests: pd.DataFrame, truth: Truth,
               k: int = 5) -> dict:
    """The same requests with each user's history hidden, as for a user who has just signed up: every
    model sees the profile alone; popularity is unchanged. Each slot ranks as it would serve such a user
    (`Recommender.ranker_for`, spread over topics where `Recommender.spreads`). Expected hit@k under the
    world's truth (when known), with the best a ranker seeing the profile alone can reach
    (`World.profile_best`, as PROFILE_BEST), the shown-set hit rate, and the full-catalogue hit rate (the
    screen excluding what the real history excludes)."""
    state = engine.state
    rankers = ("popularity", "segment_popularity", "control", "test")
    expected: dict[str, list] = {n: [] for n in (*rankers, PROFILE_BEST)}
    # the latent tastes that stand in for a request user's unknown ones (`World.profile_best`)
    sample = None
    if world is not None:
        n_users = len(world.user_ids)
        sample = np.random.default_rng(PROFILE_SAMPLE_SEED).choice(n_users, min(PROFILE_SAMPLE, n_users), replace=False)
    shown = {n: [] for n in rankers}
    expected_users, shown_users, full_users = [], [], []  # the user of each value, for intervals clustered by user
    full = {n: [] for n in rankers}  # the full-catalogue protocol: the one that fits an organic log
    for i, (u, t) in enumerate(zip(requests[c.USER_ID].to_numpy(), requests["ts"].to_numpy(), strict=True)):
        u, t = int(u), int(t)
        row = state.user_row(u)
        if row < 0:
            continue
        cold, posts = state.at(row, t, cold=True)
        user, _ = state.at(row, t)
        # what each slot serves a user with no history (`Recommender.ranker_for`)
        scores = {n: engine.scores_of(engine.ranker_for(ENGINE_MODEL[n], cold), cold, posts, t)
                  for n in rankers}
        cand, liked = truth.shown[i], truth.shown_liked[i]
        eligible = len(cand) > k and len(liked) > 0
        p = world.all_posts_probability(u, t) if world is not None else None
        for name, s in scores.items():
            # the slot's screen for such a user: one post per topic first, if its validation chose that
            topics = posts.topic if name in ("control", "test") and engine.spreads(ENGINE_MODEL[name], cold) else None
            every = np.arange(len(s))
            top = engine.post_ids[_first(engine, s, every, topics, k)]
            screen = s.copy()  # the screen's exclusions, from the real history
            screen[user.liked], screen[user.viewed] = -np.inf, -np.inf
            full[name].append(hit_at(engine.post_ids[_first(engine, screen, every, topics, k)],
                                     truth.future_likes[i], k))
            if p is not None:
                expected[name].append(expected_hit(p[world.post_index(top)]))
            if eligible:
                rows = state.post_rows(cand)
                shown[name].append(hit_at(engine.post_ids[_first(engine, s[rows], rows, topics, len(rows))], liked, k))
        if p is not None:
            expected[PROFILE_BEST].append(expected_hit(p[world.post_index(world.profile_best(u, t, k, sample))]))
        expected_users += [u] if p is not None else []
        shown_users += [u] if eligible else []
        full_users.append(u)
    out: dict = {"requests": len(requests), "shown_requests": len(shown["popularity"])}
    out["shown_hitrate@5"] = {n: round(float(np.mean(v)), 4) if v else None for n, v in shown.items()}
    out["hitrate@5"] = {n: round(float(np.mean(v)), 4) if v else None for n, v in full.items()}
    out["ci95"] = {"shown_hitrate@5": {n: bootstrap_ci(np.array(v), clusters=np.array(shown_users))
                                       for n, v in shown.items()},
                   "hitrate@5": {n: bootstrap_ci(np.array(v), clusters=np.array(full_users)) for n, v in full.items()}}
    if world is not None:
        out["expected_hitrate@5"] = {n: round(float(np.mean(v)), 4) for n, v in expected.items()}
        out["ci95"]["expected_hitrate@5"] = {n: bootstrap_ci(np.array(v), clusters=np.array(expected_users))
                                             for n, v in expected.items()}
    return out


def load_world_for(path: Path | None, users: np.ndarray) -> World | None:
    """The demo world behind this database, or None if there is none or it is another world."""
    if path is None or not Path(path).is_file():
        return None
    world = World.load(path)
    if len(world.user_ids) != len(users) or not np.array_equal(np.sort(world.user_ids), np.sort(users)):
        logger.warning("world at {} does not match the database's users: expected hit rates skipped", path)
        return None
    return world


@dataclass
class EvalConfig:
    requests: int = 1000
    horizon_days: float | None = None  # None: to the end of the held-out window
    window_hours: float = 24.0
    seed: int = 0
    auc_views: int = 100_000
    # the cold-start slice: a second pass over the requests, about 40% of an evaluation's time; the
    # retraining gate does not read it
    cold_start: bool = True
    # the service's A/B settings, to report what it would serve each group (what `check` measures)
    ab_salt: str = "startml-ab"
    ab_control_percent: int = 50
    ab_models: tuple[str, str] = ("control", "test")


RANKER_OF_MODEL = {"control": "control", "test": "test", POPULAR: "popularity",
                   SEGMENT_POPULAR: "segment_popularity"}


def groups_of(requests: pd.DataFrame, config: EvalConfig) -> np.ndarray:
    return np.array([exp_group(int(u), config.ab_salt, config.ab_control_percent) for u in requests[c.USER_ID]])


def served_metrics(values: dict[str, np.ndarray], groups: np.ndarray, config: EvalConfig) -> dict:
    """Mean of a per-request metric for the ranker each request's A/B group is served, overall and by group."""
    model_of = dict(zip(("control", "test"), config.ab_models, strict=True))
    per_request = np.array([values[RANKER_OF_MODEL[model_of[g]]][i] for i, g in enumerate(groups)])
    out = {"all": round(float(per_request.mean()), 4) if len(per_request) else None}
    for g in ("control", "test"):
        m = groups == g
        out[g] = round(float(per_request[m].mean()), 4) if m.any() else None
    return out


def run_evaluation(conn: Connection, engine: Recommender, world_path: Path | None, config: EvalConfig,
                   progress: Callable | None = None, window: tuple[int, int] | None = None) -> tuple[dict, dict]:
    """The metrics JSON and the per-request details a report draws from. `window` (default: the
    artifacts' held-out window) lets two versions be evaluated on the same requests."""
    split = engine.manifest.data["split"]
    lo, end = window if window is not None else (int(split["test_start"]), int(split["end"]))
    requests = sample_requests(conn, lo, end, config.requests, config.seed)
    horizon_end = end if config.horizon_days is None else lo + int(config.horizon_days * 86_400)
    truth = read_truth(conn, requests, horizon_end, int(config.window_hours * 3600))
    rng = np.random.default_rng(config.seed)
    tops: dict[str, list[np.ndarray]] = {name: [] for name in RANKERS}
    for u, t in tqdm(zip(requests[c.USER_ID].to_numpy(), requests["ts"].to_numpy(), strict=True),
                     total=len(requests), desc="rank", disable=None):
        for name in RANKERS:
            tops[name].append(full_catalogue_top(engine, name, int(u), int(t), rng))
    full = evaluate_rankings(tops, truth)
    shown, eligible = shown_set_hits(engine, requests, truth, RANKERS, config.seed)
    views = data.sample_views(conn, lo, end, config.auc_views, salt=config.seed + 7)
    users = data.read_users(conn)
    world = load_world_for(world_path, users[c.USER_ID].to_numpy())

    result: dict = {"protocol": {
        "requests_from": "views in the held-out window", "held_out": [lo, end], "horizon_end": horizon_end,
        "shown_window_hours": config.window_hours, "seed": config.seed, "model_version": engine.version}}
    result["requests"] = len(requests)
    result["protocol"]["ci95"] = "percentile bootstrap over users, each with all their requests"
    request_users = requests[c.USER_ID].to_numpy()
    ci: dict = {}
    for metric in ("hitrate@1", "hitrate@5", "hitrate@10", "ndcg@5", "map@5"):
        means, cis = _summary({n: full[n][metric] for n in RANKERS}, config.seed, request_users)
        result[metric], ci[metric] = means, cis
    shown5 = {n: shown[n][:, 4] for n in RANKERS}
    result["shown_requests"] = int(eligible.sum())
    result["shown_hitrate@5"], ci["shown_hitrate@5"] = _summary(shown5, config.seed, request_users[eligible])
    result["roc_auc"] = heldout_auc(engine, views, config.seed)
    result["coverage@5"] = {n: round(len({int(p) for r in tops[n] for p in r[:5]}) / len(engine.post_ids), 4)
                            for n in RANKERS}
    # popularity as of the held-out start: a fixed yardstick for how popular each ranker's picks are
    pop = dict(zip(engine.post_ids.tolist(), engine.popular_scores(lo).tolist(), strict=True))
    result["mean_popularity@5"] = {n: round(float(np.mean([pop[int(p)] for r in tops[n] for p in r[:5]])), 1)
                                   for n in RANKERS}
    details = {"requests": requests, "tops": tops, "full": full, "shown": shown, "eligible": eligible,
               "truth": truth, "users": users, "views": views}
    if world is not None:
        exp = world_expectations(world, engine, requests, tops)
        result["expected_hitrate@5"], ci["expected_hitrate@5"] = _summary(
            {n: exp[n] for n in (*RANKERS, "oracle")}, config.seed, request_users)
        e = result["expected_hitrate@5"]
        gap = e["oracle"] - e["popularity"]
        result["gap_closed"] = {n: round((e[n] - e["popularity"]) / gap, 4) if gap > 0 else None
                                for n in ("segment_popularity", "control", "test")}
        details["expected"] = exp
    if config.cold_start:
        result["cold_start"] = cold_start(world, engine, requests, truth)
    # which exposure the log has (training detected it, or was told) and what each slot serves
    exposure = engine.manifest.data.get("exposure", {"kind": "random", "detected": None})
    result["exposure"] = exposure
    result["fitting_protocol"] = FITTING_PROTOCOL.get(exposure.get("kind"), "shown_hitrate@5")
    result["slots"] = {name: {k: v for k, v in choice.items()}
                       for name, choice in engine.manifest.data.get("selection", {}).get("slots", {}).items()}
    groups = groups_of(requests, config)
    result["served"] = {"hitrate@5": served_metrics({n: full[n]["hitrate@5"] for n in RANKERS}, groups, config),
                        "requests": {g: int((groups == g).sum()) for g in ("control", "test")}}
    if world is not None:
        result["served"]["expected_hitrate@5"] = served_metrics(details["expected"], groups, config)
    result["ci95"] = ci
    return result, details


def write_json(result: dict, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=2, default=str))
