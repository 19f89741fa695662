"""`POST /admin/reload`: swap to the version models/current names now, instead of at the next look.

Registered only when ADMIN_TOKEN is set; the token comes as `Authorization: Bearer <token>`."""

import secrets
from dataclasses import asdict
from typing import Annotated

import anyio.to_thread
from fastapi import APIRouter, Header, HTTPException, Request

from app.lifecycle import serving_now

router = APIRouter()


@router.post("/admin/reload")
async def reload(request: Request, authorization: Annotated[str | None, Header()] = None) -> dict:
    expected = request.app.state.settings.admin_token.get_secret_value()
    given = (authorization or "").removeprefix("Bearer ").strip()
    if not secrets.compare_digest(given.encode(), expected.encode()):
        raise HTTPException(401, "authorization: a valid admin token is required (Authorization: Bearer <token>)")
    watcher = request.app.state.watcher
    swap = await anyio.to_thread.run_sync(watcher.check, True)  # loading runs off the event loop
    serving = serving_now(request.app.state).version
    if swap is None:
        return {"outcome": "unchanged", "version": serving}
    return {**asdict(swap), "serving": serving}
