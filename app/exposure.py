"""Exposure log: every response is recorded in `recommendation_log`, off the request path.

Requests put a record on a bounded in-memory queue and return. A background thread drains it in
batches. While the database is unreachable the records stay buffered (up to the bound) and the
writer retries with backoff; records that do not fit are dropped and counted, never silently.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from dataclasses import dataclass
from datetime import datetime

from loguru import logger
from sqlalchemy import Engine, insert
from sqlalchemy.exc import IntegrityError, SQLAlchemyError

from app.db import create_log_table
from app.tables import recommendation_log


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


class ExposureWriter:
    """Bounded buffer plus one writer thread; `submit` never blocks and never raises."""

    def __init__(self, engine: Engine, max_queue: int = 10_000, batch_size: int = 500,
                 flush_seconds: float = 1.0, max_backoff: float = 10.0) -> None:
        self.engine = engine
        self.max_queue = max_queue
        self.batch_size = batch_size
        self.flush_seconds = flush_seconds
        self.max_backoff = max_backoff
        self._queue: deque[Exposure] = deque()
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.written = 0
        self.dropped = 0
        self.failures = 0
        self._table_ready = False

    # ------------------------------------------------------------ request side
    def submit(self, exposure: Exposure) -> bool:
        with self._lock:
            if len(self._queue) >= self.max_queue:
                self.dropped += 1
                return False
            self._queue.append(exposure)
            full = len(self._queue) >= self.batch_size
        if full:
            self._wake.set()
        return True

    @property
    def depth(self) -> int:
        return len(self._queue)

    # ------------------------------------------------------------ writer side
    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="exposure-writer", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        """Flush what is buffered (one last try) and stop the thread."""
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout)
        self.flush()

    def _run(self) -> None:
        backoff = self.flush_seconds
        while not self._stop.is_set():
            self._wake.wait(backoff)
            self._wake.clear()
            if self._stop.is_set():
                break
            ok = self.flush()
            backoff = self.flush_seconds if ok else min(backoff * 2, self.max_backoff)

    def flush(self) -> bool:
        """Write everything buffered in batches; False (records kept) if the database refused."""
        while True:
            with self._lock:
                batch = [self._queue[i] for i in range(min(self.batch_size, len(self._queue)))]
            if not batch:
                return True
            try:
                if not self._table_ready:
                    create_log_table(self.engine)
                    self._table_ready = True
                with self.engine.begin() as conn:
                    conn.execute(insert(recommendation_log), [e.row() for e in batch])
            except IntegrityError:  # a bad batch would block the queue forever: count it as dropped
                logger.error("exposure log: {} records rejected by the database", len(batch))
                with self._lock:
                    for _ in batch:
                        self._queue.popleft()
                self.dropped += len(batch)
                continue
            except SQLAlchemyError as exc:
                self.failures += 1
                logger.warning("exposure log: write failed, {} buffered: {}", self.depth, exc.__class__.__name__)
                return False
            with self._lock:
                for _ in batch:
                    self._queue.popleft()
            self.written += len(batch)

    def wait_until_empty(self, timeout: float = 5.0) -> bool:
        deadline = time.monotonic() + timeout
        while self.depth and time.monotonic() < deadline:
            self._wake.set()
            time.sleep(0.02)
        return self.depth == 0
