"""End-to-end run of `matshift train` on tiny inputs written by the contracts in docs/ARCHITECTURE.md."""

import argparse
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from models.serving import COLUMNS
from pipeline import train as stage
from pipeline.config import ConfigError
from pipeline.errors import MissingInputError
from pipeline.predict import predict
from tests.data import train_inputs, train_params


def test_train_stage_writes_models_and_registers(tmp_path, monkeypatch):
    import mlflow

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    train_inputs(tmp_path)
    args = argparse.Namespace(params=train_params(tmp_path), property="band_gap", no_mlflow=False)
    assert stage.run(args) == 0
    out = tmp_path / "models/band_gap"
    meta = json.loads((out / "ensemble.json").read_text())
    assert meta["members"] == ["member_0", "member_1"]
    metrics = json.loads((out / "metrics.json").read_text())
    assert set(metrics) >= {"mae_raw_dft", "mae_linear_dft", "mae_rf_descriptors", "mae_gnn_no_ot", "mae_gnn_ot",
                            "mae_stacked", "mae_stacked_ot", "mae_served"}
    assert meta["stacked"] == {"dir": "stacked", "blend_weight": 0.5}
    # the linear calibration recovers the planted relation exactly (noise-free data)
    lin = json.loads((out / "baselines.json").read_text())["linear_dft"]
    assert lin["a"] == pytest.approx(1.2) and lin["b"] == pytest.approx(0.4)
    client = mlflow.MlflowClient(f"sqlite:///{tmp_path}/mlflow.db")
    versions = client.search_model_versions("name='matshift-band_gap'")
    assert [int(v.version) for v in versions] == [1]
    model = mlflow.pyfunc.load_model("models:/matshift-band_gap/1")
    # its pip requirements are what predicting imports, pinned; not matshift itself, which no index serves
    needs = Path(mlflow.pyfunc.get_model_dependencies("models:/matshift-band_gap/1")).read_text().split()
    names = {r.split("==")[0] for r in needs}
    assert {"lightgbm", "pymatgen", "matminer", "crepes", "numpy", "pandas", "mlflow"} <= names
    assert "matshift" not in names and "dvc" not in names and all("==" in r and "+" not in r for r in needs)
    # the registered model is the whole predictor: formulas in, `matshift predict`'s table out
    answer = model.predict(pd.DataFrame({"formula": ["NaCl", "GaN", "Xx2"]}))
    assert list(answer.columns) == COLUMNS and len(answer) == 3
    assert "Xx" in answer.loc[2, "error"] and pd.isna(answer.loc[2, "prediction"])
    pred = answer.iloc[:2]
    assert (pred["lower"] <= pred["prediction"]).all() and (pred["prediction"] <= pred["upper"]).all()
    assert (pred["prediction"] >= 0).all()
    # ... with the DFT value `matshift predict` looks up (the stored table's polymorph), to the last bit
    cli = predict(["NaCl", "GaN", "Xx2"], property="band_gap", params=args.params)
    assert np.array_equal(cli["prediction"].to_numpy(float), answer["prediction"].to_numpy(float), equal_nan=True)
    assert np.array_equal(cli["dft_value"].to_numpy(float), answer["dft_value"].to_numpy(float), equal_nan=True)
    record = json.loads((out / "mlflow_run.json").read_text())
    assert record["registered_model"] == "matshift-band_gap" and record["version"] == "1"
    # the served value is the fixed blend of the stacked model and the GNN ensemble
    from models.serving import EnsemblePredictor

    served = EnsemblePredictor(out)
    # the served stacked model carries the OT shift field (align stage's calibrated targets, leave-own-formula-out)
    assert served.stacked.shift_field is not None and (out / "stacked/shift_field/points.npy").is_file()
    frame = pd.DataFrame({"formula": ["NaCl", "GaN"], "dft_value": pred["dft_value"].to_numpy(float)})
    both = served.predict(frame)["prediction"].to_numpy()
    assert both == pytest.approx(pred["prediction"].to_numpy(float))
    stacked = served.stacked.predict(served.descriptors, ["NaCl", "GaN"], dft_value=frame["dft_value"].to_numpy())
    served.blend_weight = 0.0
    gnn = served.predict(frame)["prediction"].to_numpy()
    assert both == pytest.approx(0.5 * stacked + 0.5 * gnn)
    run = client.search_runs(client.get_experiment_by_name("matshift").experiment_id)[0]
    assert run.data.params["optim.epochs"] == "2"
    assert "gnn_ot.m0.val_mae" in run.data.metrics
    assert run.info.run_id == record["run_id"]


def test_train_stage_rejects_bad_params_and_missing_inputs(tmp_path):
    train_inputs(tmp_path)
    with pytest.raises(ConfigError, match="members must be >= 1"):
        stage.run(argparse.Namespace(params=train_params(tmp_path, members=0), property="band_gap", no_mlflow=True))
    (tmp_path / "aligned/band_gap/dft.parquet").unlink()
    with pytest.raises(MissingInputError, match=r"aligned/band_gap/dft\.parquet"):
        stage.run(argparse.Namespace(params=train_params(tmp_path), property="band_gap", no_mlflow=True))


@pytest.mark.parametrize(("setting", "message"), [
    ("correction_terms: {band_gap: [avg_ionic_char]}",
     r"train\.stack\.correction_terms\.band_gap: no feature column 'avg_ionic_char'.*add band_gap to train\.stack\.bonding"),
    ("correction_classes: {band_gap: [gases]}",
     r"train\.stack: stack\.correction_classes\.band_gap: no element class 'gases' \(known: diatomic_gas"),
])
def test_train_stage_refuses_correction_settings_it_cannot_build_before_fitting(tmp_path, setting, message):
    """A correction term naming no feature column, or an unknown element class, fails at the start naming the key."""
    train_inputs(tmp_path)
    path = train_params(tmp_path)
    path.write_text(path.read_text().replace("blend_weight: 0.5}", f"blend_weight: 0.5, {setting}}}"))
    with pytest.raises(ConfigError, match=message):
        stage.run(argparse.Namespace(params=path, property="band_gap", no_mlflow=True))
    assert not (tmp_path / "models").exists()


class _Stop(Exception):
    pass


def test_distributed_training_fits_the_model_of_the_plain_run(tmp_path, monkeypatch):
    """`train --distributed` (a world of one without torchrun) hands fit_property the plain run's settings.

    The old pipeline/train_ddp.py dropped the stacked-model settings, so a distributed run
    served another model; one code path now serves the same one, with the data-parallel hook.
    """
    from dataclasses import replace

    import models.learners.fit as fit_module

    train_inputs(tmp_path)
    params = train_params(tmp_path)
    seen = []

    def spy(**kwargs):
        seen.append(kwargs)
        raise _Stop

    monkeypatch.setattr(fit_module, "fit_property", spy)
    for distributed in (False, True):
        with pytest.raises(_Stop):
            stage.run(argparse.Namespace(params=params, property="band_gap", no_mlflow=True, distributed=distributed,
                                         backend=None))
    plain, ddp = seen
    assert plain["parallel"] is None and ddp["parallel"] is not None and ddp["parallel"].world == 1
    assert replace(ddp["config"], device=plain["config"].device) == plain["config"]
    assert ddp["config"].stack.blend_weight == 0.5 and ddp["config"].stack.config.trees == 20


def test_members_trained_in_worker_processes_are_the_serial_members(tmp_path):
    """train.workers: 2 trains the encoders and members in forked processes; each is seeded as in the loop."""
    import torch

    from models.serving import EnsemblePredictor

    predictions = []
    for workers in (1, 2):
        root = tmp_path / f"w{workers}"
        root.mkdir()
        train_inputs(root)
        params = train_params(root, workers=workers, members=3, encoders=2)
        threads = torch.get_num_threads()
        torch.set_num_threads(1)  # the workers run one thread each: the serial run too, for bitwise-equal sums
        try:
            assert stage.run(argparse.Namespace(params=params, property="band_gap", no_mlflow=True)) == 0
        finally:
            torch.set_num_threads(threads)
        served = EnsemblePredictor(root / "models/band_gap")
        served.blend_weight = 0.0  # the GNN ensemble alone
        frame = pd.DataFrame({"formula": ["NaCl", "GaN", "MgO"], "dft_value": [5.0, 1.7, 4.5]})
        metrics = json.loads((root / "models/band_gap/metrics.json").read_text())
        predictions.append([*served.predict(frame)["prediction"], metrics["mae_gnn_ot"], metrics["mae_gnn_no_ot"]])
    np.testing.assert_array_equal(predictions[1], predictions[0])


def test_train_stage_fits_the_dft_surrogate_on_a_dask_cluster(tmp_path):
    """train.engine: dask starts a LocalCluster of train.workers processes for the surrogate's LightGBM fits."""
    pytest.importorskip("distributed")
    from models.learners import load_stacked

    train_inputs(tmp_path)
    params = train_params(tmp_path, engine="dask", workers=2)
    assert stage.run(argparse.Namespace(params=params, property="band_gap", no_mlflow=True)) == 0
    stacked = load_stacked(tmp_path / "models/band_gap/stacked")
    assert np.isfinite(stacked.surrogate.mae_) and len(stacked.surrogate.out_of_fold_) > 0


@pytest.mark.parametrize(("extra", "match"), [
    ({"engine": "spark"}, r"train.*engine"),
    ({"scheduler_address": "tcp://10.0.0.1:8786"}, r"scheduler_address is only used by engine 'dask'"),
    ({"workers": 0}, r"workers must be >= 1"),
])
def test_train_stage_names_bad_engine_settings(tmp_path, extra, match):
    train_inputs(tmp_path)
    with pytest.raises(ConfigError, match=match):
        stage.run(argparse.Namespace(params=train_params(tmp_path, **extra), property="band_gap", no_mlflow=True))
