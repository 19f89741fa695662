"""Response models: the course's PostGet plus the records of the data endpoints."""

from datetime import datetime

from pydantic import BaseModel, ConfigDict


class PostGet(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: int
    text: str
    topic: str


class UserGet(BaseModel):
    user_id: int
    gender: int
    age: int
    country: str
    city: str
    exp_group: int
    os: str
    source: str


class FeedGet(BaseModel):
    user_id: int
    post_id: int
    action: str
    time: datetime
    target: int | None


class Response(BaseModel):
    """The recommendation response: `exp_group` as in the course, plus which model ranked."""

    exp_group: str
    model: str
    model_version: str
    features_as_of: datetime  # the requested moment, or the snapshot's base cut when asked before it (UTC)
    recommendations: list[PostGet]


class Message(BaseModel):
    detail: str
