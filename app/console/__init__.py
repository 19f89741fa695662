"""The web console: read-only pages under /console/ (Feed, Why this post, Experiment, Service)."""

from fastapi import FastAPI
from fastapi.staticfiles import StaticFiles

from app.console.routes import HERE, router


def install(app: FastAPI) -> None:
    """Add the console's pages and its static files (served by the app: no CDN, works offline)."""
    app.include_router(router)
    app.mount("/console/static", StaticFiles(directory=HERE / "static"), name="console-static")
