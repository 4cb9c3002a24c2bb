"""The metal stage on a sample of the real mirror, and `matshift predict` calling metals metal (issue 17's pin)."""

import argparse
import json

import numpy as np
import pandas as pd
import pytest
import yaml

from featurizers.chemistry import FormulaError, reduced_formula
from featurizers.composition import composition_descriptors
from featurizers.settings import DESCRIPTOR_SETS
from pipeline import train as train_stage
from pipeline.cli import main
from tests.data import MIRROR, TRAIN_FORMULAS, train_inputs, train_params

pytestmark = pytest.mark.skipif(not MIRROR.is_dir(), reason="offline mirror ../shared/datasets not present")

PINNED = ("Cu3Au", "Fe", "Al2O3", "GaAs")  # none of them is in the sample below or in expt_is_metal.csv


def _reduced(text: str) -> str | None:
    try:
        return reduced_formula(text)
    except FormulaError:
        return None


def _metal_inputs(root) -> None:
    """data/raw and data/features from the mirror: 500 labelled compositions, their gaps, 400 DFT entries."""
    rng = np.random.default_rng(0)
    classes = pd.read_csv(MIRROR / "experiment/expt_is_metal.csv").assign(formula=lambda f: f["formula"].map(_reduced))
    classes = classes.dropna().drop_duplicates("formula")
    classes = classes[~classes["formula"].isin(PINNED)].iloc[rng.permutation(len(classes))[:500]]
    gaps = pd.read_csv(MIRROR / "experiment/expt_gap_zhuo2018.csv").assign(
        formula=lambda f: f["composition"].map(_reduced)).dropna()
    gaps = gaps[gaps["formula"].isin(set(classes.loc[classes["target"] == 0, "formula"]))]
    dft = pd.read_csv(MIRROR / "mp/mp_non_metals_band_gap.csv").assign(
        formula=lambda f: f["composition"].map(_reduced)).dropna()
    # DFT knows the two pinned non-metals (as the full mirror does) and 400 other entries
    dft = pd.concat([dft[dft["formula"].isin(PINNED)], dft.iloc[rng.permutation(len(dft))[:400]]])
    raw, features = root / "raw", root / "features"
    raw.mkdir()
    features.mkdir()
    pd.DataFrame({"exp_id": [f"m:{i}" for i in range(len(classes))], "formula": classes["formula"],
                  "is_metal": classes["target"]}).to_parquet(raw / "metal_class.parquet")
    pd.DataFrame({"exp_id": [f"g:{i}" for i in range(len(gaps))], "formula": gaps["formula"], "property": "band_gap",
                  "value": gaps["Eg"]}).to_parquet(raw / "experiment.parquet")
    pd.DataFrame({"material_id": dft["material_id"], "formula": dft["formula"], "band_gap_pbe": dft["band_gap"],
                  "formation_energy_per_atom": -1.0}).to_parquet(raw / "dft.parquet")
    formulas = sorted(set(classes["formula"]) | set(gaps["formula"]) | set(dft["formula"]))
    composition_descriptors(formulas, sets=DESCRIPTOR_SETS).frame.to_parquet(features / "descriptors.parquet")
    pd.DataFrame({"id": dft["material_id"], "domain": "dft", "crystal_system": ""}).to_parquet(features / "index.parquet")


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    root = tmp_path_factory.mktemp("metal")
    _metal_inputs(root)
    # the band-gap model: the tiny train-stage model, on real descriptors so new formulas can be featurized
    gap_root = root / "gap"
    gap_root.mkdir()
    train_inputs(gap_root)
    composition_descriptors(TRAIN_FORMULAS, sets=DESCRIPTOR_SETS).frame.to_parquet(gap_root / "features/descriptors.parquet")
    assert train_stage.run(argparse.Namespace(params=train_params(gap_root), property="band_gap", no_mlflow=True)) == 0
    params = {
        "train": {"raw_dir": str(gap_root / "raw"), "features_dir": str(gap_root / "features"),
                  "aligned_dir": str(gap_root / "aligned"), "out_dir": str(gap_root / "models"),
                  "stack": {"surrogate_trees": 30, "trees": 60, "n_jobs": 1}},
        "metal": {"raw_dir": str(root / "raw"), "features_dir": str(root / "features"), "out_dir": str(root / "metal"),
                  "metrics_dir": str(root / "metrics"), "plots_dir": str(root / "plots"),
                  "classifier": {"trees": 150, "bags": 1, "surrogate_trees": 40, "n_jobs": 1},
                  "cv_seeds": [0], "n_folds": 3, "inner_folds": 3, "protocols": ["family_out"], "regressor_bags": 1},
    }
    (root / "params.yaml").write_text(yaml.safe_dump(params))
    assert main(["metal", "--params", str(root / "params.yaml"), "--no-mlflow"]) == 0
    return root


def test_metal_stage_writes_scores_card_and_model(workdir):
    metrics = json.loads((workdir / "metrics/metal.json").read_text())
    cv = metrics["per_protocol"]["grouped_cv_seed0"]
    assert cv["formulas"] >= 490 and 0 < cv["metals"] < cv["formulas"]
    assert cv["roc_auc"] > 0.85  # composition + DFT separate metals well even from 500 formulas
    assert cv["mae_all"] < cv["mae_all_regressor_only"]  # calling metals metal lowers the all-compositions error
    assert {"family_out", "grouped_cv_seed0"} == set(metrics["per_protocol"])
    assert 0.05 <= metrics["served"]["threshold"] <= 0.95
    card = (workdir / "metal/card.md").read_text()
    assert f"Threshold {metrics['served']['threshold']:.2f}" in card and "precision" in card
    assert (workdir / "plots/metal/roc.png").stat().st_size > 0
    # other operating points, on the served threshold's rows: a higher threshold calls fewer non-metals metal
    points = metrics["operating_points"]
    assert [p["threshold"] for p in points] == [0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.99]
    called = [p["nonmetals_called_metal"] for p in points]
    assert called == sorted(called, reverse=True) and called[0] > called[-1]
    # a call can take a non-metal's gap away or, for a gap the regressor overestimates by more than the gap, help
    assert all(p["nonmetal_cost_ci95"][0] <= p["nonmetal_cost"] <= p["nonmetal_cost_ci95"][1] for p in points)
    assert points[-1]["nonmetal_cost"] <= points[0]["nonmetal_cost"]
    served = metrics["served"]["threshold"]
    if any(abs(p["threshold"] - served) < 1e-9 for p in points):
        assert f"| {served:.2f} (served) |" in card
    assert "`matshift predict --metal-threshold P`" in card and "| 0.99 |" in card


def test_predict_calls_metals_metal_and_keeps_non_metal_gaps(workdir, monkeypatch):
    monkeypatch.chdir(workdir)
    out = workdir / "pred.json"
    assert main(["predict", *PINNED, "--params", "params.yaml", "--output", str(out)]) == 0
    rows = {r["input"]: r for r in json.loads(out.read_text())}
    stored = json.loads((workdir / "metal/metal.json").read_text())["extra"]["threshold"]
    assert all(r["metal_threshold"] == stored for r in rows.values())
    for metal in ("Cu3Au", "Fe"):
        r = rows[metal]
        assert r["metal"] is True and r["metal_probability"] >= stored
        assert r["prediction"] == 0.0 and r["bag_spread"] is None  # no spread is shown for a 0 eV call
        assert r["lower"] == 0.0 and r["upper"] >= 0.0 and r["coverage"] == 0.9
        assert r["nonmetal_prediction"] > 0  # the non-metal estimate stays available
    for non_metal in ("Al2O3", "GaAs"):
        r = rows[non_metal]
        assert r["metal"] is False and r["metal_probability"] < 0.5
        assert r["prediction"] == r["nonmetal_prediction"] > 0


def test_predict_warns_when_the_classifier_is_missing(workdir, monkeypatch, caplog):
    monkeypatch.chdir(workdir)
    params = yaml.safe_load((workdir / "params.yaml").read_text())
    params["metal"]["out_dir"] = str(workdir / "metal_not_there")
    missing = workdir / "params_no_metal_dir.yaml"
    missing.write_text(yaml.safe_dump(params))
    with caplog.at_level("WARNING"):
        assert main(["predict", "Cu3Au", "--params", str(missing), "--output", "nometal.json"]) == 0
    assert "no metal classifier at" in caplog.text and "metal_not_there" in caplog.text
    assert "run `matshift metal`" in caplog.text
    assert json.loads((workdir / "nometal.json").read_text())[0]["metal"] is None
    caplog.clear()
    with caplog.at_level("WARNING"):  # asked for explicitly: no warning
        assert main(["predict", "Cu3Au", "--params", str(missing), "--no-metal", "--output", "nometal.json"]) == 0
    assert "no metal classifier" not in caplog.text


def test_predict_without_the_classifier_and_the_table(workdir, monkeypatch, capsys):
    monkeypatch.chdir(workdir)
    assert main(["predict", "Cu3Au", "GaAs", "--params", "params.yaml", "--no-metal", "--output", "plain.json"]) == 0
    rows = json.loads((workdir / "plain.json").read_text())
    assert all(r["metal"] is None and r["metal_threshold"] is None and r["prediction"] > 0 for r in rows)
    assert main(["predict", "Cu3Au", "GaAs", "--params", "params.yaml"]) == 0
    table = capsys.readouterr().out
    line = next(x for x in table.splitlines() if x.startswith("Cu3Au"))
    assert "METAL" in line and "non-metal estimate" in line and "0.000 eV" in line
    assert "METAL" not in next(x for x in table.splitlines() if x.startswith("GaAs"))
    assert main(["predict", "Cu3Au", "--params", "params.yaml", "--metal-threshold", "0.25"]) == 0
    assert "METAL (P(metal) >= 0.25;" in capsys.readouterr().out  # the row names the threshold it was called at


def test_a_user_threshold_moves_the_calls_and_bad_ones_are_refused(workdir, monkeypatch, capsys):
    monkeypatch.chdir(workdir)
    out = workdir / "strict.json"
    # P(metal) >= 0 calls every row metal, > 1 none: the calls follow the user's threshold, not the stored one
    assert main(["predict", *PINNED, "--params", "params.yaml", "--metal-threshold", "0", "--output", str(out)]) == 0
    assert all(r["metal"] is True and r["prediction"] == 0.0 for r in json.loads(out.read_text()))
    assert main(["predict", *PINNED, "--params", "params.yaml", "--metal-threshold", "1", "--output", str(out)]) == 0
    rows = json.loads(out.read_text())
    assert all(r["metal"] is (r["metal_probability"] >= 1.0) and r["metal_threshold"] == 1.0 for r in rows)
    assert all(r["prediction"] == r["nonmetal_prediction"] > 0 for r in rows if not r["metal"])
    capsys.readouterr()
    for argv, message in ((["--metal-threshold", "1.5"], "give a probability between 0 and 1"),
                          (["--metal-threshold", "nan"], "give a probability between 0 and 1"),
                          (["--metal-threshold", "0.7", "--no-metal"], "contradict each other"),
                          (["--metal-threshold", "0.7", "--property", "formation_enthalpy"], "applies to band gaps")):
        assert main(["predict", "GaAs", "--params", "params.yaml", *argv]) != 0
        err = capsys.readouterr().err
        assert message in err and "Traceback" not in err


def test_the_python_api_takes_a_metal_threshold(workdir, monkeypatch):
    import types

    import matshift
    from matshift.api import _thresholded

    monkeypatch.chdir(workdir)
    table = matshift.load_model("band_gap", params="params.yaml", metal_threshold=0.0).predict(list(PINNED))
    assert table["metal"].tolist() == [True] * 4 and (table["prediction"] == 0.0).all()
    for kwargs, message in (({"metal_threshold": 2.0}, "between 0 and 1"),
                            ({"metal_threshold": 0.5, "metal": False}, "contradict")):
        with pytest.raises(ValueError, match=message):
            matshift.load_model("band_gap", params="params.yaml", **kwargs)
    # a packaged predictor: its own classifier takes the threshold; one without a classifier is refused
    packaged = types.SimpleNamespace(metal=types.SimpleNamespace(threshold=0.5))
    assert _thresholded(packaged, 0.9, "bundle").metal.threshold == 0.9
    assert _thresholded(packaged, None, "bundle") is packaged
    with pytest.raises(matshift.ModelNotFoundError, match="no metal classifier"):
        _thresholded(types.SimpleNamespace(metal=None), 0.9, "models:/matshift-formation_enthalpy/1")


def test_a_metal_threshold_is_any_real_probability():
    from models.serving import check_metal_threshold

    for ok in (0, 1, 0.5, np.float32(0.25), np.float64(0.75), np.int64(1)):
        assert check_metal_threshold(ok) == pytest.approx(float(ok))
    for bad in (-0.1, 1.5, float("nan"), np.float32("nan"), True, "0.5", None):
        with pytest.raises(ValueError, match="give a probability between 0 and 1"):
            check_metal_threshold(bad)
