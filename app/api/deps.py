"""Dependencies injected into routes (the recommendation route reads the same state directly: its comment).

The ones that only read `app.state` are `async def`: FastAPI runs a plain `def` dependency in its thread
pool, a thread hop per request for nothing."""

import time
from collections.abc import Callable
from typing import Annotated, TypeVar

import anyio
import anyio.to_thread
from fastapi import Depends, Request
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.exc import TimeoutError as PoolTimeout

from app.config import Settings
from app.engine import Recommender
from app.exposure import ExposureWriter
from app.lifecycle import serving_now
from app.metrics import Metrics

T = TypeVar("T")


async def get_app_settings(request: Request) -> Settings:
    return request.app.state.settings


class DatabaseTimeout(Exception):
    """A database call passed DB_TIMEOUT_SECONDS; answered 503 like a lost database."""


class DatabaseDown(DatabaseTimeout):
    """A connection to the database failed less than RECONNECT_AFTER_SECONDS ago: 503 without trying again."""


# After a failed connection the data endpoints answer 503 at once for this long, on the event loop, instead
# of each taking a thread, a pooled connection's ping and a new connection attempt to learn the same thing:
# a stopped database's 503s then cost what /health costs (bench.chaos measures both), and one request per
# window per worker finds out when it is back.
RECONNECT_AFTER_SECONDS = 0.5


async def read_db(request: Request, query: Callable[..., T], *args: object, **kwargs: object) -> T:
    """`query(conn, *args, **kwargs)` on a pooled connection in a thread, given up after DB_TIMEOUT_SECONDS.

    The engine's own timeouts end most faults (refused connections, slow statements), but a server that
    accepts and never answers holds a thread in a blocking read: the request abandons that thread at the
    deadline (its connection is returned when the read ends), and at most `db_limiter` threads can be held
    that way, so liveness and recommendations never wait behind them."""
    app_state = request.app.state
    if time.monotonic() < getattr(app_state, "db_down_until", 0.0):
        raise DatabaseDown("a connection failed less than a moment ago")

    def run() -> T:
        try:
            conn = app_state.db.connect()
        except PoolTimeout:
            raise  # every pooled connection busy: the database is slow, not gone
        except SQLAlchemyError:
            app_state.db_down_until = time.monotonic() + RECONNECT_AFTER_SECONDS
            raise
        with conn:
            return query(conn, *args, **kwargs)

    try:
        with anyio.fail_after(app_state.settings.db_timeout_seconds):
            return await anyio.to_thread.run_sync(run, limiter=app_state.db_limiter, abandon_on_cancel=True)
    except TimeoutError:
        raise DatabaseTimeout(f"no answer within {app_state.settings.db_timeout_seconds} s") from None


async def get_recommender(request: Request) -> Recommender:
    return serving_now(request.app.state).recommender  # one read: a swap cannot split a request


async def get_writer(request: Request) -> ExposureWriter:
    return request.app.state.writer


async def get_metrics(request: Request) -> Metrics:
    return request.app.state.metrics


SettingsDep = Annotated[Settings, Depends(get_app_settings)]
RecommenderDep = Annotated[Recommender, Depends(get_recommender)]
WriterDep = Annotated[ExposureWriter, Depends(get_writer)]
MetricsDep = Annotated[Metrics, Depends(get_metrics)]
