"""The Feed page: one user at one moment — profile, what they had done, and each model's top N.

The rankings come from `Recommender.rank`, the function behind `GET /post/recommendations/`, so the
column of the model a user is served shows the API's answer for the same user and moment, post for
post. What the user had liked and viewed is read from the database (latest first, with times); the
database may be down, in which case those sections say so and the rankings, served from memory,
still show.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from datetime import UTC, datetime

from sqlalchemy import Engine
from sqlalchemy.exc import SQLAlchemyError

from app import columns as c
from app.ab import CONTROL, exp_group
from app.artifacts import MODEL_FILES
from app.config import Settings
from app.engine import COUNTERS, Recommender
from app.queries import count_topics_before, read_actions_before, read_user

HISTORY_ROWS = 10  # latest likes and views listed; the topic mix counts all of them


@dataclass(frozen=True)
class RankedPost:
    rank: int
    id: int
    score: float  # raw model score (log-odds), or likes before t for the popularity ranking
    probability: float | None  # the model's P(like); None for the popularity ranking
    topic: str
    text: str
    rank_elsewhere: dict[str, int]  # rank of the same post in the other columns, where it appears


@dataclass(frozen=True)
class Column:
    model: str  # the model asked for
    ranked_by: str  # the model that ranked (popular for users the state does not know)
    served: bool  # the API answers this user with this column
    posts: list[RankedPost]


@dataclass(frozen=True)
class TopicShare:
    topic: str
    views: int
    likes: int
    view_share: float  # of the user's views before t
    like_rate: float | None  # likes per view in the topic


@dataclass(frozen=True)
class HistoryItem:
    post_id: int
    time: datetime
    topic: str
    text: str


@dataclass
class FeedPage:
    user_id: int
    moment: datetime  # naive UTC
    limit: int
    known: bool  # the state holds the user (else: popularity ranking)
    exp_group: str
    served_model: str
    features_as_of: datetime
    columns: list[Column]
    agreed: list[int]  # post ids in every column, in the first column's order
    profile: dict | None = None
    mix: list[TopicShare] = field(default_factory=list)
    liked: list[HistoryItem] = field(default_factory=list)
    viewed: list[HistoryItem] = field(default_factory=list)
    totals: dict[str, int] = field(default_factory=dict)
    database_error: str | None = None


def epoch(moment: datetime) -> int:
    """Seconds of a naive UTC moment."""
    return int(moment.replace(tzinfo=UTC).timestamp())


def _probability(raw: float) -> float:
    return 1.0 / (1.0 + math.exp(-raw))


def served_model(settings: Settings, user_id: int) -> tuple[str, str]:
    """(A/B group, model) the API uses for this user: the same rule as the recommendation route."""
    group = exp_group(user_id, settings.ab_salt, settings.ab_control_percent)
    return group, settings.ab_control_model if group == CONTROL else settings.ab_test_model


def rank_columns(recommender: Recommender, models: list[str], user_id: int, ts: int, limit: int,
                 served: str) -> list[Column]:
    raw = []
    for model in models:
        ranking, scores = recommender.rank(model, user_id, ts, limit)
        rows = recommender.state.post_rows(ranking.post_ids)
        raw.append((model, ranking, scores[rows]))
    positions = {m: {int(p): i + 1 for i, p in enumerate(r.post_ids)} for m, r, _ in raw}
    columns = []
    for model, ranking, scores in raw:
        posts = []
        for i, (pid, score) in enumerate(zip(ranking.post_ids.tolist(), scores.tolist(), strict=True)):
            post = recommender.posts.get(pid, {"text": "", "topic": ""})
            elsewhere = {m: pos[pid] for m, pos in positions.items() if m != model and pid in pos}
            posts.append(RankedPost(i + 1, pid, float(score),
                                    None if ranking.model in COUNTERS else _probability(score),
                                    post["topic"], post["text"], elsewhere))
        columns.append(Column(model, ranking.model, model == served, posts))
    return columns


def build_feed(recommender: Recommender, engine: Engine | None, settings: Settings, user_id: int,
               moment: datetime, limit: int) -> FeedPage:
    ts = epoch(moment)
    group, served = served_model(settings, user_id)
    models = list(MODEL_FILES)  # control and test side by side, whatever each group is served
    if served not in models:
        models.append(served)
    columns = rank_columns(recommender, models, user_id, ts, limit, served)
    common = set.intersection(*(set(p.id for p in col.posts) for col in columns[:2]))
    page = FeedPage(
        user_id=user_id, moment=moment, limit=limit, known=recommender.knows(user_id), exp_group=group,
        served_model=served, columns=columns, agreed=[p.id for p in columns[0].posts if p.id in common],
        features_as_of=datetime.fromtimestamp(recommender.state.features_as_of(ts), tz=UTC).replace(tzinfo=None))
    if engine is not None:
        try:
            _read_history(page, recommender, engine)
        except SQLAlchemyError as exc:
            page.database_error = f"database unavailable ({exc.__class__.__name__})"
    return page


def _read_history(page: FeedPage, recommender: Recommender, engine: Engine) -> None:
    def item(row: dict) -> HistoryItem:
        post = recommender.posts.get(int(row[c.POST_ID]), {"text": "", "topic": ""})
        return HistoryItem(int(row[c.POST_ID]), row["time"], post["topic"], post["text"])

    with engine.connect() as conn:
        page.profile = read_user(conn, page.user_id)
        page.liked = [item(r) for r in read_actions_before(conn, page.user_id, page.moment, c.LIKE, HISTORY_ROWS)]
        page.viewed = [item(r) for r in read_actions_before(conn, page.user_id, page.moment, c.VIEW, HISTORY_ROWS)]
        counts = count_topics_before(conn, page.user_id, page.moment)
    views = sum(x.get(c.VIEW, 0) for x in counts.values())
    page.totals = {"views": views, "likes": sum(x.get(c.LIKE, 0) for x in counts.values())}
    page.mix = [TopicShare(t, counts.get(t, {}).get(c.VIEW, 0), counts.get(t, {}).get(c.LIKE, 0),
                           counts.get(t, {}).get(c.VIEW, 0) / views if views else 0.0,
                           counts[t].get(c.LIKE, 0) / counts[t][c.VIEW] if counts.get(t, {}).get(c.VIEW) else None)
                for t in c.TOPICS]
