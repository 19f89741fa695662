"""The FastAPI application: artifacts and database opened once in `lifespan`, thin routers on top."""

import asyncio
import os
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path

import anyio
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from loguru import logger
from prometheus_client import multiprocess
from sqlalchemy.exc import SQLAlchemyError
from threadpoolctl import threadpool_limits

from app.api import routes_admin, routes_data, routes_ops, routes_recommend
from app.api.deps import DatabaseDown, DatabaseTimeout
from app.api.routes_ops import refresh_gauges
from app.config import Settings, get_settings
from app.db import make_engine
from app.engine import Recommender, ScreenPolicy
from app.exposure import ExposureWriter
from app.follower import Follower, check_feed
from app.lifecycle import ModelWatcher, Serving, WorkerBarrier, current_key, current_version
from app.metrics import Metrics, forget_dead_workers, multiprocess_dir


def _load(settings: Settings, version_dir: Path | None = None) -> Recommender:
    if version_dir is None:
        return Recommender.load(settings.model_dir, settings.exclude_viewed_hours, settings.exclude_last_views,
                                ScreenPolicy.from_settings(settings))
    return Recommender.load_version(version_dir, settings.exclude_viewed_hours, settings.exclude_last_views,
                                    ScreenPolicy.from_settings(settings))


def create_app(settings: Settings | None = None,
               load_recommender: Callable[..., Recommender] = _load, watch_models: bool = True) -> FastAPI:
    """`load_recommender(settings)` gives the first version (tests pass their own); new versions in
    models/current are swapped in while serving unless `watch_models` is off."""
    settings = settings or get_settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        started = time.perf_counter()
        forget_dead_workers()
        # one BLAS thread per request: requests already run side by side, and a multi-threaded matrix
        # product inside each (the retrieval's dot products) made them wait on each other, 100x slower
        # on a loaded machine (bench/catalogue.py cost)
        threadpool_limits(limits=1, user_api="blas")
        recommender = load_recommender(settings)
        # CatBoost and NumPy release the GIL, so scoring runs in threads, but only as many at once as
        # there are cores: the default pool's 40 threads only contend for them
        app.state.scoring_limiter = anyio.CapacityLimiter(settings.scoring_threads)
        app.state.db = make_engine(settings.database_url, settings.db_timeout_seconds)
        # database calls of the requests run in threads of their own, at most as many as the pool can hold
        # (5 + 10 overflow): a hung server holds these, never the threads the rest of the service uses
        app.state.db_limiter = anyio.CapacityLimiter(15)
        app.state.writer = ExposureWriter(app.state.db, settings.log_queue_size, settings.log_batch_size,
                                          settings.log_flush_seconds, spool_dir=settings.log_spool_dir)
        app.state.writer.start()
        follow = None
        if settings.state_follow:
            problem = check_feed(app.state.db)
            if problem and "insertion sequence" in problem:
                raise RuntimeError(problem)  # a schema to migrate, not a transient fault
            follow = {"poll_seconds": settings.state_poll_seconds, "batch_rows": settings.state_batch_rows,
                      "keep_seconds": int(settings.state_keep_hours * 3600),
                      "compact_seconds": int(settings.state_compact_hours * 3600),
                      "compact_in_child": settings.state_compact_in_child}
        follower = Follower(app.state.db, recommender.state, **follow) if follow is not None else None
        if follower is not None:
            follower.start()  # serves at once; /ready says when the state has caught up
        app.state.serving = Serving(recommender, follower)
        app.state.pending = None  # (moment, Serving) agreed with the other workers; see app.lifecycle
        barrier = WorkerBarrier.from_env()
        if recommender.version == current_version(settings.model_dir):
            barrier.mark(current_key(settings.model_dir))  # a restarted worker: the others may be waiting for it
        app.state.watcher = ModelWatcher(app.state, settings.model_dir, lambda path: load_recommender(settings, path),
                                         app.state.db, follow, settings.model_watch_seconds, barrier)
        if watch_models:
            app.state.watcher.start()
        state = recommender.state
        logger.info("serving model version {} ({} users, {} posts, {} events after the base cut; {}), "
                    "started in {:.1f}s", recommender.version, state.n_users, state.n_posts,
                    len(state.snapshot.events.ts), "following the database" if follower else "frozen",
                    time.perf_counter() - started)
        refresher = None
        if multiprocess_dir() is not None:
            # another worker answers most scrapes: keep this one's gauges current in the shared files
            refresher = asyncio.get_running_loop().create_task(_refresh_gauges_forever(app.state))
        yield
        if refresher is not None:
            refresher.cancel()
        app.state.watcher.stop()
        if app.state.serving.follower is not None:
            app.state.serving.follower.stop()
        app.state.writer.stop()
        logger.info("exposure log flushed: {} written, {} dropped, {} spooled in all, {} still buffered",
                    app.state.writer.written, app.state.writer.dropped, app.state.writer.spooled,
                    app.state.writer.depth)
        app.state.db.dispose()
        if multiprocess_dir() is not None:  # this worker's live gauges leave the scrape with it
            multiprocess.mark_process_dead(os.getpid())

    app = FastAPI(title="Post recommendations", version="1.0", lifespan=lifespan)
    app.state.settings = settings
    app.state.metrics = Metrics()
    # first: a request walks the routes in order, and nearly every request is a recommendation
    app.include_router(routes_recommend.router)
    app.include_router(routes_ops.router)
    app.include_router(routes_data.router)
    if settings.console_enabled:
        from app.console import install  # Jinja2 and the templates load only when the console is on

        install(app)
    if settings.admin_token is not None:  # without a token the endpoint does not exist
        app.include_router(routes_admin.router)
    _install_handlers(app)
    return app


async def _refresh_gauges_forever(app_state, seconds: float = 1.0) -> None:
    while True:
        refresh_gauges(app_state)
        await asyncio.sleep(seconds)


class ObserveMiddleware:
    """Latency, error and response metrics per endpoint. A plain ASGI middleware rather than
    `@app.middleware("http")`: Starlette's BaseHTTPMiddleware streams the body through a queue, so the
    status line and the body leave in different event-loop turns; a replica killed between them hands
    its load balancer half a response, which nginx cannot pass to another replica (bench.replicas)."""

    def __init__(self, app) -> None:
        self.app = app

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = [0]

        async def send_observed(message) -> None:
            if message["type"] == "http.response.start":
                status[0] = message["status"]
            await send(message)

        await self.app(scope, receive, send_observed)
        request = Request(scope)
        route = scope.get("route")
        endpoint = getattr(route, "path", "unmatched")
        group = getattr(request.state, "exp_group", "none")
        metrics: Metrics = scope["app"].state.metrics
        metrics.latency.labels(endpoint, group).observe(time.perf_counter() - started)
        if status[0] >= 400:
            metrics.errors.labels(endpoint, str(status[0])).inc()
        elif hasattr(request.state, "model"):
            metrics.responses.labels(request.state.model, group).inc()


def _install_handlers(app: FastAPI) -> None:
    app.add_middleware(ObserveMiddleware)

    @app.exception_handler(RequestValidationError)
    async def invalid_input(request: Request, exc: RequestValidationError) -> Response:
        # one readable line per bad field, plus FastAPI's structured list for programs
        errors = [{"field": ".".join(str(p) for p in e["loc"][1:]) or str(e["loc"][0]), "message": e["msg"]}
                  for e in exc.errors()]
        if request.url.path.startswith("/console/") and request.app.state.settings.console_enabled:
            from app.console.routes import error_page

            return error_page(request, 422, "Please correct the form", errors)
        text = "; ".join(f"{e['field']}: {e['message']}" for e in errors)
        return JSONResponse({"detail": text, "errors": errors}, status_code=422)

    @app.exception_handler(DatabaseTimeout)
    async def database_timeout(_: Request, exc: DatabaseTimeout) -> JSONResponse:
        logger.warning("database timeout: {}", exc)
        return JSONResponse({"detail": "database unavailable, try again later"}, status_code=503)

    @app.exception_handler(DatabaseDown)
    async def database_down_recently(_: Request, exc: DatabaseDown) -> JSONResponse:
        # the failure that set it was logged; one line per request while it lasts would be a log storm
        return JSONResponse({"detail": "database unavailable, try again later"}, status_code=503)

    @app.exception_handler(SQLAlchemyError)
    async def database_down(_: Request, exc: SQLAlchemyError) -> JSONResponse:
        logger.warning("database error: {}", exc.__class__.__name__)
        return JSONResponse({"detail": "database unavailable, try again later"}, status_code=503)
