"""Model versions in the running service: hot swap without a failed request, refusal of broken ones.

Each worker serves one `Serving` — a version's `Recommender` with the follower that keeps its state
live — read by every request with a single attribute access. `ModelWatcher` looks at `models/current`
every `MODEL_WATCH_SECONDS` (and on `POST /admin/reload`): a new version is loaded and checked
(manifest, checksums, feature lists) and its state is caught up with the database — its snapshot plus
every event after it — while the old version keeps serving; then one reference assignment switches.
Requests already running finish on the version they started with, whose memory is released after.
A version that fails to load or to catch up is refused with its reason, and the old one keeps serving.

The workers of one server (`python -m app --workers N`) are separate processes, and a user's requests
reach any of them. Switching each as soon as it has loaded would let a user see the new version, then
the old one again from a worker still loading. So they agree (`WorkerBarrier`): they load one at a time
(one loading version's transient memory at once), each marks itself ready in a folder they share, and
all switch at one moment — the last mark's time plus a margin — checked by every request against the
clock they share (`serving_now`), so that no request starting after that moment gets the old version.
"""

from __future__ import annotations

import contextlib
import fcntl
import gc
import os
import shutil
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
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


def serving_now(state) -> Serving:
    """The version a request starting now uses: the agreed one once its switch moment has come. Every
    request reads it through here, so that a worker switches at the agreed moment even while its
    watcher thread waits for a core."""
    pending = getattr(state, "pending", None)
    if pending is not None and time.time() >= pending[0]:
        state.serving = pending[1]  # several requests may do this at once: the same assignment
        state.pending = None
    return state.serving


def current_key(model_dir: Path) -> str | None:
    """The identity of the latest flip of `models/current`: its version and the moment it was written
    (flipping back to a version seen before is a new flip)."""
    pointer = Path(model_dir) / CURRENT
    try:
        return f"{pointer.read_text().strip()}@{pointer.stat().st_mtime_ns}"
    except OSError:
        return None


LOCK = ".lock"


@contextlib.contextmanager
def _flocked(path: Path) -> Iterator[None]:
    """An exclusive lock on `path` between the workers' processes."""
    with open(path, "a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


class WorkerBarrier:
    """The workers of one server agree on when to switch; a single worker (tests, `--workers 1`, one
    replica) switches at once. `python -m app` sets SWAP_BARRIER_DIR and SWAP_WORKERS for its workers."""

    def __init__(self, directory: Path | None, workers: int = 1, me: str | None = None, delay: float = 1.0,
                 timeout: float = 120.0) -> None:
        self.directory = Path(directory) if directory else None
        self.workers = workers
        self.me = me or str(os.getpid())
        # the margin between the last worker's mark and the switch: every watcher, polling every 20 ms at
        # a low priority, must have seen the marks before the moment comes
        self.delay = delay
        self.timeout = timeout  # a worker that never gets ready (refused the version, died) holds no one
        self._marked: str | None = None

    @classmethod
    def from_env(cls) -> WorkerBarrier:
        return cls(os.environ.get("SWAP_BARRIER_DIR") or None, int(os.environ.get("SWAP_WORKERS", "1") or 1))

    @property
    def active(self) -> bool:
        return self.directory is not None and self.workers > 1

    @contextlib.contextmanager
    def loading(self) -> Iterator[None]:
        """One worker loads at a time."""
        if not self.active:
            yield
            return
        self.directory.mkdir(parents=True, exist_ok=True)
        with _flocked(self.directory / "load.lock"):
            yield

    @contextlib.contextmanager
    def _locked(self, folder: Path) -> Iterator[None]:
        """Marking, counting and taking a mark back happen under one lock per flip: a worker that counts
        every mark has decided, and no mark it counted is taken back."""
        folder.mkdir(parents=True, exist_ok=True)
        with _flocked(folder / LOCK):
            yield

    def _marks(self, folder: Path) -> list[Path]:
        return [m for m in folder.iterdir() if m.name != LOCK]

    def mark(self, key: str | None) -> None:
        """This worker serves, or is ready to serve, the flip `key`."""
        if not self.active or key is None or self._marked == key:
            return
        folder = self.directory / key
        with self._locked(folder):
            (folder / self.me).touch()
        self._marked = key

    def switch_at(self, key: str, still: Callable[[], bool], stop: threading.Event) -> float | None:
        """Mark this worker ready for `key` and wait for the others: the agreed moment (the same in every
        worker: computed from the same files), or None when `still()` says the flip is no longer current
        before every worker was ready (this worker's mark is then taken back)."""
        if not self.active:
            return time.time()
        self.mark(key)
        deadline = time.monotonic() + self.timeout
        folder = self.directory / key
        while True:
            with self._locked(folder):
                marks = self._marks(folder)
                if len(marks) >= self.workers:  # decided: every worker that counts them switches then
                    return max(m.stat().st_mtime for m in marks) + self.delay
                if not still():
                    (folder / self.me).unlink(missing_ok=True)
                    self._marked = None
                    return None
            if time.monotonic() >= deadline or stop.is_set():
                logger.warning("{} of {} workers ready for {} after {:.0f}s: switching without the others",
                               len(marks), self.workers, key, self.timeout)
                return time.time()
            time.sleep(0.02)

    def forget_others(self, key: str) -> None:
        """Remove the marks of earlier flips."""
        if not self.active or not self.directory.is_dir():
            return
        for folder in self.directory.iterdir():
            if folder.is_dir() and folder.name != key:
                shutil.rmtree(folder, ignore_errors=True)


def current_version(model_dir: Path) -> str | None:
    try:
        return (Path(model_dir) / CURRENT).read_text().strip() or None
    except OSError:
        return None


class ModelWatcher:
    """Swaps `holder.serving` to the version `models/current` names, in the background."""

    def __init__(self, holder, model_dir: Path, load: Callable[[Path], Recommender], engine: Engine | None,
                 follow: dict | None, watch_seconds: float = 2.0, barrier: WorkerBarrier | None = None) -> None:
        self.holder = holder  # an object with a `serving` attribute (the app's state)
        self.barrier = barrier or WorkerBarrier(None)
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
            key = current_key(self.model_dir)
            serving: Serving = serving_now(self.holder)
            if version is None:
                return None
            if version == serving.version:  # ready for this flip already (e.g. flipped back to it)
                self.barrier.mark(key)
                return None
            st = self.status
            if not force and version in st.refused and st.refused_at[version] == _last_change(self.model_dir / version):
                return None
            started = time.perf_counter()
            try:
                with self.barrier.loading():
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
            at = self.barrier.switch_at(key, lambda: current_key(self.model_dir) == key, self._stop)
            if at is None:  # flipped again meanwhile: the next check loads the newest
                if candidate.follower is not None:
                    candidate.follower.stop()
                logger.info("model {} loaded but current moved on before every worker was ready", version)
                return None
            # the switch: from `at` on, every request (and this thread, if none comes) assigns the reference
            self.holder.pending = (at, candidate)
            self._stop.wait(max(0.0, at - time.time()))
            self.holder.pending = None if serving_now(self.holder) is candidate else self.holder.pending
            self.barrier.forget_others(key)
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
