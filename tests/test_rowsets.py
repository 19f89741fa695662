"""The sort-based set operations answer what NumPy's do, on random and edge-case arrays."""

import doctest

import numpy as np
import pytest

from app import rowsets


def test_doctests():
    assert doctest.testmod(rowsets).failed == 0


@pytest.mark.parametrize("seed", range(20))
def test_unique_and_isin_agree_with_numpy(seed):
    rng = np.random.default_rng(seed)
    n, m, high = (int(x) for x in rng.integers(0, 300, 3))
    values = rng.integers(-5, high + 1, n)
    members = rng.integers(-5, high + 1, m).astype(np.int32)  # mixed dtypes, as rows and int32 likes
    np.testing.assert_array_equal(rowsets.unique(values), np.unique(values))
    assert rowsets.unique(values).dtype == np.unique(values).dtype
    np.testing.assert_array_equal(rowsets.isin(values, members), np.isin(values, members))


def test_empty_and_single():
    empty = np.empty(0, np.int64)
    np.testing.assert_array_equal(rowsets.unique(empty), empty)
    np.testing.assert_array_equal(rowsets.unique(np.array([3])), [3])
    np.testing.assert_array_equal(rowsets.isin(np.array([1, 2]), empty), [False, False])
    assert rowsets.isin(empty, np.array([1])).shape == (0,)
    np.testing.assert_array_equal(rowsets.isin(np.array([7, 8]), np.array([8])), [False, True])


@pytest.mark.parametrize("seed", range(20))
def test_unique_below_agrees_with_numpy_on_both_paths(seed):
    """Both the mask (catalogue small beside the values) and the sort (a large catalogue) give NumPy's answer."""
    rng = np.random.default_rng(seed)
    values = rng.integers(-3, 400, int(rng.integers(0, 300))).astype(np.int32)
    for n in (0, 1, 50, 400, 10**6):  # 10**6 > 64 x 300 values: the sort
        expected = np.unique(values[(values >= 0) & (values < n)]).astype(np.int64)
        got = rowsets.unique_below(values, n)
        np.testing.assert_array_equal(got, expected)
        assert got.dtype == np.int64
