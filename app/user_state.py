"""A user's state as of a moment, from that user's events alone: the per-user partition function.

`fold_user` counts a user's views (per topic, liked, first, last, distinct days) strictly before each
query moment, on top of a base (the counts of older events that are no longer kept one by one);
`taste_at` sums the text and collaborative vectors of the posts liked before each moment. Training calls them with an
empty base and the user's whole history for every training row's moment; the service calls them
with the artifact's base and the events after it for one request's moment. Nothing here looks at
another user, so the same functions run per user partition on any engine (a pandas group, a Spark
`applyInPandas`).

Events are arrays of one user: `ts` (int64 seconds), `post` (post rows), `kind` (VIEW or LIKE) and
`target` (1 on a view followed by a like). Any order: they are sorted here.
"""

from __future__ import annotations

import numpy as np

from app.features import (
    COUNT_DAYS,
    COUNT_FIRST,
    COUNT_LAST,
    COUNT_LIKED,
    COUNT_TOPIC_LIKED,
    COUNT_TOPIC_VIEWS,
    COUNT_VIEWS,
    N_TOPICS,
    SECONDS_PER_DAY,
    Taste,
)
from app.rowsets import unique

VIEW, LIKE = 0, 1
_EYE = np.eye(N_TOPICS, dtype=np.int64)
_TOPICS = np.arange(N_TOPICS)


def fold_user(base: np.ndarray, base_days: np.ndarray, ts: np.ndarray, post: np.ndarray, kind: np.ndarray,
              target: np.ndarray, post_topic: np.ndarray, times: np.ndarray) -> np.ndarray:
    """Counts (m, N_COUNTS) as of each of the m `times`: `base` (N_COUNTS,) plus the views before t.

    `base_days` are the sorted distinct days (ts // 86400) of the views the base counted, so that a
    day is counted once however the events are split between base and list.

    >>> from app.features import empty_counts
    >>> topic = np.array([0, 1])
    >>> ts = np.array([100, 200, 90_000, 150]); post = np.array([0, 1, 1, 0])
    >>> kind = np.array([VIEW, VIEW, VIEW, LIKE]); target = np.array([1, 0, 0, 0])
    >>> out = fold_user(empty_counts()[0], np.array([]), ts, post, kind, target, topic, np.array([150, 10**6]))
    >>> out[:, :5].tolist()  # views, liked, first, last, days
    [[1, 1, 100, 100, 1], [3, 1, 100, 90000, 2]]
    """
    times = np.atleast_1d(np.asarray(times, dtype=np.int64))
    out = np.repeat(np.asarray(base, dtype=np.int64)[None, :], len(times), axis=0)
    views = kind == VIEW
    if len(times) == 1:  # a request: count the views before its moment directly
        sel = views & (ts < times[0])
        vts = ts[sel]
        if not len(vts):
            return out
        vtopic = post_topic[post[sel]]
        vtarget = target[sel]
        row = out[0]
        row[COUNT_VIEWS] += len(vts)
        row[COUNT_LIKED] += int(vtarget.sum())
        row[COUNT_TOPIC_VIEWS] += np.bincount(vtopic, minlength=N_TOPICS)
        row[COUNT_TOPIC_LIKED] += np.bincount(vtopic[vtarget > 0], minlength=N_TOPICS)
        row[COUNT_DAYS] += len(_new_days(unique(vts // SECONDS_PER_DAY), base_days))
        first, last = int(vts.min()), int(vts.max())
        row[COUNT_FIRST] = first if row[COUNT_FIRST] < 0 else min(row[COUNT_FIRST], first)
        row[COUNT_LAST] = max(row[COUNT_LAST], last)
        return out
    if not views.any():
        return out
    # many moments of one user (training rows): prefix sums over the user's views in time order
    vts = ts[views]
    order = np.argsort(vts, kind="stable")
    vts = vts[order]
    vtopic = post_topic[post[views][order]]
    vtarget = target[views][order].astype(np.int64)
    cut = np.searchsorted(vts, times, side="left")  # views strictly before each moment
    out[:, COUNT_VIEWS] += cut
    out[:, COUNT_LIKED] += np.concatenate([[0], np.cumsum(vtarget)])[cut]
    onehot = _EYE[vtopic]
    out[:, COUNT_TOPIC_VIEWS] += np.concatenate([np.zeros((1, N_TOPICS), np.int64), np.cumsum(onehot, axis=0)])[cut]
    out[:, COUNT_TOPIC_LIKED] += np.concatenate(
        [np.zeros((1, N_TOPICS), np.int64), np.cumsum(onehot * vtarget[:, None], axis=0)])[cut]
    day = vts // SECONDS_PER_DAY
    new_day = np.ones(len(day), dtype=bool)
    new_day[1:] = day[1:] != day[:-1]
    if len(base_days):
        new_day &= ~np.isin(day, base_days)
    out[:, COUNT_DAYS] += np.concatenate([[0], np.cumsum(new_day)])[cut]
    has = cut > 0
    first, last = out[:, COUNT_FIRST], out[:, COUNT_LAST]
    out[:, COUNT_FIRST] = np.where(has, np.where(first >= 0, np.minimum(first, vts[0]), vts[0]), first)
    out[:, COUNT_LAST] = np.where(has, np.maximum(last, vts[np.maximum(cut - 1, 0)]), last)
    return out


def _new_days(days: np.ndarray, base_days: np.ndarray) -> np.ndarray:
    """The sorted `days` that the sorted `base_days` do not hold."""
    if not len(base_days):
        return days
    pos = np.minimum(np.searchsorted(base_days, days), len(base_days) - 1)
    return days[base_days[pos] != days]


def taste_at(base_likes: np.ndarray, like_ts: np.ndarray, like_post: np.ndarray, times: np.ndarray,
             post_vec: np.ndarray, post_tfidf_vec: np.ndarray, post_topic: np.ndarray,
             post_cf: np.ndarray) -> Taste:
    """Vector sums over the posts liked before each moment: every post of `base_likes` (liked before
    the base's cut) and those of (`like_ts`, `like_post`) with a time before the moment. Sums are taken
    in float64, so the order in which the likes arrive does not change the float32 features."""
    times = np.atleast_1d(np.asarray(times, dtype=np.int64))
    m, d = len(times), post_vec.shape[1]
    out = Taste(likes=np.zeros(m, np.int64), vec_sum=np.zeros((m, d)), topic_likes=np.zeros((m, N_TOPICS)),
                topic_sum=np.zeros((m, N_TOPICS, d)), topic_tfidf_sum=np.zeros((m, N_TOPICS, d)),
                cf_sum=np.zeros((m, post_cf.shape[1])))
    if m == 1:  # a request: no need to order the likes
        cuts, liked = [0], [like_post[like_ts < times[0]]]
    else:
        order = np.argsort(like_ts, kind="stable")
        like_post = like_post[order]
        cuts = np.searchsorted(like_ts[order], times, side="left")
        liked = [like_post[:cut] for cut in cuts]
    for i, recent in enumerate(liked):  # one moment in serving; a user's training rows in training
        rows = np.concatenate([base_likes, recent]) if len(base_likes) else recent
        if not len(rows):
            continue
        # rows by `np.take`: the same values as fancy indexing, faster for these narrow rows
        topic = np.take(post_topic, rows)
        onehot = (topic[None, :] == _TOPICS[:, None]).astype(np.float64)  # (topics, likes)
        vec = np.take(post_vec, rows, axis=0).astype(np.float64)
        out.likes[i] = len(rows)
        out.vec_sum[i] = vec.sum(axis=0)
        out.topic_likes[i] = np.bincount(topic, minlength=N_TOPICS)
        out.topic_sum[i] = onehot @ vec
        out.topic_tfidf_sum[i] = onehot @ np.take(post_tfidf_vec, rows, axis=0).astype(np.float64)
        out.cf_sum[i] = np.take(post_cf, rows, axis=0).astype(np.float64).sum(axis=0)
    return out


def days_of_views(ts: np.ndarray, kind: np.ndarray, before: int) -> np.ndarray:
    """Sorted distinct days of the views before `before` (what a base keeps beside its counts)."""
    return np.unique(ts[(kind == VIEW) & (ts < before)] // SECONDS_PER_DAY)
