"""The evaluation report: `report.md` with plots, drawn from what `run_evaluation` computed.

Nothing is re-ranked here: curves come from the stored rankings and per-request arrays; only the
calibration plot scores held-out views again, through the same `assemble` the service uses.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from app import columns as c  # noqa: E402
from app.artifacts import LIKED_WITHIN_HORIZON  # noqa: E402
from app.engine import Recommender  # noqa: E402
from app.features import CONTROL_FEATURES, USER_NUM  # noqa: E402
from training.evaluate import K_MAX, RANKERS  # noqa: E402
from training.metrics import hit_at  # noqa: E402

AGE_BANDS = ((14, 20, "14-20"), (21, 30, "21-30"), (31, 45, "31-45"), (46, 200, "46+"))


def _hit_curves(details: dict) -> dict[str, np.ndarray]:
    rel = details["truth"].future_likes
    return {n: np.array([[hit_at(r, f, k) for k in range(1, K_MAX + 1)] for r, f in zip(details["tops"][n], rel,
                                                                                         strict=True)]).mean(axis=0)
            for n in RANKERS}


def plot_curves(details: dict, out: Path) -> str:
    full = _hit_curves(details)
    shown = {n: v.mean(axis=0) if len(v) else np.zeros(K_MAX) for n, v in details["shown"].items()}
    ks = np.arange(1, K_MAX + 1)
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
    for ax, curves, title in ((axes[0], full, "full catalogue"), (axes[1], shown, "shown set (24 h)")):
        for name in RANKERS:
            ax.plot(ks, curves[name], marker="o", ms=3, label=name)
        ax.set(title=f"hit rate@k, {title}", xlabel="k", ylabel="hit rate")
        ax.grid(alpha=0.3)
    axes[1].legend()
    fig.tight_layout()
    fig.savefig(out / "hitrate_at_k.png", dpi=110)
    plt.close(fig)
    return "hitrate_at_k.png"


def plot_calibration(engine: Recommender, views: pd.DataFrame, out: Path) -> str:
    state = engine.state
    views = views[state.user_rows(views[c.USER_ID].to_numpy()) >= 0].iloc[:20_000]
    y = views[c.TARGET].to_numpy(float)
    x = state.features_for(views[c.USER_ID].to_numpy(), views[c.POST_ID].to_numpy(),
                           views["ts"].to_numpy(np.int64), text=True)
    fig, ax = plt.subplots(figsize=(4.8, 4.2))
    top = 0.0
    for name in ("control", "test"):
        if engine.objective.get(name) == LIKED_WITHIN_HORIZON:  # not a P(like | shown): nothing to calibrate
            continue
        cols = slice(None) if name == "test" else slice(0, len(CONTROL_FEATURES))
        p = engine.models[name].predict_proba(x[:, cols])[:, 1]
        bins = pd.qcut(p, 10, labels=False, duplicates="drop")
        frame = pd.DataFrame({"p": p, "y": y, "bin": bins}).groupby("bin").mean()
        ax.plot(frame["p"], frame["y"], marker="o", label=name)
        top = max(top, frame["p"].max(), frame["y"].max())
    ax.plot([0, top], [0, top], color="grey", ls="--", lw=1)
    ax.set(title="calibration on held-out views", xlabel="predicted like probability", ylabel="observed like rate")
    ax.legend()
    fig.tight_layout()
    fig.savefig(out / "calibration.png", dpi=110)
    plt.close(fig)
    return "calibration.png"


def segments(details: dict, engine: Recommender) -> pd.DataFrame:
    """Per request: country, age band, activity decile, new or returning."""
    req = details["requests"]
    users = details["users"].set_index(c.USER_ID)
    prof = users.reindex(req[c.USER_ID])
    top = users[c.COUNTRY].value_counts().index[:3]
    country = prof[c.COUNTRY].where(prof[c.COUNTRY].isin(top), "other").to_numpy()
    age = prof[c.AGE].to_numpy()
    band = np.select([(age >= lo) & (age <= hi) for lo, hi, _ in AGE_BANDS], [b for *_, b in AGE_BANDS], "?")
    state = engine.state
    views = np.zeros(len(req))
    for i, (u, t) in enumerate(zip(req[c.USER_ID].to_numpy(), req["ts"].to_numpy(), strict=True)):
        user, _ = state.at(state.user_row(int(u)), int(t))  # views before the request's moment
        views[i] = 0 if user is None else user.view.num[0, USER_NUM.index("u_views")]
    ranks = pd.Series(views).rank(method="first")
    decile = np.ceil(ranks / len(ranks) * 10).astype(int).to_numpy()
    return pd.DataFrame({"country": country, "age band": band, "activity decile": decile,
                         "user": np.where(views > 0, "returning", "new")})


def plot_segments(details: dict, engine: Recommender, out: Path) -> str:
    seg = segments(details, engine)
    eligible = details["eligible"]
    fig, axes = plt.subplots(2, 4, figsize=(15, 6.5), sharey="row")
    for col, name in enumerate(seg.columns):
        for row, (label, values, mask) in enumerate((
            ("full-catalogue hit@5", {n: details["full"][n]["hitrate@5"] for n in RANKERS}, np.ones(len(seg), bool)),
            ("shown-set hit@5", {n: details["shown"][n][:, 4] for n in RANKERS}, eligible),
        )):
            ax = axes[row, col]
            keys = sorted(seg.loc[mask, name].unique().tolist())
            width = 0.8 / len(RANKERS)
            for i, ranker in enumerate(RANKERS):
                v = pd.Series(values[ranker], index=np.flatnonzero(mask)) if row else pd.Series(values[ranker])
                by = v.groupby(seg.loc[mask, name].to_numpy()).mean().reindex(keys)
                ax.bar(np.arange(len(keys)) + i * width, by.to_numpy(), width, label=ranker)
            ax.set_xticks(np.arange(len(keys)) + 0.4 - width / 2, [str(k) for k in keys], rotation=45, fontsize=8)
            ax.set_title(f"{label} by {name}", fontsize=9)
    axes[0, 0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out / "segments.png", dpi=100)
    plt.close(fig)
    return "segments.png"


def _metrics_table(result: dict) -> list[str]:
    names = [n for n in ("random", "popularity", "segment_popularity", "control", "test", "oracle")]
    lines = ["| metric | " + " | ".join(names) + " |", "|---" * (len(names) + 1) + "|"]
    for key in ("hitrate@1", "hitrate@5", "hitrate@10", "ndcg@5", "map@5", "shown_hitrate@5", "expected_hitrate@5",
                "roc_auc", "coverage@5", "mean_popularity@5"):
        if key not in result:
            continue
        cells = []
        for n in names:
            v = result[key].get(n)
            ci = result.get("ci95", {}).get(key, {}).get(n)
            cells.append("" if v is None else f"{v} [{ci[0]}, {ci[1]}]" if ci else f"{v}")
        lines.append(f"| {key} | " + " | ".join(cells) + " |")
    return lines


def write_report(result: dict, details: dict, engine: Recommender, out_dir: Path) -> Path:
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    plots = [plot_curves(details, out_dir), plot_calibration(engine, details["views"], out_dir),
             plot_segments(details, engine, out_dir)]
    p = result["protocol"]
    lines = [
        f"# Offline evaluation of {p['model_version']}", "",
        f"{result['requests']} requests (user, time) sampled from views in the held-out window; "
        f"{result['shown_requests']} of them are eligible for the shown-set protocol (a liked post among more than "
        f"5 shown in the {p['shown_window_hours']:g} hours after the request). Full catalogue: rank every post not "
        "liked before the request, hit = liked later in the window. Shown set: rank only what the feed showed, "
        "hit = a liked one in the top k. Cells: mean [95% bootstrap interval over users, each with all their "
        "requests].", "",
        *_metrics_table(result), "",
    ]
    if "gap_closed" in result:
        lines += [f"Gap between popularity and the oracle closed (expected hitrate@5): {result['gap_closed']}.", ""]
    if "exposure" in result:
        e = result["exposure"]
        lines += [f"Exposure: **{e.get('kind')}** (detected from the log: {e.get('detected')}; users x topics "
                  f"dependence {e.get('user_topic')}, posts x weeks {e.get('post_week')}). The protocol that fits it: "
                  f"`{result['fitting_protocol']}`.", ""]
        for name, choice in result.get("slots", {}).items():
            cold = choice.get("cold", {})
            lines += [f"- slot `{name}` serves `{choice.get('serves')}`: {choice.get('reason')}; users without "
                      f"history: `{cold.get('serves')}`{', one post per topic first' if cold.get('spread') else ''} "
                      f"(validation {cold.get('validation_hitrate@5')})"]
        lines += [""]
    lines += [
        "## Hit rate at k", "", f"![hit rate at k]({plots[0]})", "",
        "Each line is a ranker; higher is better. Under a random feed the full-catalogue panel is near zero for "
        "everyone; the shown-set panel separates the rankers, with random as the floor.", "",
        "## Calibration", "", f"![calibration]({plots[1]})", "",
        "Mean predicted like probability against the observed like rate in ten bins of held-out views; points "
        "on the dashed diagonal mean the scores can be read as probabilities.", "",
        "## By segment", "", f"![segments]({plots[2]})", "",
        "Hit rate@5 per segment for every ranker: top countries, age bands, deciles of the user's views before "
        "the snapshot, and users new since the snapshot versus returning ones.", "",
    ]
    path = out_dir / "report.md"
    path.write_text("\n".join(lines))
    return path
