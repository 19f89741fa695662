"""The catalogue: post arrays that grow while the service runs (ids, topics, static columns, vectors).

Rows are appended, never moved, so a post row stays valid for ever (users' likes, the post counters and
the retrieval indexes keep rows). The arrays are allocated with spare room (doubling) and each
`add` publishes a new immutable `CatalogueFrame` with one reference assignment: a reader keeps the frame
it read (its arrays sliced to its own length), a writer only ever fills rows beyond it.

`born` is the moment (feed time, seconds) a post entered the catalogue: the artifact's posts have
always been there; a post added while serving is born at the latest event the state held then, and a
request for an earlier moment does not see it.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from app.features import POST_COUNTERS, PostView

ALWAYS = np.iinfo(np.int64).min // 2  # born before any request


@dataclass(frozen=True)
class CatalogueFrame:
    ids: np.ndarray  # (P,) int64, in row order (not necessarily sorted)
    posts: PostView  # counters left empty: they come from the timeline
    born: np.ndarray  # (P,) int64
    latest_born: int  # max(born): requests after it see every post
    sorted_ids: np.ndarray  # ids sorted, and the row of each
    sorted_rows: np.ndarray

    @property
    def n(self) -> int:
        return len(self.ids)

    def rows(self, post_ids: np.ndarray) -> np.ndarray:
        """Row of each id, -1 for ids the catalogue does not hold."""
        post_ids = np.asarray(post_ids, dtype=np.int64)
        if not self.n:
            return np.full(post_ids.shape, -1, np.int64)
        i = np.clip(np.searchsorted(self.sorted_ids, post_ids), 0, self.n - 1)
        return np.where(self.sorted_ids[i] == post_ids, self.sorted_rows[i], -1).astype(np.int64)

    def unborn(self, t: int) -> np.ndarray:
        """Rows of the posts that did not exist yet at t (usually none)."""
        if t >= self.latest_born:
            return np.empty(0, np.int64)
        return np.flatnonzero(self.born > t)


_FIELDS = ("static", "text", "vec", "tfidf_vec", "topic", "cf")


class Catalogue:
    """One writer (the follower) calls `add`; readers take `frame` once per request."""

    def __init__(self, post_ids: np.ndarray, posts: PostView, born: np.ndarray | None = None) -> None:
        n = len(post_ids)
        self._ids = np.asarray(post_ids, np.int64).copy()
        self._born = np.full(n, ALWAYS, np.int64) if born is None else np.asarray(born, np.int64).copy()
        self._arrays = {name: np.ascontiguousarray(getattr(posts, name)) for name in _FIELDS}
        self._n = n
        self._frame = self._publish()

    @property
    def frame(self) -> CatalogueFrame:
        return self._frame

    def _publish(self) -> CatalogueFrame:
        n = self._n
        a = {name: arr[:n] for name, arr in self._arrays.items()}
        ids = self._ids[:n]
        order = np.argsort(ids, kind="stable")
        view = PostView(static=a["static"], counters=np.zeros((0, len(POST_COUNTERS)), np.float32), text=a["text"],
                        vec=a["vec"], tfidf_vec=a["tfidf_vec"], topic=a["topic"], cf=a["cf"])
        born = self._born[:n]
        return CatalogueFrame(ids, view, born, int(born.max()) if n else ALWAYS, ids[order], order)

    def add(self, post_ids: np.ndarray, posts: PostView, born: int | np.ndarray) -> np.ndarray:
        """Append posts the catalogue does not hold (ids it holds are skipped); returns the new rows."""
        post_ids = np.asarray(post_ids, np.int64)
        fresh = self._frame.rows(post_ids) < 0
        _, first = np.unique(post_ids, return_index=True)  # an id twice in one batch: keep the first
        keep = np.zeros(len(post_ids), bool)
        keep[first] = True
        keep &= fresh
        k = int(keep.sum())
        if not k:
            return np.empty(0, np.int64)
        n = self._n
        if n + k > len(self._ids):  # grow: copy into arrays with room, readers keep the old ones
            cap = max(2 * len(self._ids), n + k, 1024)
            self._ids = _grown(self._ids, cap)
            self._born = _grown(self._born, cap)
            self._arrays = {name: _grown(arr, cap) for name, arr in self._arrays.items()}
        self._ids[n:n + k] = post_ids[keep]
        self._born[n:n + k] = np.broadcast_to(np.asarray(born, np.int64), post_ids.shape)[keep]
        for name in _FIELDS:
            self._arrays[name][n:n + k] = getattr(posts, name)[keep]
        self._n = n + k
        self._frame = self._publish()  # one assignment: readers see the batch whole or not at all
        return np.arange(n, n + k, dtype=np.int64)


def _grown(arr: np.ndarray, cap: int) -> np.ndarray:
    out = np.zeros((cap, *arr.shape[1:]), arr.dtype)
    out[:len(arr)] = arr
    return out
