"""SQL of the data endpoints (SQLAlchemy Core; the same on SQLite and PostgreSQL)."""

from sqlalchemy import Connection, select

from app import columns as c
from app.tables import feed_data, post_text_df, user_data

INT32_MAX = 2**31 - 1  # the id columns are 32-bit: larger ids cannot exist, and PostgreSQL rejects them


def read_user(conn: Connection, user_id: int) -> dict | None:
    if user_id > INT32_MAX:
        return None
    row = conn.execute(select(*user_data.c).where(user_data.c.user_id == user_id)).mappings().first()
    return dict(row) if row else None


def read_post(conn: Connection, post_id: int) -> dict | None:
    if post_id > INT32_MAX:
        return None
    row = conn.execute(select(*post_text_df.c).where(post_text_df.c.post_id == post_id)).mappings().first()
    return {"id": row[c.POST_ID], c.TEXT: row[c.TEXT], c.TOPIC: row[c.TOPIC]} if row else None


def read_feed(conn: Connection, *, user_id: int | None = None, post_id: int | None = None, limit: int) -> list[dict]:
    """Latest actions first; ties in time ordered by the other id, then action, for a stable answer."""
    q = select(feed_data.c.user_id, feed_data.c.post_id, feed_data.c.action,
               feed_data.c.timestamp.label("time"), feed_data.c.target)
    if user_id is not None:
        q = q.where(feed_data.c.user_id == user_id).order_by(
            feed_data.c.timestamp.desc(), feed_data.c.post_id, feed_data.c.action)
    else:
        q = q.where(feed_data.c.post_id == post_id).order_by(
            feed_data.c.timestamp.desc(), feed_data.c.user_id, feed_data.c.action)
    return [dict(r) for r in conn.execute(q.limit(limit)).mappings()]


def ping(conn: Connection) -> None:
    conn.execute(select(1))
