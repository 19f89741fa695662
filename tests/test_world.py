"""The demo world: reference statistics at a small scale, determinism, and its probability API."""

import numpy as np
import pytest
from sqlalchemy import func, select

from app import columns as c
from app.db import make_engine
from app.tables import feed_data, user_data
from training.world import reference as ref
from training.world.generate import generate_world
from training.world.model import World
from training.world.stats import world_statistics

SCALE = 0.004  # 653 users, ~300k feed rows: big enough for segment rates within the tolerances below


@pytest.fixture(scope="module")
def small_world(tmp_path_factory):
    d = tmp_path_factory.mktemp("world")
    url = f"sqlite:///{d / 'w.db'}"
    generate_world(url, scale=SCALE, seed=11, world_path=d / "world.npz")
    engine = make_engine(url)
    yield engine, World.load(d / "world.npz"), world_statistics(engine)
    engine.dispose()


def test_counts_and_profile_match_reference(small_world):
    _, _, s = small_world
    assert s["users"] == round(ref.N_USERS * SCALE)
    assert s["posts"] == 7023
    # feed size scales with users: +-15% (activity is heavy-tailed, so a few hundred users vary)
    assert s["feed_rows"] == pytest.approx(ref.N_FEED_ROWS * SCALE, rel=0.15)
    assert s["first_event"] >= "2021-10-01" and s["last_event"] < "2021-12-30"
    assert set(s["hours_with_events"]) <= set(range(6, 24))
    gender = s["profile"][c.GENDER]
    assert gender[1] / s["users"] == pytest.approx(ref.GENDER_MALE_SHARE, abs=0.06)
    assert s["profile"][c.OS]["Android"] / s["users"] == pytest.approx(ref.ANDROID_SHARE, abs=0.06)
    assert s["profile"][c.SOURCE]["ads"] / s["users"] == pytest.approx(ref.ADS_SHARE, abs=0.06)
    assert s["profile"][c.COUNTRY]["Russia"] / s["users"] == pytest.approx(143_035 / ref.N_USERS, abs=0.04)
    q1, med, q3 = s["age_quartiles"]
    assert abs(q1 - 19) <= 2 and abs(med - 24) <= 2 and abs(q3 - 33) <= 3
    assert s["age_range"][0] >= 14 and s["age_range"][1] <= 95
    assert max(s["top_cities"], key=s["top_cities"].get) == "Moscow"


def test_like_rates_match_reference(small_world):
    _, _, s = small_world
    assert s["target_rate"] == pytest.approx(ref.TARGET_RATE, abs=0.01)
    assert s["likes"] == s["positive_views"]  # one like per positive view
    assert s["users_with_a_liked_view"] > 0.97
    rate = s["like_rate"]
    assert rate[c.GENDER]["1"] > rate[c.GENDER]["0"]
    assert rate[c.COUNTRY]["Russia"] == pytest.approx(0.115, abs=0.012)
    assert min(rate[c.EXP_GROUP]["1"], rate[c.EXP_GROUP]["2"]) > max(rate[c.EXP_GROUP]["0"], rate[c.EXP_GROUP]["3"])
    assert rate[c.TOPIC]["tech"] == min(rate[c.TOPIC].values())
    midday = np.mean([rate["hour"][h] for h in range(10, 15)])
    evening = np.mean([rate["hour"][h] for h in range(19, 22)])
    assert midday == pytest.approx(0.1075, abs=0.01) and evening == pytest.approx(0.14, abs=0.012)


def test_feed_is_consistent(small_world):
    engine, _, _ = small_world
    with engine.connect() as conn:
        bad_targets = conn.execute(select(func.count()).where(
            ((feed_data.c.action == c.LIKE) & feed_data.c.target.is_not(None))
            | ((feed_data.c.action == c.VIEW) & feed_data.c.target.not_in([0, 1])))).scalar_one()
        orphans = conn.execute(select(func.count()).select_from(feed_data.outerjoin(
            user_data, feed_data.c.user_id == user_data.c.user_id)).where(user_data.c.user_id.is_(None))).scalar_one()
        views = {(u, p): t for u, p, t in conn.execute(select(
            feed_data.c.user_id, feed_data.c.post_id, feed_data.c.timestamp).where(
            feed_data.c.action == c.VIEW, feed_data.c.target == 1)).all()}
        likes = conn.execute(select(feed_data.c.user_id, feed_data.c.post_id, feed_data.c.timestamp).where(
            feed_data.c.action == c.LIKE)).all()
    assert bad_targets == 0 and orphans == 0
    assert all((u, p) in views and views[(u, p)] <= t for u, p, t in likes)  # a like follows its view


def test_same_seed_same_tables(tmp_path):
    def dump(url):
        eng = make_engine(url)
        with eng.connect() as conn:
            rows = conn.execute(select(*feed_data.c).order_by(*feed_data.c)).all()
            users = conn.execute(select(*user_data.c).order_by(user_data.c.user_id)).all()
        eng.dispose()
        return rows, users

    a, b, other = (f"sqlite:///{tmp_path / n}.db" for n in "abc")
    generate_world(a, scale=0.001, seed=3, world_path=tmp_path / "a.npz")
    generate_world(b, scale=0.001, seed=3, world_path=tmp_path / "b.npz")
    generate_world(other, scale=0.001, seed=4, world_path=tmp_path / "c.npz")
    assert dump(a) == dump(b)
    assert dump(a) != dump(other)
    wa, wb = World.load(tmp_path / "a.npz"), World.load(tmp_path / "b.npz")
    assert np.array_equal(wa.user_theme_taste, wb.user_theme_taste)


def test_generate_on_postgresql(pg_url, tmp_path):
    summary = generate_world(pg_url, scale=0.001, seed=3, world_path=tmp_path / "w.npz")
    sqlite = f"sqlite:///{tmp_path / 's.db'}"
    generate_world(sqlite, scale=0.001, seed=3, world_path=tmp_path / "s.npz")
    pg, lite = make_engine(pg_url), make_engine(sqlite)
    q = select(func.count(), func.sum(feed_data.c.target), func.min(feed_data.c.timestamp),
               func.max(feed_data.c.timestamp))
    with pg.connect() as a, lite.connect() as b:
        assert a.execute(q).one() == b.execute(q).one()
    pg.dispose()
    lite.dispose()
    assert "feed rows" in summary


def test_refuses_to_overwrite_without_replace(tmp_path):
    url = f"sqlite:///{tmp_path / 'w.db'}"
    generate_world(url, scale=0.0005, seed=1, world_path=tmp_path / "w.npz")
    with pytest.raises(RuntimeError, match="--replace"):
        generate_world(url, scale=0.0005, seed=1, world_path=tmp_path / "w.npz")
    # the command says it in one line naming the database, exit 2, the tables as they were
    from typer.testing import CliRunner

    from training.cli import app as cli

    engine = make_engine(url)
    with engine.connect() as conn:
        before = conn.execute(select(func.count()).select_from(feed_data)).scalar_one()
    result = CliRunner().invoke(cli, ["generate", "--scale", "0.0005", "--seed", "3", "--db", url,
                                      "--world", str(tmp_path / "other.npz")])
    assert result.exit_code == 2 and "--replace" in result.output and "w.db" in result.output
    assert "Traceback" not in result.output and not (tmp_path / "other.npz").exists()
    with engine.connect() as conn:
        assert conn.execute(select(func.count()).select_from(feed_data)).scalar_one() == before
    engine.dispose()
    generate_world(url, scale=0.0005, seed=2, world_path=tmp_path / "w.npz", replace=True)


def test_probability_api(small_world):
    _, world, _ = small_world
    users, posts = world.user_ids[:3], world.post_ids[:4]
    t = world.start + 40 * 86_400 + 20 * 3600
    p = world.like_probability(users[:, None], posts[None, :], t)
    assert p.shape == (3, 4) and np.all((p > 0) & (p < 1))
    row = world.all_posts_probability(int(users[1]), t)
    assert np.allclose(row[:4], p[1])
    top = world.oracle(int(users[1]), t, 5)
    assert np.all(row[world.post_index(top)] >= np.sort(row)[-5])
    assert world.expected_hits(int(users[1]), t, top) == pytest.approx(1 - np.prod(1 - np.sort(row)[-5:]))
    draws = world.sample_likes(np.full(20_000, users[0]), np.full(20_000, posts[0]), t, np.random.default_rng(0))
    assert draws.mean() == pytest.approx(p[0, 0], abs=0.015)
    with pytest.raises(KeyError):
        world.like_probability(np.array([-5]), posts[:1], t)


def _two_topic_world(n_users: int = 200) -> World:
    """Posts 0 and 1 of topic 0 (appeal 0.5 and 0.4), post 2 of topic 1 (appeal 0); half of the users love
    topic 0 and dislike topic 1 (log-odds +3 / -3), the other half the reverse; everything else zero."""
    love = np.where(np.arange(n_users)[:, None] % 2 == 0, [3.0, -3.0], [-3.0, 3.0])
    zeros = np.zeros(n_users, np.int64)
    return World(seed=0, scale=0.0, start=0, end=86_400, intercept=0.0, off_gender=np.zeros(2),
                 off_country=np.zeros(1), off_exp=np.zeros(5), off_topic=np.zeros(2), off_hour=np.zeros(24),
                 age_slope=0.0, profile_topic=np.zeros((4, 2, 2)), drift=np.zeros(2),
                 user_ids=np.arange(1, n_users + 1), user_gender=zeros, user_age=zeros + 24, user_country=zeros,
                 user_exp=zeros, user_bias=np.zeros(n_users), user_topic_taste=love,
                 user_theme_taste=np.zeros((n_users, 1)), post_ids=np.array([10, 11, 12]),
                 post_topic=np.array([0, 0, 1]), post_appeal=np.array([0.5, 0.4, 0.0]),
                 post_themes=np.ones((3, 1)), post_exposure=np.ones(3))


def test_profile_best_covers_both_tastes():
    """Ranked one by one by the mean like probability, the two topic-0 posts come first (appeal 0.5 and
    0.4 against 0); with the user's taste unknown, the set {post 10, post 12} holds a like for either
    half of the users (~0.96 against ~0.57), and that is the profile's best."""
    world = _two_topic_world()
    sample = np.arange(len(world.user_ids))
    p = world.like_probability(world.user_ids[:, None], world.post_ids[None, :], 0)
    assert np.argsort(-p.mean(axis=0))[:2].tolist() == [0, 1]
    best = world.profile_best(int(world.user_ids[0]), 0, 2, sample)
    assert sorted(best.tolist()) == [10, 12]
    hit = {s: np.mean([world.expected_hits(int(u), 0, np.array(s)) for u in world.user_ids])
           for s in ((10, 11), (10, 12))}
    assert hit[(10, 12)] > 0.95 and hit[(10, 11)] < 0.6
    # the user's own latent terms are not used: the same answer for a user of the other half
    assert sorted(world.profile_best(int(world.user_ids[1]), 0, 2, sample).tolist()) == [10, 12]
