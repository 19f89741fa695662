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

from dataclasses import dataclass, fields
from pathlib import Path

import numpy as np

from app.features import N_COUNTS, PostView, Priors


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

    def of(self, row: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        lo, hi = self.indptr[row], self.indptr[row + 1]
        return self.ts[lo:hi], self.post[lo:hi], self.kind[lo:hi], self.target[lo:hi]


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
    post_base: np.ndarray  # (P, 2) int64 (views, liked views) before base_as_of

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
            kwargs = {g.name: arrays[f"{name}.{g.name}"] for g in fields(kind)}
            return kind(**kwargs)

        priors = group("priors", Priors)
        priors = Priors(float(priors.global_rate), priors.exposure_mean,
                        tuple(str(x) for x in priors.city_names), priors.city_rate, priors.city_users_log)
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
