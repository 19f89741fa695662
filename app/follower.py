"""Following the database: new feed rows and new users reach the live state within a poll interval.

One background thread per worker (workers share nothing) polls `feed_data` on its insertion sequence
— never the request path — and applies what it finds to the `LiveState` in batches. A poll that finds
nothing new costs one indexed lookup (`max(seq)`): it runs in the serving process and holds its
GIL a little at every statement.

- rows with a sequence above the highest seen, in order, `batch_rows` at a time until caught up;
- on PostgreSQL, sequence numbers can commit out of order (two writers, the later one faster): the
  numbers skipped are kept as open gaps with the transaction horizon at which they were seen, looked
  up again at every poll, and closed once every transaction that could hold them has finished
  (`pg_snapshot_xmin` past that horizon) — so no row is lost and none is applied twice;
- new `user_data` rows, found by their highest id (and, every `recount_seconds`, their count: ids
  inserted below the highest);
- new `post_text_df` rows, found the same way: their text features are computed here, with the
  artifact's fitted transforms and encoder (`app.text_features`), in batches of `posts_batch` — the
  encoder runs on this thread, never on the request path — and the posts join the catalogue with no
  history (`LiveState.add_posts`), candidates from the next request on.

A lost database only stops the polls: the state keeps serving, and the next successful poll catches
up from the same sequence number.
"""

from __future__ import annotations

import ctypes
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
from loguru import logger
from sqlalchemy import Connection, Engine, func, select
from sqlalchemy.exc import SQLAlchemyError

from app import child_process, feed_events
from app import columns as c
from app.db import feed_has_seq
from app.feed_events import EventBatch, missing_ranges
from app.live_state import Compaction, LiveState
from app.tables import post_text_df, user_data
from app.text_encoder import Encoder, make_encoder
from app.text_features import post_text_features

BULK_ROWS = 20_000  # above this many new rows a poll reads by COPY (see `feed_events._query`)


@dataclass
class FollowerStatus:
    """What /ready and /metrics report."""

    applied_seq: int = 0
    database_seq: int = 0  # highest sequence the database held at the last successful poll
    synced_at: float | None = None  # monotonic time of the last poll that found nothing more to read
    polls: int = 0
    failures: int = 0
    last_error: str = ""
    open_gaps: int = 0
    users_added: int = 0
    posts_added: int = 0
    posts_encode_seconds: float = 0.0  # text features of the new posts, total
    caught_up: threading.Event = field(default_factory=threading.Event)
    rate: float = 0.0  # events applied per second over the last busy polls


# a child building a compaction longer than this is killed and the compaction built in a thread: a day's
# fold takes ~3 s at scale 1.0 (163,000 users, a million events a day)
CHILD_TIMEOUT_SECONDS = 600.0


class _Building:
    """A compaction's build running in a daemon thread, in a forked child process where it can
    (`in_child`, `app.child_process`) and in the thread itself otherwise; its error, if any, for the
    follower to raise."""

    def __init__(self, job: Compaction, in_child: bool) -> None:
        self.job = job
        self.in_child = in_child and child_process.available()
        self.error: BaseException | None = None
        self.seconds = 0.0
        self.thread = threading.Thread(target=self._run, name="state-compaction", daemon=True)
        self.thread.start()

    def _run(self) -> None:
        started = time.perf_counter()
        try:
            if self.in_child:
                try:
                    self.job.build_in_child(timeout=CHILD_TIMEOUT_SECONDS)
                except (OSError, child_process.ChildFailed) as exc:
                    # no fork (memory limits), or the child failed or hung: this thread builds it instead
                    # (the same code: an error of the compaction itself is raised again here)
                    logger.warning("state follower: the compaction's child process failed ({}); building it in "
                                   "a thread", str(exc)[-2000:])
                    self.in_child = False
                    self.job.build()
            else:
                self.job.build()
        except BaseException as exc:  # raised again in the follower's thread, which logs and retries
            self.error = exc
        self.seconds = time.perf_counter() - started


class Follower:
    def __init__(self, engine: Engine, state: LiveState, poll_seconds: float = 0.2, batch_rows: int = 50_000,
                 max_backoff: float = 10.0, users_poll_seconds: float = 0.5, posts_poll_seconds: float = 1.0,
                 posts_batch: int = 256, keep_seconds: int = 240 * 3600, compact_seconds: int = 24 * 3600,
                 recount_seconds: float = 30.0, compact_in_child: bool = True) -> None:
        self.engine = engine
        self.compact_in_child = compact_in_child
        self.state = state
        self.poll_seconds = poll_seconds
        self.posts_batch = posts_batch
        self._encoder: Encoder | None = None
        self._encoder_used = 0.0
        self.encoder_idle_seconds = 600.0
        self.batch_rows = batch_rows
        self.max_backoff = max_backoff
        # events kept one by one behind the latest: never less than the exclusion window needs
        self.keep_seconds = max(int(keep_seconds), state.exclude_viewed_seconds)
        self.compact_seconds = int(compact_seconds)
        snap = state.snapshot
        self.status = FollowerStatus(applied_seq=snap.seq, database_seq=snap.seq)
        self._high = snap.seq
        # gaps the snapshot's own read saw: [lo, hi, horizon]
        self._gaps: list[list[int]] = [[int(lo), int(hi), snap.seq_xmax] for lo, hi in snap.seq_gaps]
        self.users = TableWatch(user_data, user_data.c.user_id, c.USER_COLUMNS, snap.user_ids,
                                users_poll_seconds, recount_seconds)
        self.posts = TableWatch(post_text_df, post_text_df.c.post_id, c.POST_COLUMNS, snap.post_ids,
                                posts_poll_seconds, recount_seconds)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._conn: Connection | None = None
        self._compaction: _Building | None = None  # a compaction being built beside this thread

    # ------------------------------------------------------------------ lifecycle
    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="state-follower", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
        if self._conn is not None and (self._thread is None or not self._thread.is_alive()):
            with suppress(Exception):
                self._conn.close()
            self._conn = None

    @property
    def compacting(self) -> bool:
        """A compaction's base is being built (or built and not yet published) beside the follower."""
        return self._compaction is not None

    def lag_seconds(self) -> float | None:
        """Seconds since the state was last known to hold everything the database held."""
        synced = self.status.synced_at
        return None if synced is None else max(0.0, time.monotonic() - synced)

    def _run(self) -> None:
        backoff = self.poll_seconds
        while not self._stop.is_set():
            try:
                more = self.poll()
                backoff = self.poll_seconds
                if more:
                    continue  # a full batch: read the next one at once
                self._compact_beside()
                self._release_encoder()
            except SQLAlchemyError as exc:
                self.status.failures += 1
                self.status.last_error = exc.__class__.__name__
                if self.status.failures == 1 or self.status.failures % 50 == 0:
                    logger.warning("state follower: database unreachable ({}), serving the state as of seq {}",
                                   exc.__class__.__name__, self.status.applied_seq)
                backoff = min(max(backoff * 2, self.poll_seconds), self.max_backoff)
            except Exception as exc:  # never let the thread die: the state would silently freeze
                self.status.failures += 1
                self.status.last_error = exc.__class__.__name__  # /ready shows it
                logger.exception("state follower: unexpected error")
                backoff = min(max(backoff * 2, self.poll_seconds), self.max_backoff)
            self._stop.wait(backoff)

    # ------------------------------------------------------------------ one poll
    @contextmanager
    def _connected(self) -> Iterator[Connection]:
        """One connection kept from poll to poll (a checkout from the pool pings the server first: one
        statement more per poll); each poll ends its read transaction, which would otherwise hold the
        database's cleanup horizon back, and a poll that fails drops the connection."""
        conn = self._conn
        if conn is None or conn.closed or conn.invalidated:
            conn = self._conn = self.engine.connect()
        try:
            yield conn
            conn.rollback()
            # and the driver's own, begun by `feed_events.scalar` where SQLAlchemy began none (a no-op
            # without one): an idle poll runs only such statements
            conn.connection.driver_connection.rollback()
        except BaseException:
            self._conn = None
            with suppress(Exception):
                conn.close()
            raise

    def poll(self) -> bool:
        """Read and apply what is new; True if a full batch was read (more may be waiting)."""
        started = time.perf_counter()
        with self._connected() as conn:
            self._poll_users(conn)
            new_posts = self._poll_posts(conn)
            head = feed_events.max_seq(conn)  # the sequence's index: one lookup
            if head <= self._high and not self._gaps:
                # nothing new, the usual case between bursts: no snapshot, no read. A poll runs on the
                # serving process several times a second, and every statement holds the GIL a little
                batch, found_in_gaps, database_seq = EventBatch.empty(), EventBatch.empty(), head
                horizon_max = 0  # not read: there is no batch to find gaps in
            else:
                horizon_min, horizon_max = feed_events.pg_snapshot(conn)
                batch = feed_events.read_after(conn, self._high, limit=self.batch_rows,
                                               bulk=head - self._high > BULK_ROWS)
                found_in_gaps = self._poll_gaps(conn, horizon_min)
                # everything visible up to `head` has been read unless the batch was full
                database_seq = head if len(batch) < self.batch_rows else None
        if new_posts is not None:
            try:
                self._add_posts(new_posts)  # before the events, which may already be about them
            except Exception:  # noqa: BLE001 - a post that cannot be featurized must not stop the feed
                logger.exception("state follower: new posts not added; retried at the next poll")
                self.posts.forget_last()
        if len(batch):
            if conn.dialect.name == "postgresql":
                for lo, hi in missing_ranges(batch.seq, self._high, int(batch.seq[-1])):
                    self._gaps.append([int(lo), int(hi), horizon_max])
            self._high = int(batch.seq[-1])
        applied = self.state.apply(EventBatch.concat([batch, found_in_gaps]))
        status = self.status
        status.polls += 1
        status.failures = 0
        status.applied_seq = self._high
        status.open_gaps = len(self._gaps)
        if database_seq is not None:
            status.database_seq = max(database_seq, self._high)
            if status.database_seq <= self._high:
                status.synced_at = time.monotonic()
                status.caught_up.set()
        if applied:
            status.rate = applied / max(time.perf_counter() - started, 1e-6)
        return len(batch) >= self.batch_rows

    def compact(self, now: float | None = None) -> int:
        """Fold the events older than `keep_seconds` behind the latest applied one (or behind the wall
        clock, whichever is earlier: a row stamped in the future must not fold the present away) into
        the state's base, once they span `compact_seconds`; returns the user events folded. At once, in
        this thread; the follower's own loop builds the base beside it (`_compact_beside`)."""
        cut = self._due_cut(now)
        if cut is None:
            return 0
        started = time.perf_counter()
        folded = self.state.compact(cut)
        return_memory()  # the old base's arrays and the per-user tails are free now
        logger.info("state follower: {} events folded into the base, now as of {} ({:.2f}s)", folded, cut,
                    time.perf_counter() - started)
        return folded

    def _due_cut(self, now: float | None = None) -> int | None:
        latest = min(self.state.latest_event, int(time.time() if now is None else now))
        cut = latest - self.keep_seconds
        return cut if cut - self.state.base_as_of >= self.compact_seconds else None

    def _compact_beside(self) -> None:
        """`compact`, with the base built beside this thread while it goes on applying events (`_Building`:
        in a forked child process, or a thread of its own): at scale 1.0 a day's compaction takes seconds
        (its log line says how many), and built in this thread it held every like and view back that long
        once a day. Published by this thread, the one writer, at its first poll after the build."""
        building = self._compaction
        if building is not None:
            if building.thread.is_alive():
                return
            self._compaction = None
            if building.error is not None:
                raise building.error
            folded, seconds, way = self.state.publish_compaction(building.job), building.seconds, building.in_child
            del building
            return_memory()  # the old base's arrays and the folded tails are free now
            logger.info("state follower: {} events folded into the base, now as of {} (built in {:.2f}s {} "
                        "while applying)", folded, self.state.base_as_of, seconds,
                        "in a child process" if way else "in a thread")
            return
        cut = self._due_cut()
        if cut is None:
            return
        job = self.state.start_compaction(cut)
        if job is not None:
            self._compaction = _Building(job, self.compact_in_child)

    def _release_encoder(self) -> None:
        """The text encoder holds ~200 MB (minilm-int8): a worker keeps it only while posts keep coming."""
        if self._encoder is not None and time.monotonic() - self._encoder_used > self.encoder_idle_seconds:
            self._encoder = None
            return_memory()

    def _poll_gaps(self, conn: Connection, horizon_min: int) -> EventBatch:
        """Rows that filled open gaps; gaps whose writers have all finished are closed after this read."""
        if not self._gaps:
            return EventBatch.empty()
        found = feed_events.read_ranges(conn, [(lo, hi) for lo, hi, _ in self._gaps])
        still = []
        for lo, hi, horizon in self._gaps:
            if horizon and horizon_min >= horizon:
                continue  # every transaction that could write here had finished before this read
            seen = found.seq[(found.seq >= lo) & (found.seq <= hi)]
            still.extend([int(a), int(b), horizon] for a, b in missing_ranges(np.sort(seen), lo - 1, hi))
        self._gaps = still
        return found

    def _poll_users(self, conn: Connection) -> None:
        rows = self.users.poll(conn)
        if rows is None:
            return
        try:
            added = self.state.add_users(rows)
        except Exception:
            self.users.forget_last()  # read them again at the next poll, as before the watch took over
            raise
        self.status.users_added += added
        if added:
            logger.info("state follower: {} new users", added)

    def _poll_posts(self, conn: Connection) -> pd.DataFrame | None:
        """New post_text_df rows (None when there are none), read like new users."""
        if self.state.text_transforms is None:
            return None  # an artifact without text transforms cannot featurize new posts
        rows = self.posts.poll(conn)
        if rows is None:
            return None
        rows = rows[self.state.post_rows(rows[c.POST_ID].to_numpy(np.int64)) < 0]
        return rows if len(rows) else None

    def _add_posts(self, rows: pd.DataFrame) -> None:
        """Text features of new posts off the request path, in batches, then into the catalogue."""
        transforms = self.state.text_transforms
        started = time.perf_counter()
        if self._encoder is None:  # loaded when posts come (about a second), released when they stop
            self._encoder = make_encoder(transforms.encoder_name, lean=True)
        bad = ~rows[c.TOPIC].isin(c.TOPICS)
        if bad.any():  # a row the model cannot place: skip it loudly rather than stop following
            logger.warning("state follower: posts {} have topics outside {}: skipped",
                           rows.loc[bad, c.POST_ID].tolist()[:10], c.TOPICS)
            rows = rows[~bad]
        for lo in range(0, len(rows), self.posts_batch):
            part = rows.iloc[lo:lo + self.posts_batch]
            view = post_text_features(part[c.TEXT].astype(str).tolist(), part[c.TOPIC], transforms, self._encoder)
            added = self.state.add_posts(part, view, born=self.state.latest_event)
            self.status.posts_added += added
        self.status.posts_encode_seconds += time.perf_counter() - started
        self._encoder_used = time.monotonic()
        logger.info("state follower: {} new posts in {:.2f}s", len(rows), time.perf_counter() - started)


class TableWatch:
    """New rows of a table keyed by an integer id that usually grows (user_data, post_text_df).

    Every `poll_seconds` its highest id is read (the primary key's index: one lookup) and rows above the
    highest known are fetched. The row count, which finds ids inserted below the highest, is a scan of
    the table (a few milliseconds of the database's time at 163,000 users, on every worker several times
    a second): it is read every `recount_seconds` only, and when it says rows are missing, all are read.
    """

    def __init__(self, table, key, columns: tuple[str, ...], known_ids: np.ndarray, poll_seconds: float,
                 recount_seconds: float) -> None:
        self.table, self.key, self.columns = table, key, list(columns)
        self.poll_seconds, self.recount_seconds = poll_seconds, recount_seconds
        self.known = (len(known_ids), int(known_ids.max()) if len(known_ids) else -1)  # (count, highest id)
        self._before = self.known
        self._polled = self._counted = -float("inf")

    def poll(self, conn: Connection) -> pd.DataFrame | None:
        """Rows not seen before (None when there are none, or when it is not time to look)."""
        now = time.monotonic()
        if now - self._polled < self.poll_seconds:
            return None
        self._polled = now
        known_count, known_top = self.known
        count: int | None = None
        if now - self._counted >= self.recount_seconds:
            self._counted = now
            n, top = conn.execute(select(func.count(), func.max(self.key))).one()
            count = int(n or 0)
        else:  # several times a second: by the driver's cursor (`feed_events.scalar`)
            top = feed_events.scalar(conn, f"SELECT MAX({self.key.name}) FROM {self.table.name}")
        top = int(top if top is not None else -1)
        if top == known_top and count in (None, known_count):
            return None
        rows = self._read(conn, select(*self.table.c).where(self.key > known_top))
        if count is not None and len(rows) < count - known_count:  # some new ids lie below the highest
            rows = self._read(conn, select(*self.table.c))
        self._before = self.known
        self.known = (known_count + len(rows) if count is None else count, top)
        return rows

    def forget_last(self) -> None:
        """The rows of the last poll were not taken in: read them again at the next one."""
        self.known = self._before
        self._polled = -float("inf")

    def _read(self, conn: Connection, query) -> pd.DataFrame:
        return pd.DataFrame(conn.execute(query).mappings().all(), columns=self.columns)


def return_memory() -> None:
    """Hand freed heap memory back to the system (glibc keeps it in its arenas otherwise)."""
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc: nothing to do
        pass


def check_feed(engine: Engine) -> str | None:
    """Why the database cannot be followed, or None."""
    try:
        if not feed_has_seq(engine):
            return ("feed_data has no insertion sequence (made by an older version): run "
                    "`python -m training migrate` once")
    except SQLAlchemyError as exc:
        return f"database unreachable ({exc.__class__.__name__})"
    return None


def catch_up(engine: Engine, state: LiveState, batch_rows: int = 200_000) -> int:
    """Apply everything the database holds after the state, now, on this thread (offline evaluation,
    tests); returns the number of events applied."""
    follower = Follower(engine, state, batch_rows=batch_rows, users_poll_seconds=0.0, posts_poll_seconds=0.0,
                        recount_seconds=0.0)
    before = state.events_applied
    try:
        while follower.poll():
            pass
    finally:
        follower.stop()  # its connection back to the pool
    return state.events_applied - before
