"""Training: time split, feature snapshots, CatBoost control and test, export of a versioned artifact.

Timeline (default: the last 7 days are the test window, the 7 before validate, 14 before train):

    data start ........ train_start ..... val_start ..... test_start ..... data end
    features for training rows <- |  training rows  |               |
    features for validation rows <--------------- |  validation rows  |
    features served and evaluated <-------------------------------- |  held-out requests  |

Each window's rows see features computed strictly before the window opens, which is exactly what
the service sees: a snapshot, then requests that come after it.
"""

from __future__ import annotations

import json
import platform
import time
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pandas as pd
from catboost import CatBoostClassifier
from loguru import logger
from sklearn.metrics import roc_auc_score
from sqlalchemy import Connection

from app import columns as c
from app.artifacts import MODEL_FILES, MODEL_USES_TEXT, POSTS_FILE, TABLES_FILE, set_current, write_manifest
from app.db import make_engine
from app.features import FeatureTables, assemble, feature_names
from training import data
from training.embeddings import embed_texts
from training.features import PostStatic, build_tables, post_static

DAY = 86_400


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
               test_start: int | None = None) -> Split:
    """Windows aligned to midnight UTC; `test_start` overrides the default (end minus test_days)."""
    end_day = -(-hi // DAY) * DAY
    ts = test_start if test_start is not None else end_day - int(test_days * DAY)
    split = Split(lo, ts - int((val_days + train_days) * DAY), ts - int(val_days * DAY), ts, hi)
    if not lo < split.train_start < split.val_start < split.test_start < hi:
        raise ValueError(f"data range too short for these windows: {split.describe()}")
    return split


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


@dataclass
class Prepared:
    """What training and evaluation need from the database, fetched once."""

    split: Split
    users: pd.DataFrame
    posts: pd.DataFrame
    static: PostStatic
    all_likes: pd.DataFrame


def prepare(conn: Connection, split_args: dict, cache_dir: Path, embedding_model: str) -> Prepared:
    users, posts = data.read_users(conn), data.read_posts(conn)
    split = make_split(*data.data_range(conn), **split_args)
    embeddings = embed_texts(posts[c.TEXT].astype(str).tolist(), embedding_model, cache_dir)
    return Prepared(split, users, posts, post_static(posts, embeddings), data.likes(conn))


def rows_matrix(tables: FeatureTables, rows: pd.DataFrame, text: bool, chunk: int = 100_000) -> np.ndarray:
    """Training rows through the same `assemble` the service uses for requests."""
    ui = tables.user_row(rows[c.USER_ID].to_numpy())
    if (ui < 0).any():
        raise ValueError("training rows reference users missing from user_data")
    pj = tables.post_row(rows[c.POST_ID].to_numpy())
    ts = rows["ts"].to_numpy(np.int64)
    parts = [assemble(tables, ui[i:i + chunk], pj[i:i + chunk], ts[i:i + chunk], text)
             for i in range(0, len(rows), chunk)]
    return np.vstack(parts) if parts else np.empty((0, len(feature_names(text))), np.float32)


def fit_model(x_tr, y_tr, x_val, y_val, names, config: TrainConfig) -> CatBoostClassifier:
    model = CatBoostClassifier(
        iterations=config.iterations, learning_rate=config.learning_rate, depth=config.depth,
        loss_function="Logloss", eval_metric="AUC", random_seed=config.seed, thread_count=config.threads,
        early_stopping_rounds=60, use_best_model=True, verbose=100, allow_writing_files=False,
        auto_class_weights=None if config.class_weights == "none" else "Balanced",
    )
    model.fit(x_tr, y_tr, eval_set=(x_val, y_val))
    model.set_feature_names(list(names))
    return model


def train(db_url: str, out_dir: Path, cache_dir: Path, embedding_model: str, config: TrainConfig,
          split_args: dict | None = None, serve_latest: bool = False) -> Path:
    """Fit both models and write `out_dir/<version>/`; returns that folder."""
    t0 = time.perf_counter()
    engine = make_engine(db_url)
    with engine.connect() as conn:
        prep = prepare(conn, split_args or {}, cache_dir, embedding_model)
        split = prep.split
        logger.info("split {}", split.describe())
        snap = {}
        for name, as_of in (("train", split.train_start), ("val", split.val_start), ("test", split.test_start)):
            snap[name] = build_tables(conn, as_of, prep.users, prep.static, prep.all_likes)
            logger.info("features as of {} built", name)
        tr = data.sample_views(conn, split.train_start, split.val_start, config.max_train_rows)
        val = data.sample_views(conn, split.val_start, split.test_start, config.max_val_rows, salt=1)
        held = data.sample_views(conn, split.test_start, split.end, config.max_val_rows, salt=2)
        served = (build_tables(conn, split.end, prep.users, prep.static, prep.all_likes)
                  if serve_latest else snap["test"])
    engine.dispose()
    logger.info("rows: train {}, validation {}, held-out {}", len(tr), len(val), len(held))

    models, model_meta = {}, {}
    for name in MODEL_FILES:
        text = MODEL_USES_TEXT[name]
        names = feature_names(text)
        model = fit_model(rows_matrix(snap["train"], tr, text), tr[c.TARGET].to_numpy(),
                          rows_matrix(snap["val"], val, text), val[c.TARGET].to_numpy(), names, config)
        held_auc = roc_auc_score(held[c.TARGET], model.predict_proba(rows_matrix(snap["test"], held, text))[:, 1])
        models[name] = model
        model_meta[name] = {
            "file": MODEL_FILES[name], "features": list(names), "dtype": "float32",
            "best_iteration": int(model.get_best_iteration() or 0), "trees": int(model.tree_count_),
            "validation_auc": round(float(model.get_best_score()["validation"]["AUC"]), 4),
            "heldout_auc": round(float(held_auc), 4),
            "importance": dict(sorted(zip(names, map(float, model.get_feature_importance()), strict=True),
                                      key=lambda kv: -kv[1])[:15]),
        }
        logger.info("{}: validation AUC {}, held-out AUC {}", name, model_meta[name]["validation_auc"],
                    model_meta[name]["heldout_auc"])

    version = datetime.now(UTC).strftime("v%Y%m%d-%H%M%S")
    version_dir = out_dir / version
    version_dir.mkdir(parents=True, exist_ok=False)
    for name, model in models.items():
        model.save_model(str(version_dir / MODEL_FILES[name]))
    served.save(version_dir / TABLES_FILE)
    posts = prep.posts.rename(columns={c.POST_ID: "id"})[["id", c.TEXT, c.TOPIC]]
    (version_dir / POSTS_FILE).write_text(json.dumps(posts.to_dict(orient="records"), ensure_ascii=False))
    write_manifest(version_dir, {
        "version": version, "created_at": datetime.now(UTC).isoformat(),
        "models": model_meta, "tables": {"file": TABLES_FILE, "as_of": served.as_of,
                                         "users": len(served.user_ids), "posts": len(served.post_ids)},
        "split": asdict(split), "split_iso": split.describe(), "features_as_of": served.as_of,
        "serves": "latest" if serve_latest else "test_start",
        "data_range": [split.start, split.end], "embedding_model": embedding_model,
        "train_config": asdict(config), "rows": {"train": len(tr), "validation": len(val), "heldout": len(held)},
        "library_versions": _versions(), "train_seconds": round(time.perf_counter() - t0, 1),
    })
    set_current(out_dir, version)
    logger.info("wrote {} in {:.0f}s", version_dir, time.perf_counter() - t0)
    return version_dir


def _versions() -> dict[str, str]:
    import catboost
    import sklearn

    return {"python": platform.python_version(), "catboost": catboost.__version__, "numpy": np.__version__,
            "pandas": pd.__version__, "scikit-learn": sklearn.__version__}
