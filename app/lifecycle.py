"""Model versions in the running service: hot swap without a failed request, refusal of broken ones.

Each worker serves one `Serving` — a version's `Recommender` with the follower that keeps its state
live — read by every request with a single attribute access. `ModelWatcher` looks at `models/current`
every `MODEL_WATCH_SECONDS` (and on `POST /admin/reload`): a new version is loaded and checked
(manifest, checksums, feature lists) and its state is caught up with the database — its snapshot plus
every event after it — while the old version keeps serving; then one reference assignment switches.
Requests already running finish on the version they started with, whose memory is released after.
A version that fails to load or to catch up is refused with its reason, and the old one keeps serving.
"""

from __future__ import annotations

import gc
import os
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from loguru import logger
from sqlalchemy import Engine

from app.artifacts import CURRENT
from app.engine import Recommender
from app.follower import Follower, return_memory


@dataclass(frozen=True)
class Serving:
    recommender: Recommender
    follower: Follower | None

    @property
    def version(self) -> str:
        return self.recommender.version


@dataclass
class Swap:
    at: str
    version: str
    outcome: str  # "swapped" or "refused"
    seconds: float
    previous: str | None = None
    reason: str | None = None


@dataclass
class WatchStatus:
    history: deque = field(default_factory=lambda: deque(maxlen=50))
    refused: dict[str, str] = field(default_factory=dict)  # version -> reason
    refused_at: dict[str, float] = field(default_factory=dict)  # version -> its files' last change then
    swaps: int = 0
    refusals: int = 0


def _last_change(version_dir: Path) -> float:
    try:
        return max((p.stat().st_mtime for p in version_dir.iterdir()), default=0.0)
    except OSError:
        return 0.0


def current_version(model_dir: Path) -> str | None:
    try:
        return (Path(model_dir) / CURRENT).read_text().strip() or None
    except OSError:
        return None


class ModelWatcher:
    """Swaps `holder.serving` to the version `models/current` names, in the background."""

    def __init__(self, holder, model_dir: Path, load: Callable[[Path], Recommender], engine: Engine | None,
                 follow: dict | None, watch_seconds: float = 2.0) -> None:
        self.holder = holder  # an object with a `serving` attribute (the app's state)
        self.model_dir = Path(model_dir)
        self.load = load  # version folder -> Recommender (checks the manifest)
        self.engine = engine
        self.follow = follow  # Follower keyword arguments, or None for a frozen service
        self.watch_seconds = watch_seconds
        self.status = WatchStatus()
        self._lock = threading.Lock()  # one candidate at a time
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # ------------------------------------------------------------------ building a Serving
    def build(self, version: str) -> Serving:
        """Load a version and catch its state up with the database (the caller still serves the old one)."""
        recommender = self.load(self.model_dir / version)
        follower = None
        if self.follow is not None and self.engine is not None:
            follower = Follower(self.engine, recommender.state, **self.follow)
            while follower.poll():  # everything after the snapshot, before it serves a request
                pass
        return Serving(recommender, follower)

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="model-watcher", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(10)

    def wake(self) -> None:
        self._wake.set()

    def _run(self) -> None:
        try:  # loading a version must not take the cores from the requests being served meanwhile
            os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), 15)
        except (OSError, AttributeError):
            pass
        while not self._stop.is_set():
            self._wake.wait(self.watch_seconds)
            self._wake.clear()
            if self._stop.is_set():
                return
            try:
                self.check()
            except Exception:  # the watcher must outlive any surprise; the old version keeps serving
                logger.exception("model watcher: unexpected error")

    # ------------------------------------------------------------------ one check
    def check(self, force: bool = False) -> Swap | None:
        """Swap to the version `current` names if it is new and loads; None when there is nothing to do. A
        refused version is tried again when its files change, or when `force`d (the admin endpoint)."""
        with self._lock:
            version = current_version(self.model_dir)
            serving: Serving = self.holder.serving
            if version is None or version == serving.version:
                return None
            st = self.status
            if not force and version in st.refused and st.refused_at[version] == _last_change(self.model_dir / version):
                return None
            started = time.perf_counter()
            try:
                candidate = self.build(version)
            except Exception as exc:  # ArtifactsInvalid, a database error while catching up, anything
                reason = str(exc).splitlines()[0][:500] if str(exc) else exc.__class__.__name__
                self.status.refused[version] = reason
                self.status.refused_at[version] = _last_change(self.model_dir / version)
                self.status.refusals += 1
                record = Swap(_now(), version, "refused", round(time.perf_counter() - started, 2),
                              serving.version, reason)
                self.status.history.append(record)
                logger.error("model {} refused, {} keeps serving: {}", version, serving.version, reason)
                return record
            if candidate.follower is not None:
                candidate.follower.start()  # from where its catch-up stopped
            self.holder.serving = candidate  # the switch: one reference assignment
            self.status.refused.pop(version, None)
            if serving.follower is not None:
                serving.follower.stop()
            record = Swap(_now(), version, "swapped", round(time.perf_counter() - started, 2), serving.version)
            self.status.history.append(record)
            self.status.swaps += 1
            del serving, candidate
            gc.collect()  # the old version's arrays go as soon as the requests still using them finish
            return_memory()
            logger.info("model {} now serving (was {}), swapped in {}s", version, record.previous, record.seconds)
            return record


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")
