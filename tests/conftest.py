"""Shared fixtures: a fresh SQLite file or a fresh PostgreSQL database per test.

PostgreSQL tests talk to a real server (PG_ADMIN_URL, default the local trust-auth one). Without a
server they skip with the reason; under CI=true a missing server fails instead of skipping.
"""

import os
import uuid
from collections.abc import Iterator

import pytest
from sqlalchemy import create_engine, text

PG_ADMIN_URL = os.environ.get("PG_ADMIN_URL", "postgresql+psycopg2://postgres@127.0.0.1:5432/postgres")


def _pg_available() -> str | None:
    try:
        eng = create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")
        with eng.connect() as conn:
            conn.execute(text("SELECT 1"))
        eng.dispose()
        return None
    except Exception as exc:  # any connection problem means "no server here"
        return f"PostgreSQL not reachable at {PG_ADMIN_URL}: {exc.__class__.__name__}"


@pytest.fixture(scope="session")
def pg_admin_url() -> str:
    reason = _pg_available()
    if reason:
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(f"CI=true requires PostgreSQL: {reason}")
        pytest.skip(reason)
    return PG_ADMIN_URL


@pytest.fixture
def pg_url(pg_admin_url: str) -> Iterator[str]:
    name = f"t_{uuid.uuid4().hex[:12]}"
    admin = create_engine(pg_admin_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    url = pg_admin_url.rsplit("/", 1)[0] + f"/{name}"
    try:
        yield url
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


@pytest.fixture
def sqlite_url(tmp_path) -> str:
    return f"sqlite:///{tmp_path / 'test.db'}"


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request) -> str:
    """Runs a test once on SQLite and once on PostgreSQL."""
    if request.param == "sqlite":
        return request.getfixturevalue("sqlite_url")
    return request.getfixturevalue("pg_url")


@pytest.fixture(scope="session")
def trained(tmp_path_factory):
    """A tiny demo world in SQLite with models trained on it (fast settings, hashing text encoder)."""
    from training.train import TrainConfig, train
    from training.world.generate import generate_world

    d = tmp_path_factory.mktemp("trained")
    url = f"sqlite:///{d / 'world.db'}"
    generate_world(url, scale=0.002, seed=7, world_path=d / "world.npz")
    config = TrainConfig(max_train_rows=30_000, max_val_rows=10_000, iterations=40, threads=1)
    version_dir = train(url, d / "models", d / "cache", "hashing", config)
    return {"db_url": url, "model_dir": d / "models", "version_dir": version_dir, "world": d / "world.npz",
            "cache": d / "cache"}


def copy_world(sqlite_url: str, target_url: str) -> None:
    """The three course tables of an SQLite world, copied into another database with the same insertion
    sequence, so that artifacts trained on the SQLite world can follow the copy."""
    import pandas as pd

    from app import columns as c
    from app.db import create_course_tables, make_engine
    from app.tables import feed_data, post_text_df, user_data
    from training.bulk import write_frame

    src, dst = make_engine(sqlite_url), make_engine(target_url)
    create_course_tables(dst)
    with src.connect() as conn:
        users = pd.read_sql_table(user_data.name, conn)
        posts = pd.read_sql_table(post_text_df.name, conn)
        feed = pd.read_sql_query(text(f"SELECT rowid AS {c.SEQ}, * FROM {feed_data.name}"), conn)
    feed = feed.loc[:, ~feed.columns.duplicated()]
    feed[c.TIMESTAMP] = pd.to_datetime(feed[c.TIMESTAMP])
    feed[c.TARGET] = feed[c.TARGET].astype("Int64")
    with dst.begin() as conn:
        write_frame(conn, user_data, users)
        write_frame(conn, post_text_df, posts)
        write_frame(conn, feed_data, feed)
        if dst.dialect.name == "postgresql":  # the identity continues after the copied numbers
            conn.execute(text(f"SELECT setval(pg_get_serial_sequence('{feed_data.name}', '{c.SEQ}'), "
                              f"(SELECT MAX({c.SEQ}) FROM {feed_data.name}))"))
    src.dispose()
    dst.dispose()


@pytest.fixture
def world_db(request, trained, tmp_path) -> str:
    """A fresh copy of the trained world's database, on SQLite or PostgreSQL (parametrize indirectly)."""
    import shutil

    if getattr(request, "param", "sqlite") == "sqlite":
        shutil.copy(trained["db_url"].removeprefix("sqlite:///"), tmp_path / "world.db")
        return f"sqlite:///{tmp_path / 'world.db'}"
    url = request.getfixturevalue("pg_url")
    copy_world(trained["db_url"], url)
    return url
