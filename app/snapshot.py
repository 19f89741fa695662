"""The state an artifact ships: a base of counts, the events after it one by one, and the catalogue.

    base (counts of every event before base_as_of)  +  events from base_as_of on  =  state up to `seq`

The base keeps per user the counts `app.user_state.fold_user` adds to, the distinct days of its views
and the posts it liked; per post the (views, liked views) counts. The events after the base are kept
one by one, per user in time order, so that the state can answer "as of t" for any t from
`base_as_of` on (the window is wide enough for the exclusion of recently viewed posts) and the live
state can keep appending to it. `seq` is the highest `feed_data` insertion sequence included: the
follower continues after it.
"""

from __future__ import annotations

from dataclasses import dataclass, fields, replace
from pathlib import Path

import numpy as np

from app.features import (
    COUNT_DAYS,
    COUNT_FIRST,
    COUNT_LAST,
    COUNT_LIKED,
    COUNT_TOPIC_LIKED,
    COUNT_TOPIC_VIEWS,
    COUNT_VIEWS,
    N_COUNTS,
    N_TOPICS,
    SECONDS_PER_DAY,
    WEIGHT_UNIT,
    PostView,
    Priors,
    empty_counts,
)
from app.rowsets import unique
from app.user_state import LIKE, VIEW

LAST_VIEWS_KEPT = 100  # per user, the last views before the base cut (the "last N views" exclusion)


def rows_of(indptr: np.ndarray, dtype: type = np.int32) -> np.ndarray:
    """The row of every entry of a CSR index: row i repeated indptr[i + 1] - indptr[i] times."""
    return np.repeat(np.arange(len(indptr) - 1, dtype=dtype), np.diff(indptr))


@dataclass
class UserEvents:
    """Events grouped by user row, each user's in time order (CSR)."""

    indptr: np.ndarray  # (U+1,) int64
    ts: np.ndarray  # int64 seconds
    post: np.ndarray  # int32 post rows
    kind: np.ndarray  # int8: app.user_state.VIEW or LIKE
    target: np.ndarray  # int8: 1 on a view followed by a like

    @classmethod
    def build(cls, user_row: np.ndarray, ts: np.ndarray, post: np.ndarray, kind: np.ndarray,
              target: np.ndarray, n_users: int) -> UserEvents:
        # one sort on a composite key (user, time, kind): lighter than a lexsort on a whole history;
        # times are non-negative seconds below 2**31, rows below 2**31
        key = (user_row.astype(np.int64) << 32 | ts.astype(np.int64)) << 1 | kind.astype(np.int64)
        order = np.argsort(key, kind="stable")
        del key
        counts = np.bincount(user_row, minlength=n_users)
        return cls(np.concatenate([[0], np.cumsum(counts)]).astype(np.int64), ts[order].astype(np.int64),
                   post[order].astype(np.int32), kind[order].astype(np.int8), target[order].astype(np.int8))

    def rows(self) -> np.ndarray:
        """The user row of every event (int32), in the events' order."""
        return rows_of(self.indptr)

    def of(self, row: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        lo, hi = self.indptr[row], self.indptr[row + 1]
        return self.ts[lo:hi], self.post[lo:hi], self.kind[lo:hi], self.target[lo:hi]


def _last_of_group(groups: np.ndarray, k: int) -> np.ndarray:
    """Mask of the last k entries of each run of equal `groups` (sorted)."""
    if not len(groups):
        return np.zeros(0, bool)
    last = np.r_[np.flatnonzero(groups[1:] != groups[:-1]), len(groups) - 1]
    ends = np.repeat(last, np.diff(np.r_[-1, last]))
    return ends - np.arange(len(groups)) < k


def csr(groups: np.ndarray, values: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
    """(indptr, values sorted by group, stable) for groups in [0, n)."""
    order = np.argsort(groups, kind="stable")
    return np.concatenate([[0], np.cumsum(np.bincount(groups, minlength=n))]).astype(np.int64), values[order]


@dataclass
class Snapshot:
    base_as_of: int  # the base counts every event strictly before this second
    events_until: int  # the events held end here (first second after the newest)
    seq: int  # highest feed_data insertion sequence included
    seq_gaps: np.ndarray  # (g, 2) ranges below seq not yet committed when the snapshot was read
    seq_xmax: int  # PostgreSQL: transactions before this id had finished or were the gaps' (0: none)
    priors: Priors
    user_ids: np.ndarray  # (U,) int64, sorted
    profile: np.ndarray  # (U, len(PROFILE)) float32
    base_counts: np.ndarray  # (U, N_COUNTS) int64
    days_indptr: np.ndarray  # (U+1,) distinct days of the base's views, per user
    days: np.ndarray  # int32
    likes_indptr: np.ndarray  # (U+1,) posts liked before base_as_of, per user
    likes: np.ndarray  # int32 post rows
    seen_indptr: np.ndarray  # (U+1,) the user's last views before base_as_of (oldest first), per user
    seen: np.ndarray  # int32 post rows: what "the last N views" exclusion needs from before the base
    events: UserEvents  # every event from base_as_of on, per user
    post_ids: np.ndarray  # (P,) int64, sorted
    posts: PostView  # counters left empty: they come from the timeline
    post_base: np.ndarray  # (P, 3) int64 (views, liked views, weighted views) before base_as_of

    def __post_init__(self) -> None:
        if self.base_counts.shape[1] != N_COUNTS:
            raise ValueError("snapshot counts have another layout than this code")

    # ------------------------------------------------------------------ persistence
    def save(self, path: Path) -> None:
        arrays: dict[str, np.ndarray] = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if isinstance(value, UserEvents | PostView | Priors):
                for g in fields(value):
                    arrays[f"{f.name}.{g.name}"] = np.asarray(getattr(value, g.name))
            else:
                arrays[f.name] = np.asarray(value)
        with open(path, "wb") as fh:  # np.savez would append .npz to another suffix
            np.savez(fh, **arrays)

    @classmethod
    def load(cls, path: Path) -> Snapshot:
        with np.load(path, allow_pickle=False) as data:
            arrays = {k: data[k] for k in data.files}

        def group(name: str, kind: type) -> object:
            # fields an older artifact lacks keep their defaults
            kwargs = {g.name: arrays[f"{name}.{g.name}"] for g in fields(kind) if f"{name}.{g.name}" in arrays}
            return kind(**kwargs)

        priors = group("priors", Priors)
        priors = replace(priors, global_rate=float(priors.global_rate),
                         city_names=tuple(str(x) for x in priors.city_names))
        if arrays["post_base"].shape[1] == 2:  # an older artifact: every view weighed one unit
            views = arrays["post_base"][:, :1]
            arrays["post_base"] = np.hstack([arrays["post_base"], views * WEIGHT_UNIT])
        kwargs: dict = {}
        for f in fields(cls):
            if f.name == "priors":
                kwargs[f.name] = priors
            elif f.name == "events":
                kwargs[f.name] = group("events", UserEvents)
            elif f.name == "posts":
                kwargs[f.name] = group("posts", PostView)
            else:
                kwargs[f.name] = arrays[f.name]
        for name in ("base_as_of", "events_until", "seq", "seq_xmax"):
            kwargs[name] = int(kwargs[name])
        return cls(**kwargs)


def compact(s: Snapshot, rows: np.ndarray, ts: np.ndarray, post: np.ndarray, kind: np.ndarray, target: np.ndarray,
            n_rows: int, cut: int, post_topic: np.ndarray) -> tuple[Snapshot, int]:
    """The snapshot with its base cut moved forward to `cut`: the events held (the snapshot's and the
    extra ones, e.g. those applied since, with their user `rows`) that are older than `cut` folded
    into the base (counts, days, likes, last views) exactly as `fold_user` and `build_snapshot` count
    them, the others kept one by one — all in one pass of array operations over every user (no Python
    loop per user). `n_rows` users (rows past the snapshot's: users added since, with an empty base).
    Returns it and how many events were folded. Answers for moments from `cut` on do not change.

    Events stay per user in time order; ties keep their order (the snapshot's, then the extra ones as
    given), so that "the last N views" picks the same posts as before.
    """
    ev = s.events
    n0 = len(ev.indptr) - 1
    own = rows_of(ev.indptr, np.int64)  # int64: shifted into the sort key below
    row = np.concatenate([own, np.asarray(rows, np.int64)])
    del own
    ts = np.concatenate([ev.ts, np.asarray(ts, np.int64)])
    # one stable sort on (user, time): times are non-negative seconds below 2**32
    order = np.argsort(row << 32 | ts, kind="stable")
    row, ts = row[order], ts[order]
    post = np.concatenate([ev.post, np.asarray(post, np.int32)])[order]
    kind = np.concatenate([ev.kind, np.asarray(kind, np.int8)])[order]
    target = np.concatenate([ev.target, np.asarray(target, np.int8)])[order]
    del order
    old = ts < cut
    folded = int(old.sum())

    def grown(indptr: np.ndarray) -> np.ndarray:  # a CSR index over n_rows users (the new ones empty)
        return np.concatenate([indptr, np.full(n_rows + 1 - len(indptr), indptr[-1], np.int64)])

    base = np.concatenate([s.base_counts, empty_counts(n_rows - n0)])
    views = old & (kind == VIEW)
    r, vts, vtarget = row[views], ts[views], target[views].astype(np.int64)
    vtopic = post_topic[post[views]].astype(np.int64)
    base[:, COUNT_VIEWS] += np.bincount(r, minlength=n_rows)
    base[:, COUNT_LIKED] += np.bincount(r, weights=vtarget, minlength=n_rows).astype(np.int64)
    key = r * N_TOPICS + vtopic
    base[:, COUNT_TOPIC_VIEWS] += np.bincount(key, minlength=n_rows * N_TOPICS).reshape(n_rows, N_TOPICS)
    base[:, COUNT_TOPIC_LIKED] += np.bincount(key[vtarget > 0], minlength=n_rows * N_TOPICS).reshape(n_rows, N_TOPICS)
    if len(r):  # first and last view: views are per user in time order
        starts = np.flatnonzero(np.r_[True, r[1:] != r[:-1]])
        ends = np.r_[starts[1:], len(r)] - 1
        who, first, last = r[starts], vts[starts], vts[ends]
        had = base[who, COUNT_FIRST] >= 0
        base[who, COUNT_FIRST] = np.where(had, np.minimum(base[who, COUNT_FIRST], first), first)
        base[who, COUNT_LAST] = np.maximum(base[who, COUNT_LAST], last)
    # distinct days: the union of the base's and the folded views', per user
    days_indptr = grown(s.days_indptr)
    # by sorting (`rowsets.unique`), not np.unique: NumPy 2's hash table took seconds over the ~4 million
    # keys of a scale-1.0 day and held the GIL meanwhile, stalling the requests of the worker
    day_key = unique(np.concatenate([rows_of(days_indptr, np.int64) << 32 | s.days.astype(np.int64),
                                     r << 32 | vts // SECONDS_PER_DAY]))
    day_rows = day_key >> 32
    day_counts = np.bincount(day_rows, minlength=n_rows)
    base[:, COUNT_DAYS] += day_counts - np.diff(days_indptr)
    days_indptr = np.concatenate([[0], np.cumsum(day_counts)]).astype(np.int64)
    days = (day_key & 0xFFFFFFFF).astype(np.int32)
    del day_key, day_rows
    # likes before the cut: the base's, then the folded ones
    likes_indptr = grown(s.likes_indptr)
    liked = old & (kind == LIKE)
    like_rows = np.concatenate([rows_of(likes_indptr, np.int64), row[liked]])
    order = np.argsort(like_rows, kind="stable")
    likes = np.concatenate([s.likes, post[liked]])[order].astype(np.int32)
    likes_indptr = np.concatenate([[0], np.cumsum(np.bincount(like_rows, minlength=n_rows))]).astype(np.int64)
    # the last views before the cut, oldest first: the base's, then the folded ones
    seen_indptr = grown(s.seen_indptr)
    seen_rows = np.concatenate([rows_of(seen_indptr, np.int64), r])
    order = np.argsort(seen_rows, kind="stable")
    seen_rows = seen_rows[order]
    keep = _last_of_group(seen_rows, LAST_VIEWS_KEPT)
    seen = np.concatenate([s.seen, post[views]])[order][keep].astype(np.int32)
    seen_indptr = np.concatenate([[0], np.cumsum(np.bincount(seen_rows[keep], minlength=n_rows))]).astype(np.int64)
    del r, vts, vtarget, vtopic, key, order, seen_rows, keep
    recent = ~old
    events = UserEvents(np.concatenate([[0], np.cumsum(np.bincount(row[recent], minlength=n_rows))]).astype(np.int64),
                        ts[recent], post[recent], kind[recent], target[recent])
    return replace(s, base_as_of=int(cut), base_counts=base, days_indptr=days_indptr, days=days,
                   likes_indptr=likes_indptr, likes=likes, seen_indptr=seen_indptr, seen=seen, events=events), folded
