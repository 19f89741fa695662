"""The retrieval stage's proxy: a cheap stand-in for each model's score from a post's own columns.

Fitted against the model's own raw scores, centred per (user, topic), so the "favourite topics" and
"fresh" sources (`app.candidates`) can order a whole topic once an hour without the user side. A small
CatBoost regressor (a linear one explained a tenth of the within-user variance on the tiny test world):
`proxy_<model>.cbm`, listed with its columns and fit in `retrieval.json`.

What it learns from (`catalogue_samples`): validation-window requests scored over the whole catalogue,
the model's best posts of each and others at random, since retrieval must find the model's favourites
among every post, not order the posts users happened to view. Fitted on the viewed validation rows
instead, the control model's proxy and blend retrieved 0.90 of its full top 5 on a scale-1.0 world;
fitted on the catalogue, 0.98 with fewer candidates (docs/catalogue.md, 2026-11-30). The viewed rows
remain the fallback where the whole feed is not in memory (the Spark engine's training set).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
from catboost import CatBoostRegressor
from loguru import logger

from app import columns as c
from app.artifacts import MANIFEST, write_manifest
from app.candidates import BLEND_TERMS, RETRIEVAL_FILE, blend_terms, proxy_columns
from app.engine import Recommender, top_k
from app.features import assemble, feature_names
from training.features import post_counters_at, user_views_at

if TYPE_CHECKING:
    from training.train import Prepared

# validation requests scored over the catalogue for the proxy's fit: one per PROXY_ROWS_PER_REQUEST
# validation rows (what the fit read before), at least PROXY_MIN_REQUESTS, at most PROXY_REQUESTS
PROXY_REQUESTS = 1500
PROXY_MIN_REQUESTS = 50
PROXY_ROWS_PER_REQUEST = 100
PROXY_TOP = 100  # of each, the model's best posts (what retrieval must find) ...
PROXY_RANDOM = 300  # ... and others at random (what it must rank below them)
PROXY_MAX_POSTS = 20_000  # a larger catalogue: this many posts at random per request

# (test-feature matrix of rows, their posts' catalogue rows, their moments) -> the model's raw scores
Scorer = Callable[[np.ndarray, np.ndarray, np.ndarray], np.ndarray]


def _centred(values: np.ndarray, group: np.ndarray) -> np.ndarray:
    """values minus their mean within each group (rows of a 2-d array alike)."""
    values = np.asarray(values, np.float64)
    count = np.bincount(group)
    if values.ndim == 1:
        return values - (np.bincount(group, weights=values) / count)[group]
    means = np.stack([np.bincount(group, weights=v) / count for v in values.T], axis=1)
    return values - means[group]


def proxy_requests(val: pd.DataFrame, n: int | None = None, seed: int = 0) -> pd.DataFrame:
    """n distinct (user_row, ts) requests among the validation rows (a user at a moment they viewed); by
    default one per PROXY_ROWS_PER_REQUEST rows within [PROXY_MIN_REQUESTS, PROXY_REQUESTS], so that a
    small training set (the tests', a simulation's daily retrain) pays in proportion."""
    if n is None:
        n = min(PROXY_REQUESTS, max(PROXY_MIN_REQUESTS, -(-len(val) // PROXY_ROWS_PER_REQUEST)))
    pairs = val[["user_row", "ts"]].drop_duplicates().reset_index(drop=True)
    pick = np.random.default_rng(seed).choice(len(pairs), size=min(n, len(pairs)), replace=False)
    return pairs.iloc[np.sort(pick)].reset_index(drop=True)


def catalogue_samples(prep: Prepared, requests: pd.DataFrame, score: Scorer, seed: int = 0,
                      top: int = PROXY_TOP, random: int = PROXY_RANDOM,
                      max_posts: int = PROXY_MAX_POSTS) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(matrix, scores, request index, post row) of the kept rows: for each (user_row, ts) request, every post's
    test-feature row as of ts through the service's `assemble` (the user's events before ts, the posts'
    counters before ts, the collaborative vectors of ts's period), scored by `score`; kept are the
    model's best `top` and `random` others drawn at random."""
    rng = np.random.default_rng(seed)
    history, priors, n = prep.history, prep.priors, len(prep.static.topic)
    xs, ys, gs, ps = [], [], [], []
    users = requests["user_row"].to_numpy(np.int64)
    times = requests["ts"].to_numpy(np.int64)
    for i, (u, t) in enumerate(zip(users, times, strict=True)):
        posts = prep.schedule.posts(prep.static, int(prep.schedule.period(np.array([t]))[0]))
        rows = np.arange(n) if n <= max_posts else np.sort(rng.choice(n, max_posts, replace=False))
        ts = np.full(len(rows), t, np.int64)
        view = user_views_at(history, prep.profile, posts, priors, np.array([u]), np.array([t]))
        x = assemble(view, np.zeros(len(rows), np.int64), posts, rows, ts, True,
                     counters=post_counters_at(history, priors, rows, ts))
        s = np.asarray(score(x, rows, ts), np.float64)
        k = min(top, len(s))
        best = np.argpartition(-s, k - 1)[:k] if k else np.empty(0, np.int64)
        pick = np.union1d(best, rng.choice(len(s), min(random, len(s)), replace=False))
        xs.append(x[pick])
        ys.append(s[pick])
        gs.append(np.full(len(pick), i, np.int64))
        ps.append(rows[pick])
    return np.concatenate(xs), np.concatenate(ys), np.concatenate(gs), np.concatenate(ps)


def fit_proxy(matrix: np.ndarray, scores: np.ndarray, text: bool, users: np.ndarray,
              seed: int = 0, threads: int = 2) -> tuple[CatBoostRegressor, float, dict[str, float] | None]:
    """(proxy, R^2 within groups, blend) for a model's raw `scores` of the rows of `matrix` (test-model
    columns), `users` a key per row: the user, or the request (`catalogue_samples`).

    What a user brings moves every score of theirs alike, and what they think of a topic every score in
    it: neither is the business of a proxy that orders posts inside a topic. The scores are centred per
    (user, topic) (`users`: a user key per row) before the fit.

    `blend` holds the weights of the proxy and of the similarities the model reads (`blend_terms`: the
    four text ones and `sim_cf` for a text model, `sim_cf` alone otherwise) in a least-squares fit of
    the same centred scores (`fit_blend`): the model's favourites of a topic are posts both liked by
    many and near the user's taste, which neither the proxy's nor the taste vectors' own top lists hold
    (the retrieval's "blend" source, `app.candidates`)."""
    names = feature_names(True)
    cols = [names.index(n) for n in proxy_columns(text)]
    x = np.asfortranarray(matrix[:, cols], dtype=np.float32)
    topic = matrix[:, names.index("topic_code")].astype(np.int64)
    _, group = np.unique(np.asarray(users, np.int64) * 64 + topic, return_inverse=True)
    y = _centred(scores, group)
    model = CatBoostRegressor(iterations=150, depth=6, learning_rate=0.15, random_seed=seed, thread_count=threads,
                              verbose=False, allow_writing_files=False)
    model.fit(x, y)
    pred = model.predict(x)
    r2 = 1.0 - float(((y - pred) ** 2).sum() / max(((y - y.mean()) ** 2).sum(), 1e-12))
    terms = blend_terms(text)
    blend = fit_blend(pred, matrix[:, [names.index(n) for n in terms[1:]]], y, group, terms)
    return model, r2, blend


def fit_blend(proxy: np.ndarray, sims: np.ndarray, y: np.ndarray, group: np.ndarray,
              terms: tuple[str, ...] = BLEND_TERMS) -> dict[str, float]:
    """Least-squares weights of (proxy, similarities) for the scores `y`, all centred per group: a
    linear stand-in that one matrix product per topic evaluates (the similarities are inner products of
    the post's vectors with the user's), and its R^2 within groups."""
    x = _centred(np.column_stack([proxy, sims]), group)
    y = _centred(y, group)
    w, *_ = np.linalg.lstsq(x, y, rcond=None)
    r2 = 1.0 - float(((y - x @ w) ** 2).sum() / max((y ** 2).sum(), 1e-12))
    return {**{name: round(float(v), 6) for name, v in zip(terms, w, strict=True)}, "r2": round(r2, 4)}


def write_retrieval(version_dir: Path,
                    proxies: dict[str, tuple[CatBoostRegressor, float, dict[str, float] | None]],
                    texts: dict[str, bool], rows: int) -> None:
    meta = {}
    for name, (model, r2, blend) in proxies.items():
        file = f"proxy_{name}.cbm"
        model.save_model(str(version_dir / file))
        meta[name] = {"file": file, "text": texts[name], "columns": list(proxy_columns(texts[name])),
                      "r2_within_users": round(r2, 4)}
        if blend is not None:
            meta[name]["blend"] = blend
    (version_dir / RETRIEVAL_FILE).write_text(json.dumps({"proxy": meta, "rows": rows}, indent=1))


# the retrieval lists' lengths tried, relative to `app.candidates.Budget` (ascending: the first that
# reaches the target recall is kept)
CALIBRATION_SCALES = (0.25, 0.3, 0.35, 0.4, 0.45, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0, 1.25, 1.5, 2.0)
# recall of the model's full top 5 by the candidates, on validation requests (`train --retrieval-recall`).
# Above the 0.97 the service promises on held-out requests: on the demo world (scale 0.03, seed 11)
# held-out recall ran up to 0.01 below validation's at the same scale (on the scale-1.0 world, level),
# and 1,000 requests' recall moves by ~0.005
CALIBRATION_TARGET = 0.98
CALIBRATION_REQUESTS = 1000
CALIBRATION_SCORED_POSTS = 10_000_000  # full scoring's budget: fewer requests for a larger catalogue


def calibrate_scales(engine: Recommender, requests: pd.DataFrame, target: float = CALIBRATION_TARGET,
                     scales: tuple[float, ...] = CALIBRATION_SCALES, k: int = 5) -> dict[str, dict]:
    """Per model, the shortest retrieval lists (a scale of `Budget`) whose candidates hold `target` of
    the model's full top k, measured on `requests` (user_id, ts) with `engine`, an artifact loaded with
    candidate retrieval: the full top k is what `Recommender.recommend` serves with RETRIEVAL=full (the
    same exclusions). How many candidates a model needs depends on the model and the world (on the
    scale-1.0 demo world at one size: control 0.983 of its top 5, test 0.997; another host's artifact
    0.972 / 0.991), so a fixed size is either too short for one artifact or wasted on another.

    Returns {model: {"scale", "recall", "candidates" (median), "requests", "curve": {scale: [recall,
    median candidates]}}}; a model with no request it ranks itself (a popularity floor) keeps 1.0."""
    retriever, state = engine.retriever, engine.state
    frame = state.catalogue.frame
    out = {}
    for name in retriever.proxies:
        if name not in engine.models:
            continue
        asked = []  # (ts, user, posts, the full top k's rows)
        for u, t in zip(requests[c.USER_ID].to_numpy(np.int64), requests["ts"].to_numpy(np.int64), strict=True):
            user, posts = state.at(state.user_row(int(u)), int(t))
            if engine.ranker_for(name, user) != name:
                continue
            n = len(posts.topic)
            rows = np.arange(n)
            scores = np.where(engine.eligible(rows, user, int(t), n),
                              engine.model_scores(name, user, posts, int(t)), -np.inf)
            top = top_k(scores, frame.ids[:n], k)
            top = top[np.isfinite(scores[top])]
            if len(top):
                asked.append((int(t), user, n, top))
        if not asked:
            out[name] = {"scale": 1.0, "recall": None, "candidates": None, "requests": 0, "curve": {}}
            continue
        asked.sort(key=lambda a: a[0])  # the hourly lists are computed once per hour
        curve, chosen = {}, None
        for scale in scales:
            retriever.rescale(name, scale)
            found, sizes = 0, []
            for t, user, n, top in asked:
                cand = engine.candidates(name, user, t, n)
                found += int(np.isin(top, cand).sum())
                sizes.append(len(cand))
            recall = found / sum(len(a[3]) for a in asked)
            curve[str(scale)] = [round(recall, 4), int(np.median(sizes))]
            if recall >= target:
                chosen = scale
                break
        chosen = chosen if chosen is not None else scales[-1]
        retriever.rescale(name, chosen)
        recall, size = curve[str(chosen)]
        out[name] = {"scale": chosen, "recall": recall, "candidates": size, "requests": len(asked),
                     "target": target, "curve": curve}
    return out


def calibration_size(n_posts: int, requests: int = CALIBRATION_REQUESTS) -> int:
    """How many requests the calibration scores in full: `requests`, fewer for a large catalogue, at least 30."""
    return max(30, min(requests, CALIBRATION_SCORED_POSTS // max(n_posts, 1)))


def calibration_requests(val: pd.DataFrame, n_posts: int, exact_from: int, seed: int = 0) -> pd.DataFrame:
    """(user_id, ts) validation requests for `calibrate_scales`: one per PROXY_ROWS_PER_REQUEST validation
    rows, from PROXY_MIN_REQUESTS to CALIBRATION_REQUESTS, fewer where the catalogue makes full scoring dear
    (at least 30). From the moments the artifact's state answers
    exactly (`exact_from`, its base cut: the validation window's last days by default) when they hold
    enough; otherwise from the whole window, whose earlier requests the state answers as of its cut."""
    # like the proxy's requests, in proportion to the validation rows (a test's tiny world, a simulation's
    # daily retrain), up to CALIBRATION_REQUESTS
    wanted = max(PROXY_MIN_REQUESTS, len(val) // PROXY_ROWS_PER_REQUEST)
    n = calibration_size(n_posts, min(CALIBRATION_REQUESTS, wanted))
    pairs = val[[c.USER_ID, "ts"]].drop_duplicates().reset_index(drop=True)
    exact = pairs[pairs["ts"] >= exact_from].reset_index(drop=True)
    if len(exact) >= n:
        pairs = exact
    pick = np.random.default_rng(seed + 1).choice(len(pairs), size=min(n, len(pairs)), replace=False)
    return pairs.iloc[np.sort(pick)].reset_index(drop=True)


def calibrate_version(version_dir: Path, requests: pd.DataFrame, target: float = CALIBRATION_TARGET) -> dict[str, dict]:
    """Load an artifact version as the service does, calibrate each model's retrieval budget on
    `requests` (`calibrate_scales`) and write it into the version: `retrieval.json` (what the service
    reads) and the manifest (a summary, and the files' new checksums)."""
    started = time.perf_counter()
    version_dir = Path(version_dir)
    engine = Recommender.load_version(version_dir)
    if engine.retriever is None:
        raise ValueError(f"{version_dir} has no {RETRIEVAL_FILE} (trained before candidate retrieval): retrain")
    budgets = calibrate_scales(engine, requests, target)
    path = version_dir / RETRIEVAL_FILE
    data = json.loads(path.read_text())
    for name, result in budgets.items():
        data["proxy"][name]["budget"] = result
    path.write_text(json.dumps(data, indent=1))
    manifest = json.loads((version_dir / MANIFEST).read_text())
    manifest.pop("files", None)  # recomputed by write_manifest
    manifest["retrieval"]["budget"] = {k: {f: v[f] for f in ("scale", "recall", "candidates", "requests")}
                                       for k, v in budgets.items()}
    write_manifest(version_dir, manifest)
    for name, b in budgets.items():
        logger.info("retrieval budget {}: scale {} holds {} of the full top 5 at {} candidates ({} requests)",
                    name, b["scale"], b["recall"], b["candidates"], b["requests"])
    logger.info("retrieval calibrated in {:.0f}s", time.perf_counter() - started)
    return budgets
