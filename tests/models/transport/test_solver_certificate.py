"""The Sinkhorn solvers against POT on real descriptor clouds: every option, both kernels, the certificate.

The clouds are the project's own composition descriptors of the formulas measured in the mirror
(band gaps, metal classes, formation enthalpies; standardised, constant columns dropped; the target side shifted by
+0.1), the problem of issue 19: pruning once stopped 0.8% above POT's optimum there.
"""

from __future__ import annotations

import itertools

import numpy as np
import ot
import pandas as pd
import pytest

from featurizers.composition import composition_descriptors
from models.transport import (
    CERT_OUTSIDE,
    DENSE_FRACTION,
    cloud_sinkhorn,
    dense_sinkhorn,
    dense_support,
    online_sinkhorn,
    radius_pairs,
    sparse_sinkhorn,
    sqdist,
    sqeuclidean_scale,
    unbalanced_objective,
)
from tests.data import MIRROR

REG, REG_M = 0.01, 1.0


@pytest.fixture(scope="module")
def descriptors() -> np.ndarray:
    exp = MIRROR / "experiment"
    formulas = pd.concat([pd.read_csv(exp / "expt_gap_zhuo2018.csv")["composition"],
                          pd.read_csv(exp / "expt_is_metal.csv")["formula"],
                          pd.read_csv(exp / "expt_formation_enthalpy_ssub.csv")["formula"]]).drop_duplicates()
    frame = composition_descriptors(formulas).frame.drop_duplicates("formula").drop(columns="formula")
    assert len(frame) > 3600
    frame = frame.loc[:, frame.std() > 0]
    z = ((frame - frame.mean()) / frame.std()).to_numpy()
    return z[np.random.default_rng(1).permutation(len(z))]


def _problem(z: np.ndarray, n: int, m: int):
    x, y = z[:n], z[n : n + m] + 0.1
    scale = sqeuclidean_scale(x, y)
    return x, y, np.full(n, 1.0 / n), np.full(m, 1.0 / m), sqdist(x, y) / scale, scale


def _pot(a, b, M, reg=REG, reg_m=REG_M, method="sinkhorn"):
    P = ot.unbalanced.sinkhorn_unbalanced(a, b, M, reg, reg_m, method=method, stopThr=1e-11, numItermax=200000)
    r, c = dense_support(a.size, b.size)
    return unbalanced_objective(P.ravel(), r, c, M.ravel(), a, b, reg=reg, reg_m=reg_m), P


@pytest.fixture(scope="module")
def real_3000(descriptors):
    x, y, a, b, M, scale = _problem(descriptors, 3000, 600)
    return x, y, a, b, M, scale, _pot(a, b, M)[0]


OPTIONS = [dict(zip(("eps_start", "omega", "prune_at", "translation_invariant"), combo, strict=True))
           for combo in itertools.product([None, 4 * REG], [1.0, "auto"], [30.0, None], [True, False])]


@pytest.mark.parametrize("opts", OPTIONS, ids=lambda o: "-".join(f"{k}={v}" for k, v in o.items()))
def test_sparse_solver_on_the_full_support_equals_pot_with_every_option(real_3000, opts):
    _x, _y, a, b, M, _, ref = real_3000
    r, c = dense_support(a.size, b.size)
    res = sparse_sinkhorn(a, b, r, c, M.ravel(), reg=REG, reg_m=REG_M, tol=1e-9, regime="sparse", **opts)
    assert res.converged and res.certificate.holds
    assert res.objective == pytest.approx(ref, rel=1e-5)


def test_pruning_on_the_radius_support_reaches_the_unpruned_optimum(real_3000):
    """The case of issue 19: tol did not matter, pairs pruned at a coarse eps never came back."""
    x, y, a, b, _, scale, _ = real_3000
    found = radius_pairs(x, y, width=40 * REG * scale)
    kw = dict(reg=REG, reg_m=REG_M, tol=1e-9, omega="auto", eps_start=4 * REG, iter_per_eps=10, regime="sparse")
    unpruned = sparse_sinkhorn(a, b, found.rows, found.cols, found.sqdist / scale, prune_at=None, **kw)
    pruned = sparse_sinkhorn(a, b, found.rows, found.cols, found.sqdist / scale, prune_at=30.0, **kw)
    assert pruned.n_pruned > 0 and pruned.certificate.readmitted > 0
    assert pruned.certificate.pruned_mass < CERT_OUTSIDE
    assert pruned.objective == pytest.approx(unpruned.objective, rel=1e-9)
    assert pruned.converged


@pytest.mark.parametrize(("n", "m"), [(500, 100), (1500, 300), (3000, 600)])
@pytest.mark.parametrize("regime", ["dense", "sparse", "auto"])
def test_cloud_solver_equals_pot_on_real_descriptors(descriptors, n, m, regime):
    x, y, a, b, M, _ = _problem(descriptors, n, m)
    ref, _ = _pot(a, b, M)
    res = cloud_sinkhorn(x, y, reg=REG, reg_m=REG_M, tol=1e-9, regime=regime, omega="auto", eps_start=4 * REG,
                         iter_per_eps=10)
    assert res.converged and res.certificate.holds
    assert res.certificate.truncation_bound + res.certificate.pruned_mass < CERT_OUTSIDE
    assert res.objective == pytest.approx(ref, rel=1e-5)
    if regime == "auto":  # the kernel follows the measured fraction of pairs that matter
        assert res.regime == ("dense" if res.support_fraction >= DENSE_FRACTION else "sparse")


def test_balanced_dense_kernel_equals_pot_balanced(descriptors):
    _x, _y, a, b, M, _ = _problem(descriptors, 800, 200)
    P = ot.sinkhorn(a, b, M, 0.05, stopThr=1e-12, numItermax=100000)
    r, c = dense_support(a.size, b.size)
    ref = unbalanced_objective(P.ravel(), r, c, M.ravel(), a, b, reg=0.05, reg_m=np.inf)
    res = dense_sinkhorn(a, b, M, reg=0.05, tol=1e-10)
    assert res.converged
    assert res.objective == pytest.approx(ref, rel=1e-6)
    np.testing.assert_allclose(res.plan.sum(1), a, rtol=1e-7)


def test_where_pot_plain_sinkhorn_underflows_ours_matches_the_log_domain_references(descriptors):
    """reg 0.005 with the five formulas farthest from every target: their kernel rows are all 0 in exp domain.

    POT's plain solvers (balanced and unbalanced) stop at iteration 0 with a transported mass of
    5e-5; its log-domain balanced solver and our online log-domain solver are the references.
    (POT's ``sinkhorn_stabilized`` for the unbalanced problem does not converge here either.)
    """
    x, y, _, _, M, scale = _problem(descriptors, 1500, 300)
    keep = np.r_[np.arange(300), np.argsort(M.min(1))[-5:]]
    x, M = x[keep], M[keep]
    a, b = np.full(len(x), 1.0 / len(x)), np.full(300, 1.0 / 300)
    reg = 0.005
    assert M.min(1).max() > 745 * reg  # exp(-C / reg) is exactly 0 on those rows
    with np.errstate(all="ignore"), pytest.warns(UserWarning, match="[Nn]umerical errors"):
        plain = ot.sinkhorn(a, b, M, reg, stopThr=1e-9, numItermax=2000)
    assert np.nansum(plain) < 1e-3
    log_domain = ot.sinkhorn(a, b, M, reg, method="sinkhorn_log", stopThr=1e-9, numItermax=100000)
    r, c = dense_support(a.size, b.size)
    ref = unbalanced_objective(log_domain.ravel(), r, c, M.ravel(), a, b, reg=reg, reg_m=np.inf)
    balanced = dense_sinkhorn(a, b, M, reg=reg, tol=1e-9, omega="auto")
    assert balanced.converged and balanced.objective == pytest.approx(ref, rel=1e-7)
    unbalanced = dense_sinkhorn(a, b, M, reg=reg, reg_m=REG_M, tol=1e-9)
    online = online_sinkhorn(x, y, a, b, reg=reg, reg_m=REG_M, scale=scale, tol=1e-9, device="cpu")
    assert unbalanced.converged and online.converged
    assert unbalanced.objective == pytest.approx(online.objective, rel=1e-9)


@pytest.mark.parametrize("reg_m", [REG_M, np.inf])
def test_online_path_on_cpu_equals_the_dense_reference(descriptors, reg_m):
    """The GPU path (torch, log-domain, blocked reductions) on the CPU in float64, blocks smaller than the problem."""
    x, y, a, b, M, scale = _problem(descriptors, 300, 90)
    if np.isinf(reg_m):
        b = b * a.sum() / b.sum()
    ref = dense_sinkhorn(a, b, M, reg=0.02, reg_m=reg_m, tol=1e-10)
    res = online_sinkhorn(x, y, a, b, reg=0.02, reg_m=reg_m, scale=scale, tol=1e-10, device="cpu", block=64)
    assert res.converged and res.device == "cpu"
    assert res.objective == pytest.approx(ref.objective, rel=1e-9)
    np.testing.assert_allclose(res.f - res.f[0], ref.f - ref.f[0], atol=1e-8)  # balanced: up to a constant


def test_certificate_fails_when_the_iteration_is_cut_short(real_3000):
    _x, _y, a, b, M, _, _ = real_3000
    res = dense_sinkhorn(a, b, M, reg=REG, reg_m=REG_M, tol=1e-9, max_iter=5)
    assert not res.converged
    assert not res.certificate.holds and res.certificate.residual > 1e-5


def test_sparse_solver_picks_the_dense_kernel_from_the_support_fraction(real_3000):
    _x, _y, a, b, M, _, ref = real_3000
    r, c = dense_support(a.size, b.size)
    auto = sparse_sinkhorn(a, b, r, c, M.ravel(), reg=REG, reg_m=REG_M, tol=1e-9)
    assert auto.regime == "dense" and auto.objective == pytest.approx(ref, rel=1e-5)
    keep = np.random.default_rng(0).random(r.size) < 0.05  # a 5% support: sparse
    few = sparse_sinkhorn(a, b, r[keep], c[keep], M.ravel()[keep], reg=REG, reg_m=REG_M, tol=1e-9)
    assert few.regime == "sparse"
    forced = sparse_sinkhorn(a, b, r[keep], c[keep], M.ravel()[keep], reg=REG, reg_m=REG_M, tol=1e-9, regime="dense")
    assert forced.regime == "dense" and forced.objective == pytest.approx(few.objective, rel=1e-9)


def test_bad_solver_input_names_the_problem(real_3000):
    x, y, a, b, M, _, _ = real_3000
    with pytest.raises(ValueError, match="cost has shape"):
        dense_sinkhorn(a, b, M[:, :10], reg=REG)
    with pytest.raises(ValueError, match="regime must be"):
        cloud_sinkhorn(x, y, reg=REG, regime="gpu")
    with pytest.raises(ValueError, match="x and y must be finite"):
        cloud_sinkhorn(np.full((3, 2), np.nan), np.zeros((2, 2)), reg=REG)
