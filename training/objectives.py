"""The real-logs stage of training: which exposure the log has, the "liked within the next horizon"
models beside the P(like | shown) ones, and per slot the choice of what serves (`training.selection`).

Called by `training.train` after the P(like | shown) models are fitted; it returns the horizon models and
the manifest's "exposure" and "selection" entries. The horizon models are trained on request moments of
the training window with labels that stop at the window's end, and stop early on the validation
window's; the choice is then made on other requests of the validation window.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import pandas as pd
from loguru import logger

from app import columns as c
from app.artifacts import LIKE_GIVEN_SHOWN, LIKED_WITHIN_HORIZON, MODEL_FILES, MODEL_USES_TEXT, model_features
from app.features import CONTROL_FEATURES
from app.recent_popularity import RECENT_FEATURES
from training.exposure_kind import detect
from training.horizon import NEGATIVES_PER_REQUEST, VIEWED_NEGATIVES, horizon_matrix, horizon_rows, sample_requests
from training.selection import Protocol, protocol_for, select


@dataclass
class ObjectiveConfig:
    exposure: str | None = None  # None: detected from the log; "random" or "organic" to tell it
    horizon_requests: int = 4000  # training request moments (x ~40 rows each)
    horizon_val_requests: int = 1500
    select_requests_full: int = 300  # full-catalogue validation requests: every post is scored
    select_requests_shown: int = 1500  # shown-set validation requests: only what was shown
    cold_spread: bool = True  # screens of users without history: one post per topic first (`selection.select`)
    # per request, up to this many posts the user opened within the horizon and did not like, as negatives
    # beside the uniform ones (`training.horizon.horizon_rows`)
    viewed_negatives: int = VIEWED_NEGATIVES
    horizon_cold_share: float = 0.25  # of the requests, repeated with the history hidden (`request_rows`)
    seed: int = 0


def slot_columns(x: np.ndarray, uses_text: bool) -> np.ndarray:
    """A slot's horizon columns out of the full matrix (the test features, then the recent ones)."""
    if uses_text:
        return x
    return np.asfortranarray(np.column_stack([x[:, :len(CONTROL_FEATURES)], x[:, -len(RECENT_FEATURES):]]))


def request_rows(history, requests: pd.DataFrame, until: int, seed: int, config: ObjectiveConfig) -> pd.DataFrame:
    """The horizon rows of `requests`, then those of a `horizon_cold_share` of them again with the user's
    history hidden (`cold`) and uniform negatives only. A user without history is ranked by the same model
    on the profile alone; with no taste to tell apart what the user would open from what the user would
    like, those rows learn what new users of the profile open and like. (Without them, the opened-and-
    unliked negatives left the model no better than segment popularity for new users on the organic demo
    worlds, logged 0.09-0.10 against 0.09-0.11, where uniform negatives alone had reached 0.15-0.23.)"""
    warm = horizon_rows(history, requests, until=until, seed=seed,
                        viewed_negatives=config.viewed_negatives).assign(cold=False)
    if config.horizon_cold_share <= 0 or requests.empty:
        return warm
    picked = requests.sample(frac=min(config.horizon_cold_share, 1.0), random_state=seed)
    cold = horizon_rows(history, picked, until=until, seed=seed + 7919).assign(cold=True)
    return pd.concat([warm, cold], ignore_index=True)


def fit_and_select(prep, like_models: dict, fit: Callable, train_config, config: ObjectiveConfig
                   ) -> tuple[dict, dict, dict]:
    """(horizon models by slot, their manifest entries, the manifest's selection with the exposure)."""
    history, split = prep.history, prep.split
    kind = detect(history, prep.static.topic, split.val_start, config.exposure)
    logger.info("exposure: {}", kind.describe())
    # as many rows as the P(like | shown) models may use, at most: the row caps bound both
    per_request = NEGATIVES_PER_REQUEST + 2
    n_train = max(100, min(config.horizon_requests, train_config.max_train_rows // per_request))
    n_val = max(100, min(config.horizon_val_requests, train_config.max_val_rows // per_request))
    tr = request_rows(history, sample_requests(history, split.train_start, split.val_start, n_train, config.seed),
                      split.val_start, config.seed, config)
    va = request_rows(history, sample_requests(history, split.val_start, split.test_start, n_val, config.seed + 1),
                      split.test_start, config.seed + 1, config)
    logger.info("horizon rows: train {} ({} liked), validation {} ({} liked)", len(tr), int(tr[c.TARGET].sum()),
                len(va), int(va[c.TARGET].sum()))
    x_tr = horizon_matrix(history, prep.profile, prep.static, prep.priors, tr, text=True, schedule=prep.schedule)
    x_va = horizon_matrix(history, prep.profile, prep.static, prep.priors, va, text=True, schedule=prep.schedule)
    models, meta = {}, {}
    for name in MODEL_FILES:
        text = MODEL_USES_TEXT[name]
        names = model_features(text, LIKED_WITHIN_HORIZON)
        model = fit(slot_columns(x_tr, text), tr[c.TARGET].to_numpy(), slot_columns(x_va, text),
                    va[c.TARGET].to_numpy(), names, train_config)
        models[name] = model
        meta[name] = {"objective": LIKED_WITHIN_HORIZON, "features": list(names),
                      "best_iteration": int(model.get_best_iteration() or 0), "trees": int(model.tree_count_),
                      "validation_auc": round(float(model.get_best_score()["validation"]["AUC"]), 4),
                      "rows": {"train": len(tr), "validation": len(va)}}
    candidates = {(n, LIKE_GIVEN_SHOWN): m for n, m in like_models.items()}
    candidates.update({(n, LIKED_WITHIN_HORIZON): m for n, m in models.items()})
    protocol_name = protocol_for(kind.kind)
    n_sel = config.select_requests_full if protocol_name == "full_catalogue" else config.select_requests_shown
    requests = sample_requests(history, split.val_start, split.test_start, n_sel, config.seed + 2)
    selection = select(history, prep.profile, prep.static, prep.priors, candidates,
                       Protocol(protocol_name, requests, split.test_start), shares_cut=split.val_start,
                       spread=config.cold_spread, schedule=prep.schedule)
    selection["exposure"] = kind.describe()
    logger.info("selection: {}", selection)
    return models, meta, selection
