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
