"""Formulations of models.transport against POT and planted structure."""

from __future__ import annotations

import math

import numpy as np
import ot
import pytest

from models.transport import (
    FORMULATIONS,
    AlignmentError,
    CostWeights,
    Domain,
    SolverOptions,
    align,
    dense_support,
    fraction_matrix,
    sparse_sinkhorn,
    unbalanced_objective,
)


def _cloud(rng, n, m, d=4, shift=0.3):
    x = rng.normal(size=(n, d))
    y = rng.normal(size=(m, d)) + shift
    M = ot.dist(x, y)
    return x, y, M / M.max()


def _domain(feat, values, formulas=None, prefix="s", **kw):
    n = len(values)
    formulas = np.array(formulas if formulas is not None else ["X"] * n)
    return Domain(features=feat, values=np.asarray(values, float), formulas=formulas,
                  ids=np.array([f"{prefix}{i}" for i in range(n)]), **kw)


@pytest.mark.parametrize(("reg", "reg_m"), [(0.05, 1.0), (0.01, 0.5), (0.1, 10.0)])
def test_unbalanced_matches_pot(reg, reg_m):
    rng = np.random.default_rng(1)
    n, m = 150, 120
    _, _, M = _cloud(rng, n, m)
    a, b = np.full(n, 1 / n), np.full(m, 1 / m)
    P = ot.unbalanced.sinkhorn_unbalanced(a, b, M, reg, reg_m, numItermax=200000, stopThr=1e-13)
    r, c = dense_support(n, m)
    ref = unbalanced_objective(P.ravel(), r, c, M.ravel(), a, b, reg=reg, reg_m=reg_m)
    res = sparse_sinkhorn(a, b, r, c, M.ravel(), reg=reg, reg_m=reg_m, tol=1e-12)
    assert res.converged
    assert res.objective == pytest.approx(ref, rel=1e-6)
    dense = np.zeros((n, m))
    dense[res.rows, res.cols] = res.plan  # pairs with kernel < e^-30 were pruned
    np.testing.assert_allclose(dense, P, atol=1e-9)


def test_objective_formula_is_pots_plus_generalised_kl_mass_terms():
    rng = np.random.default_rng(2)
    n, m, reg, reg_m = 40, 30, 0.1, 1.0
    _, _, M = _cloud(rng, n, m)
    a, b = np.full(n, 1 / n), np.full(m, 1 / m)
    P, log = ot.unbalanced.sinkhorn_unbalanced(a, b, M, reg, reg_m, log=True)
    r, c = dense_support(n, m)
    mine = unbalanced_objective(P.ravel(), r, c, M.ravel(), a, b, reg=reg, reg_m=reg_m)
    # POT's total_cost omits the -p + q terms of the generalised KL
    mass = reg * (a.sum() * b.sum() - P.sum()) + reg_m * (2 * -P.sum() + a.sum() + b.sum())
    assert mine == pytest.approx(float(log["total_cost"]) + mass, rel=1e-9)


def test_balanced_entropic_cost_approaches_emd():
    rng = np.random.default_rng(3)
    n, m = 200, 150
    _, _, M = _cloud(rng, n, m)
    a, b = np.full(n, 1 / n), np.full(m, 1 / m)
    exact = ot.emd2(a, b, M)
    r, c = dense_support(n, m)
    gaps = []
    for reg in (1e-1, 1e-2, 1e-3):
        res = sparse_sinkhorn(a, b, r, c, M.ravel(), reg=reg, tol=1e-9)
        assert res.converged
        gaps.append((res.linear_cost - exact) / exact)
    assert gaps[0] > gaps[1] > gaps[2] >= -1e-9
    assert gaps[2] < 0.01


def test_small_reg_stays_finite():
    rng = np.random.default_rng(4)
    n, m = 200, 150
    _, _, M = _cloud(rng, n, m)
    a, b = np.full(n, 1 / n), np.full(m, 1 / m)
    r, c = dense_support(n, m)
    res = sparse_sinkhorn(a, b, r, c, M.ravel(), reg=1e-3, reg_m=1.0, tol=1e-8)
    assert res.converged
    assert np.all(np.isfinite(res.plan)) and math.isfinite(res.objective)
    # plain-domain POT underflows at this reg; ours still moves most of the mass
    assert 0.5 < res.plan.sum() <= 1.0 + 1e-9


def test_planted_outliers_get_little_mass():
    rng = np.random.default_rng(5)
    n, m = 300, 200
    xs = rng.normal(size=(n, 3))
    vs = rng.normal(size=n)
    xt = rng.normal(size=(m, 3))
    vt = rng.normal(size=m)
    out = rng.choice(m, size=m // 10, replace=False)
    xt[out] += 12.0  # planted outliers: far from every DFT entry
    src, tgt = _domain(xs, vs), _domain(xt, vt, prefix="t")
    res = align(src, tgt, method="unbalanced", weights=CostWeights(symmetry=0.0, mass=0.0, hard_block=False),
                options=SolverOptions(reg=0.01, reg_m=2.0))
    ratio = res.target_mass / res.b
    flagged = ratio < 0.2
    truth = np.zeros(m, bool)
    truth[out] = True
    assert np.all(ratio[out] < 0.2)
    inl = ~truth
    assert np.mean(ratio[inl] > 0.8) >= 0.9
    tp = np.sum(flagged & truth)
    assert tp / max(flagged.sum(), 1) >= 0.9 and tp / truth.sum() >= 0.9


def test_hard_block_moves_no_mass_across_compositions():
    rng = np.random.default_rng(6)
    fs = rng.choice(["NaCl", "MgO", "GaAs", "Si"], size=60)
    ft = rng.choice(["NaCl", "MgO", "GaAs", "ZnO"], size=40)
    src = _domain(rng.normal(size=(60, 3)), rng.normal(size=60), fs)
    tgt = _domain(rng.normal(size=(40, 3)), rng.normal(size=40), ft, prefix="t")
    for method in ("unbalanced", "balanced", "partial", "aot"):
        res = align(src, tgt, method=method, weights=CostWeights(hard_block=True),
                    options=SolverOptions(reg=0.05, aot_price=2.0))
        assert res.mass_moved > 0, method
        assert np.all(fs[res.plan.row] == ft[res.plan.col]), method
    res = align(src, tgt, method="unbalanced")
    assert res.source_mass[fs == "Si"].sum() == 0.0
    assert res.target_mass[ft == "ZnO"].sum() == 0.0


def test_soft_mass_penalty_prefers_same_composition():
    rng = np.random.default_rng(7)
    fs = np.array(["NaCl"] * 20 + ["MgO"] * 20)
    ft = np.array(["NaCl"] * 10 + ["MgO"] * 10)
    fr_s, els = fraction_matrix(fs)
    fr_t, _ = fraction_matrix(ft, els)
    src = _domain(rng.normal(size=(40, 2)), np.zeros(40), fs, fractions=fr_s, elements=els)
    tgt = _domain(rng.normal(size=(20, 2)), np.zeros(20), ft, prefix="t", fractions=fr_t, elements=els)
    res = align(src, tgt, weights=CostWeights(mass=5.0, hard_block=False), options=SolverOptions(reg=0.05))
    same = fs[res.plan.row] == ft[res.plan.col]
    assert res.plan.data[same].sum() > 0.99 * res.mass_moved


def test_energy_additivity_recovers_planted_corrections():
    rng = np.random.default_rng(8)
    comps = ["Li2O", "Na2O", "MgO", "CaO", "LiF", "NaF", "MgF2", "CaF2", "Al2O3", "AlF3", "LiCl",
             "NaCl", "MgCl2", "CaCl2", "AlCl3", "Li3N", "Mg3N2", "AlN", "Ca3N2", "Na3N"]
    mu_true = {"O": -0.30, "F": 0.15, "Cl": -0.10, "N": 0.25, "Li": 0.05, "Na": -0.05, "Mg": 0.1,
               "Ca": -0.12, "Al": 0.08}
    fs = np.repeat(comps, 3)
    fr_s, els = fraction_matrix(fs)
    dft = rng.uniform(-3, -0.5, size=fs.size)
    shift = np.asarray(fr_s @ np.array([mu_true[e] for e in els])).ravel()
    exp_vals = dft + shift + rng.normal(scale=0.005, size=fs.size)
    src = _domain(rng.normal(size=(fs.size, 3)), dft, fs, fractions=fr_s, elements=els)
    tgt = _domain(src.features.copy(), exp_vals, fs, prefix="t")
    res = align(src, tgt, method="unbalanced", weights=CostWeights(hard_block=True, value=1.0),
                options=SolverOptions(reg=0.01, reg_m=1.0), energy_additivity=True, additivity_iters=6,
                additivity_ridge=1e-8)
    got = res.corrections.as_dict()
    for el, mu in mu_true.items():
        assert got[el] == pytest.approx(mu, rel=0.10), el
    assert res.corrections.residual_rmse < 0.5 * res.corrections.shift_rmse_before


def test_aot_moves_only_pairs_cheaper_than_price():
    rng = np.random.default_rng(9)
    src = _domain(rng.normal(size=(30, 2)), np.zeros(30))
    tgt = _domain(rng.normal(size=(25, 2)) + 1.0, np.zeros(25), prefix="t")
    w = CostWeights(value=0.0, mass=0.0, symmetry=0.0, hard_block=False)
    low = align(src, tgt, method="aot", weights=w, options=SolverOptions(aot_price=0.2))
    high = align(src, tgt, method="aot", weights=w, options=SolverOptions(aot_price=100.0))
    assert np.all(low.pair_cost < 0.2)
    assert low.mass_moved < high.mass_moved
    assert high.mass_moved == pytest.approx(1.0)  # every pair is worth matching: all mass moves
    assert np.all(low.source_mass <= low.a + 1e-12) and np.all(low.target_mass <= low.b + 1e-12)


def test_partial_moves_the_requested_mass_like_pot():
    rng = np.random.default_rng(10)
    src = _domain(rng.normal(size=(30, 2)), np.zeros(30))
    tgt = _domain(rng.normal(size=(20, 2)), np.zeros(20), prefix="t")
    w = CostWeights(value=0.0, mass=0.0, symmetry=0.0, hard_block=False)
    res = align(src, tgt, method="partial", weights=w, options=SolverOptions(partial_mass=0.4))
    assert res.mass_moved == pytest.approx(0.4)
    pooled = np.vstack([src.features, tgt.features])
    zs = (src.features - pooled.mean(0)) / pooled.std(0)
    zt = (tgt.features - pooled.mean(0)) / pooled.std(0)
    M = ot.dist(zs, zt) / 2  # descriptor cost: mean squared standardised difference (d = 2)
    ref = ot.partial.partial_wasserstein2(src.masses(), tgt.masses(), M, m=0.4)
    assert res.linear_cost == pytest.approx(float(ref), rel=1e-9)


def test_mixture_plan_respects_support_and_marginal_scale():
    rng = np.random.default_rng(11)
    src = _domain(np.r_[rng.normal(size=(50, 2)), rng.normal(size=(50, 2)) + 6], np.zeros(100))
    tgt = _domain(np.r_[rng.normal(size=(30, 2)), rng.normal(size=(30, 2)) + 6], np.zeros(60), prefix="t")
    w = CostWeights(value=0.0, mass=0.0, symmetry=0.0, hard_block=False)
    res = align(src, tgt, method="mixture", weights=w, options=SolverOptions(n_components=2))
    assert res.mass_moved == pytest.approx(1.0, rel=1e-6)
    # the two clusters are matched to each other, not across
    cross = (res.plan.row < 50) != (res.plan.col < 30)
    assert res.plan.data[cross].sum() < 1e-3


def test_unknown_method_lists_valid_ones():
    rng = np.random.default_rng(12)
    src = _domain(rng.normal(size=(5, 2)), np.zeros(5))
    with pytest.raises(AlignmentError, match="valid methods: aot, balanced, mixture, neural, partial, unbalanced"):
        align(src, src, method="wasserstein")
    assert sorted(FORMULATIONS) == ["aot", "balanced", "mixture", "neural", "partial", "unbalanced"]
