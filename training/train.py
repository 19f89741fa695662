"""Training: time split, point-in-time rows, CatBoost control and test, export of a versioned artifact.

Timeline (default: the last 7 days are the test window, the 7 before validate, 14 before train):

    data start ........ train_start ..... val_start ..... test_start ..... data end
    priors (fitted) <- |  training rows  | validation rows |  held-out requests  |

Every row's features are computed as of the row's own moment, from exactly the events before it, by
the functions the service uses for a request at that moment (`app.user_state`). The priors (global
and city like rates, the feed's mean vector) are fitted on the events before the first training row,
so no row's features carry its own outcome. The artifact carries the state to serve: base counts
before `test_start` minus the exclusion window, then every event one by one (`app.snapshot`).
"""

from __future__ import annotations

import json
import platform
import sys
import time
from dataclasses import asdict, dataclass, replace
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pandas as pd
from catboost import CatBoostClassifier
from loguru import logger
from sklearn.metrics import roc_auc_score
from sqlalchemy import Connection

from app import columns as c
from app import feed_events
from app.artifacts import (
    LIKE_GIVEN_SHOWN,
    LIKED_WITHIN_HORIZON,
    MODEL_FILES,
    MODEL_USES_TEXT,
    POSTS_FILE,
    STATE_FILE,
    set_current,
    write_manifest,
)
from app.candidates import RETRIEVAL_FILE
from app.db import make_engine
from app.features import CF_DIM, CONTROL_FEATURES, PostView, Priors, feature_names, profile_features
from app.snapshot import Snapshot
from app.text_features import TRANSFORMS_FILE, TextTransforms
from training import data
from training.collaborative import REFIT_DAYS, Schedule, fit_schedule, history_likes, refit_moments, served_vectors
from training.embeddings import embed_texts
from training.features import (
    EXCLUDE_WINDOW_SECONDS,
    History,
    build_snapshot,
    fit_priors,
    history_from,
    post_static,
    rows_matrix,
    sample_views,
)
from training.horizon import recent_columns
from training.objectives import ObjectiveConfig, fit_and_select, slot_columns
from training.retrieval import (
    CALIBRATION_TARGET,
    Scorer,
    calibrate_version,
    calibration_requests,
    catalogue_samples,
    fit_proxy,
    proxy_requests,
    write_retrieval,
)

DAY = 86_400


class SplitError(ValueError):
    """The data cannot hold the windows asked for (the CLI names the options to change)."""


@dataclass(frozen=True)
class Split:
    start: int
    train_start: int
    val_start: int
    test_start: int
    end: int

    def describe(self) -> dict[str, str]:
        return {k: datetime.fromtimestamp(v, tz=UTC).isoformat() for k, v in asdict(self).items()}


def make_split(lo: int, hi: int, test_days: float = 7, val_days: float = 7, train_days: float = 14,
               test_start: int | None = None, window_likes: int = 0, liked_ts: np.ndarray | None = None) -> Split:
    """Windows aligned to midnight UTC; `test_start` overrides the default (end minus test_days).

    Sized by the data instead of the calendar: with `window_likes` > 0 the held-out window, then the
    validation window before it, are each the fewest whole days (one at least) that hold `window_likes`
    liked views (`liked_ts`, sorted) — a sparse log gets weeks, a busy one a day, and each window holds
    enough outcomes to measure; `train_days` 0 trains on every day before validation after a first day,
    which only the priors see (rows are sampled to the row cap, their features as of their own moments).
    """
    end_day = -(-hi // DAY) * DAY
    if window_likes > 0:
        if liked_ts is None:
            raise ValueError("window_likes needs the liked views' times")
        ts = test_start if test_start is not None else end_day - _days_holding(liked_ts, end_day, window_likes, lo)
        vs = ts - _days_holding(liked_ts, ts, window_likes, lo)
    else:
        ts = test_start if test_start is not None else end_day - int(test_days * DAY)
        vs = ts - int(val_days * DAY)
    train_start = (-(-lo // DAY) * DAY + DAY) if train_days <= 0 else vs - int(train_days * DAY)
    split = Split(lo, train_start, vs, ts, hi)
    if not lo < split.train_start < split.val_start < split.test_start < hi:
        held = f" (--window-likes {window_likes}: fewer liked views than two windows need)" if window_likes > 0 else ""
        raise SplitError(f"data range too short for these windows{held}: {split.describe()}")
    return split


def _days_holding(liked_ts: np.ndarray, end: int, n: int, lo: int) -> int:
    """Seconds of the fewest whole days before `end` holding `n` of the sorted `liked_ts` (all the days
    back to `lo` when they hold fewer)."""
    days = 1
    before_end = int(np.searchsorted(liked_ts, end, side="left"))
    while end - days * DAY > lo and before_end - int(np.searchsorted(liked_ts, end - days * DAY, side="left")) < n:
        days += 1
    return days * DAY


@dataclass
class TrainConfig:
    max_train_rows: int = 400_000
    max_val_rows: int = 150_000
    iterations: int = 600
    learning_rate: float = 0.08
    depth: int = 6
    class_weights: str = "none"  # or "balanced"
    seed: int = 0
    threads: int = 2
    # training and validation rows repeated with the user's history hidden: the model sees what a user
    # who has just signed up looks like (a like is still that user's answer to that post)
    cold_share: float = 0.0
    # each model's candidate lists made the shortest that hold this share of its full top 5 on validation
    # requests (`training.retrieval.calibrate_scales`); 0: the artifact serves `app.candidates.Budget` as it stands
    retrieval_recall: float = CALIBRATION_TARGET


@dataclass
class Prepared:
    """What training and evaluation need from the database, read once in one consistent snapshot."""

    split: Split
    users: pd.DataFrame
    posts: pd.DataFrame
    static: PostView
    history: History
    priors: Priors
    profile: np.ndarray  # aligned with history.user_ids
    seq_gaps: np.ndarray
    seq_xmax: int
    transforms: TextTransforms
    schedule: Schedule  # the training, validation and held-out rows' collaborative vectors by period
    likes: tuple[np.ndarray, np.ndarray, np.ndarray]  # (user rows, post rows, times) of every like event


def prepare(conn: Connection, split_args: dict, cache_dir: Path, embedding_model: str) -> Prepared:
    users, posts = data.read_users(conn), data.read_posts(conn)
    _, xmax = feed_events.pg_snapshot(conn)
    history = history_from(feed_events.read_all(conn), users[c.USER_ID].to_numpy(np.int64),
                           posts[c.POST_ID].to_numpy(np.int64))
    gaps = feed_events.recent_gaps(conn, history.seq)
    logger.info("read {} events of {} users", len(history.events.ts), len(history.user_ids))
    ev = history.events
    liked_ts = np.sort(ev.ts[history.views & (ev.target > 0)]) if split_args.get("window_likes") else None
    split = make_split(history.start, history.end, **split_args, liked_ts=liked_ts)
    embeddings = embed_texts(posts[c.TEXT].astype(str).tolist(), embedding_model, cache_dir)
    static, transforms = post_static(posts, embeddings, embedding_model)
    priors = fit_priors(history, users, static, split.train_start)
    history.weigh(priors, static.topic)
    likes = history_likes(history)
    schedule = fit_schedule(*likes, refit_moments(split.train_start, split.val_start, split.test_start),
                            len(history.user_ids), len(history.post_ids))
    return Prepared(split, users, posts, static, history, priors, profile_features(users, priors), gaps,
                    xmax if len(gaps) else 0, transforms, schedule, likes)


def with_cold_rows(rows: pd.DataFrame, share: float, seed: int) -> pd.DataFrame:
    """`rows` plus a `share` of them again, marked cold (history hidden)."""
    rows = rows.assign(cold=False)
    if share <= 0 or rows.empty:
        return rows
    extra = rows.sample(frac=min(share, 1.0), random_state=seed).assign(cold=True)
    return pd.concat([rows, extra], ignore_index=True)


def fit_model(x_tr, y_tr, x_val, y_val, names, config: TrainConfig) -> CatBoostClassifier:
    model = CatBoostClassifier(
        iterations=config.iterations, learning_rate=config.learning_rate, depth=config.depth,
        loss_function="Logloss", eval_metric="AUC", random_seed=config.seed, thread_count=config.threads,
        early_stopping_rounds=60, use_best_model=True, verbose=100, allow_writing_files=False,
        auto_class_weights=None if config.class_weights == "none" else "Balanced",
    )
    # the iteration log goes to stderr beside loguru's lines: stdout stays the commands' JSON verdicts,
    # which a scheduler parses (the daily job's `retrain`)
    model.fit(x_tr, y_tr, eval_set=(x_val, y_val), log_cout=sys.stderr)
    model.set_feature_names(list(names))
    return model


@dataclass
class TrainingSet:
    """What an engine hands to the fit: the split, the catalogue and its fitted text transforms, the
    priors, the sampled rows with their feature matrices (test-model columns; the control model's are
    the first ones) and the state to serve. The single-machine engine builds it from the database
    (`build_training_set`), the Spark engine from Parquet (`training.spark_engine`); the artifact's
    format does not depend on which. `prep` (the whole feed in memory) comes with the single-machine
    engine only: the objective selection (`training.objectives`) needs it, and is skipped without it."""

    split: Split
    posts: pd.DataFrame
    transforms: TextTransforms
    priors: Priors
    rows: dict[str, pd.DataFrame]  # train, val, held: user_row, post_row, user_id, post_id, ts, target, cold
    matrices: dict[str, np.ndarray]
    snapshot: Snapshot
    engine: str
    seconds: dict[str, float]  # stage timings
    prep: Prepared | None = None


def sample_windows(split: Split, config: TrainConfig) -> dict[str, tuple[int, int, int, int]]:
    """(lo, hi, max_rows, salt) of the training, validation and held-out samples."""
    return {"train": (split.train_start, split.val_start, config.max_train_rows, 0),
            "val": (split.val_start, split.test_start, config.max_val_rows, 1),
            "held": (split.test_start, split.end, config.max_val_rows, 2)}


def sample_rows(sample, split: Split, config: TrainConfig) -> dict[str, pd.DataFrame]:
    """Training, validation and held-out rows; `sample(lo, hi, max_rows, salt)` draws the views of a
    window by the shared (user, post) hash, on whatever engine holds the feed."""
    w = sample_windows(split, config)
    tr = with_cold_rows(sample(*w["train"]), config.cold_share, config.seed)
    val = with_cold_rows(sample(*w["val"]), config.cold_share, config.seed + 1)
    held = sample(*w["held"])
    logger.info("rows: train {}, validation {}, held-out {}", len(tr), len(val), len(held))
    return {"train": tr, "val": val, "held": held}


def build_training_set(db_url: str, cache_dir: Path, embedding_model: str, config: TrainConfig,
                       split_args: dict | None = None, serve_latest: bool = False) -> TrainingSet:
    """The single-machine engine: the whole feed read from the database into memory once."""
    t0 = time.perf_counter()
    engine = make_engine(db_url)
    # one consistent read: the snapshot holds exactly the events up to its sequence number
    options = {"isolation_level": "REPEATABLE READ"} if engine.dialect.name == "postgresql" else {}
    with engine.connect().execution_options(**options) as conn:
        prep = prepare(conn, split_args or {}, cache_dir, embedding_model)
    engine.dispose()
    split, history = prep.split, prep.history
    logger.info("split {}", split.describe())
    t1 = time.perf_counter()
    rows = sample_rows(lambda lo, hi, n, salt: sample_views(history, lo, hi, n, salt=salt), split, config)
    # the control features are the first columns of the test model's: build each row once
    matrices = {name: rows_matrix(history, prep.profile, prep.static, prep.priors, part, text=True,
                                  schedule=prep.schedule) for name, part in rows.items()}
    logger.info("point-in-time rows built after {:.0f}s", time.perf_counter() - t0)
    # exact answers from the base cut on: the held-out window and the exclusion window before it
    cut = split.end if serve_latest else split.test_start
    served = replace(prep.static, cf=served_vectors(prep.schedule, prep.likes, cut, len(history.user_ids),
                                                    len(history.post_ids)))
    snapshot = build_snapshot(history, prep.users, served, prep.priors, cut - EXCLUDE_WINDOW_SECONDS,
                              prep.seq_gaps, prep.seq_xmax)
    t2 = time.perf_counter()
    return TrainingSet(split, prep.posts, prep.transforms, prep.priors, rows, matrices, snapshot, "single",
                       {"read": round(t1 - t0, 1), "features": round(t2 - t1, 1)}, prep)


def train(db_url: str, out_dir: Path, cache_dir: Path, embedding_model: str, config: TrainConfig,
          split_args: dict | None = None, serve_latest: bool = False, promote: bool = True,
          objectives: ObjectiveConfig | None = None) -> Path:
    """Fit both models and write `out_dir/<version>/`; returns that folder. `promote` points
    `out_dir/current` at it (retraining leaves that to the gate). Each slot then serves what validated
    best on the protocol that fits the log's exposure (`training.objectives`)."""
    t0 = time.perf_counter()
    tset = build_training_set(db_url, cache_dir, embedding_model, config, split_args, serve_latest)
    return fit_and_export(tset, out_dir, embedding_model, config, serve_latest, promote, t0, objectives)


def _proxy(tset: TrainingSet, text: bool, config: TrainConfig, score: Scorer):
    """A model's retrieval proxy and blend (`training.retrieval`): fitted on validation requests scored
    over the whole catalogue (`catalogue_samples`), or, without the feed in memory (the Spark engine's
    training set), on the viewed validation rows."""
    val, matrix = tset.rows["val"], tset.matrices["val"]
    if tset.prep is None:
        scores = score(matrix, val["post_row"].to_numpy(np.int64), val["ts"].to_numpy(np.int64))
        return fit_proxy(matrix, scores, text, val["user_row"].to_numpy(), config.seed, config.threads)
    started = time.perf_counter()
    requests = proxy_requests(val, seed=config.seed)
    x, scores, request, _ = catalogue_samples(tset.prep, requests, score, config.seed)
    proxy = fit_proxy(x, scores, text, request, config.seed, config.threads)
    logger.info("retrieval proxy: {} rows of {} requests over the catalogue, R^2 within {:.3f}, {:.0f} s",
                len(x), len(requests), proxy[1], time.perf_counter() - started)
    return proxy


def fit_and_export(tset: TrainingSet, out_dir: Path, embedding_model: str, config: TrainConfig,
                   serve_latest: bool = False, promote: bool = True, t0: float | None = None,
                   objectives: ObjectiveConfig | None = None) -> Path:
    """Fit control and test on a training set from either engine and write the artifact version."""
    t0 = time.perf_counter() if t0 is None else t0
    split, matrices = tset.split, tset.matrices
    tr, val, held = tset.rows["train"], tset.rows["val"], tset.rows["held"]
    models, model_meta, proxies = {}, {}, {}
    for name in MODEL_FILES:
        text = MODEL_USES_TEXT[name]
        names = feature_names(text)
        cols = slice(None) if text else slice(0, len(CONTROL_FEATURES))
        model = fit_model(matrices["train"][:, cols], tr[c.TARGET].to_numpy(), matrices["val"][:, cols],
                          val[c.TARGET].to_numpy(), names, config)
        held_auc = roc_auc_score(held[c.TARGET], model.predict_proba(matrices["held"][:, cols])[:, 1])
        models[name] = model
        proxies[name] = _proxy(tset, text, config, lambda x, rows, ts, m=model, k=cols: m.predict(
            x[:, k], prediction_type="RawFormulaVal", thread_count=config.threads))
        model_meta[name] = {
            "file": MODEL_FILES[name], "features": list(names), "dtype": "float32",
            "best_iteration": int(model.get_best_iteration() or 0), "trees": int(model.tree_count_),
            "validation_auc": round(float(model.get_best_score()["validation"]["AUC"]), 4),
            "heldout_auc": round(float(held_auc), 4), "objective": LIKE_GIVEN_SHOWN,
            "importance": dict(sorted(zip(names, map(float, model.get_feature_importance()), strict=True),
                                      key=lambda kv: -kv[1])[:15]),
        }
        logger.info("{}: validation AUC {}, held-out AUC {}", name, model_meta[name]["validation_auc"],
                    model_meta[name]["heldout_auc"])

    if tset.prep is not None:
        prep, history = tset.prep, tset.prep.history
        horizon_models, horizon_meta, selection = fit_and_select(prep, models, fit_model, config,
                                                                 objectives or ObjectiveConfig(seed=config.seed))
        for name, choice in selection["slots"].items():
            if choice["serves"] == LIKED_WITHIN_HORIZON:
                models[name] = horizon_models[name]
                model_meta[name] = {"file": MODEL_FILES[name], "dtype": "float32", **horizon_meta[name],
                                    "importance": _importance(horizon_models[name], horizon_meta[name]["features"])}
                # the retrieval proxy stands in for the model that serves: refit on its scores
                text = MODEL_USES_TEXT[name]
                proxies[name] = _proxy(tset, text, config, lambda x, rows, ts, m=models[name], text=text: m.predict(
                    slot_columns(np.column_stack([x, recent_columns(history, rows, ts)]), text),
                    prediction_type="RawFormulaVal", thread_count=config.threads))
    else:  # each slot serves its like model, as trained above
        selection = {"exposure": None, "slots": {},
                     "skipped": f"engine {tset.engine}: the objective selection runs on the single-machine engine"}

    snapshot = tset.snapshot
    version = datetime.now(UTC).strftime("v%Y%m%d-%H%M%S")
    if (out_dir / version).exists():  # two trainings within a second (simulated days): keep both
        version += f"-{int(time.time() * 1000) % 1000:03d}"
    version_dir = out_dir / version
    version_dir.mkdir(parents=True, exist_ok=False)
    for name, model in models.items():
        model.save_model(str(version_dir / MODEL_FILES[name]))
    snapshot.save(version_dir / STATE_FILE)
    tset.transforms.save(version_dir / TRANSFORMS_FILE)
    write_retrieval(version_dir, proxies, dict(MODEL_USES_TEXT), len(val))
    posts = tset.posts.rename(columns={c.POST_ID: "id"})[["id", c.TEXT, c.TOPIC]]
    (version_dir / POSTS_FILE).write_text(json.dumps(posts.to_dict(orient="records"), ensure_ascii=False))
    write_manifest(version_dir, {
        "version": version, "created_at": datetime.now(UTC).isoformat(),
        "models": model_meta,
        "retrieval": {"file": RETRIEVAL_FILE, "proxy_r2": {k: round(v[1], 4) for k, v in proxies.items()}},
        "text_transforms": {"file": TRANSFORMS_FILE, "encoder": embedding_model},
        "state": {"file": STATE_FILE, "base_as_of": snapshot.base_as_of, "events_until": snapshot.events_until,
                  "seq": snapshot.seq, "users": len(snapshot.user_ids), "posts": len(snapshot.post_ids),
                  "events": len(snapshot.events.ts)},
        "priors": {"fitted_before": split.train_start, "global_rate": round(tset.priors.global_rate, 6),
                   "cities": len(tset.priors.city_names)},
        # training rows read the vectors of their period (refitted every refit_days), the state those before its cut
        "collaborative": {"dim": CF_DIM, "refit_days": REFIT_DAYS,
                          "served_fitted_before": split.end if serve_latest else split.test_start,
                          "served_posts_with_vector": int(snapshot.posts.cf.any(axis=1).sum())},
        "split": asdict(split), "split_iso": split.describe(), "features_as_of": snapshot.base_as_of,
        "serves": "latest" if serve_latest else "test_start",
        "exposure": selection["exposure"], "selection": selection,
        "data_range": [split.start, split.end], "embedding_model": embedding_model,
        "train_config": asdict(config), "rows": {"train": len(tr), "validation": len(val), "heldout": len(held),
                 "cold_train": int(tr["cold"].sum())},
        "engine": tset.engine, "stage_seconds": tset.seconds,
        "library_versions": _versions(), "train_seconds": round(time.perf_counter() - t0, 1),
    })
    if config.retrieval_recall > 0:  # the artifact as the service loads it, its retrieval budget written in
        calibrate_version(version_dir, calibration_requests(val, len(snapshot.post_ids), snapshot.base_as_of,
                                                            config.seed), config.retrieval_recall)
    if promote:
        set_current(out_dir, version, how="train")
    logger.info("wrote {} in {:.0f}s", version_dir, time.perf_counter() - t0)
    return version_dir


def _importance(model: CatBoostClassifier, names: list[str]) -> dict[str, float]:
    return dict(sorted(zip(names, map(float, model.get_feature_importance()), strict=True), key=lambda kv: -kv[1])[:15])


def _versions() -> dict[str, str]:
    import catboost
    import sklearn

    return {"python": platform.python_version(), "catboost": catboost.__version__, "numpy": np.__version__,
            "pandas": pd.__version__, "scikit-learn": sklearn.__version__}
