"""Popularity within a profile segment (age band x gender): the ranking for a user the service knows
nothing about beyond the profile.

A post's score for a segment is its live popularity (liked views before t, from the state) times the
segment's smoothed share of that post's likes, measured before a cut that the artifact fixes (the
snapshot's base cut, or a window's start in training): what the segment likes more than everyone does
rises, what it ignores sinks, and popularity keeps moving with the log. Both sides call these functions
with the same arrays: `segment_of` on the profile block, `segment_shares` on likes before the cut.

>>> segment_of(np.array([[1, 25.0], [0, 14.0], [1, 60.0]], np.float32)).tolist()
[5, 0, 7]
"""

from __future__ import annotations

import numpy as np

AGE_EDGES = np.array([21, 31, 46])  # 14-20, 21-30, 31-45, 46+: the bands of the demo world's profile term
N_SEGMENTS = 2 * (len(AGE_EDGES) + 1)
SHARE_PRIOR_LIKES = 20.0  # a post with few likes keeps close to the segment's overall share


def segment_of(profile: np.ndarray) -> np.ndarray:
    """Segment code of each profile row (columns gender, age first, as `app.features.PROFILE`):
    gender * 4 + age band."""
    profile = np.atleast_2d(profile)
    band = np.searchsorted(AGE_EDGES, profile[:, 1], side="right")
    return (profile[:, 0].astype(np.int64) * (len(AGE_EDGES) + 1) + band).astype(np.int64)


def segment_shares(like_segment: np.ndarray, like_post: np.ndarray, n_posts: int) -> np.ndarray:
    """(N_SEGMENTS, n_posts) float32: each segment's smoothed share of each post's likes, divided by the
    segment's share of all likes (1.0: the segment likes the post as much as everyone does).

    >>> s = segment_shares(np.array([0, 0, 1]), np.array([0, 0, 1]), 2)
    >>> bool(s[0, 0] > 1 > s[1, 0])
    True
    """
    counts = np.zeros((N_SEGMENTS, n_posts))
    np.add.at(counts, (np.asarray(like_segment, np.int64), np.asarray(like_post, np.int64)), 1.0)
    overall = counts.sum(axis=1) / max(counts.sum(), 1.0)  # each segment's share of all likes
    per_post = counts.sum(axis=0)
    share = (counts + SHARE_PRIOR_LIKES * overall[:, None]) / (per_post[None, :] + SHARE_PRIOR_LIKES)
    lift = share / np.maximum(overall[:, None], 1e-12)
    return np.where(overall[:, None] > 0, lift, 1.0).astype(np.float32)


def segment_scores(popularity: np.ndarray, shares: np.ndarray, segment: int) -> np.ndarray:
    """Every post's score for one segment: live popularity (liked views before t) times the lift."""
    return np.asarray(popularity, np.float64) * shares[int(segment)]
