"""Import the course's three tables from CSV or Parquet files: streamed in chunks, all or nothing.

Everything happens in one transaction: a bad value anywhere rolls back every table, so the database
is left exactly as it was. Errors name the file, the data row (1-based, the header not counted: CSV
line = row + 1) and the column.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
from loguru import logger
from sqlalchemy import Connection, Table, select
from tqdm import tqdm

from app import columns as c
from app.db import make_engine
from app.tables import FEED_INDEXES, feed_data, metadata, post_text_df, user_data
from training.bulk import write_frame

INT_COLUMNS = {c.USER_ID, c.POST_ID, c.GENDER, c.AGE, c.EXP_GROUP}
NULLABLE = {c.TARGET}


class ImportError_(Exception):  # noqa: N801 - the builtin ImportError means something else
    """Bad input; the message names file, row and column."""


@dataclass
class Spec:
    table: Table
    columns: tuple[str, ...]
    key: str | None  # primary key column, checked for duplicates


SPECS = {
    "users": Spec(user_data, c.USER_COLUMNS, c.USER_ID),
    "posts": Spec(post_text_df, c.POST_COLUMNS, c.POST_ID),
    "feed": Spec(feed_data, c.FEED_COLUMNS, None),
}


def _chunks(path: Path, chunk_rows: int) -> Iterator[pd.DataFrame]:
    try:
        yield from _read_chunks(path, chunk_rows)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError, OSError) as exc:
        raise ImportError_(f"{path}: unreadable: {' '.join(str(exc).split())}") from None


def _read_chunks(path: Path, chunk_rows: int) -> Iterator[pd.DataFrame]:
    name = path.name.lower()
    if name.endswith(".parquet"):
        for batch in pq.ParquetFile(path).iter_batches(batch_size=chunk_rows):
            yield batch.to_pandas()
    elif name.endswith((".csv", ".csv.gz")):
        # strings first: types are checked here, with row numbers, not guessed by the reader
        yield from pd.read_csv(path, dtype=str, keep_default_na=False, chunksize=chunk_rows)
    else:
        raise ImportError_(f"{path}: unsupported file type (use .csv, .csv.gz or .parquet)")


def _fail(path: Path, row: int, column: str, reason: str) -> ImportError_:
    return ImportError_(f"{path}: row {row}, column {column!r}: {reason}")


def _missing(values: pd.Series) -> np.ndarray:
    return (values.isna() | (values.astype(str).str.strip() == "")).to_numpy()


def _check_columns(path: Path, frame: pd.DataFrame, spec: Spec) -> None:
    got, want = list(frame.columns), list(spec.columns)
    missing = [col for col in want if col not in got]
    extra = [col for col in got if col not in want]
    if missing:
        raise ImportError_(f"{path}: row 0 (header), column {missing[0]!r}: missing column "
                           f"(expected {', '.join(want)})")
    if extra:
        raise ImportError_(f"{path}: row 0 (header), column {extra[0]!r}: unexpected column "
                           f"(expected {', '.join(want)})")


def _typed(path: Path, frame: pd.DataFrame, spec: Spec, first_row: int) -> pd.DataFrame:
    """Convert and validate one chunk; `first_row` is the data row number of its first line."""
    out = {}
    for col in spec.columns:
        values = frame[col]
        empty = _missing(values)
        if col not in NULLABLE and empty.any():
            raise _fail(path, first_row + int(np.argmax(empty)), col, "empty value")
        if col in INT_COLUMNS or col == c.TARGET:
            num = pd.to_numeric(values.where(~empty), errors="coerce")
            bad = (num.isna().to_numpy() & ~empty) | (num.notna().to_numpy() & (num.fillna(0) % 1 != 0).to_numpy())
            if bad.any():
                i = int(np.argmax(bad))
                raise _fail(path, first_row + i, col, f"{values.iloc[i]!r} is not an integer")
            out[col] = num.astype("Int64")
        elif col == c.TIMESTAMP:
            ts = pd.to_datetime(values.where(~empty), errors="coerce", utc=True, format="ISO8601") \
                if not pd.api.types.is_datetime64_any_dtype(values) else values
            if getattr(ts.dt, "tz", None) is not None:
                ts = ts.dt.tz_convert("UTC").dt.tz_localize(None)
            bad = ts.isna().to_numpy() & ~empty
            if bad.any():
                i = int(np.argmax(bad))
                raise _fail(path, first_row + i, col, f"{values.iloc[i]!r} is not an ISO 8601 timestamp")
            out[col] = ts.astype("datetime64[us]")
        else:
            out[col] = values.astype(str)
    typed = pd.DataFrame(out)
    if spec is SPECS["feed"]:
        _check_feed_values(path, typed, first_row)
    if spec is SPECS["posts"]:
        # the topic is a column of the models' vocabulary: an unknown one would silently index the wrong
        # feature columns (code -1)
        unknown = ~typed[c.TOPIC].isin(c.TOPICS).to_numpy()
        if unknown.any():
            i = int(np.argmax(unknown))
            raise _fail(path, first_row + i, c.TOPIC, f"{typed[c.TOPIC].iloc[i]!r} is not one of {', '.join(c.TOPICS)}")
    return typed


def _check_feed_values(path: Path, feed: pd.DataFrame, first_row: int) -> None:
    action, target = feed[c.ACTION], feed[c.TARGET]
    unknown = ~action.isin(c.ACTIONS).to_numpy()
    if unknown.any():
        i = int(np.argmax(unknown))
        raise _fail(path, first_row + i, c.ACTION, f"{action.iloc[i]!r} is not one of {', '.join(c.ACTIONS)}")
    is_view = (action == c.VIEW).to_numpy()
    bad_view = is_view & ~target.isin([0, 1]).fillna(False).to_numpy()
    bad_like = ~is_view & target.notna().to_numpy()
    for bad, reason in ((bad_view, "a view needs target 0 or 1"), (bad_like, "a like must have an empty target")):
        if bad.any():
            i = int(np.argmax(bad))
            raise _fail(path, first_row + i, c.TARGET, f"{target.iloc[i]} contradicts action: {reason}")


def _existing_ids(conn: Connection, table: Table, column: str) -> np.ndarray:
    return np.array([r[0] for r in conn.execute(select(table.c[column]))], dtype=np.int64)


def _load_keyed(conn: Connection, path: Path, spec: Spec, chunk_rows: int) -> np.ndarray:
    """Load users or posts; return every id now in the table."""
    known = _existing_ids(conn, spec.table, spec.key)
    seen = set(known.tolist())
    first = 1
    for chunk in tqdm(_chunks(path, chunk_rows), desc=spec.table.name, unit="chunk", disable=None):
        _check_columns(path, chunk, spec)
        typed = _typed(path, chunk, spec, first)
        for i, key in enumerate(typed[spec.key].astype(np.int64).tolist()):
            if key in seen:
                raise _fail(path, first + i, spec.key, f"duplicate key {key}")
            seen.add(key)
        write_frame(conn, spec.table, typed)
        first += len(chunk)
    if first == 1:
        _check_columns(path, pd.read_csv(path, nrows=0) if path.suffix != ".parquet"
                       else pq.read_schema(path).empty_table().to_pandas(), spec)
    return np.fromiter(seen, dtype=np.int64)


def _load_feed(conn: Connection, path: Path, users: np.ndarray, posts: np.ndarray, chunk_rows: int) -> int:
    spec, first = SPECS["feed"], 1
    for chunk in tqdm(_chunks(path, chunk_rows), desc="feed_data", unit="chunk", disable=None):
        _check_columns(path, chunk, spec)
        typed = _typed(path, chunk, spec, first)
        for col, known in ((c.USER_ID, users), (c.POST_ID, posts)):
            unknown = ~np.isin(typed[col].to_numpy(np.int64), known)
            if unknown.any():
                i = int(np.argmax(unknown))
                raise _fail(path, first + i, col, f"{typed[col].iloc[i]} is not a known {col.split('_')[0]}")
        write_frame(conn, spec.table, typed)
        first += len(chunk)
    return first - 1


def import_files(db_url: str, users: Path, posts: Path, feed: Path, chunk_rows: int = 500_000) -> dict[str, int]:
    """Append the three files to the database in one transaction; returns rows added per table."""
    for path in (users, posts, feed):
        if not Path(path).is_file():
            raise ImportError_(f"{path}: no such file")
    engine = make_engine(db_url)
    try:
        with engine.begin() as conn:  # DDL included: a failed first import leaves no empty tables behind
            metadata.create_all(conn, tables=list(s.table for s in SPECS.values()))
            before = {s.table.name: len(_existing_ids(conn, s.table, s.key)) for s in SPECS.values() if s.key}
            user_ids = _load_keyed(conn, Path(users), SPECS["users"], chunk_rows)
            post_ids = _load_keyed(conn, Path(posts), SPECS["posts"], chunk_rows)
            n_feed = _load_feed(conn, Path(feed), user_ids, post_ids, chunk_rows)
            for index in FEED_INDEXES:
                index.create(conn, checkfirst=True)
    finally:
        engine.dispose()
    counts = {"user_data": len(user_ids) - before["user_data"], "post_text_df": len(post_ids) - before["post_text_df"],
              "feed_data": n_feed}
    logger.info("imported {}", counts)
    return counts
