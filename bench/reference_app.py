"""A reference service in the style of the typical course solution, for comparison only.

Same artifacts and models, but per request it builds a pandas frame of every post, adds the user's
columns and the time features with pandas operations, and hands the frame to CatBoost. Run with
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
from app.features import POST_NUM, POST_TEXT, USER_NUM, feature_names


def create_app() -> FastAPI:
    settings = get_settings()
    engine = Recommender.load(settings.model_dir)
    t = engine.tables
    users = pd.DataFrame(t.user_num, columns=list(USER_NUM), index=t.user_ids)
    users["last_view"], users["first_view"] = t.user_last_view, t.user_first_view
    posts = pd.DataFrame(t.post_num, columns=list(POST_NUM))
    posts[list(POST_TEXT)] = t.post_text
    posts["post_id"] = t.post_ids
    posts["topic"] = [c.TOPICS[k] for k in t.post_topic]
    texts = pd.DataFrame(list(engine.posts.values())).set_index("id")
    app = FastAPI()

    @app.get("/post/recommendations/")
    def recommend(id: int, time: datetime | None = None, limit: int = 10) -> dict:
        moment = (time or datetime.now(UTC)).replace(tzinfo=None)
        ts = int(moment.replace(tzinfo=UTC).timestamp())
        group = exp_group(id, settings.ab_salt, settings.ab_control_percent)
        model = settings.ab_control_model if group == CONTROL else settings.ab_test_model
        if id not in users.index:
            return {"exp_group": group, "recommendations": []}
        row = int(np.searchsorted(t.user_ids, id))
        user = users.loc[id]
        df = posts.copy()
        for col in USER_NUM:
            df[col] = user[col]
        df["hour"] = moment.hour
        df["weekday"] = moment.weekday()
        df["u_days_since_last_view"] = (ts - user["last_view"]) / 86400 if user["last_view"] >= 0 else np.nan
        df["u_days_since_first_view"] = (ts - user["first_view"]) / 86400 if user["first_view"] >= 0 else np.nan
        df["u_like_rate_post_topic"] = df["topic"].map({k: user[f"u_like_rate_{k}"] for k in c.TOPICS})
        df["u_view_share_post_topic"] = df["topic"].map({k: user[f"u_view_share_{k}"] for k in c.TOPICS})
        df["u_like_lift_post_topic"] = df["u_like_rate_post_topic"] - df["u_like_rate"]
        if model == "test":
            df["sim_liked"] = t.post_vec @ t.user_vec[row]
            df["sim_contrast"] = t.post_vec @ t.user_contrast[row]
            df["sim_liked_topic"] = np.einsum("nd,nd->n", t.post_vec,
                                              t.user_topic_vec[row].astype(np.float32)[t.post_topic])
            df["sim_tfidf_topic"] = np.einsum("nd,nd->n", t.post_tfidf_vec,
                                              t.user_topic_tfidf[row].astype(np.float32)[t.post_topic])
        name = model if model in engine.models else "control"
        df["score"] = engine.models[name].predict_proba(df[list(feature_names(name == "test"))])[:, 1]
        liked = set(t.liked_before(row, ts).tolist())
        top = df[~df["post_id"].isin(liked)].sort_values("score", ascending=False).head(limit)
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
