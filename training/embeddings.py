"""Sentence embeddings of post texts for training, cached per text; the encoders themselves live in
`app.text_encoder`, which the service also uses for posts added while it runs."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
from loguru import logger

from app.text_encoder import ENCODERS, make_encoder


def _key(text: str) -> str:
    return hashlib.sha1(text.encode("utf-8")).hexdigest()


def embed_texts(texts: list[str], model: str, cache_dir: Path) -> np.ndarray:
    """Embeddings of `texts`, computing only those not already in the cache file for `model`."""
    if model not in ENCODERS:
        raise ValueError(f"unknown EMBEDDING_MODEL {model!r}; choose one of {sorted(ENCODERS)}")
    cache_path = cache_dir / f"embeddings-{model}.npz"
    cached: dict[str, np.ndarray] = {}
    if cache_path.exists():
        with np.load(cache_path) as data:
            cached = dict(zip(data["keys"].tolist(), data["vectors"], strict=True))
    keys = [_key(t) for t in texts]
    missing = sorted({k: t for k, t in zip(keys, texts, strict=True) if k not in cached}.items())
    if missing:
        logger.info("embedding {} new texts with {}", len(missing), model)
        vectors = make_encoder(model).encode([t for _, t in missing])
        cached.update(zip([k for k, _ in missing], vectors, strict=True))
        cache_dir.mkdir(parents=True, exist_ok=True)
        all_keys = np.array(sorted(cached))
        np.savez(cache_path, keys=all_keys, vectors=np.stack([cached[k] for k in all_keys]))
    return np.stack([cached[k] for k in keys]).astype(np.float32)
