"""A/B analysis: hand-counted hits from the database, A/A false positives, a real effect, broken splits."""

import json
from datetime import datetime, timedelta

import numpy as np
import pandas as pd
import pytest
from sqlalchemy import insert
from typer.testing import CliRunner

from app import columns as c
from app.ab import exp_group
from app.db import create_course_tables, create_log_table, make_engine
from app.tables import feed_data, post_text_df, recommendation_log, user_data
from training.abreport import ABConfig, _bucket, analyse, bucket_stats, design_effect, load_exposures, parse_window
from training.cli import app as cli
from training.data import to_seconds

T = datetime(2022, 1, 5, 12, 0, 0)


def synthetic(seed: int, users: int = 1200, rate_control: float = 0.3, rate_test: float = 0.3,
              split: float | None = None) -> pd.DataFrame:
    """Requests of users whose own hit propensity varies (so requests of a user are correlated)."""
    rng = np.random.default_rng(seed)
    ids = np.arange(1, users + 1) + seed * 10_000_000
    groups = (np.where(rng.random(users) < split, "control", "test") if split is not None
              else np.array([exp_group(int(u), "s", 50) for u in ids]))
    n_req = rng.poisson(2.0, users) + 1
    base = np.where(groups == "control", rate_control, rate_test)
    propensity = rng.beta(base * 4, (1 - base) * 4)
    user = np.repeat(ids, n_req)
    hit = (rng.random(len(user)) < np.repeat(propensity, n_req)).astype(int)
    return pd.DataFrame({c.USER_ID: user, "exp_group": np.repeat(groups, n_req), "hit": hit, "liked": hit,
                         "ts": 1_640_995_200 + rng.integers(0, 3 * 86_400, len(user))})


def test_parse_window():
    assert parse_window("90s") == 90 and parse_window("2h") == 7200
    with pytest.raises(ValueError, match="--window"):
        parse_window("soon")


def test_aa_false_positive_rate_is_alpha():
    """400 A/A experiments: the decision rule errs at about alpha; the request-level z-test, which
    ignores that a user's requests are correlated, errs far more often (measured: 0.0625 vs 0.1175)."""
    config = ABConfig(n_boot=20)
    runs = [analyse(synthetic(seed), config) for seed in range(400)]
    fpr = np.mean([r["verdict"] in ("test wins", "control wins") for r in runs])
    z_fpr = np.mean([r["p_values"]["z_test"] < 0.05 for r in runs])
    assert 0.03 <= fpr <= 0.07, fpr
    assert z_fpr > 0.09, z_fpr
    assert not any(r["verdict"].startswith("invalid") for r in runs)


def test_real_effect_is_found_with_its_size():
    s = analyse(synthetic(1, users=6000, rate_control=0.30, rate_test=0.36), ABConfig(n_boot=300))
    assert s["verdict"] == "test wins"
    d = s["difference"]
    assert abs(d["estimate"] - 0.06) < 0.03 and 0 < d["ci_low"] < d["estimate"] < d["ci_high"]
    assert s["power"]["requests_per_group_needed_for_observed_effect"] > 0


def test_design_effect_sees_correlated_requests():
    """Requests of one user share a propensity: the variance of bucket means is inflated and the power
    estimate grows with it; independent requests give a design effect of about 1."""
    correlated = synthetic(3, users=6000)
    independent = correlated.assign(hit=(np.random.default_rng(3).random(len(correlated)) < 0.3).astype(int))
    config = ABConfig(n_boot=20)
    for frame in (correlated, independent):
        frame["bucket"] = _bucket(frame[c.USER_ID].to_numpy(), config.bucket_salt, config.n_buckets)
    assert design_effect(bucket_stats(correlated)) > 1.2  # 1.33 for these seeds
    assert design_effect(bucket_stats(independent)) < 1.1
    effect = analyse(synthetic(1, users=6000, rate_control=0.30, rate_test=0.36), config)["power"]
    assert effect["design_effect"] > 1.2


def test_sample_ratio_mismatch_is_flagged():
    s = analyse(synthetic(2, users=20_000, split=0.45), ABConfig(n_boot=20))
    assert s["srm_p_value"] < 0.001 and s["verdict"].startswith("invalid: sample ratio mismatch")


def test_users_in_both_groups_invalidate():
    frame = synthetic(3)
    frame.loc[frame.index[:2], "exp_group"] = ["control", "test"]
    frame.loc[frame.index[:2], c.USER_ID] = frame[c.USER_ID].iloc[0]
    assert "both groups" in analyse(frame, ABConfig(n_boot=20))["verdict"]


def _fill(url: str) -> None:
    engine = make_engine(url)
    create_course_tables(engine)
    create_log_table(engine)
    users = [{c.USER_ID: u, c.GENDER: 0, c.AGE: 30, c.COUNTRY: "Russia", c.CITY: "Omsk", c.EXP_GROUP: 0,
              c.OS: "iOS", c.SOURCE: "ads"} for u in (1, 2, 3)]
    posts = [{c.POST_ID: p, c.TEXT: f"post {p}", c.TOPIC: "tech"} for p in range(1, 11)]
    log = [  # request, user, group, posts
        ("r1", 1, "control", "1 2 3"), ("r2", 2, "test", "4 5 6"), ("r3", 3, "test", "7 8 9"),
        ("r4", 1, "control", "10 1 2"),
    ]
    likes = [
        (1, 2, T + timedelta(minutes=10)),  # r1 hit (and r4 lists post 2, but r4 is an hour later)
        (2, 5, T + timedelta(minutes=59)),  # r2 hit, just inside
        (3, 8, T + timedelta(minutes=61)),  # r3: just outside the hour
        (1, 10, T - timedelta(minutes=1)),  # before r4 was served: no hit
    ]
    with engine.begin() as conn:
        conn.execute(insert(user_data), users)
        conn.execute(insert(post_text_df), posts)
        conn.execute(insert(recommendation_log), [
            {"request_id": r, c.USER_ID: u, "requested_at": T if r != "r4" else T + timedelta(hours=2),
             "served_at": T, c.EXP_GROUP: g, "model_name": g, "model_version": "v1", "post_ids": p}
            for r, u, g, p in log])
        conn.execute(insert(feed_data), [{c.TIMESTAMP: t, c.USER_ID: u, c.POST_ID: p, c.ACTION: c.LIKE,
                                          c.TARGET: None} for u, p, t in likes])
    engine.dispose()


def test_hits_counted_from_the_database(db_url, tmp_path):
    _fill(db_url)
    engine = make_engine(db_url)
    with engine.connect() as conn:
        frame, health = load_exposures(conn, None, None, 3600)
    engine.dispose()
    hits = dict(zip(frame["request_id"], frame["hit"], strict=True))
    assert hits == {"r1": 1, "r2": 1, "r3": 0, "r4": 0}
    s = analyse(frame, ABConfig(n_boot=50), health["catalogue"], health)
    assert s["groups"]["control"] | {"models": None} == {"users": 1, "requests": 2, "hitrate": 0.5,
                                                          "likes_per_user": 1.0, "coverage": 0.4, "models": None}
    assert s["groups"]["test"]["hitrate"] == 0.5 and s["groups"]["test"]["users"] == 2
    assert s["verdict"].startswith("invalid: ") and "fewer than 100" in s["verdict"]


def test_cli_writes_report(sqlite_url, tmp_path):
    _fill(sqlite_url)
    out = tmp_path / "rep"
    r = CliRunner().invoke(cli, ["ab-report", "--db", sqlite_url, "--out", str(out), "--window", "2h",
                                 "--since", "2022-01-01"])
    assert r.exit_code == 0, r.output
    summary = json.loads((out / "summary.json").read_text())
    assert summary["groups"]["test"]["hitrate"] == 1.0  # r3's like at 61 min counts in a 2 h window
    assert {"srm_p_value", "difference", "p_values", "verdict"} <= set(summary)
    assert (out / "report.md").read_text().startswith("# A/B test report")
    assert (out / "daily_hitrate.png").stat().st_size > 0 and (out / "per_user_hitrate.png").exists()


@pytest.mark.parametrize("args, message", [
    (["--window", "soon"], "--window"), (["--since", "last week"], "ISO"), ([], "no recommendation_log"),
])
def test_cli_errors(sqlite_url, tmp_path, args, message):
    make_engine(sqlite_url).connect().close()
    r = CliRunner().invoke(cli, ["ab-report", "--db", sqlite_url, "--out", str(tmp_path / "o"), *args])
    assert r.exit_code == 1 and message in r.output


def test_since_excludes_and_counts(sqlite_url):
    _fill(sqlite_url)
    engine = make_engine(sqlite_url)
    with engine.connect() as conn:
        frame, health = load_exposures(conn, to_seconds(T + timedelta(hours=1)), None, 3600)
    assert list(frame["request_id"]) == ["r4"] and health["requests_outside_period"] == 3


def test_group_intervals_and_daily_counts():
    """Each group's bootstrap interval holds its hit rate; the per-day counts add up to the groups."""
    import doctest

    import training.abreport

    assert doctest.testmod(training.abreport).failed == 0
    frame = synthetic(3, users=800)
    s = analyse(frame, ABConfig(n_boot=200))
    for g in ("control", "test"):
        lo, hi = s["groups"][g]["hitrate_ci"]
        assert lo < s["groups"][g]["hitrate"] < hi
        assert sum(d[g]["requests"] for d in s["daily"]) == s["groups"][g]["requests"]
        assert sum(d[g]["hits"] for d in s["daily"]) == int(frame.loc[frame["exp_group"] == g, "hit"].sum())
    assert [d["day"] for d in s["daily"]] == sorted(d["day"] for d in s["daily"])
