"""benchmarks/fold_offsets.py: each held-out fold's median residual, and the MAE left without it."""

import json

import numpy as np
import pandas as pd
import pytest

from benchmarks.fold_offsets import fold_offsets, main, repeat_spread, summary


def _predictions(seed: int) -> pd.DataFrame:
    """Two family-out folds, one LOCO fold and a grouped-CV fold (ignored); the oxides predicted 0.1 too low."""
    rng = np.random.default_rng(seed)
    parts = []
    for protocol, fold, offset in (("family_out", "oxide", -0.1), ("family_out", "halide", 0.0), ("loco", "cluster0", 0.02),
                                   ("grouped_cv", "0", 5.0)):
        value = rng.uniform(-3, 0, 50)
        scatter = rng.choice([-0.01, 0.01], 50)  # |scatter| is 0.01 on every row
        parts.append(pd.DataFrame({"protocol": protocol, "fold": fold, "seed": seed, "value": value,
                                   "stacked": value + offset + scatter}))
    return pd.concat(parts, ignore_index=True)


def test_an_offset_per_fold_is_measured_and_removed_and_in_distribution_folds_are_ignored():
    table, per_fold = fold_offsets(pd.concat([_predictions(0), _predictions(1)]), "stacked")
    oxide = per_fold[(per_fold["fold"] == "oxide") & (per_fold["seed"] == 0)].iloc[0]
    assert oxide["rows"] == 50
    assert oxide["offset"] == pytest.approx(-0.1, abs=0.0101)  # the median of -0.11 / -0.09
    assert oxide["mae"] == pytest.approx(0.1, abs=0.0101)
    assert oxide["mae_without_offset"] <= 0.0201
    assert "grouped_cv" not in set(table["protocol"])  # a grouped-CV offset of 5 would dominate the pool
    pooled = table[(table["protocol"] == "pooled_ood") & (table["seed"] == 0)].iloc[0]
    assert pooled["rows"] == 150
    # the oxide fold carries most of the pool's MAE; without the offsets about the scatter (0.01) is left
    assert pooled["mae"] == pytest.approx(np.mean([0.1, 0.01, 0.02]), abs=0.011)
    assert pooled["mae_without_offset"] < 0.021
    s = summary(table)
    assert set(s) == {"family_out", "loco", "pooled_ood"}
    assert s["pooled_ood"]["offset_share"] > 0.5 and s["pooled_ood"]["mae_std"] < 0.01


def test_missing_columns_and_no_ood_rows_are_refused():
    with pytest.raises(ValueError, match=r"lack the columns \['stacked_ot'\]"):
        fold_offsets(_predictions(0), "stacked_ot")
    with pytest.raises(ValueError, match="no rows of the OOD protocols"):
        fold_offsets(_predictions(0).query("protocol == 'grouped_cv'"), "stacked")


def test_the_command_writes_json_and_markdown(tmp_path, capsys):
    plots = tmp_path / "plots" / "formation_enthalpy"
    plots.mkdir(parents=True)
    _predictions(0).to_csv(plots / "seed_predictions.csv", index=False)
    out = tmp_path / "offsets.json"
    raw = tmp_path / "raw"
    raw.mkdir()
    pd.DataFrame({"exp_id": ["a", "b", "c"], "formula": ["NaCl", "NaCl", "LiF"], "property": "formation_enthalpy",
                  "value": [-2.1, -2.2, -3.2]}).to_parquet(raw / "experiment.parquet")
    assert main(["--property", "formation_enthalpy", "--plots-dir", str(tmp_path / "plots"), "--raw-dir", str(raw),
                 "--out", str(out)]) == 0
    result = json.loads(out.read_text())
    assert result["formation_enthalpy"]["seeds"] == [0]
    assert result["formation_enthalpy"]["repeat_spread"]["mae_mean_of_others"] == pytest.approx(0.1)
    assert "2 of 3 rows belong to the 1 formulas measured twice or more" in out.with_suffix(".md").read_text()
    assert set(result["formation_enthalpy"]["models"]) == {"stacked"}
    assert "Per fold, seed 0, stacked:" in out.with_suffix(".md").read_text()
    assert "family_out oxide (50 rows): -0.09" in out.with_suffix(".md").read_text()
    with pytest.raises(SystemExit):
        main(["--property", "band_gap", "--plots-dir", str(tmp_path / "plots"), "--out", str(out)])
    assert "seed_predictions.csv not found" in capsys.readouterr().err
    _predictions(0).drop(columns="stacked").to_csv(plots / "seed_predictions.csv", index=False)
    with pytest.raises(SystemExit):
        main(["--property", "formation_enthalpy", "--plots-dir", str(tmp_path / "plots"), "--out", str(out)])
    assert "none of the columns ['stacked', 'stacked_ot']" in capsys.readouterr().err


def test_repeat_spread_predicts_each_repeated_row_by_its_formulas_other_rows():
    rows = pd.DataFrame({"formula": ["GaAs", "GaAs", "GaAs", "ZnO", "ZnO", "NaCl"],
                         "value": [1.40, 1.43, 1.52, 3.3, 3.4, 8.5]})
    s = repeat_spread(rows)
    assert (s["rows"], s["repeated_rows"], s["repeated_formulas"]) == (6, 5, 2)
    # GaAs: |1.475 - 1.40|, |1.46 - 1.43|, |1.415 - 1.52|; ZnO: 0.1 twice; NaCl (measured once) is not scored
    assert s["mae_mean_of_others"] == pytest.approx((0.075 + 0.03 + 0.105 + 0.1 + 0.1) / 5)
    assert np.isnan(repeat_spread(rows.iloc[[0, 3, 5]])["mae_mean_of_others"])
