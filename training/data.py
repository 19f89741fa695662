"""Data access: aggregates computed by the database, never the whole feed in Python.

Everything here is SQLAlchemy Core and runs unchanged on PostgreSQL and SQLite. Times come back as
int64 seconds since the epoch (UTC), computed in SQL to avoid building millions of datetime objects.
"""

from __future__ import annotations

from datetime import UTC, datetime

import numpy as np
import pandas as pd
from sqlalchemy import BigInteger, Connection, and_, cast, func, literal, select
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.sql.expression import ColumnElement, FunctionElement

from app import columns as c
from app.tables import feed_data, post_text_df, user_data

FETCH_ROWS = 200_000


class epoch(FunctionElement):
    """Seconds since the Unix epoch of a naive-UTC timestamp column, as an integer."""

    type = BigInteger()
    inherit_cache = True


@compiles(epoch, "postgresql")
def _epoch_pg(element, compiler, **kw) -> str:
    # floor, as SQLite's strftime('%s') truncates: a cast would round fractional seconds up
    return f"CAST(FLOOR(EXTRACT(EPOCH FROM {compiler.process(element.clauses, **kw)})) AS BIGINT)"


@compiles(epoch, "sqlite")
def _epoch_sqlite(element, compiler, **kw) -> str:
    return f"CAST(strftime('%s', {compiler.process(element.clauses, **kw)}) AS INTEGER)"


def to_datetime(seconds: int) -> datetime:
    """Naive UTC datetime for SQL parameters (the feed stores naive UTC timestamps)."""
    return datetime.fromtimestamp(int(seconds), tz=UTC).replace(tzinfo=None)


def to_seconds(moment: datetime) -> int:
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return int(moment.timestamp())


def _frame(conn: Connection, query, columns: list[str]) -> pd.DataFrame:
    result = conn.execution_options(stream_results=True, yield_per=FETCH_ROWS).execute(query)
    parts = [pd.DataFrame(rows, columns=columns) for rows in result.partitions(FETCH_ROWS)]
    return pd.concat(parts, ignore_index=True) if parts else pd.DataFrame(columns=columns)


def _before(as_of: int) -> ColumnElement[bool]:
    return feed_data.c.timestamp < to_datetime(as_of)


def _view() -> ColumnElement[bool]:
    return feed_data.c.action == c.VIEW


# ------------------------------------------------------------------ whole small tables
def read_users(conn: Connection) -> pd.DataFrame:
    return _frame(conn, select(*user_data.c).order_by(user_data.c.user_id), list(c.USER_COLUMNS))


def read_posts(conn: Connection) -> pd.DataFrame:
    return _frame(conn, select(*post_text_df.c).order_by(post_text_df.c.post_id), list(c.POST_COLUMNS))


def data_range(conn: Connection) -> tuple[int, int]:
    """First event second and the second after the last event."""
    # min/max of the bare column use the time index; converting every row first would scan the feed
    lo, hi = conn.execute(select(func.min(feed_data.c.timestamp), func.max(feed_data.c.timestamp))).one()
    if lo is None:
        raise ValueError("feed_data is empty: generate a world or import data first")
    return to_seconds(lo), to_seconds(hi) + 1


# ------------------------------------------------------------------ aggregates before a cut-off
def user_activity(conn: Connection, as_of: int) -> pd.DataFrame:
    """Per user: views, liked views, first and last view, active days (views before as_of)."""
    ts = epoch(feed_data.c.timestamp)
    q = (select(feed_data.c.user_id, func.count().label("views"),
                func.sum(feed_data.c.target).label("likes"),
                func.min(ts).label("first_view"), func.max(ts).label("last_view"),
                func.count(func.distinct(func.date(feed_data.c.timestamp))).label("active_days"))
         .where(_view(), _before(as_of)).group_by(feed_data.c.user_id))
    return _frame(conn, q, [c.USER_ID, "views", "likes", "first_view", "last_view", "active_days"])


def user_topic_activity(conn: Connection, as_of: int) -> pd.DataFrame:
    """Per (user, topic): views and liked views before as_of."""
    src = feed_data.join(post_text_df, feed_data.c.post_id == post_text_df.c.post_id)
    q = (select(feed_data.c.user_id, post_text_df.c.topic, func.count().label("views"),
                func.sum(feed_data.c.target).label("likes"))
         .select_from(src).where(_view(), _before(as_of))
         .group_by(feed_data.c.user_id, post_text_df.c.topic))
    return _frame(conn, q, [c.USER_ID, c.TOPIC, "views", "likes"])


def post_activity(conn: Connection, as_of: int) -> pd.DataFrame:
    """Per post: views and liked views before as_of."""
    q = (select(feed_data.c.post_id, func.count().label("views"), func.sum(feed_data.c.target).label("likes"))
         .where(_view(), _before(as_of)).group_by(feed_data.c.post_id))
    return _frame(conn, q, [c.POST_ID, "views", "likes"])


def city_activity(conn: Connection, as_of: int) -> pd.DataFrame:
    """Per city: views and liked views before as_of."""
    src = feed_data.join(user_data, feed_data.c.user_id == user_data.c.user_id)
    q = (select(user_data.c.city, func.count().label("views"), func.sum(feed_data.c.target).label("likes"))
         .select_from(src).where(_view(), _before(as_of)).group_by(user_data.c.city))
    return _frame(conn, q, [c.CITY, "views", "likes"])


def likes(conn: Connection) -> pd.DataFrame:
    """All like rows (user, post, time), ordered by user and time: ~11% of the feed."""
    ts = epoch(feed_data.c.timestamp)
    q = (select(feed_data.c.user_id, feed_data.c.post_id, ts.label("ts"))
         .where(feed_data.c.action == c.LIKE).order_by(feed_data.c.user_id, ts, feed_data.c.post_id))
    return _frame(conn, q, [c.USER_ID, c.POST_ID, "ts"])


# ------------------------------------------------------------------ samples of views
def _hash_bucket(buckets: int) -> ColumnElement[int]:
    # a portable deterministic pseudo-random bucket per (user, post): SQL has no shared RNG. In 64 bits, as
    # training's NumPy sample: PostgreSQL computes int4 columns in int4, which overflows above user ~178k
    user, post = cast(feed_data.c.user_id, BigInteger), cast(feed_data.c.post_id, BigInteger)
    return (user * 7919 + post * 104_729) % buckets


def count_views(conn: Connection, lo: int, hi: int) -> int:
    q = select(func.count()).where(_view(), feed_data.c.timestamp >= to_datetime(lo),
                                   feed_data.c.timestamp < to_datetime(hi))
    return int(conn.execute(q).scalar_one())


def sample_views(conn: Connection, lo: int, hi: int, max_rows: int, salt: int = 0) -> pd.DataFrame:
    """About `max_rows` views with lo <= time < hi, chosen by a hash of (user, post), as
    (user_id, post_id, ts, target). The database filters; Python receives only the sample."""
    total = count_views(conn, lo, hi)
    buckets = 10_000
    keep = buckets if total <= max_rows else max(1, int(buckets * max_rows / total))
    bucket = (_hash_bucket(buckets) + salt) % buckets
    ts = epoch(feed_data.c.timestamp)
    q = (select(feed_data.c.user_id, feed_data.c.post_id, ts.label("ts"), feed_data.c.target)
         .where(_view(), feed_data.c.timestamp >= to_datetime(lo), feed_data.c.timestamp < to_datetime(hi),
                bucket < literal(keep))
         .order_by(feed_data.c.user_id, ts, feed_data.c.post_id))
    return _frame(conn, q, [c.USER_ID, c.POST_ID, "ts", c.TARGET])


def _of_users(conn: Connection, user_ids: np.ndarray, lo: int, hi: int, which: ColumnElement[bool],
              extra: tuple = ()) -> pd.DataFrame:
    """The rows `which` selects of the given users with lo <= time < hi (user_id, post_id, ts and the
    `extra` columns), ordered by user, time and post."""
    ts = epoch(feed_data.c.timestamp)
    columns = [c.USER_ID, c.POST_ID, "ts", *(col.name for col in extra)]
    parts = []
    ids = np.unique(np.asarray(user_ids, dtype=np.int64)).tolist()
    for i in range(0, len(ids), 500):  # bounded IN lists
        q = (select(feed_data.c.user_id, feed_data.c.post_id, ts.label("ts"), *extra)
             .where(which, feed_data.c.user_id.in_(ids[i:i + 500]),
                    and_(feed_data.c.timestamp >= to_datetime(lo), feed_data.c.timestamp < to_datetime(hi))))
        parts.append(_frame(conn, q, columns))
    out = pd.concat(parts, ignore_index=True) if parts else pd.DataFrame(columns=columns)
    return out.sort_values([c.USER_ID, "ts", c.POST_ID], kind="stable").reset_index(drop=True)


def likes_of_users(conn: Connection, user_ids: np.ndarray, lo: int, hi: int) -> pd.DataFrame:
    """The likes of the given users with lo <= time < hi (user_id, post_id, ts), ordered by user and time:
    what an evaluation's future likes need, instead of every like in the database (`likes`)."""
    return _of_users(conn, user_ids, lo, hi, feed_data.c.action == c.LIKE)


def views_of_users(conn: Connection, user_ids: np.ndarray, lo: int, hi: int) -> pd.DataFrame:
    """All views of the given users with lo <= time < hi (user_id, post_id, ts, target)."""
    return _of_users(conn, user_ids, lo, hi, _view(), (feed_data.c.target,))


__all__ = [
    "data_range", "user_activity", "user_topic_activity", "post_activity", "city_activity",
    "likes", "likes_of_users", "sample_views", "views_of_users", "count_views", "read_users", "read_posts",
]
