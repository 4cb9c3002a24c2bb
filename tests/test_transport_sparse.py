"""Sparse supports (kNN, inverted-file search, pruning) against the dense problem."""

from __future__ import annotations

import numpy as np
import ot
import pytest

from models.penalties import CostWeights, Domain
from models.sinkhorn import (
    block_support,
    dense_support,
    ivf_support,
    knn_support,
    radius_support,
    sparse_sinkhorn,
    truncation_bound,
)
from models.transport import SolverOptions, align


def _clusters(n, m, k=6, d=8, seed=0):
    rng = np.random.default_rng(seed)
    c = rng.normal(size=(k, d)) * 3
    x = c[rng.integers(0, k, n)] + rng.normal(size=(n, d)) * 0.5
    y = c[rng.integers(0, k, m)] + rng.normal(size=(m, d)) * 0.5 + 0.1
    return x, y


def test_knn_support_matches_brute_force():
    x, y = _clusters(300, 80)
    r, c, kth = knn_support(x, y, k_source=5, k_target=3, chunk=64)
    D = ot.dist(x, y)
    want = set()
    for i in range(300):
        want.update((i, j) for j in np.argsort(D[i])[:5])
    for j in range(80):
        want.update((i, j) for i in np.argsort(D[:, j])[:3])
    assert set(zip(r.tolist(), c.tolist(), strict=True)) == want
    np.testing.assert_allclose(kth, np.sort(D, axis=1)[:, 4], rtol=1e-4, atol=1e-3)


def test_ivf_support_recalls_most_neighbours():
    x, y = _clusters(2000, 400)
    r, c, _ = knn_support(x, y, k_source=16, k_target=16)
    r2, c2, _ = ivf_support(x, y, k_source=16, k_target=16, cell_size=32, n_probe=4)
    exact = set((r * 400 + c).tolist())
    approx = set((r2 * 400 + c2).tolist())
    assert len(exact & approx) / len(exact) > 0.9


def test_knn_truncated_objective_is_close_to_dense_and_bounded():
    x, y = _clusters(600, 200)
    n, m = x.shape[0], y.shape[0]
    M = ot.dist(x, y)
    scale = M.mean()
    a, b = np.full(n, 1 / n), np.full(m, 1 / m)
    rd, cd = dense_support(n, m)
    dense = sparse_sinkhorn(a, b, rd, cd, (M / scale).ravel(), reg=0.01, reg_m=1.0, tol=1e-9)
    r, c, kth = knn_support(x, y, k_source=64, k_target=64)
    sparse = sparse_sinkhorn(a, b, r, c, M[r, c] / scale, reg=0.01, reg_m=1.0, tol=1e-9, omega=1.5)
    assert sparse.converged and dense.converged
    assert sparse.objective == pytest.approx(dense.objective, rel=1e-3)
    assert truncation_bound(sparse, a, b, kth / scale, 0.01) < 1e-2  # an upper bound, loose


def test_block_support_pairs_equal_labels_only():
    r, c = block_support(np.array(["A", "B", "A", "C"]), np.array(["B", "A", "D", "A"]))
    assert sorted(zip(r.tolist(), c.tolist(), strict=True)) == [(0, 1), (0, 3), (1, 0), (2, 1), (2, 3)]


def test_balanced_lp_path_equals_pot_emd():
    rng = np.random.default_rng(3)
    feats_s, feats_t = rng.normal(size=(40, 3)), rng.normal(size=(30, 3))
    src = Domain(features=feats_s, values=np.zeros(40), formulas=np.array(["X"] * 40),
                 ids=np.array([f"s{i}" for i in range(40)]))
    tgt = Domain(features=feats_t, values=np.zeros(30), formulas=np.array(["X"] * 30),
                 ids=np.array([f"t{i}" for i in range(30)]))
    res = align(src, tgt, method="balanced", weights=CostWeights(value=0, mass=0, symmetry=0, hard_block=False),
                options=SolverOptions())
    pooled = np.vstack([feats_s, feats_t])
    zs = (feats_s - pooled.mean(0)) / pooled.std(0)
    zt = (feats_t - pooled.mean(0)) / pooled.std(0)
    ref = ot.emd2(np.full(40, 1 / 40), np.full(30, 1 / 30), ot.dist(zs, zt) / 3)
    assert res.linear_cost == pytest.approx(float(ref), rel=1e-9)
    np.testing.assert_allclose(res.source_mass, 1 / 40)
    np.testing.assert_allclose(res.target_mass, 1 / 30)


def test_radius_support_keeps_pairs_near_row_or_column_minimum():
    x, y = _clusters(200, 50, seed=4)
    D = ot.dist(x, y)
    r, c, floor = radius_support(x, y, width=2.0, chunk=64)
    want = (D.min(1, keepdims=True) + 2.0 >= D) | (D.min(0, keepdims=True) + 2.0 >= D)
    got = np.zeros_like(want)
    got[r, c] = True
    # float32 search: allow disagreement only within rounding of the threshold
    edge = np.abs(D - np.minimum(D.min(1, keepdims=True), np.inf) - 2.0) < 1e-3
    assert np.all((got == want) | edge)
    np.testing.assert_allclose(floor, D.min(1) + 2.0, rtol=1e-4, atol=1e-3)
