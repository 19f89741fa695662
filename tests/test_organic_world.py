"""The organic demo world: users choose their views by popularity, recency and taste."""

import numpy as np
import pandas as pd
import pytest
from sqlalchemy import select
from typer.testing import CliRunner

from app import columns as c
from app.db import make_engine
from app.tables import feed_data
from training.cli import app as cli
from training.world.exposure import choice_logits, choose_posts
from training.world.generate import generate_world
from training.world.model import World

SCALE = 0.002  # 326 users, ~110k views


@pytest.fixture(scope="module")
def organic(tmp_path_factory):
    d = tmp_path_factory.mktemp("organic")
    url = f"sqlite:///{d / 'w.db'}"
    generate_world(url, scale=SCALE, seed=5, world_path=d / "world.npz", exposure="organic")
    engine = make_engine(url)
    with engine.connect() as conn:
        views = pd.read_sql(select(feed_data.c.user_id, feed_data.c.post_id, feed_data.c.timestamp,
                                   feed_data.c.target).where(feed_data.c.action == c.VIEW), conn)
    engine.dispose()
    views["ts"] = (pd.to_datetime(views[c.TIMESTAMP]) - pd.Timestamp(0)) // pd.Timedelta(seconds=1)
    return World.load(d / "world.npz"), views


def test_world_remembers_its_exposure(organic, tmp_path):
    world, _ = organic
    assert world.exposure == "organic" and len(world.post_buzz) == len(world.post_ids)
    generate_world(f"sqlite:///{tmp_path / 'r.db'}", scale=0.0005, seed=5, world_path=tmp_path / "r.npz")
    assert World.load(tmp_path / "r.npz").exposure == "random"


def test_no_view_before_release(organic):
    world, views = organic
    release = world.post_release[world.post_index(views[c.POST_ID].to_numpy())]
    assert np.all(views["ts"].to_numpy() >= release)


def test_views_follow_popularity_and_taste(organic):
    world, views = organic
    counts = np.bincount(world.post_index(views[c.POST_ID].to_numpy()), minlength=len(world.post_ids))
    old = world.post_release < world.start  # out for the whole period: popularity alone separates them
    rho = pd.Series(counts[old]).corr(pd.Series(world.post_buzz[old]), method="spearman")
    assert rho > 0.4
    # chosen views are liked more often than what a random feed would show the same users then
    p_chosen = world.like_probability(views[c.USER_ID].to_numpy(), views[c.POST_ID].to_numpy(),
                                      views["ts"].to_numpy())
    rng = np.random.default_rng(0)
    p_random = world.like_probability(views[c.USER_ID].to_numpy(),
                                      rng.choice(world.post_ids, size=len(views)), views["ts"].to_numpy())
    assert p_chosen.mean() > p_random.mean() + 0.03
    assert views[c.TARGET].mean() == pytest.approx(p_chosen.mean(), abs=0.01)


def test_choice_probability_is_what_is_drawn(organic):
    world, _ = organic
    user = int(world.user_ids[3])
    t = world.start + 30 * 86_400  # a block start: the draw uses exactly this moment's distribution
    p = world.choice_probability(user, t)
    assert p.sum() == pytest.approx(1.0) and np.all(p[world.post_release > t] == 0)
    ui = world.user_index(np.array([user]))[0]
    draws = choose_posts(world, np.full(200_000, ui), np.full(200_000, t), np.random.default_rng(1))
    freq = np.bincount(draws, minlength=len(p)) / len(draws)
    top = np.argsort(-p)[:20]
    assert np.allclose(freq[top], p[top], atol=4 * np.sqrt(p[top] / len(draws)) + 1e-4)
    # the random world's views are its exposure shares, whoever the user
    logits = choice_logits(world, np.array([ui, ui]), np.array([t, t + 86_400 * 20]))
    assert logits.shape == (2, len(p)) and not np.allclose(logits[0], logits[1])


def test_cli_refuses_an_unknown_exposure(tmp_path):
    result = CliRunner().invoke(cli, ["generate", "--scale", "0.0005", "--exposure", "chosen",
                                      "--db", f"sqlite:///{tmp_path / 'x.db'}", "--world", str(tmp_path / "w.npz")])
    assert result.exit_code != 0 and "--exposure" in result.output


def test_training_detects_the_organic_log(organic):
    from app.feed_events import EventBatch
    from app.user_state import VIEW
    from training.exposure_kind import detect
    from training.features import history_from

    world, views = organic
    batch = EventBatch(ts=views["ts"].to_numpy(np.int64), user_id=views[c.USER_ID].to_numpy(np.int64),
                       post_id=views[c.POST_ID].to_numpy(np.int64), kind=np.full(len(views), VIEW, np.int8),
                       target=views[c.TARGET].to_numpy(np.int8))
    history = history_from(batch, np.sort(world.user_ids), np.sort(world.post_ids))
    found = detect(history, world.post_topic[np.argsort(world.post_ids)], before=world.end)
    assert found.detected == "organic" and max(found.user_topic, found.post_week) > 2.0
