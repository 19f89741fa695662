"""A post's text features from its text and topic: the one path for the catalogue at training and for
posts added while the service runs.

Training fits the transforms once (`training.features.fit_text_transforms`: TF-IDF vocabulary and
idf, SVD components, k-means centres, the PCA components of the sentence embeddings, the topic
centres of the taste vectors) and saves them as plain arrays (`text_transforms.npz`, listed in the
manifest with its checksum). `post_text_features` applies them, in chunks, to any number of posts:
training calls it for the whole catalogue, the service's follower for each new post, so a new post's
columns are computed exactly as training computed the old ones' (`tests/test_catalogue.py`).
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from pathlib import Path

import numpy as np
import pandas as pd

from app import columns as c
from app.features import CF_DIM, EMB_COMPONENTS, POST_COUNTERS, TFIDF_CLUSTERS, TFIDF_COMPONENTS, PostView
from app.text_encoder import Encoder

TRANSFORMS_FILE = "text_transforms.npz"
CHUNK = 50_000  # posts transformed at once: bounds the sparse TF-IDF matrix of a 1M-post catalogue


@dataclass(frozen=True)
class TextTransforms:
    vocabulary: np.ndarray  # (V,) str: TF-IDF terms in column order
    idf: np.ndarray  # (V,) float64
    svd: np.ndarray  # (TFIDF_COMPONENTS, V): TF-IDF components (tfidf_pc*)
    centres: np.ndarray  # (TFIDF_CLUSTERS, TFIDF_COMPONENTS): k-means centres (tfidf_dist*)
    emb_mean: np.ndarray  # (E,) mean of the sentence embeddings
    emb_pca: np.ndarray  # (EMB_COMPONENTS, E): emb_pc*
    vec_pca: np.ndarray  # (d, E): sentence space of the taste vectors
    vec_topic_centre: np.ndarray  # (N_TOPICS, d)
    tfidf_vec_svd: np.ndarray  # (d, V): TF-IDF space of the taste vectors
    tfidf_vec_topic_centre: np.ndarray  # (N_TOPICS, d)
    encoder: np.ndarray  # () str: the sentence encoder the embeddings came from

    @property
    def encoder_name(self) -> str:
        return str(self.encoder)

    def save(self, path: Path) -> None:
        with open(path, "wb") as fh:
            np.savez(fh, **{f.name: np.asarray(getattr(self, f.name)) for f in fields(self)})

    @classmethod
    def load(cls, path: Path) -> TextTransforms:
        with np.load(path, allow_pickle=False) as data:
            return cls(**{f.name: data[f.name] for f in fields(cls)})


def tfidf_matrix(texts: list[str], vocabulary: np.ndarray, idf: np.ndarray):
    """The TF-IDF rows sklearn's `TfidfVectorizer(sublinear_tf=True)` fitted on the training texts
    gives: counts over the fitted vocabulary, 1 + log(tf), times idf, unit length (scipy CSR)."""
    from sklearn.feature_extraction.text import CountVectorizer

    vocab = {str(w): i for i, w in enumerate(vocabulary.tolist())}
    counts = CountVectorizer(stop_words="english", vocabulary=vocab).transform(texts).astype(np.float64)
    counts.data = 1.0 + np.log(counts.data)
    x = counts.multiply(np.asarray(idf)[None, :]).tocsr()
    norm = np.sqrt(np.asarray(x.multiply(x).sum(axis=1)).ravel())
    return x.multiply(1.0 / np.maximum(norm, 1e-12)[:, None]).tocsr()


def unit_topic_centred(x: np.ndarray, topic: np.ndarray, centre: np.ndarray) -> np.ndarray:
    """Taste inside a topic is what the topic cannot tell: vectors relative to their topic's centre (fitted
    at training), unit length, float32."""
    x = np.asarray(x, np.float64) - centre[topic]
    norm = np.linalg.norm(x, axis=-1, keepdims=True)
    return np.where(norm > 0, x / np.maximum(norm, 1e-12), 0.0).astype(np.float32)


def topic_codes(topics) -> np.ndarray:
    codes = pd.Categorical(pd.Series(topics, dtype=object), categories=c.TOPICS).codes.astype(np.int64)
    if (codes < 0).any():
        bad = pd.Series(topics, dtype=object)[codes < 0].iloc[0]
        raise ValueError(f"topic: {bad!r} is not one of {c.TOPICS}")
    return codes


def post_text_features(texts: list[str], topics, transforms: TextTransforms,
                       embeddings: np.ndarray | Encoder) -> PostView:
    """Static columns, embedding components and taste vectors of posts (counters left at zero; the
    collaborative vectors too: a text says nothing of who liked the post, `training.collaborative`).
    `embeddings` are the posts' sentence embeddings, or the encoder that computes them."""
    texts = [str(x) for x in texts]
    topic = topic_codes(topics)
    n = len(texts)
    d = transforms.vec_pca.shape[0]
    static = np.empty((n, 3 + TFIDF_COMPONENTS + TFIDF_CLUSTERS), np.float32)
    text = np.empty((n, EMB_COMPONENTS), np.float32)
    vec = np.empty((n, d), np.float32)
    tfidf_vec = np.empty((n, d), np.float32)
    for lo in range(0, n, CHUNK):
        hi = min(lo + CHUNK, n)
        part = texts[lo:hi]
        emb = embeddings[lo:hi] if isinstance(embeddings, np.ndarray) else embeddings.encode(part)
        emb = np.asarray(emb, np.float64) - transforms.emb_mean
        x = tfidf_matrix(part, transforms.vocabulary, transforms.idf)
        comps = np.asarray(x @ transforms.svd.T)
        sq = (comps ** 2).sum(axis=1)[:, None] - 2 * comps @ transforms.centres.T + (transforms.centres ** 2).sum(1)
        series = pd.Series(part)
        static[lo:hi] = np.column_stack([topic[lo:hi].astype(float), np.log1p(series.str.len()),
                                         np.log1p(series.str.split().str.len()), comps,
                                         np.sqrt(np.maximum(sq, 0.0))])
        text[lo:hi] = emb @ transforms.emb_pca.T
        vec[lo:hi] = unit_topic_centred(emb @ transforms.vec_pca.T, topic[lo:hi], transforms.vec_topic_centre)
        tfidf_vec[lo:hi] = unit_topic_centred(np.asarray(x @ transforms.tfidf_vec_svd.T), topic[lo:hi],
                                              transforms.tfidf_vec_topic_centre)
    return PostView(static=static, counters=np.zeros((n, len(POST_COUNTERS)), np.float32), text=text, vec=vec,
                    tfidf_vec=tfidf_vec, topic=topic, cf=np.zeros((n, CF_DIM), np.float32))

