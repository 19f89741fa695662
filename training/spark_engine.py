"""The Spark engine of `python -m training train --engine spark`: the same training set from Parquet.

    export (Parquet, feed by day) ──▶ Spark: time range, priors' counts, the sampled views (one hash)
        ──▶ driver: the sample (small: what CatBoost fits on), cold rows, one id per row
        ──▶ Spark, partitioned by post: each row's post counters (`app.post_counters.counts_before`)
        ──▶ Spark, partitioned by user: each row's features and the served state's part of those users
            (`training.features.rows_matrix` and `build_snapshot`, i.e. `app.user_state` and `assemble`)
        ──▶ Parquet ──▶ driver: read batch by batch into the matrices and the snapshot, merged in place;
            CatBoost as on one machine.

No feature is computed here: each partition calls the functions the single-machine path and the
service call, on the events of its users (or posts). A partition is a bucket of users (`user_row %
buckets`), not one user: `applyInPandas` pays a fixed cost per group, and the shared functions already
loop over the users they are given. The partitions' output goes to Parquet rather than through the
JVM driver, so the driver holds the sample and the state, never the feed.
"""

from __future__ import annotations

import io
import os
import sys
import tempfile
import time
import warnings
import zipfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from functools import partial
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
from loguru import logger

from app import columns as c
from app.config import PROJECT_ROOT
from app.features import N_TOPICS, PostView, Priors, empty_counts, feature_names, finalize_posts, profile_features
from app.feed_events import EventBatch
from app.snapshot import Snapshot, UserEvents
from app.text_features import topic_codes
from app.user_state import LIKE, VIEW
from training.collaborative import Schedule, fit_schedule, refit_moments, served_vectors
from training.export import read_meta
from training.features import (
    EXCLUDE_WINDOW_SECONDS,
    build_snapshot,
    history_from,
    post_static,
    priors_from_counts,
    rows_matrix,
)
from training.train import TrainConfig, TrainingSet, make_split, sample_windows, with_cold_rows

EVENTS_PER_BUCKET = 1_000_000  # a partition's events held at once by one Python worker
_PANDAS_WARNING = "ignore:PySpark does not yet fully support pandas:FutureWarning"


def spark_session(master: str = "local[2]", driver_memory: str = "2g", shuffle_partitions: int | None = None):
    """A SparkSession for the engine. Local masters run the workers with this interpreter; on a cluster
    the code of `app` and `training` is shipped as a zip (the executors need this requirements' Python)."""
    from pyspark.sql import SparkSession

    local = master.startswith("local")
    if local:
        os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
        os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (str(PROJECT_ROOT), os.environ.get("PYTHONPATH")) if p)
    os.environ.setdefault("PYTHONWARNINGS", _PANDAS_WARNING)  # the workers' copy of the filter below
    warnings.filterwarnings("ignore", message="PySpark does not yet fully support pandas")
    cores = int(master[6:-1]) if local and master[6:-1].isdigit() else 2
    spark = (SparkSession.builder.master(master).appName("post-recommendations-train")
             # 1g ran out of heap at scale 0.5 (38 M events), loading the user stage's output batches
             .config("spark.driver.memory", driver_memory)
             .config("spark.ui.enabled", "false").config("spark.ui.showConsoleProgress", "false")
             .config("spark.sql.session.timeZone", "UTC")
             .config("spark.sql.shuffle.partitions", str(shuffle_partitions or max(4, 2 * cores)))
             .config("spark.sql.execution.arrow.pyspark.enabled", "true")
             .config("spark.sql.adaptive.enabled", "true")
             .getOrCreate())
    spark.sparkContext.setLogLevel("ERROR")
    if not local:
        spark.sparkContext.addPyFile(_code_zip())
    return spark


def _code_zip() -> str:
    """app/ and training/ in one zip for the executors of a cluster."""
    path = Path(tempfile.mkdtemp()) / "post_recommendations.zip"
    with zipfile.ZipFile(path, "w") as z:
        for package in ("app", "training"):
            for f in (PROJECT_ROOT / package).rglob("*.py"):
                z.write(f, f.relative_to(PROJECT_ROOT))
    return str(path)


@dataclass
class _Context:
    """What every partition needs from the driver: small (users' profiles, the catalogue, the priors)."""

    user_ids: np.ndarray
    post_ids: np.ndarray
    users: pd.DataFrame
    profile: np.ndarray
    posts: PostView
    priors: Priors
    base_as_of: int
    n_features: int
    schedule: Schedule  # the rows' collaborative vectors by period
    served_cf: np.ndarray  # the served state's collaborative vectors, fitted up to its cut

    @property
    def served_posts(self) -> PostView:
        return replace(self.posts, cf=self.served_cf)


def _feature_schema(n: int) -> str:
    return "row_id long, " + ", ".join(f"f{i} float" for i in range(n)) + ", blob binary"


# ------------------------------------------------------------------ partition functions (run on workers)
def _post_counters(ctx: _Context, _key, views: pd.DataFrame, rows: pd.DataFrame) -> pd.DataFrame:
    """Rows of some posts with their post's (views, liked views, weighted views) strictly before each
    row's moment."""
    if rows.empty:
        return rows.assign(p_views=np.empty(0, np.int64), p_liked=np.empty(0, np.int64),
                           p_weighted=np.empty(0, np.int64))
    from app.post_counters import counts_before

    post = views["post_row"].to_numpy(np.int64)
    weight = ctx.priors.view_weights(views["user_row"].to_numpy(np.int64), ctx.posts.topic[post])
    counts = counts_before(post, views["ts"].to_numpy(np.int64), views["target"].to_numpy(np.int64), weight,
                           rows["post_row"].to_numpy(np.int64), rows["ts"].to_numpy(np.int64))
    return rows.assign(p_views=counts[:, 0], p_liked=counts[:, 1], p_weighted=counts[:, 2])


def _local_history(ctx: _Context, events: pd.DataFrame):
    """The events of a bucket of users as a `History` whose rows are those users (in insertion order, as
    the single-machine path reads them, so that ties keep the same order)."""
    events = events.sort_values("seq", kind="stable")
    batch = EventBatch(events["ts"].to_numpy(np.int64), events["user_id"].to_numpy(np.int64),
                       events["post_id"].to_numpy(np.int64), events["kind"].to_numpy(np.int8),
                       events["target"].to_numpy(np.int8), events["seq"].to_numpy(np.int64))
    local_ids = np.unique(batch.user_id)
    return history_from(batch, local_ids, ctx.post_ids)


def _user_stage(ctx: _Context, key, events: pd.DataFrame, rows: pd.DataFrame) -> pd.DataFrame:
    """For a bucket of users: every sampled row's feature vector, and the served state of those users
    (one row with row_id -1 holding it, serialized)."""
    cols = [f"f{i}" for i in range(ctx.n_features)]
    if events.empty:
        return pd.DataFrame({"row_id": np.empty(0, np.int64), **{k: np.empty(0, np.float32) for k in cols},
                             "blob": np.empty(0, object)})
    history = _local_history(ctx, events)
    global_rows = np.searchsorted(ctx.user_ids, history.user_ids)
    history.weigh(ctx.priors, ctx.posts.topic, global_rows)
    parts = []
    if not rows.empty:
        local = pd.DataFrame({"user_row": np.searchsorted(history.user_ids, rows["user_id"].to_numpy(np.int64)),
                              "post_row": rows["post_row"].to_numpy(np.int64), "ts": rows["ts"].to_numpy(np.int64),
                              "cold": rows["cold"].to_numpy(bool)})
        counters = finalize_posts(rows[["p_views", "p_liked", "p_weighted"]].to_numpy(np.int64), ctx.priors)
        x = rows_matrix(history, ctx.profile[global_rows], ctx.posts, ctx.priors, local, text=True,
                        counters=counters, schedule=ctx.schedule)
        frame = pd.DataFrame(np.ascontiguousarray(x), columns=cols)
        frame.insert(0, "row_id", rows["row_id"].to_numpy(np.int64))
        frame["blob"] = None
        parts.append(frame)
    users = ctx.users.iloc[global_rows]
    part = build_snapshot(history, users, ctx.served_posts, ctx.priors, ctx.base_as_of)
    blob = pd.DataFrame({"row_id": [-1], **{k: [np.nan] for k in cols}, "blob": [_pack(part)]})
    parts.append(blob.astype({k: np.float32 for k in cols}))
    return pd.concat(parts, ignore_index=True)


_PART_FIELDS = ("user_ids", "base_counts", "days_indptr", "days", "likes_indptr", "likes", "seen_indptr", "seen",
                "post_base")


def _pack(part: Snapshot) -> bytes:
    arrays = {name: getattr(part, name) for name in _PART_FIELDS}
    ev = part.events
    arrays |= {"ev_indptr": ev.indptr, "ev_ts": ev.ts, "ev_post": ev.post, "ev_kind": ev.kind, "ev_target": ev.target}
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    return buf.getvalue()


# ------------------------------------------------------------------ driver
_BATCH_ROWS = 32_768  # rows of the stages' output read at once on the driver (~15 MB of features)


def _batches(target: Path, columns: list[str]) -> Iterator[pa.RecordBatch]:
    """The stages' Parquet output, `_BATCH_ROWS` rows at a time, file after file (never all of it)."""
    for path in sorted(Path(target).glob("*.parquet")):
        yield from pq.ParquetFile(path).iter_batches(batch_size=_BATCH_ROWS, columns=columns)


def _blobs(target: Path) -> Iterator[bytes]:
    """The buckets' parts of the served state, one at a time."""
    for batch in _batches(target, ["row_id", "blob"]):
        row_id, blobs = batch.column(0).to_numpy(), batch.column(1)
        for i in np.flatnonzero(row_id < 0):
            yield blobs[int(i)].as_py()


def _read_features(target: Path, offsets: np.ndarray, n_features: int) -> list[np.ndarray]:
    """The feature rows of each sample (rows offsets[k]..offsets[k+1] of the sampled table), read batch
    by batch into their final column-major matrices: the driver never holds the output whole, nor a
    second copy of the matrices."""
    mats = [np.empty((int(offsets[k + 1] - offsets[k]), n_features), np.float32, order="F")
            for k in range(len(offsets) - 1)]
    seen = 0
    for batch in _batches(target, ["row_id", *(f"f{i}" for i in range(n_features))]):
        row_id = batch.column(0).to_numpy()
        is_row = row_id >= 0
        if not is_row.any():
            continue
        row_id = row_id[is_row]
        part = np.searchsorted(offsets, row_id, side="right") - 1
        seen += len(row_id)
        placed = [(mat, mine, row_id[mine] - offsets[k])
                  for k, mat in enumerate(mats) if (mine := part == k).any()]
        for i in range(n_features):
            values = batch.column(i + 1).to_numpy(zero_copy_only=False)[is_row]
            for mat, mine, local in placed:
                mat[local, i] = values[mine]
    if seen != offsets[-1]:
        raise RuntimeError(f"spark returned {seen} feature rows for {int(offsets[-1])} sampled rows")
    return mats


def _merge_snapshots(blobs: Callable[[], Iterator[bytes]], ctx: _Context, end: int, meta: dict) -> Snapshot:
    """One snapshot from the partitions' parts: per-user arrays placed at the users' rows, post counts
    summed. Users without any event keep the empty counts, as in the single-machine snapshot.

    `blobs` is called twice (a fresh iterator each time): the first pass reads only each part's sizes,
    so that the second writes every list straight into its final array. Each user is in exactly one
    part, its lists already in the order of the single-machine snapshot, so placing them is the whole
    merge; the driver holds the merged state and one part, never the parts together.
    """
    n_users = len(ctx.user_ids)
    base = empty_counts(n_users)
    post_base = np.zeros((len(ctx.post_ids), 3), np.int64)
    lists = {"days": "days_indptr", "likes": "likes_indptr", "seen": "seen_indptr", "events": "ev_indptr"}
    sizes = {name: np.zeros(n_users, np.int64) for name in lists}
    for blob in blobs():
        with np.load(io.BytesIO(blob), allow_pickle=False) as z:
            rows = np.searchsorted(ctx.user_ids, z["user_ids"])
            base[rows] = z["base_counts"]
            post_base += z["post_base"]
            for name, indptr in lists.items():
                sizes[name][rows] = np.diff(z[indptr])
    indptr = {name: np.concatenate([[0], np.cumsum(n)]).astype(np.int64) for name, n in sizes.items()}
    del sizes
    out = {name: np.empty(int(indptr[name][-1]), np.int32) for name in ("days", "likes", "seen")}
    ev_fields = {"ev_ts": np.int64, "ev_post": np.int32, "ev_kind": np.int8, "ev_target": np.int8}
    ev_out = {k: np.empty(int(indptr["events"][-1]), dtype) for k, dtype in ev_fields.items()}
    for blob in blobs():
        with np.load(io.BytesIO(blob), allow_pickle=False) as z:
            rows = np.searchsorted(ctx.user_ids, z["user_ids"])
            for name, part_indptr in lists.items():
                p = z[part_indptr]
                lengths = np.diff(p)
                # the i-th value of a user's list goes to that user's start in the merged list plus i
                dest = np.repeat(indptr[name][rows] - p[:-1], lengths) + np.arange(p[-1])
                if name == "events":
                    for k in ev_fields:
                        ev_out[k][dest] = z[k]
                else:
                    out[name][dest] = z[name]
    events = UserEvents(indptr["events"], ev_out["ev_ts"], ev_out["ev_post"], ev_out["ev_kind"], ev_out["ev_target"])
    gaps = np.asarray(meta.get("seq_gaps") or np.empty((0, 2)), np.int64).reshape(-1, 2)
    return Snapshot(
        base_as_of=int(ctx.base_as_of), events_until=int(end), seq=int(meta["seq"]), seq_gaps=gaps,
        seq_xmax=int(meta.get("seq_xmax", 0)), priors=ctx.priors, user_ids=ctx.user_ids,
        profile=profile_features(ctx.users, ctx.priors), base_counts=base,
        days_indptr=indptr["days"], days=out["days"], likes_indptr=indptr["likes"],
        likes=out["likes"], seen_indptr=indptr["seen"], seen=out["seen"], events=events,
        post_ids=ctx.post_ids, posts=ctx.served_posts, post_base=post_base)


def build_training_set(parquet_dir: Path, cache_dir: Path, embedding_model: str, config: TrainConfig,
                       split_args: dict | None = None, serve_latest: bool = False, master: str = "local[2]",
                       spark=None, buckets: int | None = None, work_dir: Path | None = None) -> TrainingSet:
    """The training set of `training.train.build_training_set`, computed by Spark from a Parquet export."""
    from pyspark.sql import functions as F

    from training.embeddings import embed_texts

    t0 = time.perf_counter()
    parquet_dir = Path(parquet_dir)
    meta = read_meta(parquet_dir)
    users = pd.read_parquet(parquet_dir / "user_data").sort_values(c.USER_ID, ignore_index=True)
    posts = pd.read_parquet(parquet_dir / "post_text_df").sort_values(c.POST_ID, ignore_index=True)
    user_ids, post_ids = users[c.USER_ID].to_numpy(np.int64), posts[c.POST_ID].to_numpy(np.int64)
    spark = spark or spark_session(master)
    logger.info("spark: session after {:.1f}s", time.perf_counter() - t0)
    feed = spark.read.parquet(str(parquet_dir / "feed_data"))
    # rows of the users and posts the tables hold: events of other ids are dropped, as on one machine
    urows = spark.createDataFrame(pd.DataFrame({"user_id": user_ids.astype(np.int32),
                                                "user_row": np.arange(len(user_ids))}))
    prows = spark.createDataFrame(pd.DataFrame({"post_id": post_ids.astype(np.int32),
                                                "post_row": np.arange(len(post_ids)),
                                                "topic": topic_codes(posts[c.TOPIC])}))
    ev = (feed.join(F.broadcast(urows), "user_id").join(F.broadcast(prows), "post_id")
          .select("seq", "user_id", "post_id", "user_row", "post_row", "topic", "ts", "kind", "target"))
    # not cached: each pass below re-reads the columns it needs from Parquet, so that the JVM holds no
    # copy of the feed whatever its size
    lo, hi, n_events = ev.agg(F.min("ts"), F.max("ts"), F.count("*")).first()
    if not n_events:
        raise ValueError(f"{parquet_dir / 'feed_data'} holds no events of known users and posts")
    liked_ts = None
    if (split_args or {}).get("window_likes"):  # liked views per day: windows are whole days
        per_day = (ev.where((F.col("kind") == int(VIEW)) & (F.col("target") > 0))
                   .groupBy((F.floor(F.col("ts") / 86_400) * 86_400).alias("day")).count().toPandas())
        liked_ts = np.sort(np.repeat(per_day["day"].to_numpy(np.int64), per_day["count"].to_numpy(np.int64)))
    split = make_split(int(lo), int(hi) + 1, **(split_args or {}), liked_ts=liked_ts)
    logger.info("spark: {} events, split {}", n_events, split.describe())

    embeddings = embed_texts(posts[c.TEXT].astype(str).tolist(), embedding_model, cache_dir)
    static, transforms = post_static(posts, embeddings, embedding_model)
    views = ev.where(F.col("kind") == VIEW)
    early = F.col("ts") < split.train_start
    windows = sample_windows(split, config)
    # per user: the views of each sampled window (summed into the keep rule)
    per_user = views.groupBy("user_row").agg(
        *(F.sum(F.when((F.col("ts") >= a) & (F.col("ts") < b), 1).otherwise(0)).alias(name)
          for name, (a, b, _, _) in windows.items())).toPandas()
    per_post = views.where(early).groupBy("post_row").agg(F.count("*").alias("n")).toPandas()
    per_topic = (views.where(early).groupBy("user_row", "topic")
                 .agg(F.count("*").alias("n"), F.sum("target").alias("liked")).toPandas())
    topic_views, topic_liked = np.zeros((len(user_ids), N_TOPICS)), np.zeros((len(user_ids), N_TOPICS))
    at = (per_topic["user_row"].to_numpy(np.int64), per_topic["topic"].to_numpy(np.int64))
    topic_views[at] = per_topic["n"]
    topic_liked[at] = per_topic["liked"]
    post_views = np.zeros(len(post_ids))
    post_views[per_post["post_row"]] = per_post["n"]
    priors = priors_from_counts(topic_views, topic_liked, post_views, users, static)
    logger.info("spark: priors' counts after {:.1f}s", time.perf_counter() - t0)
    t1 = time.perf_counter()

    rows = _sample(views, windows, {n: int(per_user[n].sum()) for n in windows}, config)
    cut = split.end if serve_latest else split.test_start
    # the collaborative vectors: the like pairs handed to the driver, fitted there as on one machine
    likes = (ev.where((F.col("kind") == int(LIKE)) & (F.col("ts") < cut))
             .select(F.col("user_row").cast("int"), F.col("post_row").cast("int"), "ts").toPandas())
    like = (likes["user_row"].to_numpy(np.int64), likes["post_row"].to_numpy(np.int64), likes["ts"].to_numpy(np.int64))
    del likes
    schedule = fit_schedule(*like, refit_moments(split.train_start, split.val_start, split.test_start),
                            len(user_ids), len(post_ids))
    served_cf = served_vectors(schedule, like, cut, len(user_ids), len(post_ids))
    del like
    ctx = _Context(user_ids, post_ids, users, profile_features(users, priors), static, priors,
                   cut - EXCLUDE_WINDOW_SECONDS, len(feature_names(True)), schedule, served_cf)
    matrices, snapshot = _features_and_state(spark, ev, views, rows, ctx, int(hi) + 1, meta,
                                             buckets or max(4, -(-int(n_events) // EVENTS_PER_BUCKET)),
                                             work_dir or parquet_dir.parent / f"{parquet_dir.name}_work")
    t2 = time.perf_counter()
    logger.info("spark: sample and features in {:.0f}s", t2 - t1)
    return TrainingSet(split, posts, transforms, priors, rows, matrices, snapshot, "spark",
                       {"read": round(t1 - t0, 1), "features": round(t2 - t1, 1)})


def _sample(views, windows: dict, totals: dict[str, int], config: TrainConfig) -> dict[str, pd.DataFrame]:
    """The three samples in one pass over the views, by `training.features.sample_views`' hash and
    keep rule, ordered as that function orders them (user row, time, insertion order)."""
    from pyspark.sql import functions as F

    buckets = 10_000
    picked = F.lit(None).cast("string")
    for name, (lo, hi, max_rows, salt) in windows.items():
        total = totals[name]
        keep = buckets if total <= max_rows else max(1, int(buckets * max_rows / total))
        bucket = (F.col("user_id").cast("long") * 7919 + F.col("post_id").cast("long") * 104_729 + salt) % buckets
        picked = F.when((F.col("ts") >= lo) & (F.col("ts") < hi) & (bucket < keep), F.lit(name)).otherwise(picked)
    sample = (views.withColumn("part", picked).where(F.col("part").isNotNull())
              .select("part", "user_row", "post_row", "user_id", "post_id", "ts", "target", "seq").toPandas())
    sample = sample.sort_values(["user_row", "ts", "seq"], kind="stable", ignore_index=True)
    out = {}
    for name in windows:
        part = sample[sample["part"] == name].drop(columns=["part", "seq"]).reset_index(drop=True)
        out[name] = part.astype({k: np.int64 for k in part.columns})
    logger.info("spark: sampled {} rows ({} MB on the driver)", len(sample),
                round(sample.memory_usage(deep=True).sum() / 2**20, 1))
    out["train"] = with_cold_rows(out["train"], config.cold_share, config.seed)
    out["val"] = with_cold_rows(out["val"], config.cold_share, config.seed + 1)
    return out


def _features_and_state(spark, ev, views, rows: dict[str, pd.DataFrame], ctx: _Context, end: int, meta: dict,
                        buckets: int, work_dir: Path) -> tuple[dict[str, np.ndarray], Snapshot]:
    from pyspark.sql import functions as F

    names = list(rows)
    frames = [rows[n].assign(cold=rows[n]["cold"] if "cold" in rows[n] else False) for n in names]
    offsets = np.cumsum([0] + [len(f) for f in frames])
    table = pd.concat([f[["user_id", "user_row", "post_row", "ts", "cold"]] for f in frames], ignore_index=True)
    table.insert(0, "row_id", np.arange(len(table), dtype=np.int64))
    sampled = spark.createDataFrame(table)
    post_key, user_key = (F.col("post_row") % buckets).alias("b"), (F.col("user_row") % buckets).alias("b")
    # only the columns each partition function reads cross the shuffle
    with_counters = (views.select(post_key, "user_row", "post_row", "ts", "target").groupBy("b")
                     .cogroup(sampled.groupBy(post_key))
                     .applyInPandas(partial(_post_counters, ctx),
                                    "row_id long, user_id long, user_row long, post_row long, ts long, "
                                    "cold boolean, p_views long, p_liked long, p_weighted long"))
    out = (ev.select(user_key, "seq", "user_id", "post_id", "ts", "kind", "target").groupBy("b")
           .cogroup(with_counters.groupBy(user_key))
           .applyInPandas(partial(_user_stage, ctx), _feature_schema(ctx.n_features)))
    work_dir.mkdir(parents=True, exist_ok=True)
    target = work_dir / "features"
    t0 = time.perf_counter()
    out.write.mode("overwrite").parquet(str(target))
    logger.info("spark: post and user stages in {:.1f}s", time.perf_counter() - t0)

    matrices = dict(zip(names, _read_features(target, offsets, ctx.n_features), strict=True))
    return matrices, _merge_snapshots(partial(_blobs, target), ctx, end, meta)
