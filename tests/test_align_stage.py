"""The align stage on small inputs in the data/raw + data/features schema (tmp_path)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

from featurizers.chemistry import reduced_formula
from pipeline import align as stage
from pipeline.errors import MatshiftError

MIRROR = Path(__file__).resolve().parents[2] / "shared" / "datasets" / "experiment"


def _inputs(root: Path, n_formulas: int = 60, seed: int = 0) -> None:
    rng = np.random.default_rng(seed)
    enth = pd.read_csv(MIRROR / "expt_formation_enthalpy_ssub.csv").head(n_formulas)
    gap = pd.read_csv(MIRROR / "expt_gap_zhuo2018.csv")
    gap = gap[gap["Eg"] > 0].head(n_formulas)
    exp = pd.concat([
        pd.DataFrame({"exp_id": [f"ssub:{i}" for i in enth.index], "formula_raw": enth["formula"],
                      "property": "formation_enthalpy", "value": enth["dHf_eV_per_atom"],
                      "unit": "eV/atom", "source": "ssub"}),
        pd.DataFrame({"exp_id": [f"zhuo:{i}" for i in gap["material_id"]], "formula_raw": gap["composition"],
                      "property": "band_gap", "value": gap["Eg"], "unit": "eV", "source": "zhuo"}),
    ], ignore_index=True)
    exp["formula"] = [reduced_formula(f) for f in exp["formula_raw"]]
    # DFT: 1-2 polymorphs for most formulas; PBE gap ~ 0.6 * measured, enthalpy shifted by +0.1
    rows = []
    for k, (formula, group) in enumerate(exp.groupby("formula", sort=True)):
        if k % 5 == 4:
            continue  # measured compositions without DFT counterpart
        for p in range(1 + k % 2):
            v = group["value"].mean()
            gapv = 0.6 * v + rng.normal(scale=0.05) if group["property"].iloc[0] == "band_gap" else np.nan
            ef = v + 0.1 + rng.normal(scale=0.02) if group["property"].iloc[0] == "formation_enthalpy" else np.nan
            rows.append({"material_id": f"mp-{k}{p}", "formula": formula, "structure": None,
                         "band_gap_pbe": gapv, "formation_energy_per_atom": ef})
    rows.append({"material_id": "mp-extra", "formula": "NaCl", "structure": None, "band_gap_pbe": 5.0,
                 "formation_energy_per_atom": -2.1})
    dft = pd.DataFrame(rows)
    formulas = sorted(set(dft["formula"]) | set(exp["formula"]))
    desc = pd.DataFrame(rng.normal(size=(len(formulas), 6)), columns=[f"d{i}" for i in range(6)])
    desc.insert(0, "formula", formulas)
    index = pd.concat([
        pd.DataFrame({"id": dft["material_id"], "domain": "dft", "formula": dft["formula"], "has_graph": False,
                      "spacegroup": 225, "crystal_system": "cubic"}),
        pd.DataFrame({"id": exp["exp_id"], "domain": "experiment", "formula": exp["formula"],
                      "has_graph": False, "spacegroup": 0, "crystal_system": ""}),
    ])
    (root / "raw").mkdir(parents=True)
    (root / "features").mkdir(parents=True)
    dft.to_parquet(root / "raw" / "dft.parquet")
    exp.to_parquet(root / "raw" / "experiment.parquet")
    desc.to_parquet(root / "features" / "descriptors.parquet")
    index.to_parquet(root / "features" / "index.parquet")


def _params(root: Path, **extra) -> Path:
    import yaml

    sec = {"raw_dir": str(root / "raw"), "features_dir": str(root / "features"),
           "out_dir": str(root / "aligned"), "reg": 0.02, "reg_m": 1.0, **extra}
    path = root / "params.yaml"
    path.write_text(yaml.safe_dump({"align": sec}))
    return path


@pytest.mark.parametrize("prop", ["band_gap", "formation_enthalpy"])
def test_stage_writes_the_contract(tmp_path, prop):
    _inputs(tmp_path)
    params = _params(tmp_path)
    assert stage.run(argparse.Namespace(params=params, property=prop)) == 0
    out = tmp_path / "aligned" / prop
    names = {p.name for p in out.iterdir()}
    assert {"pairs.parquet", "plan.npz", "dft.parquet", "experiment.parquet", "corrections.json",
            "align.json", "plan_heatmap.png", "mass_hist.png"} <= names
    pairs = pd.read_parquet(out / "pairs.parquet")
    assert list(pairs.columns) == ["exp_id", "material_id", "mass", "cost"]
    dft = pd.read_parquet(out / "dft.parquet")
    assert list(dft.columns) == ["material_id", "formula", "dft_value", "transported_mass",
                                 "calibrated_target", "confidence"]
    exp = pd.read_parquet(out / "experiment.parquet")
    assert list(exp.columns) == ["exp_id", "formula", "value", "transported_mass"]
    plan = sp.load_npz(out / "plan.npz")
    assert plan.shape == (len(dft), len(exp))
    assert plan.sum() == pytest.approx(pairs["mass"].sum(), rel=1e-9)
    # hard block: every pair shares a reduced formula
    f_d = dict(zip(dft["material_id"], dft["formula"], strict=True))
    f_e = dict(zip(exp["exp_id"], exp["formula"], strict=True))
    assert all(f_d[m] == f_e[e] for m, e in zip(pairs["material_id"], pairs["exp_id"], strict=True))
    diag = json.loads((out / "align.json").read_text())
    assert diag["converged"] is True
    assert diag["ot_distance_after"] < diag["ot_distance_before"]
    assert diag["mass_moved"] == pytest.approx(plan.sum())
    # calibrated targets move DFT values towards the measurements
    matched = dft["confidence"] > 0.5
    assert matched.sum() > 10
    err_before = (dft.loc[matched, "dft_value"] - dft.loc[matched, "calibrated_target"]).abs().mean()
    assert err_before > 0.05
    assert np.all(dft.loc[dft["transported_mass"] == 0, "confidence"] == 0)
    corr = json.loads((out / "corrections.json").read_text())
    assert corr["used"] is (prop == "formation_enthalpy")


def test_stage_soft_mass_penalty(tmp_path):
    _inputs(tmp_path, n_formulas=30)
    params = _params(tmp_path, cost={"hard_block": False, "mass": 2.0})
    assert stage.run(argparse.Namespace(params=params, property="band_gap")) == 0
    diag = json.loads((tmp_path / "aligned" / "band_gap" / "align.json").read_text())
    assert diag["penalty_residuals"]["mass"] < 0.05
    assert diag["support_size"] == diag["n_source"] * diag["n_target"]


def test_stage_refuses_unconverged(tmp_path):
    _inputs(tmp_path, n_formulas=20)
    params = _params(tmp_path, max_iter=2, reg=0.001)
    with pytest.raises(MatshiftError, match="did not converge in"):
        stage.run(argparse.Namespace(params=params, property="band_gap"))
    params = _params(tmp_path, max_iter=2, reg=0.001, allow_unconverged=True)
    assert stage.run(argparse.Namespace(params=params, property="band_gap")) == 0
    diag = json.loads((tmp_path / "aligned" / "band_gap" / "align.json").read_text())
    assert diag["converged"] is False


def test_stage_names_missing_input(tmp_path):
    params = _params(tmp_path)
    with pytest.raises(MatshiftError, match=r"dft\.parquet"):
        stage.run(argparse.Namespace(params=params, property="band_gap"))


def test_config_rejects_bad_values(tmp_path):
    from pipeline.config import ConfigError, load_section
    from pipeline.params.align import AlignParams

    params = _params(tmp_path, reg=-1.0)
    with pytest.raises(ConfigError, match="reg must be > 0"):
        load_section(AlignParams, "align", params)


def test_stage_lists_a_planted_mis_recorded_measurement_first(tmp_path, capsys):
    _inputs(tmp_path, n_formulas=60)
    exp = pd.read_parquet(tmp_path / "raw" / "experiment.parquet")
    dft = pd.read_parquet(tmp_path / "raw" / "dft.parquet")
    gaps = exp[(exp["property"] == "band_gap") & exp["formula"].isin(set(dft["formula"]))]
    planted = gaps.index[3]
    exp.loc[planted, "value"] += 6.0  # mis-recorded: far off the (linear) PBE -> experiment relation
    exp.to_parquet(tmp_path / "raw" / "experiment.parquet")
    params = _params(tmp_path)
    assert stage.run(argparse.Namespace(params=params, property="band_gap", show_outliers=4)) == 0
    table = pd.read_csv(tmp_path / "aligned" / "band_gap" / "outliers.csv")
    assert len(table) == int((exp["property"] == "band_gap").sum())
    assert table["exp_id"].iloc[0] == exp.loc[planted, "exp_id"]
    assert table["residual"].iloc[0] == pytest.approx(6.0, abs=1.0)
    assert table["score"].iloc[0] < 0.2
    # the systematic 0.6x PBE underestimate is calibrated away: the other matched ones score high
    matched = table[~table["no_counterpart"]].iloc[1:]
    assert (matched["score"] > 0.5).mean() > 0.9
    # measurements without any DFT counterpart come last, not first
    assert not table["no_counterpart"].iloc[: (~table["no_counterpart"]).sum()].any()
    printed = capsys.readouterr().out.strip().splitlines()
    assert len(printed) == 1 + 4 and printed[1].split()[0] == exp.loc[planted, "exp_id"]
    diag = json.loads((tmp_path / "aligned" / "band_gap" / "align.json").read_text())
    assert diag["value_calibration"]["slope"] == pytest.approx(1 / 0.6, rel=0.1)


def test_stage_rejects_a_negative_outlier_count(tmp_path):
    params = _params(tmp_path)
    with pytest.raises(MatshiftError, match="--show-outliers must be >= 0"):
        stage.run(argparse.Namespace(params=params, property="band_gap", show_outliers=-1))
