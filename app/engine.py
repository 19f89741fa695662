"""The scoring engine: artifacts loaded once, then (user, time, k) -> best posts in milliseconds.

Per request: the user and the catalogue as of the requested moment from the live state
(`app.live_state`), one feature matrix for all posts built by `assemble` (NumPy only), one CatBoost
call, exclusion of posts the user liked before that moment and of those viewed within the exclusion
window, top k by `argpartition` with ties broken by post id.
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
    STATE_FILE,
    ArtifactsInvalid,
    Manifest,
    current_version_dir,
    load_manifest,
)
from app.features import PostView, assemble
from app.live_state import LiveState, UserAt
from app.snapshot import Snapshot

POPULAR = "popular"
MODEL_NAMES = (*MODEL_FILES, POPULAR)


class UnknownModel(ValueError):
    pass


@dataclass(frozen=True)
class Ranking:
    post_ids: np.ndarray
    model: str  # the model that actually ranked (popular for users the state does not know)
    features_as_of: int  # the moment the features describe: the request's, or the base cut before it


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
    """Everything the service needs to rank: one artifact version's models and its live state."""

    def __init__(self, manifest: Manifest, state: LiveState, models: dict[str, CatBoostClassifier],
                 posts: dict[int, dict] | None = None):
        self.manifest = manifest
        self.posts = posts or {}  # post id -> {"id", "text", "topic"}
        self.version = manifest.version
        self.state = state
        self.models = models

    @classmethod
    def load(cls, model_dir: Path, exclude_viewed_hours: float = 72.0, exclude_last_views: int = 50) -> Recommender:
        """The version `model_dir/current` names."""
        return cls.load_version(current_version_dir(model_dir), exclude_viewed_hours, exclude_last_views)

    @classmethod
    def load_version(cls, version_dir: Path, exclude_viewed_hours: float = 72.0,
                     exclude_last_views: int = 50) -> Recommender:
        """One version folder, checked (manifest, checksums, feature lists) before anything is loaded."""
        manifest = load_manifest(Path(version_dir))
        try:
            snapshot = Snapshot.load(manifest.file(STATE_FILE))
            posts = {int(p["id"]): p for p in json.loads(manifest.file(POSTS_FILE).read_text())}
            models = {}
            for name, file in MODEL_FILES.items():
                model = CatBoostClassifier()
                model.load_model(str(manifest.file(file)))
                models[name] = model
        except Exception as exc:  # a half-written or foreign file: refuse with the reason
            raise ArtifactsInvalid(f"{manifest.path}: cannot load artifacts: {exc}") from None
        state = LiveState(snapshot, int(exclude_viewed_hours * 3600), exclude_last_views)
        return cls(manifest, state, models, posts)

    @property
    def post_ids(self) -> np.ndarray:
        return self.state.post_ids

    def knows(self, user_id: int) -> bool:
        return self.state.user_row(user_id) >= 0

    def popular_scores(self, t: int) -> np.ndarray:
        """Stage 1 of the course: liked views of each post before t (ties by post id in top_k)."""
        return self.state.counts_at(t)[:, 1].astype(np.float64)

    def model_scores(self, model: str, user: UserAt, posts: PostView, ts: int) -> np.ndarray:
        """Score of every post (in post_ids order) for one user as of second ts."""
        if model not in self.models:
            raise UnknownModel(f"unknown model {model!r}; choose one of {MODEL_NAMES}")
        x = assemble(user.view, np.int64(0), posts, None, np.int64(ts), text=MODEL_USES_TEXT[model])
        return self.models[model].predict(x, prediction_type="RawFormulaVal", thread_count=1)

    def scores(self, model: str, user_id: int, ts: int) -> tuple[np.ndarray, UserAt | None]:
        """Every post's score under `model` (popular for unknown users) and the user as of ts."""
        row = self.state.user_row(user_id)
        user, posts = self.state.at(row, ts)
        if model == POPULAR or user is None:
            return self.popular_scores(ts), user
        return self.model_scores(model, user, posts, ts), user

    def recommend(self, model: str, user_id: int, ts: int, k: int) -> Ranking:
        """Top k post ids for the user at second ts, excluding posts liked before ts and posts viewed in
        the exclusion window before it or among the user's last views."""
        return self.rank(model, user_id, ts, k)[0]

    def rank(self, model: str, user_id: int, ts: int, k: int) -> tuple[Ranking, np.ndarray]:
        """`recommend` with the scores it ranked by (post_ids order; -inf for excluded posts): the
        console shows them beside the very ranking the API serves."""
        if model not in MODEL_NAMES:
            raise UnknownModel(f"unknown model {model!r}; choose one of {MODEL_NAMES}")
        scores, user = self.scores(model, user_id, ts)
        served = model if user is not None else POPULAR  # users the state does not know
        if user is not None:
            scores[user.liked] = -np.inf
            scores[user.viewed] = -np.inf
        keep = top_k(scores, self.post_ids, k)
        keep = keep[np.isfinite(scores[keep])]
        return Ranking(self.post_ids[keep], served, self.state.features_as_of(ts)), scores

    def recommend_many(self, model: str, user_ids: np.ndarray, times: np.ndarray, k: int) -> list[Ranking]:
        """Batch form: one ranking per (user, time) pair."""
        return [self.recommend(model, int(u), int(t), k) for u, t in zip(user_ids, times, strict=True)]
