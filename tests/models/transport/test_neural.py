"""Input-convex networks and the neural OT map (models/transport/neural.py) against closed forms and properties."""

from __future__ import annotations

import argparse
import json

import numpy as np
import pandas as pd
import pytest
import torch
from scipy.linalg import sqrtm

from models.transport import (
    ICNN,
    AlignmentError,
    CalibrationMap,
    CostWeights,
    Domain,
    DualConfig,
    MapFileError,
    NeuralAlignConfig,
    SolverOptions,
    align,
    fit_calibration_map,
    fit_dual,
    load_map,
    save_map,
)

torch.set_num_threads(1)


def gaussian_problem(d: int, seed: int):
    """Two random Gaussians and the closed-form OT map T(x) = m_t + A (x - m_s)."""
    rng = np.random.default_rng(seed)

    def cov():
        q = rng.normal(size=(d, d))
        return q @ q.T / d + 0.3 * np.eye(d)

    ss, st = cov(), cov()
    ms, mt = rng.normal(size=d), rng.normal(size=d) + 2.0
    r = np.real(sqrtm(ss))
    ri = np.linalg.inv(r)
    a = ri @ np.real(sqrtm(r @ st @ r)) @ ri
    return ms, ss, mt, st, a


@pytest.fixture(scope="module")
def gaussian_2d():
    ms, ss, mt, st, a = gaussian_problem(2, seed=0)
    rng = np.random.default_rng(1)
    xs = rng.multivariate_normal(ms, ss, size=2000)
    xt = rng.multivariate_normal(mt, st, size=2000)
    nmap = fit_dual(xs, xt, config=DualConfig(hidden=(32, 32), iterations=200, inner_steps=5, seed=0))
    return nmap, (ms, ss, mt, st, a)


def _relative_mse(nmap, problem, n=3000, seed=7):
    ms, ss, mt, st, a = problem
    x = np.random.default_rng(seed).multivariate_normal(ms, ss, size=n)
    true = mt + (x - ms) @ a.T
    shift_only = ((x - ms + mt - true) ** 2).sum(axis=1).mean() / np.trace(st)
    return ((nmap(x) - true) ** 2).sum(axis=1).mean() / np.trace(st), shift_only


def test_gaussian_2d_map_matches_closed_form(gaussian_2d):
    nmap, problem = gaussian_2d
    rel, shift_only = _relative_mse(nmap, problem)
    assert shift_only > 0.05  # matching the means alone would fail: the covariance must be learned
    assert rel < 0.05
    assert nmap.g.min_convex_weight() >= 0.0


def test_gaussian_16d_map_matches_closed_form():
    # the fast version for CI; benchmarks/neural_map.py runs the full one (more samples and steps)
    problem = gaussian_problem(16, seed=0)
    ms, ss, mt, st, _ = problem
    rng = np.random.default_rng(1)
    xs = rng.multivariate_normal(ms, ss, size=2000)
    xt = rng.multivariate_normal(mt, st, size=2000)
    nmap = fit_dual(xs, xt, config=DualConfig(hidden=(32, 32), iterations=150, inner_steps=4, seed=0))
    rel, shift_only = _relative_mse(nmap, problem)
    assert shift_only > 0.05
    assert rel < 0.05


def test_map_is_monotone_on_all_sampled_pairs(gaussian_2d):
    nmap, (ms, ss, *_) = gaussian_2d
    x = np.random.default_rng(3).multivariate_normal(ms, ss * 4.0, size=300)  # also outside the data
    t = nmap(x)
    inner = np.einsum("ijk,ijk->ij", t[:, None] - t[None], x[:, None] - x[None])
    assert inner.min() >= -1e-6 * np.abs(inner).max()


def _jensen_gap(model, x, y, lam, cond=None):
    xm = lam[:, None] * x + (1 - lam[:, None]) * y
    with torch.no_grad():
        return (lam * model(x, cond) + (1 - lam) * model(y, cond) - model(xm, cond)).numpy()


@pytest.mark.parametrize("activation", ["softplus", "celu", "leaky_relu"])
@pytest.mark.parametrize("cond_dim", [0, 3])
def test_potential_is_convex_on_random_segments(activation, cond_dim):
    torch.manual_seed(0)
    model = ICNN(4, hidden=(16, 16, 16), cond_dim=cond_dim, activation=activation).double()
    with torch.no_grad():  # a trained-looking network: larger weights, projected to stay convex
        for p in model.parameters():
            p.add_(torch.randn_like(p))
    model.project()
    gen = torch.Generator().manual_seed(1)
    x, y = torch.randn(2000, 4, generator=gen, dtype=torch.float64) * 3, torch.randn(2000, 4, generator=gen,
                                                                                    dtype=torch.float64) * 3
    lam = torch.rand(2000, generator=gen, dtype=torch.float64)
    cond = torch.randn(2000, cond_dim, generator=gen, dtype=torch.float64) if cond_dim else None
    gap = _jensen_gap(model, x, y, lam, cond)
    assert gap.min() >= -1e-9
    assert model.min_convex_weight() >= 0.0


def test_jensen_check_detects_a_non_convex_network():
    torch.manual_seed(0)
    model = ICNN(2, hidden=(16, 16), quadratic=False).double()
    with torch.no_grad():
        model.hidden_weights[0].fill_(-2.0)  # negative hidden weights break convexity
        model.out_weight.fill_(1.0)
    gen = torch.Generator().manual_seed(1)
    x, y = (torch.randn(2000, 2, generator=gen, dtype=torch.float64) * 3 for _ in range(2))
    lam = torch.rand(2000, generator=gen, dtype=torch.float64)
    assert _jensen_gap(model, x, y, lam).min() < -1e-3
    assert model.min_convex_weight() < 0


def test_save_load_roundtrip_and_tampering(gaussian_2d, tmp_path):
    nmap, (ms, ss, *_) = gaussian_2d
    save_map(nmap, tmp_path / "m", arrays={"extra_array": np.arange(3.0)}, extra={"note": "x"})
    loaded, arrays, extra = load_map(tmp_path / "m")
    x = np.random.default_rng(0).multivariate_normal(ms, ss, size=50)
    np.testing.assert_array_equal(loaded(x), nmap(x))
    np.testing.assert_array_equal(arrays["extra_array"], np.arange(3.0))
    assert extra == {"note": "x"}
    weights = tmp_path / "m" / "map.pt"
    data = bytearray(weights.read_bytes())
    data[len(data) // 2] ^= 0xFF
    weights.write_bytes(bytes(data))
    with pytest.raises(MapFileError, match="does not match the sha256"):
        load_map(tmp_path / "m")
    with pytest.raises(MapFileError, match="no neural map config"):
        load_map(tmp_path / "missing")


def test_load_rejects_a_non_convex_map(gaussian_2d, tmp_path):
    nmap, _ = gaussian_2d
    bad = type(nmap)(g=ICNN(2, hidden=(32, 32)), mu_s=nmap.mu_s, mu_t=nmap.mu_t, scale=nmap.scale)
    bad.g.load_state_dict(nmap.g.state_dict())
    with torch.no_grad():
        bad.g.hidden_weights[0][0, 0] = -1.0
    save_map(bad, tmp_path / "bad")
    with pytest.raises(MapFileError, match="not convex"):
        load_map(tmp_path / "bad")


def test_bad_inputs_are_refused_with_a_message():
    with pytest.raises(ValueError, match=r"\(n, d\) and \(m, d\)"):
        fit_dual(np.zeros((5, 2)), np.zeros((5, 3)))
    with pytest.raises(ValueError, match="finite"):
        fit_dual(np.array([[0.0], [np.nan]]), np.zeros((3, 1)))
    with pytest.raises(ValueError, match="for both source and target"):
        fit_dual(np.zeros((5, 1)), np.ones((5, 1)), source_cond=np.zeros((5, 2)))
    with pytest.raises(ValueError, match="unknown activation 'relu'"):
        DualConfig(activation="relu")
    model = ICNN(1, cond_dim=2)
    with pytest.raises(ValueError, match="needs cond of shape"):
        model(torch.zeros(3, 1))


# ----------------------------------------------------------------------------- conditional calibration


def _chemistry(n_formulas: int, seed: int):
    """Formulas with descriptors; measured = 1.3 * DFT + 0.4 * d0 + 0.3 (+ noise)."""
    rng = np.random.default_rng(seed)
    formulas = np.array([f"F{i}" for i in range(n_formulas)])
    desc = rng.normal(size=(n_formulas, 5))
    dft = np.abs(rng.gamma(2.0, 0.8, size=n_formulas))
    meas = 1.3 * dft + 0.4 * desc[:, 0] + 0.3 + rng.normal(scale=0.05, size=n_formulas)
    return formulas, desc, dft, meas


@pytest.fixture(scope="module")
def calibration():
    formulas, desc, dft, meas = _chemistry(300, seed=0)
    train = np.arange(300) < 220  # formulas 220.. are measured but never shown to the fit
    cfg = NeuralAlignConfig(pca_components=4, dual=DualConfig(hidden=(16, 16), cond_hidden=16, iterations=400,
                                                              inner_steps=3, batch_size=128, seed=0))
    cal = fit_calibration_map(dft, desc, formulas, meas[train], desc[train], formulas[train], config=cfg)
    return cal, (formulas, desc, dft, meas, train)


def test_calibration_extends_to_unmeasured_formulas(calibration):
    cal, (_, desc, dft, meas, train) = calibration
    out, conf = cal.calibrate(dft[~train], desc[~train])
    raw = np.abs(dft[~train] - meas[~train]).mean()
    mae = np.abs(out - meas[~train]).mean()
    assert raw > 0.5
    assert mae < 0.35 * raw
    assert np.all((conf > 0) & (conf <= 1))
    _, conf_in = cal.calibrate(dft[train][:10], desc[train][:10])
    np.testing.assert_allclose(conf_in, 1.0)  # training chemistry: full confidence


def test_calibration_is_monotone_per_composition(calibration):
    cal, (_, desc, *_) = calibration
    values = np.linspace(0.0, 6.0, 61)
    for row in desc[:20]:
        out, _ = cal.calibrate(values, np.repeat(row[None], values.size, axis=0))
        assert np.all(np.diff(out) >= -1e-6)


def test_calibration_map_saves_and_loads(calibration, tmp_path):
    cal, (_, desc, dft, *_) = calibration
    cal.save(tmp_path / "cal", extra={"property": "band_gap"})
    loaded, extra = CalibrationMap.load(tmp_path / "cal")
    assert extra["property"] == "band_gap"
    np.testing.assert_array_equal(loaded.calibrate(dft, desc)[0], cal.calibrate(dft, desc)[0])
    save_map(cal.nmap, tmp_path / "plain")
    with pytest.raises(MapFileError, match="not a DFT calibration map"):
        CalibrationMap.load(tmp_path / "plain")
    with pytest.raises(ValueError, match="non-finite DFT values"):
        cal.calibrate(np.array([np.nan]), desc[:1])
    with pytest.raises(ValueError, match=r"descriptors of shape \(n, 5\)"):
        cal.calibrate(np.array([1.0]), np.zeros((1, 3)))


def test_align_neural_formulation_calibrates_every_source_entry():
    formulas, desc, dft, meas = _chemistry(120, seed=1)
    n_meas = 80  # 40 DFT formulas have no measurement: they still get a calibrated target
    src = Domain(features=desc, values=dft, formulas=formulas, ids=np.array([f"mp-{i}" for i in range(120)]))
    tgt = Domain(features=desc[:n_meas], values=meas[:n_meas], formulas=formulas[:n_meas],
                 ids=np.array([f"e{i}" for i in range(n_meas)]))
    cfg = NeuralAlignConfig(pca_components=3, dual=DualConfig(hidden=(16, 16), cond_hidden=16, iterations=250,
                                                               inner_steps=3, batch_size=64))
    res = align(src, tgt, method="neural", weights=CostWeights(hard_block=True),
                options=SolverOptions(neural=cfg))
    targets, conf = res.calibrated_targets(tgt.values, fallback=src.values)
    assert targets.shape == (120,)
    assert np.all(np.isfinite(targets)) and np.all((conf >= 0) & (conf <= 1))
    assert np.abs(targets[n_meas:] - meas[n_meas:]).mean() < 0.5 * np.abs(dft[n_meas:] - meas[n_meas:]).mean()
    assert np.all(formulas[res.plan.row] == tgt.formulas[res.plan.col])  # the hard block holds
    assert res.plan.nnz == n_meas  # one projected pair per source row with a measured counterpart
    assert res.artifact is not None and res.info["train_formulas"] == n_meas
    with pytest.raises(AlignmentError, match="does not combine with energy_additivity"):
        align(src, tgt, method="neural", energy_additivity=True, options=SolverOptions(neural=cfg))


def test_align_stage_writes_and_reuses_the_neural_map(tmp_path):
    from models.transport import CalibrationMap as Cal
    from pipeline import align as stage
    from tests.data import align_inputs, align_params

    align_inputs(tmp_path)
    neural = {"pca_components": 3, "hidden": [16, 16], "cond_hidden": 16, "iterations": 200, "inner_steps": 3,
              "batch_size": 64}
    params = align_params(tmp_path, method="neural", neural=neural)
    assert stage.run(argparse.Namespace(params=params, property="band_gap")) == 0
    out = tmp_path / "aligned" / "band_gap"
    dft = pd.read_parquet(out / "dft.parquet")
    diag = json.loads((out / "align.json").read_text())
    assert diag["method"] == "neural" and diag["solver_info"]["train_formulas"] > 10
    assert diag["ot_distance_after"] < diag["ot_distance_before"]
    assert (dft["calibrated_target"] >= 0).all() and dft["confidence"].between(0, 1).all()
    cal, extra = Cal.load(out / "neural_map")
    assert extra["property"] == "band_gap" and extra["descriptor_columns"] == [f"d{i}" for i in range(6)]
    desc = pd.read_parquet(tmp_path / "features" / "descriptors.parquet").set_index("formula")
    again, _ = cal.calibrate(dft["dft_value"].to_numpy(), desc.loc[dft["formula"]].to_numpy())
    np.testing.assert_allclose(again, dft["calibrated_target"], rtol=1e-6, atol=1e-6)
    # PBE gaps were planted at 0.6 x measured: the calibrated targets are closer to the measurements
    exp = pd.read_parquet(out / "experiment.parquet").groupby("formula")["value"].mean()
    j = dft.groupby("formula")[["dft_value", "calibrated_target"]].mean().join(exp, how="inner")
    assert (j["calibrated_target"] - j["value"]).abs().mean() < 0.5 * (j["dft_value"] - j["value"]).abs().mean()


def test_neural_params_are_validated(tmp_path):
    from pipeline.config import ConfigError, load_section
    from pipeline.params.align import AlignParams
    from tests.data import align_params

    with pytest.raises(ConfigError, match=r"align.neural.hiden: unknown key"):
        load_section(AlignParams, "align", align_params(tmp_path, neural={"hiden": [8]}))
    with pytest.raises(ConfigError, match=r"align.neural: lr must be > 0"):
        load_section(AlignParams, "align", align_params(tmp_path, neural={"lr": 0.0}))


class _FakeEnsemble:
    """Stands in for models.serving.EnsemblePredictor: fixed descriptors, zero predictions."""

    def __init__(self, descriptors: pd.DataFrame):
        self.descriptors = descriptors
        self.meta = {"property": "band_gap"}
        self.uses_graphs = False
        self.intervals = None
        self.extra_fidelities = []  # no stacked model: no other DFT fidelities
        self.dft_reference = None  # ... and no DFT references of its own

    def extra_lookup(self, formulas) -> dict:
        return {}

    def descriptors_for(self, formulas) -> pd.DataFrame:
        return self.descriptors

    def predict(self, frame: pd.DataFrame, graphs=None, coverage=None) -> pd.DataFrame:
        return pd.DataFrame({"prediction": np.zeros(len(frame)), "bag_spread": np.zeros(len(frame))})


def test_predictor_calibrates_dft_values_with_the_saved_map(calibration, tmp_path):
    from featurizers.inputs import ParsedInput
    from models.serving import ModelNotFoundError, Predictor
    from models.serving.predictor import calibration_map

    cal, (formulas, desc, dft, meas, _) = calibration
    table = pd.DataFrame(desc, columns=[f"d{i}" for i in range(5)])
    table.insert(0, "formula", formulas)
    cal.save(tmp_path / "neural_map", extra={"descriptor_columns": [f"d{i}" for i in range(5)]})
    loaded = calibration_map(tmp_path / "neural_map", table)
    # F250 was never aligned nor measured in the fit; F5 has no DFT value in the lookup
    lookup = pd.DataFrame({"material_id": ["mp-250", "mp-3"], "dft_value": [dft[250], dft[3]],
                           "structure_id": [None, None]},
                          index=pd.Index(["F250", "F3"], name="formula"))
    pred = Predictor(_FakeEnsemble(table), property="band_gap", dft=lookup, calibration=loaded)
    out = pred.predict([ParsedInput(f, "formula", f) for f in ("F250", "F3", "F5")])
    expected, _ = cal.calibrate(dft[[250, 3]], desc[[250, 3]])
    np.testing.assert_allclose(out["calibrated_dft"].to_numpy()[:2], expected)
    assert abs(out["calibrated_dft"][0] - meas[250]) < abs(dft[250] - meas[250])
    assert np.isnan(out["calibrated_dft"][2])
    assert calibration_map(tmp_path / "nothing", table) is None
    with pytest.raises(ModelNotFoundError, match="other descriptor columns"):
        calibration_map(tmp_path / "neural_map", table.rename(columns={"d0": "x0"}))


def test_neural_needs_formulas_on_both_sides():
    rng = np.random.default_rng(0)
    src = Domain(features=rng.normal(size=(6, 3)), values=rng.random(6), formulas=np.array(["A", "B"] * 3),
                 ids=np.array([f"s{i}" for i in range(6)]))
    tgt = Domain(features=rng.normal(size=(4, 3)), values=rng.random(4), formulas=np.array(["C", "D"] * 2),
                 ids=np.array([f"t{i}" for i in range(4)]))
    with pytest.raises(AlignmentError, match="both computed and measured; found 0"):
        align(src, tgt, method="neural", weights=CostWeights(hard_block=False, mass=0.0, symmetry=0.0))


def test_training_is_reproducible_for_a_seed():
    rng = np.random.default_rng(0)
    xs, xt = rng.normal(size=(200, 3)), rng.normal(size=(200, 3)) * 2 + 1
    cfg = DualConfig(hidden=(8, 8), iterations=20, inner_steps=2, batch_size=32, seed=3)
    a, b = fit_dual(xs, xt, config=cfg), fit_dual(xs, xt, config=cfg)
    c = fit_dual(xs, xt, config=DualConfig(hidden=(8, 8), iterations=20, inner_steps=2, batch_size=32, seed=4))
    np.testing.assert_array_equal(a(xs), b(xs))
    assert not np.allclose(a(xs), c(xs))
