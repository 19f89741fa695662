"""`/console/`: read-only pages over the engine, the live state, the A/B report and the metrics.

Routes are thin: parse the query, call the page's module, render its template. Scoring runs in the
same bounded thread pool as the recommendation route, so the console never takes more cores than the
API may. Nothing here writes to the database: the rankings shown are not logged as exposures.
"""

from __future__ import annotations

import random
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Literal

import anyio.to_thread
from fastapi import APIRouter, HTTPException, Query, Request
from fastapi.responses import FileResponse, HTMLResponse, RedirectResponse, Response
from fastapi.templating import Jinja2Templates
from pydantic import BaseModel, ConfigDict, Field, field_validator

from app.api.routes_ops import promotion_of, refresh_gauges, state_report
from app.artifacts import MODEL_FILES
from app.console import experiment, service
from app.console.explain import NotExplainable, explain
from app.console.feed import build_feed, epoch, served_model
from app.engine import Recommender
from app.lifecycle import serving_now
from app.moments import Moment

HERE = Path(__file__).resolve().parent
templates = Jinja2Templates(directory=HERE / "templates")
router = APIRouter(prefix="/console", include_in_schema=False)
MAX_ID = 2**63 - 1


class _Form(BaseModel):
    """Query of a console form: an empty field is a missing one (browsers send `user=` for a blank box)."""

    model_config = ConfigDict(extra="ignore")

    @field_validator("*", mode="before")
    @classmethod
    def _blank_is_missing(cls, v: object) -> object:
        return None if isinstance(v, str) and not v.strip() else v


class FeedQuery(_Form):
    user: int | None = Field(None, ge=0, le=MAX_ID, description="User id")
    time: Moment | None = Field(None, description="Moment (UTC unless it names a zone)")
    limit: int | None = Field(None, ge=1, le=100, description="Posts per model, 1-100")


class WhyQuery(_Form):
    user: int | None = Field(None, ge=0, le=MAX_ID, description="User id")
    post: int | None = Field(None, ge=0, le=MAX_ID, description="Post id")
    time: Moment | None = Field(None, description="Moment (UTC unless it names a zone)")
    model: Literal["control", "test"] | None = None


def _recommender(request: Request) -> Recommender:
    return serving_now(request.app.state).recommender  # one read: a model swap cannot split a page


def default_moment(recommender: Recommender) -> datetime:
    """The first whole minute after the newest event the state holds: "now" in the data's own time."""
    t = -(-(recommender.state.latest_event + 1) // 60) * 60
    return datetime.fromtimestamp(t, tz=UTC).replace(tzinfo=None)


def _moment(request: Request, time: datetime | None) -> datetime:
    return time if time is not None else default_moment(_recommender(request))


def _render(request: Request, name: str, status_code: int = 200, **context) -> HTMLResponse:
    return templates.TemplateResponse(request, name, {"nav": name.removesuffix(".html"), **context},
                                      status_code=status_code)


def error_page(request: Request, status_code: int, title: str, errors: list[dict]) -> HTMLResponse:
    """An HTML error naming each bad field (the API answers the same errors in JSON)."""
    return _render(request, "error.html", status_code=status_code, title=title, errors=errors)


@router.get("/")
async def index() -> RedirectResponse:
    return RedirectResponse("/console/feed", status_code=307)


@router.get("/feed", response_class=HTMLResponse)
async def feed(request: Request, q: Annotated[FeedQuery, Query()]) -> HTMLResponse:
    recommender = _recommender(request)
    moment, limit = _moment(request, q.time), q.limit or 10
    page = None
    if q.user is not None:
        page = await anyio.to_thread.run_sync(build_feed, recommender, request.app.state.db,
                                              request.app.state.settings, q.user, moment, limit,
                                              limiter=request.app.state.scoring_limiter)
    return _render(request, "feed.html", page=page, user=q.user, moment=moment, limit=limit)


@router.get("/feed/random")
async def random_feed(request: Request, q: Annotated[FeedQuery, Query()]) -> RedirectResponse:
    """A user the state knows, drawn at random; the page it leads to has its own address."""
    ids = _recommender(request).state.snapshot.user_ids
    if not len(ids):
        raise HTTPException(404, "the state holds no users")
    user = int(ids[random.randrange(len(ids))])
    moment = _moment(request, q.time).isoformat(timespec="seconds")
    return RedirectResponse(f"/console/feed?user={user}&time={moment}&limit={q.limit or 10}", status_code=303)


@router.get("/why", response_class=HTMLResponse)
async def why(request: Request, q: Annotated[WhyQuery, Query()]) -> HTMLResponse:
    recommender = _recommender(request)
    moment, model = _moment(request, q.time), q.model
    if model is None:  # the model the API serves this user, when it has SHAP values
        served = served_model(request.app.state.settings, q.user)[1] if q.user is not None else "test"
        model = served if served in MODEL_FILES else "test"
    form = {"user": q.user, "post": q.post, "moment": moment, "model": model}
    if q.user is None or q.post is None:  # the form alone, to ask for a (user, post, moment)
        return _render(request, "why.html", r=None, form=form)
    try:
        result = await anyio.to_thread.run_sync(explain, recommender, model, q.user, q.post, epoch(moment),
                                                limiter=request.app.state.scoring_limiter)
    except NotExplainable as exc:
        return error_page(request, 404, "Nothing to explain", [{"field": exc.field, "message": str(exc)}])
    post = recommender.posts.get(q.post, {"text": "", "topic": ""})
    biggest = max((abs(c.shap) for c in result.contributions), default=0.0) or 1.0
    return _render(request, "why.html", r=result, form=form, post=post, moment=moment, biggest=biggest,
                   features_as_of=datetime.fromtimestamp(result.features_as_of, tz=UTC).replace(tzinfo=None))


class WindowQuery(_Form):
    first: str | None = Field(None, pattern=r"^\d{4}-\d{2}-\d{2}$", description="First day of a window")
    last: str | None = Field(None, pattern=r"^\d{4}-\d{2}-\d{2}$", description="Last day of a window")


@router.get("/experiment", response_class=HTMLResponse)
async def experiment_page(request: Request, q: Annotated[WindowQuery, Query()]) -> HTMLResponse:
    report_dir = request.app.state.settings.console_report_dir
    try:
        report, problem = experiment.load_report(report_dir), None
    except (FileNotFoundError, ValueError) as exc:
        report, problem = None, str(exc)
    window = None
    if report is not None and (q.first or q.last):
        days = [d["day"] for d in report.summary.get("daily", [])]
        errors = [{"field": name, "message": f"{value} is not a day of this report ({days[0]} .. {days[-1]})"
                   if days else "this report has no per-day counts"}
                  for name, value in (("first", q.first), ("last", q.last)) if value and value not in days]
        if not errors and q.first and q.last and q.first > q.last:
            errors.append({"field": "last", "message": f"{q.last} is before the first day {q.first}"})
        if errors:
            return error_page(request, 422, "Please correct the window", errors)
        deff = (report.summary.get("power") or {}).get("design_effect", 1.0)
        window = experiment.window_summary(report.summary["daily"], q.first or days[0], q.last or days[-1], deff)
    return _render(request, "experiment.html", report=report, problem=problem, window=window)


@router.get("/experiment/plots/{name}")
async def experiment_plot(request: Request, name: str) -> Response:
    if name not in experiment.PLOTS:  # only the report's own plots: no path from the URL reaches the disk
        raise HTTPException(404, f"no plot {name!r}; the report has {sorted(experiment.PLOTS)}")
    path = Path(request.app.state.settings.console_report_dir) / name
    if not path.is_file():
        raise HTTPException(404, f"plot {name} not written by this report")
    return FileResponse(path, media_type="image/png")


@router.get("/service", response_class=HTMLResponse)
async def service_page(request: Request) -> HTMLResponse:
    app_state = request.app.state
    serving = serving_now(app_state)  # one read: the recommender and its follower together
    recommender = serving.recommender
    refresh_gauges(app_state)
    values = service.samples(app_state.metrics.registry)
    uptime = service.uptime_since(app_state.metrics.created)
    watcher = getattr(app_state, "watcher", None)
    manifest = recommender.manifest.data
    responses = sorted(((labels["model"], labels["exp_group"], int(v))
                        for labels, v in values.get("recommendations_total", [])), key=lambda x: x[:2])
    return _render(request, "service.html", version=recommender.version, manifest=manifest,
                   models={k: {kk: vv for kk, vv in v.items() if kk not in ("features", "importance")}
                           for k, v in manifest.get("models", {}).items()},
                   importance={k: sorted(v.get("importance", {}).items(), key=lambda kv: -kv[1])[:5]
                               for k, v in manifest.get("models", {}).items()},
                   uptime=uptime, traffic=service.traffic(values, uptime), responses=responses,
                   log={"queue": service.value(values, "exposure_log_queue_depth"),
                        "dropped": service.value(values, "exposure_log_dropped_total"),
                        "written": service.value(values, "exposure_log_written_total"),
                        "capacity": app_state.settings.log_queue_size},
                   state=state_report(recommender, serving.follower),
                   promotion=promotion_of(recommender),
                   swaps=list(reversed(watcher.status.history)) if watcher is not None else [],
                   swap_counts={"swaps": service.value(values, "model_swaps_total"),
                                "refusals": service.value(values, "model_refusals_total")},
                   watch_seconds=app_state.settings.model_watch_seconds,
                   exclusion={"hours": recommender.state.exclude_viewed_seconds / 3600,
                              "last_views": recommender.state.exclude_last_views})
