"""Engine creation and schema management."""

from pathlib import Path

from sqlalchemy import Engine, create_engine, event, inspect
from sqlalchemy.engine import make_url

from app.tables import COURSE_TABLES, FEED_INDEXES, metadata, recommendation_log


def make_engine(url: str) -> Engine:
    kwargs: dict = {"pool_pre_ping": True}
    if url.startswith("sqlite"):
        kwargs["connect_args"] = {"check_same_thread": False, "timeout": 30}
        database = make_url(url).database
        if database and database != ":memory:":
            Path(database).parent.mkdir(parents=True, exist_ok=True)  # a fresh clone has no data/ yet
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
    metadata.create_all(engine, tables=[recommendation_log])
