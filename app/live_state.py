"""The served state: the artifact's snapshot plus every event applied after it, answered "as of t".

A request at moment t sees exactly the events with a timestamp before t that the state holds — the
snapshot's and those the follower (`app.follower`) applied since, including late ones — whatever
later events it also holds. Users added to `user_data` after the snapshot get a row of their own and
are ranked from their profile. Before the snapshot's base cut the base alone answers
(`features_as_of` says so).

Posts added to `post_text_df` join the catalogue (`app.catalogue`) with no history and follow the
feed from then on (`add_posts`).

One writer (the follower thread) calls `apply`, `add_users`, `add_posts` and `compact` (or starts a
compaction, lets another thread or a forked child process build it, and publishes it); request
threads read. A batch is prepared off the lock and published under it in one short step, so a reader
sees a batch whole or not at all.

Memory stays flat however long the service follows the feed: `compact(cut)` folds every event older
than the cut into the base (`app.snapshot.compact`: counts, days, likes, last views — what
`build_snapshot` would hold for that cut) and the post timeline forgets its blocks before it; `snapshot`
is then that compacted base (its `seq` and `events_until` stay the artifact's). Answers from the cut on
do not change — the posts viewed in the exclusion window once the window lies after the cut; requests
before it are answered as of the cut. The follower compacts (`Follower._compact_beside`, STATE_KEEP_HOURS).
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass, fields, replace

import numpy as np
import pandas as pd

from app import columns as c
from app.catalogue import Catalogue, CatalogueFrame
from app.child_process import call_in_child
from app.features import (
    PostView,
    UserView,
    assemble,
    empty_counts,
    feature_names,
    finalize_posts,
    finalize_users,
    profile_features,
)
from app.feed_events import EventBatch
from app.post_counters import PostTimeline
from app.snapshot import Snapshot, compact
from app.text_features import TextTransforms
from app.user_state import LIKE, VIEW, fold_user, taste_at

# a user's events applied after the snapshot: one packed array per user (14 bytes an event, one object)
TAIL_DTYPE = np.dtype([("ts", np.int64), ("post", np.int32), ("kind", np.int8), ("target", np.int8)])
_NO_DAYS = np.empty(0, np.int64)
_NO_POSTS = np.empty(0, np.int32)
# the counters of a view that reads them row by row (`PostView.counters_of`): reading them whole fails
_NO_COUNTERS = np.empty((0, 3), np.float32)


@dataclass(frozen=True)
class UserAt:
    """One user as of one moment: the user side of `assemble` and what the screen must exclude."""

    view: UserView
    liked: np.ndarray  # post rows liked before t
    viewed: np.ndarray  # post rows viewed within the exclusion window before t, or among the last views


# what `app.snapshot.compact` changes in a snapshot (with base_as_of); the rest is the base's own arrays
COMPACTED_FIELDS = ("base_counts", "days_indptr", "days", "likes_indptr", "likes", "seen_indptr", "seen", "events")


class Compaction:
    """One compaction's inputs, frozen by `LiveState.start_compaction`, and its result once `build()` ran."""

    def __init__(self, cut: int, base: Snapshot, tails: dict[int, np.ndarray], n_users: int,
                 topic: np.ndarray) -> None:
        self.cut, self.base, self.tails, self.n_users, self.topic = cut, base, tails, n_users, topic
        self.snapshot: Snapshot | None = None
        self.folded = 0

    def build(self) -> None:
        """The compacted base (`app.snapshot.compact`): seconds at scale 1.0, no lock held."""
        if self.tails:
            keys = np.fromiter(self.tails.keys(), np.int64, len(self.tails))
            parts = list(self.tails.values())
            packed = np.concatenate(parts)
            rows = np.repeat(keys, np.fromiter((len(p) for p in parts), np.int64, len(parts)))
            del parts
        else:
            packed, rows = np.empty(0, TAIL_DTYPE), np.empty(0, np.int64)
        self.snapshot, self.folded = compact(self.base, rows, packed["ts"], packed["post"], packed["kind"],
                                             packed["target"], self.n_users, self.cut, self.topic)

    def build_in_child(self, timeout: float | None = None) -> None:
        """`build()` in a forked child process (`app.child_process`), so that its seconds of NumPy hold
        another GIL than the requests': only the arrays a compaction changes come back."""
        changed, self.folded = call_in_child(self._compacted, timeout)
        self.snapshot = replace(self.base, base_as_of=self.cut, **changed)

    def _compacted(self) -> tuple[dict[str, object], int]:
        self.build()
        new, old = self.snapshot, self.base
        changed = {f.name for f in fields(new) if getattr(new, f.name) is not getattr(old, f.name)}
        if not changed <= {*COMPACTED_FIELDS, "base_as_of"}:  # `compact` changed: so must COMPACTED_FIELDS
            raise RuntimeError(f"compact changed {sorted(changed - set(COMPACTED_FIELDS))}, not sent back")
        return {name: getattr(self.snapshot, name) for name in COMPACTED_FIELDS}, self.folded


FEATURES_CHUNK = 4096  # triples per batch of `LiveState.features_for`


class LiveState:
    def __init__(self, snapshot: Snapshot, exclude_viewed_seconds: int = 72 * 3600,
                 exclude_last_views: int = 50) -> None:
        self.snapshot = snapshot
        self.priors = snapshot.priors
        self.exclude_viewed_seconds = int(exclude_viewed_seconds)
        self.exclude_last_views = int(exclude_last_views)
        self.catalogue = Catalogue(snapshot.post_ids, snapshot.posts)
        self.text_transforms: TextTransforms | None = None  # set by the engine: what new posts need
        self.post_info: dict[int, dict] | None = None  # post id -> {"id", "text", "topic"}, grown with the posts
        self.posts_added = 0
        self.on_posts_added: list[Callable[[CatalogueFrame], None]] = []  # e.g. the retrieval indexes
        self.base_as_of = snapshot.base_as_of
        self.timeline = PostTimeline(snapshot.post_base)
        ev = snapshot.events
        views = ev.kind == VIEW
        self.timeline.add(ev.ts[views], ev.post[views], ev.target[views],
                          self.priors.view_weights(ev.rows()[views], snapshot.posts.topic[ev.post[views]]))
        self._n_base_users = len(snapshot.user_ids)
        self._tails: dict[int, np.ndarray] = {}
        self._new_rows: dict[int, int] = {}  # user id -> row, for users added after the snapshot
        self._new_profiles: list[np.ndarray] = []  # their profile rows, in row order
        self._pending: list[EventBatch] = []  # events of users or posts not (yet) known
        self._lock = threading.Lock()
        self.events_applied = 0
        self.late_events = 0  # applied with a time before the latest already applied
        self.latest_event = int(ev.ts.max()) if len(ev.ts) else snapshot.base_as_of
        self._counters_cache: tuple[object, np.ndarray] | None = None
        self.compactions = 0
        self.events_folded = 0  # user events folded into the base by compactions

    # ------------------------------------------------------------------ lookups
    @property
    def n_users(self) -> int:
        return self._n_base_users + len(self._new_profiles)

    @property
    def post_ids(self) -> np.ndarray:
        """Ids in row order (the artifact's sorted, then those added while serving)."""
        return self.catalogue.frame.ids

    @property
    def posts(self) -> PostView:
        return self.catalogue.frame.posts

    @property
    def n_posts(self) -> int:
        return self.catalogue.frame.n

    @property
    def pending_events(self) -> int:
        return sum(len(b) for b in self._pending)

    def user_row(self, user_id: int) -> int:
        """Row of a known user, -1 if neither the snapshot nor the applied users hold it."""
        ids = self.snapshot.user_ids
        i = int(np.searchsorted(ids, user_id))
        if i < len(ids) and ids[i] == user_id:
            return i
        return self._new_rows.get(int(user_id), -1)

    def user_rows(self, user_ids: np.ndarray) -> np.ndarray:
        return np.array([self.user_row(int(u)) for u in np.asarray(user_ids)], dtype=np.int64)

    def post_rows(self, post_ids: np.ndarray) -> np.ndarray:
        """Row of each post id, -1 for ids the catalogue does not hold."""
        return self.catalogue.frame.rows(post_ids)

    def features_as_of(self, t: int) -> int:
        """The moment the features of a request at t describe: t itself, or the base cut before it."""
        return max(int(t), self.base_as_of)

    # ------------------------------------------------------------------ as of t
    def _read(self, row: int):
        """Everything one request needs, read together under the lock: the user's base and events, the
        post counters' frame and the catalogue's (row -1: only the frames)."""
        with self._lock:
            s = self.snapshot  # a compaction publishes another one, with its own events
            frame = self.timeline.frame
            cat = self.catalogue.frame
            if row < 0:
                return None, frame, cat
            tail = self._tails.get(row)
            profile = (s.profile[row] if row < self._n_base_users
                       else self._new_profiles[row - self._n_base_users])
        if row < len(s.base_counts):
            base = s.base_counts[row]
            days = s.days[s.days_indptr[row]:s.days_indptr[row + 1]]
            likes = s.likes[s.likes_indptr[row]:s.likes_indptr[row + 1]]
            seen = s.seen[s.seen_indptr[row]:s.seen_indptr[row + 1]]
            events = s.events.of(row)
        else:  # a user added since the last compaction
            base, days, likes, seen = empty_counts()[0], _NO_DAYS, _NO_POSTS, _NO_POSTS
            events = (np.empty(0, np.int64), _NO_POSTS, np.empty(0, np.int8), np.empty(0, np.int8))
        if tail is not None:
            events = tuple(np.concatenate([a, tail[name]]) for a, name in zip(events, TAIL_DTYPE.names, strict=True))
        return (profile, base, days, likes, seen, events), frame, cat

    def at(self, row: int, t: int, cold: bool = False, every_post: bool = True) -> tuple[UserAt | None, PostView]:
        """The user (None for row -1) and the catalogue as of t, from exactly the events before t.
        `cold` hides the user's history: the profile alone, as for a user who has just signed up.
        `every_post=False` leaves the catalogue's counters to be computed for the rows asked for
        (`PostView.counters_of`): a request that ranks a few hundred candidates."""
        parts, frame, cat = self._read(row)
        posts = self._post_view(t, frame, cat.posts) if every_post else self._rows_view(t, frame, cat.posts)
        if parts is None:
            return None, posts
        profile, base, days, likes, seen, (ts, post, kind, target) = parts
        if cold:
            base, days, likes, seen = empty_counts()[0], _NO_DAYS, _NO_POSTS, _NO_POSTS
            ts, post, kind, target = ts[:0], post[:0], kind[:0], target[:0]
        times = np.array([t], dtype=np.int64)
        counts = fold_user(base, days, ts, post, kind, target, posts.topic, times)
        is_like = kind == LIKE
        taste = taste_at(likes, ts[is_like], post[is_like], times, posts.vec, posts.tfidf_vec, posts.topic,
                         posts.cf)
        view = finalize_users(profile, counts, taste, self.priors)
        before = ts < t
        liked = np.concatenate([likes, post[is_like & before]])
        views = (kind == VIEW) & before
        viewed = post[views & (ts >= t - self.exclude_viewed_seconds)]
        if self.exclude_last_views:  # the last N views whenever they were: the user's previous screens
            n = self.exclude_last_views
            latest = post[views][np.argsort(ts[views], kind="stable")][-n:]
            earlier = seen[max(len(seen) - (n - len(latest)), 0):] if len(latest) < n else _NO_POSTS
            viewed = np.concatenate([viewed, latest, earlier])
        return UserAt(view, liked, viewed), posts

    def counts_at(self, t: int) -> np.ndarray:
        """(P, 2) views and liked views of every post before t."""
        return self.timeline.counts_at(t)

    def features_for(self, user_ids: np.ndarray, post_ids: np.ndarray, times: np.ndarray, text: bool) -> np.ndarray:
        """Feature rows of (user, post, moment) triples, each as a request at that moment would see it
        (offline evaluation, and the test that a served row equals a training row): `at` and `assemble`
        as a request runs them, with each user's moments folded at once (`fold_user` and `taste_at` take
        many moments) and each post's counters read at its own moment (`PostTimeline.counts_of`) rather
        than the whole catalogue's per triple. A test checks it against `at` one triple at a time."""
        user_ids, times = np.asarray(user_ids, np.int64), np.asarray(times, np.int64)
        prows, urows = self.post_rows(post_ids), self.user_rows(user_ids)
        unknown = np.flatnonzero((urows < 0) | (prows < 0))
        if len(unknown):
            i = int(unknown[0])
            raise KeyError(f"user {user_ids[i]} or post {np.asarray(post_ids)[i]} unknown to the state")
        out = np.empty((len(urows), len(feature_names(text))), np.float32, order="F")
        order = np.argsort(urows, kind="stable")
        # in chunks of triples (by user): a user view row holds ~1,100 floats, 30,000 at once would be 130 MB
        for chunk in np.array_split(order, -(-len(order) // FEATURES_CHUNK)) if len(order) else []:
            starts = np.flatnonzero(np.r_[True, np.diff(urows[chunk]) != 0])
            views = []
            for idx in np.split(chunk, starts[1:]):
                (profile, base, days, likes, _, (ts, post, kind, target)), frame, cat = self._read(int(urows[idx[0]]))
                posts = cat.posts
                counts = fold_user(base, days, ts, post, kind, target, posts.topic, times[idx])
                is_like = kind == LIKE
                taste = taste_at(likes, ts[is_like], post[is_like], times[idx], posts.vec, posts.tfidf_vec,
                                 posts.topic, posts.cf)
                views.append(finalize_users(profile, counts, taste, self.priors))
            view = UserView(*(np.concatenate([getattr(v, f.name) for v in views]) for f in fields(UserView)))
            counters = finalize_posts(self.timeline.counts_of(prows[chunk], times[chunk], frame), self.priors)
            out[chunk] = assemble(view, np.arange(len(chunk)), cat.posts, prows[chunk], times[chunk], text,
                                  counters=counters)
        return out

    def _rows_view(self, t: int, frame, p: PostView) -> PostView:
        """The catalogue as of t with the counters of the rows asked for alone, from the same frame."""
        def counters_of_rows(rows: np.ndarray) -> np.ndarray:
            return finalize_posts(self.timeline.counts_at_rows(t, rows, frame), self.priors)

        view = PostView(p.static, _NO_COUNTERS, p.text, p.vec, p.tfidf_vec, p.topic, p.cf)
        view.counters_of_rows = counters_of_rows
        return view

    def _post_view(self, t: int, frame, p: PostView) -> PostView:
        counts = self.timeline.counts_at(t, frame)
        cache = self._counters_cache  # the running totals change only when a batch is applied
        if cache is not None and cache[0] is counts:
            counters = cache[1]
        else:
            counters = finalize_posts(counts, self.priors)
            if counts is frame.current:
                self._counters_cache = (counts, counters)
        return PostView(p.static, counters, p.text, p.vec, p.tfidf_vec, p.topic, p.cf)

    # ------------------------------------------------------------------ writer side
    def add_users(self, users: pd.DataFrame) -> int:
        """Rows of user_data the state does not hold yet; returns how many were added."""
        if users.empty:
            return 0
        fresh = users[[self.user_row(int(u)) < 0 for u in users[c.USER_ID]]].drop_duplicates(c.USER_ID)
        if fresh.empty:
            return 0
        profiles = profile_features(fresh, self.priors)
        with self._lock:
            for uid, profile in zip(fresh[c.USER_ID].to_numpy(np.int64), profiles, strict=True):
                self._new_rows[int(uid)] = self._n_base_users + len(self._new_profiles)
                self._new_profiles.append(profile)
        if self._pending:  # events that arrived before their user
            pending, self._pending = EventBatch.concat(self._pending), []
            self.apply(pending)
        return len(fresh)

    def add_posts(self, posts: pd.DataFrame, view: PostView, born: int) -> int:
        """Posts of post_text_df the catalogue does not hold yet, with their text features (computed off
        the lock by the follower); `born` is the feed time they enter at. Returns how many were added."""
        if posts.empty:
            return 0
        ids = posts[c.POST_ID].to_numpy(np.int64)
        with self._lock:
            rows = self.catalogue.add(ids, view, born)
            self.timeline.add_posts(len(rows))  # no views yet: "no history", then the live counters
        for listener in self.on_posts_added:
            listener(self.catalogue.frame)
        if self.post_info is not None:
            for record in posts.rename(columns={c.POST_ID: "id"})[["id", c.TEXT, c.TOPIC]].to_dict("records"):
                self.post_info.setdefault(int(record["id"]), record)
        self.posts_added += len(rows)
        if len(rows) and self._pending:  # events that arrived before their post
            pending, self._pending = EventBatch.concat(self._pending), []
            self.apply(pending)
        return len(rows)

    def apply(self, batch: EventBatch) -> int:
        """Apply feed events (any order, late ones included); returns how many were applied. Events of
        users or posts the state does not know yet are kept and applied once they are known."""
        if not len(batch):
            return 0
        rows = self.user_rows(batch.user_id)
        prows = self.post_rows(batch.post_id)
        known = (rows >= 0) & (prows >= 0)
        if not known.all():
            self._pending.append(batch.take(~known))
            batch, rows, prows = batch.take(known), rows[known], prows[known]
            if not len(batch):
                return 0
        latest = self.latest_event
        order = np.argsort(rows, kind="stable")
        rows_sorted = rows[order]
        starts = np.flatnonzero(np.r_[True, rows_sorted[1:] != rows_sorted[:-1]])
        ends = np.r_[starts[1:], len(rows_sorted)]
        packed = np.empty(len(batch), TAIL_DTYPE)
        packed["ts"], packed["post"] = batch.ts[order], prows[order]
        packed["kind"], packed["target"] = batch.kind[order], batch.target[order]
        updates: dict[int, np.ndarray] = {}
        tails = self._tails
        for a, b in zip(starts, ends, strict=True):
            row = int(rows_sorted[a])
            old = tails.get(row)
            updates[row] = packed[a:b].copy() if old is None else np.concatenate([old, packed[a:b]])
        views = batch.kind == VIEW
        with self._lock:
            tails.update(updates)
            # the timeline publishes its own frame; under the lock so that user and post sides move together
            self.timeline.add(batch.ts[views], prows[views], batch.target[views],
                              self.priors.view_weights(rows[views], self.posts.topic[prows[views]]))
        self.events_applied += len(batch)
        self.late_events += int((batch.ts < latest).sum())
        self.latest_event = max(latest, int(batch.ts.max()))
        return len(batch)

    def compact(self, cut: int) -> int:
        """Fold every event older than `cut` into the base and move the base cut there: memory stops
        growing with the events applied. Requests from `cut` on are answered exactly as before; earlier
        ones as of `cut` (`features_as_of`). Returns the number of user events folded (0: `cut` is not
        past the base cut). Only the writer calls this: the new base is built off the lock, then published
        in one step, like a batch. `start_compaction` is the same in two steps, for a writer that keeps
        applying events while the base is built."""
        job = self.start_compaction(cut)
        if job is None:
            return 0
        job.build()
        return self.publish_compaction(job)

    def start_compaction(self, cut: int) -> Compaction | None:
        """The inputs of a compaction to `cut`, frozen now (None: `cut` is not past the base cut). Its
        `build()` may run in any thread while the writer goes on applying events; the writer then
        publishes it (`publish_compaction`). The per-user tails are never changed in place (`apply`
        replaces a user's array by a longer one), so a shallow copy of the dict freezes them."""
        cut = int(cut)
        if cut <= self.base_as_of:
            return None
        with self._lock:
            tails = dict(self._tails)
        return Compaction(cut, self.snapshot, tails, self.n_users, self.catalogue.frame.posts.topic)

    def publish_compaction(self, job: Compaction) -> int:
        """Publish a built compaction in one step under the lock. The events applied since it started stay
        in the tails (each user's array past the part the compaction folded): the state then holds what
        compacting at the start and applying those events after would hold. Returns the user events
        folded; writer only."""
        if job.snapshot is None:
            raise RuntimeError("publish_compaction: the compaction was not built")
        if job.base is not self.snapshot or job.cut <= self.base_as_of:
            raise RuntimeError("publish_compaction: the state's base changed since the compaction started")
        frozen = job.tails
        later: dict[int, np.ndarray] = {}
        for row, tail in self._tails.items():  # only the writer changes the tails: read them off the lock
            done = frozen.get(row)
            if done is None:
                later[row] = tail
            elif tail is not done:
                later[row] = tail[len(done):].copy()  # not a view: the folded part is freed
        with self._lock:
            self.snapshot = job.snapshot
            self._tails = later
            self.base_as_of = job.cut
            self.timeline.compact(job.cut)
        self.compactions += 1
        self.events_folded += job.folded
        return job.folded
