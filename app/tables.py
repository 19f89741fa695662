"""Table definitions: the course's three tables plus the exposure log, identical on SQLite and PostgreSQL."""

from sqlalchemy import (
    BigInteger,
    Column,
    DateTime,
    Identity,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
)

from app import columns as c

metadata = MetaData()

user_data = Table(
    "user_data", metadata,
    Column(c.USER_ID, Integer, primary_key=True, autoincrement=False),
    Column(c.GENDER, Integer, nullable=False),
    Column(c.AGE, Integer, nullable=False),
    Column(c.COUNTRY, Text, nullable=False),
    Column(c.CITY, Text, nullable=False),
    Column(c.EXP_GROUP, Integer, nullable=False),
    Column(c.OS, Text, nullable=False),
    Column(c.SOURCE, Text, nullable=False),
)

post_text_df = Table(
    "post_text_df", metadata,
    Column(c.POST_ID, Integer, primary_key=True, autoincrement=False),
    Column(c.TEXT, Text, nullable=False),
    Column(c.TOPIC, Text, nullable=False),
)

feed_data = Table(
    "feed_data", metadata,
    # Insertion order, which the live state follows (the timestamp says when an event happened, not
    # when it arrived). On SQLite an INTEGER PRIMARY KEY is the rowid, which databases made before
    # this column existed have too; on PostgreSQL an identity column.
    Column(c.SEQ, BigInteger().with_variant(Integer, "sqlite"), Identity(), primary_key=True),
    Column(c.TIMESTAMP, DateTime, nullable=False),
    Column(c.USER_ID, Integer, nullable=False),
    Column(c.POST_ID, Integer, nullable=False),
    Column(c.ACTION, Text, nullable=False),
    Column(c.TARGET, Integer, nullable=True),
)

# Created after bulk loads (building them row by row is several times slower).
FEED_INDEXES = (
    Index("ix_feed_user_time", feed_data.c.user_id, feed_data.c.timestamp),
    Index("ix_feed_post", feed_data.c.post_id),
    Index("ix_feed_time", feed_data.c.timestamp),
)

recommendation_log = Table(
    "recommendation_log", metadata,
    Column("request_id", String(36), primary_key=True),
    Column(c.USER_ID, BigInteger, nullable=False),
    Column("requested_at", DateTime, nullable=False),
    Column("served_at", DateTime, nullable=False),
    Column(c.EXP_GROUP, Text, nullable=False),
    Column("model_name", Text, nullable=False),
    Column("model_version", Text, nullable=False),
    # the moment the features describe: the requested time, or the snapshot's base cut before it
    Column("features_as_of", DateTime, nullable=True),
    Column("post_ids", Text, nullable=False),  # space-separated, best first: portable across backends
    Index("ix_reclog_user_time", "user_id", "requested_at"),
)

COURSE_TABLES = (user_data, post_text_df, feed_data)
