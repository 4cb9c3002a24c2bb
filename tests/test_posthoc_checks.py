"""benchmarks/posthoc_checks.py: the metal calls' operating points, split by whether the formula has a DFT entry."""

import pandas as pd
import pytest

from benchmarks.posthoc_checks import _metal_rows, main, metal_by_dft


def _rows() -> pd.DataFrame:
    """One fold seed; NiO and TiS2 have a DFT entry, the other three formulas do not."""
    return pd.DataFrame({
        "seed": 0,
        "formula": ["NiO", "TiS2", "CuAu", "ZnO", "GaN"],
        "is_metal": [0, 1, 1, 0, 0],
        "probability": [0.6, 0.9, 0.97, 0.1, 0.3],
        "regressor": [1.5, 1.0, 0.8, 3.0, 3.0],
        "measured": [2.0, float("nan"), float("nan"), 3.4, 3.2],
    })


def test_each_part_has_its_own_costs_recall_and_all_compositions_error():
    out = metal_by_dft(_rows(), {"NiO", "TiS2", "Fe"}, [0.5, 0.95])
    with_dft, without = out["with_dft"], out["without_dft"]
    assert (with_dft["nonmetals"], with_dft["metals"], without["nonmetals"], without["metals"]) == (1, 1, 2, 1)
    assert with_dft["nonmetal_regressor_only"] == pytest.approx(0.5)  # NiO: |1.5 - 2.0|
    at = with_dft["thresholds"]["0.5"]
    # NiO is called metal (0.6 >= 0.5) and loses its whole gap: 2.0 instead of 0.5; TiS2 is caught (0 instead of 1.0)
    assert at["nonmetal_cost"] == pytest.approx(1.5)
    assert at["nonmetals_called"] == 1.0 and at["metal_recall"] == 1.0
    assert at["all"] == pytest.approx((2.0 + 0.0) / 2)
    at = with_dft["thresholds"]["0.95"]  # neither is called: the regressor's errors, and no cost
    assert at["nonmetal_cost"] == 0.0 and at["metal_recall"] == 0.0
    assert at["all"] == pytest.approx((0.5 + 1.0) / 2)
    at = without["thresholds"]["0.95"]  # CuAu caught, ZnO and GaN keep their gaps
    assert at["nonmetal_cost"] == 0.0 and at["nonmetal_cost_ci95"] == [0.0, 0.0]
    assert at["metal_recall"] == 1.0
    assert at["all"] == pytest.approx((0.0 + 0.4 + 0.2) / 3)


def test_metal_rows_keep_one_row_per_fold_seed_and_formula():
    # the metal stage lists the fold seeds one after the other; a formula's rows within a seed are averaged
    stage = pd.DataFrame({"protocol": ["grouped_cv"] * 4 + ["loco"],
                          "formula": ["NiO", "ZnO", "NiO", "ZnO", "NiO"],
                          "is_metal": 0, "probability": [0.2, 0.1, 0.4, 0.3, 0.9],
                          "regressor": [1.0, 3.0, 2.0, 3.2, 9.0], "measured": [2.0, 3.4, 2.0, 3.4, 2.0]})
    rows = _metal_rows(stage)
    assert len(rows) == 4  # the LOCO row is not a grouped-CV row
    nio = rows[rows["formula"] == "NiO"].set_index("seed")
    assert nio.loc[1, "probability"] == 0.4 and nio.loc[1, "regressor"] == 2.0


def test_a_missing_input_names_the_file(tmp_path):
    with pytest.raises(SystemExit, match=r"predictions\.csv is missing; run `dvc repro` first"):
        main(["--plots", str(tmp_path), "--data", str(tmp_path), "--out", str(tmp_path / "out.json")])
    assert not (tmp_path / "out.json").exists()
