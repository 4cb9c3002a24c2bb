"""End-to-end run of `matshift train` on tiny inputs written by the contracts in docs/ARCHITECTURE.md."""

import argparse
import json

import numpy as np
import pandas as pd
import pytest

from pipeline import train as stage
from pipeline.config import ConfigError
from pipeline.errors import MissingInputError
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
    pred = model.predict(pd.DataFrame({"formula": ["NaCl", "GaN"], "dft_value": [5.0, np.nan]}))
    assert list(pred.columns) == ["prediction", "bag_spread", "lower", "upper"] and len(pred) == 2
    assert (pred["lower"] <= pred["prediction"]).all() and (pred["prediction"] <= pred["upper"]).all()
    assert (pred["prediction"] >= 0).all()
    # the served value is the fixed blend of the stacked model and the GNN ensemble
    from models.serving import EnsemblePredictor

    served = EnsemblePredictor(out)
    # the served stacked model carries the OT shift field (align stage's calibrated targets, leave-own-formula-out)
    assert served.stacked.shift_field is not None and (out / "stacked/shift_field/points.npy").is_file()
    frame = pd.DataFrame({"formula": ["NaCl", "GaN"], "dft_value": [5.0, np.nan]})
    both = served.predict(frame)["prediction"].to_numpy()
    assert both == pytest.approx(pred["prediction"].to_numpy())
    stacked = served.stacked.predict(served.descriptors, ["NaCl", "GaN"], dft_value=np.array([5.0, np.nan]))
    served.blend_weight = 0.0
    gnn = served.predict(frame)["prediction"].to_numpy()
    assert both == pytest.approx(0.5 * stacked + 0.5 * gnn)
    run = client.search_runs(client.get_experiment_by_name("matshift").experiment_id)[0]
    assert run.data.params["optim.epochs"] == "2"
    assert "gnn_ot.m0.val_mae" in run.data.metrics


def test_train_stage_rejects_bad_params_and_missing_inputs(tmp_path):
    train_inputs(tmp_path)
    with pytest.raises(ConfigError, match="members must be >= 1"):
        stage.run(argparse.Namespace(params=train_params(tmp_path, members=0), property="band_gap", no_mlflow=True))
    (tmp_path / "aligned/band_gap/dft.parquet").unlink()
    with pytest.raises(MissingInputError, match=r"aligned/band_gap/dft\.parquet"):
        stage.run(argparse.Namespace(params=train_params(tmp_path), property="band_gap", no_mlflow=True))


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
