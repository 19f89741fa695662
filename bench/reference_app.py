"""A reference service in the style of the typical course solution, for comparison only.

Same artifacts, models and state (the user as of the request's moment), but per request it builds a
pandas frame of every post, adds the user's columns and the time features with pandas operations, and
hands the frame to CatBoost. Run with
`uvicorn bench.reference_app:create_app --factory` (MODEL_DIR as for the real service).
"""

from datetime import UTC, datetime

import numpy as np
import pandas as pd
from fastapi import FastAPI

from app import columns as c
from app.ab import CONTROL, exp_group
from app.config import get_settings
from app.engine import Recommender
from app.features import POST_COUNTERS, POST_STATIC, POST_TEXT, USER_NUM, feature_names


def create_app() -> FastAPI:
    settings = get_settings()
    engine = Recommender.load(settings.model_dir)
    state = engine.state
    p = state.posts
    posts = pd.DataFrame(np.column_stack([p.static, p.text]), columns=[*POST_STATIC, *POST_TEXT])
    posts["post_id"] = state.post_ids
    posts["topic"] = [c.TOPICS[k] for k in p.topic]
    texts = pd.DataFrame(list(engine.posts.values())).set_index("id")
    app = FastAPI()

    @app.get("/post/recommendations/")
    def recommend(id: int, time: datetime | None = None, limit: int = 10) -> dict:
        moment = (time or datetime.now(UTC)).replace(tzinfo=None)
        ts = int(moment.replace(tzinfo=UTC).timestamp())
        group = exp_group(id, settings.ab_salt, settings.ab_control_percent)
        model = settings.ab_control_model if group == CONTROL else settings.ab_test_model
        user, post_view = state.at(state.user_row(id), ts)  # the same state as the service's
        if user is None:
            return {"exp_group": group, "recommendations": []}
        v = user.view
        u = pd.Series(v.num[0], index=list(USER_NUM))
        df = posts.copy()
        df[list(POST_COUNTERS)] = post_view.counters
        for col in USER_NUM:
            df[col] = u[col]
        last, first = int(v.last_view[0]), int(v.first_view[0])
        df["hour"] = moment.hour
        df["weekday"] = moment.weekday()
        df["u_days_since_last_view"] = (ts - last) / 86400 if last >= 0 else np.nan
        df["u_days_since_first_view"] = (ts - first) / 86400 if first >= 0 else np.nan
        df["u_like_rate_post_topic"] = df["topic"].map({k: u[f"u_like_rate_{k}"] for k in c.TOPICS})
        df["u_view_share_post_topic"] = df["topic"].map({k: u[f"u_view_share_{k}"] for k in c.TOPICS})
        df["u_like_lift_post_topic"] = df["u_like_rate_post_topic"] - df["u_like_rate"]
        df["sim_cf"] = p.cf @ v.cf[0]
        if model == "test":
            df["sim_liked"] = p.vec @ v.vec[0]
            df["sim_contrast"] = p.vec @ v.contrast[0]
            df["sim_liked_topic"] = np.einsum("nd,nd->n", p.vec, v.topic_vec[0][p.topic])
            df["sim_tfidf_topic"] = np.einsum("nd,nd->n", p.tfidf_vec, v.topic_tfidf[0][p.topic])
        name = model if model in engine.models else "control"
        df["score"] = engine.models[name].predict_proba(df[list(feature_names(name == "test"))])[:, 1]
        hidden = set(state.post_ids[np.concatenate([user.liked, user.viewed])].tolist())
        top = df[~df["post_id"].isin(hidden)].sort_values("score", ascending=False).head(limit)
        recs = texts.loc[top["post_id"]].reset_index()
        return {"exp_group": group, "recommendations": recs.to_dict(orient="records")}

    return app


if __name__ == "__main__":
    import argparse

    import uvicorn
    import uvicorn.config

    from app.__main__ import _bind_tcp_socket

    parser = argparse.ArgumentParser(prog="python -m bench.reference_app")
    parser.add_argument("--port", type=int, default=8012)
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()
    uvicorn.config.Config.bind_socket = _bind_tcp_socket  # the same TCP_NODELAY fix as the service
    uvicorn.run("bench.reference_app:create_app", factory=True, host="127.0.0.1", port=args.port,
                workers=args.workers, log_level="warning")
