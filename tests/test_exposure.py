"""The exposure log under a lost database: no crash, bounded buffer, drops counted, nothing lost on recovery."""

import subprocess
import sys
import uuid
from datetime import datetime

from sqlalchemy import func, select, text

from app.db import make_engine
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
