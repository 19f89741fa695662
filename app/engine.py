"""The scoring engine: artifacts loaded once, then (user, time, k) -> best posts in milliseconds.

Per request: one feature matrix for all posts built by `assemble` (NumPy only), one CatBoost call,
exclusion of posts the user liked before the requested time, top k by `argpartition` with ties
broken by post id.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from catboost import CatBoostClassifier

from app.artifacts import (
    MODEL_FILES,
    MODEL_USES_TEXT,
    POSTS_FILE,
    TABLES_FILE,
    ArtifactsInvalid,
    Manifest,
    current_version_dir,
    load_manifest,
)
from app.features import POST_NUM, FeatureTables, assemble

POPULAR = "popular"
MODEL_NAMES = (*MODEL_FILES, POPULAR)
_P_LIKES = POST_NUM.index("p_likes")


class UnknownModel(ValueError):
    pass


@dataclass(frozen=True)
class Ranking:
    post_ids: np.ndarray
    model: str  # the model that actually ranked (popular for users the models don't know)


def top_k(scores: np.ndarray, ids: np.ndarray, k: int) -> np.ndarray:
    """Positions of the k best scores, best first; equal scores in ascending id order.

    >>> top_k(np.array([0.1, 0.9, 0.5, 0.9]), np.array([10, 11, 12, 13]), 3).tolist()
    [1, 3, 2]
    """
    n = len(scores)
    k = min(k, n)
    if k <= 0:
        return np.empty(0, dtype=np.int64)
    if k < n:
        kth = scores[np.argpartition(-scores, k - 1)[:k]].min()
        better = np.flatnonzero(scores > kth)
        ties = np.flatnonzero(scores == kth)
        ties = ties[np.argsort(ids[ties], kind="stable")][: k - len(better)]
        cand = np.concatenate([better, ties])
    else:
        cand = np.arange(n)
    return cand[np.lexsort((ids[cand], -scores[cand]))]


class Recommender:
    """Everything the service needs to rank, read from one artifact version."""

    def __init__(self, manifest: Manifest, tables: FeatureTables, models: dict[str, CatBoostClassifier],
                 posts: dict[int, dict] | None = None):
        self.manifest = manifest
        self.posts = posts or {}  # post id -> {"id", "text", "topic"}
        self.version = manifest.version
        self.tables = tables
        self.models = models
        # stage 1 of the course: most liked posts before the snapshot, ties by post id
        self.popular_scores = tables.post_num[:, _P_LIKES].astype(np.float64)

    @classmethod
    def load(cls, model_dir: Path) -> Recommender:
        manifest = load_manifest(current_version_dir(model_dir))
        try:
            tables = FeatureTables.load(manifest.file(TABLES_FILE))
            posts = {int(p["id"]): p for p in json.loads(manifest.file(POSTS_FILE).read_text())}
            models = {}
            for name, file in MODEL_FILES.items():
                model = CatBoostClassifier()
                model.load_model(str(manifest.file(file)))
                models[name] = model
        except Exception as exc:  # a half-written or foreign file: refuse with the reason
            raise ArtifactsInvalid(f"{manifest.path}: cannot load artifacts: {exc}") from None
        return cls(manifest, tables, models, posts)

    def knows(self, user_id: int) -> bool:
        return bool(self.tables.user_row(np.array([user_id]))[0] >= 0)

    def scores(self, model: str, user_row: int, ts: int) -> np.ndarray:
        """Score of every post (in tables.post_ids order) for one known user at second ts."""
        if model == POPULAR:
            return self.popular_scores.copy()
        if model not in self.models:
            raise UnknownModel(f"unknown model {model!r}; choose one of {MODEL_NAMES}")
        tables = self.tables
        x = assemble(tables, np.int64(user_row), None, np.int64(ts),
                     text=MODEL_USES_TEXT[model])
        return self.models[model].predict(x, prediction_type="RawFormulaVal", thread_count=1)

    def recommend(self, model: str, user_id: int, ts: int, k: int) -> Ranking:
        """Top k post ids for the user at second ts, excluding posts liked before ts."""
        row = int(self.tables.user_row(np.array([user_id]))[0])
        served = model if row >= 0 else POPULAR  # cold start: users the models never saw
        scores = self.scores(served, row, ts)
        if row >= 0:
            liked = self.tables.liked_before(row, ts)
            if len(liked):
                scores[self.tables.post_row(liked)] = -np.inf
        keep = top_k(scores, self.tables.post_ids, k)
        keep = keep[np.isfinite(scores[keep])]
        return Ranking(self.tables.post_ids[keep], served)

    def recommend_many(self, model: str, user_ids: np.ndarray, times: np.ndarray, k: int) -> list[Ranking]:
        """Batch form: one ranking per (user, time) pair."""
        return [self.recommend(model, int(u), int(t), k) for u, t in zip(user_ids, times, strict=True)]
