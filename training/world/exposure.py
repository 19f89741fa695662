"""How users come to view posts in an organic world: they choose, by popularity, recency and taste.

The course's feed (and the default demo world) shows random posts, so which posts a user views says
nothing about the user. On most real platforms users open what they choose to open, and that choice
follows what is popular and new at least as much as what they would like. An organic world draws each
view from a choice model over the catalogue:

    P(view of user u at t is post j)  ∝  exp( choice_buzz · buzz_j                 -- latent popularity
                                              + choice_recency · log recency_j(t)  -- new posts pull
                                              + choice_taste · taste_uj(t) )       -- the like log-odds

with `taste_uj` the part of the world's like log-odds that varies across posts for one user (topic and
theme tastes, the profile × topic term, the post's appeal, the topic drift), and `recency_j(t)` =
max(exp(-(t - release_j) / recency_days), recency_floor), zero before the post's release. So what a user
opens and what they like are related but not the same, and the world knows both probabilities
(`World.choice_probability` and `World.like_probability`).
"""

from __future__ import annotations

import numpy as np

from training.world.model import SECONDS_PER_DAY, World, age_band

BLOCK_DAYS = 3  # views of one user within a block of days share one choice distribution (its start)
PAIRS_PER_BATCH = 256  # (user, block) distributions held at once: 256 x 7,023 float64 = 14 MB
# defaults of the organic world: popularity (the buzz spreads e^±3) and recency weigh more than taste,
# as on real logs where what users open follows popularity more than what they would like
CHOICE_BUZZ = 1.5
CHOICE_RECENCY = 1.0
CHOICE_TASTE = 0.4
RELEASED_BEFORE_START = 0.4  # share of posts already out when the data starts


def organic_parameters(world: World, rng: np.random.Generator) -> None:
    """Give a world the latent popularity and release times of an organic feed (in place)."""
    n = len(world.post_ids)
    z = world.post_appeal / max(float(world.post_appeal.std()), 1e-9)
    # popular posts are a little more liked on average, not much: choosing and liking part ways
    world.post_buzz = 0.3 * z + np.sqrt(1 - 0.09) * rng.normal(0.0, 1.0, size=n)
    span = world.end - world.start
    old = rng.random(n) < RELEASED_BEFORE_START
    release = world.start + (rng.random(n) * (span - SECONDS_PER_DAY)).astype(np.int64)
    release[old] = world.start - (rng.random(int(old.sum())) * 60 * SECONDS_PER_DAY).astype(np.int64)
    world.post_release = release
    world.exposure = "organic"
    world.choice_buzz, world.choice_recency, world.choice_taste = CHOICE_BUZZ, CHOICE_RECENCY, CHOICE_TASTE


def user_taste(world: World, ui: np.ndarray) -> np.ndarray:
    """(len(ui), P) the like log-odds terms that vary across posts for each user, without the drift."""
    topic = world.post_topic
    band, gender = age_band(world.user_age[ui]), world.user_gender[ui]
    return (world.user_theme_taste[ui] @ world.post_themes.T
            + world.user_topic_taste[ui][:, topic]
            + world.profile_topic[band, gender][:, topic]
            + (world.off_topic[topic] + world.post_appeal)[None, :])


def moment_terms(world: World, ts: np.ndarray) -> np.ndarray:
    """(len(ts), P) the choice logit's terms shared by every user at each moment: buzz, recency and the
    taste's topic drift; -inf before a post's release."""
    ts = np.asarray(ts, np.int64)[:, None]
    age_days = (ts - world.post_release[None, :]) / SECONDS_PER_DAY
    recency = np.maximum(np.exp(-np.maximum(age_days, 0.0) / world.recency_days), world.recency_floor)
    frac = (ts - world.start) / max(world.end - world.start, 1) - 0.5
    out = (world.choice_buzz * world.post_buzz[None, :] + world.choice_recency * np.log(recency)
           + world.choice_taste * world.drift[world.post_topic][None, :] * frac)
    return np.where(age_days >= 0, out, -np.inf)


def choice_logits(world: World, ui: np.ndarray, ts: np.ndarray) -> np.ndarray:
    """(len(ui), P) the organic choice log-weights of user rows `ui` at moments `ts` (row-aligned)."""
    return world.choice_taste * user_taste(world, ui) + moment_terms(world, ts)


def choose_posts(world: World, ui: np.ndarray, ts: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """One post row per view (user row `ui[i]` at `ts[i]`), drawn from the choice model; a user's views
    within a block of BLOCK_DAYS share the distribution of the block's start (so no post is viewed before
    its release). Draws are independent: the caller keeps a user's first showing of a post."""
    ui, ts = np.asarray(ui, np.int64), np.asarray(ts, np.int64)
    n_posts = len(world.post_ids)
    block_len = BLOCK_DAYS * SECONDS_PER_DAY
    block = np.maximum(ts - world.start, 0) // block_len
    n_blocks = int(block.max()) + 1 if len(ts) else 1
    pair, inverse = np.unique(ui * n_blocks + block, return_inverse=True)
    pair_user, pair_block = pair // n_blocks, pair % n_blocks
    shared = moment_terms(world, world.start + np.arange(n_blocks) * block_len)
    order = np.argsort(inverse, kind="stable")
    counts = np.bincount(inverse, minlength=len(pair))
    first = np.concatenate([[0], np.cumsum(counts)])
    out = np.empty(len(ui), np.int64)
    for lo in range(0, len(pair), PAIRS_PER_BATCH):
        hi = min(lo + PAIRS_PER_BATCH, len(pair))
        logits = world.choice_taste * user_taste(world, pair_user[lo:hi]) + shared[pair_block[lo:hi]]
        w = np.exp(logits - logits.max(axis=1, keepdims=True))
        cum = np.cumsum(w, axis=1)
        cum /= cum[:, -1:]
        cum += np.arange(hi - lo)[:, None]  # row r's cumulative shares live in [r, r + 1]: one sorted array
        views = order[first[lo]:first[hi]]
        row = inverse[views] - lo
        flat = np.searchsorted(cum.ravel(), row + rng.random(len(views)) * (1 - 1e-12), side="right")
        out[views] = np.minimum(flat - row * n_posts, n_posts - 1)
    return out
