"""A/B analysis of what the service served (`recommendation_log`) against later likes (`feed_data`).

A request is a hit when the same user liked at least one of its recommended posts within `window`
after the moment it was served for (`requested_at`: the request's `time`, which is the wall clock
in production and the simulated clock in simulations).

Decision rule: the primary test is a Welch t-test on per-bucket hit rates (users hashed into 100
buckets with a salt), which respects that requests of one user are correlated and keeps its false-
positive rate at alpha (checked by an A/A test). The verdict names a winner when that test is
significant; the user-clustered bootstrap interval of the difference gives the effect's size. The
request-level z-test and the per-user Mann-Whitney test are reported beside it, not used for the
decision: the z-test treats a user's requests as independent and is too optimistic.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from scipy import stats
from sqlalchemy import Connection, func, inspect, select
from statsmodels.stats.power import NormalIndPower
from statsmodels.stats.proportion import proportion_effectsize, proportions_ztest

from app import columns as c
from app.tables import feed_data, post_text_df, recommendation_log
from training.data import epoch, to_datetime

GROUPS = ("control", "test")


class ReportError(ValueError):
    """Bad arguments or nothing to analyse; the message says which."""


def parse_window(text: str) -> int:
    """Seconds in '30m', '1h', '2h', '1d', '90s'.

    >>> parse_window("1h"), parse_window("30m"), parse_window("1d")
    (3600, 1800, 86400)
    """
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([smhd])\s*", text or "")
    if not m:
        raise ReportError(f"--window {text!r}: use a number and a unit, like 30m, 1h or 1d")
    return int(float(m.group(1)) * {"s": 1, "m": 60, "h": 3600, "d": 86_400}[m.group(2)])


@dataclass
class ABConfig:
    window: int = 3600
    control_percent: int = 50
    bucket_salt: str = "ab-buckets"
    n_buckets: int = 100
    n_boot: int = 2000
    alpha: float = 0.05
    srm_alpha: float = 0.001
    min_requests: int = 100
    seed: int = 0


# ------------------------------------------------------------------ loading
def load_exposures(conn: Connection, since: int | None, until: int | None, window: int) -> tuple[pd.DataFrame, dict]:
    """One row per logged request in [since, until] with its hit; plus health counts."""
    if not inspect(conn).has_table(recommendation_log.name):
        raise ReportError("no recommendation_log table: the service has not logged anything in this database")
    t = epoch(recommendation_log.c.requested_at)
    q = select(recommendation_log.c.request_id, recommendation_log.c.user_id, t.label("ts"),
               recommendation_log.c.exp_group, recommendation_log.c.model_name, recommendation_log.c.model_version,
               recommendation_log.c.post_ids)
    total = conn.execute(select(func.count()).select_from(recommendation_log)).scalar_one()
    if since is not None:
        q = q.where(recommendation_log.c.requested_at >= to_datetime(since))
    if until is not None:
        q = q.where(recommendation_log.c.requested_at <= to_datetime(until))
    log = pd.DataFrame(conn.execute(q).all(), columns=["request_id", c.USER_ID, "ts", "exp_group", "model_name",
                                                       "model_version", "post_ids"])
    if log.empty:
        raise ReportError("recommendation_log has no requests in the chosen period")
    posts = log["post_ids"].str.split()
    shown = pd.DataFrame({"req": np.repeat(np.arange(len(log)), posts.str.len()),
                          c.POST_ID: np.concatenate(posts.to_numpy()).astype(np.int64)})
    shown[c.USER_ID] = log[c.USER_ID].to_numpy()[shown["req"]]
    shown["ts"] = log["ts"].to_numpy()[shown["req"]]
    likes = _likes_of(conn, log[c.USER_ID].unique(), int(log["ts"].min()), int(log["ts"].max()) + window)
    hits = shown.merge(likes, on=[c.USER_ID, c.POST_ID], how="inner")
    hits = hits[(hits["like_ts"] > hits["ts"]) & (hits["like_ts"] <= hits["ts"] + window)]
    liked = hits.drop_duplicates(["req", c.POST_ID]).groupby("req").size()
    log["shown"] = posts.str.len().to_numpy()
    log["liked"] = liked.reindex(np.arange(len(log)), fill_value=0).to_numpy()
    log["hit"] = (log["liked"] > 0).astype(int)
    n_posts = conn.execute(select(func.count()).select_from(post_text_df)).scalar_one()
    known = set(r[0] for r in conn.execute(select(post_text_df.c.post_id)))
    health = {"log_requests_total": int(total), "requests_outside_period": int(total - len(log)),
              "recommended_posts_unknown": int((~shown[c.POST_ID].isin(known)).sum()), "catalogue": int(n_posts)}
    return log.drop(columns=["post_ids"]).assign(posts=posts.to_numpy()), health


def _likes_of(conn: Connection, users: np.ndarray, lo: int, hi: int) -> pd.DataFrame:
    parts = []
    ids = [int(u) for u in users]
    for i in range(0, len(ids), 500):
        q = select(feed_data.c.user_id, feed_data.c.post_id, epoch(feed_data.c.timestamp).label("like_ts")).where(
            feed_data.c.action == c.LIKE, feed_data.c.user_id.in_(ids[i:i + 500]),
            feed_data.c.timestamp > to_datetime(lo), feed_data.c.timestamp <= to_datetime(hi))
        parts.append(pd.DataFrame(conn.execute(q).all(), columns=[c.USER_ID, c.POST_ID, "like_ts"]))
    return pd.concat(parts, ignore_index=True) if parts else pd.DataFrame(columns=[c.USER_ID, c.POST_ID, "like_ts"])


# ------------------------------------------------------------------ statistics
def _bucket(user_ids: np.ndarray, salt: str, n: int) -> np.ndarray:
    unique, inverse = np.unique(np.asarray(user_ids, dtype=np.int64), return_inverse=True)
    buckets = np.array([int(hashlib.md5((str(int(u)) + salt).encode()).hexdigest(), 16) % n for u in unique])
    return buckets[inverse]


def _cluster_bootstrap(per_user: pd.DataFrame, config: ABConfig) -> tuple[float, float, dict[str, tuple[float, float]]]:
    """Interval of hitrate(test) - hitrate(control), resampling users (their requests stay together),
    and each group's own hit-rate interval from the same resamples."""
    rng = np.random.default_rng(config.seed)
    diffs = np.empty(config.n_boot)
    arrays = {g: per_user[per_user["exp_group"] == g][["hits", "requests"]].to_numpy(float) for g in GROUPS}
    rates = {g: np.empty(config.n_boot) for g in GROUPS}
    for b in range(config.n_boot):
        for g, arr in arrays.items():
            pick = arr[rng.integers(0, len(arr), len(arr))]
            rates[g][b] = pick[:, 0].sum() / pick[:, 1].sum()
        diffs[b] = rates["test"][b] - rates["control"][b]
    q = [config.alpha / 2, 1 - config.alpha / 2]
    lo, hi = np.quantile(diffs, q)
    per_group = {g: tuple(float(x) for x in np.quantile(r, q)) for g, r in rates.items()}
    return float(lo), float(hi), per_group


def daily_counts(frame: pd.DataFrame) -> list[dict]:
    """Requests and hits per UTC day and group, oldest first: what a cumulative plot of the difference
    needs (the console draws it from summary.json).

    >>> daily_counts(pd.DataFrame({"exp_group": ["control", "test", "test"], "hit": [1, 0, 1],
    ...                            "ts": [0, 10, 86_400]}))  # doctest: +NORMALIZE_WHITESPACE
    [{'day': '1970-01-01', 'control': {'requests': 1, 'hits': 1}, 'test': {'requests': 1, 'hits': 0}},
     {'day': '1970-01-02', 'control': {'requests': 0, 'hits': 0}, 'test': {'requests': 1, 'hits': 1}}]
    """
    day = pd.to_datetime(frame["ts"], unit="s").dt.strftime("%Y-%m-%d")
    agg = frame.assign(day=day).groupby(["day", "exp_group"])["hit"].agg(["size", "sum"])
    out = []
    for d in sorted(day.unique()):
        row: dict = {"day": d}
        for g in GROUPS:
            n, h = agg.loc[(d, g)] if (d, g) in agg.index else (0, 0)
            row[g] = {"requests": int(n), "hits": int(h)}
        out.append(row)
    return out


def bucket_stats(frame: pd.DataFrame) -> pd.DataFrame:
    """Hit rate ("mean") and requests ("size") per (exp_group, bucket)."""
    return frame.groupby(["exp_group", "bucket"])["hit"].agg(["mean", "size"])


def design_effect(buckets: pd.DataFrame) -> float:
    """How much a user's correlated requests inflate the variance of a hit rate, from the spread of
    the bucket means (`bucket_stats`): Pearson's chi-square of bucket hit rates around their group's
    rate, over its degrees of freedom (1 for independent requests; never reported below 1)."""
    chi2, dof = 0.0, 0
    for _, b in buckets.groupby(level="exp_group"):
        p = (b["mean"] * b["size"]).sum() / b["size"].sum()
        if not 0 < p < 1:
            continue
        chi2 += float((b["size"] * (b["mean"] - p) ** 2).sum() / (p * (1 - p)))
        dof += len(b) - 1
    return max(1.0, chi2 / dof) if dof > 0 else 1.0


def analyse(frame: pd.DataFrame, config: ABConfig, catalogue: int | None = None, health: dict | None = None) -> dict:
    """Everything the report says, from one row per request (user_id, exp_group, ts, hit, liked, posts?)."""
    frame = frame[frame["exp_group"].isin(GROUPS)]
    per_user = frame.groupby([c.USER_ID, "exp_group"]).agg(hits=("hit", "sum"), requests=("hit", "size"),
                                                           liked=("liked", "sum")).reset_index()
    per_user["hitrate"] = per_user["hits"] / per_user["requests"]
    both = int((per_user.groupby(c.USER_ID)["exp_group"].nunique() > 1).sum())
    groups = {}
    for g in GROUPS:
        f, u = frame[frame["exp_group"] == g], per_user[per_user["exp_group"] == g]
        groups[g] = {"users": int(len(u)), "requests": int(len(f)),
                     "hitrate": round(float(f["hit"].mean()), 4) if len(f) else None,
                     "likes_per_user": round(float(u["liked"].sum() / len(u)), 4) if len(u) else None}
        if "posts" in f and catalogue:
            groups[g]["coverage"] = round(len({p for ps in f["posts"] for p in ps}) / catalogue, 4)
        if "model_name" in f:
            groups[g]["models"] = sorted(f["model_name"].unique().tolist())
    n_c, n_t = groups["control"]["users"], groups["test"]["users"]
    srm_p = float(stats.binomtest(n_c, n_c + n_t, config.control_percent / 100).pvalue) if n_c + n_t else 1.0
    out: dict = {"groups": groups, "srm_p_value": srm_p, "users_in_both_groups": both,
                 "window_seconds": config.window, "health": health or {}}
    reasons = []
    if srm_p < config.srm_alpha:
        reasons.append(f"sample ratio mismatch (users {n_c}:{n_t} against {config.control_percent}% control, "
                       f"p={srm_p:.2g})")
    if both:
        reasons.append(f"{both} users were served in both groups")
    if min(groups["control"]["requests"], groups["test"]["requests"]) < config.min_requests:
        reasons.append(f"fewer than {config.min_requests} requests in a group")
    if min(n_c, n_t) < 2:
        out.update(difference=None, p_values=None, verdict="invalid: " + "; ".join(reasons or ["no users"]))
        return out

    hc, ht = frame.loc[frame["exp_group"] == "control", "hit"], frame.loc[frame["exp_group"] == "test", "hit"]
    _, z_p = proportions_ztest([ht.sum(), hc.sum()], [len(ht), len(hc)])
    mw_p = stats.mannwhitneyu(per_user.loc[per_user["exp_group"] == "test", "hitrate"],
                              per_user.loc[per_user["exp_group"] == "control", "hitrate"]).pvalue
    frame = frame.assign(bucket=_bucket(frame[c.USER_ID].to_numpy(), config.bucket_salt, config.n_buckets))
    buckets = bucket_stats(frame)
    bt = stats.ttest_ind(buckets.loc["test", "mean"], buckets.loc["control", "mean"], equal_var=False)
    lo, hi, group_ci = _cluster_bootstrap(per_user, config)
    for g, (g_lo, g_hi) in group_ci.items():
        groups[g]["hitrate_ci"] = [round(g_lo, 4), round(g_hi, 4)]
    if "ts" in frame:
        out["daily"] = daily_counts(frame)
    pc, pt = hc.mean(), ht.mean()
    effect = proportion_effectsize(pt, pc) if 0 < pc < 1 and 0 < pt < 1 else 0.0
    # Power for independent requests, corrected by the design effect: the verdict's test respects that
    # a user's requests are correlated, so it needs deff times as many requests as a naive formula says
    deff = design_effect(buckets)
    power = NormalIndPower()
    needed = (deff * power.solve_power(abs(effect), alpha=config.alpha, power=0.8) if abs(effect) > 1e-9
              else float("inf"))
    mde = power.solve_power(nobs1=len(hc) / deff, alpha=config.alpha, power=0.8, ratio=len(ht) / len(hc))
    out["difference"] = {"estimate": round(float(pt - pc), 4), "relative": round(float(pt / pc - 1), 4) if pc else None,
                         "ci_low": round(lo, 4), "ci_high": round(hi, 4)}
    out["p_values"] = {"z_test": float(z_p), "mann_whitney": float(mw_p), "bucket_t_test": float(bt.pvalue)}
    out["power"] = {"requests_per_group_needed_for_observed_effect": None if np.isinf(needed) else int(np.ceil(needed)),
                    "minimal_detectable_effect_cohens_h": round(float(mde), 4), "design_effect": round(deff, 3),
                    "alpha": config.alpha, "power": 0.8}
    if reasons:
        out["verdict"] = "invalid: " + "; ".join(reasons)
    elif bt.pvalue < config.alpha:
        out["verdict"] = "test wins" if pt > pc else "control wins"
    else:
        out["verdict"] = "no significant difference"
    return out


def aa_false_positive_rate(frame: pd.DataFrame, resamples: int, config: ABConfig) -> float:
    """Re-split one group's own users in two with fresh salts, many times, and count how often the
    verdict names a winner: the false-positive rate of the decision rule on this very log."""
    base = frame[frame["exp_group"] == "control"]
    quiet = ABConfig(**{**asdict(config), "n_boot": 20, "min_requests": 0})
    wins = 0
    for i in range(resamples):
        halves = _bucket(base[c.USER_ID].to_numpy(), f"aa-{i}", 2)
        fake = base.assign(exp_group=np.where(halves == 0, "control", "test"))
        wins += analyse(fake, ABConfig(**{**asdict(quiet), "control_percent": 50}))["verdict"] in (
            "test wins", "control wins")
    return wins / resamples if resamples else float("nan")


# ------------------------------------------------------------------ output
def verdict_text(s: dict) -> str:
    if s.get("difference") is None:
        return s["verdict"]
    d, p = s["difference"], s["p_values"]
    g = s["groups"]
    return (f"**{s['verdict']}**: request hit rate {g['test']['hitrate']:.4f} (test) vs {g['control']['hitrate']:.4f} "
            f"(control), difference {d['estimate']:+.4f} ({(d['relative'] or 0):+.1%}), 95% user-clustered bootstrap "
            f"interval [{d['ci_low']:+.4f}, {d['ci_high']:+.4f}]; bucket t-test p={p['bucket_t_test']:.3g} "
            f"(primary), z-test p={p['z_test']:.3g}, Mann-Whitney p={p['mann_whitney']:.3g}.")


def _plots(frame: pd.DataFrame, out_dir: Path) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    frame = frame[frame["exp_group"].isin(GROUPS)].assign(day=pd.to_datetime(frame["ts"], unit="s").dt.date)
    fig, ax = plt.subplots(figsize=(7, 3.5))
    for g in GROUPS:
        daily = frame[frame["exp_group"] == g].groupby("day")["hit"].mean()
        ax.plot(daily.index, daily.to_numpy(), marker="o", label=g)
    ax.set(title="Daily request hit rate", xlabel="day", ylabel="hit rate")
    ax.legend()
    fig.autofmt_xdate()
    fig.tight_layout()
    fig.savefig(out_dir / "daily_hitrate.png", dpi=110)
    plt.close(fig)
    per_user = frame.groupby([c.USER_ID, "exp_group"])["hit"].mean().reset_index()
    fig, ax = plt.subplots(figsize=(7, 3.5))
    bins = np.linspace(0, 1, 21)
    for g in GROUPS:
        ax.hist(per_user.loc[per_user["exp_group"] == g, "hit"], bins=bins, alpha=0.5, label=g, density=True)
    ax.set(title="Per-user hit rate", xlabel="share of a user's requests with a like", ylabel="density")
    ax.legend()
    fig.tight_layout()
    fig.savefig(out_dir / "per_user_hitrate.png", dpi=110)
    plt.close(fig)
    return ["daily_hitrate.png", "per_user_hitrate.png"]


def write_report(summary: dict, frame: pd.DataFrame, out_dir: Path, config: ABConfig) -> Path:
    out_dir.mkdir(parents=True, exist_ok=True)
    plots = _plots(frame, out_dir)
    (out_dir / "summary.json").write_text(json.dumps({**summary, "config": asdict(config)}, indent=2, default=str))
    g = summary["groups"]
    rows = ["| group | users | requests | hit rate | likes per user | coverage | models |",
            "|---|---|---|---|---|---|---|"]
    for name in GROUPS:
        x = g[name]
        rows.append(f"| {name} | {x['users']} | {x['requests']} | {x['hitrate']} | {x['likes_per_user']} | "
                    f"{x.get('coverage', '')} | {', '.join(x.get('models', []))} |")
    h = summary.get("health", {})
    lines = [
        "# A/B test report", "", verdict_text(summary), "",
        f"A hit: a recommended post liked by the same user within {config.window // 60} minutes after the moment "
        "it was served for.", "", *rows, "", "## Health checks", "",
        f"- Sample ratio: users {g['control']['users']}:{g['test']['users']} against {config.control_percent}% "
        f"control, binomial p = {summary['srm_p_value']:.3g} (flagged below {config.srm_alpha}).",
        f"- Users served in both groups: {summary['users_in_both_groups']}.",
        f"- Logged requests outside the period: {h.get('requests_outside_period', 0)} of "
        f"{h.get('log_requests_total', 0)}; recommended posts unknown to post_text_df: "
        f"{h.get('recommended_posts_unknown', 0)}.", "",
    ]
    if "aa" in summary:
        lines += [f"- A/A check on this log: the control group's users re-split {summary['aa']['resamples']} times "
                  f"with fresh salts; the decision rule named a winner in {summary['aa']['false_positive_rate']:.1%} "
                  f"of them (alpha {config.alpha}).", ""]
    if summary.get("p_values"):
        p, pw = summary["p_values"], summary["power"]
        lines += ["## Tests", "", "| test | p-value |", "|---|---|",
                  f"| bucket t-test (Welch, {config.n_buckets} salted buckets) — primary | {p['bucket_t_test']:.4g} |",
                  f"| two-proportion z-test on requests | {p['z_test']:.4g} |",
                  f"| Mann-Whitney U on per-user hit rate | {p['mann_whitney']:.4g} |", "",
                  f"Power: the observed effect needs about {pw['requests_per_group_needed_for_observed_effect']} "
                  f"requests per group for 80% power at alpha {config.alpha}, counting the design effect of "
                  f"{pw['design_effect']} (a user's requests are correlated, so each is worth less than an "
                  f"independent one); with the present sample the minimal detectable effect is Cohen's h = "
                  f"{pw['minimal_detectable_effect_cohens_h']}.", ""]
    lines += ["## Plots", "", *(f"![{p}]({p})" for p in plots), "",
              "Daily hit rate: both lines should move together; a gap that holds every day is the effect. "
              "Per-user hit rate: the shift between the two distributions, user by user."]
    path = out_dir / "report.md"
    path.write_text("\n".join(lines) + "\n")
    return path
