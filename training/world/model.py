"""The world's latent truth and its small API: like probabilities and sampled reactions.

The log-odds that user u likes post p shown at time t is a sum of named parts:

    intercept + segment offsets (gender, country, exp_group, topic, hour) + age slope
    + profile x topic (age band and gender)                       -- learnable from the profile
    + user bias + post appeal                                    -- learnable from counts
    + user's own taste per topic                                 -- learnable from the user's history
    + user's taste for themes inside topics . post's theme mix   -- only the text reveals the themes
    + topic drift over the weeks

Times are int64 seconds since the Unix epoch (UTC); ids are the table ids.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import numpy as np

HOURS = np.arange(24)
HELD_BACK = np.iinfo(np.int64).max // 4  # release time of a held-back post
AGE_BANDS = np.array([21, 31, 46])  # band edges: 14-20, 21-30, 31-45, 46+
SECONDS_PER_DAY = 86_400


def age_band(age: np.ndarray) -> np.ndarray:
    return np.searchsorted(AGE_BANDS, age, side="right")


@dataclass
class World:
    seed: int
    scale: float
    start: int  # first second of the data
    end: int  # first second after the data
    intercept: float
    # segment offsets, indexed by code
    off_gender: np.ndarray  # (2,)
    off_country: np.ndarray  # (n_countries,)
    off_exp: np.ndarray  # (5,)
    off_topic: np.ndarray  # (n_topics,)
    off_hour: np.ndarray  # (24,)
    age_slope: float
    profile_topic: np.ndarray  # (n_age_bands, 2 genders, n_topics)
    drift: np.ndarray  # (n_topics,) log-odds change from the first to the last day
    # users, row i = user_ids[i]
    user_ids: np.ndarray
    user_gender: np.ndarray
    user_age: np.ndarray
    user_country: np.ndarray
    user_exp: np.ndarray
    user_bias: np.ndarray
    user_topic_taste: np.ndarray  # (U, n_topics)
    user_theme_taste: np.ndarray  # (U, n_themes)
    # posts, row j = post_ids[j]
    post_ids: np.ndarray
    post_topic: np.ndarray
    post_appeal: np.ndarray
    post_themes: np.ndarray  # (P, n_themes), rows sum to 1 within the post's topic
    post_exposure: np.ndarray  # relative chance of being shown by the random feed
    # how users come to view posts: "random" (the course's feed) or "organic" (users choose;
    # `training.world.exposure`). Worlds saved before this field existed are random.
    exposure: str = "random"
    post_buzz: np.ndarray = field(default_factory=lambda: np.zeros(0))  # latent popularity (organic)
    post_release: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))  # first second viewable
    choice_buzz: float = 0.0  # weights of the organic choice logit: buzz, log recency, like log-odds
    choice_recency: float = 0.0
    choice_taste: float = 0.0
    recency_days: float = 14.0  # a post's pull decays by e every this many days after release
    recency_floor: float = 0.1  # the pull an old post keeps
    # texts of the posts held back from the tables (release HELD_BACK), for `simulate --new-posts-per-day`
    held_back_text: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=str))

    # ---------------------------------------------------------------- persistence
    def save(self, path: Path | str) -> None:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        arrays = {f.name: getattr(self, f.name) for f in fields(self)
                  if isinstance(getattr(self, f.name), np.ndarray)}
        scalars = {k: v for k, v in asdict(self).items() if k not in arrays}
        with open(path, "wb") as fh:  # np.savez would append .npz to a path without it
            np.savez_compressed(fh, _scalars=np.array(json.dumps(scalars)), **arrays)

    @classmethod
    def load(cls, path: Path | str) -> World:
        with np.load(Path(path)) as data:
            kwargs = json.loads(str(data["_scalars"]))
            kwargs.update({k: data[k] for k in data.files if k != "_scalars"})
        return cls(**kwargs)

    def held_back_ids(self) -> np.ndarray:
        if not len(self.post_release):
            return np.empty(0, np.int64)
        return self.post_ids[self.post_release >= HELD_BACK]

    # ---------------------------------------------------------------- indexing
    def user_index(self, user_ids: np.ndarray) -> np.ndarray:
        idx = np.searchsorted(self.user_ids, user_ids)
        idx = np.clip(idx, 0, len(self.user_ids) - 1)
        if not np.all(self.user_ids[idx] == user_ids):
            raise KeyError("user id not in the world")
        return idx

    def post_index(self, post_ids: np.ndarray) -> np.ndarray:
        idx = np.clip(np.searchsorted(self.post_ids, post_ids), 0, len(self.post_ids) - 1)
        if not np.all(self.post_ids[idx] == post_ids):
            raise KeyError("post id not in the world")
        return idx

    # ---------------------------------------------------------------- truth
    def logit_by_index(self, ui: np.ndarray, pj: np.ndarray, ts: np.ndarray) -> np.ndarray:
        """Log-odds for row-aligned (or broadcastable) user rows, post rows and times."""
        ui, pj, ts = np.broadcast_arrays(np.asarray(ui), np.asarray(pj), np.asarray(ts, dtype=np.int64))
        topic = self.post_topic[pj]
        gender = self.user_gender[ui]
        hour = (ts // 3600) % 24
        frac = (ts - self.start) / max(self.end - self.start, 1) - 0.5
        themes = np.einsum("...k,...k->...", self.user_theme_taste[ui], self.post_themes[pj])
        return (
            self.intercept
            + self.off_gender[gender] + self.off_country[self.user_country[ui]]
            + self.off_exp[self.user_exp[ui]] + self.off_topic[topic] + self.off_hour[hour]
            + self.age_slope * (self.user_age[ui] - 24)
            + self.profile_topic[age_band(self.user_age[ui]), gender, topic]
            + self.user_bias[ui] + self.post_appeal[pj]
            + self.user_topic_taste[ui, topic] + themes
            + self.drift[topic] * frac
        )

    def like_probability(self, user_ids, post_ids, ts) -> np.ndarray:
        """P(like | user, post shown at ts); arguments broadcast like NumPy arrays."""
        ui = self.user_index(np.asarray(user_ids))
        pj = self.post_index(np.asarray(post_ids))
        return 1.0 / (1.0 + np.exp(-self.logit_by_index(ui, pj, ts)))

    def sample_likes(self, user_ids, post_ids, ts, rng: np.random.Generator) -> np.ndarray:
        """Whether each shown post is liked: one draw per row."""
        p = self.like_probability(user_ids, post_ids, ts)
        return rng.random(p.shape) < p

    def all_posts_probability(self, user_id: int, ts: int) -> np.ndarray:
        """P(like) of every post (in post_ids order) for one user at one moment."""
        ui = self.user_index(np.array([user_id]))[0]
        return 1.0 / (1.0 + np.exp(-self.logit_by_index(ui, np.arange(len(self.post_ids)), ts)))

    def expected_hits(self, user_id: int, ts: int, post_ids: np.ndarray) -> float:
        """Probability that at least one of the shown posts is liked."""
        if len(post_ids) == 0:
            return 0.0
        p = self.like_probability(np.full(len(post_ids), user_id), np.asarray(post_ids), ts)
        return float(1.0 - np.prod(1.0 - p))

    def oracle(self, user_id: int, ts: int, k: int, exclude: np.ndarray | None = None) -> np.ndarray:
        """The k post ids with the highest true like probability, excluding `exclude`."""
        p = self.all_posts_probability(user_id, ts)
        if exclude is not None and len(exclude):
            p[self.post_index(np.asarray(exclude))] = -1.0
        top = np.argsort(-p, kind="stable")[:k]
        return self.post_ids[top]

    def profile_best(self, user_id: int, ts: int, k: int, sample: np.ndarray) -> np.ndarray:
        """The k post ids a ranker that knows everything but the user's own latent terms (bias, topic
        and theme tastes: the history's part) would show: the set that maximises P(at least one like)
        averaged over `sample`, row indexes of other users whose latent terms stand in for the unknown
        ones (the world draws them independently of the profile). Chosen greedily (the objective is
        submodular); the user's row is left out of the sample. The ceiling of a cold-start ranker: no
        ranking of single posts by P(like | profile) reaches it, since likes within one topic or theme
        go together for a user whose tastes are unknown."""
        ui = self.user_index(np.array([user_id]))[0]
        pj = np.arange(len(self.post_ids))
        topic = self.post_topic
        key = sample.tobytes()
        if getattr(self, "_latent", (None,))[0] != key:  # the same sample for every request: once
            self._latent = (key, self.user_bias[sample][:, None] + self.user_topic_taste[sample][:, topic]
                            + self.user_theme_taste[sample] @ self.post_themes.T)
        latent = self._latent[1][sample != ui]
        own = self.user_bias[ui] + self.user_topic_taste[ui, topic] + self.post_themes @ self.user_theme_taste[ui]
        known = self.logit_by_index(np.full(len(pj), ui), pj, np.full(len(pj), ts)) - own
        p = 1.0 / (1.0 + np.exp(-(known[None, :] + latent)))
        miss, chosen = np.ones(len(latent)), []
        for _ in range(min(k, len(pj))):
            gain = miss @ p
            gain[chosen] = -np.inf
            j = int(np.argmax(gain))
            chosen.append(j)
            miss *= 1.0 - p[:, j]
        return self.post_ids[np.array(chosen, np.int64)]

    # ---------------------------------------------------------------- exposure
    def choice_probability(self, user_id: int, ts: int) -> np.ndarray:
        """P(a view of this user at ts is of each post), in post_ids order: the random feed's exposure
        shares, or the organic world's choice model (`training.world.exposure`)."""
        if self.exposure != "organic":
            return self.post_exposure / self.post_exposure.sum()
        from training.world.exposure import choice_logits  # the choice model lives beside the generator

        ui = self.user_index(np.array([user_id]))[0]
        logits = choice_logits(self, np.array([ui]), np.array([ts], np.int64))[0]
        w = np.exp(logits - logits.max())
        return w / w.sum()
