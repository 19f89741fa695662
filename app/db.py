"""Engine creation and schema management."""

import math
from pathlib import Path

from sqlalchemy import Engine, create_engine, event, inspect, text
from sqlalchemy.engine import make_url

from app import columns as c
from app.tables import COURSE_TABLES, FEED_INDEXES, feed_data, metadata, recommendation_log


def make_engine(url: str, timeout: float | None = None) -> Engine:
    """`timeout` (the service's DB_TIMEOUT_SECONDS) bounds connecting, waiting for a pooled connection and,
    on PostgreSQL, each statement and lock wait on the server; unset (training, long queries), only
    SQLite's busy wait is bounded, at 30 s."""
    kwargs: dict = {"pool_pre_ping": True}
    if url.startswith("sqlite"):
        kwargs["connect_args"] = {"check_same_thread": False, "timeout": 30 if timeout is None else timeout}
        database = make_url(url).database
        if database and database != ":memory:":
            Path(database).parent.mkdir(parents=True, exist_ok=True)  # a fresh clone has no data/ yet
    elif timeout is not None and url.startswith("postgresql"):
        ms = max(1, round(timeout * 1000))
        kwargs["connect_args"] = {
            "connect_timeout": max(1, math.ceil(timeout)),  # libpq counts whole seconds (2 at least in effect)
            "options": f"-c statement_timeout={ms} -c lock_timeout={ms}",
            # a peer that vanished without a word (no RST): unacknowledged data or silent keepalives end the
            # connection instead of leaving a thread blocked on it for the kernel's 15 minutes
            "keepalives": 1, "keepalives_idle": max(1, math.ceil(timeout)), "keepalives_interval": 1,
            "keepalives_count": 3, "tcp_user_timeout": ms,
        }
    if timeout is not None:
        kwargs["pool_timeout"] = timeout
    engine = create_engine(url, **kwargs)
    if engine.dialect.name == "sqlite":
        @event.listens_for(engine, "connect")
        def _pragmas(dbapi_conn, _record) -> None:  # WAL lets the service read while a loader writes
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA synchronous=NORMAL")
            cur.close()
            # pysqlite commits before DDL on its own; take transactions over so that a failed import
            # rolls back the tables it created too (SQLAlchemy's documented recipe)
            dbapi_conn.isolation_level = None

        @event.listens_for(engine, "begin")
        def _begin(conn) -> None:
            conn.exec_driver_sql("BEGIN")
    return engine


def masked(url: str) -> str:
    """The URL with its password hidden, for logs and pages (`postgresql://user:***@host/db`)."""
    try:
        return make_url(url).render_as_string(hide_password=True)
    except Exception:  # not a URL at all: show nothing of it rather than a secret
        return "<unparseable database URL>"


def create_course_tables(engine: Engine, with_indexes: bool = True) -> None:
    """Create the three course tables (and the feed indexes unless a bulk load follows)."""
    metadata.create_all(engine, tables=list(COURSE_TABLES))
    if with_indexes:
        create_feed_indexes(engine)


def create_feed_indexes(engine: Engine) -> None:
    with engine.begin() as conn:
        for index in FEED_INDEXES:
            index.create(conn, checkfirst=True)


def drop_feed_indexes(engine: Engine) -> None:
    existing = {ix["name"] for ix in inspect(engine).get_indexes("feed_data")}
    with engine.begin() as conn:
        for index in FEED_INDEXES:
            if index.name in existing:
                index.drop(conn)


def create_log_table(engine: Engine) -> None:
    """Create the exposure log, or add the columns that logs made by earlier versions lack."""
    metadata.create_all(engine, tables=[recommendation_log])
    existing = {col["name"] for col in inspect(engine).get_columns(recommendation_log.name)}
    missing = [col for col in recommendation_log.columns if col.name not in existing]
    if missing:
        with engine.begin() as conn:
            for col in missing:  # nullable additions only: old rows keep NULL
                conn.execute(text(f'ALTER TABLE {recommendation_log.name} ADD COLUMN "{col.name}" '
                                  f"{col.type.compile(engine.dialect)}"))


def feed_has_seq(engine: Engine) -> bool:
    """Whether feed_data carries the insertion sequence the live state follows. SQLite always does
    (its rowid); a PostgreSQL table made before the column existed needs `python -m training migrate`."""
    if engine.dialect.name == "sqlite":
        return True
    return c.SEQ in {col["name"] for col in inspect(engine).get_columns(feed_data.name)}


def add_feed_seq(engine: Engine) -> bool:
    """Add the insertion sequence to an older PostgreSQL feed_data (rewrites the table); True if added."""
    if feed_has_seq(engine):
        return False
    with engine.begin() as conn:
        conn.execute(text(f"ALTER TABLE {feed_data.name} ADD COLUMN {c.SEQ} BIGINT GENERATED BY DEFAULT AS IDENTITY"))
        conn.execute(text(f"ALTER TABLE {feed_data.name} ADD PRIMARY KEY ({c.SEQ})"))
    return True
