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

from app.candidates import RETRIEVAL_FILE, proxy_columns
from app.features import feature_names


def fit_proxy(matrix: np.ndarray, scores: np.ndarray, text: bool, users: np.ndarray,
              seed: int = 0, threads: int = 2) -> tuple[CatBoostRegressor, float]:
    """(proxy, R^2 within groups) for a model's raw `scores` of the rows of `matrix` (test-model columns).

    What a user brings moves every score of theirs alike, and what they think of a topic every score in
    it: neither is the business of a proxy that orders posts inside a topic. The scores are centred per
    (user, topic) (`users`: a user key per row) before the fit."""
    names = feature_names(True)
    cols = [names.index(n) for n in proxy_columns(text)]
    x = np.asfortranarray(matrix[:, cols], dtype=np.float32)
    y = np.asarray(scores, np.float64)
    topic = matrix[:, names.index("topic_code")].astype(np.int64)
    _, group = np.unique(np.asarray(users, np.int64) * 64 + topic, return_inverse=True)
    y = y - (np.bincount(group, weights=y) / np.bincount(group))[group]
    model = CatBoostRegressor(iterations=150, depth=6, learning_rate=0.15, random_seed=seed, thread_count=threads,
                              verbose=False, allow_writing_files=False)
    model.fit(x, y)
    pred = model.predict(x)
    r2 = 1.0 - float(((y - pred) ** 2).sum() / max(((y - y.mean()) ** 2).sum(), 1e-12))
    return model, r2


def write_retrieval(version_dir: Path, proxies: dict[str, tuple[CatBoostRegressor, float]],
                    texts: dict[str, bool], rows: int) -> None:
    meta = {}
    for name, (model, r2) in proxies.items():
        file = f"proxy_{name}.cbm"
        model.save_model(str(version_dir / file))
        meta[name] = {"file": file, "text": texts[name], "columns": list(proxy_columns(texts[name])),
                      "r2_within_users": round(r2, 4)}
    (version_dir / RETRIEVAL_FILE).write_text(json.dumps({"proxy": meta, "rows": rows}, indent=1))
