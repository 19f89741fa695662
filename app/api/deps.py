"""Dependencies injected into routes; tests override them with `app.dependency_overrides`.

The ones that only read `app.state` are `async def`: FastAPI runs a plain `def` dependency in its thread
pool, a thread hop per request for nothing."""

from collections.abc import Iterator
from typing import Annotated

from fastapi import Depends, Request
from sqlalchemy import Connection

from app.config import Settings
from app.engine import Recommender
from app.exposure import ExposureWriter
from app.metrics import Metrics


async def get_app_settings(request: Request) -> Settings:
    return request.app.state.settings


def get_connection(request: Request) -> Iterator[Connection]:
    with request.app.state.db.connect() as conn:
        yield conn


async def get_recommender(request: Request) -> Recommender:
    return request.app.state.serving.recommender  # one read: a swap cannot split a request


async def get_writer(request: Request) -> ExposureWriter:
    return request.app.state.writer


async def get_metrics(request: Request) -> Metrics:
    return request.app.state.metrics


SettingsDep = Annotated[Settings, Depends(get_app_settings)]
ConnDep = Annotated[Connection, Depends(get_connection)]
RecommenderDep = Annotated[Recommender, Depends(get_recommender)]
WriterDep = Annotated[ExposureWriter, Depends(get_writer)]
MetricsDep = Annotated[Metrics, Depends(get_metrics)]
