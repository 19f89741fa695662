"""`python -m training export`: the database's three tables as Parquet, the feed partitioned by day.

    DIR/user_data/part-0.parquet        user_data as the database holds it, ordered by user_id
    DIR/post_text_df/part-0.parquet     post_text_df, ordered by post_id
    DIR/feed_data/day=YYYY-MM-DD/*.parquet   seq, user_id, post_id, ts, kind, target (below)
    DIR/export.json                     the insertion sequence read up to, its open gaps, row counts

The feed is written as training reads it (`app.feed_events.EventBatch`): `ts` int64 seconds since the
epoch (UTC), `kind` 0 for a view and 1 for a like (`app.user_state`), `target` 1 on a view followed by a
like (0 on like rows), `seq` the insertion sequence. Partitions by day let an engine read a time range
without opening the rest, and keep every file small enough to stream. One consistent read, as training
does: the export holds exactly the events up to `seq`, so a state built from it follows the database
from there.
"""

from __future__ import annotations

import json
import shutil
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.parquet as pq
from loguru import logger

from app import feed_events
from app.db import make_engine
from training import data

FEED_SCHEMA = pa.schema([("seq", pa.int64()), ("user_id", pa.int32()), ("post_id", pa.int32()),
                         ("ts", pa.int64()), ("kind", pa.int8()), ("target", pa.int8()), ("day", pa.string())])
META_FILE = "export.json"
TABLES = ("user_data", "post_text_df", "feed_data")


class ExportError(Exception):
    """The export cannot be written (the message names the path and the way out)."""


def _days(ts: np.ndarray) -> pa.Array:
    return pa.array(ts.astype("datetime64[s]").astype("datetime64[D]").astype(str))


def export_parquet(db_url: str, out: Path, chunk_rows: int = 2_000_000, replace: bool = False) -> dict:
    """Write the three tables under `out`; returns what export.json says."""
    out = Path(out)
    if out.exists() and any(out.iterdir()):
        if not replace:
            raise ExportError(f"{out} is not empty: pass --replace to overwrite it")
        for name in (*TABLES, META_FILE):
            target = out / name
            if target.is_dir():
                shutil.rmtree(target)
            elif target.exists():
                target.unlink()
    out.mkdir(parents=True, exist_ok=True)
    engine = make_engine(db_url)
    options = {"isolation_level": "REPEATABLE READ"} if engine.dialect.name == "postgresql" else {}
    counts = {"feed_data": 0}
    with engine.connect().execution_options(**options) as conn:
        users, posts = data.read_users(conn), data.read_posts(conn)
        _, xmax = feed_events.pg_snapshot(conn)
        for name, frame in (("user_data", users), ("post_text_df", posts)):
            (out / name).mkdir()
            pq.write_table(pa.Table.from_pandas(frame, preserve_index=False), out / name / "part-0.parquet")
            counts[name] = len(frame)
        after, chunk = 0, 0
        while True:
            batch = feed_events.read_after(conn, after, limit=chunk_rows)
            if not len(batch):
                break
            table = pa.table([batch.seq, batch.user_id.astype(np.int32), batch.post_id.astype(np.int32), batch.ts,
                              batch.kind, batch.target, _days(batch.ts)], schema=FEED_SCHEMA)
            ds.write_dataset(table, out / "feed_data", format="parquet", partitioning=["day"],
                             partitioning_flavor="hive", basename_template=f"chunk-{chunk:05d}-{{i}}.parquet",
                             existing_data_behavior="overwrite_or_ignore")
            after = int(batch.seq[-1])
            counts["feed_data"] += len(batch)
            chunk += 1
            logger.info("exported {} feed rows (seq up to {})", counts["feed_data"], after)
            if len(batch) < chunk_rows:
                break
        gaps = feed_events.recent_gaps(conn, after)
    engine.dispose()
    if not counts["feed_data"]:
        raise ExportError("feed_data is empty: generate a world or import data first")
    meta = {"seq": after, "seq_gaps": gaps.tolist(), "seq_xmax": xmax if len(gaps) else 0, "rows": counts,
            "dialect": engine.dialect.name, "written_at": datetime.now(UTC).isoformat()}
    (out / META_FILE).write_text(json.dumps(meta, indent=1))
    return meta


def read_meta(path: Path) -> dict:
    """export.json of an export folder, or an error naming what is missing."""
    meta = Path(path) / META_FILE
    if not meta.exists():
        raise ExportError(f"{meta} not found: write the Parquet export with `python -m training export --out {path}`")
    return json.loads(meta.read_text())
