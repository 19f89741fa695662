"""Versioned model artifacts: `models/<version>/` with a manifest, and `models/current` naming the one served.

The manifest is the contract between training and serving: feature names and order, dtypes, cut-offs,
data range, metrics, library versions and a SHA-256 of every file. Loading checks all of it.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from app.features import feature_names
from app.recent_popularity import RECENT_FEATURES

SCHEMA_VERSION = 2  # 2: the state snapshot (state.npz) replaced the feature tables
MANIFEST = "manifest.json"
CURRENT = "current"
STATE_FILE = "state.npz"  # app.snapshot.Snapshot
POSTS_FILE = "posts.json"  # id, text, topic of every post: the service answers without the database
MODEL_FILES = {"control": "control.cbm", "test": "test.cbm"}
MODEL_USES_TEXT = {"control": False, "test": True}
# What a slot's model was trained to predict (the manifest's models.<slot>.objective; absent: the first).
LIKE_GIVEN_SHOWN = "like_given_shown"  # P(like | shown), on the feed's impressions
LIKED_WITHIN_HORIZON = "liked_within_horizon"  # liked within the next horizon, over the catalogue
OBJECTIVES = (LIKE_GIVEN_SHOWN, LIKED_WITHIN_HORIZON)


def model_features(uses_text: bool, objective: str) -> tuple[str, ...]:
    """The columns a slot's model reads: `assemble`'s, then the recent popularity ones for the horizon
    objective (`app.recent_popularity`)."""
    names = feature_names(uses_text)
    return (*names, *RECENT_FEATURES) if objective == LIKED_WITHIN_HORIZON else names


class ArtifactsInvalid(RuntimeError):
    """The artifacts cannot be served; the message says why and what to do."""


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def current_version_dir(model_dir: Path) -> Path:
    pointer = Path(model_dir) / CURRENT
    if not pointer.is_file():
        raise ArtifactsInvalid(f"no trained model in {model_dir} ({CURRENT} missing): run `make train`")
    version = pointer.read_text().strip()
    path = Path(model_dir) / version
    if not (path / MANIFEST).is_file():
        raise ArtifactsInvalid(f"{path / MANIFEST} missing: the current version is incomplete, retrain")
    return path


@dataclass
class Manifest:
    path: Path
    data: dict

    @property
    def version(self) -> str:
        return str(self.data["version"])

    def file(self, name: str) -> Path:
        return self.path / name


def load_manifest(version_dir: Path) -> Manifest:
    """Read and check a version's manifest: schema, files present with matching checksums, features."""
    try:
        data = json.loads((version_dir / MANIFEST).read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise ArtifactsInvalid(f"{version_dir / MANIFEST} unreadable: {exc}") from None
    if data.get("schema") != SCHEMA_VERSION:
        raise ArtifactsInvalid(
            f"{version_dir} has artifact schema {data.get('schema')!r}, this service reads {SCHEMA_VERSION}: retrain")
    for name, digest in data.get("files", {}).items():
        path = version_dir / name
        if not path.is_file():
            raise ArtifactsInvalid(f"{path} missing")
        if sha256(path) != digest:
            raise ArtifactsInvalid(f"{path} is corrupt (checksum mismatch)")
    for model, uses_text in MODEL_USES_TEXT.items():
        meta = data.get("models", {}).get(model, {})
        objective = meta.get("objective", LIKE_GIVEN_SHOWN)
        if objective not in OBJECTIVES:
            raise ArtifactsInvalid(f"{version_dir}: model {model!r} has an unknown objective {objective!r}: retrain")
        expected = list(model_features(uses_text, objective))
        got = meta.get("features")
        if got != expected:
            raise ArtifactsInvalid(f"{version_dir}: model {model!r} was trained on other features than this "
                                   "code assembles: retrain")
    return Manifest(version_dir, data)


def write_manifest(version_dir: Path, data: dict) -> Path:
    files = sorted(p.name for p in version_dir.iterdir() if p.is_file() and p.name != MANIFEST)
    data = {**data, "schema": SCHEMA_VERSION, "files": {name: sha256(version_dir / name) for name in files}}
    path = version_dir / MANIFEST
    path.write_text(json.dumps(data, indent=2, sort_keys=True, default=str))
    return path


HISTORY = "history.jsonl"  # one line per change of `current`: what rollback reads


def set_current(model_dir: Path, version: str, how: str = "set") -> None:
    """Point `current` at a version (atomically) and record the change in the history."""
    pointer = Path(model_dir) / CURRENT
    previous = pointer.read_text().strip() if pointer.is_file() else None
    tmp = Path(model_dir) / f".{CURRENT}.tmp"
    tmp.write_text(version + "\n")
    tmp.replace(pointer)  # atomic: a reader sees the old or the new pointer
    entry = {"at": datetime.now(UTC).isoformat(timespec="seconds"), "version": version, "previous": previous,
             "how": how}
    with open(Path(model_dir) / HISTORY, "a") as fh:
        fh.write(json.dumps(entry) + "\n")
