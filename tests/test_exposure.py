"""The exposure log under a lost database: no crash, bounded buffer, drops counted, nothing lost on recovery."""

import os
import subprocess
import sys
import threading
import time
import uuid
from datetime import datetime

from sqlalchemy import event, func, select, text
from sqlalchemy.exc import IntegrityError

from app.db import create_log_table, make_engine
from app.exposure import Exposure, ExposureWriter
from app.tables import recommendation_log

DEAD = "postgresql+psycopg2://postgres@127.0.0.1:1/nowhere"  # nothing listens on port 1


def _exposure(i: int) -> Exposure:
    now = datetime(2022, 1, 1, 12, 0, i % 60)
    return Exposure(str(uuid.uuid4()), i, now, now, "test", "test", "v1", (1, 2, 3))


def _count(url: str) -> int:
    engine = make_engine(url)
    with engine.connect() as conn:
        n = conn.execute(select(func.count()).select_from(recommendation_log)).scalar_one()
    engine.dispose()
    return n


def test_buffers_while_down_and_writes_after_recovery(pg_url):
    writer = ExposureWriter(make_engine(DEAD), max_queue=50, batch_size=10, flush_seconds=0.02, max_backoff=0.05)
    writer.start()
    accepted = [writer.submit(_exposure(i)) for i in range(60)]
    assert accepted.count(True) == 50 and writer.dropped == 10  # the bound holds; the overflow is counted
    assert not writer.flush() and writer.failures >= 1 and writer.depth == 50
    writer.engine = make_engine(pg_url)  # the database is back
    assert writer.wait_until_empty(timeout=10)
    writer.stop()
    assert writer.written == 50 and _count(pg_url) == 50


def test_survives_killed_connections(pg_url):
    engine = make_engine(pg_url)
    writer = ExposureWriter(engine, batch_size=5, flush_seconds=0.02)
    writer.start()
    for i in range(20):
        writer.submit(_exposure(i))
    assert writer.wait_until_empty(timeout=10)
    admin = make_engine(pg_url.rsplit("/", 1)[0] + "/postgres")
    with admin.connect() as conn:  # kill every session the writer holds
        conn.execute(text("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = :d "
                          "AND pid <> pg_backend_pid()"), {"d": pg_url.rsplit("/", 1)[1]})
        conn.commit()
    admin.dispose()
    for i in range(20, 40):
        writer.submit(_exposure(i))
    assert writer.wait_until_empty(timeout=10)
    writer.stop()
    assert writer.dropped == 0 and _count(pg_url) == 40


def test_stop_flushes(sqlite_url):
    writer = ExposureWriter(make_engine(sqlite_url), batch_size=1000, flush_seconds=60)
    writer.start()
    for i in range(7):
        writer.submit(_exposure(i))
    writer.stop()
    assert _count(sqlite_url) == 7


def test_service_refuses_to_start_without_artifacts(tmp_path):
    out = subprocess.run([sys.executable, "-m", "app", "--port", "0"], capture_output=True, text=True,
                         env={"MODEL_DIR": str(tmp_path), "PATH": "/usr/bin:/bin"}, timeout=60)
    assert out.returncode == 1
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:") and "make train" in lines[0]


def test_service_refuses_corrupt_artifacts(trained, tmp_path):
    import shutil

    models = tmp_path / "models"
    shutil.copytree(trained["model_dir"], models)
    (models / trained["version_dir"].name / "state.npz").write_bytes(b"not an npz")
    out = subprocess.run([sys.executable, "-m", "app"], capture_output=True, text=True,
                         env={"MODEL_DIR": str(models), "PATH": "/usr/bin:/bin"}, timeout=60)
    assert out.returncode == 1 and "corrupt" in out.stderr and len(out.stderr.strip().splitlines()) == 1


def test_backoff_really_waits_while_the_database_is_down():
    """Requests arriving during the back-off do not wake the writer: attempts follow the back-off, not the
    request rate (before: one reconnect attempt per request once a batch was buffered)."""
    writer = ExposureWriter(make_engine(DEAD), max_queue=100_000, batch_size=2, flush_seconds=0.05, max_backoff=0.4)
    writer.start()
    started = time.monotonic()
    while time.monotonic() - started < 1.5:
        writer.submit(_exposure(0))
        time.sleep(0.001)
    failures = writer.failures
    writer.stop(timeout=1)
    # 0.1 + 0.2 + 0.4 + 0.4 ... within 1.5 s: at most 6 attempts, plus one in flight and slack for a slow machine
    assert 2 <= failures <= 8, failures


def test_stop_never_flushes_beside_a_busy_writer(tmp_path, sqlite_url):
    """stop() while the writer is stuck in an insert: no second flush of the same head beside it, nothing
    dropped; what stop() could not write goes to the spool and is written from there once."""
    engine = make_engine(sqlite_url)
    slow = threading.Event()

    @event.listens_for(engine, "before_cursor_execute")
    def _slow_insert(conn, cursor, statement, *args) -> None:
        if slow.is_set() and statement.startswith("INSERT INTO recommendation_log"):
            time.sleep(0.4)

    writer = ExposureWriter(engine, batch_size=5, flush_seconds=0.01, spool_dir=tmp_path / "spool")
    writer.flush()  # creates the table
    slow.set()
    writer.start()
    for i in range(10):
        writer.submit(_exposure(i))
    time.sleep(0.1)  # the writer is inside its first insert now
    writer.stop(timeout=0.05)
    writer._thread.join(10)
    slow.clear()
    assert writer.flush()  # a later flush (the next start) writes what was spooled
    assert writer.dropped == 0 and _count(sqlite_url) == 10 and writer.written == 10
    assert not writer.spool_files()


def test_table_creation_race_does_not_drop_records(sqlite_url, monkeypatch):
    """The loser of two workers creating the log table at once gets an integrity error from the DDL
    (PostgreSQL's pg_type) although the table now exists: its batch is written, not dropped."""
    def create_and_lose(engine):
        create_log_table(engine)
        raise IntegrityError("CREATE TABLE recommendation_log", {}, Exception("duplicate key (pg_type)"))

    monkeypatch.setattr("app.exposure.create_log_table", create_and_lose)
    writer = ExposureWriter(make_engine(sqlite_url), batch_size=10)
    for i in range(7):
        writer.submit(_exposure(i))
    assert writer.flush()
    assert writer.dropped == 0 and _count(sqlite_url) == 7


def test_a_record_already_written_is_not_written_twice_nor_its_batch_dropped(sqlite_url):
    """A commit whose acknowledgement was lost is retried: the record already in the table counts as
    written; the other records of its batch are written, none dropped."""
    writer = ExposureWriter(make_engine(sqlite_url), batch_size=10)
    records = [_exposure(i) for i in range(6)]
    writer.submit(records[2])
    assert writer.flush()
    for e in records:
        writer.submit(e)
    assert writer.flush()
    assert _count(sqlite_url) == 6 and writer.dropped == 0 and writer.duplicates == 1


def test_overflow_goes_to_the_spool_and_is_written_after_recovery(tmp_path, pg_url):
    writer = ExposureWriter(make_engine(DEAD), max_queue=5, batch_size=5, flush_seconds=0.02, max_backoff=0.05,
                            spool_dir=tmp_path / "spool")
    writer.start()
    accepted = [writer.submit(_exposure(i)) for i in range(20)]
    assert accepted.count(True) == 5 and writer.spooled == 15 and writer.dropped == 0
    writer.engine = make_engine(pg_url)  # the database is back
    assert writer.wait_until_empty(timeout=10)
    writer.stop()
    assert writer.written == 20 and _count(pg_url) == 20 and writer.dropped == 0


def test_a_full_disk_under_the_spool_is_counted_as_dropped(tmp_path):
    spool = tmp_path / "spool"
    writer = ExposureWriter(make_engine(DEAD), max_queue=2, spool_dir=spool)
    (spool / f"exposure-{os.getpid()}.jsonl").symlink_to("/dev/full")  # every write: ENOSPC, root or not
    accepted = [writer.submit(_exposure(i)) for i in range(5)]
    assert accepted.count(True) == 2 and writer.dropped == 3 and writer.spooled == 0


# a worker that served records and is then killed: it writes `written` of them, and is SIGKILLed with the rest
# queued; with `unsettled` set, the first `unsettled` of the rest reach the table but the kill comes before
# their journal segment is deleted (the moment between a commit and its bookkeeping)
KILLED_WORKER = """
import signal, sys, uuid
from datetime import datetime
from pathlib import Path
from app.db import make_engine
from app.exposure import Exposure, ExposureWriter
url, spool, written, queued, unsettled = sys.argv[1], Path(sys.argv[2]), *map(int, sys.argv[3:])
writer = ExposureWriter(make_engine(url), batch_size=7, flush_seconds=3600, spool_dir=spool)
now = datetime(2022, 1, 1, 12)
records = [Exposure(str(uuid.uuid4()), i, now, now, "test", "test", "v1", (1, 2, 3)) for i in range(written + queued)]
for e in records[:written]:
    writer.submit(e)
assert writer.flush()
for e in records[written:]:
    writer.submit(e)
writer._write(records[written:written + unsettled], on_done=lambda _n: None)
print("served", flush=True)
signal.pause()
"""


def _serve_and_die(url: str, spool, written: int, queued: int, unsettled: int = 0) -> None:
    worker = subprocess.Popen([sys.executable, "-c", KILLED_WORKER, url, str(spool), str(written), str(queued),
                               str(unsettled)], stdout=subprocess.PIPE, text=True)
    try:
        assert worker.stdout.readline().strip() == "served"
        # its journal belongs to a live process: nobody else replays it
        other = ExposureWriter(make_engine(url), spool_dir=spool)
        assert other.flush() and _count(url) == written + unsettled and other.recovered == 0
    finally:
        worker.kill()  # SIGKILL: no stop(), no flush, no spool
        worker.wait(10)


def test_a_killed_worker_loses_no_record_it_served(tmp_path, sqlite_url):
    """Records a worker queued but had not written when it was SIGKILLed are written by the next flush of
    any other worker (or the next to start): served = logged."""
    spool = tmp_path / "spool"
    _serve_and_die(sqlite_url, spool, written=10, queued=23)
    survivor = ExposureWriter(make_engine(sqlite_url), spool_dir=spool)
    assert survivor.flush()
    assert _count(sqlite_url) == 33  # 10 before the journal existed
    assert survivor.recovered == 23 and survivor.dropped == 0
    assert not survivor.spool_files()


def test_a_replayed_journal_writes_each_record_once(tmp_path, pg_url):
    """Records written just before the kill are still in the dead worker's journal: the replay skips them by
    request id (no duplicate, no batch rejected), and a last line cut short by the kill is skipped."""
    spool = tmp_path / "spool"
    _serve_and_die(pg_url, spool, written=5, queued=20, unsettled=8)
    [journal] = [p for p in spool.iterdir() if p.name.startswith("journal-")]
    with journal.open("a") as f:
        f.write('{"request_id": "cut-sh')
    survivor = ExposureWriter(make_engine(pg_url), spool_dir=spool)
    assert survivor.flush()
    assert _count(pg_url) == 25 and survivor.recovered == 12 and survivor.duplicates == 8
    assert survivor.dropped == 0 and not survivor.spool_files()


def test_journal_of_an_earlier_process_with_the_same_pid_is_replayed(tmp_path, sqlite_url):
    """Containers restart with the same small pids: a journal is told apart by its process's start time."""
    spool = tmp_path / "spool"
    spool.mkdir()
    (spool / f"journal-{os.getpid()}.1-1.jsonl").write_text("".join(_exposure(i).to_json() + "\n" for i in range(4)))
    writer = ExposureWriter(make_engine(sqlite_url), spool_dir=spool)
    writer.submit(_exposure(99))  # its own journal, written and deleted by the same flush
    assert writer.flush()
    assert _count(sqlite_url) == 5 and writer.recovered == 4 and not writer.spool_files()


def test_journal_is_deleted_as_it_is_written(tmp_path, sqlite_url):
    spool = tmp_path / "spool"
    writer = ExposureWriter(make_engine(sqlite_url), batch_size=3, spool_dir=spool)
    for i in range(5):
        writer.submit(_exposure(i))
    [journal] = writer.spool_files()
    assert len(journal.read_text().splitlines()) == 5
    writer.submit(_exposure(5))
    assert writer.flush() and _count(sqlite_url) == 6 and writer.spool_files() == []
    writer.submit(_exposure(6))  # a new segment
    assert len(writer.spool_files()) == 1
    writer.stop()
    assert _count(sqlite_url) == 7 and writer.spool_files() == []
