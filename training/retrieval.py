"""The retrieval stage's proxy: a cheap stand-in for each model's score from a post's own columns.

Fitted on the validation rows against the model's own raw scores, centred per (user, topic), so the "favourite
topics" and "fresh" sources (`app.candidates`) can order a whole topic once an hour without the user
side. A small CatBoost regressor (a linear one explained a tenth of the within-user variance on the
tiny test world): `proxy_<model>.cbm`, listed with its columns and fit in `retrieval.json`.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from catboost import CatBoostRegressor

from app.candidates import BLEND_TERMS, RETRIEVAL_FILE, blend_terms, proxy_columns
from app.features import feature_names


def _centred(values: np.ndarray, group: np.ndarray) -> np.ndarray:
    """values minus their mean within each group (rows of a 2-d array alike)."""
    values = np.asarray(values, np.float64)
    count = np.bincount(group)
    if values.ndim == 1:
        return values - (np.bincount(group, weights=values) / count)[group]
    means = np.stack([np.bincount(group, weights=v) / count for v in values.T], axis=1)
    return values - means[group]


def fit_proxy(matrix: np.ndarray, scores: np.ndarray, text: bool, users: np.ndarray,
              seed: int = 0, threads: int = 2) -> tuple[CatBoostRegressor, float, dict[str, float] | None]:
    """(proxy, R^2 within groups, blend) for a model's raw `scores` of the rows of `matrix` (test-model
    columns).

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
