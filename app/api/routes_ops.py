"""Liveness, readiness and Prometheus metrics."""

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from sqlalchemy.exc import SQLAlchemyError

from app.api.deps import MetricsDep, RecommenderDep, WriterDep
from app.queries import ping

router = APIRouter()


@router.get("/health")
def health() -> dict:
    return {"status": "ok"}


@router.get("/ready")
def ready(request: Request, recommender: RecommenderDep) -> JSONResponse:
    try:
        with request.app.state.db.connect() as conn:
            ping(conn)
        database = "ok"
    except SQLAlchemyError as exc:
        database = f"unreachable ({exc.__class__.__name__})"
    body = {"status": "ready" if database == "ok" else "not ready", "database": database,
            "model_version": recommender.version}
    return JSONResponse(body, status_code=200 if database == "ok" else 503)


@router.get("/model")
def model_info(recommender: RecommenderDep) -> dict:
    """What is being served: version, cut-offs (the held-out window starts at features_as_of), metrics."""
    m = recommender.manifest.data
    return {"version": recommender.version, "features_as_of": m.get("features_as_of"), "split": m.get("split"),
            "models": {name: {k: v for k, v in meta.items() if k != "features"}
                       for name, meta in m.get("models", {}).items()}}


@router.get("/metrics")
def metrics(metrics: MetricsDep, writer: WriterDep) -> Response:
    metrics.log_queue.set(writer.depth)
    metrics.log_dropped.set(writer.dropped)
    metrics.log_written.set(writer.written)
    return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)
