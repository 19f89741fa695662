"""How much of the world's within-topic taste each text similarity carries, on held-out views.

    python -m bench.text_signal --db URL --models DIR --world PATH

Prints the correlation of each text feature with the world's true theme term (user theme taste x
post theme mix) and with the true per-topic taste, over a sample of held-out views.
"""

from __future__ import annotations

import argparse

import numpy as np

from app import columns as c
from app.db import make_engine
from app.engine import Recommender
from app.features import TEXT_CROSS, feature_names
from training import data
from training.world.model import World


def main() -> None:
    ap = argparse.ArgumentParser(prog="python -m bench.text_signal")
    ap.add_argument("--db", required=True)
    ap.add_argument("--models", required=True)
    ap.add_argument("--world", required=True)
    ap.add_argument("--views", type=int, default=50_000)
    args = ap.parse_args()
    engine = Recommender.load(args.models)
    world = World.load(args.world)
    split = engine.manifest.data["split"]
    db = make_engine(args.db)
    with db.connect() as conn:
        views = data.sample_views(conn, int(split["test_start"]), int(split["end"]), args.views, salt=3)
    db.dispose()
    x = engine.state.features_for(views[c.USER_ID].to_numpy(), views[c.POST_ID].to_numpy(),
                                  views["ts"].to_numpy(np.int64), text=True)
    wu, wp = world.user_index(views[c.USER_ID].to_numpy()), world.post_index(views[c.POST_ID].to_numpy())
    theme = np.einsum("nk,nk->n", world.user_theme_taste[wu], world.post_themes[wp])
    topic = world.user_topic_taste[wu, world.post_topic[wp]]
    names = feature_names(True)
    print(f"{len(views)} held-out views; correlation with the world's true terms")
    print(f"{'feature':<28}{'theme term':>12}{'topic taste':>13}")
    for name in (*TEXT_CROSS, "u_like_rate_post_topic"):
        col = x[:, names.index(name)]
        print(f"{name:<28}{np.corrcoef(col, theme)[0, 1]:>12.3f}{np.corrcoef(col, topic)[0, 1]:>13.3f}")


if __name__ == "__main__":
    main()
