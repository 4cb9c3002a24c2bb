"""The calibrated value cost: a systematic DFT error is not an outlier, a wrong measurement is."""

from __future__ import annotations

import numpy as np
import pytest

from models.transport import CostWeights, Domain, SolverOptions, align, fit_value_calibration


def _pairs(n_formulas: int, seed: int, *, slope: float = 1.5, intercept: float = 0.5, noise: float = 0.05):
    """One DFT entry and one measurement per formula, measured = intercept + slope * DFT + noise.

    Like PBE band gaps: the DFT value underestimates, more so the wider the gap.
    """
    rng = np.random.default_rng(seed)
    formulas = np.array([f"A{i}B" for i in range(n_formulas)])
    dft = rng.uniform(0.2, 6.0, n_formulas)
    measured = intercept + slope * dft + rng.normal(scale=noise, size=n_formulas)
    feats = rng.normal(size=(n_formulas, 3))
    return formulas, dft, measured, feats


def _domains(formulas, dft, measured, feats):
    ids = np.arange(formulas.size)
    src = Domain(features=feats, values=dft, formulas=formulas, ids=np.array([f"mp-{i}" for i in ids]))
    tgt = Domain(features=feats, values=measured, formulas=formulas, ids=np.array([f"x:{i}" for i in ids]))
    return src, tgt


def _ratios(src, tgt, calibration: str, reg_m: float) -> np.ndarray:
    res = align(src, tgt, method="unbalanced",
                weights=CostWeights(symmetry=0.0, hard_block=True, value_calibration=calibration),
                options=SolverOptions(reg=0.01, reg_m=reg_m))
    return res.target_mass / res.b


def test_fit_recovers_a_planted_line_despite_outliers():
    formulas, dft, measured, feats = _pairs(200, seed=1)
    measured[::10] += 5.0  # 10% mis-recorded measurements
    cal = fit_value_calibration(*_domains(formulas, dft, measured, feats))
    assert cal.slope == pytest.approx(1.5, abs=0.03)
    assert cal.intercept == pytest.approx(0.5, abs=0.08)
    assert cal.n_pairs == 200 and cal.n_measurements == 200


def test_each_measurement_counts_once_whatever_its_polymorph_count():
    # formula P has 9 DFT polymorphs far off the line; weighted 1/9 each they cannot drag it
    formulas, dft, measured, feats = _pairs(30, seed=2, noise=0.0)
    src_f = np.r_[formulas, ["P"] * 9]
    src_v = np.r_[dft, np.full(9, 0.0)]
    src = Domain(features=np.vstack([feats, np.zeros((9, 3))]), values=src_v, formulas=src_f,
                 ids=np.array([f"mp-{i}" for i in range(src_f.size)]))
    tgt = Domain(features=np.vstack([feats, np.zeros((1, 3))]), values=np.r_[measured, 8.0],
                 formulas=np.r_[formulas, ["P"]], ids=np.array([f"x:{i}" for i in range(31)]))
    cal = fit_value_calibration(src, tgt)
    assert cal.n_pairs == 39 and cal.n_measurements == 31
    assert cal.slope == pytest.approx(1.5, abs=1e-6)
    assert cal.intercept == pytest.approx(0.5, abs=1e-6)


def test_too_few_pairs_or_no_spread_give_the_identity():
    formulas, dft, measured, feats = _pairs(2, seed=3)
    cal = fit_value_calibration(*_domains(formulas, dft, measured, feats))
    assert (cal.slope, cal.intercept, cal.n_pairs) == (1.0, 0.0, 0)
    formulas, _, measured, feats = _pairs(10, seed=3)
    cal = fit_value_calibration(*_domains(formulas, np.full(10, 2.0), measured, feats))
    assert (cal.slope, cal.intercept) == (1.0, 0.0)


def test_planted_constant_and_proportional_shift_gives_no_outliers():
    src, tgt = _domains(*_pairs(150, seed=4))
    calibrated = _ratios(src, tgt, "linear", reg_m=0.5)
    raw = _ratios(src, tgt, "none", reg_m=0.5)
    assert np.sum(calibrated < 0.2) == 0
    assert np.all(calibrated > 0.8)
    # the raw cost reads the systematic shift as mismatch: the widest gaps get the least mass
    assert np.sum(raw < 0.2) >= 10
    wide = src.values > 5.0
    assert raw[wide].mean() < 0.5 * raw[~wide].mean()


def test_planted_outliers_are_still_found_after_calibration():
    formulas, dft, measured, feats = _pairs(200, seed=5)
    rng = np.random.default_rng(50)
    out = rng.choice(200, size=20, replace=False)
    measured[out] += rng.choice([-1.0, 1.0], size=20) * rng.uniform(4.0, 7.0, size=20)
    src, tgt = _domains(formulas, dft, measured, feats)
    ratio = _ratios(src, tgt, "linear", reg_m=0.5)
    flagged = ratio < 0.2
    truth = np.zeros(200, bool)
    truth[out] = True
    tp = int(np.sum(flagged & truth))
    assert tp / max(int(flagged.sum()), 1) >= 0.9  # precision
    assert tp / truth.sum() >= 0.9  # recall
    assert np.mean(ratio[~truth] > 0.8) >= 0.9


def test_calibration_feeds_the_offset_and_is_reported():
    formulas, dft, measured, feats = _pairs(60, seed=6, noise=0.0)
    src, tgt = _domains(formulas, dft, measured, feats)
    res = align(src, tgt, weights=CostWeights(value_calibration="linear"), options=SolverOptions(reg=0.01))
    assert res.value_calibration is not None
    np.testing.assert_allclose(src.values + res.source_offset, measured, atol=1e-6)
    plain = align(src, tgt, weights=CostWeights(value_calibration="none"), options=SolverOptions(reg=0.01))
    assert plain.value_calibration is None
    assert np.all(plain.source_offset == 0.0)


def test_unknown_calibration_is_rejected_by_name():
    with pytest.raises(ValueError, match="value_calibration must be one of none, linear, got 'isotonic'"):
        CostWeights(value_calibration="isotonic")


def test_pair_costs_are_the_same_numbers_in_any_chunk():
    from models.transport.penalties import pair_costs, standardise

    formulas, dft, measured, feats = _pairs(60, seed=4)
    src, tgt = _domains(formulas, dft, measured, feats)
    std = standardise(src, tgt)
    rng = np.random.default_rng(5)
    rows, cols = rng.integers(0, 60, 1000), rng.integers(0, 60, 1000)
    weights = CostWeights(symmetry=0.0, hard_block=True)
    whole = pair_costs(rows, cols, std=std, source=src, target=tgt, weights=weights, chunk=10_000)
    for chunk in (1, 7, 4096):
        parts = pair_costs(rows, cols, std=std, source=src, target=tgt, weights=weights, chunk=chunk)
        for key, value in whole.items():
            np.testing.assert_array_equal(parts[key], value)
    diff = std.zs[rows] - std.zt[cols]
    np.testing.assert_allclose(whole["descriptor"], (diff ** 2).mean(axis=1), rtol=1e-12)
