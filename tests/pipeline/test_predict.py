"""`matshift predict` end to end on a tiny model trained by the train stage."""

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from pipeline import train as train_stage
from pipeline.cli import main
from tests.data import train_inputs, train_params

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    root = tmp_path_factory.mktemp("predict")
    train_inputs(root)
    assert train_stage.run(argparse.Namespace(params=train_params(root), property="band_gap", no_mlflow=True)) == 0
    (root / "data").mkdir()
    (root / "raw").rename(root / "data" / "raw")
    (root / "models").rename(root / "data" / "models")
    (root / "params.yaml").unlink()  # predict falls back to the train stage's default directories (data/...)
    return root


def test_valid_and_invalid_inputs_in_one_call(workdir, monkeypatch, capsys):
    monkeypatch.chdir(workdir)
    out = workdir / "pred.json"
    code = main(["predict", "NaCl", "GaN", "Xx2", "", "--output", str(out)])
    assert code == 1  # some input failed
    rows = json.loads(out.read_text())
    assert [r["input"] for r in rows] == ["NaCl", "GaN", "Xx2", ""]
    good, bad = rows[:2], rows[2:]
    for r in good:
        assert r["error"] is None
        assert np.isfinite(r["prediction"]) and r["prediction"] >= 0
        assert r["bag_spread"] >= 0
        assert 0 <= r["lower"] <= r["prediction"] <= r["upper"] and r["upper"] > r["lower"] and r["coverage"] == 0.9
        assert 0 <= r["ad_score"] <= 100
        assert r["structure_used"].startswith("mp-")
        assert r["view"] == "composition+DFT"
    assert bad[0]["prediction"] is None and "unknown element 'Xx'" in bad[0]["error"]
    assert bad[1]["prediction"] is None and "empty formula" in bad[1]["error"]
    err = capsys.readouterr().err
    assert "matshift predict: formula 'Xx2': unknown element 'Xx'" in err
    assert "matshift predict: formula '': empty formula" in err
    assert "Traceback" not in err


def test_table_output_and_success_code(workdir, monkeypatch, capsys):
    monkeypatch.chdir(workdir)
    assert main(["predict", "NaCl"]) == 0
    out = capsys.readouterr().out
    assert "NaCl" in out and "eV" in out and "mp-0" in out


def test_missing_model_and_empty_input(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert main(["predict", "NaCl"]) == 1
    assert "no model at data/models/band_gap" in capsys.readouterr().err
    assert main(["predict"]) == 1
    assert "no input" in capsys.readouterr().err


def test_input_csv_errors(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "in.csv").write_text("name\nNaCl\n")
    assert main(["predict", "--input", "in.csv"]) == 1
    assert "needs a 'formula' or 'cif' column" in capsys.readouterr().err


def test_quiet_predict_prints_no_third_party_warning(workdir):
    """``-q``: noble gases have no Pauling electronegativity; pymatgen's warning about it is filtered where raised.

    ``--no-metal``: the tiny pipeline has no metal classifier, and predict would say so.
    """
    proc = subprocess.run([sys.executable, "-m", "pipeline.cli", "-q", "predict", "--no-metal", "NaCl", "Ar", "XeF2"],
                          cwd=workdir, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert "NaCl" in proc.stdout and "Ar" in proc.stdout
    # the tiny model's descriptors are synthetic: the noble-gas formulas are refused, by name, and nothing else is said
    assert proc.returncode == 1
    lines = proc.stderr.splitlines()
    assert lines and all(line.startswith("matshift predict: formula ") for line in lines), proc.stderr
    assert "Pauling" not in proc.stderr


def test_input_csv_dft_value_column(workdir, monkeypatch, capsys):
    """The user's own DFT value replaces the mirror's, says so, and a bad one is refused by row, not guessed."""
    monkeypatch.chdir(workdir)
    (workdir / "dft.csv").write_text("formula,dft_value\nNaCl,\nNaCl,0.5\nNaCl,6.0\nGaN,abc\nGaN,inf\n")
    out = workdir / "dft.json"
    assert main(["predict", "--no-metal", "--input", "dft.csv", "--output", str(out)]) == 1
    rows = json.loads(out.read_text())
    mirror, low, high, bad, infinite = rows
    assert mirror["structure_used"].startswith("mp-") and mirror["dft_value"] not in (0.5, 6.0)
    assert low["dft_value"] == 0.5 and high["dft_value"] == 6.0
    assert low["structure_used"] == high["structure_used"] == "user DFT value"
    assert low["prediction"] != high["prediction"]  # the value reaches the model
    assert bad["prediction"] is None and "dft_value 'abc' is not a number" in bad["error"]
    assert infinite["prediction"] is None and "not a finite number" in infinite["error"]
    assert "Traceback" not in capsys.readouterr().err
