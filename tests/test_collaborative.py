"""Collaborative post vectors: what they capture, their determinism, and their periods."""

import numpy as np

from training.collaborative import MAX_TRAINING_REFITS, Schedule, fit_post_vectors, refit_moments

DAY = 86_400


def _two_groups(seed: int = 0):
    """Users of group g like posts of group g only: posts 0-19 and 20-39; posts 40-49 liked by nobody."""
    rng = np.random.default_rng(seed)
    users, posts = [], []
    for u in range(200):
        group = u % 2
        liked = rng.choice(20, size=6, replace=False) + 20 * group
        users += [u] * len(liked)
        posts += liked.tolist()
    return np.array(users), np.array(posts)


def test_posts_liked_by_the_same_users_point_the_same_way():
    users, posts = _two_groups()
    vecs = fit_post_vectors(users, posts, 200, 50, dim=8)
    assert vecs.shape == (50, 8) and vecs.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(vecs[:40], axis=1), 1.0, atol=1e-5)
    assert not vecs[40:].any()  # liked by nobody: zero, whatever the factorisation left there
    sims = vecs[:40] @ vecs[:40].T
    group = np.arange(40) // 20
    same = (group[:, None] == group[None, :]) & ~np.eye(40, dtype=bool)
    across = group[:, None] != group[None, :]
    # 8 factors for 2 groups: posts of a group spread over several directions, all away from the other's
    assert sims[same].mean() > 0.2 and abs(sims[across].mean()) < 0.05


def test_the_same_likes_in_any_order_give_the_same_vectors():
    users, posts = _two_groups(1)
    order = np.random.default_rng(2).permutation(len(users))
    a = fit_post_vectors(users, posts, 200, 50, dim=8)
    b = fit_post_vectors(users[order], posts[order], 200, 50, dim=8)
    np.testing.assert_allclose(a, b, atol=1e-5)


def test_too_few_likes_give_zeros():
    assert not fit_post_vectors(np.array([0, 1]), np.array([3, 4]), 5, 10, dim=8).any()


def test_periods_start_at_training_every_week_validation_and_held_out():
    starts = refit_moments(100 * DAY, 114 * DAY, 121 * DAY)
    assert ((starts - 100 * DAY) // DAY).tolist() == [0, 7, 14, 21]
    long = refit_moments(DAY, 200 * DAY, 207 * DAY)  # --train-days 0 on a long log: longer periods
    assert len(long) <= MAX_TRAINING_REFITS + 2 and long[-2:].tolist() == [200 * DAY, 207 * DAY]
    schedule = Schedule(starts, np.zeros((len(starts), 3, 2), np.float32))
    moments = np.array([50, 100, 106.9, 107, 120, 121, 130]) * DAY
    assert schedule.period(moments.astype(np.int64)).tolist() == [0, 0, 0, 1, 2, 3, 3]
