"""Build a demo world: users, posts and a random feed whose likes follow the world's probabilities.

Reference statistics (the course database at scale 1.0) live in `training.world.reference`; the
segment like rates are met by calibrating the world's offsets on a sample before the feed is drawn.
"""

from __future__ import annotations

import time
from functools import lru_cache
from pathlib import Path

import numpy as np
import pandas as pd
from loguru import logger
from sklearn.decomposition import NMF
from sklearn.feature_extraction.text import TfidfVectorizer
from sqlalchemy import delete, inspect
from tqdm import tqdm

from app import columns as c
from app.db import create_course_tables, create_feed_indexes, drop_feed_indexes, make_engine, masked
from app.tables import COURSE_TABLES, feed_data, post_text_df, recommendation_log, user_data
from training.bulk import epoch_to_datetime, write_frame
from training.world import reference as ref
from training.world.cities import city_table
from training.world.exposure import choose_posts, organic_parameters
from training.world.model import HELD_BACK, World
from training.world.texts import load_posts

EXPOSURES = ("random", "organic")  # the course's random feed; users who choose what they view
THEMES_PER_TOPIC = {"movie": 4, "covid": 4}  # other topics: 3
USERS_PER_CHUNK = 5_000
CALIBRATION_ROWS = 400_000


# ------------------------------------------------------------------ posts
@lru_cache(maxsize=1)
def catalogue() -> tuple[pd.DataFrame, np.ndarray]:
    """The fixed posts and their theme mix (the same for every seed and scale, so computed once)."""
    posts = load_posts()
    return posts, post_themes(posts)


def post_themes(posts: pd.DataFrame) -> np.ndarray:
    """Theme mix of each post inside its topic (NMF on TF-IDF), rows summing to 1."""
    blocks, offsets = [], 0
    sizes = {t: THEMES_PER_TOPIC.get(t, 3) for t in c.TOPICS}
    n_themes = sum(sizes.values())
    out = np.zeros((len(posts), n_themes))
    for topic in c.TOPICS:
        mask = (posts[c.TOPIC] == topic).to_numpy()
        k = sizes[topic]
        if mask.any():
            tfidf = TfidfVectorizer(stop_words="english", max_features=5000, min_df=2).fit_transform(
                posts.loc[mask, c.TEXT])
            w = NMF(n_components=k, init="nndsvd", random_state=0, max_iter=400).fit_transform(tfidf)
            w = w ** 2 + 1e-9  # sharpen: a post is mostly about one theme
            out[mask, offsets:offsets + k] = w / w.sum(axis=1, keepdims=True)
        blocks.append(k)
        offsets += k
    return out


def grown_catalogue(posts: pd.DataFrame, themes: np.ndarray, n: int,
                    rng: np.random.Generator) -> tuple[pd.DataFrame, np.ndarray]:
    """A catalogue of n posts: the real ones, then new ids over the real texts (drawn at random) with the
    source's theme mix; each post gets its own appeal and exposure in `build_world`, so two posts with
    one text differ in how much they are liked. Fewer than the real posts: a fixed random subset."""
    if n <= len(posts):
        pick = np.sort(rng.choice(len(posts), size=n, replace=False))
        return posts.iloc[pick].reset_index(drop=True), themes[pick]
    src = rng.integers(0, len(posts), size=n - len(posts))
    extra = posts.iloc[src].reset_index(drop=True).assign(
        **{c.POST_ID: int(posts[c.POST_ID].max()) + 1 + np.arange(n - len(posts))})
    return pd.concat([posts, extra], ignore_index=True), np.vstack([themes, themes[src]])


def release_times(n: int, share: float, held_back: int, start: int, end: int,
                  rng: np.random.Generator) -> np.ndarray:
    """When each post enters: at the start, or for a `share` of them uniformly over the data's days;
    `held_back` posts drawn at random never within the data (inserted by the simulation). At random, not
    the last ids: the real posts are stored topic after topic, and the last 700 are all movies."""
    release = np.full(n, start, np.int64)
    later = rng.random(n) < share
    release[later] = rng.integers(start, end - 86_400, size=int(later.sum()))
    if held_back:
        release[rng.choice(n, size=held_back, replace=False)] = HELD_BACK
    return release


def post_exposure(n: int, rng: np.random.Generator) -> np.ndarray:
    tier = rng.choice(3, size=n, p=ref.EXPOSURE_TIER_SHARES)
    return np.asarray(ref.EXPOSURE_TIER_WEIGHTS)[tier] * rng.uniform(0.93, 1.07, size=n)


# ------------------------------------------------------------------ users
def make_users(n: int, rng: np.random.Generator) -> pd.DataFrame:
    ids = np.sort(rng.choice(np.arange(200, 200 + int(n * 1.032) + 1), size=n, replace=False))
    country_p = np.array([ref.COUNTRY_COUNTS[k] for k in c.COUNTRIES], dtype=float)
    country = rng.choice(len(c.COUNTRIES), size=n, p=country_p / country_p.sum())
    cities = city_table()
    city = np.empty(n, dtype=object)
    for code, name in enumerate(c.COUNTRIES):
        mask = country == code
        names, weights = cities[name]
        city[mask] = rng.choice(names, size=int(mask.sum()), p=weights)
    # age: 14 + lognormal fitted to the quartiles 19, 24, 33
    age = np.clip(np.round(14 + rng.lognormal(np.log(10), 0.95, size=n)), 14, 95).astype(int)
    return pd.DataFrame({
        c.USER_ID: ids,
        c.GENDER: (rng.random(n) < ref.GENDER_MALE_SHARE).astype(int),
        c.AGE: age,
        c.COUNTRY: np.asarray(c.COUNTRIES, dtype=object)[country],
        c.CITY: city,
        c.EXP_GROUP: rng.integers(0, 5, size=n),
        c.OS: np.where(rng.random(n) < ref.ANDROID_SHARE, "Android", "iOS"),
        c.SOURCE: np.where(rng.random(n) < ref.ADS_SHARE, "ads", "organic"),
    })


def theme_tastes(n_users: int, post_themes_: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Two favourite themes and one disliked theme per user, small noise elsewhere."""
    n_themes = post_themes_.shape[1]
    prevalence = post_themes_.sum(axis=0)
    prevalence = prevalence / prevalence.sum()
    taste = rng.normal(0.0, 0.25, size=(n_users, n_themes))
    rows = np.arange(n_users)
    # Gumbel top-k draws two distinct favourites per user in proportion to theme prevalence
    keys = np.log(prevalence)[None, :] - np.log(-np.log(rng.random((n_users, n_themes))))
    fav = np.argsort(-keys, axis=1)[:, :3]
    taste[rows, fav[:, 0]] = rng.uniform(1.2, 2.8, size=n_users)
    taste[rows, fav[:, 1]] = rng.uniform(0.8, 2.2, size=n_users)
    taste[rows, fav[:, 2]] = rng.uniform(-2.0, -0.8, size=n_users)
    return taste


def activity(n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Views per user (heavy-tailed) and each user's active span in days."""
    views = np.clip(rng.lognormal(ref.VIEWS_LOG_MEAN, ref.VIEWS_LOG_SIGMA, size=n), 30, 5000).astype(int)
    start = np.where(rng.random(n) < 0.55, 0, rng.integers(0, ref.N_DAYS - 14, size=n))
    late_end = start + 7 + (rng.random(n) * (ref.N_DAYS - 7 - start)).astype(int)
    end = np.where(rng.random(n) < 0.75, ref.N_DAYS - 1, np.minimum(late_end, ref.N_DAYS - 1))
    return views, start, end


# ------------------------------------------------------------------ world
def build_world(users: pd.DataFrame, posts: pd.DataFrame, themes: np.ndarray, views: np.ndarray, seed: int,
                scale: float, rng: np.random.Generator) -> World:
    n_users = len(users)
    topic_code = pd.Categorical(posts[c.TOPIC], categories=c.TOPICS).codes.astype(np.int64)
    world = World(
        seed=seed, scale=scale, start=ref.START, end=ref.START + ref.N_DAYS * 86_400,
        intercept=float(np.log(0.12 / 0.88)),
        off_gender=np.zeros(2), off_country=np.zeros(len(c.COUNTRIES)), off_exp=np.zeros(5),
        off_topic=np.zeros(len(c.TOPICS)), off_hour=np.zeros(24),
        age_slope=-0.004, profile_topic=ref.profile_topic_table(),
        drift=np.array([ref.TOPIC_DRIFT.get(t, 0.0) for t in c.TOPICS]),
        user_ids=users[c.USER_ID].to_numpy(np.int64),
        user_gender=users[c.GENDER].to_numpy(np.int64),
        user_age=users[c.AGE].to_numpy(np.int64),
        user_country=pd.Categorical(users[c.COUNTRY], categories=c.COUNTRIES).codes.astype(np.int64),
        user_exp=users[c.EXP_GROUP].to_numpy(np.int64),
        user_bias=rng.normal(0.0, 0.45, size=n_users),
        user_topic_taste=rng.normal(0.0, 0.5, size=(n_users, len(c.TOPICS))),
        user_theme_taste=theme_tastes(n_users, themes, rng),
        post_ids=posts[c.POST_ID].to_numpy(np.int64),
        post_topic=topic_code,
        post_appeal=rng.normal(0.0, 0.4, size=len(posts)),
        post_themes=themes,
        post_exposure=post_exposure(len(posts), rng),
    )
    calibrate(world, views, rng)
    return world


def calibrate(world: World, views: np.ndarray, rng: np.random.Generator, rounds: int = 12) -> None:
    """Rake the segment offsets until the like rate per view meets each reference rate."""
    n = CALIBRATION_ROWS
    ui = rng.choice(len(world.user_ids), size=n, p=views / views.sum())
    pj = rng.choice(len(world.post_ids), size=n, p=world.post_exposure / world.post_exposure.sum())
    ts = sample_times(rng.integers(0, ref.N_DAYS, size=n), rng)
    factors = {
        "off_gender": (world.user_gender[ui], ref.LIKE_RATE_GENDER),
        "off_country": (world.user_country[ui], ref.like_rate_country()),
        "off_exp": (world.user_exp[ui], ref.LIKE_RATE_EXP_GROUP),
        "off_topic": (world.post_topic[pj], ref.like_rate_topic()),
        "off_hour": ((ts // 3600) % 24, ref.like_rate_hour()),
    }
    for _ in range(rounds):
        for name, (codes, targets) in factors.items():
            p = 1.0 / (1.0 + np.exp(-world.logit_by_index(ui, pj, ts)))
            offsets = getattr(world, name)
            for code, target in enumerate(targets):
                m = codes == code
                if target is None or not m.any():
                    continue
                achieved = p[m].mean()
                offsets[code] += np.log(target / (1 - target)) - np.log(achieved / (1 - achieved))


def sample_times(days: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    hours = rng.choice(24, size=len(days), p=ref.hour_activity())
    return ref.START + days * 86_400 + hours * 3600 + rng.integers(0, 3600, size=len(days))


# ------------------------------------------------------------------ feed
def feed_chunk(world: World, ui: np.ndarray, views: np.ndarray, start: np.ndarray, end: np.ndarray,
               rng: np.random.Generator) -> pd.DataFrame:
    """Views and likes of a block of users (row indexes `ui`), as feed_data rows."""
    n_sessions = np.maximum(1, np.round(views / ref.VIEWS_PER_SESSION)).astype(int)
    s_user = np.repeat(np.arange(len(ui)), n_sessions)
    s_day = start[s_user] + (rng.random(len(s_user)) * (end[s_user] - start[s_user] + 1)).astype(int)
    s_time = sample_times(s_day, rng)
    # each view belongs to one of its user's sessions and follows the previous one by seconds
    v_user = np.repeat(np.arange(len(ui)), views)
    first_session = np.concatenate([[0], np.cumsum(n_sessions)[:-1]])
    v_session = first_session[v_user] + (rng.random(len(v_user)) * n_sessions[v_user]).astype(int)
    order = np.argsort(v_session, kind="stable")
    v_user, v_session = v_user[order], v_session[order]
    gap = rng.exponential(25.0, size=len(v_session)).astype(np.int64) + 1
    run = np.cumsum(gap)
    session_start = np.concatenate([[0], np.flatnonzero(np.diff(v_session)) + 1])
    run -= np.repeat(run[session_start] - gap[session_start], np.diff(np.append(session_start, len(run))))
    day_end = (s_time[v_session] - ref.START) // 86_400 * 86_400 + ref.START + 86_399
    ts = np.minimum(s_time[v_session] + run, day_end)
    if world.exposure == "organic":
        pj = choose_posts(world, ui[v_user], ts, rng)
    else:
        exposure = world.post_exposure / world.post_exposure.sum()
        pj = rng.choice(len(world.post_ids), size=len(v_user), p=exposure)
        if len(world.post_release):  # a view only of a post released before it: draw again, then drop
            for _ in range(8):
                early = world.post_release[pj] > ts
                if not early.any():
                    break
                pj[early] = rng.choice(len(world.post_ids), size=int(early.sum()), p=exposure)
            ok = world.post_release[pj] <= ts
            v_user, pj, ts = v_user[ok], pj[ok], ts[ok]
    # either feed may draw a post twice for a user; keep the first showing
    key = ui[v_user].astype(np.int64) * len(world.post_ids) + pj
    _, first = np.unique(key, return_index=True)
    first.sort()
    v_user, pj, ts = v_user[first], pj[first], ts[first]
    liked = rng.random(len(pj)) < 1.0 / (1.0 + np.exp(-world.logit_by_index(ui[v_user], pj, ts)))
    like_ts = np.minimum(ts[liked] + rng.exponential(40.0, size=int(liked.sum())).astype(np.int64) + 1,
                         (ts[liked] - ref.START) // 86_400 * 86_400 + ref.START + 86_399)
    uid = world.user_ids[ui[v_user]]
    pid = world.post_ids[pj]
    frame = pd.DataFrame({
        c.TIMESTAMP: np.concatenate([ts, like_ts]),
        c.USER_ID: np.concatenate([uid, uid[liked]]),
        c.POST_ID: np.concatenate([pid, pid[liked]]),
        c.ACTION: np.concatenate([np.full(len(ts), c.VIEW, dtype=object),
                                  np.full(int(liked.sum()), c.LIKE, dtype=object)]),
        c.TARGET: pd.array(np.concatenate([liked.astype(np.int64), np.full(int(liked.sum()), -1)]),
                           dtype="Int64"),
    })
    frame.loc[frame[c.ACTION] == c.LIKE, c.TARGET] = pd.NA
    frame = frame.sort_values([c.USER_ID, c.TIMESTAMP], kind="stable")
    frame[c.TIMESTAMP] = epoch_to_datetime(frame[c.TIMESTAMP].to_numpy()).to_numpy()
    return frame


# ------------------------------------------------------------------ entry point
class TablesExist(RuntimeError):
    """The database already holds course tables and --replace was not given (nothing was written)."""


def generate_world(db_url: str, scale: float, seed: int, world_path: Path, replace: bool = False,
                   exposure: str = "random", n_posts: int | None = None, release_share: float = 0.0,
                   held_back: int = 0) -> str:
    """Generate users, posts and feed at `scale`, write them in one transaction, save the world.
    `exposure` is how users come to view posts: the course's random feed, or their own choice
    (`training.world.exposure`). `n_posts` grows (or shrinks) the catalogue (`grown_catalogue`);
    `release_share` of the posts enter over the data's days rather than at its start (random feed);
    the last `held_back` posts are kept out of post_text_df and the feed, for
    `simulate --new-posts-per-day` to insert."""
    if not 0 < scale <= 2:
        raise ValueError(f"scale must be in (0, 2], got {scale}")
    if exposure not in EXPOSURES:
        raise ValueError(f"exposure must be one of {EXPOSURES}, got {exposure!r}")
    if not 0 <= release_share <= 1:
        raise ValueError(f"release share must be in [0, 1], got {release_share}")
    # refused before the minutes of building a world, not after them
    engine = make_engine(db_url)
    existing = set(inspect(engine).get_table_names())
    if existing & {t.name for t in COURSE_TABLES} and not replace:
        engine.dispose()
        raise TablesExist(f"{masked(db_url)} already holds course tables: "
                          "pass --replace to rebuild them")
    t0 = time.perf_counter()
    rng = np.random.default_rng(seed)
    n_users = max(50, round(ref.N_USERS * scale))
    users = make_users(n_users, rng)
    posts, themes = catalogue()
    views, start, end = activity(n_users, rng)
    grow = n_posts is not None or release_share > 0 or held_back > 0
    if n_posts is not None and n_posts != len(posts):
        # a generator of its own: the users' draws above and below stay those of the default world
        posts, themes = grown_catalogue(posts, themes, n_posts, np.random.default_rng([seed, 2]))
    if not 0 <= held_back < len(posts):
        raise ValueError(f"held back posts must be fewer than the {len(posts)} posts, got {held_back}")
    world = build_world(users, posts, themes, views, seed, scale, rng)
    if exposure == "organic":  # drawn after the random world's parameters: same users, posts and tastes
        organic_parameters(world, rng)
    if grow:
        release = release_times(len(posts), release_share, held_back, world.start, world.end,
                                np.random.default_rng([seed, 3]))
        if len(world.post_release):  # the organic feed's own release times, and the held-back posts
            release = np.where(release >= HELD_BACK, release, world.post_release)
        world.post_release = release
        held = release >= HELD_BACK  # in post id order, as `World.held_back_ids`
        world.held_back_text = posts[c.TEXT].to_numpy(str)[held]
        posts = posts.loc[~held].reset_index(drop=True)
    logger.info("world calibrated: {} users, {} posts", n_users, len(posts))

    create_course_tables(engine, with_indexes=False)
    drop_feed_indexes(engine)
    n_feed = 0
    with engine.begin() as conn:
        for table in (feed_data, post_text_df, user_data):
            conn.execute(delete(table))
        if recommendation_log.name in existing:  # exposures of an old world mean nothing in a new one
            conn.execute(delete(recommendation_log))
        write_frame(conn, user_data, users)
        write_frame(conn, post_text_df, posts)
        chunks = range(0, n_users, USERS_PER_CHUNK)
        for lo in tqdm(chunks, desc="feed", unit="chunk", disable=None):
            ui = np.arange(lo, min(lo + USERS_PER_CHUNK, n_users))
            chunk = feed_chunk(world, ui, views[ui], start[ui], end[ui], rng)
            n_feed += write_frame(conn, feed_data, chunk)
    create_feed_indexes(engine)
    engine.dispose()
    world.save(world_path)
    return (f"world seed={seed} scale={scale} exposure={exposure}: {n_users} users, {len(posts)} posts"
            f"{f' (+{held_back} held back)' if held_back else ''}, {n_feed} feed rows "
            f"in {time.perf_counter() - t0:.1f}s; world saved to {world_path}")

