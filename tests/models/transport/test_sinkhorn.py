"""Sparse supports (kNN, inverted-file search, pruning) against the dense problem."""

from __future__ import annotations

import numpy as np
import ot
import pytest

from models.transport import (
    CostWeights,
    Domain,
    SolverOptions,
    align,
    block_support,
    dense_support,
    ivf_support,
    knn_support,
    radius_support,
    sparse_sinkhorn,
    truncation_bound,
)


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


@pytest.mark.parametrize(("width", "block_entries"), [(2.0, 400), (0.0, 1 << 19), (25.0, 50)])
def test_radius_pairs_equal_brute_force_with_exact_distances(width, block_entries):
    from models.transport import radius_pairs

    x, y = _clusters(300, 70, seed=12)
    D = ot.dist(x, y)  # float64 brute force
    found = radius_pairs(x, y, width=width, block_entries=block_entries)  # 400 entries: 5 rows a block
    want = (D.min(1, keepdims=True) + width >= D) | (D.min(0, keepdims=True) + width >= D)
    got = np.zeros_like(want)
    got[found.rows, found.cols] = True
    assert np.array_equal(got, want)
    assert found.rows.size == int(want.sum())  # no duplicates
    key = found.rows * 70 + found.cols
    assert np.all(np.diff(key) > 0)  # sorted by (row, col)
    np.testing.assert_allclose(found.sqdist, D[found.rows, found.cols], rtol=1e-12, atol=1e-10)
    np.testing.assert_allclose(found.row_min, D.min(1), rtol=1e-12, atol=1e-10)
    np.testing.assert_allclose(found.col_min, D.min(0), rtol=1e-12, atol=1e-10)
    np.testing.assert_allclose(found.floor, D.min(1) + width, rtol=1e-12, atol=1e-10)


def test_radius_pairs_keeps_a_far_target_through_its_column_minimum():
    from models.transport import radius_pairs

    x = np.array([[0.0], [1.0], [2.0]])
    y = np.array([[0.1], [10.0]])  # target 1 is far from every source: only its column rule keeps it
    found = radius_pairs(x, y, width=0.5, block_entries=2)
    # (2, 0) is its row's nearest; (1, 1) at 81 is neither within 0.5 of row 1's 0.81 nor of column 1's 64
    assert list(zip(found.rows.tolist(), found.cols.tolist(), strict=True)) == [(0, 0), (1, 0), (2, 0), (2, 1)]
    assert found.sqdist.tolist() == pytest.approx([0.01, 0.81, 3.61, 64.0])


def test_radius_pairs_rejects_bad_input():
    from models.transport import radius_pairs

    x, y = np.zeros((3, 2)), np.zeros((4, 3))
    with pytest.raises(ValueError, match="same number of columns"):
        radius_pairs(x, y, width=1.0)
    with pytest.raises(ValueError, match="width must be a finite number >= 0"):
        radius_pairs(x, np.zeros((4, 2)), width=-1.0)
    with pytest.raises(ValueError, match="x and y must be finite"):
        radius_pairs(np.array([[np.nan, 0.0]]), np.zeros((4, 2)), width=1.0)
    empty = radius_pairs(np.zeros((0, 2)), np.zeros((4, 2)), width=1.0)
    assert empty.rows.size == 0 and empty.col_min.tolist() == [np.inf] * 4


def test_auto_overrelaxation_reaches_the_same_optimum_in_fewer_iterations():
    from models.transport import radius_pairs

    x, y = _clusters(800, 200, k=8, d=6, seed=13)
    scale = float(ot.dist(x, y).mean())
    a, b = np.full(800, 1 / 800), np.full(200, 1 / 200)
    found = radius_pairs(x, y, width=40 * 0.01 * scale)
    cost = found.sqdist / scale
    plain = sparse_sinkhorn(a, b, found.rows, found.cols, cost, reg=0.01, reg_m=1.0, tol=1e-9, eps_start=0.04,
                            iter_per_eps=10)
    auto = sparse_sinkhorn(a, b, found.rows, found.cols, cost, reg=0.01, reg_m=1.0, tol=1e-9, eps_start=0.04,
                           iter_per_eps=10, omega="auto")
    assert plain.converged and auto.converged
    assert auto.objective == pytest.approx(plain.objective, rel=1e-9)
    assert 1.0 < auto.omega < 2.0
    assert auto.n_iter < 0.6 * plain.n_iter
    with pytest.raises(ValueError, match="omega must be a number in \\[1, 2\\) or 'auto'"):
        sparse_sinkhorn(a, b, found.rows, found.cols, cost, reg=0.01, omega="fast")


@pytest.mark.parametrize(("clustered", "width"), [(True, 4.0), (False, 1.0)])
def test_cell_pruned_search_finds_exactly_the_full_scan_pairs(clustered, width):
    from models.transport import radius_pairs, radius_pairs_pruned

    if clustered:
        x, y = _clusters(1500, 300, k=12, d=5, seed=14)
    else:
        rng = np.random.default_rng(14)
        x, y = rng.normal(size=(700, 3)), rng.normal(size=(150, 3))
    full = radius_pairs(x, y, width=width)
    pruned = radius_pairs_pruned(x, y, width=width, cell_size=16)
    assert np.array_equal(pruned.rows, full.rows)
    assert np.array_equal(pruned.cols, full.cols)
    np.testing.assert_allclose(pruned.sqdist, full.sqdist, rtol=1e-12, atol=1e-10)
    np.testing.assert_allclose(pruned.row_min, full.row_min, rtol=1e-12, atol=1e-10)
    np.testing.assert_allclose(pruned.col_min, full.col_min, rtol=1e-12, atol=1e-10)
