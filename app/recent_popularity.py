"""What is popular right now: each post's views and likes in the last RECENT_SECONDS before a moment.

Where users choose what they open, a post's pull moves with time (new posts, fashions), which the
all-time counters of `app.features` cannot tell. The "liked within the next horizon" models
(`training.horizon`) read these columns after `assemble`'s. Both sides compute them from two readings
of the same post counters — as of t and as of t - RECENT_SECONDS — the service from its live state's
timeline, training from `app.post_counters.counts_before` — and call `recent_features` on them. The
window equals the exclusion window the state keeps event by event before its base cut, so every
held-out or live request reads exact counts.
"""

from __future__ import annotations

import numpy as np

RECENT_SECONDS = 72 * 3600
RECENT_FEATURES = ("p_recent_views_log", "p_recent_likes_log", "p_recent_view_share")


def recent_features(now: np.ndarray, before: np.ndarray) -> np.ndarray:
    """(n, 3) float32 from (views, liked views) as of t and as of t - RECENT_SECONDS: log1p of the
    recent views and likes, and the recent share of all views so far (1.0 for a post that is new).

    >>> recent_features(np.array([[10, 2], [0, 0]]), np.array([[6, 1], [0, 0]])).round(3).tolist()
    [[1.609, 0.693, 0.4], [0.0, 0.0, 0.0]]
    """
    now, before = np.asarray(now, np.float64), np.asarray(before, np.float64)
    recent = np.maximum(now - before, 0.0)
    share = np.where(now[:, 0] > 0, recent[:, 0] / np.maximum(now[:, 0], 1.0), 0.0)
    return np.column_stack([np.log1p(recent[:, 0]), np.log1p(recent[:, 1]), share]).astype(np.float32)
