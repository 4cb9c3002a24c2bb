"""A canary MP_API_KEY set while the stages run never reaches an output, a log, MLflow or dvc.lock.

The tiny pipeline (:mod:`tests.tiny_pipeline`) runs fetch (the Materials Project source, which
does receive the key), featurize, align and train with MLflow logging, all with
``MP_API_KEY=canary-...`` in the environment. The test then reads every byte the run wrote
(outputs, the SQLite tracking store, MLflow artifacts) and every line it logged or printed.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from tests.data import ROOT
from tests.tiny_pipeline import CANARY, tiny_run


@pytest.fixture(scope="module")
def run():
    return tiny_run()


def test_every_stage_ran_with_the_canary_set(run):
    assert run.codes == {"fetch": 0, "featurize": 0, "align": 0, "surrogate": 0, "pretrain": 0, "train": 0}, run.output[-3000:]
    # the key really was used: fetch read the (fake) Materials Project API with it
    import pandas as pd

    dft = pd.read_parquet(run.root / "raw_mp" / "dft.parquet")
    assert sorted(dft["material_id"]) == ["mp-149", "mp-22862"]
    assert "MLflow run" in run.output  # and the log capture is live


def test_no_written_byte_contains_the_canary(run):
    files = [p for p in run.root.rglob("*") if p.is_file()]
    names = {p.relative_to(run.root).parts[0] for p in files}
    assert {"raw_mp", "features_mp", "aligned", "surrogates", "models", "mlflow.db", "mlruns"} <= names
    assert len(files) > 40
    assert _leaks(run.root) == []


def _leaks(root: Path) -> list[str]:
    return [str(p) for p in sorted(root.rglob("*")) if p.is_file() and CANARY.encode() in p.read_bytes()]


def test_no_log_line_contains_the_canary(run):
    assert run.output.count("\n") > 10
    assert CANARY not in run.output


def test_mlflow_params_tags_and_metrics_hold_no_canary(run):
    import mlflow

    client = mlflow.MlflowClient(f"sqlite:///{run.root / 'mlflow.db'}")
    (experiment,) = [e for e in client.search_experiments() if e.name == "matshift"]
    (mlrun,) = client.search_runs(experiment.experiment_id)
    data = mlrun.data
    assert len(data.params) > 20 and data.params["property"] == "band_gap"
    for mapping in (data.params, data.tags):
        for key, value in mapping.items():
            assert CANARY not in key and CANARY not in str(value), key
    assert not any("MP_API_KEY" in k or "api_key" in k.lower() for k in data.params)
    for version in client.search_model_versions("name='matshift-band_gap'"):
        assert CANARY not in str(version.tags) and CANARY not in (version.description or "")


def test_fetch_passes_the_key_only_to_the_source_that_needs_it(tmp_path, monkeypatch):
    """With the mirror alone, the environment is not read at all (no source gets the key)."""
    import yaml

    from pipeline import fetch as fetch_stage

    seen = {}

    def spy(config, *, root, force, accept_changed, env):
        seen["env"] = env

    monkeypatch.setenv("MP_API_KEY", CANARY)
    monkeypatch.setattr(fetch_stage, "fetch", spy)
    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump({"fetch": {"sources": ["mirror"], "out_dir": str(tmp_path / "raw")}}))
    args = argparse.Namespace(params=params, force=False, accept_changed=False)
    assert fetch_stage.run(args) == 0 and seen["env"] == {}
    params.write_text(yaml.safe_dump({"fetch": {"sources": ["mirror", "mp_api"], "out_dir": str(tmp_path / "raw")}}))
    assert fetch_stage.run(args) == 0 and seen["env"] == {"MP_API_KEY": CANARY}


def test_dvc_lock_and_params_hold_no_key():
    """dvc.lock records params and file hashes only; the key is in neither (checked when present)."""
    for name in ("dvc.lock", "params.yaml", "dvc.yaml"):
        path = ROOT / name
        if path.exists():
            text = path.read_text()
            assert CANARY not in text and "MP_API_KEY:" not in text, name


def test_the_scan_would_see_a_leak(run, tmp_path):
    """Guard against a vacuous scan: the same scan flags a copy of the outputs with the key planted in one file."""
    import shutil

    copy = tmp_path / "models"
    shutil.copytree(run.root / "models", copy)
    assert _leaks(copy) == []
    target = copy / "band_gap" / "metrics.json"
    target.write_text(target.read_text().replace("{", '{"note": "' + CANARY + '", ', 1))
    assert _leaks(copy) == [str(target)]
