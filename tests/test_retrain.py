"""The retraining gate (a worse candidate stays out, a better one goes in), rollback and pruning."""

import json
import shutil

import pytest

from app.artifacts import MANIFEST, set_current
from app.lifecycle import current_version
from training.objectives import ObjectiveConfig
from training.retrain import PROMOTED, REFUSED, Gate, gate_checks, prune, retrain, rollback, rollback_target, versions
from training.train import TrainConfig

FAST = {"max_train_rows": 20_000, "max_val_rows": 8_000, "threads": 1}
# the objective selection on fewer validation requests than the CLI's 1,500 (on this tiny world it scored
# 1,018 requests in about 20 of a training's 47 s)
FEW_SELECTION = ObjectiveConfig(select_requests_shown=400)


def _metrics(shown: float, auc: float, half: float = 0.03) -> dict:
    return {"shown_hitrate@5": {"control": shown, "test": shown}, "roc_auc": {"control": auc, "test": auc},
            "ci95": {"shown_hitrate@5": {m: (shown - half, shown + half) for m in ("control", "test")}}}


@pytest.mark.parametrize(("candidate", "passes"), [
    (_metrics(0.80, 0.750), True),  # equal
    (_metrics(0.78, 0.747), True),  # lower, but inside the interval and the AUC allowance
    (_metrics(0.76, 0.750), False),  # shown-set below the serving one's interval
    (_metrics(0.82, 0.740), False),  # AUC down by 0.01
])
def test_gate_by_hand(candidate, passes):
    checks = gate_checks(candidate, _metrics(0.80, 0.750), Gate())
    assert len(checks) == 4 and all(c["passed"] for c in checks) is passes


def test_a_hit_rate_on_few_requests_does_not_vote():
    # the serving version's own week: 12 shown-set requests, all hits, an interval of width zero
    serving = {**_metrics(1.0, 0.750, half=0.0), "shown_requests": 12}
    candidate = {**_metrics(0.9167, 0.751), "shown_requests": 12}
    checks = gate_checks(candidate, serving, Gate())
    shown = [c for c in checks if c["metric"] == "shown_hitrate@5"]
    assert [c["passed"] for c in shown] == [None, None] and all("no vote" in c["note"] for c in shown)
    assert [c["passed"] for c in gate_checks(candidate, serving, Gate(min_requests=10))
            if c["metric"] == "shown_hitrate@5"] == [False, False]


@pytest.fixture
def world(trained, tmp_path):
    db = tmp_path / "w.db"
    shutil.copy(trained["db_url"].removeprefix("sqlite:///"), db)
    return {"db_url": f"sqlite:///{db}", "models": tmp_path / "models", "cache": trained["cache"],
            "world": trained["world"]}


def _retrain(world, iterations: int):
    return retrain(world["db_url"], world["models"], world["cache"], "hashing", keep=3, world=world["world"],
                   requests=100, config=TrainConfig(iterations=iterations, **FAST), auc_views=3000,
                   objectives=FEW_SELECTION)


def test_a_worse_candidate_is_refused_and_a_better_one_promoted(world, trained):
    good = _copy(world, trained, "v20210101-000000")  # the fixture's models (40 trees) serve
    worse = _retrain(world, 1)  # one tree: clearly worse
    assert worse.code == REFUSED and worse.decision == "refused" and current_version(world["models"]) == good
    promotion = json.loads(worse.path.read_text())
    assert promotion["serving"] == good and promotion["candidate"] == worse.candidate
    assert any(c["passed"] is False for c in promotion["checks"])  # None: too few requests to vote
    assert set(promotion["metrics"]["candidate"]) >= {"shown_hitrate@5", "expected_hitrate@5", "roc_auc"}
    set_current(world["models"], worse.candidate, how="test")  # now a weak version serves
    better = _retrain(world, 60)
    assert better.code == PROMOTED and current_version(world["models"]) == better.candidate
    assert all(c["passed"] is not False for c in json.loads(better.path.read_text())["checks"])


def _copy(world, trained, name: str) -> str:
    """A version without training: the trained one under another name (rollback and pruning only move
    pointers and folders)."""
    dst = world["models"] / name
    shutil.copytree(trained["version_dir"], dst)
    manifest = json.loads((dst / MANIFEST).read_text())
    (dst / MANIFEST).write_text(json.dumps({**manifest, "version": name}))
    set_current(world["models"], name, how="train")
    return name


def test_rollback_goes_back_one_promotion_at_a_time(world, trained):
    a, b, c = (_copy(world, trained, f"v2021010{i}-000000") for i in range(3))
    assert current_version(world["models"]) == c and rollback_target(world["models"]) == b
    assert rollback(world["models"]) == b
    assert rollback(world["models"]) == a  # twice: two promotions back, not back to c
    with pytest.raises(ValueError, match="no earlier version"):
        rollback(world["models"])
    assert rollback(world["models"], to=c) == c
    with pytest.raises(ValueError, match="not a complete version"):
        rollback(world["models"], to="v-missing")


def test_prune_keeps_the_newest_the_serving_and_the_rollback_target(world, trained):
    names = [_copy(world, trained, f"v2021010{i}-000000") for i in range(4)]
    rollback(world["models"], to=names[0])  # the oldest serves: no promotion before it to protect
    removed = prune(world["models"], keep=2)
    left = versions(world["models"])
    assert names[0] in left and names[-1] in left and set(removed) | set(left) == set(names)
    assert all((world["models"] / v / MANIFEST).is_file() for v in left)


def test_the_iteration_log_stays_off_stdout(capsys):
    """The daily job's stdout is its JSON verdict, which a scheduler parses: CatBoost's iteration log
    goes to stderr."""
    import numpy as np

    from training.train import fit_model

    rng = np.random.default_rng(0)
    x = rng.normal(size=(400, 3))
    y = (x[:, 0] + rng.normal(size=400) > 0).astype(int)
    fit_model(x[:300], y[:300], x[300:], y[300:], ["a", "b", "c"], TrainConfig(iterations=5, threads=1))
    out, err = capsys.readouterr()
    assert out == ""
    assert "bestTest" in err or "0:" in err
