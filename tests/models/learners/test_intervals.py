"""Conformal intervals on synthetic heteroscedastic data: coverage, adaptivity, storage, refusals."""

import json

import numpy as np
import pytest

from models.learners import ConformalIntervals, IntervalConfig, StackConfig, out_of_fold


def data(n: int, seed: int, shift: float = 0.0):
    """y = 2 x0 + noise whose scale grows with |x1|; one formula per row."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 3)) + shift
    y = 2 * x[:, 0] + rng.normal(size=n) * (0.1 + 0.5 * np.abs(x[:, 1]))
    formulas = [f"F{seed}_{i}" for i in range(n)]
    return x, y, formulas


def linear_fit_predict(x_of):
    def fit_predict(formulas, y, test):
        a = np.column_stack([x_of(formulas), np.ones(len(formulas))])
        coef = np.linalg.lstsq(a, y, rcond=None)[0]
        return np.column_stack([x_of(test), np.ones(len(test))]) @ coef
    return fit_predict


@pytest.fixture(scope="module")
def calibrated():
    x, y, formulas = data(1500, 0)
    rows = {f: x[i] for i, f in enumerate(formulas)}
    fit_predict = linear_fit_predict(lambda fs: np.array([rows[f] for f in fs]))
    oof = out_of_fold(fit_predict, formulas, y, folds=5, seed=0)
    model = ConformalIntervals(IntervalConfig(coverage=0.9)).fit(x, formulas, y - oof)
    coef = np.linalg.lstsq(np.column_stack([x, np.ones(len(x))]), y, rcond=None)[0]
    return model, (lambda xx: np.column_stack([xx, np.ones(len(xx))]) @ coef)


def test_coverage_holds_on_new_data_and_widths_follow_the_noise(calibrated):
    model, predict = calibrated
    x, y, formulas = data(3000, 1)
    lower, upper = model.interval(predict(x), x, formulas)
    inside = (y >= lower) & (y <= upper)
    assert 0.87 <= inside.mean() <= 0.93
    width = upper - lower
    noisy = np.abs(x[:, 1]) > 1.5
    assert width[noisy].mean() > 1.5 * width[np.abs(x[:, 1]) < 0.5].mean()  # adaptive, not one width for all
    for level in (0.5, 0.8, 0.95):
        lo, hi = model.interval(predict(x), x, formulas, coverage=level)
        assert abs(((y >= lo) & (y <= hi)).mean() - level) < 0.04


def test_inputs_far_from_the_training_data_get_wider_intervals(calibrated):
    model, predict = calibrated
    near, _, f_near = data(200, 2)
    far, _, f_far = data(200, 3, shift=4.0)
    w_near = np.subtract(*model.interval(predict(near), near, f_near)[::-1])
    w_far = np.subtract(*model.interval(predict(far), far, f_far)[::-1])
    assert np.median(w_far) > 1.5 * np.median(w_near)


def test_round_trip_clamp_and_refusals(calibrated, tmp_path):
    model, predict = calibrated
    x, _, formulas = data(50, 4)
    model.save(tmp_path / "iv")
    loaded = ConformalIntervals.load(tmp_path / "iv")
    np.testing.assert_allclose(loaded.interval(predict(x), x, formulas), model.interval(predict(x), x, formulas))
    assert loaded.calibration_summary() == pytest.approx(model.calibration_summary())
    clamped = ConformalIntervals(IntervalConfig(), clamp_min=0.0)
    clamped.__dict__.update({k: v for k, v in model.__dict__.items() if k != "clamp_min"})
    assert (clamped.interval(np.full(len(x), -5.0), x, formulas)[0] >= 0).all()
    with pytest.raises(ValueError, match="coverage"):
        model.interval(predict(x), x, formulas, coverage=1.0)
    arrays = dict(np.load(tmp_path / "iv" / "calibration.npz"))
    arrays["residuals"] = arrays["residuals"] * 0.5
    np.savez(tmp_path / "iv" / "calibration.npz", **arrays)
    with pytest.raises(ValueError, match="sha256"):
        ConformalIntervals.load(tmp_path / "iv")
    with pytest.raises(ValueError, match="finite"):
        ConformalIntervals().fit(np.ones((3, 2)), ["A", "B", "C"], np.array([0.1, np.nan, 0.2]))
    with pytest.raises(ValueError, match="IntervalConfig"):
        IntervalConfig(folds=1)


def test_the_calibration_models_take_their_own_trees_and_rate_and_old_files_keep_the_stacked_models():
    served = StackConfig(trees=800, lr=0.03, bags=5, leaves=31)
    fast = IntervalConfig(bags=1, trees=400, lr=0.06).booster_config(served)
    assert (fast.bags, fast.trees, fast.lr, fast.leaves) == (1, 400, 0.06, 31)
    same = IntervalConfig(bags=2).booster_config(served)  # a file written before trees / lr existed reads as this
    assert (same.bags, same.trees, same.lr) == (2, 800, 0.03)
    with pytest.raises(ValueError, match=r"IntervalConfig\.trees must be >= 1"):
        IntervalConfig(trees=0)
    with pytest.raises(ValueError, match=r"IntervalConfig\.lr must be > 0"):
        IntervalConfig(lr=-0.1)


def _mixed(n_compounds: int, elements: list[str], seed: int):
    """Compounds with noise 0.3 and pure elements with noise 0.01 around a prediction of 0, in one descriptor cloud."""
    rng = np.random.default_rng(seed)
    formulas = [f"Na{i + 1}Cl" for i in range(n_compounds)] + elements
    residuals = np.r_[rng.normal(0, 0.3, n_compounds), rng.normal(0, 0.01, len(elements))]
    return rng.normal(size=(len(formulas), 3)), formulas, residuals


ELEMENTS = ["Fe", "Cu", "Al", "Ni", "Co", "Ti", "Zn", "Mg", "Ca", "K", "Na", "Li", "Cr", "Mn", "V", "Sc", "Ga",
            "Ge", "Sn", "Pb", "Bi", "Sb", "Ag", "Au", "Pt", "Pd", "Rh", "Ir", "Os", "Ru"]


@pytest.mark.filterwarnings("error::UserWarning")
def test_elements_apart_calibrates_pure_elements_on_their_own_residuals(tmp_path):
    """Mondrian categories: an element's interval comes from the elements' scatter, a compound's from the compounds'."""
    x, formulas, r = _mixed(600, ELEMENTS, 0)
    pooled = ConformalIntervals(IntervalConfig(coverage=0.9)).fit(x, formulas, r)
    apart = ConformalIntervals(IntervalConfig(coverage=0.9), elements_apart=True).fit(x, formulas, r)
    xq, fq, rq = _mixed(2000, ELEMENTS * 20, 1)
    element = np.array([f in ELEMENTS for f in fq])
    lo_p, hi_p = pooled.interval(np.zeros(len(fq)), xq, fq)
    lo_a, hi_a = apart.interval(np.zeros(len(fq)), xq, fq)
    # pooled: the elements get compound-sized intervals; apart: about 30x narrower, still covering them
    assert (hi_a - lo_a)[element].mean() < 0.1 * (hi_p - lo_p)[element].mean()
    assert ((rq >= lo_a) & (rq <= hi_a))[element].mean() >= 0.85
    # the compounds lose the elements' small scores from their calibration: a little wider, coverage nominal
    assert ((rq >= lo_a) & (rq <= hi_a))[~element].mean() == pytest.approx(0.9, abs=0.03)
    assert (hi_a - lo_a)[~element].mean() >= (hi_p - lo_p)[~element].mean()
    # bounds() with precomputed difficulties needs the formulas to pick the category
    sigma = apart.difficulty(xq, fq)
    with pytest.raises(ValueError, match="elements_apart needs the rows' formulas"):
        apart.bounds(np.zeros(len(fq)), sigma)
    np.testing.assert_allclose(apart.bounds(np.zeros(len(fq)), sigma, formulas=fq)[1], hi_a)
    # a level the 30 element rows cannot support (0.99 needs >= 99) falls back to the pooled calibration: finite
    lo99, hi99 = apart.interval(np.zeros(len(fq)), xq, fq, coverage=0.99)
    assert np.isfinite(lo99).all() and np.isfinite(hi99).all()
    np.testing.assert_allclose(hi99[element], pooled.interval(np.zeros(len(fq)), xq, fq, coverage=0.99)[1][element])
    assert apart.calibration_summary()["n_calibration_elements"] == 30
    # the edge as crepes computes it (in floats): 4 element rows are too few at 0.8 (pooled bounds, finite,
    # no crepes warning: the module runs with warnings as errors), 5 are enough (their own, narrower)
    for n_el, own in ((4, False), (5, True)):
        rows = slice(0, 600 + n_el)
        apart_n = ConformalIntervals(IntervalConfig(coverage=0.8), elements_apart=True).fit(x[rows], formulas[rows], r[rows])
        pooled_n = ConformalIntervals(IntervalConfig(coverage=0.8)).fit(x[rows], formulas[rows], r[rows])
        hi_own = apart_n.interval(np.zeros(len(fq)), xq, fq)[1][element]
        hi_pooled = pooled_n.interval(np.zeros(len(fq)), xq, fq)[1][element]
        assert np.isfinite(hi_own).all()
        assert (hi_own.mean() < 0.5 * hi_pooled.mean()) if own else np.allclose(hi_own, hi_pooled)
    # stored and loaded with its categories; a file without the key (older) loads pooled
    apart.save(tmp_path / "iv")
    np.testing.assert_allclose(ConformalIntervals.load(tmp_path / "iv").interval(np.zeros(len(fq)), xq, fq)[1], hi_a)
    pooled.save(tmp_path / "old")
    meta = json.loads((tmp_path / "old" / "intervals.json").read_text())
    del meta["elements_apart"]
    (tmp_path / "old" / "intervals.json").write_text(json.dumps(meta))
    assert ConformalIntervals.load(tmp_path / "old").elements_apart is False


def test_a_nearly_constant_column_cannot_blow_an_interval_up(calibrated):
    """A column constant but for one rounding error among the calibration rows (std ~1e-7) stays bounded.

    The evaluate stage met it: Magpie's ``mode GSmagmom`` was 0 in a training part but for one row
    at 1e-5, so a query with 2.1 in it stood millions of standard deviations away (22,000 eV wide).
    """
    model, predict = calibrated
    x, _, formulas = data(200, 5)
    base_lo, base_hi = model.interval(predict(x), x, formulas)
    # the same calibration with a fourth column: 0 everywhere but one row at 1e-5
    rng = np.random.default_rng(0)
    xc, _, fc = data(1500, 0)
    resid = model.residuals_
    col = np.zeros(len(xc))
    col[rng.integers(len(xc))] = 1e-5
    wide = ConformalIntervals(IntervalConfig(coverage=0.9)).fit(np.column_stack([xc, col]), fc, resid)
    queries = np.column_stack([x, np.full(len(x), 2.1)])  # every query differs in that column
    lo, hi = wide.interval(predict(x), queries, formulas)
    width, base = hi - lo, base_hi - base_lo
    assert np.isfinite(width).all()
    # wider (the column is new to them), but by a bounded factor: a clipped z of 10 against 5-NN distances of
    # about 0.2 in this 3-column cloud, to the power 0.75 (in the 146 descriptor columns distances are larger)
    assert (width > base).all() and np.median(width / base) < 50
    unclipped = ConformalIntervals(IntervalConfig(coverage=0.9, max_z=1e12)).fit(np.column_stack([xc, col]), fc, resid)
    lo_u, hi_u = unclipped.interval(predict(x), queries, formulas)
    assert np.median((hi_u - lo_u) / base) > 1e4  # the failure the clip prevents
    # a query equal to the calibration rows in that column is unaffected by it
    lo0, hi0 = wide.interval(predict(x), np.column_stack([x, np.zeros(len(x))]), formulas)
    np.testing.assert_allclose(hi0 - lo0, base, rtol=0.05)
    with pytest.raises(ValueError, match="max_z"):
        IntervalConfig(max_z=0)
