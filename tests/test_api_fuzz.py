"""Property-based requests generated from the OpenAPI schema (schemathesis): whatever comes in, never a 500."""

import pytest
import schemathesis
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from schemathesis.generation import GenerationMode

from app.config import Settings
from app.engine import Recommender
from app.main import create_app


@pytest.fixture(scope="module")
def operations(trained):
    recommender = Recommender.load(trained["model_dir"])
    settings_ = Settings(database_url=trained["db_url"], model_dir="unused")
    app = create_app(settings_, load_recommender=lambda _: recommender)
    with TestClient(app):  # runs the lifespan: the engine and the writer live on app.state meanwhile
        schema = schemathesis.openapi.from_asgi("/openapi.json", app)
        yield {op.ok().label: op.ok() for op in schema.get_all_operations()}


@pytest.mark.parametrize("mode", [GenerationMode.POSITIVE, GenerationMode.NEGATIVE])  # allowed, then forbidden
@pytest.mark.parametrize("label", [
    "GET /post/recommendations/", "GET /user/{id}", "GET /post/{id}", "GET /user/{id}/feed", "GET /post/{id}/feed",
])
def test_no_server_errors(operations, label, mode):
    operation = operations[label]

    @given(case=operation.as_strategy(generation_mode=mode))
    @settings(max_examples=25, deadline=None, suppress_health_check=list(HealthCheck), database=None)
    def check(case):
        response = case.call()
        assert response.status_code < 500, (case.path_parameters, case.query, response.text)
        if response.status_code == 422:
            assert response.json()["detail"]

    check()
