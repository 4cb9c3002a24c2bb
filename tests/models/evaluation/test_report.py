"""`matshift report` (README table from metrics/*.json) and the evaluate section's validation."""

import argparse
import json

import pytest

from models.evaluation import render_results
from pipeline import report
from pipeline.config import ConfigError, load_section
from pipeline.errors import MatshiftError, MissingInputError
from pipeline.params.evaluate import EvaluateParams


def _metrics(gain_mae=0.30):
    models = {"raw_dft": 1.0, "linear_dft": 0.9, "rf_descriptors": 0.4, "gnn_no_ot": 0.45, "gnn_ot": gain_mae}
    proto = {m: {"mae": v, "rmse": v * 1.5, "r2": 0.5} for m, v in models.items()}
    ad = {"model": "gnn_ot", "n_flagged": 3, "mae_in_domain": 0.3, "mae_flagged": 0.9,
          "n_flagged_measured": 5, "mae_in_domain_measured": 0.28, "mae_flagged_measured": None}
    return {
        "property": "band_gap", "unit": "eV", "budget": "full", "n_measurements": 100, "n_formulas": 80,
        "seconds": 600.0, "ad_threshold": 95.0,
        "protocols": {"grouped_cv": {**proto, "shift_ot_mean": 0.5, "ad": ad,
                                     "calibration": {"n_rows": 40, "raw_dft": {"mae": 1.1}, "calib_ot_knn": {"mae": 0.55},
                                                     "calib_neural": {"mae": 0.6}}},
                      "loco": {**proto, "shift_ot_mean": 1.25, "ad": ad}},
        "pooled_ood": {"protocols": ["loco"], "mae": models, "best_non_ot_model": "rf_descriptors",
                       "gain_vs_best_non_ot": 1 - gain_mae / 0.4},
    }


def test_render_has_every_model_protocol_and_the_gain():
    text = render_results({"band_gap": _metrics()})
    assert "| model | grouped CV | LOCO | pooled OOD |" in text
    assert "| descriptor random forest | 0.400 | 0.400 | 0.400 |" in text
    assert "| *OT shift train→test* | 0.50 | 1.25 | |" in text
    assert "(descriptor random forest, 0.400): GNN with OT (unbalanced) 0.300 (+25.0%)." in text
    assert "| calibration | grouped CV (40) |" in text
    assert "| OT barycentric projection + 5-NN shift | 0.550 |" in text and "| linear calibration |" not in text
    assert "| DFT + training compositions | 0.300 / 0.900 (3) | 0.300 / 0.900 (3) |" in text
    assert "| training measurements (as predict) | 0.280 / – (5) |" in text


def test_render_the_stacked_models_over_seeds_with_the_ot_features_interval():
    m = _metrics()
    entry = {"stacked": {"mean": 0.3512, "std": 0.0021, "per_seed": [0.35, 0.349, 0.354]},
             "stacked_ot": {"mean": 0.3498, "std": 0.0017, "per_seed": [0.35, 0.348, 0.3514]},
             "ot_features": {"diff": -0.0014, "ci95": [-0.0031, 0.0004]}}
    m["seeds"] = {"seeds": [0, 1, 2], "protocols": {"grouped_cv": entry, "loco": entry, "pooled_ood": entry}}
    text = render_results({"band_gap": m})
    assert "Stacked models over 3 seeds (0, 1, 2:" in text
    assert "| model | grouped CV | LOCO | pooled OOD |" in text
    assert "| **stacked model with OT features (served)** | 0.350 ± 0.002 | 0.350 ± 0.002 | 0.350 ± 0.002 |" in text
    assert "| OT features: with - without | -0.001 [-0.003, +0.000] |" in text
    assert "over 3 seeds" not in render_results({"band_gap": _metrics()})  # one seed: no such table


def test_replace_block_keeps_everything_outside_the_markers():
    doc = f"intro\n{report.START}\nold table\n{report.END}\noutro\n"
    new = report.replace_block(doc, "| new |\n")
    assert new == f"intro\n{report.START}\n| new |\n{report.END}\noutro\n"
    with pytest.raises(MatshiftError, match="exactly one pair of markers"):
        report.replace_block("no markers here", "x")


def test_report_command_writes_then_checks(tmp_path):
    (tmp_path / "metrics").mkdir()
    (tmp_path / "metrics/band_gap.json").write_text(json.dumps(_metrics()))
    readme = tmp_path / "README.md"
    readme.write_text(f"# x\n{report.START}\n{report.END}\n")
    args = argparse.Namespace(metrics_dir=tmp_path / "metrics", readme=readme, check=True)
    assert report.run(args) == 1  # out of date
    args.check = False
    assert report.run(args) == 0
    assert "| **GNN with OT (unbalanced)** | 0.300 | 0.300 | 0.300 |" in readme.read_text()
    args.check = True
    assert report.run(args) == 0
    with pytest.raises(MissingInputError, match="no metrics in"):
        report.load_metrics(tmp_path / "nowhere")


def test_evaluate_section_rejects_unknown_models_and_protocols(tmp_path):
    path = tmp_path / "params.yaml"
    path.write_text("evaluate:\n  full:\n    models: [gnn_ot, gnn_magic]\n")
    with pytest.raises(ConfigError, match="unknown model 'gnn_magic'"):
        load_section(EvaluateParams, "evaluate", path)
    path.write_text("evaluate:\n  quick:\n    protocols: [loco, random]\n")
    with pytest.raises(ConfigError, match="unknown protocol 'random'"):
        load_section(EvaluateParams, "evaluate", path)
    path.write_text("evaluate:\n  full:\n    n_folds: 1\n")
    with pytest.raises(ConfigError, match="n_folds and loco_clusters must be >= 2"):
        load_section(EvaluateParams, "evaluate", path)


def test_repository_params_have_a_valid_evaluate_section():
    cfg = load_section(EvaluateParams, "evaluate", "params.yaml")
    assert cfg.full.protocols == ["grouped_cv", "loco", "family_out", "crystal_system_out", "range_extrapolation"]
    assert "gnn_ot" in cfg.quick.models and cfg.quick.max_measurements > 0


def test_render_shows_each_held_out_family_when_the_metrics_have_it():
    m = _metrics()
    assert "per held-out family" not in render_results({"band_gap": m})  # older metrics: no table
    fams = {"halide": 0.8, "oxide": 0.7}
    m["protocols"]["family_out"] = {**m["protocols"]["loco"], "shift_ot_mean": 9.0,
                                    "per_fold": {f: {"n_test_rows": 10, **{k: v for k in m["pooled_ood"]["mae"]}}
                                                 for f, v in fams.items()}}
    text = render_results({"band_gap": m})
    assert "| model | halide (10) | oxide (10) |" in text
    assert "| descriptor random forest | 0.800 | 0.700 |" in text



def test_the_repository_readme_shows_the_committed_metrics():
    """The README's results table is `matshift report`'s rendering of metrics/*.json as committed (regenerate after `dvc repro`)."""
    from pathlib import Path

    root = Path(__file__).resolve().parents[3]
    args = argparse.Namespace(metrics_dir=root / "metrics", readme=root / "README.md", check=True)
    assert report.run(args) == 0, "README.md's results table is out of date: run `matshift report` and commit it"
