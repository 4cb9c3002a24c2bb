"""benchmarks/learning_curve.py: nested cuts of the training parts by formula, the log-log slope and the data multiple."""

import math

import numpy as np
import pytest

from benchmarks.learning_curve import cut_folds, data_multiple, main, markdown, slope, summarise
from models.evaluation.splits import Fold


def _folds() -> tuple[list[Fold], list[str]]:
    # 40 formulas, each measured twice (rows 2i and 2i + 1); two folds with disjoint test parts
    formulas = [f"A{i}B" for i in range(40) for _ in range(2)]
    rows = np.arange(80)
    return [Fold("grouped_cv", "0", rows[20:], rows[:20]), Fold("family_out", "oxide", rows[:60], rows[60:])], formulas


def test_cuts_keep_whole_formulas_are_nested_and_leave_the_test_rows_alone():
    folds, formulas = _folds()
    cuts = {f: cut_folds(folds, formulas, f, seed=3) for f in (0.25, 0.5, 1.0)}
    for k, fold in enumerate(folds):
        kept = {f: {formulas[i] for i in cuts[f][k].train} for f in cuts}
        n = len({formulas[i] for i in fold.train})
        assert len(kept[0.25]) == math.ceil(0.25 * n) and len(kept[0.5]) == math.ceil(0.5 * n)
        assert kept[0.25] < kept[0.5] < kept[1.0]  # nested, and 100% is the fold itself
        np.testing.assert_array_equal(cuts[1.0][k].train, fold.train)
        for f in cuts:
            np.testing.assert_array_equal(cuts[f][k].test, fold.test)
            names = [formulas[i] for i in cuts[f][k].train]
            assert all(names.count(m) == 2 for m in set(names))  # every measurement of a kept formula stays
            assert set(cuts[f][k].train) <= set(fold.train)
    other = cut_folds(folds, formulas, 0.5, seed=4)
    assert any(not np.array_equal(a.train, b.train) for a, b in zip(other, cuts[0.5], strict=True))  # seeds draw anew
    with pytest.raises(ValueError, match="fraction must be in"):
        cut_folds(folds, formulas, 0.0, seed=0)


def test_slope_and_data_multiple_of_a_power_law():
    sizes = [100.0, 200.0, 400.0]
    maes = [2.0 * n ** -0.25 for n in sizes]
    s = slope(sizes, maes)
    assert s == pytest.approx(-0.25)
    # halving the error at slope -1/4 takes 2^4 = 16 times the data
    assert data_multiple(maes[-1], maes[-1] / 2, s) == pytest.approx(16.0)
    assert data_multiple(0.4, 0.42, s) == 1.0  # already there
    assert math.isinf(data_multiple(0.5, 0.42, 0.01))  # an error that does not fall never gets there


def test_summary_fits_each_seed_and_extrapolates_from_the_mean_slope():
    sizes = [[100.0, 200.0, 400.0], [110.0, 220.0, 440.0]]
    maes = {"pooled_ood": [[1.0 * n ** -0.1 for n in sizes[0]], [1.0 * n ** -0.3 for n in sizes[1]]],
            "loco": [[0.5, 0.5, 0.5], [0.5, 0.5, 0.5]]}
    out = summarise(maes, sizes, (0.25, 0.5, 1.0), target=0.2)
    assert out["train_formulas"] == pytest.approx([105.0, 210.0, 420.0])
    pooled = out["protocols"]["pooled_ood"]
    assert pooled["slope"] == pytest.approx(-0.2) and pooled["slope_std"] == pytest.approx(0.1)
    last = np.mean([400.0 ** -0.1, 440.0 ** -0.3])
    assert pooled["mean"][-1] == pytest.approx(last)
    assert pooled["target_multiple"] == pytest.approx((0.2 / last) ** (1 / -0.2))
    assert pooled["per_seed"][1][0] == pytest.approx(110.0 ** -0.3)
    assert out["protocols"]["loco"]["slope"] == pytest.approx(0.0, abs=1e-12)
    assert math.isinf(out["protocols"]["loco"]["target_multiple"]) or out["protocols"]["loco"]["target_multiple"] > 1e6


def test_markdown_names_the_target_and_a_flat_curve():
    result = {"unit": "eV", "fractions": [0.5, 1.0], "train_formulas": [500.0, 1000.0], "target": 0.42,
              "protocols": {"pooled_ood": {"mean": [0.5, 0.48], "std": [0.01, 0.01], "slope": slope([500, 1000], [0.5, 0.48]),
                                           "slope_std": 0.02, "halving_multiple": 1e6, "target_multiple": 30.0},
                            "loco": {"mean": [0.5, 0.5], "std": [0.0, 0.0], "slope": 0.0, "slope_std": 0.0, "halving_multiple": math.inf,
                                     "target_multiple": math.inf}}}
    text = markdown({"properties": ["band_gap"], "band_gap": result, "machine": "x86_64, 2 cores", "seeds": [0],
                     "bags": 2, "seconds": 1.0, "load": ""})
    assert "| 50% (500 formulas) | 100% (1000 formulas) | slope (± over seeds) | data for half the MAE | data for 0.42 |" in text
    assert "| pooled_ood | 0.5000 ± 0.0100 | 0.4800 ± 0.0100 | -0.059 ± 0.020 | over 1000x | 30.0x |" in text
    assert "| loco | 0.5000 ± 0.0000 | 0.5000 ± 0.0000 | +0.000 ± 0.000 | never | never |" in text


@pytest.mark.parametrize("argv, message", [(["--fractions", "0.5", "0.25", "1.0"], "ascending"),
                                            (["--fractions", "0.5", "0.9"], "ending at 1.0"),
                                            (["--target", "-1"], "a positive MAE")])
def test_bad_arguments_are_refused_before_any_work(argv, message, capsys):
    with pytest.raises(SystemExit):
        main(argv)
    assert message in capsys.readouterr().err
