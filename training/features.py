"""Features on the training side: the post transforms, the priors, the served snapshot and the rows.

Every user-side value of a training row is computed as of the row's own moment by the same per-user
functions the service calls for a request (`app.user_state`), from the user's whole history held in
memory (`History`); the post counters by `app.post_counters.counts_before`, which a test pins to the
service's timeline. The text models (TF-IDF components and clusters, embedding components) are fitted
on post texts alone, which hold no label, so fitting them once on the catalogue leaks nothing; they are
applied by `app.text_features.post_text_features`, the function the service runs for new posts.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import numpy as np
import pandas as pd
from loguru import logger
from sklearn.cluster import KMeans
from sklearn.decomposition import PCA, TruncatedSVD
from sklearn.feature_extraction.text import TfidfVectorizer

from app import columns as c
from app.features import (
    EMB_COMPONENTS,
    MAX_WEIGHT,
    N_TOPICS,
    PRIOR_VIEWS_CITY,
    PRIOR_VIEWS_TOPIC,
    PRIOR_VIEWS_USER,
    SECONDS_PER_DAY,
    TFIDF_CLUSTERS,
    TFIDF_COMPONENTS,
    WEIGHT_UNIT,
    PostView,
    Priors,
    Taste,
    UserView,
    assemble,
    empty_counts,
    feature_names,
    finalize_posts,
    finalize_users,
    profile_features,
)
from app.feed_events import EventBatch
from app.post_counters import ViewIndex
from app.snapshot import LAST_VIEWS_KEPT, Snapshot, UserEvents, csr
from app.text_features import TextTransforms, post_text_features, tfidf_matrix, topic_codes
from app.user_state import LIKE, VIEW, fold_user, taste_at
from training.collaborative import Schedule

VEC_DIM = 64  # text space of user vectors and similarities
EXCLUDE_WINDOW_SECONDS = 72 * 3600  # events kept one by one before the snapshot's cut (exclusion window)
MAX_FIT_POSTS = 100_000  # posts the text models are fitted on


# --------------------------------------------------------------------------------------- posts
def fit_text_transforms(texts: list[str], topics, embeddings: np.ndarray, encoder: str, seed: int = 0,
                        max_posts: int = MAX_FIT_POSTS) -> TextTransforms:
    """Fit the text models on at most `max_posts` posts (a fixed random sample beyond that: a million-post
    catalogue is then transformed in chunks by `post_text_features`). Texts hold no label, so fitting on
    the whole catalogue leaks nothing."""
    texts = [str(x) for x in texts]
    topic = topic_codes(topics)
    if len(texts) > max_posts:
        pick = np.sort(np.random.default_rng(seed).choice(len(texts), max_posts, replace=False))
        texts, topic, embeddings = [texts[i] for i in pick], topic[pick], embeddings[pick]
    tfidf = TfidfVectorizer(stop_words="english", max_features=20_000, min_df=2, sublinear_tf=True)
    tfidf.fit(texts)
    vocabulary = np.array(tfidf.get_feature_names_out(), dtype=str)
    idf = tfidf.idf_.astype(np.float64)
    matrix = tfidf_matrix(texts, vocabulary, idf)  # the app's own TF-IDF rows: the SVDs see what the service will
    svd = TruncatedSVD(n_components=TFIDF_COMPONENTS, random_state=seed).fit(matrix)
    comps = np.asarray(matrix @ svd.components_.T)
    centres = KMeans(n_clusters=TFIDF_CLUSTERS, n_init=4, random_state=seed).fit(comps).cluster_centers_
    emb_pca = PCA(n_components=EMB_COMPONENTS, random_state=seed).fit(embeddings)
    vec_pca = PCA(n_components=VEC_DIM, random_state=seed).fit(embeddings)
    tfidf_vec_svd = TruncatedSVD(n_components=VEC_DIM, random_state=seed).fit(matrix)
    centred = np.asarray(embeddings, np.float64) - vec_pca.mean_
    return TextTransforms(
        vocabulary=vocabulary, idf=idf, encoder=np.array(encoder), svd=svd.components_.astype(np.float64),
        centres=centres.astype(np.float64),
        emb_mean=vec_pca.mean_.astype(np.float64), emb_pca=emb_pca.components_.astype(np.float64),
        vec_pca=vec_pca.components_.astype(np.float64),
        vec_topic_centre=_topic_means(centred @ vec_pca.components_.T, topic),
        tfidf_vec_svd=tfidf_vec_svd.components_.astype(np.float64),
        tfidf_vec_topic_centre=_topic_means(np.asarray(matrix @ tfidf_vec_svd.components_.T), topic))


def _topic_means(x: np.ndarray, topic: np.ndarray) -> np.ndarray:
    out = np.zeros((N_TOPICS, x.shape[1]))
    for t in np.unique(topic):
        out[t] = x[topic == t].mean(axis=0)
    return out


def post_static(posts: pd.DataFrame, embeddings: np.ndarray, encoder: str = "unknown",
                seed: int = 0) -> tuple[PostView, TextTransforms]:
    """Everything about a post that does not change (text columns, components, vectors, topic), through
    the service's own `post_text_features`, and the fitted transforms the artifact ships."""
    texts = posts[c.TEXT].astype(str).tolist()
    transforms = fit_text_transforms(texts, posts[c.TOPIC], embeddings, encoder, seed)
    return post_text_features(texts, posts[c.TOPIC], transforms, embeddings), transforms


# --------------------------------------------------------------------------------------- history
@dataclass
class History:
    """Every feed event in memory, per user row in time order: what training replays."""

    user_ids: np.ndarray  # (U,) sorted ids of user_data
    post_ids: np.ndarray  # (P,) sorted ids of post_text_df
    events: UserEvents
    user_id_of_event: np.ndarray  # ids again, aligned with events (for the sampling hash)
    seq: int  # highest insertion sequence read
    start: int  # first event second
    end: int  # the second after the last event
    weight: np.ndarray | None = None  # (events,) int16: each view's weight in its post's like rate (`weigh`)

    @property
    def views(self) -> np.ndarray:
        return self.events.kind == VIEW

    def weigh(self, priors: Priors, topic: np.ndarray, global_rows: np.ndarray | None = None) -> None:
        """Give every event its view weight (`Priors.view_weight`): once the priors are fitted, before any
        post counter is read. `global_rows` maps this history's user rows to the priors' (a Spark bucket
        holds only some users)."""
        ev, topic = self.events, np.asarray(topic)
        weight = np.empty(len(ev.ts), np.int16)
        users = np.asarray(global_rows) if global_rows is not None else np.arange(len(self.user_ids))
        step = 1 << 16  # users at a time: the per-event temporaries stay small at any scale
        for lo in range(0, len(self.user_ids), step):
            a, b = ev.indptr[lo], ev.indptr[min(lo + step, len(self.user_ids))]
            rows = np.repeat(users[lo:lo + step], np.diff(ev.indptr[lo:lo + step + 1]))
            weight[a:b] = priors.view_weights(rows, topic[ev.post[a:b]])
        self.weight = weight
        self.__dict__.pop("view_index", None)

    def weights_of(self, mask: np.ndarray) -> np.ndarray:
        """The weights of the events `mask` selects."""
        if self.weight is None:
            raise RuntimeError("the history's views have no weights yet: call History.weigh after fitting the priors")
        return self.weight[mask]

    @cached_property
    def view_index(self) -> ViewIndex:
        """The views sorted by (post, time) once, for every post-counter lookup of this history."""
        ev, views = self.events, self.views
        return ViewIndex(ev.post[views], ev.ts[views], ev.target[views], self.weights_of(views))


def history_from(batch: EventBatch, user_ids: np.ndarray, post_ids: np.ndarray) -> History:
    """Index a batch of events (ids) by user and post rows; events of unknown ids are dropped, loudly."""
    ur = np.searchsorted(user_ids, batch.user_id)
    pr = np.searchsorted(post_ids, batch.post_id)
    ok = ((ur < len(user_ids)) & (user_ids[np.minimum(ur, len(user_ids) - 1)] == batch.user_id)
          & (pr < len(post_ids)) & (post_ids[np.minimum(pr, len(post_ids) - 1)] == batch.post_id))
    if not ok.all():
        logger.warning("{} feed rows reference users or posts missing from their tables: ignored", int((~ok).sum()))
    ur, pr = ur[ok].astype(np.int32), pr[ok].astype(np.int32)
    ts, kind, target = batch.ts[ok], batch.kind[ok], batch.target[ok]
    if not len(ts):
        raise ValueError("feed_data is empty: generate a world or import data first")
    start, end = int(ts.min()), int(ts.max()) + 1
    events = UserEvents.build(ur, ts, pr, kind, target, len(user_ids))
    del ur, pr, ts, kind, target
    seq = int(batch.seq.max()) if batch.seq is not None and len(batch.seq) else 0
    return History(user_ids=user_ids, post_ids=post_ids, events=events,
                   user_id_of_event=np.repeat(user_ids.astype(np.int32), np.diff(events.indptr)), seq=seq,
                   start=start, end=end)


# --------------------------------------------------------------------------------------- priors
def fit_priors(history: History, users: pd.DataFrame, posts: PostView, cutoff: int) -> Priors:
    """Global like rate, city rates, the views' weights and the feed's mean sentence vector, from views
    before `cutoff`."""
    ev = history.events
    before = history.views & (ev.ts < cutoff)
    n_users = len(history.user_ids)
    key = ev.rows()[before].astype(np.int64) * N_TOPICS + posts.topic[ev.post[before]]
    topic_views = np.bincount(key, minlength=n_users * N_TOPICS).reshape(n_users, N_TOPICS)
    topic_liked = np.bincount(key, weights=ev.target[before], minlength=n_users * N_TOPICS).reshape(n_users, N_TOPICS)
    post_views = np.bincount(ev.post[before], minlength=len(posts.topic))
    return priors_from_counts(topic_views, topic_liked, post_views, users, posts)


def view_weight_table(topic_views: np.ndarray, topic_liked: np.ndarray,
                      rate: float) -> tuple[np.ndarray, np.ndarray]:
    """`Priors.view_weight` and `view_weight_new` from per-user, per-topic (views, liked views): the
    user's like rate in the topic, smoothed as the features smooth it (`finalize_users`), over the topic's
    mean of it weighted by those views, so that the weights of the views they were fitted on average 1."""
    views, liked = topic_views.sum(axis=1), topic_liked.sum(axis=1)
    u_rate = (liked + PRIOR_VIEWS_USER * rate) / (views + PRIOR_VIEWS_USER)
    r = (topic_liked + PRIOR_VIEWS_TOPIC * u_rate[:, None]) / (topic_views + PRIOR_VIEWS_TOPIC)
    seen = topic_views.sum(axis=0)
    mean = np.where(seen > 0, (topic_views * r).sum(axis=0) / np.maximum(seen, 1), rate)

    def units(x: np.ndarray) -> np.ndarray:
        return np.clip(np.rint(x * WEIGHT_UNIT), 1, MAX_WEIGHT).astype(np.int16)

    return units(r / mean), units(rate / mean)


def priors_from_counts(topic_views: np.ndarray, topic_liked: np.ndarray, post_views: np.ndarray,
                       users: pd.DataFrame, posts: PostView) -> Priors:
    """The priors from per-user, per-topic (views, liked views) (U, topics) and per-post views before the
    cut-off: sums, so any engine that can count per user and per post (SQL, Spark) hands them over.
    `users` are user_data rows in the order of the counts' rows (by id)."""
    topic_views = np.asarray(topic_views, np.float64)
    topic_liked = np.asarray(topic_liked, np.float64)
    user_views, user_liked = topic_views.sum(axis=1), topic_liked.sum(axis=1)
    views, liked = int(user_views.sum()), int(user_liked.sum())
    if views == 0:
        raise ValueError("no views before the first training row to fit the priors on: move the windows later")
    rate = liked / views
    view_weight, view_weight_new = view_weight_table(topic_views, topic_liked, rate)
    city_codes, city_names = pd.factorize(users[c.CITY].astype(str), sort=True)
    n_cities = len(city_names)
    city_views = np.bincount(city_codes, weights=user_views, minlength=n_cities)
    city_liked = np.bincount(city_codes, weights=user_liked, minlength=n_cities)
    city_rate = (city_liked + PRIOR_VIEWS_CITY * rate) / (city_views + PRIOR_VIEWS_CITY)
    city_users = np.bincount(city_codes, minlength=n_cities)
    post_views = np.asarray(post_views, np.float64)
    exposure = post_views @ posts.vec.astype(np.float64) / max(post_views.sum(), 1.0)
    return Priors(global_rate=float(rate), exposure_mean=exposure.astype(np.float64),
                  city_names=tuple(str(x) for x in city_names), city_rate=city_rate.astype(np.float64),
                  city_users_log=np.log1p(city_users).astype(np.float64), view_weight=view_weight,
                  view_weight_new=view_weight_new)


# --------------------------------------------------------------------------------------- snapshot
def build_snapshot(history: History, users: pd.DataFrame, posts: PostView, priors: Priors, base_as_of: int,
                   seq_gaps: np.ndarray | None = None, seq_xmax: int = 0) -> Snapshot:
    """The state to serve: base counts before `base_as_of` (the same fold as every training row) and
    every event from `base_as_of` on, one by one."""
    ev = history.events
    n_users = len(history.user_ids)
    base = empty_counts(n_users)
    day_parts, day_rows = [], []
    for row in range(n_users):
        lo, hi = ev.indptr[row], ev.indptr[row + 1]
        if lo == hi:
            continue
        ts, post, kind, target = ev.ts[lo:hi], ev.post[lo:hi], ev.kind[lo:hi], ev.target[lo:hi]
        base[row] = fold_user(base[row], np.empty(0, np.int64), ts, post, kind, target, posts.topic,
                              np.array([base_as_of]))[0]
        days = np.unique(ts[(kind == VIEW) & (ts < base_as_of)] // SECONDS_PER_DAY)
        day_parts.append(days)
        day_rows.append(np.full(len(days), row))
    rows_of_event = ev.rows()
    days_indptr, days = csr(np.concatenate(day_rows or [np.empty(0, np.int64)]).astype(np.int64),
                            np.concatenate(day_parts or [np.empty(0, np.int64)]).astype(np.int32), n_users)
    old = ev.ts < base_as_of
    liked = old & (ev.kind == LIKE)
    likes_indptr, likes = csr(rows_of_event[liked], ev.post[liked], n_users)
    # the last views before the base cut, per user (events are per user in time order)
    old_views = np.flatnonzero(old & (ev.kind == VIEW))
    owner = rows_of_event[old_views]
    from_end = np.empty(len(old_views), np.int64)  # 0 for a user's latest old view, 1 for the one before...
    if len(old_views):
        last_of_user = np.r_[np.flatnonzero(owner[1:] != owner[:-1]), len(owner) - 1]
        ends = np.repeat(last_of_user, np.diff(np.r_[-1, last_of_user]))
        from_end = ends - np.arange(len(owner))
    keep = old_views[from_end < LAST_VIEWS_KEPT]
    seen_indptr, seen = csr(rows_of_event[keep], ev.post[keep], n_users)
    recent = ~old
    events = UserEvents.build(rows_of_event[recent], ev.ts[recent], ev.post[recent], ev.kind[recent],
                              ev.target[recent], n_users)
    views_old = old & (ev.kind == VIEW)
    post_base = np.column_stack([
        np.bincount(ev.post[views_old], minlength=len(posts.topic)),
        np.bincount(ev.post[views_old], weights=ev.target[views_old], minlength=len(posts.topic)),
        np.bincount(ev.post[views_old], weights=history.weights_of(views_old), minlength=len(posts.topic)),
    ]).astype(np.int64)
    users = users.set_index(c.USER_ID).loc[history.user_ids].reset_index()
    return Snapshot(
        base_as_of=int(base_as_of), events_until=history.end, seq=history.seq,
        seq_gaps=np.empty((0, 2), np.int64) if seq_gaps is None else np.asarray(seq_gaps, np.int64).reshape(-1, 2),
        seq_xmax=int(seq_xmax), priors=priors, user_ids=history.user_ids,
        profile=profile_features(users, priors), base_counts=base, days_indptr=days_indptr, days=days,
        likes_indptr=likes_indptr, likes=likes.astype(np.int32), seen_indptr=seen_indptr,
        seen=seen.astype(np.int32), events=events, post_ids=history.post_ids,
        posts=posts, post_base=post_base,
    )


# --------------------------------------------------------------------------------------- rows
def sample_views(history: History, lo: int, hi: int, max_rows: int, salt: int = 0) -> pd.DataFrame:
    """About `max_rows` views with lo <= time < hi, chosen by a hash of (user, post), as (user_row,
    post_row, user_id, post_id, ts, target) ordered by user and time."""
    ev = history.events
    window = history.views & (ev.ts >= lo) & (ev.ts < hi)
    total = int(window.sum())
    buckets = 10_000
    keep = buckets if total <= max_rows else max(1, int(buckets * max_rows / total))
    # a deterministic pseudo-random bucket per (user, post), in int64 whatever the ids
    idx = np.flatnonzero(window)
    bucket = (history.user_id_of_event[idx].astype(np.int64) * 7919
              + history.post_ids[ev.post[idx]].astype(np.int64) * 104_729 + salt) % buckets
    pick = idx[bucket < keep]
    rows_of_event = ev.rows()
    return pd.DataFrame({
        "user_row": rows_of_event[pick].astype(np.int64), "post_row": ev.post[pick].astype(np.int64),
        c.USER_ID: history.user_id_of_event[pick].astype(np.int64), c.POST_ID: history.post_ids[ev.post[pick]],
        "ts": ev.ts[pick], c.TARGET: ev.target[pick].astype(np.int64),
    })


def user_views_at(history: History, profile: np.ndarray, posts: PostView, priors: Priors,
                  user_rows: np.ndarray, times: np.ndarray, cold: np.ndarray | None = None) -> UserView:
    """The user side of each (user row, moment) pair, as the service would have computed it then:
    `fold_user` and `taste_at` over the user's events, once per user for all of its moments. Rows
    marked `cold` see the profile alone, as the service sees a user who has just signed up."""
    ev = history.events
    user_rows = np.asarray(user_rows, np.int64)
    times = np.asarray(times, np.int64)
    cold = np.zeros(len(user_rows), bool) if cold is None else np.asarray(cold, bool)
    order = np.argsort(user_rows, kind="stable")
    order = order[~cold[order]]  # cold rows keep the empty counts and taste below
    counts = np.repeat(empty_counts(), len(user_rows), axis=0)
    d = posts.vec.shape[1]
    taste = Taste(likes=np.zeros(len(user_rows), np.int64), vec_sum=np.zeros((len(user_rows), d)),
                  topic_likes=np.zeros((len(user_rows), N_TOPICS)),
                  topic_sum=np.zeros((len(user_rows), N_TOPICS, d)),
                  topic_tfidf_sum=np.zeros((len(user_rows), N_TOPICS, d)),
                  cf_sum=np.zeros((len(user_rows), posts.cf.shape[1])))
    sorted_rows = user_rows[order]
    starts = np.flatnonzero(np.r_[True, sorted_rows[1:] != sorted_rows[:-1]]) if len(order) else np.empty(0, int)
    ends = np.r_[starts[1:], len(order)] if len(order) else np.empty(0, int)
    no_days, no_likes = np.empty(0, np.int64), np.empty(0, np.int32)
    for a, b in zip(starts, ends, strict=True):
        row, idx = int(sorted_rows[a]), order[a:b]
        lo, hi = ev.indptr[row], ev.indptr[row + 1]
        ts, post, kind, target = ev.ts[lo:hi], ev.post[lo:hi], ev.kind[lo:hi], ev.target[lo:hi]
        counts[idx] = fold_user(empty_counts()[0], no_days, ts, post, kind, target, posts.topic, times[idx])
        is_like = kind == LIKE
        part = taste_at(no_likes, ts[is_like], post[is_like], times[idx], posts.vec, posts.tfidf_vec, posts.topic,
                        posts.cf)
        for name in ("likes", "vec_sum", "topic_likes", "topic_sum", "topic_tfidf_sum", "cf_sum"):
            getattr(taste, name)[idx] = getattr(part, name)
    return finalize_users(profile[user_rows], counts, taste, priors)


def post_counters_at(history: History, priors: Priors, post_rows: np.ndarray, times: np.ndarray) -> np.ndarray:
    """POST_COUNTERS of each (post row, moment) pair: the views of the post strictly before the moment."""
    return finalize_posts(history.view_index.counts(post_rows, times), priors)


def rows_matrix(history: History, profile: np.ndarray, posts: PostView, priors: Priors, rows: pd.DataFrame,
                text: bool, chunk: int = 20_000, counters: np.ndarray | None = None,
                schedule: Schedule | None = None) -> np.ndarray:
    """Training rows through the same `assemble` the service uses for requests, each row as of its own
    moment (a `cold` column, when present, hides the history of the rows it marks). Rows are processed in
    chunks of whole users to bound the memory of the taste vectors. `counters` (n, 3), when given, are
    the rows' POST_COUNTERS computed elsewhere (a Spark stage partitioned by post, whose `history` then
    holds only some users). `schedule`, when given, holds the collaborative vectors of each row's period
    (`training.collaborative`); without it every row reads `posts.cf`."""
    names = feature_names(text)
    if rows.empty:
        return np.empty((0, len(names)), np.float32)
    out = np.empty((len(rows), len(names)), np.float32, order="F")
    user_rows = rows["user_row"].to_numpy(np.int64)
    post_rows = rows["post_row"].to_numpy(np.int64)
    ts = rows["ts"].to_numpy(np.int64)
    cold = rows["cold"].to_numpy(bool) if "cold" in rows else np.zeros(len(rows), bool)
    if counters is None:
        counters = post_counters_at(history, priors, post_rows, ts)
    if schedule is not None:
        period = schedule.period(ts)
        for k in np.unique(period):
            sel = np.flatnonzero(period == k)
            out[sel] = rows_matrix(history, profile, schedule.posts(posts, int(k)), priors, rows.iloc[sel], text,
                                   chunk, counters[sel])
        return out
    order = np.argsort(user_rows, kind="stable")
    i = 0
    while i < len(order):
        # extend the chunk to the end of its last user: each user's moments in one fold
        j = min(i + chunk, len(order))
        while j < len(order) and user_rows[order[j]] == user_rows[order[j - 1]]:
            j += 1
        idx = order[i:j]
        view = user_views_at(history, profile, posts, priors, user_rows[idx], ts[idx], cold[idx])
        out[idx] = assemble(view, np.arange(len(idx)), posts, post_rows[idx], ts[idx], text, counters=counters[idx])
        i = j
    return out
