"""Model files load without executing code from them, and a file changed after training is refused.

The model directory written by the tiny pipeline (:mod:`tests.tiny_pipeline`) is copied and
then tampered with in the ways an attacker or a bad copy would: a flipped byte, a weight
file replaced together with its recorded hash, a pickle that runs code when unpickled, a
skops file holding a type outside the allow-list. Each is refused with an error naming the
file, and the code in the planted pickles never runs (its marker file is never created).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from models import MANIFEST, IntegrityError, sha256_file, verify_manifest, write_manifest
from models.learners import load_forest
from models.nets import ModelFileError, load_model
from models.serving import EnsemblePredictor
from models.tracking import RUN_RECORD
from tests.data import ROOT
from tests.tiny_pipeline import tiny_run

MARKER = Path("/tmp") / "matshift-pickle-ran"  # created only if a planted pickle executes


class Exploit:
    """Unpickling this runs ``open(MARKER, 'w')``: what a malicious model file would do."""

    def __reduce__(self):
        return (open, (str(MARKER), "w"))


@pytest.fixture(scope="module")
def trained():
    run = tiny_run()
    assert run.codes["train"] == 0, run.output[-3000:]
    return run


@pytest.fixture
def model_dir(trained, tmp_path):
    MARKER.unlink(missing_ok=True)
    dst = tmp_path / "band_gap"
    shutil.copytree(trained.root / "models" / "band_gap", dst)
    return dst


def _flip_byte(path: Path, at: int = -20) -> None:
    data = bytearray(path.read_bytes())
    data[at] ^= 0xFF
    path.write_bytes(bytes(data))


def test_written_model_is_pickle_free_and_fully_listed(model_dir):
    names = sorted(p.relative_to(model_dir).as_posix() for p in model_dir.rglob("*") if p.is_file())
    assert not [n for n in names if n.endswith((".joblib", ".pkl", ".pickle"))]
    assert {"rf_descriptors.skops", "rf_descriptors.json", "member_0/weights.pt", MANIFEST} <= set(names)
    digests = verify_manifest(model_dir)
    # every file is covered, but the MLflow run record written after the model (no loader reads it)
    assert sorted(digests) == [n for n in names if n not in (MANIFEST, RUN_RECORD)]
    assert all(digests[n] == sha256_file(model_dir / n) for n in digests)


def test_forest_round_trips_without_pickle(model_dir):
    forest = load_forest(model_dir)
    desc = pd.read_parquet(model_dir / "descriptors.parquet")
    sel = pd.read_csv(model_dir / "selection_predictions.csv")
    np.testing.assert_allclose(forest.predict(desc, sel["formula"].tolist()), sel["rf_descriptors"], rtol=1e-12)


@pytest.mark.parametrize("name", ["member_0/weights.pt", "member_1/model.json", "rf_descriptors.skops",
                                  "rf_descriptors.json", "descriptors.parquet", "ensemble.json"])
def test_any_changed_file_is_refused_by_every_loader(model_dir, name):
    _flip_byte(model_dir / name, at=len((model_dir / name).read_bytes()) // 2)
    with pytest.raises(IntegrityError, match=rf"model file .*{name} does not match the sha256"):
        EnsemblePredictor(model_dir)
    with pytest.raises(IntegrityError, match=rf"{name} does not match"):
        load_forest(model_dir)


def test_missing_file_or_manifest_is_refused(model_dir):
    (model_dir / "member_1" / "weights.pt").unlink()
    with pytest.raises(IntegrityError, match=r"member_1/weights\.pt listed in files\.sha256\.json is missing"):
        EnsemblePredictor(model_dir)
    (model_dir / MANIFEST).unlink()
    with pytest.raises(IntegrityError, match=r"has no files\.sha256\.json.*retrain"):
        EnsemblePredictor(model_dir)


def test_manifest_entry_outside_the_directory_is_refused(model_dir):
    meta = json.loads((model_dir / MANIFEST).read_text())
    meta["sha256"]["../outside"] = "0" * 64
    (model_dir / MANIFEST).write_text(json.dumps(meta))
    with pytest.raises(IntegrityError, match="outside the model directory"):
        verify_manifest(model_dir)


def test_gnn_weights_with_a_planted_pickle_never_run(model_dir):
    """Replace the weights by a code-running pickle and fix both recorded hashes (a thorough attacker)."""
    member = model_dir / "member_0"
    torch.save({"state": Exploit()}, member / "weights.pt")
    meta = json.loads((member / "model.json").read_text())
    meta["files"]["weights.pt"] = sha256_file(member / "weights.pt")
    (member / "model.json").write_text(json.dumps(meta))
    write_manifest(model_dir)
    with pytest.raises(ModelFileError, match=r"weights\.pt are not a plain tensor file"):
        load_model(member)
    # the served stacked model needs no GNN member, so members load (and are refused) on first use
    with pytest.raises(ModelFileError):
        EnsemblePredictor(model_dir).models  # noqa: B018
    assert not MARKER.exists()


def test_gnn_weights_tampered_without_rehash_are_refused_before_reading(model_dir):
    member = model_dir / "member_0"
    torch.save({"state": Exploit()}, member / "weights.pt")
    with pytest.raises(ModelFileError, match=r"weights\.pt does not match the sha256 recorded in .*model\.json"):
        load_model(member)
    assert not MARKER.exists()


def _rehash_forest(model_dir):
    """A thorough attacker also rewrites the hash the forest's own header records."""
    header = json.loads((model_dir / "rf_descriptors.json").read_text())
    header["files"]["rf_descriptors.skops"] = sha256_file(model_dir / "rf_descriptors.skops")
    (model_dir / "rf_descriptors.json").write_text(json.dumps(header))


def test_forest_file_with_a_foreign_type_is_refused(model_dir):
    """A skops file holding a type outside the allow-list is refused even with matching hashes."""
    import skops.io as sio
    from sklearn.ensemble import RandomForestRegressor

    class Sneaky(RandomForestRegressor):
        pass

    sio.dump(Sneaky(n_estimators=1).fit([[0.0], [1.0]], [0.0, 1.0]), model_dir / "rf_descriptors.skops")
    _rehash_forest(model_dir)
    write_manifest(model_dir)
    with pytest.raises(IntegrityError, match=r"cannot load .*rf_descriptors\.skops: UntrustedTypesFoundException"):
        load_forest(model_dir)
    # a pickle renamed to the skops name is not a skops archive either
    import pickle

    (model_dir / "rf_descriptors.skops").write_bytes(pickle.dumps(Exploit()))
    _rehash_forest(model_dir)
    write_manifest(model_dir)
    with pytest.raises(IntegrityError, match="cannot load"):
        load_forest(model_dir)
    assert not MARKER.exists()


def test_mlflow_model_is_code_not_pickle_and_checks_hashes(trained, tmp_path, monkeypatch):
    import mlflow

    monkeypatch.chdir(trained.root)  # artifacts live under ./mlruns of the run
    mlflow.set_tracking_uri(f"sqlite:///{trained.root / 'mlflow.db'}")
    local = Path(mlflow.artifacts.download_artifacts("models:/matshift-band_gap/1", dst_path=str(tmp_path / "m")))
    files = [p.relative_to(local).as_posix() for p in local.rglob("*") if p.is_file()]
    assert not [f for f in files if f.endswith((".pkl", ".pickle", ".joblib"))], files
    mlmodel = (local / "MLmodel").read_text()
    assert "python_model.pkl" not in mlmodel and "pyfunc_code.py" in mlmodel
    model = mlflow.pyfunc.load_model(str(local))
    # the packaged predictor answers as `matshift predict` on the pipeline's directories
    from pipeline.predict import predict

    expected = predict(["NaCl", "GaN"], property="band_gap", params=trained.params)
    pd.testing.assert_frame_equal(model.predict(pd.DataFrame({"formula": ["NaCl", "GaN"]})), expected)
    (artifact,) = [p for p in local.rglob("weights.pt") if p.parent.name == "member_0"]
    _flip_byte(artifact)
    with pytest.raises(Exception, match="does not match the sha256") as exc:
        mlflow.pyfunc.load_model(str(local))
    assert isinstance(exc.value, IntegrityError) or "IntegrityError" in repr(exc.value) or "sha256" in str(exc.value)


def test_stacked_only_model_serves_without_torch(model_dir):
    """The default served model (stacked, blend weight 1) predicts without importing torch or PyG."""
    import os
    import subprocess
    import sys

    assert json.loads((model_dir / "ensemble.json").read_text())["stacked"]["blend_weight"] == 1.0
    code = (
        "import sys, pandas as pd\n"
        "from models.serving import EnsemblePredictor\n"
        f"e = EnsemblePredictor({str(model_dir)!r})\n"
        "out = e.predict(pd.DataFrame({'formula': ['NaCl', 'GaAs'], 'dft_value': [5.0, float('nan')]}))\n"
        "assert out['prediction'].notna().all() and (out['bag_spread'] >= 0).all()\n"
        "print(sorted(m for m in ('torch', 'torch_geometric') if m in sys.modules))\n"
    )
    res = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120,
                         env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert res.returncode == 0, res.stderr[-2000:]
    assert res.stdout.strip().splitlines()[-1] == "[]"
