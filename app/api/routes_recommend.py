"""`GET /post/recommendations/`: A/B group, ranking, exposure record."""

import uuid
from datetime import UTC, datetime, timedelta
from typing import Annotated

import anyio.to_thread
from fastapi import APIRouter, Query, Request
from fastapi.responses import Response as JSONBytes
from pydantic_core import to_json

from app.ab import CONTROL, exp_group
from app.api.deps import get_app_settings, get_recommender, get_writer
from app.exposure import Exposure
from app.moments import Moment
from app.schemas import Response

router = APIRouter()
EPOCH = datetime(1970, 1, 1)


@router.get("/post/recommendations/", response_model=Response)
async def recommended_posts(
    request: Request,
    id: Annotated[int, Query(ge=0, le=2**63 - 1, description="User id")],
    time: Annotated[Moment | None, Query(description="ISO 8601 moment of the request (UTC unless it names a zone); "
                                                     "default now")] = None,
    limit: Annotated[int, Query(ge=1, le=100, description="How many posts, 1-100")] = 10,
) -> dict:
    # `app.api.deps`'s getters called here rather than declared as dependencies: FastAPI's resolution of
    # three took ~30 of the ~190 us it spent on each request in process (2026-11-30), and this route is
    # nearly all the traffic; the recommender is still read once, so a swap cannot split a request
    settings, recommender, writer = (await get_app_settings(request), await get_recommender(request),
                                     await get_writer(request))
    served_at = datetime.now(UTC).replace(tzinfo=None)
    at = time if time is not None else served_at  # naive UTC already (app.moments)
    group = exp_group(id, settings.ab_salt, settings.ab_control_percent)
    model = settings.ab_control_model if group == CONTROL else settings.ab_test_model
    # whole seconds by integer arithmetic: a float timestamp rounds 9999-12-31T23:59:59.999999 up out of the calendar
    ts = (at - EPOCH) // timedelta(seconds=1)
    if settings.scoring_threads == 1:
        # one at a time (`python -m app --workers N` with N = cores): scored on the event loop itself. A
        # worker thread would still score one request at a time, and each request would go to it and back
        # with the GIL passed between the two threads (~0.2 ms): on the scale-1.0 world, 2 workers, scoring
        # inline took the service's CPU per request from 3.05 to 2.88 ms at concurrency 8, 612 -> 664
        # requests/s (docs/benchmarks.md, 2026-11-30). The loop is busy meanwhile: liveness and the
        # database routes wait behind the requests queued before them, as they did for the one thread.
        ranking = recommender.recommend(model, id, ts, limit)
    else:
        ranking = await anyio.to_thread.run_sync(recommender.recommend, model, id, ts, limit,
                                                 limiter=request.app.state.scoring_limiter)
    post_ids = ranking.post_ids.tolist()
    request.state.exp_group = group
    request.state.model = ranking.model
    features_as_of = datetime.fromtimestamp(ranking.features_as_of, tz=UTC).replace(tzinfo=None)
    writer.submit(Exposure(str(uuid.uuid4()), id, at, served_at, group, ranking.model, recommender.version,
                           tuple(post_ids), features_as_of))
    # serialised here, by pydantic's own encoder, rather than validated against `Response` and then
    # serialised: the body is built from the artifact's posts and the engine's fields, already of the
    # declared types (the response model stays declared for the OpenAPI schema and its tests)
    body = {"exp_group": group, "model": ranking.model, "model_version": recommender.version,
            "features_as_of": features_as_of, "recommendations": [recommender.posts[p] for p in post_ids]}
    return JSONBytes(to_json(body), media_type="application/json")
