"""`matshift predict` end to end on a tiny model trained by the train stage."""

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
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
    # a bad --coverage is answered before any model loads: its own message, not the missing model's
    assert main(["predict", "NaCl", "--coverage", "90"]) == 1
    err = capsys.readouterr().err
    assert "--coverage 90.0: give a fraction between 0 and 1" in err and "no model" not in err


def test_input_csv_errors(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "in.csv").write_text("name\nNaCl\n")
    assert main(["predict", "--input", "in.csv"]) == 1
    assert "needs a 'formula' or 'cif' column" in capsys.readouterr().err
    # pandas' empty-file and parser errors are ValueErrors: each keeps its own message, which names the file
    (tmp_path / "empty.csv").write_text("")
    (tmp_path / "binary.csv").write_bytes(b"formula\n\xff\xfe\xfa\n")
    (tmp_path / "folder.csv").mkdir()
    for name, says in [("empty.csv", "is not a readable CSV"), ("binary.csv", "is not a readable CSV"),
                       ("folder.csv", "cannot be read")]:
        assert main(["predict", "--input", name]) == 1
        err = capsys.readouterr().err
        assert f"input file {name} {says}" in err and "PosixPath" not in err, err


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
    (workdir / "dft.csv").write_text("formula,dft_value\nNaCl,\nNaCl,0.5\nNaCl,6.0\nGaN,abc\nGaN,inf\nGaN,-0.2\nGaN,0\n"
                                     "GaN,8500\nGaN,30\n")
    out = workdir / "dft.json"
    assert main(["predict", "--no-metal", "--input", "dft.csv", "--output", str(out)]) == 1
    rows = json.loads(out.read_text())
    mirror, low, high, bad, infinite, negative, zero, mev, beyond = rows
    assert mirror["structure_used"].startswith("mp-") and mirror["dft_value"] not in (0.5, 6.0)
    assert low["dft_value"] == 0.5 and high["dft_value"] == 6.0
    # inside the DFT values the tiny model was trained on (0.22 to 5.62 eV) the note says the source alone
    assert low["structure_used"] == "user DFT value" and high["structure_used"].startswith("user DFT value")
    assert low["prediction"] != high["prediction"]  # the value reaches the model
    assert bad["prediction"] is None and "dft_value 'abc' is not a number" in bad["error"]
    assert infinite["prediction"] is None and "not a finite number" in infinite["error"]
    # a band gap cannot be negative: refused by row, not clipped to 0 in silence; 0 itself is a valid PBE gap
    assert negative["prediction"] is None and "dft_value -0.2 is below 0, the lowest possible band gap" in negative["error"]
    assert zero["error"] is None and zero["dft_value"] == 0.0
    # a value in meV is no band gap in eV: refused, not extrapolated into a confident 9000 eV
    assert mev["prediction"] is None and "dft_value 8500 is outside 0 to 40 eV" in mev["error"]
    # a possible band gap beyond every DFT value the model was trained on: predicted, flagged and said
    assert beyond["error"] is None and beyond["ad_warning"] is True
    assert "dft_value beyond the DFT values the model was trained on (0.22 to 5.62 eV)" in beyond["structure_used"]
    assert "Traceback" not in capsys.readouterr().err


@pytest.fixture(scope="module")
def carbon_workdir(tmp_path_factory):
    """The tiny model, trained with two carbon polymorphs (graphite 0 eV, lonsdaleite 3.3 eV) among the DFT entries."""
    from tests.models.serving.test_polymorphs import graphite, lonsdaleite

    root = tmp_path_factory.mktemp("predict_carbon")
    train_inputs(root)
    dft = pd.read_parquet(root / "raw/dft.parquet")
    carbon = pd.DataFrame({"material_id": ["mp-g", "mp-l"], "formula": "C",
                           "structure": [json.dumps(s().as_dict()) for s in (graphite, lonsdaleite)],
                           "band_gap_pbe": [0.0, 3.3], "formation_energy_per_atom": [0.0, 0.16], "e_above_hull": 0.0})
    dft = dft[dft["formula"] != "C"].assign(band_gap_hse=np.nan)  # C is a training formula: its polymorphs replace its entry
    pd.concat([dft, carbon.assign(band_gap_hse=[0.0, 4.5])], ignore_index=True).to_parquet(root / "raw/dft.parquet")
    assert train_stage.run(argparse.Namespace(params=train_params(root), property="band_gap", no_mlflow=True)) == 0
    (root / "data").mkdir()
    (root / "raw").rename(root / "data" / "raw")
    (root / "models").rename(root / "data" / "models")
    (root / "params.yaml").unlink()
    return root


def test_diamond_and_graphite_cif_take_their_own_polymorph(carbon_workdir, monkeypatch, capsys):
    """A CIF takes its polymorph's DFT value (exact match, else the nearest by density and coordination); a bare
    formula keeps the most stable one and shows the range over its polymorphs, which its interval covers."""
    from tests.models.serving.test_polymorphs import diamond, graphite

    monkeypatch.chdir(carbon_workdir)
    diamond().to(filename=str(carbon_workdir / "diamond.cif"))
    graphite(a=2.47, c=6.70).to(filename=str(carbon_workdir / "graphite.cif"))
    out = carbon_workdir / "carbon.json"
    assert main(["predict", "C", "--cif", "diamond.cif", "graphite.cif", "--no-metal", "--output", str(out)]) == 0
    formula, dia, gra = json.loads(out.read_text())
    assert gra["dft_value"] == 0.0 and "matches mp-g (StructureMatcher)" in gra["structure_used"]
    assert dia["dft_value"] == 3.3 and "nearest by density and coordination: mp-l" in dia["structure_used"]
    assert dia["prediction"] > gra["prediction"] + 0.5
    assert dia["polymorphs"] == gra["polymorphs"] == 0  # a structure names its polymorph: no range
    assert formula["dft_value"] == 0.0 and formula["prediction"] == pytest.approx(gra["prediction"])
    assert formula["polymorphs"] == 2
    assert formula["polymorph_low"] == pytest.approx(gra["prediction"])
    assert formula["polymorph_high"] == pytest.approx(dia["prediction"])  # lonsdaleite's value and own HSE value
    assert formula["lower"] <= formula["polymorph_low"] and formula["upper"] >= formula["polymorph_high"]
    assert formula["upper"] > gra["upper"]  # widened beyond the graphite prediction's own interval
    assert main(["predict", "C", "--no-metal", "--polymorph-window", "0.1", "--output", str(out)]) == 0
    narrow = json.loads(out.read_text())[0]
    # the same interval as the graphite row's; the test model blends in the GNN, whose float32 products of a batch of
    # one and of three rows may differ in the last bits
    assert narrow["polymorphs"] == 0 and narrow["polymorph_low"] is None
    assert narrow["upper"] == pytest.approx(gra["upper"], rel=1e-6)
    assert main(["predict", "C", "--polymorph-window", "-1"]) != 0
    assert "--polymorph-window -1.0: give a formation-energy window >= 0 eV/atom" in capsys.readouterr().err


def test_bundle_packages_the_polymorphs(carbon_workdir, tmp_path):
    """The registered predictor (one directory, no pipeline data) matches a CIF to its polymorph as `matshift predict`."""
    from featurizers.inputs import parse_cif, parse_formula_input
    from models.properties import get_property
    from models.serving import load_bundle, predict_items, write_bundle
    from pipeline import readers
    from tests.models.serving.test_polymorphs import diamond

    raw = carbon_workdir / "data/raw"
    prop = get_property("band_gap")
    path = write_bundle(tmp_path / "bundle", model_dir=carbon_workdir / "data/models/band_gap", property="band_gap",
                        dft=readers.read_dft(raw, prop, extra=("band_gap_hse",)),
                        structures=lambda ids: readers.read_structures(raw, ids))
    assert json.loads((path / "bundle.json").read_text())["parts"]["polymorphs"]
    diamond().to(filename=str(tmp_path / "diamond.cif"))
    rows = predict_items([parse_cif(tmp_path / "diamond.cif"), parse_formula_input("C")], load_bundle(path), unit="eV")
    assert rows["dft_value"].tolist() == [3.3, 0.0] and rows["polymorphs"].tolist() == [0, 2]
    assert "mp-l" in rows.loc[0, "structure_used"]


def test_prediction_rises_with_the_users_dft_value(workdir, monkeypatch):
    """A user's DFT value goes through the monotone rearrangement (never falls as it rises); the mirror's does not."""
    from featurizers.inputs import parse_dft_value, parse_formula_input
    from models.serving import predict_items
    from pipeline.predict import load_predictor

    monkeypatch.chdir(workdir)
    predictor = load_predictor(None, property="band_gap", metal=False)
    predictor.ensemble.blend_weight = 1.0  # the served default: the stacked model alone
    sweep = np.linspace(0.0, 8.0, 81)
    items = [parse_formula_input("NaCl"), *(parse_dft_value(parse_formula_input("NaCl"), f"{v:.2f}") for v in sweep)]
    rows = predict_items(items, predictor, unit="eV")
    pred = rows["prediction"].to_numpy(float)
    assert np.diff(pred[1:]).min() >= 0.0 and pred[-1] > pred[1]
    stacked, desc = predictor.ensemble.stacked, predictor.ensemble.descriptors
    extra = predictor.ensemble.extra_lookup(["NaCl"] * len(sweep))
    assert pred[1:] == pytest.approx(stacked.rearranged(desc, ["NaCl"] * len(sweep), sweep, extra))
    mirror = rows.loc[0, "dft_value"]
    assert pred[0] == pytest.approx(stacked.predict(desc, ["NaCl"], np.array([mirror]))[0])  # the evaluated model


def test_a_pure_element_is_flagged_when_no_element_was_measured(workdir):
    """No band gap of an element is measured in the mirror: a pure element is then outside what the model saw."""
    from featurizers.inputs import parse_formula_input
    from models.serving import EnsemblePredictor
    from models.serving.predictor import Predictor

    model = workdir / "data" / "models" / "band_gap"
    items = [parse_formula_input(f) for f in ("Si", "NaCl")]
    ensemble = EnsemblePredictor(model)
    assert {"Si", "NaCl"} <= set(ensemble.measured_formulas)  # the tiny model measured both
    seen = Predictor(ensemble, property="band_gap", dft=None, ad_threshold=100.0).predict(items)
    assert not seen["ad_warning"].any() and "no pure element" not in " ".join(seen["structure_used"])
    ensemble.measured_formulas = [f for f in ensemble.measured_formulas if f not in ("Si", "C")]
    unseen = Predictor(ensemble, property="band_gap", dft=None, ad_threshold=100.0).predict(items)
    assert unseen["ad_warning"].tolist() == [True, False]
    assert "no pure element among the training measurements" in unseen["structure_used"][0]
    # the number itself is the model's either way
    np.testing.assert_array_equal(unseen["prediction"], seen["prediction"])


def test_params_file_elsewhere_reads_its_own_directories(workdir, tmp_path, monkeypatch, capsys):
    """``--params`` of another directory: its relative data and model directories are that directory's, not cwd's."""
    params = workdir / "elsewhere.yaml"
    params.write_text("train:\n  raw_dir: data/raw\n  out_dir: data/models\nmetal:\n  out_dir: data/models/metal\n")
    monkeypatch.chdir(tmp_path)  # no data/ here
    assert main(["predict", "--no-metal", "NaCl"]) == 1
    assert "no model at data/models/band_gap" in capsys.readouterr().err
    assert main(["predict", "--no-metal", "--params", str(params), "NaCl"]) == 0
    out = capsys.readouterr().out
    assert "NaCl" in out and "mp-0" in out  # the model and the DFT table of workdir


def test_a_named_params_file_that_is_missing_is_an_error(workdir, monkeypatch, capsys):
    """``--params`` with a typo: an error naming it, not a silent fall back on the default directories."""
    monkeypatch.chdir(workdir)
    assert main(["predict", "--no-metal", "NaCl"]) == 0  # no params.yaml here: the default directories
    capsys.readouterr()
    assert main(["predict", "--no-metal", "--params", "parms.yaml", "NaCl"]) == 1
    assert "parameter file parms.yaml does not exist" in capsys.readouterr().err
