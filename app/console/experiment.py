"""The Experiment page: the latest A/B analysis, read from what `python -m training ab-report` wrote.

`summary.json` holds the groups, intervals, SRM, tests and verdict, and (since the console) the
requests and hits per day, from which the cumulative difference is drawn here. The report's own PNG
plots are served beside it. Nothing is recomputed: the page shows the report the analyst ran.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

SUMMARY = "summary.json"
PLOTS = {"daily_hitrate.png": "Daily request hit rate of each group",
         "per_user_hitrate.png": "Distribution of per-user hit rates in each group"}
Z95 = 1.959964


@dataclass(frozen=True)
class CumulativePoint:
    day: str
    control_requests: int
    test_requests: int
    difference: float  # cumulative hit rate, test minus control
    low: float  # 95% interval, widened by the report's design effect
    high: float


@dataclass
class Chart:
    """An SVG line chart in a fixed viewBox: the template only draws what is computed here."""

    width: int = 640
    height: int = 240
    pad: int = 44
    line: str = ""  # polyline points
    band: str = ""  # polygon points of the interval
    zero_y: float | None = None
    y_ticks: list[tuple[float, str]] = field(default_factory=list)
    x_ticks: list[tuple[float, str]] = field(default_factory=list)
    dots: list[tuple[float, float, str]] = field(default_factory=list)


@dataclass
class Report:
    path: Path
    written_at: datetime
    summary: dict
    plots: list[tuple[str, str]]  # (file name, description) of the plots present
    cumulative: list[CumulativePoint]
    chart: Chart | None


def cumulative_difference(daily: list[dict], design_effect: float = 1.0) -> list[CumulativePoint]:
    """Cumulative hit rate of test minus control after each day, with a normal 95% interval whose
    variance is multiplied by the design effect (a user's requests are correlated).

    >>> pts = cumulative_difference([{"day": "d1", "control": {"requests": 100, "hits": 50},
    ...                               "test": {"requests": 100, "hits": 60}}])
    >>> round(pts[0].difference, 3), round(pts[0].high - pts[0].difference, 3)
    (0.1, 0.137)
    """
    out, nc, hc, nt, ht = [], 0, 0, 0, 0
    for d in daily:
        nc, hc = nc + d["control"]["requests"], hc + d["control"]["hits"]
        nt, ht = nt + d["test"]["requests"], ht + d["test"]["hits"]
        if not nc or not nt:
            continue
        pc, pt = hc / nc, ht / nt
        half = Z95 * math.sqrt(max(design_effect, 1.0) * (pc * (1 - pc) / nc + pt * (1 - pt) / nt))
        out.append(CumulativePoint(d["day"], nc, nt, pt - pc, pt - pc - half, pt - pc + half))
    return out


@dataclass(frozen=True)
class WindowSummary:
    """Hit rates of a span of the report's days, from its per-day counts (normal intervals widened by
    the report's design effect; the report's own tests cover its whole period only)."""

    first: str
    last: str
    requests: dict[str, int]
    hitrate: dict[str, float | None]
    interval: dict[str, tuple[float, float] | None]
    difference: float | None
    difference_interval: tuple[float, float] | None


def window_summary(daily: list[dict], first: str, last: str, design_effect: float = 1.0) -> WindowSummary:
    """The days from `first` to `last` (inclusive, 'YYYY-MM-DD') of a report's per-day counts.

    >>> w = window_summary([{"day": "a", "control": {"requests": 100, "hits": 50}, "test": {"requests": 100,
    ...                      "hits": 60}}, {"day": "b", "control": {"requests": 9, "hits": 0},
    ...                      "test": {"requests": 9, "hits": 9}}], "a", "a")
    >>> w.requests, w.hitrate, round(w.difference, 3)
    ({'control': 100, 'test': 100}, {'control': 0.5, 'test': 0.6}, 0.1)
    """
    days = [d for d in daily if first <= d["day"] <= last]
    deff = max(design_effect, 1.0)
    requests, rate, interval = {}, {}, {}
    for g in ("control", "test"):
        n, h = sum(d[g]["requests"] for d in days), sum(d[g]["hits"] for d in days)
        requests[g] = n
        rate[g] = h / n if n else None
        half = Z95 * math.sqrt(deff * rate[g] * (1 - rate[g]) / n) if n else None
        interval[g] = (rate[g] - half, rate[g] + half) if n else None
    diff = diff_ci = None
    if requests["control"] and requests["test"]:
        diff = rate["test"] - rate["control"]
        half = Z95 * math.sqrt(deff * sum(rate[g] * (1 - rate[g]) / requests[g] for g in ("control", "test")))
        diff_ci = (diff - half, diff + half)
    return WindowSummary(first, last, requests, rate, interval, diff, diff_ci)


def _nice_ticks(lo: float, hi: float, target: int = 5) -> list[tuple[float, float]]:
    """Round tick values inside [lo, hi], about `target` of them, 1, 2 or 5 times a power of ten apart
    (zero among them when in range): (value, step).

    >>> [v for v, _ in _nice_ticks(-0.18, 0.34)]
    [-0.1, 0.0, 0.1, 0.2, 0.3]
    """
    raw = (hi - lo) / target
    power = 10 ** math.floor(math.log10(raw)) if raw > 0 else 1.0
    step = min((m * power for m in (1, 2, 5, 10)), key=lambda st: abs(math.log(st / raw)) if raw > 0 else st)
    first = math.ceil(lo / step)
    return [(round(k * step, 12), step) for k in range(first, math.floor(hi / step) + 1)]


def _decimals(step: float) -> int:
    return max(0, -math.floor(math.log10(step) + 1e-9))


def chart_of(points: list[CumulativePoint]) -> Chart | None:
    if not points:
        return None
    ch = Chart()
    lo = min(0.0, min(p.low for p in points))
    hi = max(0.0, max(p.high for p in points))
    span = (hi - lo) or 1.0
    lo, hi = lo - 0.05 * span, hi + 0.05 * span
    inner_w, inner_h = ch.width - 2 * ch.pad, ch.height - 2 * ch.pad

    def x(i: int) -> float:
        return ch.pad + (inner_w * i / (len(points) - 1) if len(points) > 1 else inner_w / 2)

    def y(v: float) -> float:
        return ch.pad + inner_h * (hi - v) / (hi - lo)

    ch.line = " ".join(f"{x(i):.1f},{y(p.difference):.1f}" for i, p in enumerate(points))
    upper = [f"{x(i):.1f},{y(p.high):.1f}" for i, p in enumerate(points)]
    lower = [f"{x(i):.1f},{y(p.low):.1f}" for i, p in reversed(list(enumerate(points)))]
    ch.band = " ".join(upper + lower)
    ch.zero_y = y(0.0)
    ch.dots = [(x(i), y(p.difference), f"{p.day}: {p.difference:+.4f} [{p.low:+.4f}, {p.high:+.4f}]")
               for i, p in enumerate(points)]
    ch.y_ticks = [(y(v), f"{v:+.{_decimals(step)}f}" if v else "0") for v, step in _nice_ticks(lo, hi)]
    step = max(1, math.ceil(len(points) / 6))
    ch.x_ticks = [(x(i), points[i].day[5:]) for i in range(0, len(points), step)]
    return ch


def _missing(summary: object) -> list[str]:
    """Keys the page needs that a summary lacks (a hand-edited or foreign file must not break it)."""
    if not isinstance(summary, dict):
        return ["object"]
    missing = [k for k in ("verdict", "groups", "srm_p_value", "users_in_both_groups") if k not in summary]
    groups = summary.get("groups")
    for g in ("control", "test"):
        if not isinstance(groups, dict) or not isinstance(groups.get(g), dict):
            missing.append(f"groups.{g}")
        else:
            missing += [f"groups.{g}.{k}" for k in ("users", "requests", "hitrate") if k not in groups[g]]
    return missing


def load_report(report_dir: Path) -> Report:
    """The report in `report_dir`; FileNotFoundError or ValueError with the reason when there is none."""
    path = Path(report_dir) / SUMMARY
    try:
        summary = json.loads(path.read_text())
    except FileNotFoundError:
        raise FileNotFoundError(f"no A/B report in {report_dir}: run `python -m training ab-report --out "
                                f"{report_dir}`") from None
    except (OSError, json.JSONDecodeError) as exc:
        raise ValueError(f"{path} is unreadable: {exc}") from None
    missing = _missing(summary)
    if missing:
        raise ValueError(f"{path} is not an ab-report summary (no {', '.join(missing)})")
    deff = (summary.get("power") or {}).get("design_effect", 1.0)
    points = cumulative_difference(summary.get("daily", []), deff)
    plots = [(name, text) for name, text in PLOTS.items() if (Path(report_dir) / name).is_file()]
    written = datetime.fromtimestamp(path.stat().st_mtime, tz=UTC).replace(tzinfo=None)
    return Report(Path(report_dir), written, summary, plots, points, chart_of(points))
