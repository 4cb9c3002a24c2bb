"""The OT shift field: per-formula calibration shifts extended by nearest neighbours, never a formula's own."""

import numpy as np
import pandas as pd
import pytest

from models.learners import ShiftField


def _world(n: int = 60, seed: int = 0):
    rng = np.random.default_rng(seed)
    formulas = [f"F{i}" for i in range(n)]
    desc = pd.DataFrame({"formula": formulas, "a": rng.normal(size=n), "b": rng.normal(size=n)})
    entries = np.repeat(formulas, 2)  # two DFT polymorphs per formula
    a = desc.set_index("formula").loc[entries, "a"].to_numpy()
    dft = rng.normal(size=entries.size)
    return formulas, desc, entries, dft, a


def test_field_recovers_a_smooth_shift_and_leaves_the_own_formula_out():
    formulas, desc, entries, dft, a = _world()
    calibrated = dft + 2.0 * a  # experiment = DFT + 2a: a shift that varies smoothly with composition
    field = ShiftField.fit(entries, dft, calibrated, np.ones(entries.size), desc, k=4)
    pred = field.predict(desc, formulas)
    truth = 2.0 * desc["a"].to_numpy()
    assert np.corrcoef(pred, truth)[0, 1] > 0.9
    # leave-own-formula-out: planting a huge shift on one formula changes every prediction but its own
    spiked = calibrated.copy()
    spiked[entries == "F7"] += 100.0
    spiked_field = ShiftField.fit(entries, dft, spiked, np.ones(entries.size), desc, k=4)
    moved = spiked_field.predict(desc, formulas)
    assert moved[7] == pytest.approx(pred[7], abs=1e-12)
    neighbours_of_7 = np.flatnonzero(np.abs(moved - pred) > 1.0)
    assert 1 <= neighbours_of_7.size < len(formulas) and 7 not in neighbours_of_7


def test_unaligned_entries_are_left_out_and_confidence_weights_polymorphs():
    _, desc, entries, dft, _ = _world()
    calibrated = dft + 1.0
    confidence = np.ones(entries.size)
    calibrated[1::2] = dft[1::2] + 5.0  # second polymorph of every formula disagrees ...
    confidence[1::2] = 0.25  # ... with a quarter of the first's transported mass
    confidence[:10] = 0.0  # formulas F0..F4 were not transported at all
    field = ShiftField.fit(entries, dft, calibrated, confidence, desc, k=3)
    assert set(field.formulas) == {f"F{i}" for i in range(5, 60)}
    np.testing.assert_allclose(field.shifts, (1.0 * 1.0 + 5.0 * 0.25) / 1.25)
    # a composition that was never aligned still gets its neighbours' shift
    assert field.predict(desc, ["F0"])[0] == pytest.approx(1.8)


def test_save_load_round_trip_and_bad_input(tmp_path):
    formulas, desc, entries, dft, a = _world()
    field = ShiftField.fit(entries, dft, dft + a, np.ones(entries.size), desc)
    back = ShiftField.load(field.save(tmp_path / "field"))
    np.testing.assert_array_equal(back.predict(desc, formulas), field.predict(desc, formulas))
    with pytest.raises(ValueError, match=r"no descriptors for 1 formulas, e\.g\. 'Unobtainium'"):
        field.predict(desc, ["Unobtainium"])
    with pytest.raises(ValueError, match="need more than k=5 aligned formulas"):
        ShiftField.fit(entries[:6], dft[:6], dft[:6], np.ones(6), desc)
    (tmp_path / "field" / "shift_field.json").write_text('{"format": "something else"}')
    with pytest.raises(ValueError, match="unsupported format_version None"):
        ShiftField.load(tmp_path / "field")
