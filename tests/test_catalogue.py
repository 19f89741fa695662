"""A catalogue that grows: new posts' text features as training computed them, a post inserted while
serving becomes a candidate and is served, fresh-post exposure, and candidates against full scoring."""

import time

import numpy as np
import pandas as pd
import pytest
from sqlalchemy import insert, select

from app import columns as c
from app.catalogue import Catalogue
from app.db import make_engine
from app.engine import Recommender, ScreenPolicy
from app.follower import Follower, catch_up
from app.post_counters import PostTimeline, counts_before
from app.tables import post_text_df
from app.text_encoder import make_encoder
from app.text_features import TRANSFORMS_FILE, TextTransforms, post_text_features

FULL = ScreenPolicy(retrieval="full")


def _posts(db_url: str) -> pd.DataFrame:
    engine = make_engine(db_url)
    with engine.connect() as conn:
        rows = pd.DataFrame(conn.execute(select(*post_text_df.c).order_by(post_text_df.c.post_id)).mappings().all())
    engine.dispose()
    return rows


def _insert_posts(db_url: str, rows: list[dict]) -> None:
    engine = make_engine(db_url)
    with engine.begin() as conn:
        conn.execute(insert(post_text_df), rows)
    engine.dispose()


def _assert_same_columns(state, rows_a: np.ndarray, rows_b: np.ndarray) -> None:
    p = state.posts
    for name in ("static", "text", "vec", "tfidf_vec"):
        np.testing.assert_allclose(getattr(p, name)[rows_a], getattr(p, name)[rows_b], atol=1e-5, err_msg=name)
    np.testing.assert_array_equal(p.topic[rows_a], p.topic[rows_b])


def test_app_path_computes_the_columns_training_computed(trained):
    """`post_text_features` with the artifact's transforms and encoder gives training's columns."""
    state = Recommender.load(trained["model_dir"], policy=FULL).state
    posts = _posts(trained["db_url"]).sample(40, random_state=0)
    transforms = TextTransforms.load(trained["version_dir"] / TRANSFORMS_FILE)
    assert transforms.encoder_name == "hashing"
    view = post_text_features(posts[c.TEXT].tolist(), posts[c.TOPIC], transforms, make_encoder("hashing"))
    rows = state.post_rows(posts[c.POST_ID].to_numpy())
    for name in ("static", "text", "vec", "tfidf_vec"):
        np.testing.assert_allclose(getattr(view, name), getattr(state.posts, name)[rows], atol=1e-5, err_msg=name)


def test_post_inserted_while_serving_becomes_a_candidate_and_is_served(trained, world_db):
    recommender = Recommender.load(trained["model_dir"], policy=ScreenPolicy(fresh_share=0.2, fresh_views=0))
    state = recommender.state
    existing = _posts(world_db)
    source = existing.iloc[[10, 500]]
    new_ids = [int(existing[c.POST_ID].max()) + 1, int(existing[c.POST_ID].max()) + 2]
    follower = Follower(make_engine(world_db), state, poll_seconds=0.05, posts_poll_seconds=0.05)
    follower.start()
    try:
        started = time.monotonic()
        _insert_posts(world_db, [{c.POST_ID: i, c.TEXT: t, c.TOPIC: p} for i, t, p in
                                 zip(new_ids, source[c.TEXT], source[c.TOPIC], strict=True)])
        while (state.post_rows(np.array(new_ids)) < 0).any():
            assert time.monotonic() - started < 20, "new posts not picked up within 20 s"
            time.sleep(0.05)
    finally:
        follower.stop()
    rows = state.post_rows(np.array(new_ids))
    # the same texts as old posts: the follower computed the very columns training did
    _assert_same_columns(state, rows, state.post_rows(source[c.POST_ID].to_numpy()))
    np.testing.assert_array_equal(state.counts_at(state.latest_event + 1)[rows], 0)  # no history yet
    assert recommender.posts[new_ids[0]]["text"] == source[c.TEXT].iloc[0]
    user_id = int(state.snapshot.user_ids[0])
    t = state.latest_event + 60
    user, posts = state.at(state.user_row(user_id), t)
    cands = recommender.candidates("test", user, t, len(posts.topic))
    assert set(rows.tolist()) <= set(cands.tolist())
    # fresh share 0.2 of 5: one place goes to a fresh post (here only the new ones are fresh)
    served = recommender.recommend("test", user_id, t, 5).post_ids.tolist()
    assert len(set(served) & set(new_ids)) == 1
    # before they were added the posts do not exist
    assert not set(recommender.recommend("test", user_id, state.base_as_of + 3600, 100).post_ids.tolist()) & set(
        new_ids)


def test_fresh_share_zero_keeps_the_ranking(trained):
    plain = Recommender.load(trained["model_dir"])
    fresh = Recommender.load(trained["model_dir"], policy=ScreenPolicy(fresh_share=0.4, fresh_views=10**6))
    zero = Recommender.load(trained["model_dir"], policy=ScreenPolicy(fresh_share=0.0, fresh_views=10**6))
    snap = plain.state.snapshot
    for user_id in snap.user_ids[:5]:
        t = snap.events_until + 3600
        a = plain.recommend("test", int(user_id), t, 10).post_ids
        np.testing.assert_array_equal(zero.recommend("test", int(user_id), t, 10).post_ids, a)
        # every post is fresh when fresh_views is huge: the screen is again the plain ranking
        np.testing.assert_array_equal(fresh.recommend("test", int(user_id), t, 10).post_ids, a)


@pytest.mark.parametrize("model", ["control", "test"])
def test_candidates_hold_the_full_rankings_top(trained, model):
    """On the tiny world the candidates hold most of what full scoring puts in its top 5, and each
    candidate gets the very score full scoring gives it."""
    full = Recommender.load(trained["model_dir"], policy=FULL)
    cand = Recommender.load(trained["model_dir"])
    assert cand.retrieval == "candidates" and full.retrieval == "full"
    snap = full.state.snapshot
    rng = np.random.default_rng(3)
    found = total = 0
    sizes = []
    for user_id in rng.choice(snap.user_ids, size=40, replace=False):
        t = int(rng.integers(snap.base_as_of, snap.events_until))
        top = full.recommend(model, int(user_id), t, 5).post_ids
        user, posts = cand.state.at(cand.state.user_row(int(user_id)), t)
        rows = cand.candidates(model, user, t, len(posts.topic))
        sizes.append(len(rows))
        found += len(set(top.tolist()) & set(cand.post_ids[rows].tolist()))
        total += len(top)
        (_, cand_scores), (_, full_scores) = cand.rank(model, int(user_id), t, 5), full.rank(model, int(user_id), t, 5)
        scored = np.isfinite(cand_scores)
        assert scored.sum() <= len(rows)
        np.testing.assert_allclose(cand_scores[scored], full_scores[scored], rtol=1e-6)
    assert found / total >= 0.75, found / total  # 0.87 measured (bench.catalogue recall, 150 requests)
    assert np.median(sizes) < len(snap.post_ids) / 5  # a small share of the catalogue


def test_timeline_grows_with_the_catalogue():
    """Posts added between batches start with no views and count from then on, as the direct count does."""
    rng = np.random.default_rng(2)
    base = rng.integers(0, 5, size=(10, 3))
    base[:, 1] = np.minimum(base[:, 1], base[:, 0])
    timeline = PostTimeline(base, block=50)
    post, ts, target, weight = [], [], [], []
    n = 10
    for step in range(6):
        if step % 2:
            timeline.add_posts(7)
            n += 7
        p, t, y = rng.integers(0, n, 120), rng.integers(0, 5_000, 120), (rng.random(120) < 0.3).astype(np.int8)
        w = rng.integers(1, 3000, 120)
        timeline.add(t, p, y, w)
        post.append(p), ts.append(t), target.append(y), weight.append(w)
    post, ts, target, weight = (np.concatenate(x) for x in (post, ts, target, weight))
    padded = np.vstack([base, np.zeros((n - 10, 3), np.int64)])
    for t in (0, 100, 2500, 4999, 5000, 10**6):
        expected = padded + counts_before(post, ts, target, weight, np.arange(n), np.full(n, t))
        np.testing.assert_array_equal(timeline.counts_at(t), expected)


def test_catalogue_rows_never_move(trained):
    state = Recommender.load(trained["model_dir"], policy=FULL).state
    frame = state.catalogue.frame
    cat = Catalogue(frame.ids, frame.posts)
    before = cat.frame
    ids = np.array([frame.ids.min() - 5, 10**9, 10**9])  # one below every id, one twice
    rows = cat.add(ids, _take(frame.posts, [0, 1, 2]), born=123)
    assert rows.tolist() == [frame.n, frame.n + 1]
    assert before.n == frame.n and cat.frame.n == frame.n + 2  # an old frame keeps its length
    np.testing.assert_array_equal(cat.frame.rows(np.array([ids[0], 10**9, frame.ids[5]])), [frame.n, frame.n + 1, 5])
    assert cat.frame.unborn(122).tolist() == [frame.n, frame.n + 1] and not len(cat.frame.unborn(123))
    assert not len(cat.add(ids[:1], _take(frame.posts, [0]), born=5))  # known ids are skipped


def _take(posts, rows):
    from app.features import PostView

    return PostView(posts.static[rows], posts.counters[:0], posts.text[rows], posts.vec[rows],
                    posts.tfidf_vec[rows], posts.topic[rows], posts.cf[rows])


def test_catch_up_adds_posts(trained, world_db):
    recommender = Recommender.load(trained["model_dir"])
    existing = _posts(world_db)
    new_id = int(existing[c.POST_ID].max()) + 10
    _insert_posts(world_db, [{c.POST_ID: new_id, c.TEXT: "A brand new post about football and the cup final",
                              c.TOPIC: "sport"}])
    catch_up(make_engine(world_db), recommender.state)
    assert recommender.state.post_rows(np.array([new_id]))[0] == len(existing)


def test_world_grows_releases_and_holds_back(tmp_path):
    """`generate --posts --release-share --held-back`: more posts than the real texts, views only of
    released posts, held-back posts in no table but known to the world."""
    from sqlalchemy import text as sql

    from training.world.generate import generate_world
    from training.world.model import HELD_BACK, World

    url = f"sqlite:///{tmp_path / 'w.db'}"
    generate_world(url, scale=0.002, seed=3, world_path=tmp_path / "w.npz", n_posts=8000, release_share=0.5,
                   held_back=40)
    world = World.load(tmp_path / "w.npz")
    posts = _posts(url)
    assert len(world.post_ids) == 8000 and len(posts) == 7960
    held = world.held_back_ids()
    assert len(held) == 40 and not set(held.tolist()) & set(posts[c.POST_ID].tolist())
    assert len(world.held_back_text) == 40
    assert len(np.unique(world.post_topic[world.post_index(held)])) >= 3  # drawn over the topics, not the last ids
    engine = make_engine(url)
    with engine.connect() as conn:
        feed = pd.DataFrame(conn.execute(sql("SELECT post_id, timestamp FROM feed_data")).mappings().all())
    engine.dispose()
    ts = (pd.to_datetime(feed["timestamp"]) - pd.Timestamp("1970-01-01")) // pd.Timedelta(seconds=1)
    release = world.post_release[world.post_index(feed[c.POST_ID].to_numpy())]
    assert (release <= ts.to_numpy()).all()
    kept = world.post_release < HELD_BACK
    late = world.post_release[kept] > world.start
    assert 0.4 < late.mean() < 0.6
    assert np.isin(world.post_ids[7023:7960], feed[c.POST_ID]).mean() > 0.5  # posts beyond the real texts are shown


def test_held_back_posts_are_drawn_over_the_catalogue():
    """The real posts are stored topic after topic: held-back posts taken from the end would all be movies."""
    from training.world.generate import release_times
    from training.world.model import HELD_BACK

    release = release_times(7023, 0.3, 700, 0, 30 * 86_400, np.random.default_rng(0))
    held = np.flatnonzero(release >= HELD_BACK)
    assert len(held) == 700
    assert (held < 7023 // 2).mean() > 0.4  # about half in the first half of the ids


def test_fit_blend_recovers_the_weights_within_groups():
    """Scores made of known weights plus a per-group offset: the fit finds the weights, not the offsets."""
    from training.retrieval import fit_blend

    rng = np.random.default_rng(0)
    n, groups = 5000, 200
    group = rng.integers(0, groups, size=n)
    proxy, sims = rng.normal(size=n), rng.normal(size=(n, 5))
    truth = np.array([1.5, 0.5, -0.3, 0.0, 2.0, 0.8])
    y = np.column_stack([proxy, sims]) @ truth + rng.normal(scale=5.0, size=groups)[group] + rng.normal(0, 0.1, n)
    blend = fit_blend(proxy, sims, y, group)
    from app.candidates import BLEND_TERMS, blend_terms

    np.testing.assert_allclose([blend[k] for k in BLEND_TERMS], truth, atol=0.02)
    assert blend["r2"] > 0.99
    # a model without text: the proxy and sim_cf alone
    y = 1.5 * proxy + 0.8 * sims[:, 4] + rng.normal(scale=5.0, size=groups)[group] + rng.normal(0, 0.1, n)
    blend = fit_blend(proxy, sims[:, 4:], y, group, blend_terms(False))
    assert set(blend) == {"proxy", "sim_cf", "r2"}
    np.testing.assert_allclose([blend["proxy"], blend["sim_cf"]], [1.5, 0.8], atol=0.02)


@pytest.mark.parametrize("exact_below", [8_000, 50])
@pytest.mark.parametrize("model", ["control", "test"])
def test_blend_source_ranks_by_proxy_and_the_models_similarities(trained, exact_below, model):
    """The blend source's posts are a topic's best by w . (proxy, the similarities `assemble` gives the
    model: the four text ones and sim_cf for test, sim_cf for control), computed here from the feature
    matrix itself; above exact_below (faiss) it picks from the proxy's best and the taste results, by
    the same formula."""
    from app.artifacts import MODEL_USES_TEXT
    from app.candidates import BLEND_TERMS, Retriever, blend_terms
    from app.features import assemble, feature_names

    text = MODEL_USES_TEXT[model]
    cand = Recommender.load(trained["model_dir"])
    retriever = cand.retriever
    weights = retriever.proxies[model].blend
    assert weights is not None  # training wrote the blend for both models
    terms = blend_terms(text)
    assert not weights[[BLEND_TERMS.index(k) for k in BLEND_TERMS if k not in terms]].any()
    # at the scale training calibrated, the whole blend for both models
    budget = retriever.budget_for(retriever.proxies[model])
    assert retriever.proxies[model].calibrated and budget == retriever.budget.scaled(retriever.proxies[model].scale)
    retriever = Retriever(retriever.proxies, retriever.priors, exact_below=exact_below, nprobe=4)
    retriever.update(cand.state.catalogue.frame)
    snap = cand.state.snapshot
    names = feature_names(text)
    sims = [names.index(k) for k in terms[1:]]
    w = weights[[BLEND_TERMS.index(k) for k in terms[1:]]]
    for user_id in snap.user_ids[:5]:
        t = snap.events_until + 3600
        user, posts = cand.state.at(cand.state.user_row(int(user_id)), t)
        hourly = retriever._hour(model, t, cand.state.timeline)
        x = assemble(user.view, np.int64(0), posts, None, np.int64(t), text=text)
        value = weights[0] * hourly.score + x[:, sims].astype(np.float64) @ w
        topic = int(retriever.favourite_topics(user.view)[0])
        in_topic = np.flatnonzero(posts.topic == topic)
        if exact_below > len(in_topic):
            (got,) = retriever._exact_topic(topic, user.view, weights, hourly.score, (0, 0, 0, 10))
        else:
            assert hourly.pools[topic] is not None  # the pool's block, gathered once for the hour
            got = retriever._blend(topic, user.view, weights, hourly, np.empty(0, np.int64), 10, budget.blend_pool)
        assert len(got) == 10 and (posts.topic[got] == topic).all()
        if exact_below > len(in_topic):
            want = in_topic[np.argsort(-value[in_topic], kind="stable")[:10]]
            np.testing.assert_array_equal(np.sort(got), np.sort(want))
            continue
        # the best of the proxy's pool by the same formula
        pool = hourly.by_topic[topic][:budget.blend_pool]
        assert np.isin(got, pool).all()
        assert value[got].min() >= np.sort(value[pool])[-10] - 1e-4
        # with taste results beside the pool (some in it, twice): the best of both, each once
        outside = np.setdiff1d(in_topic, pool)
        boost = outside[np.argsort(-value[outside], kind="stable")[:6]]  # the best posts the pool misses
        found = np.concatenate([boost, boost[:2], pool[np.argsort(-value[pool])[:3]]])  # and the pool's best
        got = retriever._blend(topic, user.view, weights, hourly, found, 10, budget.blend_pool)
        both = np.union1d(pool, boost)
        assert len(np.unique(got)) == 10 and np.isin(got, both).all()
        assert value[got].min() >= np.sort(value[both])[-10] - 1e-4


def test_a_topic_moved_to_faiss_keeps_no_copy_of_its_vectors(trained):
    """Once a topic is held by a faiss index, the blend reads its vectors from the catalogue: the
    retriever keeps no [vec | cf] copy of the topic (an empty view of one kept the whole batch alive)."""
    from app.candidates import Retriever

    cand = Recommender.load(trained["model_dir"])
    frame = cand.state.catalogue.frame
    retriever = Retriever(cand.retriever.proxies, cand.retriever.priors, exact_below=50, nprobe=4)
    retriever.update(frame)
    held = 0
    for t, index in enumerate(retriever.topics):
        if index.index is None:
            continue
        held += 1
        joint = retriever._joint_exact[t]
        root = joint
        while isinstance(root.base, np.ndarray):
            root = root.base
        assert len(joint) == 0 and root.nbytes == 0, f"topic {t} keeps {root.nbytes} bytes of vectors"
    assert held == len(retriever.topics)  # every topic of the demo catalogue has more than 50 posts


def test_only_the_first_favourites_are_searched_in_faiss(trained):
    """With every topic in a faiss index, a request searches the taste lists of its `Budget.searched`
    favourite topics only (a search is the costly step at a million posts); a less-favoured topic still
    gives the blend's best of the proxy's pool. With `searched` covering every topic, all are searched."""
    from dataclasses import replace

    from app.candidates import Retriever, _nth

    cand = Recommender.load(trained["model_dir"])
    state = cand.state
    kept = cand.retriever
    retriever = Retriever(kept.proxies, kept.priors, exact_below=50, nprobe=4)
    retriever.update(state.catalogue.frame)
    searched: list[tuple[int, str]] = []

    def spy(kind: str, topic: int, index):
        original = index.nearest

        def nearest(queries, ks):
            if any(k > 0 and q.any() for q, k in zip(queries, ks, strict=True)):
                searched.append((topic, kind))
            return original(queries, ks)
        return nearest

    for t in range(len(retriever.topics)):
        retriever.topics[t].nearest = spy("sentence", t, retriever.topics[t])
        retriever.tfidf_topics[t].nearest = spy("tfidf", t, retriever.tfidf_topics[t])
    snap = state.snapshot
    t = snap.events_until + 3600
    proxy = retriever.proxies["test"]
    budget = retriever.budget_for(proxy)
    hourly = retriever._hour("test", t, state.timeline)
    checked = beyond = 0
    for user_id in snap.user_ids[:10]:
        user, _ = state.at(state.user_row(int(user_id)), t)
        favourites = [int(x) for x in retriever.favourite_topics(user.view)]
        searched.clear()
        rows = retriever.candidates("test", user.view, t, state.timeline, state.catalogue.frame)
        assert {topic for topic, _ in searched} <= set(favourites[:budget.searched])
        checked += bool(searched)
        for i, topic in enumerate(favourites[budget.searched:], start=budget.searched):
            best = retriever._blend(topic, user.view, proxy.blend, hourly, np.empty(0, np.int64),
                                    _nth(budget.blend, i), budget.blend_pool)
            assert len(best) and np.isin(best, rows).all()
        retriever.budget = replace(kept.budget, searched=len(retriever.topics))
        searched.clear()
        retriever.candidates("test", user.view, t, state.timeline, state.catalogue.frame)
        retriever.budget = kept.budget
        beyond += bool({topic for topic, _ in searched} - set(favourites[:budget.searched]))
    assert checked >= 5 and beyond >= 5


def test_taste_lists_are_the_nearest_posts_of_the_topic(trained):
    """A topic held exactly gives the taste lists from one product per vector space: the k posts with
    the largest inner product with the topic's taste vector, the overall taste vector and the TF-IDF
    taste, each computed here from the catalogue's vectors directly; a zero taste gives nothing."""
    cand = Recommender.load(trained["model_dir"])
    retriever, snap = cand.retriever, cand.state.snapshot
    checked = 0
    for user_id in snap.user_ids[:20]:
        t = snap.events_until + 3600
        user, posts = cand.state.at(cand.state.user_row(int(user_id)), t)
        view = user.view
        topic = int(retriever.favourite_topics(view)[0])
        members = np.flatnonzero(posts.topic == topic)
        queries = [(view.topic_vec[0, topic], posts.vec), (view.vec[0], posts.vec),
                   (view.topic_tfidf[0, topic], posts.tfidf_vec)]
        got = retriever._exact_topic(topic, view, None, np.zeros(len(posts.topic)), (7, 5, 6, 0))
        lists = iter(got)
        for (query, vecs), k in zip(queries, (7, 5, 6), strict=True):
            if not query.any():
                continue
            found = next(lists)
            value = vecs[members] @ query
            assert len(found) == k and np.isin(found, members).all()
            assert (vecs[found] @ query).min() >= np.sort(value)[-k] - 1e-5
            checked += 1
        assert next(lists, None) is None  # no list for a zero taste, and no blend asked for
    assert checked >= 20


def test_collaborative_source_is_the_best_by_sim_cf(trained):
    """The collaborative source's posts are the best of the catalogue by the `sim_cf` column `assemble`
    gives every model, among the posts with a vector; a user without likes gets none from it."""
    from app.features import assemble, feature_names

    cand = Recommender.load(trained["model_dir"])
    retriever, snap = cand.retriever, cand.state.snapshot
    col = feature_names(False).index("sim_cf")
    k = retriever.budget.cf
    checked = 0
    for user_id in snap.user_ids[:40]:
        t = snap.events_until + 3600
        user, posts = cand.state.at(cand.state.user_row(int(user_id)), t)
        got = retriever.cf.nearest(user.view.cf, [k])
        if not user.view.cf.any():
            assert len(got) == 0
            continue
        value = assemble(user.view, np.int64(0), posts, None, np.int64(t), text=False)[:, col]
        has = np.flatnonzero(posts.cf.any(axis=1))
        assert len(got) == k and np.isin(got, has).all()
        assert value[got].min() >= np.sort(value[has])[-k] - 1e-5
        rows = retriever.candidates("control", user.view, t, cand.state.timeline, cand.state.catalogue.frame)
        assert np.isin(got, rows).all()
        checked += 1
    assert checked >= 10


def test_simulation_counts_views_and_likes_of_inserted_posts():
    """`simulate --new-posts-per-day` reports how many inserted posts were viewed and liked, once each."""
    from training.simulate import _NewPosts

    new = _NewPosts.__new__(_NewPosts)
    new.inserted, new.viewed, new.liked = {900: 0, 901: 0}, set(), set()
    screen = pd.DataFrame({c.TIMESTAMP: [1, 2, 3, 4, 5], c.USER_ID: 7, c.POST_ID: [5, 900, 901, 900, 900],
                           c.ACTION: [c.VIEW, c.VIEW, c.VIEW, c.LIKE, c.VIEW], c.TARGET: [0, 1, 0, None, 0]})
    assert new.react(screen) == (3, 1)
    assert new.viewed == {900, 901} and new.liked == {900}


def test_candidates_for_interleaved_hours_are_those_of_each_hour(trained):
    """The hourly sources are kept for several hours: requests that jump between hours (past moments)
    get the candidates a retriever holding only that hour computes, and the cache stays in its budget."""
    from app.candidates import Retriever

    cand = Recommender.load(trained["model_dir"])
    state, kept = cand.state, cand.retriever
    one = Retriever(kept.proxies, kept.priors, hourly_cache_mb=0)  # at most one entry: recomputed per hour
    one.update(state.catalogue.frame)
    snap = state.snapshot
    hours = [snap.base_as_of + 3600 * k + 1800 for k in (0, 30, 60)]
    rng = np.random.default_rng(5)
    distinct = 0
    for i in range(18):
        user_id, t = int(rng.choice(snap.user_ids)), hours[i % 3] + int(rng.integers(0, 1800))
        user, posts = state.at(state.user_row(user_id), t)
        model = ("test", "control")[i % 2]
        got = cand.candidates(model, user, t, len(posts.topic))
        want = one.candidates(model, user.view, t, state.timeline, state.catalogue.frame)
        np.testing.assert_array_equal(got, want)
        distinct += not np.array_equal(kept._hour(model, hours[0], state.timeline).popular,
                                       kept._hour(model, t, state.timeline).popular)
    assert distinct  # the hours' sources differ: a cache answering any hour with another would fail
    assert len(one._hourly) == 1 and len(kept._hourly) == 6  # 3 hours x 2 proxies


def test_proxy_requests_grow_with_the_validation_rows():
    """One distinct (user, moment) request per 100 validation rows, from 50 to 1,500, never more than the
    distinct pairs there are, none repeated."""
    import pandas as pd

    from training.retrieval import proxy_requests

    def val(rows: int, pairs: int) -> pd.DataFrame:
        k = np.arange(rows) % pairs
        return pd.DataFrame({"user_row": k // 7, "ts": 1_000 + k, "post_row": np.arange(rows)})

    assert len(proxy_requests(val(10_000, 5_000))) == 100
    assert len(proxy_requests(val(149_958, 100_000))) == 1_500
    assert len(proxy_requests(val(1_000_000, 100_000))) == 1_500
    assert len(proxy_requests(val(2_000, 1_000))) == 50
    few = proxy_requests(val(2_000, 30))
    assert len(few) == 30 and not few.duplicated().any()
    assert len(proxy_requests(val(10_000, 5_000), n=7)) == 7


def test_budget_scaled_lengthens_the_recall_lists_only():
    """A scale multiplies every list retrieval sizes for recall, keeps a list that had posts at one post
    at least and an empty one empty, and leaves the exploration lists (popular, fresh) alone."""
    from dataclasses import replace

    from app.candidates import Budget

    b = Budget()
    assert b.scaled(1.0) is b
    half = b.scaled(0.5)
    assert half.taste_topic == tuple(max(1, round(k * 0.5)) for k in b.taste_topic)
    assert half.blend == tuple(max(1, round(k * 0.5)) for k in b.blend)
    assert (half.proxy_topic, half.cf, half.blend_pool) == ((100, 40, 20), 25, 200)
    assert (half.popular, half.fresh) == (b.popular, b.fresh)
    assert b.scaled(0.01).proxy_every == 1 and b.scaled(0.01).taste_all == (1, 1, 1, 1)
    assert replace(b, cf=0, blend=()).scaled(2.0).cf == 0 and replace(b, blend=()).scaled(2.0).blend == ()
    assert b.scaled(0.5) is half  # built once: requests ask for it every time


def test_calibration_picks_the_shortest_lists_that_reach_the_target(trained):
    """`calibrate_scales` reports, per model, recall of the full top 5 that full scoring (the
    RETRIEVAL=full service) confirms on the same requests; longer lists never lose a candidate; the
    scale kept is the first that reaches the target; and the served artifact carries what training kept."""
    import json

    from app.candidates import RETRIEVAL_FILE
    from training.retrieval import calibrate_scales

    full = Recommender.load(trained["model_dir"], policy=FULL)
    cand = Recommender.load(trained["model_dir"])
    snap = full.state.snapshot
    rng = np.random.default_rng(5)
    requests = pd.DataFrame({c.USER_ID: rng.choice(snap.user_ids, size=40, replace=False),
                             "ts": rng.integers(snap.base_as_of, snap.events_until, size=40)})
    scales = (0.3, 0.6, 1.0, 2.0)
    result = calibrate_scales(cand, requests, target=0.9, scales=scales)
    for model in ("control", "test"):
        r = result[model]
        if not r["requests"]:
            continue
        recalls = [v[0] for v in r["curve"].values()]
        sizes = [v[1] for v in r["curve"].values()]
        assert recalls == sorted(recalls) and sizes == sorted(sizes)
        assert r["scale"] == (next((s for s in scales if r["curve"][str(s)][0] >= 0.9), scales[-1]))
        assert cand.retriever.proxies[model].scale == r["scale"]  # left at the scale kept
        found = total = asked = 0
        for u, t in zip(requests[c.USER_ID], requests["ts"], strict=True):
            user, posts = cand.state.at(cand.state.user_row(int(u)), int(t))
            if cand.ranker_for(model, user) != model:
                continue
            asked += 1
            top = full.recommend(model, int(u), int(t), 5).post_ids
            rows = cand.candidates(model, user, int(t), len(posts.topic))
            found += len(set(top.tolist()) & set(cand.post_ids[rows].tolist()))
            total += len(top)
        assert asked == r["requests"] and round(found / total, 4) == r["recall"]
        # longer lists hold every candidate of shorter ones (what makes the first scale to reach the target
        # the shortest that does)
        kept = r["scale"]
        for u, t in list(zip(requests[c.USER_ID], requests["ts"], strict=True))[:10]:
            user, posts = cand.state.at(cand.state.user_row(int(u)), int(t))
            sets = []
            for s in (0.5, 1.5):
                cand.retriever.rescale(model, s)
                sets.append(cand.candidates(model, user, int(t), len(posts.topic)))
            assert np.isin(sets[0], sets[1]).all() and len(sets[1]) > len(sets[0])
        cand.retriever.rescale(model, kept)
    # what training kept is in the artifact, and the service loads it
    meta = json.loads((trained["version_dir"] / RETRIEVAL_FILE).read_text())["proxy"]
    served = Recommender.load(trained["model_dir"])
    for model, proxy in served.retriever.proxies.items():
        budget = meta[model]["budget"]
        assert proxy.scale == budget["scale"] and budget["requests"] > 0
        assert budget["recall"] >= budget["target"] or budget["scale"] == max(map(float, budget["curve"]))


def test_artifacts_before_the_calibration_keep_their_sizes():
    """An artifact without a calibrated scale serves the sizes it was built for (a model without text:
    half the blend); a calibrated one, the whole blend at its scale, for either model."""
    from app.candidates import NO_BLEND, Budget, Proxy, Retriever

    blend = {"proxy": 1.0, "sim_cf": 0.5}
    old_control, old_test = Proxy(None, False, blend), Proxy(None, True, blend)
    old_plain = Proxy(None, True, None)
    new_control, new_test = Proxy(None, False, blend, 0.8), Proxy(None, True, blend, 0.5)
    r = Retriever({"control": old_control}, priors=None)
    b = Budget()
    assert not old_control.calibrated and r.budget_for(old_control).blend == tuple(k // 2 for k in b.blend)
    assert r.budget_for(old_control).taste_topic == b.taste_topic
    assert r.budget_for(old_test) == b and r.budget_for(old_plain) == NO_BLEND
    assert new_control.calibrated and r.budget_for(new_control) == b.scaled(0.8)
    assert r.budget_for(new_test) == b.scaled(0.5)


def test_calibrate_command_sizes_an_existing_version(trained, tmp_path):
    """`python -m training calibrate` rewrites a version's retrieval budget and its manifest's checksums
    (the service loads it and serves the new scales); a missing version is a clear error, exit 2."""
    import json
    import shutil

    from typer.testing import CliRunner

    from app.artifacts import set_current
    from app.candidates import RETRIEVAL_FILE
    from training.cli import app as cli

    version = trained["version_dir"].name
    models = tmp_path / "models"  # a copy: the session's artifact stays as trained
    shutil.copytree(trained["version_dir"], models / version)
    set_current(models, version)
    r = CliRunner().invoke(cli, ["calibrate", "--db", trained["db_url"], "--models", str(models),
                                 "--recall", "0.6", "--requests", "40"])
    assert r.exit_code == 0, r.output
    meta = json.loads((models / version / RETRIEVAL_FILE).read_text())["proxy"]
    served = Recommender.load(models)  # checksums match, or this raises
    for model in ("control", "test"):
        budget = meta[model]["budget"]
        assert budget["target"] == 0.6 and f"{model}: scale {budget['scale']}" in r.output
        assert served.retriever.proxies[model].scale == budget["scale"]
        assert budget["recall"] is None or budget["recall"] >= 0.6 or budget["scale"] == 2.0
    manifest = json.loads((models / version / "manifest.json").read_text())
    assert manifest["retrieval"]["budget"]["test"]["scale"] == meta["test"]["budget"]["scale"]
    missing = CliRunner().invoke(cli, ["calibrate", "--db", trained["db_url"], "--models", str(models),
                                       "--version", "v-none"])
    assert missing.exit_code == 2 and "no artifact version" in missing.output


def test_the_cost_curve_is_plotted_from_the_bench_results(tmp_path):
    """`bench.catalogue cost` draws its rows (both retrievals, any subset of sizes) into a PNG."""
    from bench.catalogue import _plot_cost

    rows = [{"size": n, "mode": mode, "p50": p50, "p99": p50 * 1.2}
            for n, mode, p50 in ((7023, "candidates", 1.6), (70_000, "candidates", 2.8), (1_000_000, "candidates", 3.9),
                                 (7023, "full", 5.0), (70_000, "full", 57.6))]
    path = tmp_path / "cost.png"
    _plot_cost(rows, path)
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and path.stat().st_size > 10_000
    _plot_cost([r for r in rows if r["mode"] == "candidates"], path)  # no full-scoring row: still a plot
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_cost_bench_grows_distinct_unit_vectors_and_keeps_zero_rows_zero():
    """The cost curve's grown posts: copies of the artifact's vectors made distinct, each still of unit
    length, a post without a collaborative vector still without one; jitter 0 gives the copies."""
    from bench.catalogue import _jittered

    rng = np.random.default_rng(0)
    vecs = rng.standard_normal((50, 8)).astype(np.float32)
    vecs /= np.linalg.norm(vecs, axis=1, keepdims=True)
    vecs[::5] = 0
    copies = vecs[np.resize(np.arange(50), 200)]
    out = _jittered(copies, 0.3, np.random.default_rng(1))
    assert out.dtype == np.float32 and out.shape == copies.shape
    zero = ~copies.any(axis=1)
    assert not out[zero].any()
    np.testing.assert_allclose(np.linalg.norm(out[~zero], axis=1), 1.0, atol=1e-5)
    assert len(np.unique(out[~zero], axis=0)) == (~zero).sum()  # no two alike
    assert (np.einsum("ij,ij->i", out[~zero], copies[~zero]) > 0.5).all()  # near the post they copy
    assert _jittered(copies, 0.0, rng) is copies


@pytest.mark.parametrize("bad", [["--jitter", "-0.1"], ["--recall", "-5"]])
def test_cost_bench_refuses_a_negative_jitter_or_recall_naming_it(bad):
    """Refused before the artifact is read, the option named (a negative --recall would cut the requests
    from the end)."""
    from bench.catalogue import main

    with pytest.raises(SystemExit, match="--jitter and --recall must not be negative"):
        main(["cost", "--models", "/nonexistent", "--posts", "7023", *bad])


@pytest.mark.parametrize("bad", [["--values", "3", "-1"], ["--jitter", "-0.1"], ["--requests", "0"]])
def test_searched_bench_refuses_bad_options_naming_them(bad):
    """Refused before the artifact is read, every option named with what it got."""
    from bench.catalogue import main

    with pytest.raises(SystemExit, match="--values and --jitter must not be negative and --requests at least 1"):
        main(["searched", "--models", "/nonexistent", *bad])
