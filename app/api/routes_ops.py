"""Liveness, readiness, the served model and Prometheus metrics."""

import json
from datetime import UTC, datetime

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from sqlalchemy.exc import SQLAlchemyError

from app.api.deps import DatabaseTimeout, MetricsDep, RecommenderDep, read_db
from app.engine import Recommender
from app.exposure import ExposureWriter
from app.follower import Follower
from app.lifecycle import serving_now
from app.metrics import Metrics
from app.queries import ping

router = APIRouter()


def _iso(seconds: int | None) -> str | None:
    return None if seconds is None else datetime.fromtimestamp(int(seconds), tz=UTC).isoformat()


def state_report(recommender: Recommender, follower: Follower | None) -> dict:
    """The live state's position: what it holds, how far behind the database it is."""
    state = recommender.state
    out = {"following": follower is not None, "base_as_of": _iso(state.base_as_of),
           "latest_event": _iso(state.latest_event), "events_applied": state.events_applied,
           "late_events": state.late_events, "pending_events": state.pending_events, "users": state.n_users,
           "compactions": state.compactions, "events_folded": state.events_folded}
    if follower is not None:
        status = follower.status
        lag = follower.lag_seconds()
        out.update({"caught_up": status.caught_up.is_set(), "applied_seq": status.applied_seq,
                    "database_seq": status.database_seq, "lag_seconds": None if lag is None else round(lag, 3),
                    "open_gaps": status.open_gaps, "users_added": status.users_added,
                    "compacting": follower.compacting,
                    "apply_rate_per_second": round(status.rate), "poll_failures": status.failures,
                    "last_error": status.last_error or None})
    else:
        out["applied_seq"] = state.snapshot.seq
    return out


# The handlers here are `async def`: they run on the event loop, not in the thread pool that database
# calls can fill, so liveness, /model and /metrics answer whatever the database does.
@router.get("/health")
async def health() -> dict:
    return {"status": "ok"}


def _models_report(request: Request) -> dict:
    watcher = getattr(request.app.state, "watcher", None)
    if watcher is None:
        return {}
    st = watcher.status
    last = st.history[-1] if st.history else None
    return {"swaps": st.swaps, "refusals": st.refusals,
            "refused": dict(st.refused), "last": None if last is None else vars(last)}


@router.get("/ready")
async def ready(request: Request) -> JSONResponse:
    """Ready when the database answers and the state has caught up with it once (or is frozen)."""
    serving = serving_now(request.app.state)  # one read: the recommender and its follower together
    recommender, follower = serving.recommender, serving.follower
    try:
        await read_db(request, ping)
        database = "ok"
    except (SQLAlchemyError, DatabaseTimeout) as exc:
        database = f"unreachable ({exc.__class__.__name__})"
    state = state_report(recommender, follower)
    caught_up = follower is None or follower.status.caught_up.is_set()
    ok = database == "ok" and caught_up
    status = "ready" if ok else ("catching up" if database == "ok" else "not ready")
    body = {"status": status, "database": database, "model_version": recommender.version, "state": state,
            "models": _models_report(request)}
    return JSONResponse(body, status_code=200 if ok else 503)


@router.get("/model")
async def model_info(request: Request, recommender: RecommenderDep) -> dict:
    """What is being served: version, cut-offs, offline metrics, the live state's base cut, and the swaps."""
    m = recommender.manifest.data
    watcher = getattr(request.app.state, "watcher", None)
    history = [vars(s) for s in watcher.status.history] if watcher is not None else []
    return {"version": recommender.version, "features_as_of": m.get("features_as_of"), "split": m.get("split"),
            "serves": m.get("serves", "test_start"),  # "latest": built with --serve-latest
            "state": m.get("state"), "exclude_viewed_hours": recommender.state.exclude_viewed_seconds / 3600,
            "exclude_last_views": recommender.state.exclude_last_views,
            "models": {name: {k: v for k, v in meta.items() if k != "features"}
                       for name, meta in m.get("models", {}).items()},
            "promotion": promotion_of(recommender), "swaps": history,
            # the log's exposure kind and what each slot serves, with the validation figures behind it
            "exposure": m.get("exposure"), "selection": m.get("selection")}


def promotion_of(recommender: Recommender) -> dict | None:
    """The gate's decision that promoted this version (training.retrain writes it beside the artifacts)."""
    path = recommender.manifest.path / "promotion.json"
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return {k: data.get(k) for k in ("at", "decision", "reason", "serving", "checks")}


def refresh_gauges(app_state) -> None:
    """Set the gauges that mirror the exposure writer, the served version and the live state: /metrics
    and the console's Service page read the registry after this, so both show the same numbers."""
    metrics: Metrics = app_state.metrics
    writer: ExposureWriter = app_state.writer
    metrics.log_queue.set(writer.depth)
    metrics.log_dropped.set(writer.dropped)
    metrics.log_written.set(writer.written)
    metrics.log_failures.set(writer.failures)
    metrics.log_spooled.set(writer.spooled)
    metrics.log_recovered.set(writer.recovered)
    metrics.log_journal_failures.set(writer.journal_failures)
    serving = serving_now(app_state)  # one read: the recommender and its follower together
    recommender, follower = serving.recommender, serving.follower
    state = recommender.state
    metrics.model_info.clear()
    metrics.model_info.labels(recommender.version).set(1)
    watcher = getattr(app_state, "watcher", None)
    if watcher is not None:
        metrics.model_swaps.set(watcher.status.swaps)
        metrics.model_refusals.set(watcher.status.refusals)
    metrics.state_events.set(state.events_applied)
    metrics.state_late.set(state.late_events)
    metrics.state_pending.set(state.pending_events)
    metrics.state_users.set(state.n_users)
    if follower is not None:
        lag = follower.lag_seconds()
        metrics.state_applied_seq.set(follower.status.applied_seq)
        metrics.state_database_seq.set(follower.status.database_seq)
        metrics.state_lag.set(-1 if lag is None else lag)
        metrics.state_rate.set(follower.status.rate)
        metrics.state_poll_failures.set(follower.status.failures)
    else:
        metrics.state_applied_seq.set(state.snapshot.seq)


@router.get("/metrics")
async def metrics(request: Request, metrics: MetricsDep) -> Response:
    refresh_gauges(request.app.state)
    return Response(generate_latest(metrics.scrape_registry()), media_type=CONTENT_TYPE_LATEST)
