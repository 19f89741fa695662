"""Candidate retrieval: a few hundred posts from cheap sources, then CatBoost ranks only those.

Sources, each a handful of array operations (no model call):

- **taste**: the posts nearest to the user's taste vectors (the per-topic liked mean `topic_vec`, and
  the overall liked mean `vec`) inside the user's favourite topics, by inner product with the post
  vectors the model's `sim_*` features use, and to the per-topic TF-IDF taste vector. Per topic:
  exact dot products below `exact_below` posts (as fast as an index there), above it a faiss IVF index
  (`IndexIVFScalarQuantizer`, 8-bit codes, inner product: it trains in seconds where an HNSW graph
  over 100k vectors took 42 s to build on this machine), which new posts join with `add` as they
  arrive. In a topic held exactly with a blend (below), only the TF-IDF list is taken: the blend scores
  every post of the topic (a text model's with the sentence-space taste among its terms; a model without
  text reads no sentence vector at all), and the two sentence-space lists added 50–70 candidates a
  request and no recall (`bench.catalogue recall`, docs/catalogue.md 2026-11-30). In a topic held by
  faiss their search results still fill the blend's pool.
- **favourite topics**: the best posts of the user's top topics by a *proxy* of the model's score on
  the post's own columns (a small CatBoost regressor fitted at training on the model's own scores,
  listed in `retrieval.json`), with the counters as of the start of the request's hour.
- **blend**: per favourite topic, the best posts by a linear stand-in for the model, proxy plus the
  similarities the model reads (the four text ones for a text model, and the collaborative `sim_cf` for
  both), with weights fitted at training (`retrieval.json`, `training.retrieval.fit_blend`). The
  model's favourites are posts both liked by many and near the user's taste; each alone misses them
  (on the demo world the test model's top 5 ranked at the median 689th of their topic by the proxy,
  116th by the TF-IDF taste; on a scale-1.0 world the control model's misses, before it had a blend,
  at the median 182nd by the proxy). The blend is one product per vector space over the topic's
  vectors while it is held exactly (shared with the taste lists); above `exact_below`, it re-scores
  the proxy's best and the posts the taste searches found. The strongest source for both models: on
  the scale-1.0 world the control model's full top 5 lay 0.98 in its candidates at 632 with the whole
  blend, 1,112 with half of it and every other list made longer alike (`Retriever.budget_for`).
- **every topic**: the proxy's best few of each topic, so that a user's taste can be wrong.
- **collaborative**: the posts nearest to the mean collaborative vector of the posts the user liked
  (`training.collaborative`: posts liked by the same users point the same way), among the posts that have
  one (the artifact's posts liked before its fit), exact or by a faiss IVF index like the taste source.
- **recent popularity**: the most liked posts of the last `POPULAR_DAYS` days.
- **fresh**: posts younger than `fresh_hours` (the newest first), then posts with fewer than
  `fresh_views` views (the proxy's best).

How long the lists are is the artifact's: `Budget` gives their shape, and each model's proxy carries a
scale of it (`Proxy.scale`) that training calibrated on validation requests — the shortest whose
candidates hold 0.98 of the model's full top 5 (`training.retrieval.calibrate_scales`, `train
--retrieval-recall`). A fixed length was too short for one artifact and several hundred rows of
CatBoost wasted on another.

The union is deduplicated; liked, recently viewed and not-yet-born posts are removed by the engine.
The popularity and fresh sources are computed from the counters as of the start of the request's hour
(events before t only) and cached for that hour, proxy and catalogue size (a few hours' worth, least
recently used out first).
"""

from __future__ import annotations

import functools
import json
import threading
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from app import columns as c
from app.catalogue import CatalogueFrame
from app.features import (
    N_TOPICS,
    POST_COUNTERS,
    POST_STATIC,
    POST_TEXT,
    USER_NUM,
    PostView,
    Priors,
    UserView,
    finalize_posts,
)
from app.post_counters import PostTimeline
from app.rowsets import isin, unique_below

RETRIEVAL_FILE = "retrieval.json"
POPULAR_DAYS = 7
# the blend's terms, in the order of its weights: the proxy, then the similarities of `assemble`
BLEND_TERMS = ("proxy", "sim_liked", "sim_contrast", "sim_liked_topic", "sim_tfidf_topic", "sim_cf")
_RATE0 = USER_NUM.index(f"u_like_rate_{c.TOPICS[0]}")


def blend_terms(text: bool) -> tuple[str, ...]:
    """The terms a model's blend can have: a model without text reads no text similarity."""
    return BLEND_TERMS if text else ("proxy", "sim_cf")


@dataclass(frozen=True)
class Budget:
    """How many posts each source contributes (per topic where it says so)."""

    # per favourite topic, best first (the first favourite holds most of a screen): how many of the
    # nearest to the per-topic taste vector, to the overall taste vector, and of the proxy's best.
    # Sizes from `bench.catalogue recall` on the demo world: with the blend, the taste lists could
    # halve (the blend holds most of what they found) and the candidates stay about 800 for `test`
    taste_topic: tuple[int, ...] = (40, 20, 15, 10, 5, 5, 5)
    taste_all: tuple[int, ...] = (20, 10, 5, 5)
    taste_tfidf: tuple[int, ...] = (30, 20, 20, 15, 10, 10, 10)  # nearest in the TF-IDF space per topic
    proxy_topic: tuple[int, ...] = (200, 80, 40)
    proxy_every: int = 15  # proxy's best of every topic
    # per favourite topic, the best by the blend of proxy and similarities (text models)
    blend: tuple[int, ...] = (200, 120, 80, 60, 40, 30, 30)
    blend_pool: int = 400  # above exact_below: the proxy's best this many, with the taste results, re-scored
    popular: int = 40
    fresh: int = 30
    cf: int = 50  # nearest by the collaborative vectors, among the posts that have one
    # in a topic held in a faiss index, the taste lists of the first `searched` favourites only, when the
    # model has a blend: the searches (one per topic and space, memory-bound) were most of what retrieval
    # grew from 7k to 1M posts (`bench.catalogue cost`), and a less-favoured topic's few taste posts are
    # mostly the blend's, which re-scores the proxy's best of the topic with the same taste vectors. A
    # topic held exactly keeps every list: its products cost microseconds. `python -m bench.catalogue
    # searched` (docs/catalogue.md, 2026-12-02): 7, 3 and 2 gave the same recall of full scoring's top 5 on a
    # 70k-post world and on the demo grown to 1M, 1 lost 0.002
    searched: int = 2

    def scaled(self, factor: float) -> Budget:
        """Every retrieval list `factor` times as long (at least one post where it had any); the popular
        and fresh lists keep their sizes: they serve exploration, not recall of the model's favourites."""
        if factor == 1.0:
            return self
        return _scaled(self, float(factor))


@functools.cache
def _scaled(budget: Budget, factor: float) -> Budget:
    """`Budget.scaled`, built once per (budget, factor): requests ask for it every time."""
    def size(k: int) -> int:
        return max(1, round(k * factor)) if k > 0 else 0

    def sizes(ks: tuple[int, ...]) -> tuple[int, ...]:
        return tuple(size(k) for k in ks)

    return replace(budget, taste_topic=sizes(budget.taste_topic), taste_all=sizes(budget.taste_all),
                   taste_tfidf=sizes(budget.taste_tfidf), proxy_topic=sizes(budget.proxy_topic),
                   proxy_every=size(budget.proxy_every), blend=sizes(budget.blend),
                   blend_pool=size(budget.blend_pool), cf=size(budget.cf))


# the sizes before the blend: a text model's artifact trained without blend weights keeps them
NO_BLEND = Budget(taste_topic=(80, 40, 30, 20, 10, 10, 10), taste_all=(30, 20, 10, 10),
                  taste_tfidf=(60, 50, 50, 40, 20, 20, 20), proxy_topic=(250, 100, 50), blend=())


class Proxy:
    """A cheap stand-in for a model's score from a post's own columns (static, counters as of a moment,
    and for a text model the embedding components): a small CatBoost regressor fitted at training on
    the model's own scores, centred per user (`training.retrieval`). It orders whole topics once an
    hour without the user side; the model itself then ranks the candidates."""

    def __init__(self, model, text: bool, blend: dict[str, float] | None = None, scale: float | None = None) -> None:
        self.model = model
        self.text = text
        # how long the retrieval lists are for this model, relative to `Budget`: calibrated at training
        # on validation requests (`training.retrieval.calibrate_scales`); None in artifacts before that
        self.calibrated = scale is not None
        self.scale = 1.0 if scale is None else float(scale)
        # weights of BLEND_TERMS, or None; a term the artifact's blend lacks weighs 0 (a model without
        # text has no text terms; artifacts before the collaborative term have no sim_cf)
        self.blend = None if blend is None else np.array([blend.get(k, 0.0) for k in BLEND_TERMS], np.float32)

    def score(self, static: np.ndarray, counters: np.ndarray, text: np.ndarray, chunk: int = 100_000) -> np.ndarray:
        out = np.empty(len(static), np.float64)
        for lo in range(0, len(static), chunk):  # bounded memory for a million posts
            hi = min(lo + chunk, len(static))
            blocks = [static[lo:hi], counters[lo:hi]] + ([text[lo:hi]] if self.text else [])
            x = np.asfortranarray(np.concatenate(blocks, axis=1), dtype=np.float32)
            out[lo:hi] = self.model.predict(x, prediction_type="RawFormulaVal", thread_count=1)
        return out


def proxy_columns(text: bool) -> tuple[str, ...]:
    return (*POST_STATIC, *POST_COUNTERS, *(POST_TEXT if text else ()))


def load_proxies(version_dir: Path) -> dict[str, Proxy]:
    """The proxies `retrieval.json` lists, checked against the columns this code builds."""
    from catboost import CatBoostRegressor

    from app.catboost_models import load_for_prediction

    data = json.loads((Path(version_dir) / RETRIEVAL_FILE).read_text())
    out = {}
    for name, meta in data["proxy"].items():
        if list(meta["columns"]) != list(proxy_columns(bool(meta["text"]))):
            raise ValueError("retrieval proxy has other columns than this code builds: retrain")
        model = load_for_prediction(CatBoostRegressor, Path(version_dir) / meta["file"])
        # older artifacts: no blend, no calibrated scale
        out[name] = Proxy(model, bool(meta["text"]), meta.get("blend"), meta.get("budget", {}).get("scale"))
    return out


class _TopicIndex:
    """Nearest posts of one topic by inner product: exact while small, a faiss IVF index when large."""

    def __init__(self, exact_below: int, nprobe: int) -> None:
        self.rows = np.empty(0, np.int64)
        self.vecs = np.empty((0, 0), np.float32)
        self.exact_below = exact_below
        self.nprobe = nprobe
        self.index = None  # faiss, once the topic is large
        self._lock = threading.Lock()  # faiss indexes are not safe to search while adding

    def add(self, rows: np.ndarray, vecs: np.ndarray) -> None:
        vecs = np.ascontiguousarray(vecs, np.float32)
        if self.index is None:
            all_rows = np.concatenate([self.rows, rows])
            all_vecs = vecs if not len(self.rows) else np.concatenate([self.vecs, vecs])
            if len(all_rows) >= self.exact_below:
                index = _ivf(all_vecs, self.nprobe)
                with self._lock:
                    self.index, self.rows, self.vecs = index, all_rows, np.empty((0, vecs.shape[1]), np.float32)
            else:
                self.rows, self.vecs = all_rows, all_vecs  # published in one step each; readers pair by length
            return
        with self._lock:
            self.index.add(vecs)
            self.rows = np.concatenate([self.rows, rows])

    def nearest(self, queries: np.ndarray, ks: list[int]) -> np.ndarray:
        """The ks[i] posts nearest to each queries[i] (one matrix product or one index search for all)."""
        nonzero = queries.any(axis=1)  # one reduction for all queries, not one call each
        keep = [i for i, k in enumerate(ks) if k > 0 and nonzero[i]]
        if not keep:
            return np.empty(0, np.int64)
        q = np.ascontiguousarray(queries[keep], np.float32)
        ks = [ks[i] for i in keep]
        if self.index is None:
            rows, vecs = self.rows, self.vecs
            n = min(len(rows), len(vecs))
            if n == 0:
                return rows[:0]
            # matrix-vector products (`Retriever._exact_topic`)
            return np.concatenate([_top(rows[:n], vecs[:n] @ query, k) for query, k in zip(q, ks, strict=True)])
        with self._lock:
            _, found = self.index.search(q, max(ks))
            rows = self.rows
        return np.concatenate([rows[f[:k][f[:k] >= 0]] for f, k in zip(found, ks, strict=True)])


def ivf_lists(n: int) -> int:
    """How many IVF lists an index of n vectors gets."""
    # about 2 sqrt(n) lists, trained on 32 vectors a list for 10 rounds: seconds for a 150k-post topic. At
    # most 4,096: capped at 1,024 (until 2026-12-01), a million-post index had ~1,000 vectors a list and a
    # search (nprobe lists) scanned ~23,000 codes. `python -m bench.catalogue ivf` compares the rules
    # (docs/catalogue.md): below 262,144 vectors nothing changes; twice as many lists (4 sqrt n) searched
    # faster still at a million but lost recall on smaller topics, where a growing catalogue's topics are
    # most of the time.
    return int(min(4096, max(16, 2 * np.sqrt(n))))


def _ivf(vecs: np.ndarray, nprobe: int, nlist: int | None = None):
    import faiss

    faiss.omp_set_num_threads(1)  # one request, one core: the workers already use them all
    d = vecs.shape[1]
    nlist = ivf_lists(len(vecs)) if nlist is None else nlist
    # vectors kept as 8-bit codes: a quarter of the memory of the float vectors, and retrieval only
    # needs the near ones, which the model then scores with the exact vectors
    index = faiss.IndexIVFScalarQuantizer(faiss.IndexFlatIP(d), d, nlist, faiss.ScalarQuantizer.QT_8bit,
                                          faiss.METRIC_INNER_PRODUCT)
    index.cp.niter = 10
    sample = vecs[np.random.default_rng(0).choice(len(vecs), min(len(vecs), 32 * nlist), replace=False)]
    index.train(sample)
    index.add(vecs)
    index.nprobe = nprobe
    return index


@dataclass(frozen=True)
class _Hourly:
    """What the sources that need the post counters hold for one hour (counts as of its start)."""

    key: tuple
    score: np.ndarray  # the proxy's score of every row
    by_topic: tuple[np.ndarray, ...]  # per topic, the proxy's best rows, best first
    popular: np.ndarray
    fresh: np.ndarray
    # per topic held exactly, the score of its rows in the order `_exact_topic` reads them (the blend's
    # proxy term; a gather per topic and request otherwise); empty for a topic held by faiss
    topic_score: tuple[np.ndarray, ...] = ()
    # per topic held by faiss, the blend's pool of the proxy's best (`_Pool`); None for one held exactly
    pools: tuple[_Pool | None, ...] = ()

    @property
    def nbytes(self) -> int:
        return (self.score.nbytes + sum(o.nbytes for o in self.by_topic) + self.popular.nbytes
                + self.fresh.nbytes + sum(o.nbytes for o in self.topic_score)
                + sum(o.nbytes for o in self.pools if o is not None))


@dataclass(frozen=True)
class _Pool:
    """The proxy's best `blend_pool` posts of a topic held by faiss, with what the blend reads of them
    in one contiguous block: gathered once an hour, not per request (at a million posts the gathers of
    400 rows from three catalogue-sized arrays, seven topics a request, cost 0.1 ms a topic)."""

    rows: np.ndarray  # sorted (`isin` sorts them again per request: already sorted, at little cost)
    base: np.ndarray  # w[0] * the proxy's score of each row
    joint: np.ndarray  # (len(rows), d_vec + d_tfidf + d_cf) float32: [vec | tfidf_vec | cf]

    @property
    def nbytes(self) -> int:
        return self.rows.nbytes + self.base.nbytes + self.joint.nbytes

    @classmethod
    def of(cls, rows: np.ndarray, score: np.ndarray, w: np.ndarray, posts: PostView) -> _Pool:
        rows = np.sort(rows)
        joint = np.ascontiguousarray(np.hstack([posts.vec[rows], posts.tfidf_vec[rows], posts.cf[rows]]),
                                     np.float32)
        return cls(rows, (w[0] * score[rows]).astype(np.float32), joint)


@functools.cache
def _halved_blend(budget: Budget) -> Budget:
    """The budget with half the blend sizes, built once per budget (a `replace` per request cost 30-70 us)."""
    return replace(budget, blend=tuple(k // 2 for k in budget.blend))


def _nth(budget: tuple[int, ...], i: int) -> int:
    return budget[i] if i < len(budget) else 0


def _top(rows: np.ndarray, values: np.ndarray, k: int) -> np.ndarray:
    """The k rows with the highest values (values[i] belongs to rows[i]), in no particular order: every
    list goes into the union of the sources, so sorting it (a third of this function's time) bought nothing."""
    n = len(rows)
    k = min(k, n)
    if not k:
        return np.empty(0, np.int64)
    return rows[np.argpartition(values, n - k)[n - k:]]  # no negated copy of the values


def _score_of(rows: np.ndarray, score: np.ndarray) -> np.ndarray:
    """`score` of the sorted `rows` it covers (rows added after it was computed wait for the next)."""
    return score[rows[:int(np.searchsorted(rows, len(score)))]]


def _best(rows: np.ndarray, scores: np.ndarray, k: int) -> np.ndarray:
    """The k rows with the highest scores, best first."""
    k = min(k, len(rows))
    if not k:
        return np.empty(0, np.int64)
    top = rows[np.argpartition(-scores[rows], k - 1)[:k]]
    return top[np.argsort(-scores[top], kind="stable")]


@dataclass(frozen=True)
class _BlendQuery:
    """The parts of the blend's query that do not depend on the topic, computed once per request."""

    sentence: bool  # the weights hold a sentence-space term (a text model)
    vec: np.ndarray  # w[1] * liked mean + w[2] * contrast (the topic's w[3] * taste is added per topic)
    cf: np.ndarray  # w[5] * the collaborative taste

    @classmethod
    def of(cls, user: UserView, w: np.ndarray) -> _BlendQuery:
        return cls(bool(w[1:4].any()), w[1] * user.vec[0] + w[2] * user.contrast[0], w[5] * user.cf[0])


class Retriever:
    """Candidate rows for (model, user, t), over a catalogue that grows (`update`)."""

    def __init__(self, proxies: dict[str, Proxy], priors: Priors, budget: Budget | None = None,
                 exact_below: int = 8_000, nprobe: int = 24, fresh_hours: float = 24.0,
                 fresh_views: int = 20, hourly_cache_mb: float = 64.0) -> None:
        self.proxies = proxies
        self.priors = priors
        self.budget = budget or Budget()
        self.exact_below = exact_below
        self.fresh_seconds = int(fresh_hours * 3600)
        self.fresh_views = int(fresh_views)
        self.topics = [_TopicIndex(exact_below, nprobe) for _ in range(N_TOPICS)]
        self.tfidf_topics = [_TopicIndex(exact_below, nprobe) for _ in range(N_TOPICS)]
        self.cf = _TopicIndex(exact_below, nprobe)  # the posts with a collaborative vector, every topic
        # per topic, [sentence vector | collaborative vector] in the order of `topics[t]` while that
        # topic is held exactly: the blend's sentence-space and sim_cf terms in one product; a topic in
        # a faiss index reads them from the catalogue
        self._joint_exact = [np.empty((0, 0), np.float32) for _ in range(N_TOPICS)]
        self.n = 0  # catalogue rows indexed
        self._frame: CatalogueFrame | None = None
        # (proxy, hour, catalogue size) -> its hourly sources, least recently used first, at most
        # hourly_cache_mb (one entry at least): live requests share one hour, but requests for past
        # moments (the serving bench's held-out window, the console) jump between hours, and each miss
        # scores the whole catalogue with the proxy
        self._hourly: dict[tuple, _Hourly] = {}
        self._hourly_bytes = int(hourly_cache_mb * 2**20)
        self._hourly_lock = threading.Lock()
        self._write = threading.Lock()

    def update(self, frame: CatalogueFrame) -> None:
        """Index the catalogue rows added since the last call (the follower's thread, or at load)."""
        with self._write:
            lo, hi = self.n, frame.n
            if hi <= lo:
                return
            posts = frame.posts
            rows = np.arange(lo, hi, dtype=np.int64)
            topic = posts.topic[lo:hi]
            for t in range(N_TOPICS):
                sel = rows[topic == t]
                if len(sel):
                    self.topics[t].add(sel, posts.vec[sel])
                    self.tfidf_topics[t].add(sel, posts.tfidf_vec[sel])
                    joint = np.ascontiguousarray(np.hstack([posts.vec[sel], posts.cf[sel]]), np.float32)
                    if self.topics[t].index is not None:  # in faiss now: `_blend` reads the catalogue's
                        # a new empty array, not `joint[:0]`: a view would keep the whole batch's [vec | cf]
                        # alive (364 MB at a million posts, where each topic is added at once)
                        self._joint_exact[t] = np.empty((0, joint.shape[1]), np.float32)
                    else:
                        held = self._joint_exact[t]
                        self._joint_exact[t] = joint if not len(held) else np.concatenate([held, joint])
            has = posts.cf[lo:hi].any(axis=1)  # posts liked by nobody before the fit have none
            if has.any():
                self.cf.add(rows[has], posts.cf[lo:hi][has])
            self._frame = frame
            self.n = hi  # the hourly entries carry n in their key: they are recomputed

    def rescale(self, name: str, scale: float) -> None:
        """Set proxy `name`'s budget scale (`Proxy.scale`) and drop its hourly lists, which were cut to
        the old sizes (training's calibration tries several scales on one loaded artifact)."""
        self.proxies[name].scale = float(scale)
        self.proxies[name].calibrated = True
        with self._hourly_lock:
            for key in [k for k in self._hourly if k[0] == name]:
                del self._hourly[key]

    # ------------------------------------------------------------------ per request
    def favourite_topics(self, user: UserView) -> np.ndarray:
        """Every topic, the user's favourite first (by the smoothed like rate in each)."""
        rates = user.num[0, _RATE0:_RATE0 + N_TOPICS]
        return np.argsort(-rates, kind="stable")

    def candidates(self, model: str, user: UserView, t: int, timeline: PostTimeline,
                   cat: CatalogueFrame) -> np.ndarray:
        """Sorted unique rows of the catalogue `cat` worth ranking for this user at t."""
        parts: list[np.ndarray] = []
        name = model if model in self.proxies else next(iter(self.proxies))
        hourly = self._hour(name, t, timeline)
        proxy = self.proxies[name]
        weights = proxy.blend
        b = self.budget_for(proxy)
        query = _BlendQuery.of(user, weights) if weights is not None else None
        for i, topic in enumerate(self.favourite_topics(user)):
            topic = int(topic)
            ks = (_nth(b.taste_topic, i), _nth(b.taste_all, i), _nth(b.taste_tfidf, i),
                  _nth(b.blend, i) if weights is not None else 0)
            parts.append(hourly.by_topic[topic][:_nth(b.proxy_topic, i)])
            if not any(ks):
                continue
            if self.topics[topic].index is None and self.tfidf_topics[topic].index is None:
                if ks[3]:  # the blend scores every post of the topic, the sentence-space taste included
                    ks = (0, 0, ks[2], ks[3])
                parts += self._exact_topic(topic, user, weights, hourly.score, ks, hourly.topic_score[topic], query)
                continue
            if weights is not None and i >= b.searched:
                ks = (0, 0, 0, ks[3])
            taste = self.topics[topic].nearest(np.stack([user.topic_vec[0, topic], user.vec[0]]), list(ks[:2]))
            tfidf = self.tfidf_topics[topic].nearest(user.topic_tfidf[0, topic][None, :], [ks[2]])
            parts += [taste, tfidf]
            if ks[3]:
                parts.append(self._blend(topic, user, weights, hourly, np.concatenate([taste, tfidf]), ks[3],
                                         b.blend_pool, query))
        parts.extend(o[:b.proxy_every] for o in hourly.by_topic)
        parts.append(hourly.popular)
        parts.append(hourly.fresh)
        parts.append(self.cf.nearest(user.cf, [b.cf]))  # nothing for a user without likes
        return unique_below(np.concatenate(parts), cat.n)

    def budget_for(self, proxy: Proxy) -> Budget:
        """The sizes for a model: `Budget` at the proxy's calibrated scale. A text model's artifact without
        blend weights keeps the sizes from before the blend; an artifact from before the calibration gave a
        model without text half the blend sizes, and keeps them. Calibrated, both models get the whole
        blend: on the scale-1.0 world (seed 11, 500 validation requests; a throwaway harness, 2026-11-30)
        the control model's full top 5 lay 0.9704 in 601 candidates with half the blend and 0.9848 in 767
        with all of it, against 0.9752 in 734 for every list 1.25 times as long; at 0.8 of the sizes with
        the whole blend, 0.9800 in 632."""
        if proxy.text:
            base = self.budget if proxy.blend is not None else NO_BLEND
        elif proxy.blend is not None and not proxy.calibrated:
            base = _halved_blend(self.budget)
        else:
            base = self.budget
        return base.scaled(proxy.scale)

    def _exact_topic(self, topic: int, user: UserView, w: np.ndarray | None, score: np.ndarray,
                     ks: tuple[int, int, int, int], topic_score: np.ndarray | None = None,
                     query: _BlendQuery | None = None) -> list[np.ndarray]:
        """The taste lists and the blend of one topic held exactly, from one product per vector space:
        the nearest `ks[0]` to the topic's taste vector, `ks[1]` to the overall one, `ks[2]` to the
        TF-IDF taste (none for a zero taste), and the blend's best `ks[3]` (weights `w`). `topic_score`
        is `score` of the topic's rows (the hour's `_Hourly.topic_score`) and `query` the request's
        `_BlendQuery`; either is computed here when not given."""
        sent, tf_index = self.topics[topic], self.tfidf_topics[topic]
        rows, vecs, tvecs = sent.rows, sent.vecs, tf_index.vecs  # one order; readers pair by length
        joint = self._joint_exact[topic]
        n = min(len(rows), len(vecs), len(tvecs), len(joint))
        if n == 0:
            return []
        rows = rows[:n]
        kt, ka, kf, kb = ks
        w = np.zeros(len(BLEND_TERMS), np.float32) if w is None else w
        topic_vec, vec, tfidf_q = user.topic_vec[0, topic], user.vec[0], user.topic_tfidf[0, topic]
        out = []
        # one matrix-vector product per list: OpenBLAS's matrix-matrix product for a few query columns
        # costs more than the products one column at a time (2-3x on 1,000 posts, one host; 0.6x on
        # another: the products stay as they were)
        if kt and topic_vec.any():
            out.append(_top(rows, vecs[:n] @ topic_vec, kt))
        if ka and vec.any():
            out.append(_top(rows, vecs[:n] @ vec, ka))
        tfs = None
        if kf or (kb and w[4]):
            tfs = tvecs[:n] @ tfidf_q
            if kf and tfidf_q.any():
                out.append(_top(rows, tfs, kf))
        if kb:
            query = query if query is not None else _BlendQuery.of(user, w)
            topic_score = _score_of(rows, score) if topic_score is None else topic_score
            m = min(len(topic_score), n)  # rows only grow; rows added after the hour wait for the next
            value = w[0] * topic_score[:m]
            if query.sentence:  # the sentence-space and collaborative terms: one product over [vec | cf]
                value += joint[:m] @ np.concatenate([w[3] * topic_vec + query.vec, query.cf])
            elif w[5]:  # a model without text: the collaborative term alone
                value += joint[:m, -len(query.cf):] @ query.cf
            if tfs is not None:
                value += w[4] * tfs[:m]
            out.append(_top(rows[:m], value, kb))
        return out

    def _blend(self, topic: int, user: UserView, w: np.ndarray, hourly: _Hourly, found: np.ndarray,
               k: int, pool_size: int, query: _BlendQuery | None = None) -> np.ndarray:
        """The k posts of a topic held in a faiss index best by w . BLEND_TERMS, among the proxy's best
        `blend_pool` and the taste results `found` (`_exact_topic` scores every post of a topic held
        exactly): the three sentence-space terms fold into one query vector (the request's `_BlendQuery`
        plus the topic's taste; computed here when not given)."""
        query = query if query is not None else _BlendQuery.of(user, w)
        sentence = query.vec + w[3] * user.topic_vec[0, topic]
        query_tfidf = w[4] * user.topic_tfidf[0, topic]
        score = hourly.score
        posts = self._frame.posts

        def value_of(rows: np.ndarray) -> np.ndarray:  # the blend of rows read from the catalogue
            return (w[0] * score[rows] + posts.vec[rows] @ sentence + posts.tfidf_vec[rows] @ query_tfidf
                    + posts.cf[rows] @ query.cf)

        cached = hourly.pools[topic] if hourly.pools else None
        if cached is None or len(cached.rows) != min(pool_size, len(hourly.by_topic[topic])):
            pool = unique_below(np.concatenate([hourly.by_topic[topic][:pool_size], found]), len(score))
            return _top(pool, value_of(pool), k)
        # the hour's pool from its block, then the taste results it does not hold from the catalogue
        value = cached.base + cached.joint @ np.concatenate([sentence, query_tfidf, query.cf])
        extra = unique_below(found, len(score))
        extra = extra[~isin(extra, cached.rows)]
        if not len(extra):
            return _top(cached.rows, value, k)
        return _top(np.concatenate([cached.rows, extra]), np.concatenate([value, value_of(extra)]), k)

    def _hour(self, name: str, t: int, timeline: PostTimeline) -> _Hourly:
        """The counter-based sources as of the start of t's hour (events before t only), computed once per
        hour, proxy and catalogue size: O(catalogue) then, O(1) for every other request of the hour (kept
        while the cache holds it). Events applied later for moments before the hour (late ones) wait for
        the next hour."""
        hour = (int(t) // 3600) * 3600
        frame = self._frame
        n = frame.n
        key = (name, hour, n)
        with self._hourly_lock:
            cached = self._hourly.pop(key, None)
            if cached is not None:
                self._hourly[key] = cached  # the most recently used last
                return cached
        entry = self._compute_hour(name, hour, frame, timeline)
        with self._hourly_lock:
            cache = self._hourly
            for old in [k for k in cache if k[2] != n]:  # a catalogue that grew since: never asked again
                del cache[old]
            cache[key] = entry  # a race computes an hour twice, harmlessly: the same entry
            total = sum(e.nbytes for e in cache.values())
            while total > self._hourly_bytes and len(cache) > 1:
                total -= cache.pop(next(iter(cache))).nbytes
        return entry

    def _compute_hour(self, name: str, hour: int, frame: CatalogueFrame, timeline: PostTimeline) -> _Hourly:
        n = frame.n
        b = self.budget_for(self.proxies[name])
        now = timeline.counts_at(hour)[:n]
        week = timeline.counts_at(hour - POPULAR_DAYS * 86_400)[:n]
        posts = frame.posts
        score = self.proxies[name].score(posts.static, finalize_posts(now, self.priors), posts.text)
        topic = posts.topic
        keep = max(*b.proxy_topic, b.proxy_every, b.blend_pool)
        by_topic = tuple(_best(np.flatnonzero(topic == k), score, keep) for k in range(N_TOPICS))
        popular = _best(np.arange(n), (now[:, 1] - week[:, 1]).astype(np.float64), b.popular)
        # young posts first, the newest first (born within fresh_hours; the engine drops those born
        # after t), then posts with few views by the proxy
        young = np.flatnonzero(frame.born >= hour - self.fresh_seconds)
        young = young[np.lexsort((-young, -frame.born[young]))][:b.fresh]  # the newest first (rows only grow)
        few = np.flatnonzero(now[:, 0] < self.fresh_views)
        fresh = np.concatenate([young, _best(few, score, b.fresh)])
        _, first = np.unique(fresh, return_index=True)
        topic_score = tuple(_score_of(index.rows, score) if index.index is None else score[:0] for index in self.topics)
        w = self.proxies[name].blend
        pools = tuple(_Pool.of(by_topic[k][:b.blend_pool], score, w, posts)
                      if w is not None and b.blend and index.index is not None else None
                      for k, index in enumerate(self.topics))
        return _Hourly((name, hour, n), score, by_topic, popular, fresh[np.sort(first)][:b.fresh], topic_score,
                       pools)
