"""Supports: which (source, target) pairs may carry mass, and the connected blocks they form.

``dense_support`` (all pairs), ``block_support`` (same group only: the hard stoichiometry
block), ``knn_support`` (k nearest neighbours each way, exact, torch float32 distances),
``radius_support`` (every pair within a radius, exact, :mod:`models.transport.pairsearch`)
and ``ivf_support`` (approximate inverted-file kNN for very large clouds), plus
:func:`component_labels`, the one place the connected blocks of a support are computed.

torch is imported inside the kNN searches only: block supports (the default) never need it.
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp
from scipy.sparse.csgraph import connected_components

from models.transport.pairsearch import kmeans_cells, radius_pairs


def component_labels(rows: np.ndarray, cols: np.ndarray, n: int, m: int) -> tuple[int, np.ndarray]:
    """Label the connected components of a support: ``(count, label)`` over sources (first n) then targets (last m).

    Sources and targets are the two sides of a bipartite graph whose edges are the allowed
    pairs; a point without any pair is a component of its own.
    """
    graph = sp.coo_matrix((np.ones(rows.size, dtype=np.int8), (rows, cols + n)), shape=(n + m, n + m))
    return connected_components(graph, directed=False)


def dense_support(n: int, m: int) -> tuple[np.ndarray, np.ndarray]:
    """All pairs of an n x m problem, row-major."""
    rows = np.repeat(np.arange(n, dtype=np.int64), m)
    cols = np.tile(np.arange(m, dtype=np.int64), n)
    return rows, cols


def block_support(source_groups: np.ndarray, target_groups: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Pairs (i, j) with equal group labels (e.g. reduced formulas): the hard-block support."""
    source_groups = np.asarray(source_groups)
    target_groups = np.asarray(target_groups)
    labels, s_code = np.unique(source_groups, return_inverse=True)
    if labels.size == 0 or target_groups.size == 0:
        return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64)
    t_pos = np.clip(np.searchsorted(labels, target_groups), 0, labels.size - 1)
    t_code = np.where(labels[t_pos] == target_groups, t_pos, -1)
    t_order = np.argsort(t_code, kind="stable")
    t_sorted = t_code[t_order]
    starts = np.searchsorted(t_sorted, np.arange(labels.size), side="left")
    ends = np.searchsorted(t_sorted, np.arange(labels.size), side="right")
    s_counts = (ends - starts)[s_code]
    rows_out = np.repeat(np.arange(source_groups.size, dtype=np.int64), s_counts)
    # source i pairs with t_order[starts[code_i] : ends[code_i]]
    offsets = np.repeat(starts[s_code], s_counts) + _ragged_arange(s_counts)
    cols_out = t_order[offsets].astype(np.int64)
    return rows_out, cols_out


def _ragged_arange(counts: np.ndarray) -> np.ndarray:
    """Concatenation of arange(c) for c in counts."""
    total = int(counts.sum())
    if total == 0:
        return np.zeros(0, dtype=np.int64)
    ends = np.cumsum(counts)
    idx = np.arange(total, dtype=np.int64)
    return idx - np.repeat(ends - counts, counts)


def knn_support(
    x: np.ndarray,
    y: np.ndarray,
    *,
    k_source: int,
    k_target: int,
    chunk: int = 4096,
    threads: int | None = None,
    target_kth: bool = False,
) -> tuple[np.ndarray, ...]:
    """Union of the k nearest targets of every source and the k nearest sources of every target.

    Returns ``rows, cols, kth`` where ``kth`` (n,) is each source's squared distance to its
    ``k_source``-th nearest target (used for the truncation bound); with ``target_kth`` also
    each target's squared distance to its ``k_target``-th nearest source (m,). Brute force in chunks with
    torch (float32 distances for the search only; callers recompute float64 costs on the pairs).
    """
    # torch: seconds to import; only this path needs it (torch-free serving and CLI start-up)
    import torch

    if threads is not None:
        torch.set_num_threads(threads)
    xt = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))
    yt = torch.from_numpy(np.ascontiguousarray(y, dtype=np.float32))
    n, m = xt.shape[0], yt.shape[0]
    r1, c1, kth = _brute_knn(xt, yt, min(k_source, m), chunk)
    c2, r2, kth_t = _brute_knn(yt, xt, min(k_target, n), chunk)  # contiguous rows: faster than topk on d.T
    key = np.unique(np.concatenate([r1, r2]) * m + np.concatenate([c1, c2]))
    if target_kth:
        return key // m, key % m, kth, kth_t
    return key // m, key % m, kth


def _brute_knn(q, base, k: int, chunk: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    # torch: seconds to import; only this path needs it (torch-free serving and CLI start-up)
    import torch

    b2 = (base * base).sum(1)
    rows, cols, kth = [], [], np.empty(q.shape[0])
    for s in range(0, q.shape[0], chunk):
        qc = q[s : s + chunk]
        d = (qc * qc).sum(1)[:, None] + b2[None, :] - 2.0 * (qc @ base.T)
        vals, idx = torch.topk(d, k, dim=1, largest=False)
        rows.append(np.repeat(np.arange(s, s + qc.shape[0], dtype=np.int64), k))
        cols.append(idx.reshape(-1).numpy().astype(np.int64))
        kth[s : s + qc.shape[0]] = vals[:, -1].clamp_min(0).numpy()
    return np.concatenate(rows), np.concatenate(cols), kth


def radius_support(
    x: np.ndarray, y: np.ndarray, *, width: float, chunk: int = 4096
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Pairs within ``width`` of their row's or their column's nearest squared distance.

    Keeps ``(i, j)`` when ``|x_i - y_j|^2 <= min_j' |x_i - y_j'|^2 + width`` or the same with
    the column minimum: with ``width = tau * eps`` (in squared-distance units) these are the
    pairs whose kernel is within ``e^-tau`` of the best one of their row or column — the
    entries that are non-negligible at that eps. Returns ``rows, cols, floor`` with
    ``floor[i] = rowmin_i + width``, a lower bound of every excluded pair's squared distance
    in row i (for :func:`truncation_bound`). A thin wrapper of
    :func:`models.transport.radius_pairs` (exact, float64, one pass), which also returns the
    distances of the pairs; at most ``chunk`` rows per distance block.
    """
    found = radius_pairs(x, y, width=width, block_entries=min(max(1, chunk) * max(1, np.shape(y)[0]), 1 << 19))
    return found.rows, found.cols, found.floor


def _cell_knn(queries, base, k: int, cell_size: int, n_probe: int, seed: int):
    """Approximate k nearest ``base`` points of every query (inverted-file search).

    ``base`` is split into k-means cells of about ``cell_size`` points; every query scans
    the ``n_probe`` cells with the nearest centroids and keeps its k nearest candidates there.
    Returns (query index, base index, squared distance) triples and each query's k-th distance.
    """
    # torch: seconds to import; only this path needs it (torch-free serving and CLI start-up)
    import torch

    nb = base.shape[0]
    n_cells = max(1, min(nb, nb // max(cell_size, 1)))
    cent, lab = kmeans_cells(base, n_cells, iters=8, seed=seed)
    probe = min(n_probe, n_cells)
    q2 = (queries * queries).sum(1)
    dq = q2[:, None] + (cent * cent).sum(1)[None, :] - 2.0 * queries @ cent.T
    near = torch.topk(dq, probe, dim=1, largest=False).indices  # (nq, probe)
    order = torch.argsort(lab)
    counts = torch.bincount(lab, minlength=n_cells)
    starts = torch.cumsum(counts, 0) - counts
    b2 = (base * base).sum(1)
    # group (query, probed cell) pairs by cell
    q_idx = torch.arange(queries.shape[0]).repeat_interleave(probe)
    c_idx = near.reshape(-1)
    perm = torch.argsort(c_idx)
    q_idx, c_idx = q_idx[perm], c_idx[perm]
    c_counts = torch.bincount(c_idx, minlength=n_cells)
    c_starts = torch.cumsum(c_counts, 0) - c_counts
    cand_q, cand_b, cand_d = [], [], []
    for c in range(n_cells):
        if c_counts[c] == 0 or counts[c] == 0:
            continue
        qs = q_idx[c_starts[c] : c_starts[c] + c_counts[c]]
        bs = order[starts[c] : starts[c] + counts[c]]
        d = q2[qs, None] + b2[None, bs] - 2.0 * queries[qs] @ base[bs].T
        kk = min(k, bs.numel())
        v, i = torch.topk(d, kk, dim=1, largest=False)
        cand_q.append(qs.repeat_interleave(kk))
        cand_b.append(bs[i.reshape(-1)])
        cand_d.append(v.reshape(-1))
    cq = torch.cat(cand_q)
    cb = torch.cat(cand_b)
    cd = torch.cat(cand_d).clamp_min(0)
    # per query: keep the k best over its probed cells (sort by query, then distance)
    key = torch.argsort(cd)
    cq, cb, cd = cq[key], cb[key], cd[key]
    key = torch.argsort(cq, stable=True)
    cq, cb, cd = cq[key], cb[key], cd[key]
    qc = torch.bincount(cq, minlength=queries.shape[0])
    qstart = torch.cumsum(qc, 0) - qc
    rank = torch.arange(cq.numel()) - qstart[cq]
    keep = rank < k
    kth = torch.zeros(queries.shape[0])
    last = torch.minimum(qc, torch.full_like(qc, k)) - 1
    has = qc > 0
    kth[has] = cd[(qstart + last)[has]]
    return cq[keep].numpy(), cb[keep].numpy(), kth.numpy().astype(np.float64)


def ivf_support(
    x: np.ndarray,
    y: np.ndarray,
    *,
    k_source: int,
    k_target: int,
    cell_size: int = 128,
    n_probe: int = 4,
    seed: int = 0,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Approximate :func:`knn_support` for large problems (inverted-file cell search).

    Same outputs as :func:`knn_support`; the k-th distances are over the probed cells, so
    they are upper bounds of the true ones and :func:`truncation_bound` becomes approximate.
    Cost ~ (n + m) * n_probe * cell_size distance evaluations instead of n * m.
    """
    # torch: seconds to import; only this path needs it (torch-free serving and CLI start-up)
    import torch

    xt = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))
    yt = torch.from_numpy(np.ascontiguousarray(y, dtype=np.float32))
    r1, c1, kth = _cell_knn(xt, yt, k_source, cell_size, n_probe, seed)
    c2, r2, _ = _cell_knn(yt, xt, k_target, cell_size, n_probe, seed + 1)
    m = y.shape[0]
    key = np.unique(np.concatenate([r1, r2]).astype(np.int64) * m + np.concatenate([c1, c2]).astype(np.int64))
    return key // m, key % m, kth


__all__ = ["block_support", "component_labels", "dense_support", "ivf_support", "knn_support", "radius_support"]
