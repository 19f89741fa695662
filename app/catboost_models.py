"""CatBoost models as the service loads them: for prediction only."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TypeVar

from catboost import CatBoost

M = TypeVar("M", bound=CatBoost)


def load_for_prediction(cls: type[M], path: Path) -> M:
    """The model in `path`, its training parameters cut down to the loss function in memory (the file
    keeps them all). CatBoost's C++ reads the loss function's name from the model's metadata on every
    `predict` (`TFullModel::GetLossFunctionName`, to prepare the output) by parsing the whole parameter
    JSON, 4.5 KB of it: 3.6% of a request's instructions on the demo world (callgrind, 2026-12-01),
    ~0.1 ms of each call's fixed cost. The trees, borders and class labels, all prediction reads, are
    untouched, and so are the predictions (tests/test_engine.py)."""
    model = cls()
    model.load_model(str(path))
    metadata = model.get_metadata()
    if "params" in metadata:
        loss = json.loads(metadata["params"]).get("loss_function")
        metadata["params"] = json.dumps({} if loss is None else {"loss_function": loss})
    return model
