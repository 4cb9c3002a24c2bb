import numpy as np
import pandas as pd
import pytest

from models.learners import DescriptorForest, LinearCalibration, RawDFT, mae


def test_linear_calibration_recovers_planted_line():
    rng = np.random.default_rng(0)
    d = rng.uniform(0, 5, 200)
    y = 1.3 * d + 0.7
    d_with_gaps = d.copy()
    d_with_gaps[:10] = np.nan  # rows without a DFT value are ignored in the fit
    cal = LinearCalibration().fit(d_with_gaps, y)
    assert cal.a_ == pytest.approx(1.3) and cal.b_ == pytest.approx(0.7)
    assert cal.predict(np.array([2.0, np.nan])) == pytest.approx([3.3, np.mean(y)])
    assert LinearCalibration(clamp_min=0.0).fit(d, y).predict(np.array([-5.0]))[0] == 0.0
    with pytest.raises(ValueError, match="need >= 2 training rows"):
        LinearCalibration().fit(np.array([np.nan, 1.0]), np.array([1.0, 2.0]))


def test_raw_dft_and_mae():
    raw = RawDFT().fit(np.array([1.0, np.nan]), np.array([2.0, 4.0]))
    assert raw.predict(np.array([1.5, np.nan])).tolist() == [1.5, 3.0]
    assert mae(np.array([1.0, 2.0]), np.array([2.0, 0.0])) == pytest.approx(1.5)
    with pytest.raises(ValueError, match="non-finite"):
        mae(np.array([1.0]), np.array([np.nan]))


def test_descriptor_forest_learns_and_names_missing_formulas():
    rng = np.random.default_rng(0)
    formulas = [f"X{i}" for i in range(120)]
    desc = pd.DataFrame({"formula": formulas, "a": rng.normal(size=120), "b": rng.normal(size=120)})
    y = 2.0 * desc["a"].to_numpy()
    rf = DescriptorForest(n_estimators=50, seed=0).fit(desc, formulas[:100], y[:100])
    err = mae(y[100:], rf.predict(desc, formulas[100:]))
    assert err < 0.5 * mae(y[100:], np.full(20, y[:100].mean()))
    with pytest.raises(ValueError, match=r"no descriptors for 1 formulas, e\.g\. 'Nope'"):
        rf.predict(desc, ["Nope"])
