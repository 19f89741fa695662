"""Feature tables as of a cut-off: every aggregate counts only events strictly before `as_of`.

The text models (TF-IDF components and clusters, embedding components) are fitted on post texts
alone, which holds no label, so fitting them once on the whole catalogue leaks nothing.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
from sklearn.cluster import KMeans
from sklearn.decomposition import PCA, TruncatedSVD
from sklearn.feature_extraction.text import TfidfVectorizer
from sqlalchemy import Connection

from app import columns as c
from app.features import EMB_COMPONENTS, N_TOPICS, TFIDF_CLUSTERS, TFIDF_COMPONENTS, FeatureTables
from training import data

PRIOR_VIEWS_USER = 20  # smoothing weight toward the global like rate
PRIOR_VIEWS_TOPIC = 10  # toward the user's own rate
PRIOR_VIEWS_POST = 200
PRIOR_VIEWS_CITY = 2000
VEC_DIM = 64  # text space of user vectors and similarities
TOPIC_VEC_PRIOR = 2.0  # pseudo-likes pulling a user's per-topic taste vector toward zero


@dataclass
class PostStatic:
    """Post columns that do not depend on time."""

    post_ids: np.ndarray
    topic: np.ndarray
    text_block: np.ndarray  # text_len_log, words_log, tfidf components, cluster distances
    emb_components: np.ndarray  # (P, EMB_COMPONENTS)
    vec: np.ndarray  # (P, VEC_DIM) sentence embedding relative to its topic centre, unit length
    tfidf_vec: np.ndarray  # (P, VEC_DIM) TF-IDF components relative to the topic centre, unit length


def post_static(posts: pd.DataFrame, embeddings: np.ndarray, seed: int = 0) -> PostStatic:
    texts = posts[c.TEXT].astype(str)
    tfidf = TfidfVectorizer(stop_words="english", max_features=20_000, min_df=2, sublinear_tf=True)
    matrix = tfidf.fit_transform(texts)
    comps = TruncatedSVD(n_components=TFIDF_COMPONENTS, random_state=seed).fit_transform(matrix)
    dists = KMeans(n_clusters=TFIDF_CLUSTERS, n_init=4, random_state=seed).fit_transform(comps)
    emb = PCA(n_components=EMB_COMPONENTS, random_state=seed).fit_transform(embeddings)
    topic = pd.Categorical(posts[c.TOPIC], categories=c.TOPICS).codes
    vec = _topic_centred(PCA(n_components=VEC_DIM, random_state=seed).fit_transform(embeddings), topic)
    tfidf_vec = _topic_centred(TruncatedSVD(n_components=VEC_DIM, random_state=seed).fit_transform(matrix), topic)
    block = np.column_stack([np.log1p(texts.str.len()), np.log1p(texts.str.split().str.len()), comps, dists])
    return PostStatic(
        post_ids=posts[c.POST_ID].to_numpy(np.int64),
        topic=topic.astype(np.int64),
        text_block=block.astype(np.float32),
        emb_components=emb[:, :EMB_COMPONENTS].astype(np.float32),
        vec=vec, tfidf_vec=tfidf_vec,
    )


def _topic_centred(x: np.ndarray, topic: np.ndarray) -> np.ndarray:
    """Taste inside a topic is what the topic cannot tell: vectors relative to their topic's centre, so a
    user's liked mean points at the themes they prefer, not at the topic itself. Unit length, float32."""
    x = x.astype(np.float64).copy()
    for t in np.unique(topic):
        x[topic == t] -= x[topic == t].mean(axis=0)
    return _unit(x)


def _unit(x: np.ndarray) -> np.ndarray:
    norm = np.linalg.norm(x, axis=-1, keepdims=True)
    return np.where(norm > 0, x / np.maximum(norm, 1e-12), 0.0).astype(np.float32)


def _topic_means(user_row: np.ndarray, post_row: np.ndarray, vecs: np.ndarray, topic: np.ndarray,
                 n_users: int) -> np.ndarray:
    """Per user and topic, the shrunk mean of liked posts' vectors (U, n_topics, d) float16; not unit
    length, because a taste seen in many likes should weigh more than one seen once."""
    sums = np.zeros((n_users, N_TOPICS, vecs.shape[1]), dtype=np.float32)
    counts = np.zeros((n_users, N_TOPICS), dtype=np.float32)
    np.add.at(sums, (user_row, topic[post_row]), vecs[post_row])
    np.add.at(counts, (user_row, topic[post_row]), 1.0)
    return (sums / (counts[..., None] + TOPIC_VEC_PRIOR)).astype(np.float16)


def _user_vectors(user_row: np.ndarray, post_row: np.ndarray, static: PostStatic, n_users: int,
                  exposure_mean: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean text vector of liked posts, and the contrast with what the feed showed on average (under a
    random feed the seen posts' mean is the exposure-weighted mean of all posts)."""
    sums = np.zeros((n_users, static.vec.shape[1]), dtype=np.float64)
    np.add.at(sums, user_row, static.vec[post_row])
    counts = np.bincount(user_row, minlength=n_users)[:, None]
    mean = np.where(counts > 0, sums / np.maximum(counts, 1), 0.0)
    contrast = np.where(counts > 0, mean - exposure_mean[None, :], 0.0)
    # float16 halves the largest per-user arrays the service holds; products are taken in float32
    return _unit(mean).astype(np.float16), _unit(contrast).astype(np.float16)


def build_tables(conn: Connection, as_of: int, users: pd.DataFrame, static: PostStatic,
                 all_likes: pd.DataFrame) -> FeatureTables:
    """Feature tables from events before `as_of`; `all_likes` (every like, any time) feeds exclusion."""
    user_ids = users[c.USER_ID].to_numpy(np.int64)
    n_users = len(user_ids)
    ua = data.user_activity(conn, as_of).set_index(c.USER_ID).reindex(user_ids)
    uta = data.user_topic_activity(conn, as_of)
    pa = data.post_activity(conn, as_of).set_index(c.POST_ID).reindex(static.post_ids).fillna(0)
    ca = data.city_activity(conn, as_of).set_index(c.CITY)

    views = ua["views"].fillna(0).to_numpy(float)
    likes_ = ua["likes"].fillna(0).to_numpy(float)
    global_rate = likes_.sum() / max(views.sum(), 1.0)
    u_rate = (likes_ + PRIOR_VIEWS_USER * global_rate) / (views + PRIOR_VIEWS_USER)

    urow = pd.Series(np.arange(n_users), index=user_ids)
    topic_views = np.zeros((n_users, N_TOPICS))
    topic_likes = np.zeros((n_users, N_TOPICS))
    known = uta[c.USER_ID].isin(urow.index)
    r = urow[uta.loc[known, c.USER_ID]].to_numpy()
    t = pd.Categorical(uta.loc[known, c.TOPIC], categories=c.TOPICS).codes
    ok = t >= 0
    np.add.at(topic_views, (r[ok], t[ok]), uta.loc[known, "views"].to_numpy(float)[ok])
    np.add.at(topic_likes, (r[ok], t[ok]), uta.loc[known, "likes"].to_numpy(float)[ok])
    view_share = topic_views / np.maximum(topic_views.sum(axis=1, keepdims=True), 1)
    topic_rate = (topic_likes + PRIOR_VIEWS_TOPIC * u_rate[:, None]) / (topic_views + PRIOR_VIEWS_TOPIC)

    city_views = ca["views"].reindex(users[c.CITY]).fillna(0).to_numpy(float)
    city_likes = ca["likes"].reindex(users[c.CITY]).fillna(0).to_numpy(float)
    city_rate = (city_likes + PRIOR_VIEWS_CITY * global_rate) / (city_views + PRIOR_VIEWS_CITY)
    city_users = users.groupby(c.CITY)[c.USER_ID].transform("size").to_numpy(float)

    user_num = np.column_stack([
        users[c.GENDER].to_numpy(float), users[c.AGE].to_numpy(float),
        pd.Categorical(users[c.COUNTRY], categories=c.COUNTRIES).codes.astype(float),
        (users[c.OS] == c.OS_VALUES[1]).to_numpy(float), (users[c.SOURCE] == c.SOURCES[1]).to_numpy(float),
        users[c.EXP_GROUP].to_numpy(float), city_rate, np.log1p(city_users),
        views, likes_, u_rate, ua["active_days"].fillna(0).to_numpy(float),
        view_share, topic_rate,
    ]).astype(np.float32)

    p_views, p_likes = pa["views"].to_numpy(float), pa["likes"].to_numpy(float)
    p_rate = (p_likes + PRIOR_VIEWS_POST * global_rate) / (p_views + PRIOR_VIEWS_POST)
    post_num = np.column_stack([
        static.topic.astype(float), static.text_block[:, :2], p_views, p_likes, p_rate, static.text_block[:, 2:],
    ]).astype(np.float32)

    lk = all_likes[all_likes[c.USER_ID].isin(urow.index)]
    lk_rows = urow[lk[c.USER_ID]].to_numpy()
    prow = pd.Series(np.arange(len(static.post_ids)), index=static.post_ids)
    before = lk["ts"].to_numpy() < as_of
    exposure = p_views / max(p_views.sum(), 1.0)
    liked_rows, liked_posts = lk_rows[before], prow[lk.loc[before, c.POST_ID]].to_numpy()
    vec, contrast = _user_vectors(liked_rows, liked_posts, static, n_users, exposure @ static.vec)
    topic_vec = _topic_means(liked_rows, liked_posts, static.vec, static.topic, n_users)
    topic_tfidf = _topic_means(liked_rows, liked_posts, static.tfidf_vec, static.topic, n_users)
    indptr = np.concatenate([[0], np.cumsum(np.bincount(lk_rows, minlength=n_users))]).astype(np.int64)
    return FeatureTables(
        as_of=int(as_of), user_ids=user_ids, user_num=user_num,
        user_first_view=ua["first_view"].fillna(-1).to_numpy(np.int64),
        user_last_view=ua["last_view"].fillna(-1).to_numpy(np.int64),
        user_vec=vec, user_contrast=contrast, user_topic_vec=topic_vec, user_topic_tfidf=topic_tfidf,
        post_ids=static.post_ids, post_num=post_num, post_text=static.emb_components, post_vec=static.vec,
        post_tfidf_vec=static.tfidf_vec,
        post_topic=static.topic, likes_indptr=indptr,
        likes_post=lk[c.POST_ID].to_numpy(np.int32), likes_ts=lk["ts"].to_numpy(np.int64),
    )
