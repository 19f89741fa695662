"""The course's first stage: users, posts and their feeds, read from the database."""

from typing import Annotated

from fastapi import APIRouter, HTTPException, Path, Query

from app.api.deps import ConnDep
from app.queries import read_feed, read_post, read_user
from app.schemas import FeedGet, Message, PostGet, UserGet

router = APIRouter()

Id = Annotated[int, Path(ge=0, le=2**63 - 1, description="A non-negative integer id")]
Limit = Annotated[int, Query(ge=1, le=100, description="How many records, 1-100")]
NOT_FOUND = {404: {"model": Message}}


@router.get("/user/{id}", response_model=UserGet, responses=NOT_FOUND)
def get_user(id: Id, conn: ConnDep) -> dict:
    user = read_user(conn, id)
    if user is None:
        raise HTTPException(404, f"user {id} not found")
    return user


@router.get("/post/{id}", response_model=PostGet, responses=NOT_FOUND)
def get_post(id: Id, conn: ConnDep) -> dict:
    post = read_post(conn, id)
    if post is None:
        raise HTTPException(404, f"post {id} not found")
    return post


@router.get("/user/{id}/feed", response_model=list[FeedGet], responses=NOT_FOUND)
def get_user_feed(id: Id, conn: ConnDep, limit: Limit = 10) -> list[dict]:
    if read_user(conn, id) is None:
        raise HTTPException(404, f"user {id} not found")
    return read_feed(conn, user_id=id, limit=limit)


@router.get("/post/{id}/feed", response_model=list[FeedGet], responses=NOT_FOUND)
def get_post_feed(id: Id, conn: ConnDep, limit: Limit = 10) -> list[dict]:
    if read_post(conn, id) is None:
        raise HTTPException(404, f"post {id} not found")
    return read_feed(conn, post_id=id, limit=limit)
