"""Which kind of exposure a log has: a random feed (the course's) or users choosing what they view.

The question decides how to evaluate and what to optimise. Under a random feed the posts a user is
shown do not depend on the user nor on the moment: a user's views spread over the topics as everyone's
do, and a post is viewed as often in every week. Where users choose, both fail: a user's views pile up
on the topics they like, and a post's views on the weeks it is new or in fashion. Each is measured as a
chi-square statistic of independence divided by its degrees of freedom (≈ 1 when independent, whatever
the log's size; far above 1 when not) on the views before a cut.

    user_topic: users (with >= MIN_VIEWS views) x topics
    post_week:  posts (with >= MIN_VIEWS views) x weeks

The log is "organic" when either exceeds ORGANIC_ABOVE.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from training.features import History

KINDS = ("random", "organic")
MIN_VIEWS = 20
ORGANIC_ABOVE = 2.0  # a random feed gives ~1.0-1.2 on the demo worlds (docs/reallogs.md), organic ones far more
WEEK = 7 * 86_400


@dataclass(frozen=True)
class ExposureKind:
    kind: str  # what training and evaluation use
    detected: str  # what the log says
    user_topic: float  # chi-square / dof of users x topics
    post_week: float  # chi-square / dof of posts x weeks
    forced: bool  # the kind was given explicitly (--exposure), not detected

    def describe(self) -> dict:
        return asdict(self)


def dependence(table: np.ndarray) -> float:
    """Chi-square statistic of independence over its degrees of freedom, rows and columns with counts.

    >>> round(dependence(np.array([[10, 10], [10, 10]])), 3)
    0.0
    >>> dependence(np.array([[20, 0], [0, 20]])) > 10
    True
    """
    t = np.asarray(table, np.float64)
    t = t[t.sum(axis=1) > 0][:, t.sum(axis=0) > 0]
    if t.shape[0] < 2 or t.shape[1] < 2:
        return 0.0
    expected = t.sum(axis=1, keepdims=True) * t.sum(axis=0, keepdims=True) / t.sum()
    chi2 = float(((t - expected) ** 2 / expected).sum())
    return chi2 / ((t.shape[0] - 1) * (t.shape[1] - 1))


def detect(history: History, post_topic: np.ndarray, before: int, forced: str | None = None) -> ExposureKind:
    """The exposure kind of the views before `before` (or `forced`, still measuring what the log says)."""
    if forced is not None and forced not in KINDS:
        raise ValueError(f"exposure must be one of {KINDS}, got {forced!r}")
    ev = history.events
    views = history.views & (ev.ts < before)
    owner = ev.rows()[views]
    post, ts = ev.post[views].astype(np.int64), ev.ts[views]
    n_topics = int(post_topic.max()) + 1 if len(post_topic) else 1
    heavy_users = np.bincount(owner, minlength=len(history.user_ids)) >= MIN_VIEWS
    keep = heavy_users[owner]
    user_topic = np.zeros((len(history.user_ids), n_topics))
    np.add.at(user_topic, (owner[keep], post_topic[post[keep]]), 1.0)
    week = ((ts - ts.min()) // WEEK).astype(np.int64) if len(ts) else ts.astype(np.int64)
    heavy_posts = np.bincount(post, minlength=len(post_topic)) >= MIN_VIEWS
    keep = heavy_posts[post]
    post_week = np.zeros((len(post_topic), int(week.max()) + 1 if len(week) else 1))
    np.add.at(post_week, (post[keep], week[keep]), 1.0)
    a, b = dependence(user_topic), dependence(post_week)
    detected = "organic" if max(a, b) > ORGANIC_ABOVE else "random"
    return ExposureKind(kind=forced or detected, detected=detected, user_topic=round(a, 3), post_week=round(b, 3),
                        forced=forced is not None)
