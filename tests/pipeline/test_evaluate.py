"""End-to-end `matshift evaluate --quick` on tiny files written by the contracts in docs/ARCHITECTURE.md."""

import argparse
import json

import numpy as np
import pandas as pd
import pytest

from pipeline import evaluate as stage
from tests.data import EVALUATE_FORMULAS

FORMULAS = list(EVALUATE_FORMULAS[:20])
SYSTEMS = ["cubic", "hexagonal"]


def _inputs(root):
    rng = np.random.default_rng(0)
    gaps = {f: float(rng.uniform(0.5, 5)) for f in FORMULAS}
    dft = pd.DataFrame({"material_id": [f"mp-{i}" for i in range(len(FORMULAS))], "formula": FORMULAS,
                        "band_gap_pbe": [gaps[f] for f in FORMULAS],
                        "formation_energy_per_atom": rng.uniform(-3, 0, len(FORMULAS))})
    exp_f = [f for f in FORMULAS for _ in range(2)]
    exp = pd.DataFrame({"exp_id": [f"x:{i}" for i in range(len(exp_f))], "formula": exp_f, "property": "band_gap",
                        "value": [1.2 * gaps[f] + 0.4 for f in exp_f]})
    desc = pd.DataFrame(rng.normal(size=(len(FORMULAS), 3)), columns=["d0", "d1", "d2"]).assign(formula=FORMULAS)
    # the first 12 formulas' DFT entries have a known crystal system (two systems, alternating)
    systems = [SYSTEMS[i % 2] if i < 12 else "" for i in range(len(FORMULAS))]
    index = pd.concat([
        pd.DataFrame({"id": dft["material_id"], "domain": "dft", "formula": FORMULAS, "has_graph": False,
                      "spacegroup": 0, "crystal_system": systems}),
        pd.DataFrame({"id": exp["exp_id"], "domain": "experiment", "formula": exp_f, "has_graph": False,
                      "spacegroup": 0, "crystal_system": ""}),
    ])
    for d in ("raw", "features", "aligned/band_gap"):
        (root / d).mkdir(parents=True)
    dft.to_parquet(root / "raw/dft.parquet")
    exp.to_parquet(root / "raw/experiment.parquet")
    desc.to_parquet(root / "features/descriptors.parquet")
    index.to_parquet(root / "features/index.parquet")
    exp[["exp_id"]].assign(transported_mass=1.0 / len(exp)).to_parquet(root / "aligned/band_gap/experiment.parquet")


def _params(root):
    text = f"""
align: {{reg: 0.05}}
train:
  tracking_uri: sqlite:///{root}/mlflow.db
  out_dir: {root}/models
  model: {{comp_hidden: 8, comp_layers: 1, emb_dim: 8, head_hidden: 8, use_graphs: false}}
  optim: {{batch_size: 8, dft_batch_size: 8, pretrain_batch_size: 16}}
  stack: {{bags: 1, surrogate_trees: 10, surrogate_leaves: 4, trees: 20, leaves: 4, min_child_samples: 3, n_jobs: 1}}
evaluate:
  raw_dir: {root}/raw
  features_dir: {root}/features
  aligned_dir: {root}/aligned
  metrics_dir: {root}/metrics
  plots_dir: {root}/plots
  ad_k: 3
  quick:
    protocols: [grouped_cv, crystal_system_out]
    models: [stacked, stacked_ot, gnn_no_ot, gnn_ot]
    neural_iterations: 20
    n_folds: 2
    epochs: 2
    patience: 2
    pretrain_epochs: 1
    rf_trees: 5
    shift_sample: 20
"""
    path = root / "params.yaml"
    path.write_text(text)
    return path


def test_quick_evaluation_writes_metrics_and_plots(tmp_path):
    _inputs(tmp_path)
    args = argparse.Namespace(params=_params(tmp_path), property="band_gap", quick=True)
    assert stage.run(args) == 0
    # a smoke run writes beside the full evaluation's files (DVC's outputs, the README table's source), never over them
    assert not (tmp_path / "metrics/band_gap.json").exists() and not (tmp_path / "plots/band_gap").exists()
    m = json.loads((tmp_path / "metrics/quick/band_gap.json").read_text())
    assert m["budget"] == "quick" and m["n_measurements"] == 40 and m["n_formulas"] == 20
    assert set(m["protocols"]) == {"grouped_cv", "crystal_system_out"}
    # crystal systems come from the formula's DFT polymorph: 12 formulas x 2 measurements, two systems
    cs = m["protocols"]["crystal_system_out"]
    assert cs["n_folds"] == 2 and cs["n_test_rows"] == 24
    assert m["protocols"]["grouped_cv"]["n_test_rows"] == 40
    for model in ("raw_dft", "linear_dft", "rf_descriptors", "stacked", "stacked_ot", "gnn_no_ot", "gnn_ot"):
        assert m["protocols"]["grouped_cv"][model]["mae"] >= 0
    ood = m["pooled_ood"]
    assert ood["protocols"] == ["crystal_system_out"]
    assert ood["best_non_ot_model"] in ("raw_dft", "linear_dft", "rf_descriptors", "gnn_no_ot", "stacked")
    # the headline OT model is the served one (stacked_ot); every OT model's gain is reported
    assert ood["ot_model"] == "stacked_ot" and set(ood["gains"]) == {"stacked_ot", "gnn_ot"}
    assert ood["gain_vs_best_non_ot"] == pytest.approx(1 - ood["mae"]["stacked_ot"] / ood["mae"][ood["best_non_ot_model"]])
    # DFT calibrations (issue 10) on the rows with a DFT value: every test row here has one
    cal = m["protocols"]["grouped_cv"]["calibration"]
    assert cal["n_rows"] == 40 and {"raw_dft", "linear_dft", "calib_ot_knn", "calib_neural"} <= set(cal)
    preds = pd.read_csv(tmp_path / "plots/quick/band_gap/predictions.csv")
    folds = pd.read_csv(tmp_path / "plots/quick/band_gap/folds.csv")
    assert len(preds) == len(folds) == 64
    # every measured formula is tested exactly once by grouped CV
    assert sorted(folds.loc[folds["protocol"] == "grouped_cv", "exp_id"]) == sorted(f"x:{i}" for i in range(40))
    mae = np.mean(np.abs(preds.loc[preds["protocol"] == "grouped_cv", "gnn_ot"] - preds.loc[preds["protocol"] == "grouped_cv", "value"]))
    assert m["protocols"]["grouped_cv"]["gnn_ot"]["mae"] == pytest.approx(mae, rel=1e-4)
    assert preds["transported_mass"].to_numpy() == pytest.approx(np.ones(64))  # relative to the 1/n marginal
    for name in ("parity.png", "error_vs_shift.png", "error_vs_shift.csv", "mass_vs_error.csv", "calibration.png"):
        assert (tmp_path / "plots/quick/band_gap" / name).is_file()


def test_missing_inputs_name_the_file(tmp_path):
    args = argparse.Namespace(params=_params(tmp_path), property="band_gap", quick=True)
    from pipeline.errors import MatshiftError

    with pytest.raises(MatshiftError, match=r"dft\.parquet"):
        stage.run(args)


@pytest.mark.parametrize("prop, column, clamp", [("band_gap", "band_gap_pbe", 0.0),
                                                 ("formation_enthalpy", "formation_energy_per_atom", None)])
def test_stack_inputs_take_every_dft_formula_and_the_train_stack_settings(tmp_path, prop, column, clamp):
    from dataclasses import replace

    from models.evaluation import stack_inputs
    from models.properties import get_property
    from pipeline import readers
    from pipeline.config import load_section
    from pipeline.params.evaluate import EvaluateParams
    from pipeline.params.train import TrainParams

    _inputs(tmp_path)
    params = _params(tmp_path)
    cfg = load_section(EvaluateParams, "evaluate", params)
    fit = load_section(TrainParams, "train", params).fit
    p = get_property(prop)
    st = stack_inputs(readers.read_dft(tmp_path / "raw", p, extra=fit.extra_fidelities(p)),
                      readers.read_descriptors(tmp_path / "features"), replace(cfg.quick, stack_bags=1), fit, p,
                      threads=cfg.threads)
    dft = pd.read_parquet(tmp_path / "raw/dft.parquet").set_index("formula")[column]
    pd.testing.assert_series_equal(st.dft_reference.sort_index(), dft.sort_index().astype(float), check_names=False)
    assert st.config.bags == 1 and st.config.clamp_min == clamp and st.config.trees == 20
    assert st.config.n_jobs == cfg.threads  # not the train stage's: properties run side by side
    assert len(st.surrogate.out_of_fold_) == len(FORMULAS)
