"""The evaluation protocols on hand-made cases whose hits are known, and an end-to-end run."""

import doctest
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import app.engine
import app.feed_events
import app.post_counters
import app.user_state
import training.metrics
import training.retrain
from app.db import make_engine
from app.engine import Recommender
from training.evaluate import EvalConfig, Truth, evaluate_rankings, run_evaluation, shown_set_hits
from training.metrics import bootstrap_ci, expected_hit


@pytest.mark.parametrize("module", [training.metrics, app.engine, app.user_state, app.post_counters,
                                    app.feed_events, training.retrain])
def test_docstring_examples(module):
    assert doctest.testmod(module).failed == 0


def test_full_catalogue_metrics_by_hand():
    tops = {"a": [np.array([1, 2, 3, 4, 5, 6]), np.array([7, 8, 9, 10, 11, 12])]}
    truth = Truth(future_likes=[{3}, {99}], shown=[np.array([]), np.array([])], shown_liked=[set(), set()])
    m = evaluate_rankings(tops, truth)["a"]
    assert m["hitrate@1"].tolist() == [0.0, 0.0]
    assert m["hitrate@5"].tolist() == [1.0, 0.0]
    assert m["ndcg@5"][0] == pytest.approx(1 / np.log2(4))
    assert m["map@5"][0] == pytest.approx(1 / 3)


class _FixedScores:
    """Stands in for the engine: fixed scores per post, the shape shown_set_hits needs."""

    def __init__(self, post_ids, scores):
        self.post_ids = np.asarray(post_ids)
        self.state = type("S", (), {"post_rows": lambda _, ids: np.searchsorted(post_ids, ids)})()
        self._scores = np.asarray(scores, dtype=float)

    def scores(self, model, user_id, ts):
        return self._scores.copy(), None


def test_shown_set_protocol_by_hand():
    engine = _FixedScores([1, 2, 3, 4, 5, 6, 7, 8], [8, 7, 6, 5, 4, 3, 2, 1])  # post 1 best
    requests = pd.DataFrame({"user_id": [10, 11, 12], "ts": [0, 0, 0]})
    truth = Truth(
        future_likes=[set(), set(), set()],
        shown=[np.array([8, 7, 6, 5, 4, 3]), np.array([2, 3, 4, 5, 6, 7]), np.array([1, 2, 3])],
        shown_liked=[{3}, {7}, {1}],  # third request: only 3 candidates, not eligible at k=5
    )
    curves, eligible = shown_set_hits(engine, requests, truth, ["control"], seed=0)
    assert eligible.tolist() == [True, True, False]
    # request 1: order 3,4,5,6,7,8 -> liked 3 first; request 2: 2..7 -> liked 7 sixth
    assert curves["control"][:, 0].tolist() == [1.0, 0.0]
    assert curves["control"][:, 4].tolist() == [1.0, 0.0]
    assert curves["control"][:, 5].tolist() == [1.0, 1.0]


def test_expected_hit_and_bootstrap():
    assert expected_hit([0.5, 0.5]) == pytest.approx(0.75)
    lo, hi = bootstrap_ci(np.r_[np.ones(50), np.zeros(50)], n_boot=500)
    assert lo < 0.5 < hi and hi - lo < 0.25


def test_run_evaluation_end_to_end(trained):
    engine = Recommender.load(trained["model_dir"])
    db = make_engine(trained["db_url"])
    with db.connect() as conn:
        result, details = run_evaluation(conn, engine, trained["world"], EvalConfig(requests=60, auc_views=5000))
    db.dispose()
    assert result["requests"] == 60
    for key in ("hitrate@5", "shown_hitrate@5", "expected_hitrate@5", "roc_auc", "coverage@5"):
        assert set(result[key]) >= {"random", "popularity", "control", "test"}
    e = result["expected_hitrate@5"]
    assert e["random"] < e["oracle"] and e["test"] <= e["oracle"] + 1e-9
    assert set(result["ci95"]["hitrate@5"]) == {"random", "popularity", "segment_popularity", "control", "test"}
    lo, hi = result["ci95"]["expected_hitrate@5"]["oracle"]
    assert lo <= e["oracle"] <= hi
    assert set(result["gap_closed"]) == {"segment_popularity", "control", "test"}
    # the tiny world's feed is random: training detected it, and the report says what fits it
    assert result["exposure"]["kind"] == "random" and result["fitting_protocol"] == "shown_hitrate@5"
    assert set(result["slots"]) == {"control", "test"}
    cold = result["cold_start"]
    assert set(cold["hitrate@5"]) == {"popularity", "segment_popularity", "control", "test"}
    assert 0 < cold["expected_hitrate@5"]["profile_best"] < 1  # the profile's best, beside the rankers
    # training chose each slot's screen for users without history, both screens' validation kept
    assert all("spread" in c["cold"] and "like_rate+spread" in c["cold"]["validation_hitrate@5"]
               for c in result["slots"].values())
    # the retraining gate's evaluation skips the cold-start pass; what the gate reads is unchanged
    with db.connect() as conn:
        gate, _ = run_evaluation(conn, engine, trained["world"],
                                 EvalConfig(requests=60, auc_views=5000, cold_start=False))
    db.dispose()
    assert "cold_start" not in gate
    for key in ("shown_hitrate@5", "expected_hitrate@5", "roc_auc", "ci95"):
        assert gate[key] == result[key]


def test_report_is_written(trained, tmp_path):
    from training.report import write_report

    engine = Recommender.load(trained["model_dir"])
    db = make_engine(trained["db_url"])
    with db.connect() as conn:
        result, details = run_evaluation(conn, engine, trained["world"], EvalConfig(requests=60, auc_views=5000))
    db.dispose()
    path = write_report(result, details, engine, tmp_path / "rep")
    text = path.read_text()
    assert "hitrate_at_k.png" in text and "calibration.png" in text and "segments.png" in text
    for png in ("hitrate_at_k.png", "calibration.png", "segments.png"):
        assert (tmp_path / "rep" / png).stat().st_size > 5000
    assert f"| hitrate@5 | {result['hitrate@5']['random']}" in text


def _serving_latest(trained, tmp_path) -> Path:
    """A copy of the trained artifacts marked as built with --serve-latest (the manifest is not checksummed)."""
    import json
    import shutil

    models = tmp_path / "models"
    shutil.copytree(trained["model_dir"], models, symlinks=True)
    manifest = models / trained["version_dir"].name / "manifest.json"
    manifest.write_text(json.dumps({**json.loads(manifest.read_text()), "serves": "latest"}))
    return models


def test_evaluate_refuses_serve_latest_artifacts_without_the_flag(trained, tmp_path):
    from typer.testing import CliRunner

    from training.cli import app

    models = _serving_latest(trained, tmp_path)
    args = ["evaluate", "--db", trained["db_url"], "--models", str(models), "--world", str(trained["world"]),
            "--requests", "5"]
    refused = CliRunner().invoke(app, args)
    assert refused.exit_code == 2 and "--serve-latest" in refused.output and "inflated" in refused.output
    allowed = CliRunner().invoke(app, [*args, "--allow-serve-latest"])
    assert allowed.exit_code == 0, allowed.output
    assert "warning:" in allowed.output and "inflated" in allowed.output


def test_check_sees_serve_latest_in_model_and_refuses(trained, tmp_path):
    import typer
    from fastapi.testclient import TestClient

    from app.config import Settings
    from app.main import create_app
    from training.cli import _refuse_serve_latest

    recommender = Recommender.load(_serving_latest(trained, tmp_path))
    app = create_app(Settings(database_url=trained["db_url"], model_dir="unused"),
                     load_recommender=lambda _: recommender, watch_models=False)
    with TestClient(app) as client:
        served = client.get("/model").json()
    assert served["serves"] == "latest"
    with pytest.raises(typer.Exit) as refused:
        _refuse_serve_latest(served["serves"], False, "the served version")
    assert refused.value.exit_code == 2
    _refuse_serve_latest(served["serves"], True, "the served version")  # allowed: a warning only
    _refuse_serve_latest("test_start", False, "the served version")


def test_likes_of_users_are_the_likes_of_those_users_in_the_window(trained):
    from app import columns as c
    from training import data

    db = make_engine(trained["db_url"])
    with db.connect() as conn:
        every = data.likes(conn)
        users = every[c.USER_ID].unique()[:40]
        lo, hi = int(every["ts"].quantile(0.3)), int(every["ts"].quantile(0.8))
        got = data.likes_of_users(conn, users, lo, hi)
    db.dispose()
    want = every[every[c.USER_ID].isin(users) & (every["ts"] >= lo) & (every["ts"] < hi)]
    assert len(want) > 0
    pd.testing.assert_frame_equal(got.reset_index(drop=True), want.reset_index(drop=True), check_dtype=False)
