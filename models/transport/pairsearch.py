r"""Exact pair search for sparse transport supports, fused with the squared distances.

A sparse entropic solver only needs the pairs whose kernel ``exp(-C_ij / eps)`` is not
negligible. For a squared-Euclidean cost those are the pairs within a *width* of their row's
or their column's nearest squared distance:

.. math::

    S = \{(i, j) : \lVert x_i - y_j \rVert^2 \le \min_{j'} \lVert x_i - y_{j'} \rVert^2 + w
        \ \text{or}\ \lVert x_i - y_j \rVert^2 \le \min_{i'} \lVert x_{i'} - y_j \rVert^2 + w\}

(with ``w = tau * eps`` in squared-distance units, every excluded pair's kernel is below
``e^-tau`` times the best one of its row and of its column).

:func:`radius_pairs` finds ``S`` exactly in **one** pass of blocked float64 matrix products,
``|x|^2 + |y|^2 - 2 x y^T`` (BLAS does the O(n m d) work), and returns the squared distances
of the kept pairs as well, so the caller does not gather ``x[rows] - y[cols]`` again to get
the costs — that gather (n_pairs x d doubles) cost more than the search itself. The column
minima are only known at the end, so each block keeps the pairs within the width of the
*running* column minimum (never smaller than the final one, hence a superset) and a final
filter applies the exact rule. Blocks are sized to stay in cache.

:func:`radius_pairs_pruned` returns exactly the same pairs without scanning every pair: the
targets are grouped into k-means cells and a (source, cell) combination is scanned only if
a triangle-inequality lower bound of its distances does not already exceed the selection
threshold (bounded from above through each point's nearest cell). It is the exact search
for sizes where n m distances are too many (200,000 x 20,000).

Float64 throughout: the distances are the costs (up to a scale), and the expansion
``|x|^2 + |y|^2 - 2 x.y`` loses about ``1e-16 |x|^2`` to cancellation, far below any eps in
use (float32 would lose ``1e-7 |x|^2``, visible in objectives at the 1e-6 level).

This module does no I/O and never reads global state.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class PairSearch:
    """Pairs found by :func:`radius_pairs`, sorted by (row, col).

    rows, cols : (nnz,) int64 indices into ``x`` and ``y``.
    sqdist : (nnz,) float64 squared Euclidean distances of the pairs (clipped at 0).
    row_min : (n,) each source's nearest squared distance (its row minimum).
    col_min : (m,) each target's nearest squared distance.
    width : the width the pairs were selected with.
    """

    rows: np.ndarray
    cols: np.ndarray
    sqdist: np.ndarray
    row_min: np.ndarray
    col_min: np.ndarray
    width: float

    @property
    def floor(self) -> np.ndarray:
        """Per source, a lower bound on the squared distance of every excluded pair of its row."""
        return self.row_min + self.width


def _points(x: np.ndarray, y: np.ndarray, width: float) -> tuple[np.ndarray, np.ndarray]:
    """Both clouds as contiguous float64 (n, d) and (m, d) arrays; bad shapes, widths or values are errors."""
    x = np.ascontiguousarray(x, dtype=np.float64)
    y = np.ascontiguousarray(y, dtype=np.float64)
    if x.ndim != 2 or y.ndim != 2 or x.shape[1] != y.shape[1]:
        raise ValueError(f"x and y must be 2-D with the same number of columns, got {x.shape} and {y.shape}")
    if not (math.isfinite(width) and width >= 0):
        raise ValueError(f"width must be a finite number >= 0, got {width}")
    if not (np.all(np.isfinite(x)) and np.all(np.isfinite(y))):
        raise ValueError("x and y must be finite")
    return x, y


def radius_pairs(
    x: np.ndarray,
    y: np.ndarray,
    *,
    width: float,
    block_entries: int = 1 << 19,
    threads: int | None = None,
) -> PairSearch:
    """Pairs within ``width`` of their row's or column's nearest squared distance, with distances.

    ``x`` (n, d) and ``y`` (m, d) are the points (any float dtype; computed in float64);
    ``width`` >= 0 is in squared-distance units. ``block_entries`` bounds the size of one
    distance block (rows x m); the default (4 MiB of doubles) fits a typical L2/L3 cache.
    ``threads`` sets torch's intra-op threads for the matrix products (None: the caller's
    setting); the selection runs on one thread. The caller's setting is restored on return.
    Time O(n m d) in BLAS plus O(n m) for the selection; memory O(block_entries + nnz).
    """
    # torch: seconds to import; only this path needs it (torch-free serving and CLI start-up)
    import torch

    x, y = _points(x, y, width)
    n, m = x.shape[0], y.shape[0]
    empty = np.zeros(0, dtype=np.int64)
    if n == 0 or m == 0:
        return PairSearch(empty, empty, np.zeros(0), np.full(n, np.inf), np.full(m, np.inf), float(width))

    previous = torch.get_num_threads()
    matmul_threads = previous if threads is None else threads
    # the selection is memory-bound on small blocks, where intra-op threads only add
    # synchronisation (measured 5x slower with 2 threads on a loaded 2-core machine)
    torch.set_num_threads(1)
    try:
        X = torch.from_numpy(np.ascontiguousarray(x))
        YT = torch.from_numpy(np.ascontiguousarray(y.T))
        x2 = (X * X).sum(1)
        y2 = (YT * YT).sum(0).unsqueeze(0)  # (1, m)
        chunk = max(1, min(n, block_entries // max(m, 1)))
        row_min = torch.empty(n, dtype=torch.float64)
        col_min = torch.full((m,), math.inf, dtype=torch.float64)
        rows, cols, vals = [], [], []
        for s in range(0, n, chunk):
            e = min(n, s + chunk)
            if matmul_threads != 1:
                torch.set_num_threads(matmul_threads)
            d = torch.addmm(y2, X[s:e], YT, alpha=-2.0)  # |y|^2 - 2 x.y, one BLAS call
            if matmul_threads != 1:
                torch.set_num_threads(1)
            d.add_(x2[s:e, None])
            rmin = d.amin(1)
            row_min[s:e] = rmin
            torch.minimum(col_min, d.amin(0), out=col_min)
            # d <= max(rmin_i, cmin_j) + w  <=>  within w of the row's or the (running) column's minimum
            thr = torch.maximum(rmin[:, None], col_min[None, :]).add_(width)
            mask = d <= thr
            idx = mask.nonzero()
            rows.append(idx[:, 0] + s)
            cols.append(idx[:, 1])
            vals.append(d[mask])
        r = torch.cat(rows)
        c = torch.cat(cols)
        v = torch.cat(vals)
        # exact rule with the final column minima (the running ones were never smaller)
        keep = (v <= row_min[r] + width) | (v <= col_min[c] + width)
        r, c, v = r[keep], c[keep], v[keep].clamp_min_(0.0)
    finally:
        torch.set_num_threads(previous)
    return PairSearch(
        rows=r.numpy().astype(np.int64, copy=False),
        cols=c.numpy().astype(np.int64, copy=False),
        sqdist=v.numpy(),
        row_min=row_min.clamp_min_(0.0).numpy(),
        col_min=col_min.clamp_min_(0.0).numpy(),
        width=float(width),
    )





def kmeans_cells(points, n_cells: int, iters: int, seed: int, sample: int = 16384, chunk: int = 16384):
    """Lloyd k-means in torch (float32) fitted on a sample; returns centroids and all labels.

    Fitting on at most ``sample`` points and assigning in chunks keeps time and memory
    linear in the number of points.
    """
    # torch: seconds to import; only this path needs it (torch-free serving and CLI start-up)
    import torch

    gen = torch.Generator().manual_seed(seed)
    n = points.shape[0]
    fit = points[torch.randperm(n, generator=gen)[: max(sample, n_cells)]]
    cent = fit[torch.randperm(fit.shape[0], generator=gen)[:n_cells]].clone()

    def assign(p):
        labels = []
        c2 = (cent * cent).sum(1)[None, :]
        for s in range(0, p.shape[0], chunk):
            q = p[s : s + chunk]
            labels.append(((q * q).sum(1, keepdim=True) + c2 - 2.0 * q @ cent.T).argmin(1))
        return torch.cat(labels)

    for _ in range(iters):
        lab = assign(fit)
        sums = torch.zeros_like(cent).index_add_(0, lab, fit)
        cnt = torch.bincount(lab, minlength=cent.shape[0]).to(fit.dtype)
        nonempty = cnt > 0
        cent[nonempty] = sums[nonempty] / cnt[nonempty, None]
    return cent, assign(points)


def _cells(points: np.ndarray, cell_size: int, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """k-means cells of ``points``: labels, float64 centroids of the actual members, radii.

    The cells only steer the search; exactness rests on the radii, which are computed from
    the members in float64 (max distance member - centroid), whatever k-means converged to.
    """
    # torch: seconds to import; only this path needs it (torch-free serving and CLI start-up)
    import torch

    n = points.shape[0]
    k = max(1, n // max(cell_size, 1))
    _, lab = kmeans_cells(torch.from_numpy(np.ascontiguousarray(points, dtype=np.float32)), k, iters=8, seed=seed)
    lab = lab.numpy().astype(np.int64)
    _, lab = np.unique(lab, return_inverse=True)  # drop empty cells
    k = int(lab.max()) + 1
    count = np.bincount(lab, minlength=k).astype(np.float64)
    cent = np.zeros((k, points.shape[1]))
    np.add.at(cent, lab, points)
    cent /= count[:, None]
    dist = np.sqrt(np.einsum("ij,ij->i", points - cent[lab], points - cent[lab]))
    radius = np.zeros(k)
    np.maximum.at(radius, lab, dist)
    return lab, cent, radius


def _sqdist(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Squared distances in float64.

    Torch on the caller's thread setting: numpy's BLAS may start its own thread pool for
    every small product.
    """
    # torch: seconds to import; only this path needs it (torch-free serving and CLI start-up)
    import torch

    X, Y = torch.from_numpy(x), torch.from_numpy(y)
    d = torch.addmm((Y * Y).sum(1).unsqueeze(0), X, Y.T, alpha=-2.0)
    d.add_((X * X).sum(1)[:, None]).clamp_min_(0.0)
    return d.numpy()


def _nearest_cell_bound(q: np.ndarray, base: np.ndarray, lab: np.ndarray, cent: np.ndarray) -> np.ndarray:
    """Upper bounds of each query's nearest squared distance (exact minimum over one cell).

    The cell is the one whose centroid is nearest to the query.
    """
    near = np.empty(q.shape[0], dtype=np.int64)
    for s in range(0, q.shape[0], 8192):
        near[s : s + 8192] = _sqdist(q[s : s + 8192], cent).argmin(1)
    out = np.empty(q.shape[0])
    order = np.argsort(lab, kind="stable")
    starts = np.searchsorted(lab[order], np.arange(cent.shape[0] + 1))
    q_order = np.argsort(near, kind="stable")
    q_starts = np.searchsorted(near[q_order], np.arange(cent.shape[0] + 1))
    for c in range(cent.shape[0]):
        qi = q_order[q_starts[c] : q_starts[c + 1]]
        if qi.size:
            out[qi] = _sqdist(np.ascontiguousarray(q[qi]), np.ascontiguousarray(base[order[starts[c] : starts[c + 1]]])).min(1)
    return out


def radius_pairs_pruned(
    x: np.ndarray,
    y: np.ndarray,
    *,
    width: float,
    cell_size: int = 64,
    seed: int = 0,
) -> PairSearch:
    r"""Find the same pairs as :func:`radius_pairs`, exactly, without scanning every pair.

    The targets are grouped into k-means cells B (centroid ``c_B``, radius ``r_B``). A pair
    (i, j in B) can only be kept if ``(|x_i - c_B| - r_B)_+^2 <= max(U_i, V_B) + width``, where
    ``U_i`` bounds source i's nearest squared distance from above (its minimum over the cell
    with the nearest centroid) and ``V_B`` the largest such bound of the targets in B (from
    the source cells). Every other (source, cell) combination is skipped; the nearest pairs
    of every row and column always lie in a scanned combination, so the row and column
    minima and the selected pairs are exact. On clustered data (descriptor families) most
    combinations are skipped; on unstructured data it degrades to the full scan plus the
    bound overhead.
    """
    # torch: seconds to import; only this path needs it (torch-free serving and CLI start-up)
    import torch

    x, y = _points(x, y, width)
    if x.shape[0] == 0 or y.shape[0] == 0:
        return radius_pairs(x, y, width=width)
    previous = torch.get_num_threads()
    torch.set_num_threads(1)  # many small blocks: threads only add synchronisation (see radius_pairs)
    try:
        return _pruned(x, y, width, cell_size, seed)
    finally:
        torch.set_num_threads(previous)


def _pruned(x: np.ndarray, y: np.ndarray, width: float, cell_size: int, seed: int) -> PairSearch:
    n, m = x.shape[0], y.shape[0]
    lab_t, cent_t, rad_t = _cells(y, cell_size, seed)
    lab_s, cent_s, _ = _cells(x, cell_size * 4, seed + 1)
    upper_row = _nearest_cell_bound(x, y, lab_t, cent_t)  # >= row minima
    upper_col = _nearest_cell_bound(y, x, lab_s, cent_s)  # >= column minima
    k = cent_t.shape[0]
    v_cell = np.zeros(k)
    np.maximum.at(v_cell, lab_t, upper_col)
    t_order = np.argsort(lab_t, kind="stable")
    t_starts = np.searchsorted(lab_t[t_order], np.arange(k + 1))
    row_min = np.full(n, np.inf)
    col_min = np.full(m, np.inf)
    rows, cols, vals = [], [], []
    # which (source, cell) combinations to scan, a chunk of sources at a time
    scan_src, scan_cell = [], []
    for s in range(0, n, 8192):
        xs = x[s : s + 8192]
        lb = np.maximum(np.sqrt(_sqdist(xs, cent_t)) - rad_t[None, :], 0.0) ** 2
        # the relative margin absorbs float64 rounding of the bound (it may only scan more)
        ok = lb * (1.0 - 1e-9) <= np.maximum(upper_row[s : s + 8192, None], v_cell[None, :]) + width
        i, c = np.nonzero(ok)
        scan_src.append(i + s)
        scan_cell.append(c)
    src = np.concatenate(scan_src)
    cell = np.concatenate(scan_cell)
    order = np.argsort(cell, kind="stable")
    src, cell = src[order], cell[order]
    c_starts = np.searchsorted(cell, np.arange(k + 1))
    for c in range(k):
        qi = src[c_starts[c] : c_starts[c + 1]]
        tj = t_order[t_starts[c] : t_starts[c + 1]]
        if qi.size == 0 or tj.size == 0:
            continue
        d = _sqdist(np.ascontiguousarray(x[qi]), np.ascontiguousarray(y[tj]))
        np.minimum.at(row_min, qi, d.min(1))
        col_min[tj] = np.minimum(col_min[tj], d.min(0))
        # superset with the upper bounds; the exact rule is applied at the end
        keep = d <= np.maximum(upper_row[qi][:, None], upper_col[tj][None, :]) + width
        a, b = np.nonzero(keep)
        rows.append(qi[a])
        cols.append(tj[b])
        vals.append(d[a, b])
    r = np.concatenate(rows)
    cc = np.concatenate(cols)
    v = np.concatenate(vals)
    keep = (v <= row_min[r] + width) | (v <= col_min[cc] + width)
    r, cc, v = r[keep], cc[keep], v[keep]
    key = r * m + cc
    order = np.argsort(key, kind="stable")
    return PairSearch(rows=r[order], cols=cc[order], sqdist=v[order], row_min=row_min, col_min=col_min,
                      width=float(width))
__all__ = ["PairSearch", "kmeans_cells", "radius_pairs", "radius_pairs_pruned"]
