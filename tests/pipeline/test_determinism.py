"""Two runs of the quick pipeline (align + a small train, fixed seeds) give the same numbers to 1e-6.

Run 1 is the shared tiny pipeline (:mod:`tests.tiny_pipeline`, in this process, with MLflow
logging; its train stage takes the surrogate stage's DFT surrogate and the pretrain stage's
encoders). Run 2 rebuilds the same inputs in a fresh directory and runs align and train in a
separate Python process with a different hash seed, without MLflow and without the surrogate
and pretrain stages (train fits the surrogate and pretrains the encoders itself). The alignment diagnostics, the calibrated targets, every metric and every selection
prediction must agree.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest

from tests.data import ROOT
from tests.tiny_pipeline import tiny_run

TOL = 1e-6

_SECOND_RUN = """
import sys
from pathlib import Path
from pipeline.cli import main
from tests.tiny_pipeline import make_inputs

params = make_inputs(Path(sys.argv[1]))
assert main(["align", "--params", str(params), "--property", "band_gap"]) == 0
assert main(["train", "--params", str(params), "--property", "band_gap", "--no-mlflow"]) == 0
"""


def _numbers(obj, prefix=""):
    """Flatten the numeric leaves of a JSON document (timings and paths excluded)."""
    out = {}
    if isinstance(obj, dict):
        for k, v in obj.items():
            if k.startswith("seconds") or k == "params":
                continue
            out.update(_numbers(v, f"{prefix}{k}."))
    elif isinstance(obj, (int, float)):  # bool too (converged)
        out[prefix[:-1]] = float(obj)
    return out


def _assert_same(a: dict[str, float], b: dict[str, float]) -> None:
    assert sorted(a) == sorted(b)
    diff = {k: (a[k], b[k]) for k in a if not abs(a[k] - b[k]) <= TOL}
    assert diff == {}


@pytest.fixture(scope="module")
def two_runs(tmp_path_factory):
    first = tiny_run()
    assert first.codes["align"] == 0 and first.codes["train"] == 0, first.output[-3000:]
    assert "train band_gap: DFT surrogate from the surrogate stage" in first.output
    assert "train band_gap: 1 DFT-pretrained encoder(s) from the pretrain stage" in first.output
    second = tmp_path_factory.mktemp("second")
    env = {**os.environ, "PYTHONPATH": str(ROOT), "PYTHONHASHSEED": "12345"}
    env.pop("MLFLOW_TRACKING_URI", None)
    proc = subprocess.run([sys.executable, "-c", _SECOND_RUN, str(second)], cwd=second, env=env,
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return first.root, second


def test_alignment_is_identical(two_runs):
    a, b = (r / "aligned" / "band_gap" for r in two_runs)
    da, db = (_numbers(json.loads((d / "align.json").read_text())) for d in (a, b))
    assert da["n_source"] > 50 and da["n_target"] > 50
    _assert_same(da, db)
    fa, fb = (pd.read_parquet(d / "dft.parquet") for d in (a, b))
    assert fa["material_id"].tolist() == fb["material_id"].tolist()
    cols = ["transported_mass", "calibrated_target", "confidence"]
    np.testing.assert_allclose(fa[cols].to_numpy(), fb[cols].to_numpy(), rtol=0, atol=TOL)


def test_metrics_and_predictions_are_identical(two_runs):
    a, b = (r / "models" / "band_gap" for r in two_runs)
    ma, mb = (json.loads((d / "metrics.json").read_text()) for d in (a, b))
    assert {"mae_gnn_ot", "mae_gnn_no_ot", "mae_rf_descriptors", "mae_linear_dft"} <= set(ma)
    _assert_same(ma, mb)
    sa, sb = (pd.read_csv(d / "selection_predictions.csv") for d in (a, b))
    assert sa["formula"].tolist() == sb["formula"].tolist() and len(sa) >= 10
    num = sa.select_dtypes("number").columns
    np.testing.assert_allclose(sa[num].to_numpy(), sb[num].to_numpy(), rtol=0, atol=TOL, equal_nan=True)
    ha, hb = (pd.read_csv(d / "history.csv") for d in (a, b))
    np.testing.assert_allclose(ha[["loss", "val_mae"]].to_numpy(), hb[["loss", "val_mae"]].to_numpy(), atol=TOL)


def test_comparison_detects_a_small_difference():
    """Guard against a vacuous check: a 1e-5 change in one metric is caught."""
    with pytest.raises(AssertionError):
        _assert_same({"mae": 0.5, "n": 3.0}, {"mae": 0.5 + 1e-5, "n": 3.0})
    _assert_same({"mae": 0.5}, {"mae": 0.5 + 1e-9})
