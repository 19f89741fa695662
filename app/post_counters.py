"""Per-post counters (views, liked views, weighted views) as of any moment: the post-side partition of
the state. A view's weight (`app.features.Priors.view_weight`, an integer number of thousandths) is
fixed when the view is applied, so every counter is a sum over views.

`PostTimeline` keeps the base counts (events before the artifact's base cut) and every later view in
time order, cut into sealed blocks of `block` views with the counts before each block (a checkpoint).
The counts strictly before t are a checkpoint plus at most one block's views; a moment after every
applied view reads the running totals without any work. Late views (older than views already
applied) are merged into place. Each batch publishes a new immutable frame with one reference
assignment, so readers on other threads never see half a batch.

`counts_before` answers the same question for many (post, moment) pairs at once (training rows);
a test checks that both agree.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

DEFAULT_BLOCK = 16_384
# `counts_at_rows` finds a view's place among the rows by a map over the catalogue while the catalogue is
# within this many times the views to count (a fill and a gather), by binary search beyond (O(views log rows))
_MAP_PER_VIEW = 8


@dataclass(frozen=True)
class _Views:
    ts: np.ndarray  # int64, sorted
    post: np.ndarray  # int32 post rows
    target: np.ndarray  # int8
    weight: np.ndarray  # int16 (`Priors.view_weight`)

    def __len__(self) -> int:
        return len(self.ts)

    @staticmethod
    def empty() -> _Views:
        return _Views(np.empty(0, np.int64), np.empty(0, np.int32), np.empty(0, np.int8), np.empty(0, np.int16))

    @staticmethod
    def merged(parts: list[_Views]) -> _Views:
        ts = np.concatenate([p.ts for p in parts])
        order = np.argsort(ts, kind="stable")
        return _Views(ts[order], np.concatenate([p.post for p in parts])[order],
                      np.concatenate([p.target for p in parts])[order],
                      np.concatenate([p.weight for p in parts])[order])

    def __getitem__(self, s: slice) -> _Views:
        return _Views(self.ts[s], self.post[s], self.target[s], self.weight[s])


def _bincount(views: _Views, n_posts: int) -> np.ndarray:
    """(views, liked views, weighted views) per post. Three counts side by side by `column_stack`: writing
    them into the columns of one (n, 3) array cost 3-4x as much on this host (strided stores)."""
    post = views.post
    seen = np.bincount(post, minlength=n_posts)[:n_posts]
    liked = np.bincount(post[views.target > 0], minlength=n_posts)[:n_posts]
    # float64 sums of integers below 2**53 are exact
    weighted = np.bincount(post, weights=views.weight, minlength=n_posts)[:n_posts].astype(np.int64)
    return np.column_stack([seen, liked, weighted])


def _sized(counts: np.ndarray, n_posts: int) -> np.ndarray:
    """Counts of a smaller catalogue, padded with zeros for the posts added since (no views before)."""
    if len(counts) >= n_posts:
        return counts
    return np.concatenate([counts, np.zeros((n_posts - len(counts), counts.shape[1]), counts.dtype)])


@dataclass(frozen=True)
class _Frame:
    blocks: tuple[_Views, ...]
    last_ts: np.ndarray  # last ts of each sealed block
    checkpoints: tuple[np.ndarray, ...]  # counts before block k; the last: before the head (may be shorter
    # than n_posts: posts added later are padded when read)
    head: _Views
    current: np.ndarray  # counts after every view
    n_posts: int
    floor: int | None = None  # moments before it are read as of it (the views before it are no longer kept)


class PostTimeline:
    """(views, liked views, weighted views) per post row as of any moment after the base cut."""

    def __init__(self, base: np.ndarray, block: int | None = None) -> None:
        self.block = block  # views per sealed block; None: adaptive (`block_size`)
        base = np.asarray(base, dtype=np.int64)
        self._frame = _Frame((), np.empty(0, np.int64), (base,), _Views.empty(), base, len(base))
        self.applied = 0

    @property
    def n_posts(self) -> int:
        return self._frame.n_posts

    def block_size(self, n_posts: int) -> int:
        """Views per sealed block: the fixed `block`, or max(DEFAULT_BLOCK, 4 per post), so that the
        checkpoints (16 bytes a post each) stay at most 4 bytes a view however large the catalogue grows."""
        return self.block if self.block is not None else max(DEFAULT_BLOCK, 4 * n_posts)

    @property
    def events(self) -> int:
        f = self._frame
        return sum(len(b) for b in f.blocks) + len(f.head)

    @property
    def latest(self) -> int | None:
        """Time of the latest view applied (None before any)."""
        f = self._frame
        if len(f.head):
            return int(f.head.ts[-1])
        return int(f.last_ts[-1]) if len(f.last_ts) else None

    @property
    def frame(self) -> _Frame:
        """The published state: read it once, then ask `counts_at(t, frame)` as often as needed."""
        return self._frame

    @staticmethod
    def _locate(t: int, f: _Frame) -> tuple[np.ndarray, int, _Views]:
        """Where t falls: (checkpoint counts, sign, views): the counts before t are the checkpoint's plus
        `sign` times those of the views. The views come from whichever end of t's block is nearer: the
        counts after a block less its views from t on are the same integers as the counts before it plus
        its views before t, and half the views to count on average. Past every applied view: the running
        totals (`f.current` itself) and no views."""
        if f.floor is not None and t < f.floor:
            t = f.floor
        k = int(np.searchsorted(f.last_ts, t, side="left"))
        if k < len(f.blocks):  # between checkpoints k and k + 1
            views, before, after = f.blocks[k], f.checkpoints[k], f.checkpoints[k + 1]
        else:  # in the head: between the last checkpoint and the running totals
            views, before, after = f.head, f.checkpoints[-1], f.current
        j = int(np.searchsorted(views.ts, t, side="left"))
        if j == len(views) and after is f.current:
            return f.current, 1, views[:0]
        if j <= len(views) - j:
            return before, 1, views[:j]
        return after, -1, views[j:]

    def counts_at(self, t: int, frame: _Frame | None = None) -> np.ndarray:
        """(P, 3) counts of the views strictly before t (never modify the result: it may be shared)."""
        f = self._frame if frame is None else frame  # one read: a batch meanwhile publishes a new frame
        n = f.n_posts
        base, sign, part = self._locate(t, f)
        if base is f.current and not len(part):
            return f.current  # past every view: the running totals themselves (`LiveState` caches on them)
        return _sized(base, n) + _bincount(part, n) if sign > 0 else _sized(base, n) - _bincount(part, n)

    def counts_at_rows(self, t: int, rows: np.ndarray, frame: _Frame | None = None) -> np.ndarray:
        """(len(rows), 3) `counts_at(t)[rows]` for the sorted distinct post `rows`, without the O(catalogue)
        work of the whole catalogue's counts: a request ranks a few hundred candidates, and at a past
        moment (the checker's replays) the counts of every post cost it more than the ranking of its own
        (the sum, the float conversion and the like rates of all of them)."""
        f = self._frame if frame is None else frame
        rows = np.asarray(rows, np.int64)
        n = f.n_posts
        base, sign, part = self._locate(t, f)
        out = np.zeros((len(rows), 3), np.int64)
        held = rows < len(base)  # posts added after a checkpoint had no views before it
        out[held] = base[rows[held]]
        if len(part):
            m = len(rows)
            if n <= _MAP_PER_VIEW * len(part):  # each view's place among the rows by a map over the catalogue
                place = np.full(n, -1, np.int64)
                place[rows] = np.arange(m)
                at = place[part.post]
                hit = at >= 0
            else:  # a catalogue much larger than the views to count: by binary search in the rows
                at = np.minimum(np.searchsorted(rows, part.post), m - 1)
                hit = rows[at] == part.post
            # the views of the rows, renumbered by their place among them: counted as `counts_at` counts
            out += sign * _bincount(_Views(part.ts[hit], at[hit], part.target[hit], part.weight[hit]), m)
        return out

    def counts_of(self, post_rows: np.ndarray, times: np.ndarray, frame: _Frame | None = None) -> np.ndarray:
        """(n, 3) `counts_at(times[i])[post_rows[i]]` for many (post row, moment) pairs at once: the
        checkpoint before each moment's block plus that block's views of the post before the moment
        (`counts_before`), one pass per block asked for instead of the whole catalogue per moment."""
        f = self._frame if frame is None else frame
        post_rows, times = np.asarray(post_rows, np.int64), np.asarray(times, np.int64)
        if f.floor is not None:
            times = np.maximum(times, f.floor)
        block = np.searchsorted(f.last_ts, times, side="left")  # len(blocks): the head
        out = np.zeros((len(post_rows), 3), np.int64)
        for k in np.unique(block):
            at = np.flatnonzero(block == k)
            views = f.blocks[k] if k < len(f.blocks) else f.head
            checkpoint = f.checkpoints[k] if k < len(f.blocks) else f.checkpoints[-1]
            p = post_rows[at]
            known = p < len(checkpoint)  # posts added after the checkpoint had no views before it
            out[at[known]] = checkpoint[p[known]]
            if len(views):
                out[at] += counts_before(views.post, views.ts, views.target, views.weight, p, times[at])
        return out

    def add_posts(self, k: int) -> None:
        """Room for k new posts (rows after the current ones), with no views. Only the writer calls this."""
        if k <= 0:
            return
        f = self._frame
        n = f.n_posts + k
        self._frame = _Frame(f.blocks, f.last_ts, f.checkpoints, f.head, _sized(f.current, n), n, f.floor)

    def add(self, ts: np.ndarray, post: np.ndarray, target: np.ndarray, weight: np.ndarray) -> None:
        """Apply views (any order) with their weights. Only the writer thread calls this."""
        if not len(ts):
            return
        new = _Views.merged([_Views(np.asarray(ts, np.int64), np.asarray(post, np.int32),
                                    np.asarray(target, np.int8), np.asarray(weight, np.int16))])
        f = self._frame
        n = f.n_posts
        size = self.block_size(n)
        # the first sealed block a view lands in; views at or after the last sealed view join the head
        k = int(np.searchsorted(f.last_ts, new.ts[0], side="right"))
        blocks, checkpoints = list(f.blocks[:k]), list(f.checkpoints[:k + 1])
        pending = _Views.merged([*f.blocks[k:], f.head, new])
        while len(pending) >= size:
            sealed, pending = pending[:size], pending[size:]
            blocks.append(sealed)
            checkpoints.append(_sized(checkpoints[-1], n) + _bincount(sealed, n))
        current = _sized(checkpoints[-1], n) + _bincount(pending, n)
        last_ts = np.array([b.ts[-1] for b in blocks], dtype=np.int64)
        self._frame = _Frame(tuple(blocks), last_ts, tuple(checkpoints), pending, current, n, f.floor)
        self.applied += len(new)

    def compact(self, cut: int) -> None:
        """Forget the sealed blocks that end before `cut`: their views are in the next checkpoint, and
        counts as of any moment from `cut` on stay exact; earlier moments are read as of `cut`. Only
        the writer calls this."""
        f = self._frame
        k = int(np.searchsorted(f.last_ts, cut, side="left"))  # blocks 0..k-1 end before the cut
        floor = int(cut) if f.floor is None else max(f.floor, int(cut))
        self._frame = _Frame(f.blocks[k:], f.last_ts[k:], f.checkpoints[k:], f.head, f.current, f.n_posts, floor)


_WEIGHT_BITS = 14  # `app.features.MAX_WEIGHT` < 2**14
_BLOCK_BITS = 16  # prefix sums of weights kept as int32 within blocks of 2**16 views (< 2**30 each)


class ViewIndex:
    """Views sorted once by (post, time): the counts before any number of (post, moment) pairs, each by
    binary search. Training asks for counters batch after batch (model selection scores ~1,000 requests
    in batches of 8); sorting the whole log per batch cost minutes per batch at scale 1.0 (76 M events).
    Memory: 16 bytes a view (the sorted keys and two int32 prefix sums).
    """

    def __init__(self, view_post: np.ndarray, view_ts: np.ndarray, view_target: np.ndarray,
                 view_weight: np.ndarray) -> None:
        # one in-place sort of (post, time, target, weight) packed in an int64: no index array, no sorted
        # copies. Times are counted from the first view, in as many bits as their span needs.
        self.t0 = int(np.min(view_ts)) if len(view_ts) else 0
        self.time_bits = int(np.max(view_ts) - self.t0).bit_length() if len(view_ts) else 0
        self.shift = self.time_bits + 1 + _WEIGHT_BITS  # where the post row starts
        n_posts = int(np.max(view_post)) + 1 if len(view_post) else 1
        if self.shift + int(n_posts).bit_length() > 63:
            raise ValueError(f"{n_posts} posts over {2 ** self.time_bits} seconds do not fit the view index's key")
        key = np.asarray(view_post, np.int64) << self.shift
        part = np.asarray(view_ts, np.int64) - self.t0
        part <<= 1 + _WEIGHT_BITS
        key |= part
        del part
        key |= (np.asarray(view_target) > 0).astype(np.int64) << _WEIGHT_BITS
        key |= np.asarray(view_weight, np.int64)
        key.sort()
        self.key = key
        # prefix sums block by block (no full-size temporaries): liked views, and weights within each
        # block of 2**_BLOCK_BITS positions plus the total before the block
        n, step = len(key), 1 << _BLOCK_BITS
        self.cum_target = np.zeros(n + 1, np.int32)
        self.cum_weight = np.zeros(n + 1, np.int32)
        self.block_weight = np.zeros((n >> _BLOCK_BITS) + 1, np.int64)
        liked = weight = 0
        for b, lo in enumerate(range(0, n + 1, step)):
            self.block_weight[b] = weight
            block = key[lo:lo + step]
            if not len(block):
                continue
            liked_sum = np.cumsum((block >> _WEIGHT_BITS) & 1) + liked
            self.cum_target[lo + 1:lo + 1 + len(block)] = liked_sum
            weight_sum = np.cumsum(block & ((1 << _WEIGHT_BITS) - 1))
            inside = min(len(block), step - 1)  # position lo + step starts the next block
            self.cum_weight[lo + 1:lo + 1 + inside] = weight_sum[:inside]
            liked, weight = int(liked_sum[-1]), weight + int(weight_sum[-1])

    def _weight_before(self, pos: np.ndarray) -> np.ndarray:
        return self.block_weight[pos >> _BLOCK_BITS] + self.cum_weight[pos]

    def counts(self, post_rows: np.ndarray, times: np.ndarray) -> np.ndarray:
        """(views, liked views, weighted views) of post `post_rows[i]` strictly before `times[i]`."""
        post_rows = np.asarray(post_rows, np.int64)
        # a time past the last view is its post's end: 2**time_bits carries into the next post row
        times = np.clip(np.asarray(times, np.int64) - self.t0, 0, 1 << self.time_bits)
        lo = np.searchsorted(self.key, post_rows << self.shift, side="left")
        pos = np.searchsorted(self.key, (post_rows << self.shift) + (times << (1 + _WEIGHT_BITS)), side="left")
        return np.column_stack([pos - lo, self.cum_target[pos] - self.cum_target[lo],
                                self._weight_before(pos) - self._weight_before(lo)]).astype(np.int64)


def counts_before(view_post: np.ndarray, view_ts: np.ndarray, view_target: np.ndarray, view_weight: np.ndarray,
                  post_rows: np.ndarray, times: np.ndarray) -> np.ndarray:
    """(views, liked views, weighted views) of post `post_rows[i]` strictly before `times[i]`, for many
    pairs at once (views of any order). The same numbers as
    `PostTimeline(zeros).counts_at(times[i])[post_rows[i]]`.

    >>> counts_before(np.array([0, 0, 1]), np.array([10, 20, 5]), np.array([1, 0, 1]), np.array([900, 1200, 1000]),
    ...               np.array([0, 0, 1]), np.array([20, 21, 5])).tolist()
    [[1, 1, 900], [2, 1, 2100], [0, 0, 0]]
    """
    return ViewIndex(view_post, view_ts, view_target, view_weight).counts(post_rows, times)
