"""Exposure log: every response is recorded in `recommendation_log`, off the request path.

Requests put a record on a bounded in-memory queue and return. A background thread drains it in
batches. While the database is unreachable the records stay buffered (up to the bound) and the writer
retries with a back-off that requests cannot cut short (no reconnect storm). Records that do not fit
go to a spool directory on disk when `LOG_SPOOL_DIR` is set, and are written from there once the
database is back; without one, or when the disk refuses them too, they are dropped and counted —
never silently.

With `LOG_SPOOL_DIR` set, every queued record is also appended to a journal in that directory (one
`write()` per request, no fsync: a process that is killed, even by SIGKILL, leaves what it wrote in the
page cache; only a machine crash can lose it). The writer starts a new journal segment at each flush
and deletes a segment once every record in it is written. A segment left by a worker that no longer
runs is replayed by any other worker at its next flush (or by the next one to start): records already
in the table are skipped by their request id, the others written — so a killed worker loses no record
it served. The spool of records that did not fit the buffer is replayed the same way.

One flush runs at a time (the writer thread, `stop()` and tests all go through `flush`), so the head
of the queue is never inserted twice. A batch the database rejects is retried record by record: a
record already in the table (a commit whose acknowledgement was lost) counts as written, only a record
the database refuses on its own is dropped.
"""

from __future__ import annotations

import json
import os
import threading
import time
from collections import deque
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from loguru import logger
from sqlalchemy import Engine, insert, inspect, select
from sqlalchemy.exc import IntegrityError, SQLAlchemyError

from app.db import create_log_table
from app.tables import recommendation_log

SPOOL_PREFIX = "exposure-"
JOURNAL_PREFIX = "journal-"


def _start_ticks(pid: int) -> str | None:
    """When the process started (clock ticks since boot, /proc/PID/stat field 22): with the pid it names a
    process uniquely, so a journal is not taken for a live worker's because a new process reused its pid
    (containers restart with the same small pids)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rsplit(")", 1)[1].split()[19]


def _owner_alive(owner: str) -> bool:
    """Whether the process a spool or journal file names ("PID" or "PID.START") still runs."""
    pid, _, start = owner.partition(".")
    if not pid.isdigit():
        return False
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's process: not ours to judge
    return not start or _start_ticks(int(pid)) in (None, start)


@dataclass(frozen=True)
class Exposure:
    request_id: str
    user_id: int
    requested_at: datetime
    served_at: datetime
    exp_group: str
    model_name: str
    model_version: str
    post_ids: tuple[int, ...]
    features_as_of: datetime | None = None

    def row(self) -> dict:
        return {"request_id": self.request_id, "user_id": self.user_id, "requested_at": self.requested_at,
                "served_at": self.served_at, "exp_group": self.exp_group, "model_name": self.model_name,
                "model_version": self.model_version, "post_ids": " ".join(map(str, self.post_ids)),
                "features_as_of": self.features_as_of}

    def to_json(self) -> str:
        # by hand rather than dataclasses.asdict, which deep-copies: this runs on the request path
        return json.dumps({"request_id": self.request_id, "user_id": self.user_id,
                           "requested_at": self.requested_at.isoformat(), "served_at": self.served_at.isoformat(),
                           "exp_group": self.exp_group, "model_name": self.model_name,
                           "model_version": self.model_version, "post_ids": self.post_ids,
                           "features_as_of": self.features_as_of.isoformat() if self.features_as_of else None})

    @classmethod
    def from_json(cls, line: str) -> Exposure:
        d = json.loads(line)
        for key in ("requested_at", "served_at", "features_as_of"):
            if d[key] is not None:
                d[key] = datetime.fromisoformat(d[key])
        return cls(**{**d, "post_ids": tuple(d["post_ids"])})


class ExposureWriter:
    """Bounded buffer plus one writer thread; `submit` never blocks on the database and never raises."""

    def __init__(self, engine: Engine, max_queue: int = 10_000, batch_size: int = 500,
                 flush_seconds: float = 1.0, max_backoff: float = 10.0, spool_dir: Path | None = None) -> None:
        self.engine = engine
        self.max_queue = max_queue
        self.batch_size = batch_size
        self.flush_seconds = flush_seconds
        self.max_backoff = max_backoff
        self.spool_dir = Path(spool_dir) if spool_dir is not None else None
        self._queue: deque[Exposure] = deque()
        self._lock = threading.Lock()  # the queue, the counters and the spool file being appended
        self._io = threading.Lock()  # one flush at a time
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._backing_off = False  # after a failed write: only the back-off timer (or stop) wakes the writer
        self._table_ready = False
        self.written = 0
        self.dropped = 0
        self.failures = 0  # failed write attempts (each one a connection attempt while the database is down)
        self.spooled = 0  # records put on disk because the queue was full
        self.duplicates = 0  # records found already written when retried
        self.recovered = 0  # records written from the journals of workers that no longer run
        self.journal_failures = 0  # records the journal refused (disk full, read-only): kept in memory only
        if self.spool_dir is not None:
            self.spool_dir.mkdir(parents=True, exist_ok=True)
        self._spool_file = self.spool_dir / f"{SPOOL_PREFIX}{os.getpid()}.jsonl" if self.spool_dir else None
        start = _start_ticks(os.getpid())
        self._me = f"{os.getpid()}.{start}" if start else str(os.getpid())  # names this process's journals
        self._journal_fd: int | None = None
        self._journal_path: Path | None = None
        self._segments = 0
        # the queue in runs of records from one journal segment, oldest first: [segment or None, records]
        self._runs: deque[list] = deque()

    # ------------------------------------------------------------ request side
    def submit(self, exposure: Exposure) -> bool:
        """Queue the record; False if it went to the spool or was dropped (counted either way)."""
        with self._lock:
            if len(self._queue) >= self.max_queue:
                self._overflow(exposure)
                return False
            if self.spool_dir is not None:
                self._journal(exposure)
            self._queue.append(exposure)
            wake = len(self._queue) >= self.batch_size and not self._backing_off
        if wake:
            self._wake.set()
        return True

    def _journal(self, exposure: Exposure) -> None:
        """Called under the lock: append the record to the current journal segment, one write()."""
        segment = None
        try:
            if self._journal_fd is None:
                self._segments += 1
                path = self.spool_dir / f"{JOURNAL_PREFIX}{self._me}-{self._segments}.jsonl"
                self._journal_fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
                self._journal_path = path
            os.write(self._journal_fd, (exposure.to_json() + "\n").encode())
            segment = self._journal_path
        except OSError as exc:
            # the record stays queued in memory, as without a journal; the next one starts a new segment, so
            # that each segment's records stay one run of the queue
            self.journal_failures += 1
            if self.journal_failures == 1:
                logger.error("exposure log: journal in {} refused a record: {}", self.spool_dir, exc)
            self._close_segment()
        if self._runs and self._runs[-1][0] == segment:
            self._runs[-1][1] += 1
        else:
            self._runs.append([segment, 1])

    def _close_segment(self) -> None:
        """Called under the lock: stop appending to the current segment (the next record opens a new one);
        delete it at once if none of its records is still queued."""
        path, fd = self._journal_path, self._journal_fd
        self._journal_fd = self._journal_path = None
        if fd is not None:
            try:
                os.close(fd)
            except OSError:
                pass
        if path is not None and not any(run[0] == path for run in self._runs):
            path.unlink(missing_ok=True)

    def _settle(self, n: int) -> None:
        """Called under the lock: the queue's n oldest records are written (or rejected and counted); delete
        the closed segments that held only them."""
        while n > 0 and self._runs:
            run = self._runs[0]
            take = min(n, run[1])
            run[1] -= take
            n -= take
            if run[1] == 0:
                self._runs.popleft()
                if run[0] is not None and run[0] != self._journal_path:
                    run[0].unlink(missing_ok=True)

    def _overflow(self, exposure: Exposure) -> None:
        """Called under the lock: the spool file is appended by one thread at a time."""
        if self._spool_file is not None:
            try:
                with self._spool_file.open("a") as f:
                    f.write(exposure.to_json() + "\n")
                self.spooled += 1
                return
            except OSError as exc:  # disk full or read-only: fall through to counting the loss
                if self.dropped == 0:
                    logger.error("exposure log: spool {} refused a record: {}", self._spool_file, exc)
        self.dropped += 1

    @property
    def depth(self) -> int:
        return len(self._queue)

    def spool_files(self) -> list[Path]:
        """Files of records not yet known to be written: spools, claimed files being replayed, journals."""
        if self.spool_dir is None:
            return []
        patterns = (f"{SPOOL_PREFIX}*.jsonl", f"{SPOOL_PREFIX}*.draining", f"{JOURNAL_PREFIX}*.jsonl")
        return sorted(p for pattern in patterns for p in self.spool_dir.glob(pattern))

    # ------------------------------------------------------------ writer side
    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="exposure-writer", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        """Stop the thread, then flush what is buffered (one last try). If the thread is stuck in a write
        past `timeout`, the last flush is skipped rather than run beside it; what is still buffered then
        goes to the spool, or is reported as lost."""
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout)
            if self._thread.is_alive():
                logger.warning("exposure log: writer still busy after {}s; not flushing beside it", timeout)
                self._spool_rest()
                return
        self.flush()
        self._spool_rest()

    def _spool_rest(self) -> None:
        with self._lock:
            rest, self._queue = list(self._queue), deque()
            for e in rest:
                self._overflow(e)
            # every record is now written, spooled or counted as dropped: the journal has nothing left to keep
            segments = {run[0] for run in self._runs if run[0] is not None}
            self._runs.clear()
            self._close_segment()
            for path in segments:
                path.unlink(missing_ok=True)
        if rest:
            logger.warning("exposure log: {} records not written at stop ({})", len(rest),
                           f"spooled to {self.spool_dir}" if self.spool_dir else "lost")

    def _run(self) -> None:
        backoff = self.flush_seconds
        while not self._stop.is_set():
            if self._backing_off:
                self._stop.wait(backoff)  # requests cannot shorten this: one attempt per back-off step
            else:
                self._wake.wait(self.flush_seconds)
            self._wake.clear()
            if self._stop.is_set():
                break
            # flush() sets _backing_off; the wait doubles with every failure in a row, up to max_backoff
            backoff = self.flush_seconds if self.flush() else min(backoff * 2, self.max_backoff)

    def flush(self) -> bool:
        """Write everything buffered (and spooled) in batches; False (records kept) if the database refused."""
        with self._io:
            with self._lock:  # what is queued now is in closed segments, deleted as it is written
                self._close_segment()
            ok = self._ensure_table() and self._drain_queue() and self._drain_spool()
            self._backing_off = not ok
            return ok

    def _ensure_table(self) -> bool:
        if self._table_ready:
            return True
        try:
            create_log_table(self.engine)
            self._table_ready = True
        except SQLAlchemyError as exc:
            # two workers creating the table at once: the loser's DDL fails although the table now exists
            try:
                self._table_ready = inspect(self.engine).has_table(recommendation_log.name)
            except SQLAlchemyError:
                pass
            if not self._table_ready:
                self._failed(exc)
        return self._table_ready

    def _failed(self, exc: Exception) -> None:
        with self._lock:
            self.failures += 1
        logger.warning("exposure log: write failed, {} buffered: {}", self.depth, exc.__class__.__name__)

    def _drain_queue(self) -> bool:
        while True:
            with self._lock:
                batch = [self._queue[i] for i in range(min(self.batch_size, len(self._queue)))]
            if not batch:
                return True
            try:
                self._write(batch, on_done=self._pop)
            except SQLAlchemyError as exc:
                self._failed(exc)
                return False

    def _pop(self, n: int) -> None:
        with self._lock:
            for _ in range(min(n, len(self._queue))):  # stop() may have spooled the queue meanwhile
                self._queue.popleft()
            self._settle(n)

    def _drain_spool(self) -> bool:
        """Write spooled and journaled records: this process's spool (claimed by renaming it, so that
        requests start a new one), and the spools, journals and half-replayed files of processes that no
        longer run. A claimed file is renamed after its claimer, so two workers never replay one file and a
        claimer killed half-way leaves it to the next. Records already in the table (a journal holds what
        was written just before its worker died; a replay may be cut short) are skipped by request id."""
        if self.spool_dir is None:
            return True
        for path in self.spool_files():
            if not self._claimable(path):
                continue
            claimed = self.spool_dir / f"{SPOOL_PREFIX}{self._me}-{time.time_ns()}.draining"
            with self._lock:
                try:
                    path.rename(claimed)
                except OSError:
                    continue  # another worker claimed it first
            records = self._read(claimed)
            try:
                new = 0
                for i in range(0, len(records), self.batch_size):
                    new += self._write_new(records[i:i + self.batch_size])
            except SQLAlchemyError as exc:
                claimed.rename(path.with_name(f"{SPOOL_PREFIX}{os.getpid()}-{time.time_ns()}.jsonl"))
                self._failed(exc)
                return False
            claimed.unlink()
            if path.name.startswith(JOURNAL_PREFIX):
                with self._lock:
                    self.recovered += new
            logger.info("exposure log: {} of {} records in {} written (the others were already)", new,
                        len(records), path.name)
        return True

    def _claimable(self, path: Path) -> bool:
        owner = path.stem.removeprefix(SPOOL_PREFIX).removeprefix(JOURNAL_PREFIX).split("-")[0]
        if owner.partition(".")[0] == str(os.getpid()):
            # this process's own journal is deleted as it is written; one under its pid and another start
            # time was left by a process that had the same pid before
            return not (path.name.startswith(JOURNAL_PREFIX) and owner == self._me)
        return not _owner_alive(owner)

    @staticmethod
    def _read(path: Path) -> list[Exposure]:
        records = []
        for line in path.read_text(errors="replace").splitlines():
            if not line.strip():
                continue
            try:
                records.append(Exposure.from_json(line))
            except (ValueError, KeyError, TypeError) as exc:
                # a worker killed inside its journal write(): the request it was logging was never answered
                logger.warning("exposure log: unreadable line in {} skipped: {}", path.name, exc)
        return records

    def _write_new(self, records: list[Exposure]) -> int:
        """Insert the records the table does not hold yet; how many were new."""
        with self.engine.connect() as conn:
            present = set(conn.execute(select(recommendation_log.c.request_id).where(
                recommendation_log.c.request_id.in_([e.request_id for e in records]))).scalars())
        fresh = [e for e in records if e.request_id not in present]
        with self._lock:
            self.duplicates += len(records) - len(fresh)
        if fresh:
            self._write(fresh, on_done=lambda _n: None)
        return len(fresh)

    def _write(self, records: list[Exposure], on_done) -> None:
        """Insert the records; `on_done(n)` after each n of them are settled (written or rejected).
        Raises SQLAlchemyError (other than an integrity error) when the database is unavailable."""
        try:
            with self.engine.begin() as conn:
                conn.execute(insert(recommendation_log), [e.row() for e in records])
            with self._lock:
                self.written += len(records)
            on_done(len(records))
            return
        except IntegrityError:
            pass  # a duplicate or a bad record: find which, one by one
        for e in records:
            try:
                with self.engine.begin() as conn:
                    conn.execute(insert(recommendation_log), [e.row()])
                with self._lock:
                    self.written += 1
            except IntegrityError as exc:
                with self.engine.connect() as conn:
                    present = conn.execute(select(recommendation_log.c.request_id).where(
                        recommendation_log.c.request_id == e.request_id)).first() is not None
                with self._lock:
                    if present:
                        self.duplicates += 1
                    else:
                        self.dropped += 1
                if not present:
                    logger.error("exposure log: record {} rejected by the database: {}", e.request_id,
                                 exc.orig.__class__.__name__ if exc.orig is not None else exc)
            on_done(1)

    def wait_until_empty(self, timeout: float = 5.0) -> bool:
        """Wait for the queue and every spool and journal file in LOG_SPOOL_DIR to be written (tests; in a
        service with several workers the others' journals keep coming while they serve)."""
        deadline = time.monotonic() + timeout
        while (self.depth or self.spool_files()) and time.monotonic() < deadline:
            if not self._backing_off:
                self._wake.set()
            time.sleep(0.02)
        return self.depth == 0 and not self.spool_files()
