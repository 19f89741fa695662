"""Feed events in insertion order: the batches the follower applies and the history training replays.

Events are read as NumPy arrays straight from the driver — SQLite's cursor, PostgreSQL's COPY — because
building a Python object per row would cost more than everything done with the rows afterwards (about
4x on SQLite). Times come back as int64 seconds (UTC), floored as SQLite's strftime does; `kind` is
VIEW or LIKE (`app.user_state`); `target` 0 where the table holds NULL (like rows).
"""

from __future__ import annotations

import io
from dataclasses import dataclass

import numpy as np
import pandas as pd
from sqlalchemy import Connection, text

from app import columns as c
from app.tables import feed_data
from app.user_state import LIKE, VIEW

CHUNK_ROWS = 2_000_000


@dataclass(frozen=True)
class EventBatch:
    """Feed rows as arrays of ids (not state rows), in insertion order when read from the database."""

    ts: np.ndarray
    user_id: np.ndarray
    post_id: np.ndarray
    kind: np.ndarray
    target: np.ndarray
    seq: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.ts)

    def take(self, mask: np.ndarray) -> EventBatch:
        return EventBatch(self.ts[mask], self.user_id[mask], self.post_id[mask], self.kind[mask],
                          self.target[mask], None if self.seq is None else self.seq[mask])

    @staticmethod
    def concat(batches: list[EventBatch]) -> EventBatch:
        def cat(name: str) -> np.ndarray | None:
            parts = [getattr(b, name) for b in batches]
            return None if any(p is None for p in parts) else np.concatenate(parts)

        if not batches:
            return EventBatch.empty()
        return EventBatch(*(cat(n) for n in ("ts", "user_id", "post_id", "kind", "target", "seq")))

    @staticmethod
    def empty() -> EventBatch:
        z = np.empty(0, np.int64)
        return EventBatch(z, z, z, np.empty(0, np.int8), np.empty(0, np.int8), z)

    @staticmethod
    def from_frame(frame: pd.DataFrame) -> EventBatch:
        """Columns user_id, post_id, ts (int seconds), action, target (NaN on likes)."""
        return EventBatch(frame["ts"].to_numpy(np.int64), frame[c.USER_ID].to_numpy(np.int64),
                          frame[c.POST_ID].to_numpy(np.int64),
                          np.where(frame[c.ACTION].to_numpy() == c.LIKE, LIKE, VIEW).astype(np.int8),
                          frame[c.TARGET].fillna(0).to_numpy(np.int8))


def _seq(dialect: str) -> str:
    # SQLite: the rowid, which is the seq column where it exists and is there in older files too
    return "rowid" if dialect == "sqlite" else c.SEQ


def _select(dialect: str) -> str:
    if dialect == "sqlite":
        ts = f"CAST(strftime('%s', \"{c.TIMESTAMP}\") AS INTEGER)"
        like = f"({c.ACTION} = '{c.LIKE}')"
    else:
        ts = f"CAST(FLOOR(EXTRACT(EPOCH FROM \"{c.TIMESTAMP}\")) AS BIGINT)"
        like = f"CAST({c.ACTION} = '{c.LIKE}' AS INTEGER)"
    return (f"SELECT {_seq(dialect)}, {c.USER_ID}, {c.POST_ID}, {ts}, {like}, COALESCE({c.TARGET}, 0) "
            f"FROM {feed_data.name}")


def _to_batch(a: np.ndarray) -> EventBatch:
    a = a.reshape(-1, 6)
    # the id columns are 32-bit in the schema: half the memory for a whole history
    return EventBatch(ts=a[:, 3].copy(), user_id=a[:, 1].astype(np.int32), post_id=a[:, 2].astype(np.int32),
                      kind=np.where(a[:, 4] == 1, LIKE, VIEW).astype(np.int8), target=a[:, 5].astype(np.int8),
                      seq=a[:, 0].copy())


def _query(conn: Connection, where: str, params: dict, limit: int | None, bulk: bool = True) -> EventBatch:
    """`bulk`: PostgreSQL's COPY read by Arrow's CSV parser, the fastest for a history but ~10 ms of fixed
    cost (the parser's setup and its threads); a follower's poll of a few rows takes a plain fetch."""
    dialect = conn.dialect.name
    sql = f"{_select(dialect)} WHERE {where} ORDER BY {_seq(dialect)}"
    if limit is not None:
        sql += f" LIMIT {int(limit)}"
    raw = conn.connection.driver_connection
    cur = raw.cursor()
    try:
        if dialect == "sqlite" or not bulk:
            cur.execute(sql, params)
            parts = []
            while rows := cur.fetchmany(500_000):
                parts.append(np.array(rows, dtype=np.int64))
            a = np.concatenate(parts) if parts else np.empty((0, 6), np.int64)
        else:
            buf = io.BytesIO()
            cur.copy_expert(f"COPY ({cur.mogrify(sql, params).decode()}) TO STDOUT WITH (FORMAT csv)", buf)
            buf.seek(0)
            if buf.getbuffer().nbytes == 0:
                a = np.empty((0, 6), np.int64)
            else:
                a = pd.read_csv(buf, header=None, dtype=np.int64, engine="pyarrow").to_numpy()
    finally:
        cur.close()
    return _to_batch(a)


def _placeholders(conn: Connection, names: list[str]) -> list[str]:
    return [f":{n}" if conn.dialect.name == "sqlite" else f"%({n})s" for n in names]


def read_after(conn: Connection, after_seq: int, limit: int | None = None, upto_seq: int | None = None,
               bulk: bool = True) -> EventBatch:
    """Events with after_seq < seq (<= upto_seq), in insertion order, at most `limit`; `bulk` False when
    few are expected (see `_query`)."""
    a, b = _placeholders(conn, ["a", "b"])
    where = f"{_seq(conn.dialect.name)} > {a}"
    params = {"a": int(after_seq)}
    if upto_seq is not None:
        where += f" AND {_seq(conn.dialect.name)} <= {b}"
        params["b"] = int(upto_seq)
    return _query(conn, where, params, limit, bulk)


def read_ranges(conn: Connection, ranges: list[tuple[int, int]]) -> EventBatch:
    """Events whose seq lies in any of the closed ranges (the follower's open gaps)."""
    if not ranges:
        return EventBatch.empty()
    seq = _seq(conn.dialect.name)
    clauses, params = [], {}
    for i, (lo, hi) in enumerate(ranges):
        a, b = _placeholders(conn, [f"lo{i}", f"hi{i}"])
        clauses.append(f"({seq} BETWEEN {a} AND {b})")
        params[f"lo{i}"], params[f"hi{i}"] = int(lo), int(hi)
    return _query(conn, " OR ".join(clauses), params, None, bulk=False)  # gaps: a few rows at most


def read_all(conn: Connection, chunk_rows: int = CHUNK_ROWS) -> EventBatch:
    """Every event, in insertion order, read in chunks of the insertion sequence. Only the highest
    sequence number is kept (`seq` holds that one number): a whole history needs no more."""
    parts, after = [], -1
    while True:
        part = read_after(conn, after, limit=chunk_rows)
        if not len(part):
            break
        after = int(part.seq[-1])
        parts.append(EventBatch(part.ts, part.user_id, part.post_id, part.kind, part.target))
        if len(part) < chunk_rows:
            break
    if not parts:
        return EventBatch.empty()
    out = EventBatch.concat(parts)
    return EventBatch(out.ts, out.user_id, out.post_id, out.kind, out.target, np.array([after], np.int64))


def scalar(conn: Connection, sql: str):
    """The first value of a statement without parameters, by the driver's own cursor: a fifth of the CPU
    of `Connection.execute` (30 against 140 us on PostgreSQL, one host), for the statements a follower
    runs several times a second on the serving process, where every microsecond holds the GIL. The driver
    begins a transaction that SQLAlchemy does not know of: the caller ends it on the driver's connection
    (`Follower._connected`)."""
    cur = conn.connection.driver_connection.cursor()
    try:
        cur.execute(sql)
        row = cur.fetchone()
    finally:
        cur.close()
    return None if row is None else row[0]


def max_seq(conn: Connection) -> int:
    """Highest insertion sequence in the feed (0 when empty)."""
    return int(scalar(conn, f"SELECT MAX({_seq(conn.dialect.name)}) FROM {feed_data.name}") or 0)


def pg_snapshot(conn: Connection) -> tuple[int, int]:
    """PostgreSQL (xmin, xmax) of the current snapshot: transactions below xmin have all finished;
    none at or above xmax had started. (0, 0) elsewhere."""
    if conn.dialect.name != "postgresql":
        return 0, 0
    row = conn.execute(text("SELECT pg_snapshot_xmin(pg_current_snapshot())::text::bigint, "
                            "pg_snapshot_xmax(pg_current_snapshot())::text::bigint")).one()
    return int(row[0]), int(row[1])


def recent_gaps(conn: Connection, seq: int, window: int = 100_000) -> np.ndarray:
    """PostgreSQL: ranges of sequence numbers in (seq - window, seq] that the current snapshot does not
    see — transactions still in flight, or rolled back — as (g, 2) closed ranges. A reader that starts
    after `seq` watches them until the transactions that could hold them have finished. SQLite has one
    writer at a time, so a gap there is never filled later: none are returned."""
    if conn.dialect.name != "postgresql" or seq <= 0:
        return np.empty((0, 2), np.int64)
    lo = max(seq - window, 0)
    seen = np.array([r[0] for r in conn.execute(
        text(f"SELECT {c.SEQ} FROM {feed_data.name} WHERE {c.SEQ} > :lo AND {c.SEQ} <= :hi ORDER BY {c.SEQ}"),
        {"lo": lo, "hi": seq})], dtype=np.int64)
    return missing_ranges(seen, lo, seq)


def missing_ranges(seen: np.ndarray, lo: int, hi: int) -> np.ndarray:
    """Closed ranges of the integers in (lo, hi] absent from the sorted array `seen`.

    >>> missing_ranges(np.array([2, 3, 6]), 0, 8).tolist()
    [[1, 1], [4, 5], [7, 8]]
    """
    bounds = np.concatenate([[lo], seen[(seen > lo) & (seen <= hi)], [hi + 1]])
    gap = np.diff(bounds) > 1
    return np.column_stack([bounds[:-1][gap] + 1, bounds[1:][gap] - 1]).astype(np.int64).reshape(-1, 2)
