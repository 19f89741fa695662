"""Set operations on integer arrays (post rows, days) by sorting: what `np.unique` and `np.isin` answer.

NumPy 2's `np.unique` finds the distinct values with a hash table and then sorts them anyway; on the
few hundred to few thousand rows of one request that cost several times a sort and a neighbour
comparison (it showed among the largest items of a request's profile), and `np.isin` calls it on both
of its arguments. The request path (candidate union, blend pool, exclusions, the user's days) runs
these several times per request.
"""

from __future__ import annotations

import numpy as np


def unique(values: np.ndarray) -> np.ndarray:
    """The distinct values, sorted (as `np.unique(values)`).

    >>> unique(np.array([5, 1, 5, 3, 1])).tolist()
    [1, 3, 5]
    """
    values = np.sort(np.ravel(values))
    if len(values) < 2:
        return values
    keep = np.empty(len(values), bool)
    keep[0] = True
    np.not_equal(values[1:], values[:-1], out=keep[1:])
    return values[keep]


# A mask over the catalogue costs O(n) to clear and scan, a sort O(k log k) for k values: the mask wins
# while n is within a few dozen times k (7,023 posts, ~2,000 listed rows: 56 -> 13 us; at 1M posts the
# sort, 55 against 147 us)
_MASK_PER_VALUE = 64


def unique_below(values: np.ndarray, n: int) -> np.ndarray:
    """The distinct values in [0, n), sorted, as int64 (as `np.unique(values[(values >= 0) & (values < n)])`).

    >>> unique_below(np.array([5, 1, 5, 3, 1, 9]), 6).tolist()
    [1, 3, 5]
    """
    values = np.ravel(values)
    values = values[(values >= 0) & (values < n)]
    if n <= _MASK_PER_VALUE * len(values):
        mask = np.zeros(n, bool)
        mask[values] = True
        return np.flatnonzero(mask)
    return unique(values.astype(np.int64))


def isin(values: np.ndarray, members: np.ndarray) -> np.ndarray:
    """Mask over `values`: which of them `members` holds (as `np.isin(values, members)`).

    >>> isin(np.array([4, 2, 9]), np.array([9, 1, 4, 4])).tolist()
    [True, False, True]
    """
    values = np.asarray(values)
    if not len(members) or not len(values):
        return np.zeros(values.shape, bool)
    members = np.sort(np.ravel(members))
    at = np.searchsorted(members, values)
    at[at == len(members)] = 0  # past the largest: compared with any member, unequal
    return members[at] == values
