"""Importer: good files round trip; each kind of bad input is named precisely and changes nothing."""

from datetime import datetime

import pandas as pd
import pytest
from sqlalchemy import func, select
from typer.testing import CliRunner

from app import columns as c
from app.db import make_engine
from app.tables import feed_data, post_text_df, user_data
from training.cli import app as cli
from training.importer import ImportError_, import_files

USERS = pd.DataFrame({c.USER_ID: [1, 2, 3], c.GENDER: [1, 0, 1], c.AGE: [20, 31, 45],
                      c.COUNTRY: ["Russia", "Turkey", "Russia"], c.CITY: ["Moscow", "Ankara", "Omsk"],
                      c.EXP_GROUP: [0, 3, 4], c.OS: ["iOS", "Android", "iOS"], c.SOURCE: ["ads", "organic", "ads"]})
POSTS = pd.DataFrame({c.POST_ID: [10, 11], c.TEXT: ["First, with a comma", "Второй"], c.TOPIC: ["tech", "movie"]})
FEED = pd.DataFrame({
    c.TIMESTAMP: ["2021-10-01 06:00:00", "2021-10-01 06:00:30", "2021-10-01 07:00:00", "2021-10-02 08:00:00",
                  "2021-10-02 08:01:00", "2021-10-03 09:00:00", "2021-10-03 09:00:05"],
    c.USER_ID: [1, 1, 2, 3, 3, 1, 2],
    c.POST_ID: [10, 10, 11, 10, 11, 11, 10],
    c.ACTION: ["view", "like", "view", "view", "view", "view", "view"],
    c.TARGET: [1, None, 0, 0, 0, 0, 1],
})


def _write(tmp_path, name, frame, fmt="csv"):
    path = tmp_path / f"{name}.{fmt}"
    if fmt == "csv":
        frame.to_csv(path, index=False)
    else:
        frame.to_parquet(path, index=False)
    return path


def _files(tmp_path, users=USERS, posts=POSTS, feed=FEED, fmt="csv"):
    return {"users": _write(tmp_path, "users", users, fmt), "posts": _write(tmp_path, "posts", posts, fmt),
            "feed": _write(tmp_path, "feed", feed, fmt)}


def _snapshot(url):
    engine = make_engine(url)
    with engine.connect() as conn:
        # the course's columns (feed_data's insertion sequence is the database's, not the file's)
        out = {t.name: sorted(map(tuple, conn.execute(select(*(col for col in t.c if col.name != c.SEQ))).all()),
                              key=repr)
               for t in (user_data, post_text_df, feed_data)}
    engine.dispose()
    return out


@pytest.mark.parametrize("fmt", ["csv", "parquet"])
def test_round_trip(db_url, tmp_path, fmt):
    feed = FEED.assign(**{c.TIMESTAMP: pd.to_datetime(FEED[c.TIMESTAMP])}) if fmt == "parquet" else FEED
    counts = import_files(db_url, **_files(tmp_path, feed=feed, fmt=fmt), chunk_rows=3)  # several chunks
    assert counts == {"user_data": 3, "post_text_df": 2, "feed_data": 7}
    snap = _snapshot(db_url)
    assert (2, 0, 31, "Turkey", "Ankara", 3, "Android", "organic") in snap["user_data"]
    assert (11, "Второй", "movie") in snap["post_text_df"]
    assert (datetime(2021, 10, 1, 6, 0, 30), 1, 10, "like", None) in snap["feed_data"]
    engine = make_engine(db_url)
    with engine.connect() as conn:  # timestamps compare correctly through SQLAlchemy
        n = conn.execute(select(func.count()).where(feed_data.c.timestamp >= datetime(2021, 10, 2, 8))).scalar()
    engine.dispose()
    assert n == 4


BAD_CASES = [
    ("users", USERS.drop(columns=[c.CITY]), "users.csv: row 0 (header), column 'city': missing column"),
    ("posts", POSTS.assign(extra=1), "posts.csv: row 0 (header), column 'extra': unexpected column"),
    ("users", USERS.astype({c.AGE: object}).assign(**{c.AGE: [20, "abc", 3]}), "row 2, column 'age': 'abc' is not"),
    ("feed", FEED.assign(**{c.TIMESTAMP: FEED[c.TIMESTAMP].where(FEED.index != 4, "yesterday")}),
     "row 5, column 'timestamp': 'yesterday' is not an ISO 8601"),
    ("feed", FEED.assign(**{c.ACTION: FEED[c.ACTION].where(FEED.index != 2, "share")}),
     "row 3, column 'action': 'share' is not one of view, like"),
    ("feed", FEED.assign(**{c.USER_ID: FEED[c.USER_ID].where(FEED.index != 6, 99)}),
     "row 7, column 'user_id': 99 is not a known user"),
    ("feed", FEED.assign(**{c.POST_ID: FEED[c.POST_ID].where(FEED.index != 0, 77)}),
     "row 1, column 'post_id': 77 is not a known post"),
    ("users", pd.concat([USERS, USERS.iloc[[1]]]), "row 4, column 'user_id': duplicate key 2"),
    ("feed", FEED.assign(**{c.TARGET: [1, 1, 0, 0, 0, 0, 1]}),
     "row 2, column 'target': 1 contradicts action: a like must have an empty target"),
    ("feed", FEED.assign(**{c.TARGET: [1, None, 0, 2, 0, 0, 1]}),
     "row 4, column 'target': 2 contradicts action: a view needs target 0 or 1"),
    ("feed", FEED.assign(**{c.TARGET: [None, None, 0, 0, 0, 0, 1]}), "row 1, column 'target'"),
    ("posts", POSTS.assign(**{c.TOPIC: ["tech", ""]}), "row 2, column 'topic': empty value"),
    ("posts", POSTS.assign(**{c.TOPIC: ["tech", "cooking"]}),
     "row 2, column 'topic': 'cooking' is not one of business, covid, entertainment, movie, politics, sport, tech"),
    ("posts", POSTS.assign(**{c.TOPIC: ["Tech", "movie"]}), "row 1, column 'topic': 'Tech' is not one of"),
]


@pytest.mark.parametrize(("which", "frame", "message"), BAD_CASES)
def test_bad_input_is_named_and_changes_nothing(db_url, tmp_path, which, frame, message):
    good = tmp_path / "good"
    good.mkdir()
    # existing rows with other ids, so that only the bad value can fail the import
    import_files(db_url, **_files(good, users=USERS.iloc[:1].assign(**{c.USER_ID: 100}),
                                  posts=POSTS.iloc[:1].assign(**{c.POST_ID: 1000}),
                                  feed=FEED.iloc[:1].assign(**{c.USER_ID: 100, c.POST_ID: 1000})))
    before = _snapshot(db_url)
    bad = tmp_path / "bad"
    bad.mkdir()
    files = _files(bad, **{which: frame})
    with pytest.raises(ImportError_) as err:
        import_files(db_url, **files, chunk_rows=2)
    assert message in str(err.value)
    assert str(files[which]) in str(err.value)
    assert _snapshot(db_url) == before


def test_duplicate_against_database(db_url, tmp_path):
    import_files(db_url, **_files(tmp_path))
    before = _snapshot(db_url)
    again = tmp_path / "again"
    again.mkdir()
    with pytest.raises(ImportError_, match="row 1, column 'user_id': duplicate key 1"):
        import_files(db_url, **_files(again))
    assert _snapshot(db_url) == before


def test_failed_first_import_leaves_no_tables(sqlite_url, tmp_path):
    from sqlalchemy import inspect

    with pytest.raises(ImportError_):
        import_files(sqlite_url, **_files(tmp_path, posts=POSTS.assign(extra=1)))
    assert inspect(make_engine(sqlite_url)).get_table_names() == []


def test_cli_exit_codes(sqlite_url, tmp_path):
    runner = CliRunner()
    files = _files(tmp_path)
    args = ["import", "--users", str(files["users"]), "--posts", str(files["posts"]), "--feed", str(files["feed"]),
            "--db", sqlite_url]
    ok = runner.invoke(cli, args)
    assert ok.exit_code == 0 and "feed_data=7" in ok.output
    bad = runner.invoke(cli, args)  # the same ids again
    assert bad.exit_code == 1 and "duplicate key" in bad.output
    missing = runner.invoke(cli, [*args[:-3], str(tmp_path / "nope.csv"), "--db", sqlite_url])
    assert missing.exit_code == 1 and "no such file" in missing.output
