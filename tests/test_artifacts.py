"""Artifacts: round trip, manifest contents, and refusal to load anything broken."""

import json
import shutil

import numpy as np
import pytest

from app.artifacts import CURRENT, MANIFEST, POSTS_FILE, STATE_FILE, ArtifactsInvalid, load_manifest
from app.candidates import RETRIEVAL_FILE
from app.engine import Recommender
from app.features import PRIOR_VIEWS_POST, WEIGHT_UNIT, feature_names, finalize_posts
from app.snapshot import Snapshot
from app.text_features import TRANSFORMS_FILE


@pytest.fixture
def models_copy(trained, tmp_path):
    dst = tmp_path / "models"
    shutil.copytree(trained["model_dir"], dst)
    return dst, dst / trained["version_dir"].name


def test_manifest_describes_the_version(trained):
    m = json.loads((trained["version_dir"] / MANIFEST).read_text())
    assert m["models"]["control"]["features"] == list(feature_names(False))
    assert m["models"]["test"]["features"] == list(feature_names(True))
    assert set(m["files"]) == {"control.cbm", "test.cbm", STATE_FILE, POSTS_FILE, TRANSFORMS_FILE,
                                 RETRIEVAL_FILE, "proxy_control.cbm", "proxy_test.cbm"}
    split = m["split"]
    assert split["start"] < split["train_start"] < split["val_start"] < split["test_start"] < split["end"]
    # exact answers from the exclusion window before the held-out start; every event up to the data end
    assert m["state"]["base_as_of"] == m["features_as_of"] == split["test_start"] - 72 * 3600
    assert m["state"]["events_until"] == split["end"]
    assert m["priors"]["fitted_before"] == split["train_start"]
    assert {"catboost", "numpy", "python"} <= set(m["library_versions"])
    assert 0.5 < m["models"]["test"]["heldout_auc"] <= 1.0


def test_state_round_trip(trained, tmp_path):
    snap = Snapshot.load(trained["version_dir"] / STATE_FILE)
    snap.save(tmp_path / "s.npz")
    again = Snapshot.load(tmp_path / "s.npz")
    for name, value in vars(snap).items():
        for key, v in (vars(value).items() if hasattr(value, "__dataclass_fields__") else [(name, value)]):
            w = getattr(getattr(again, name), key) if hasattr(value, "__dataclass_fields__") else getattr(again, name)
            if isinstance(v, np.ndarray):
                np.testing.assert_array_equal(v, w, err_msg=f"{name}.{key}")
            else:
                assert v == w, f"{name}.{key}"


def test_a_state_without_view_weights_reads_the_plain_like_rate(trained, tmp_path):
    """An artifact written before the views had weights (two post counters, no weight table) loads with
    every view weighing one unit: its models get the plain like rate they were trained on."""
    snap = Snapshot.load(trained["version_dir"] / STATE_FILE)
    assert snap.post_base.shape[1] == 3 and len(snap.priors.view_weight) == len(snap.user_ids)
    with np.load(trained["version_dir"] / STATE_FILE) as z:
        arrays = {k: z[k] for k in z.files if not k.startswith("priors.view_weight")}
    arrays["post_base"] = arrays["post_base"][:, :2]
    with open(tmp_path / "old.npz", "wb") as fh:
        np.savez(fh, **arrays)
    old = Snapshot.load(tmp_path / "old.npz")
    np.testing.assert_array_equal(old.post_base[:, 2], old.post_base[:, 0] * WEIGHT_UNIT)
    users = np.arange(len(old.user_ids))
    assert (old.priors.view_weights(users, np.zeros(len(users), np.int64)) == WEIGHT_UNIT).all()
    counters = finalize_posts(old.post_base, old.priors)
    g = old.priors.global_rate
    plain = (old.post_base[:, 1] + PRIOR_VIEWS_POST * g) / (old.post_base[:, 0] + PRIOR_VIEWS_POST)
    np.testing.assert_allclose(counters[:, 2], plain, rtol=1e-6)


def test_engine_loads_current(models_copy):
    model_dir, version_dir = models_copy
    engine = Recommender.load(model_dir)
    assert engine.version == version_dir.name


def test_refuses_missing_pointer(tmp_path):
    with pytest.raises(ArtifactsInvalid, match="run `make train`"):
        Recommender.load(tmp_path)


def test_refuses_corrupt_file(models_copy):
    model_dir, version_dir = models_copy
    with open(version_dir / "control.cbm", "r+b") as fh:
        fh.seek(100)
        fh.write(b"\x00\x01\x02")
    with pytest.raises(ArtifactsInvalid, match="corrupt"):
        Recommender.load(model_dir)


def test_refuses_missing_file(models_copy):
    model_dir, version_dir = models_copy
    (version_dir / STATE_FILE).unlink()
    with pytest.raises(ArtifactsInvalid, match="missing"):
        Recommender.load(model_dir)


def test_refuses_other_schema_or_features(models_copy):
    model_dir, version_dir = models_copy
    path = version_dir / MANIFEST
    m = json.loads(path.read_text())
    path.write_text(json.dumps({**m, "schema": 99}))
    with pytest.raises(ArtifactsInvalid, match="schema"):
        load_manifest(version_dir)
    m["models"]["test"]["features"] = m["models"]["test"]["features"][:-1]
    path.write_text(json.dumps(m))
    with pytest.raises(ArtifactsInvalid, match="other features"):
        load_manifest(version_dir)


def test_pointer_to_unknown_version(models_copy):
    model_dir, _ = models_copy
    (model_dir / CURRENT).write_text("v-missing\n")
    with pytest.raises(ArtifactsInvalid, match="incomplete"):
        Recommender.load(model_dir)
