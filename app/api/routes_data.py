"""The course's first stage: users, posts and their feeds, read from the database."""

from typing import Annotated

from fastapi import APIRouter, HTTPException, Path, Query, Request
from sqlalchemy import Connection

from app.api.deps import read_db
from app.queries import read_feed, read_post, read_user
from app.schemas import FeedGet, Message, PostGet, UserGet

router = APIRouter()

Id = Annotated[int, Path(ge=0, le=2**63 - 1, description="A non-negative integer id")]
Limit = Annotated[int, Query(ge=1, le=100, description="How many records, 1-100")]
NOT_FOUND = {404: {"model": Message}}


@router.get("/user/{id}", response_model=UserGet, responses=NOT_FOUND)
async def get_user(id: Id, request: Request) -> dict:
    user = await read_db(request, read_user, id)
    if user is None:
        raise HTTPException(404, f"user {id} not found")
    return user


@router.get("/post/{id}", response_model=PostGet, responses=NOT_FOUND)
async def get_post(id: Id, request: Request) -> dict:
    post = await read_db(request, read_post, id)
    if post is None:
        raise HTTPException(404, f"post {id} not found")
    return post


@router.get("/user/{id}/feed", response_model=list[FeedGet], responses=NOT_FOUND)
async def get_user_feed(id: Id, request: Request, limit: Limit = 10) -> list[dict]:
    feed = await read_db(request, _feed_of, read_user, id, user_id=id, limit=limit)
    if feed is None:
        raise HTTPException(404, f"user {id} not found")
    return feed


@router.get("/post/{id}/feed", response_model=list[FeedGet], responses=NOT_FOUND)
async def get_post_feed(id: Id, request: Request, limit: Limit = 10) -> list[dict]:
    feed = await read_db(request, _feed_of, read_post, id, post_id=id, limit=limit)
    if feed is None:
        raise HTTPException(404, f"post {id} not found")
    return feed


def _feed_of(conn: Connection, read_owner, id: int, **query) -> list[dict] | None:
    """The feed, or None when its user or post does not exist (one connection for both queries)."""
    return None if read_owner(conn, id) is None else read_feed(conn, **query)
