"""Why this post: the served row of one (user, post, moment) and CatBoost's own SHAP values on it.

The row is built by `assemble` from the live state as of the moment, exactly as the request path
builds it (a test checks it equals that row of the full-catalogue matrix). CatBoost's exact SHAP
values add up, with the model's expected value, to the raw score the ranking used.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from catboost import Pool

from app.artifacts import MODEL_FILES, MODEL_USES_TEXT
from app.engine import Recommender
from app.features import assemble, feature_names


class NotExplainable(LookupError):
    """The (user, post, model) cannot be explained; the message names what is unknown."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field


# What a feature measures, by the start of its name (first match wins); see app/features.py.
_MEANINGS = (
    ("u_like_rate_post_topic", "user × post: the user's like rate in the post's topic"),
    ("u_view_share_post_topic", "user × post: share of the user's views in the post's topic"),
    ("u_like_lift_post_topic", "user × post: topic like rate minus the user's own rate"),
    ("u_view_share_", "user: share of views in this topic"),
    ("u_like_rate_", "user: smoothed like rate in this topic"),
    ("u_days_since", "time: days since the user's first or last view"),
    ("u_", "user: activity before the moment"),
    ("city_", "user: the city's prior like rate or size"),
    ("p_", "post: views, likes or like rate before the moment"),
    ("tfidf_", "post: TF-IDF text component or cluster distance"),
    ("emb_", "post: sentence-embedding component"),
    ("sim_cf", "user × post: how close the post is to what the user liked, by who else liked them"),
    ("sim_", "user × post: text similarity to what the user liked"),
    ("hour", "time: hour of the request (UTC)"),
    ("weekday", "time: day of the week (Monday = 0)"),
)


def meaning(name: str) -> str:
    for prefix, text in _MEANINGS:
        if name.startswith(prefix):
            return text
    return "user profile" if name in ("gender", "age", "country_code", "os_ios", "source_organic",
                                      "exp_group") else "post"


@dataclass(frozen=True)
class Contribution:
    name: str
    value: float  # NaN: missing (e.g. no view yet)
    shap: float
    meaning: str


@dataclass(frozen=True)
class Explanation:
    user_id: int
    post_id: int
    model: str
    ts: int
    features_as_of: int
    expected_value: float  # the model's raw score before any feature is known
    raw_score: float  # expected value + sum of contributions
    contributions: list[Contribution]  # biggest |shap| first
    rank: int | None  # the post's place in the user's ranking; None when the screen excludes it
    candidates: int  # posts the screen could show

    @property
    def probability(self) -> float:
        return 1.0 / (1.0 + math.exp(-self.raw_score))


def served_row(recommender: Recommender, model: str, user_id: int, post_id: int, ts: int) -> np.ndarray:
    """The feature row (1, F) of one post in the user's request at second ts."""
    if model not in MODEL_FILES:
        raise NotExplainable("model", f"model {model!r} has no SHAP values: choose one of {tuple(MODEL_FILES)}")
    state = recommender.state
    row = state.user_row(user_id)
    if row < 0:
        raise NotExplainable("user", f"user {user_id} is unknown to the state (it is ranked by popularity)")
    prow = int(state.post_rows(np.array([post_id]))[0])
    if prow < 0:
        raise NotExplainable("post", f"post {post_id} is not in the catalogue")
    user, posts = state.at(row, ts)
    return assemble(user.view, np.int64(0), posts, np.array([prow]), np.int64(ts), text=MODEL_USES_TEXT[model])


def explain(recommender: Recommender, model: str, user_id: int, post_id: int, ts: int) -> Explanation:
    x = served_row(recommender, model, user_id, post_id, ts)
    shap = recommender.models[model].get_feature_importance(Pool(x), type="ShapValues", thread_count=1)[0]
    names = feature_names(MODEL_USES_TEXT[model])
    order = np.argsort(-np.abs(shap[:-1]), kind="stable")
    contributions = [Contribution(names[i], float(x[0, i]), float(shap[i]), meaning(names[i])) for i in order]
    ranking, scores = recommender.rank(model, user_id, ts, 1)
    candidates = int(np.isfinite(scores).sum())
    prow = int(recommender.state.post_rows(np.array([post_id]))[0])
    rank = None
    if np.isfinite(scores[prow]):
        # the same order as top_k: higher score first, ties by ascending post id
        ids = recommender.post_ids
        rank = int((scores > scores[prow]).sum() + ((scores == scores[prow]) & (ids < post_id)).sum()) + 1
    return Explanation(user_id, post_id, model, ts, ranking.features_as_of, float(shap[-1]),
                       float(shap.sum()), contributions, rank, candidates)
