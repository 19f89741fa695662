"""The scoring engine: artifacts loaded once, then (user, time, k) -> best posts in milliseconds.

Per request: the user and the catalogue as of the requested moment from the live state
(`app.live_state`; with candidates, the post counters of the candidates alone); the posts to score — a
few hundred candidates from cheap sources (`app.candidates`, `retrieval="candidates"`) or the whole
catalogue (`retrieval="full"`); exclusion of posts the user liked before that moment, of those viewed
within the exclusion window and of posts added after it (candidates before scoring, the whole catalogue
after); one feature matrix built by `assemble` (NumPy only), one CatBoost call; top k by
`argpartition` with ties broken by post id; then, with `fresh_share` > 0, that share of the screen
goes to the best fresh posts (fewer than `fresh_views` views or younger than `fresh_hours`).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
from catboost import CatBoostClassifier

from app.artifacts import (
    LIKE_GIVEN_SHOWN,
    LIKED_WITHIN_HORIZON,
    MODEL_FILES,
    MODEL_USES_TEXT,
    POSTS_FILE,
    STATE_FILE,
    ArtifactsInvalid,
    Manifest,
    current_version_dir,
    load_manifest,
)
from app.candidates import RETRIEVAL_FILE, Budget, Retriever, load_proxies
from app.catboost_models import load_for_prediction
from app.features import POST_COUNTERS, USER_NUM, PostView, assemble
from app.live_state import LiveState, UserAt
from app.recent_popularity import RECENT_SECONDS, recent_features
from app.rowsets import isin
from app.segment_popularity import segment_of, segment_scores, segment_shares
from app.snapshot import Snapshot, rows_of
from app.text_features import TRANSFORMS_FILE, TextTransforms

POPULAR = "popular"
SEGMENT_POPULAR = "segment_popular"  # popularity within the user's age band x gender
LIKE_RATE = "like_rate"  # the post's smoothed like rate per view: P(like | shown) for unknown tastes
MODEL_NAMES = (*MODEL_FILES, POPULAR, SEGMENT_POPULAR, LIKE_RATE)
COUNTERS = (POPULAR, SEGMENT_POPULAR, LIKE_RATE)  # rankers of counters alone: every post scored, no model
_U_VIEWS = USER_NUM.index("u_views")
_P_RATE = POST_COUNTERS.index("p_like_rate")
RETRIEVAL_MODES = ("candidates", "full")


@dataclass(frozen=True)
class ScreenPolicy:
    """How a screen is made: retrieval mode, the collaborative source's size and fresh-post exposure
    (settings RETRIEVAL, RETRIEVAL_COLLABORATIVE, FRESH_*)."""

    retrieval: str = "candidates"
    fresh_share: float = 0.0
    fresh_hours: float = 24.0
    fresh_views: int = 20
    budget: Budget = Budget()

    @classmethod
    def from_settings(cls, settings) -> ScreenPolicy:
        return cls(retrieval=settings.retrieval, fresh_share=settings.fresh_share,
                   fresh_hours=settings.fresh_hours, fresh_views=settings.fresh_views,
                   budget=Budget(cf=settings.retrieval_collaborative))


class UnknownModel(ValueError):
    pass


@dataclass(frozen=True)
class Ranking:
    post_ids: np.ndarray
    model: str  # the model that actually ranked (popular for users the state does not know)
    features_as_of: int  # the moment the features describe: the request's, or the base cut before it


def top_k(scores: np.ndarray, ids: np.ndarray, k: int) -> np.ndarray:
    """Positions of the k best scores, best first; equal scores in ascending id order.

    >>> top_k(np.array([0.1, 0.9, 0.5, 0.9]), np.array([10, 11, 12, 13]), 3).tolist()
    [1, 3, 2]
    """
    n = len(scores)
    k = min(k, n)
    if k <= 0:
        return np.empty(0, dtype=np.int64)
    if k < n:
        kth = scores[np.argpartition(-scores, k - 1)[:k]].min()
        better = np.flatnonzero(scores > kth)
        ties = np.flatnonzero(scores == kth)
        ties = ties[np.argsort(ids[ties], kind="stable")][: k - len(better)]
        cand = np.concatenate([better, ties])
    else:
        cand = np.arange(n)
    return cand[np.lexsort((ids[cand], -scores[cand]))]


def spread_top_k(scores: np.ndarray, ids: np.ndarray, groups: np.ndarray, k: int) -> np.ndarray:
    """Positions of k posts, best first within each round: the best post of each group (by score, ties by
    id), then the second best of each, and so on; posts scored -inf come last. For a user whose tastes
    are unknown, likes within one topic go together, so five posts of five topics are more likely to hold
    a like than the five best-scored, often of one topic.

    >>> spread_top_k(np.array([0.9, 0.8, 0.5, 0.4]), np.array([10, 11, 12, 13]), np.array([0, 0, 1, 1]), 3).tolist()
    [0, 2, 1]
    """
    n = len(scores)
    if min(k, n) <= 0:
        return np.empty(0, dtype=np.int64)
    order = np.lexsort((ids, -scores))  # best first
    g = np.asarray(groups)[order]
    by_group = np.lexsort((np.arange(n), g))  # stable: within a group, best first
    gs = g[by_group]
    starts = np.r_[0, np.flatnonzero(np.diff(gs)) + 1]
    rank = np.empty(n, np.int64)
    rank[by_group] = np.arange(n) - np.repeat(starts, np.diff(np.r_[starts, n]))
    rank = np.where(np.isfinite(scores[order]), rank, n)
    return order[np.lexsort((np.arange(n), rank))[:k]]


class Recommender:
    """Everything the service needs to rank: one artifact version's models and its live state."""

    def __init__(self, manifest: Manifest, state: LiveState, models: dict[str, CatBoostClassifier],
                 posts: dict[int, dict] | None = None, retriever: Retriever | None = None,
                 policy: ScreenPolicy | None = None):
        self.manifest = manifest
        self.posts = posts or {}  # post id -> {"id", "text", "topic"}; grows with the catalogue
        self.version = manifest.version
        self.state = state
        self.models = models
        meta = manifest.data.get("models", {})
        self.objective = {name: meta.get(name, {}).get("objective", LIKE_GIVEN_SHOWN) for name in models}
        # what training chose per slot on validation (training.selection): a model, or the popularity
        # floor; and for users with no history, the model, segment popularity or popularity
        slots = manifest.data.get("selection", {}).get("slots", {})
        self.floor = {name for name, choice in slots.items() if choice.get("serves") == POPULAR}
        self.cold_ranker = {name: choice.get("cold", {}).get("serves", "model") for name, choice in slots.items()}
        # slots whose screen for such users takes one post per topic before a second (`spread_top_k`)
        self.cold_spread = {name for name, choice in slots.items() if choice.get("cold", {}).get("spread")}
        self._shares: np.ndarray | None = None
        self.policy = policy or ScreenPolicy()
        if self.policy.retrieval not in RETRIEVAL_MODES:
            raise ValueError(f"RETRIEVAL={self.policy.retrieval!r}: choose one of {RETRIEVAL_MODES}")
        self.retriever = retriever
        state.post_info = self.posts
        if retriever is not None:
            retriever.update(state.catalogue.frame)
            state.on_posts_added.append(retriever.update)

    @property
    def retrieval(self) -> str:
        """The mode in force: candidates need the artifact's retrieval file."""
        return "candidates" if self.policy.retrieval == "candidates" and self.retriever is not None else "full"

    @classmethod
    def load(cls, model_dir: Path, exclude_viewed_hours: float = 72.0, exclude_last_views: int = 50,
             policy: ScreenPolicy | None = None) -> Recommender:
        """The version `model_dir/current` names."""
        return cls.load_version(current_version_dir(model_dir), exclude_viewed_hours, exclude_last_views, policy)

    @classmethod
    def load_version(cls, version_dir: Path, exclude_viewed_hours: float = 72.0,
                     exclude_last_views: int = 50, policy: ScreenPolicy | None = None) -> Recommender:
        """One version folder, checked (manifest, checksums, feature lists) before anything is loaded."""
        manifest = load_manifest(Path(version_dir))
        policy = policy or ScreenPolicy()
        try:
            snapshot = Snapshot.load(manifest.file(STATE_FILE))
            posts = {int(p["id"]): p for p in json.loads(manifest.file(POSTS_FILE).read_text())}
            models = {}
            for name, file in MODEL_FILES.items():
                models[name] = load_for_prediction(CatBoostClassifier, manifest.file(file))
            # older artifacts lack these: they serve with full scoring and a catalogue that cannot grow
            transforms = (TextTransforms.load(manifest.file(TRANSFORMS_FILE))
                          if manifest.file(TRANSFORMS_FILE).is_file() else None)
            proxies = (load_proxies(manifest.path)
                       if manifest.file(RETRIEVAL_FILE).is_file() else None)
        except Exception as exc:  # a half-written or foreign file: refuse with the reason
            raise ArtifactsInvalid(f"{manifest.path}: cannot load artifacts: {exc}") from None
        state = LiveState(snapshot, int(exclude_viewed_hours * 3600), exclude_last_views)
        state.text_transforms = transforms
        retriever = None
        if proxies is not None and policy.retrieval == "candidates":
            retriever = Retriever(proxies, snapshot.priors, policy.budget, fresh_hours=policy.fresh_hours,
                                  fresh_views=policy.fresh_views)
        return cls(manifest, state, models, posts, retriever, policy)

    @property
    def post_ids(self) -> np.ndarray:
        return self.state.post_ids

    def knows(self, user_id: int) -> bool:
        return self.state.user_row(user_id) >= 0

    def popular_scores(self, t: int) -> np.ndarray:
        """Stage 1 of the course: liked views of each post before t (ties by post id in top_k)."""
        return self.state.counts_at(t)[:, 1].astype(np.float64)

    def segment_scores(self, user: UserAt, t: int, n: int) -> np.ndarray:
        """Popularity within the user's segment (`app.segment_popularity`) of the first n posts: live
        popularity times the segment's lift, measured on the snapshot's likes before its base cut (posts
        added since have no lift: 1)."""
        if self._shares is None:  # once per version; a race computes it twice, harmlessly
            s = self.state.snapshot  # after a compaction: its likes before the later cut
            owner = rows_of(s.likes_indptr)
            # a compacted base also holds users and posts added since: no profile here, and no lift (1)
            known = (owner < len(s.user_ids)) & (s.likes < len(s.post_ids))
            self._shares = segment_shares(segment_of(s.profile[owner[known]]), s.likes[known], len(s.post_ids))
        shares = self._shares
        if shares.shape[1] < n:
            shares = np.pad(shares, ((0, 0), (0, n - shares.shape[1])), constant_values=1.0)
        return segment_scores(self.popular_scores(t)[:n], shares[:, :n], int(segment_of(user.view.num[:, :2])[0]))

    def model_scores(self, model: str, user: UserAt, posts: PostView, ts: int,
                     rows: np.ndarray | None = None) -> np.ndarray:
        """Score of every post (in post_ids order), or of the post `rows`, for one user as of second ts."""
        if model not in self.models:
            raise UnknownModel(f"unknown model {model!r}; choose one of {MODEL_NAMES}")
        x = assemble(user.view, np.int64(0), posts, rows, np.int64(ts), text=MODEL_USES_TEXT[model])
        if self.objective[model] == LIKED_WITHIN_HORIZON:  # then the recent popularity columns
            if rows is not None:
                timeline = self.state.timeline
                now, before = timeline.counts_at_rows(ts, rows), timeline.counts_at_rows(ts - RECENT_SECONDS, rows)
            else:
                n = len(posts.topic)
                now, before = self.state.counts_at(ts)[:n], self.state.counts_at(ts - RECENT_SECONDS)[:n]
            x = np.asfortranarray(np.column_stack([x, recent_features(now, before)]))
        return self.models[model].predict(x, prediction_type="RawFormulaVal", thread_count=1)

    def ranker_for(self, model: str, user: UserAt | None) -> str:
        """What ranks for this slot and user: popular for unknown users and for a slot whose models did
        not beat popularity on validation (the floor); for a user with no history as of the moment, what
        validated best for such users (the model itself, segment popularity, the like rate or popularity)."""
        if user is None or model == POPULAR or model in self.floor:
            return POPULAR
        if model in (SEGMENT_POPULAR, LIKE_RATE):
            return model
        if user.view.num[0, _U_VIEWS] == 0 and self.cold_ranker.get(model, "model") != "model":
            return self.cold_ranker[model]
        return model

    def scores_of(self, ranker: str, user: UserAt | None, posts: PostView, ts: int) -> np.ndarray:
        """Every post's score under one ranker (a model, popular, segment_popular or like_rate)."""
        n = len(posts.topic)
        if ranker == POPULAR or user is None:
            return self.popular_scores(ts)[:n]
        if ranker == SEGMENT_POPULAR:
            return self.segment_scores(user, ts, n)
        if ranker == LIKE_RATE:  # the counters as of ts, shrunk to the global rate (`finalize_posts`)
            return posts.counters[:n, _P_RATE].astype(np.float64)
        return self.model_scores(ranker, user, posts, ts)

    def scores(self, model: str, user_id: int, ts: int) -> tuple[np.ndarray, UserAt | None]:
        """Every post's score under what ranks for `model` (`ranker_for`) and the user as of ts."""
        row = self.state.user_row(user_id)
        user, posts = self.state.at(row, ts)
        return self.scores_of(self.ranker_for(model, user), user, posts, ts), user

    def candidates(self, model: str, user: UserAt, ts: int, n: int) -> np.ndarray:
        """The catalogue rows (below n) the model ranks for this user at ts."""
        rows = self.retriever.candidates(model, user.view, ts, self.state.timeline, self.state.catalogue.frame)
        return rows[rows < n]  # posts added since the request read the catalogue wait for the next one

    def _scored(self, model: str, user_id: int,
                ts: int) -> tuple[np.ndarray, np.ndarray, UserAt | None, PostView, bool]:
        """(rows, their scores, the user, the catalogue as of ts, whether the rows are eligible ones
        alone): the eligible candidates, or every post (the engine masks the excluded ones after)."""
        if model not in MODEL_NAMES:
            raise UnknownModel(f"unknown model {model!r}; choose one of {MODEL_NAMES}")
        # candidates: the counters of the rows they hold alone (`LiveState.at`), not of every post
        candidates = self.retrieval == "candidates"
        user, posts = self.state.at(self.state.user_row(user_id), ts, every_post=not candidates)
        n = len(posts.topic)
        ranker = self.ranker_for(model, user)
        if ranker in COUNTERS:
            if posts.counters_of_rows is not None:  # the counter rankers read every post's
                posts = replace(posts, counters=posts.counters_of(np.arange(n)))
            return np.arange(n), self.scores_of(ranker, user, posts, ts), user, posts, False
        if candidates:
            # the posts the screen excludes are dropped before CatBoost rather than scored and masked
            # (4% of the candidates on the scale-1.0 world: the user's likes lie near the taste it retrieves by)
            rows = self.candidates(ranker, user, ts, n)
            rows = rows[self.eligible(rows, user, ts, n)]
            return rows, self.model_scores(ranker, user, posts, ts, rows), user, posts, True
        return np.arange(n), self.model_scores(ranker, user, posts, ts), user, posts, False

    def eligible(self, rows: np.ndarray, user: UserAt | None, ts: int, n: int) -> np.ndarray:
        """Mask over `rows`: not liked before ts, not recently viewed, not added after ts."""
        hidden = [self.state.catalogue.frame.unborn(ts)]
        if user is not None:
            hidden += [user.liked, user.viewed]
        hidden = np.concatenate(hidden).astype(np.int64)
        if len(rows) == n:  # every post: mark in place
            ok = np.ones(n, bool)
            ok[hidden[hidden < n]] = False
            return ok
        return ~isin(rows, hidden)

    def _fresh(self, rows: np.ndarray, posts: PostView, ts: int) -> np.ndarray:
        s = self.policy
        born = self.state.catalogue.frame.born[rows]
        return (posts.counters_of(rows)[:, 0] < s.fresh_views) | (born >= ts - int(s.fresh_hours * 3600))

    def spreads(self, model: str, user: UserAt | None) -> bool:
        """Whether this slot's screen for this user takes one post per topic before a second
        (`spread_top_k`): a user with no history as of the moment, on a slot whose validation chose it."""
        return (user is not None and model in self.cold_spread and model not in self.floor
                and user.view.num[0, _U_VIEWS] == 0)

    def _select(self, rows: np.ndarray, scores: np.ndarray, posts: PostView, ts: int, k: int,
                fresh_share: float, spread: bool = False) -> np.ndarray:
        """Positions in `rows` of the screen, best first: top k by score (or spread over topics), then
        the fresh share."""
        ids = self.state.catalogue.frame.ids[rows]
        keep = spread_top_k(scores, ids, posts.topic[rows], k) if spread else top_k(scores, ids, k)
        keep = keep[np.isfinite(scores[keep])]
        m = int(round(k * fresh_share))
        if m <= 0 or not len(keep):
            return keep
        fresh = self._fresh(rows, posts, ts) & np.isfinite(scores)
        have = int(fresh[keep].sum())
        if have >= m:
            return keep
        pool = np.flatnonzero(fresh)
        pool = pool[~isin(pool, keep)]
        add = pool[top_k(scores[pool], ids[pool], m - have)]
        if not len(add):
            return keep
        # the lowest-scored non-fresh places give way to the best fresh posts not already shown
        stale = keep[~fresh[keep]][::-1][:len(add)]
        chosen = np.concatenate([keep[~isin(keep, stale)], add])
        return chosen[np.lexsort((ids[chosen], -scores[chosen]))]

    def recommend(self, model: str, user_id: int, ts: int, k: int) -> Ranking:
        """Top k post ids for the user at second ts, excluding posts liked before ts and posts viewed in
        the exclusion window before it or among the user's last views."""
        return self._rank(model, user_id, ts, k)[0]

    def _rank(self, model: str, user_id: int, ts: int, k: int):
        rows, scores, user, posts, eligible_only = self._scored(model, user_id, ts)
        n = len(posts.topic)
        served = self.ranker_for(model, user)  # popular for users the state does not know
        if not eligible_only:
            scores = np.where(self.eligible(rows, user, ts, n), scores, -np.inf)
        share = self.policy.fresh_share if served not in COUNTERS else 0.0
        keep = self._select(rows, scores, posts, ts, k, share, self.spreads(model, user))
        ranking = Ranking(self.state.catalogue.frame.ids[rows[keep]], served, self.state.features_as_of(ts))
        return ranking, rows, scores, n

    def rank(self, model: str, user_id: int, ts: int, k: int) -> tuple[Ranking, np.ndarray]:
        """`recommend` with the scores it ranked by (post_ids order; -inf for excluded posts and, with
        candidate retrieval, for the posts not retrieved): the console shows them beside the very
        ranking the API serves."""
        ranking, rows, scores, n = self._rank(model, user_id, ts, k)
        if len(rows) == n:
            return ranking, scores
        full = np.full(n, -np.inf)
        full[rows] = scores
        return ranking, full

    def recommend_many(self, model: str, user_ids: np.ndarray, times: np.ndarray, k: int) -> list[Ranking]:
        """Batch form: one ranking per (user, time) pair."""
        return [self.recommend(model, int(u), int(t), k) for u, t in zip(user_ids, times, strict=True)]

