"""The daily job: retrain on the latest data, promote only past a gate, keep K versions; and rollback.

`retrain` trains a candidate whose held-out window is the last days of the data (the defaults of
`train`), then evaluates the candidate and the serving version on the *same* held-out requests with
the same protocols — each through its own live state, caught up with the database, so that both answer
every request as of its moment. The candidate is promoted (`models/current` flips; every worker swaps
it in) only if, for each model slot:

- shown-set and (on a demo world) expected hitrate@5 are not lower than the serving version's minus the
  half-width of its 95% interval, and
- ROC-AUC on held-out views is not lower by more than `auc_drop`.

The candidate is not refitted on its held-out days: it serves with a state that holds every event up to
the moment it was trained, so its features are fresh; refitting would leave the gate's verdict about a
model no one evaluated. `promotion.json` beside the candidate records both versions' metrics, every
check and the decision. `models/history.jsonl` records each change of `current`, which `rollback`
reads. Exit codes for a scheduler: 0 promoted, 3 refused by the gate (the serving version stays), 1
failed.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path

from loguru import logger

from app.artifacts import HISTORY, MANIFEST, ArtifactsInvalid, set_current
from app.db import make_engine
from app.engine import Recommender
from app.follower import catch_up
from app.lifecycle import current_version
from training.evaluate import EvalConfig, run_evaluation
from training.objectives import ObjectiveConfig
from training.train import TrainConfig, train

PROMOTED, REFUSED, FAILED = 0, 3, 1
PROMOTION = "promotion.json"
MODELS = ("control", "test")


@dataclass
class Gate:
    auc_drop: float = 0.005
    interval_metrics: tuple[str, ...] = ("shown_hitrate@5", "expected_hitrate@5")
    # a hit rate on fewer requests than this does not vote: on a log the serving version wrote itself, a
    # week can hold a dozen shown-set requests, all hits for the version that chose those screens, and an
    # interval of width zero would refuse every candidate
    min_requests: int = 100


COUNTS = {"shown_hitrate@5": "shown_requests", "expected_hitrate@5": "requests"}


def gate_checks(candidate: dict, serving: dict, gate: Gate) -> list[dict]:
    """Each check of the gate, per model slot: the candidate's value, the serving version's, the lowest
    the candidate may be, and whether it passed.

    >>> c = {"shown_hitrate@5": {"test": 0.80}, "roc_auc": {"test": 0.749},
    ...      "ci95": {"shown_hitrate@5": {"test": (0.78, 0.84)}}}
    >>> s = {"shown_hitrate@5": {"test": 0.82}, "roc_auc": {"test": 0.75},
    ...      "ci95": {"shown_hitrate@5": {"test": (0.79, 0.85)}}}
    >>> [(x["metric"], x["floor"], x["passed"]) for x in gate_checks(c, s, Gate()) if x["model"] == "test"]
    [('shown_hitrate@5', 0.79, True), ('roc_auc', 0.745, True)]

    A hit rate measured on too few requests is recorded without a vote (`passed` None):

    >>> [x["passed"] for x in gate_checks({**c, "shown_requests": 12}, s, Gate()) if x["model"] == "test"]
    [None, True]
    """
    checks = []
    for model in MODELS:
        for metric in gate.interval_metrics:
            if serving.get(metric, {}).get(model) is None or candidate.get(metric, {}).get(model) is None:
                continue  # not measured (e.g. no shown-set request in a short window)
            lo, hi = serving["ci95"][metric][model]
            floor = round(serving[metric][model] - (hi - lo) / 2, 4)
            value = candidate[metric][model]
            check = {"model": model, "metric": metric, "candidate": value, "serving": serving[metric][model],
                     "floor": floor, "passed": bool(value >= floor)}
            n = min(r.get(COUNTS.get(metric, ""), gate.min_requests) for r in (candidate, serving))
            if n < gate.min_requests:  # recorded, but it does not vote
                check.update(passed=None, note=f"only {n} requests (fewer than {gate.min_requests}): no vote")
            checks.append(check)
        if model in serving.get("roc_auc", {}) and model in candidate.get("roc_auc", {}):
            floor = round(serving["roc_auc"][model] - gate.auc_drop, 4)
            value = candidate["roc_auc"][model]
            checks.append({"model": model, "metric": "roc_auc", "candidate": value,
                           "serving": serving["roc_auc"][model], "floor": floor, "passed": bool(value >= floor)})
    return checks


@dataclass
class RetrainResult:
    code: int
    decision: str
    candidate: str | None
    serving: str | None
    reason: str
    path: Path | None = None


def _evaluate(db_url: str, version_dir: Path, window: tuple[int, int], world: Path | None, requests: int,
              auc_views: int) -> dict:
    recommender = Recommender.load_version(version_dir)
    engine = make_engine(db_url)
    catch_up(engine, recommender.state)  # the version as a worker would serve it now
    with engine.connect() as conn:
        # the gate reads neither the cold-start slice nor its pass over the requests
        config = EvalConfig(requests=requests, auc_views=auc_views, cold_start=False)
        result, _ = run_evaluation(conn, recommender, world, config, window=window)
    engine.dispose()
    return result


def _summary(result: dict) -> dict:
    keys = ("shown_hitrate@5", "expected_hitrate@5", "roc_auc", "hitrate@5", "requests", "shown_requests")
    out = {k: result[k] for k in keys if k in result}
    out["ci95"] = {k: v for k, v in result.get("ci95", {}).items() if k in ("shown_hitrate@5", "expected_hitrate@5")}
    return out


def versions(models_dir: Path) -> list[str]:
    """Complete versions, oldest first (names are creation times)."""
    return sorted(p.name for p in Path(models_dir).iterdir() if p.is_dir() and (p / MANIFEST).is_file())


def prune(models_dir: Path, keep: int) -> list[str]:
    """Delete all but the newest `keep` versions; never the serving one or the one rollback would use."""
    protected = {current_version(models_dir), rollback_target(models_dir)}
    existing = versions(models_dir)
    removed = [v for v in existing[:max(len(existing) - keep, 0)] if v not in protected]
    for v in removed:
        shutil.rmtree(Path(models_dir) / v)
    return removed


def retrain(db_url: str, models_dir: Path, cache_dir: Path, embedding_model: str, keep: int = 5,
            world: Path | None = None, requests: int = 1000, config: TrainConfig | None = None,
            split_args: dict | None = None, gate: Gate | None = None, auc_views: int = 30_000,
            objectives: ObjectiveConfig | None = None) -> RetrainResult:
    gate = gate or Gate()
    models_dir = Path(models_dir)
    models_dir.mkdir(parents=True, exist_ok=True)
    serving = current_version(models_dir)
    candidate_dir = train(db_url, models_dir, cache_dir, embedding_model, config or TrainConfig(), split_args,
                          promote=False, objectives=objectives)
    candidate = candidate_dir.name
    split = json.loads((candidate_dir / MANIFEST).read_text())["split"]
    window = (int(split["test_start"]), int(split["end"]))
    cand_metrics = _evaluate(db_url, candidate_dir, window, world, requests, auc_views)
    serv_metrics = None
    if serving is not None:
        try:
            serv_metrics = _evaluate(db_url, models_dir / serving, window, world, requests, auc_views)
        except ArtifactsInvalid as exc:  # a broken serving version cannot hold a good one back
            logger.warning("serving version {} cannot be evaluated: {}", serving, exc)
    if serv_metrics is None:
        checks, passed = [], True
        reason = "no serving version to compare with" if serving is None else f"serving version {serving} unreadable"
    else:
        checks = gate_checks(cand_metrics, serv_metrics, gate)
        failed = [c for c in checks if c["passed"] is False]
        passed = not failed
        reason = ("every check passed" if passed else "; ".join(
            f"{c['model']} {c['metric']} {c['candidate']} < {c['floor']} (serving {c['serving']})" for c in failed))
    decision = "promoted" if passed else "refused"
    path = candidate_dir / PROMOTION
    path.write_text(json.dumps({
        "at": datetime.now(UTC).isoformat(timespec="seconds"), "candidate": candidate, "serving": serving,
        "decision": decision, "reason": reason, "window": window, "gate": asdict(gate), "checks": checks,
        "metrics": {"candidate": _summary(cand_metrics),
                    "serving": None if serv_metrics is None else _summary(serv_metrics)},
    }, indent=2, default=str))
    if passed:
        set_current(models_dir, candidate, how="retrain")
    removed = prune(models_dir, keep)
    logger.info("retrain: candidate {} {} ({}); removed {}", candidate, decision, reason, removed or "nothing")
    return RetrainResult(PROMOTED if passed else REFUSED, decision, candidate, serving, reason, path)


def rollback_target(models_dir: Path) -> str | None:
    """The version promoted before the serving one (rolling back twice goes two promotions back); without
    a history, the newest version older than the serving one."""
    current = current_version(models_dir)
    history = Path(models_dir) / HISTORY
    if history.is_file() and current is not None:
        promoted = [e["version"] for e in map(json.loads, history.read_text().splitlines()) if e["how"] != "rollback"]
        if current in promoted:
            at = len(promoted) - 1 - promoted[::-1].index(current)
            for version in reversed(promoted[:at]):
                if version != current and (Path(models_dir) / version / MANIFEST).is_file():
                    return version
            return None
    older = [v for v in versions(models_dir) if current is None or v < current]
    return older[-1] if older else None


def rollback(models_dir: Path, to: str | None = None) -> str:
    """Point `current` back; returns the version now current. Raises ValueError when there is none."""
    target = to or rollback_target(models_dir)
    if target is None:
        raise ValueError(f"no earlier version in {models_dir} to roll back to")
    if not (Path(models_dir) / target / MANIFEST).is_file():
        raise ValueError(f"{Path(models_dir) / target} is not a complete version")
    set_current(models_dir, target, how="rollback")
    return target
