"""No leakage: a feature table for cut-off t does not change when events after t are added."""

import shutil
from dataclasses import fields

import numpy as np
import pandas as pd
import pytest
from sqlalchemy import insert

from app import columns as c
from app.db import make_engine
from app.features import FeatureTables, assemble
from app.tables import feed_data
from training import data
from training.embeddings import embed_texts
from training.features import build_tables, post_static


def _tables(url: str, as_of: int, cache) -> FeatureTables:
    engine = make_engine(url)
    with engine.connect() as conn:
        users, posts = data.read_users(conn), data.read_posts(conn)
        static = post_static(posts, embed_texts(posts[c.TEXT].tolist(), "hashing", cache))
        tables = build_tables(conn, as_of, users, static, data.likes(conn))
    engine.dispose()
    return tables


def _add_future_events(url: str, as_of: int, users: np.ndarray, posts: np.ndarray) -> None:
    engine = make_engine(url)
    rows = []
    for i, (u, p) in enumerate(zip(users, posts, strict=True)):
        ts = data.to_datetime(as_of + 60 * i)  # the first one exactly at the cut-off
        rows.append({c.TIMESTAMP: ts, c.USER_ID: int(u), c.POST_ID: int(p), c.ACTION: c.VIEW, c.TARGET: 1})
        rows.append({c.TIMESTAMP: ts, c.USER_ID: int(u), c.POST_ID: int(p), c.ACTION: c.LIKE, c.TARGET: None})
    with engine.begin() as conn:
        conn.execute(insert(feed_data), rows)
    engine.dispose()


def test_features_ignore_events_at_or_after_the_cutoff(trained, tmp_path):
    url = f"sqlite:///{tmp_path / 'copy.db'}"
    shutil.copy(trained["db_url"].removeprefix("sqlite:///"), tmp_path / "copy.db")
    engine = make_engine(url)
    with engine.connect() as conn:
        lo, hi = data.data_range(conn)
    engine.dispose()
    as_of = lo + (hi - lo) // 2
    before = _tables(url, as_of, trained["cache"])
    rng = np.random.default_rng(0)
    users = rng.choice(before.user_ids, size=40)
    _add_future_events(url, as_of, users, rng.choice(before.post_ids, size=40))
    after = _tables(url, as_of, trained["cache"])

    like_history = {"likes_indptr", "likes_post", "likes_ts"}  # every like, any time: exclusion data
    for f in fields(FeatureTables):
        if f.name not in like_history:
            np.testing.assert_array_equal(getattr(before, f.name), getattr(after, f.name), err_msg=f.name)
    # the requests the snapshot serves see the same features
    for row in before.user_row(users[:5]):
        for text in (False, True):
            t = np.int64(as_of + 3600)
            np.testing.assert_array_equal(
                assemble(before, np.int64(row), np.arange(len(before.post_ids)), t, text),
                assemble(after, np.int64(row), np.arange(len(after.post_ids)), t, text))
    # exclusion before the cut-off is unchanged; the new likes exist from their own time on
    row = int(before.user_row(users[:1])[0])
    assert before.liked_before(row, as_of).tolist() == after.liked_before(row, as_of).tolist()
    assert len(after.liked_before(row, as_of + 1)) == len(before.liked_before(row, as_of + 1)) + 1


def test_smoothed_rates_are_hand_computable(trained):
    tables = _tables(trained["db_url"], int(pd.Timestamp("2021-11-01", tz="UTC").timestamp()), trained["cache"])
    from app.features import USER_NUM

    views = tables.user_num[:, USER_NUM.index("u_views")]
    likes = tables.user_num[:, USER_NUM.index("u_likes")]
    rate = tables.user_num[:, USER_NUM.index("u_like_rate")]
    g = likes.sum() / views.sum()
    np.testing.assert_allclose(rate, (likes + 20 * g) / (views + 20), rtol=1e-5)
    shares = tables.user_num[:, [USER_NUM.index(f"u_view_share_{t}") for t in c.TOPICS]]
    active = views > 0
    np.testing.assert_allclose(shares[active].sum(axis=1), 1.0, rtol=1e-5)
    assert np.all(tables.user_last_view[active] < tables.as_of)


@pytest.mark.parametrize("bad", [0, 10**12])
def test_missing_users_are_flagged(trained, bad):
    tables = _tables(trained["db_url"], int(pd.Timestamp("2021-11-01", tz="UTC").timestamp()), trained["cache"])
    assert tables.user_row(np.array([bad])).tolist() == [-1]
