"""The SQL sample of views hashes (user, post) in 64-bit arithmetic: on PostgreSQL `user_id * 7919` in the
columns' own int4 overflows for user ids above ~178k (imported data), and the buckets must be the ones
training's NumPy sample computes."""

from datetime import datetime

from sqlalchemy import insert

from app import columns as c
from app.db import create_course_tables, make_engine
from app.tables import feed_data, post_text_df, user_data
from training import data

USERS = [5, 178_000, 271_229, 2_000_000_000]  # 271,229 * 7919 > 2^31; the last one near the int4 limit
POSTS = [3, 7023, 2_147_000_000]


def test_large_ids_are_sampled_by_the_int64_hash(db_url):
    engine = make_engine(db_url)
    create_course_tables(engine)
    t = datetime(2021, 12, 1, 12)
    with engine.begin() as conn:
        conn.execute(insert(user_data), [{c.USER_ID: u, "gender": 1, "age": 30, "country": "Russia", "city": "Moscow",
                                          "exp_group": 0, "os": "iOS", "source": "ads"} for u in USERS])
        conn.execute(insert(post_text_df), [{c.POST_ID: p, c.TEXT: "t", c.TOPIC: "tech"} for p in POSTS])
        conn.execute(insert(feed_data), [{c.TIMESTAMP: t, c.USER_ID: u, c.POST_ID: p, c.ACTION: c.VIEW, c.TARGET: 0}
                                         for u in USERS for p in POSTS])
    lo, hi = data.to_seconds(datetime(2021, 12, 1)), data.to_seconds(datetime(2021, 12, 2))
    with engine.connect() as conn:
        got = data.sample_views(conn, lo, hi, max_rows=6, salt=3)  # 12 views: a bucket filter applies
    keep = int(10_000 * 6 / 12)
    expected = sorted((u, p) for u in USERS for p in POSTS if (u * 7919 + p * 104_729 + 3) % 10_000 < keep)
    assert sorted(zip(got[c.USER_ID].tolist(), got[c.POST_ID].tolist(), strict=True)) == expected
    assert 0 < len(expected) < 12  # the filter keeps some and drops some: the comparison means something
    engine.dispose()
