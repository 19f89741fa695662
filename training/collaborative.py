"""Collaborative post vectors: what the likes of many users say about which posts go together.

A matrix factorisation (`implicit`'s alternating least squares) of the user x post like matrix gives
every post a vector; posts liked by the same users point the same way, whatever their texts say. The
service never runs the factorisation: the post vectors are columns of the catalogue (`PostView.cf`, unit
length, zero for a post nobody had liked before the fit) and the user side is the mean of the vectors of
the posts the user liked before the request's moment — summed by `app.user_state.taste_at` like the text
taste vectors, so it follows every new like live and needs no state of its own. The feature `sim_cf` is
the inner product of the two (`app.features.assemble`); the candidate source "collaborative" takes the nearest posts
(`app.candidates`).

Point in time, like every other feature: the service's vectors are those of its artifact, fitted on the
likes before its cut and refitted at each retraining; a training row's are those a service retrained
every `REFIT_DAYS` would have had at the row's moment (`Schedule`: fitted on the likes before the start
of the row's period — the first training day, each `REFIT_DAYS` after, the validation and held-out
windows' starts). No row learns from its own outcome, and the held-out rows read exactly the vectors the
artifact serves. A post liked only after a fit has a zero vector until the next one.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np
import scipy.sparse as sp
from loguru import logger

from app.features import CF_DIM, PostView
from app.snapshot import rows_of

ITERATIONS = 15
REGULARIZATION = 0.05
ALPHA = 10.0  # confidence of an observed like over an unobserved pair
REFIT_DAYS = 7  # training rows: vectors as a service retrained this often would have had them
DAY = 86_400


def fit_post_vectors(user_rows: np.ndarray, post_rows: np.ndarray, n_users: int, n_posts: int,
                     dim: int = CF_DIM, seed: int = 0, threads: int = 0) -> np.ndarray:
    """(n_posts, dim) float32 unit post vectors from the (user row, post row) like pairs; a post without
    a like gets zeros. Deterministic for the same pairs in any order (one fixed seed, a canonical
    matrix), so that every engine that hands over the same likes gets the same vectors."""
    from implicit.cpu.als import AlternatingLeastSquares
    from threadpoolctl import threadpool_limits

    out = np.zeros((n_posts, dim), np.float32)
    user_rows = np.asarray(user_rows, np.int64)
    post_rows = np.asarray(post_rows, np.int64)
    if len(user_rows) < 2 * dim:
        logger.warning("collaborative vectors: {} likes before the fit, too few: every post gets zeros",
                       len(user_rows))
        return out
    # binary: a post liked twice by one user (like, unlike, like) counts once
    matrix = sp.csr_matrix((np.ones(len(user_rows), np.float32), (user_rows, post_rows)), shape=(n_users, n_posts))
    matrix.sum_duplicates()
    matrix.data[:] = ALPHA
    matrix.sort_indices()
    with threadpool_limits(1, "blas"):  # implicit runs its own threads; BLAS's on top oversubscribe them
        model = AlternatingLeastSquares(factors=dim, regularization=REGULARIZATION, alpha=1.0,
                                        iterations=ITERATIONS, random_state=seed, num_threads=threads)
        model.fit(matrix, show_progress=False)
    vecs = np.asarray(model.item_factors, np.float64)[:, :dim]
    liked = matrix.getnnz(axis=0) > 0
    norm = np.linalg.norm(vecs, axis=1)
    ok = liked & (norm > 0)
    out[ok] = (vecs[ok] / norm[ok, None]).astype(np.float32)
    logger.info("collaborative vectors: {} likes, {} of {} posts with a vector", int(matrix.nnz), int(ok.sum()),
                n_posts)
    return out


@dataclass(frozen=True)
class Schedule:
    """Vectors by period: `vectors[k]`, fitted on the likes before `starts[k]`, serve the moments from
    `starts[k]` until `starts[k + 1]` (moments before the first start: the first)."""

    starts: np.ndarray  # (K,) int64, increasing
    vectors: np.ndarray  # (K, P, CF_DIM) float32

    def period(self, ts: np.ndarray) -> np.ndarray:
        return np.maximum(np.searchsorted(self.starts, np.asarray(ts, np.int64), side="right") - 1, 0)

    def posts(self, posts: PostView, k: int) -> PostView:
        return replace(posts, cf=self.vectors[k])


MAX_TRAINING_REFITS = 12  # a long training window (`--train-days 0`) gets longer periods, not more fits


def refit_moments(train_start: int, val_start: int, test_start: int, refit_days: int = REFIT_DAYS) -> np.ndarray:
    """The period starts of the training rows (every `refit_days` from `train_start`, or longer periods
    when that would take more than MAX_TRAINING_REFITS fits) and of the validation and held-out windows."""
    days = max(refit_days, -(-(val_start - train_start) // (MAX_TRAINING_REFITS * DAY)))
    every = np.arange(train_start, val_start, days * DAY, dtype=np.int64)
    return np.unique(np.concatenate([every, [val_start, test_start]]).astype(np.int64))


def fit_schedule(user_rows: np.ndarray, post_rows: np.ndarray, ts: np.ndarray, moments: np.ndarray,
                 n_users: int, n_posts: int) -> Schedule:
    """A `Schedule` from the like events (user row, post row, time): one fit per moment."""
    ts = np.asarray(ts, np.int64)
    vectors = np.stack([fit_post_vectors(user_rows[ts < m], post_rows[ts < m], n_users, n_posts) for m in moments])
    return Schedule(np.asarray(moments, np.int64), vectors)


def history_likes(history) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(user rows, post rows, times) of the like events of a `training.features.History`."""
    from app.user_state import LIKE

    ev = history.events
    user_rows = rows_of(ev.indptr, np.int64)  # int64 without an int32 copy first
    sel = ev.kind == LIKE
    return user_rows[sel], ev.post[sel].astype(np.int64), ev.ts[sel]


def served_vectors(schedule: Schedule, likes: tuple[np.ndarray, np.ndarray, np.ndarray], cut: int, n_users: int,
                   n_posts: int) -> np.ndarray:
    """The served state's vectors: fitted on the likes before its cut (the schedule's, when it has a period
    starting there: the held-out rows and the service then read the same vectors)."""
    at = np.flatnonzero(schedule.starts == cut)
    if len(at):
        return schedule.vectors[at[0]]
    user_rows, post_rows, ts = likes
    before = np.asarray(ts) < cut
    return fit_post_vectors(user_rows[before], post_rows[before], n_users, n_posts)
