"""SQL of the data endpoints (SQLAlchemy Core; the same on SQLite and PostgreSQL)."""

from datetime import datetime

from sqlalchemy import Connection, func, select

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


def read_actions_before(conn: Connection, user_id: int, before: datetime, action: str, limit: int) -> list[dict]:
    """A user's latest actions of one kind strictly before a moment, latest first: what the user had
    done when a request at that moment was answered (the state counts the same events)."""
    if user_id > INT32_MAX:
        return []
    q = (select(feed_data.c.post_id, feed_data.c.timestamp.label("time"))
         .where(feed_data.c.user_id == user_id, feed_data.c.action == action, feed_data.c.timestamp < before)
         .order_by(feed_data.c.timestamp.desc(), feed_data.c.post_id).limit(limit))
    return [dict(r) for r in conn.execute(q).mappings()]


def count_topics_before(conn: Connection, user_id: int, before: datetime) -> dict[str, dict[str, int]]:
    """{topic: {action: count}} of a user's actions strictly before a moment."""
    if user_id > INT32_MAX:
        return {}
    q = (select(post_text_df.c.topic, feed_data.c.action, func.count())
         .select_from(feed_data.join(post_text_df, feed_data.c.post_id == post_text_df.c.post_id))
         .where(feed_data.c.user_id == user_id, feed_data.c.timestamp < before)
         .group_by(post_text_df.c.topic, feed_data.c.action))
    out: dict[str, dict[str, int]] = {}
    for topic, action, n in conn.execute(q):
        out.setdefault(topic, {})[action] = int(n)
    return out
