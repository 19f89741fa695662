"""Ranking metrics per request, averaged afterwards, with bootstrap intervals.

Each function takes a ranked list of post ids and the set of relevant ones and returns a number for
that request; a protocol averages them over requests.
"""

from __future__ import annotations

import numpy as np


def hit_at(ranked: np.ndarray, relevant: set[int], k: int) -> float:
    """1 if any of the first k is relevant.

    >>> hit_at(np.array([5, 3, 9]), {9}, 2), hit_at(np.array([5, 3, 9]), {9}, 3)
    (0.0, 1.0)
    """
    return float(any(int(p) in relevant for p in ranked[:k]))


def ndcg_at(ranked: np.ndarray, relevant: set[int], k: int) -> float:
    """Binary-relevance NDCG@k.

    >>> round(ndcg_at(np.array([5, 9]), {9}, 2), 4)  # (1/log2(3)) / (1/log2(2))
    0.6309
    """
    if not relevant:
        return 0.0
    gains = [1.0 / np.log2(i + 2) for i, p in enumerate(ranked[:k]) if int(p) in relevant]
    ideal = sum(1.0 / np.log2(i + 2) for i in range(min(len(relevant), k)))
    return float(sum(gains) / ideal)


def ap_at(ranked: np.ndarray, relevant: set[int], k: int) -> float:
    """Average precision at k, normalised by min(|relevant|, k).

    >>> ap_at(np.array([9, 5, 7]), {9, 7}, 3)  # (1/1 + 2/3) / 2
    0.8333333333333333
    """
    if not relevant:
        return 0.0
    hits, total = 0, 0.0
    for i, p in enumerate(ranked[:k]):
        if int(p) in relevant:
            hits += 1
            total += hits / (i + 1)
    return total / min(len(relevant), k)


def bootstrap_ci(values: np.ndarray, n_boot: int = 1000, seed: int = 0, alpha: float = 0.05,
                 clusters: np.ndarray | None = None) -> tuple[float, float]:
    """Percentile interval of the mean over requests resampled with replacement; with `clusters` (the
    user of each request), users are resampled with all their requests, since one user's requests are
    correlated and resampling them one by one gives intervals that are too narrow.

    >>> ones_user = np.r_[np.ones(50), np.zeros(50)]  # user 0 always hits, user 1 never
    >>> bootstrap_ci(ones_user, clusters=np.r_[np.zeros(50), np.ones(50)])  # two users: anything goes
    (0.0, 1.0)
    >>> lo, hi = bootstrap_ci(ones_user)  # 100 independent requests: far narrower
    >>> 0.35 < lo < 0.5 < hi < 0.65
    True
    """
    values = np.asarray(values, dtype=float)
    if len(values) == 0:
        return (float("nan"), float("nan"))
    rng = np.random.default_rng(seed)
    means = np.empty(n_boot)
    if clusters is not None:
        _, which = np.unique(np.asarray(clusters), return_inverse=True)
        sums, counts = np.bincount(which, weights=values), np.bincount(which).astype(float)
        for b in range(n_boot):  # the mean over every request of the drawn users
            pick = rng.integers(0, len(sums), len(sums))
            means[b] = sums[pick].sum() / counts[pick].sum()
    else:
        for b in range(n_boot):  # a loop keeps memory flat for large request sets
            means[b] = values[rng.integers(0, len(values), len(values))].mean()
    lo, hi = np.quantile(means, [alpha / 2, 1 - alpha / 2])
    return (round(float(lo), 4), round(float(hi), 4))


def difference_ci(later: np.ndarray, earlier: np.ndarray, n_boot: int = 2000, seed: int = 0,
                  alpha: float = 0.05) -> tuple[float, float]:
    """Percentile interval of mean(later) - mean(earlier) for two sets of requests drawn apart (day 10
    and day 1 of a simulation: other users, other moments), each resampled on its own. Users who come back
    make the two sets positively correlated, which this ignores: the interval is, if anything, too wide.

    >>> lo, hi = difference_ci(np.r_[np.ones(60), np.zeros(40)], np.r_[np.ones(40), np.zeros(60)])
    >>> 0.05 < lo < 0.2 < hi < 0.35
    True
    """
    a, b = np.asarray(later, dtype=float), np.asarray(earlier, dtype=float)
    if len(a) == 0 or len(b) == 0:
        return (float("nan"), float("nan"))
    rng = np.random.default_rng(seed)
    diffs = np.array([a[rng.integers(0, len(a), len(a))].mean() - b[rng.integers(0, len(b), len(b))].mean()
                      for _ in range(n_boot)])
    lo, hi = np.quantile(diffs, [alpha / 2, 1 - alpha / 2])
    return (round(float(lo), 4), round(float(hi), 4))


def expected_hit(probabilities: np.ndarray) -> float:
    """P(at least one like) when posts with these like probabilities are shown together."""
    return float(1.0 - np.prod(1.0 - np.asarray(probabilities, dtype=float)))
