r"""Unbalanced Sinkhorn between two point clouds with the squared-Euclidean cost: the right kernel, and a certificate.

:func:`cloud_sinkhorn` solves the entropic (un)balanced problem of
:func:`models.transport.sparse_sinkhorn` for ``C_ij = |x_i - y_j|^2 / scale`` over *all* pairs,
choosing how from the problem itself:

* ``"dense"`` when a sampled estimate says that at least :data:`~models.transport.sinkhorn.DENSE_FRACTION`
  of the pairs matter at the target eps (unclustered clouds): the full cost matrix, BLAS
  products, nothing truncated;
* ``"sparse"`` otherwise (clustered clouds): the pairs within ``width * reg`` of their row's or
  column's nearest cost (:func:`models.transport.radius_pairs`), solved on that support; then
  every row whose best excluded pair could still carry mass under the final potentials is
  scanned against all columns, the excluded pairs whose kernel exponent is above ``-prune_at``
  are added, and the solve resumes from its potentials, until no excluded pair qualifies;
* ``"online"``: :func:`models.transport.online_sinkhorn` (torch, log-domain, no n x m matrix;
  the GPU path).

The result's :class:`~models.transport.Certificate` carries the first-order residual and the mass
outside the solved support: the exact mass of the excluded pairs of scanned rows plus a bound for
the rows that did not need a scan. This module does no I/O.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, replace
from typing import Literal

import numpy as np

from models.transport.pairsearch import radius_pairs, radius_pairs_pruned
from models.transport.sinkhorn import (
    CERT_OUTSIDE,
    DENSE_FRACTION,
    DENSE_MAX_ENTRIES,
    Certificate,
    dense_sinkhorn,
    outside_log_bound,
    sparse_sinkhorn,
)

# from this many pairs on, the sparse support is found by the cell-pruned exact search
_PRUNED_SEARCH_FROM = 20_000_000


@dataclass(frozen=True)
class CloudResult:
    """Outcome of :func:`cloud_sinkhorn`: which regime solved it, and what it found.

    ``support_fraction``: the fraction of pairs that matter (sampled estimate for the choice;
    the radius support's measured fraction in the sparse regime). ``solution``: the regime's
    own result (plan, potentials); ``rounds``: re-solves after excluded pairs were added.
    """

    regime: str
    objective: float
    mass: float
    f: np.ndarray
    g: np.ndarray
    n_iter: int
    converged: bool
    certificate: Certificate
    seconds: float
    support_fraction: float
    support: int
    rounds: int
    solution: object


def sqeuclidean_scale(x: np.ndarray, y: np.ndarray) -> float:
    """Mean squared distance over all pairs, in closed form (O((n + m) d))."""
    return float((x * x).sum(1).mean() + (y * y).sum(1).mean() - 2.0 * x.mean(0) @ y.mean(0))


def sqdist(x: np.ndarray, y: np.ndarray, scale: float = 1.0) -> np.ndarray:
    """Squared Euclidean distances over ``scale``, (n, m) float64, clipped at 0 (``|x|^2 + |y|^2 - 2 x y^T``, in place)."""
    d = x @ y.T
    d *= -2.0 / scale
    d += ((x * x).sum(1) / scale)[:, None]
    d += ((y * y).sum(1) / scale)[None, :]
    np.maximum(d, 0.0, out=d)
    return d


def support_fraction(x: np.ndarray, y: np.ndarray, width: float, *, sample: int = 256, seed: int = 0) -> float:
    """Estimate the fraction of pairs within ``width`` (squared-distance units) of their row's nearest pair.

    ``sample`` rows drawn at random are compared with every column; the rule is the radius
    support's row rule (its column rule only adds pairs, so this slightly under-estimates).
    """
    rng = np.random.default_rng(seed)
    idx = rng.choice(x.shape[0], size=min(sample, x.shape[0]), replace=False)
    d = sqdist(x[idx], y)
    return float(np.mean(d <= d.min(1, keepdims=True) + width))


def cloud_sinkhorn(  # noqa: PLR0913
    x: np.ndarray,
    y: np.ndarray,
    a: np.ndarray | None = None,
    b: np.ndarray | None = None,
    *,
    reg: float,
    reg_m: float = math.inf,
    scale: float | None = None,
    tol: float = 1e-9,
    regime: Literal["auto", "dense", "sparse", "online"] = "auto",
    width: float = 40.0,
    prune_at: float = 30.0,
    max_rounds: int = 20,
    device: str | None = None,
    **options,
) -> CloudResult:
    """Solve unbalanced entropic OT between ``x`` (n, d) and ``y`` (m, d) with cost ``|x - y|^2 / scale``.

    ``a``, ``b``: masses (default uniform, each summing to 1); ``scale``: default the mean
    squared distance over pairs (:func:`sqeuclidean_scale`), so costs are O(1) and ``reg`` is
    relative. ``width``: the sparse support's radius in units of ``reg``; ``prune_at``: the
    kernel exponent below which a pair counts as negligible (the re-admission threshold).
    ``options`` go to the solver (``eps_start``, ``omega``, ``iter_per_eps``, ``max_iter``, ...);
    ``device`` (``"cuda"``, ``"cpu"``) is for the ``"online"`` regime.
    """
    t0 = time.perf_counter()
    x = np.ascontiguousarray(x, dtype=np.float64)
    y = np.ascontiguousarray(y, dtype=np.float64)
    if x.ndim != 2 or y.ndim != 2 or x.shape[1] != y.shape[1]:
        raise ValueError(f"x and y must be 2-D with the same number of columns, got {x.shape} and {y.shape}")
    if not (np.all(np.isfinite(x)) and np.all(np.isfinite(y))):
        raise ValueError("x and y must be finite")
    n, m = x.shape[0], y.shape[0]
    a = np.full(n, 1.0 / n) if a is None else np.asarray(a, dtype=np.float64)
    b = np.full(m, 1.0 / m) if b is None else np.asarray(b, dtype=np.float64)
    scale = sqeuclidean_scale(x, y) if scale is None else float(scale)
    if not scale > 0:
        raise ValueError(f"scale must be > 0, got {scale}")
    if regime not in ("auto", "dense", "sparse", "online"):
        raise ValueError(f"regime must be 'auto', 'dense', 'sparse' or 'online', got {regime!r}")
    frac = support_fraction(x, y, width * reg * scale)
    if regime == "auto":
        regime = "dense" if frac >= DENSE_FRACTION and n * m <= DENSE_MAX_ENTRIES else "sparse"
    if regime == "online":
        # torch: seconds to import; only the online (GPU) path needs it
        from models.transport.online import online_sinkhorn

        res = online_sinkhorn(x, y, a, b, reg=reg, reg_m=reg_m, scale=scale, tol=tol, device=device, **options)
        return CloudResult("online", res.objective, res.mass, res.f, res.g, res.n_iter, res.converged,
                           res.certificate, time.perf_counter() - t0, frac, n * m, 0, res)
    if regime == "dense":
        res = dense_sinkhorn(a, b, sqdist(x, y, scale), reg=reg, reg_m=reg_m, tol=tol, **options)
        return CloudResult("dense", res.objective, float(res.plan.sum()), res.f, res.g, res.n_iter, res.converged,
                           res.certificate, time.perf_counter() - t0, frac, n * m, 0, res)
    search = radius_pairs_pruned if n * m >= _PRUNED_SEARCH_FROM else radius_pairs
    found = search(x, y, width=width * reg * scale)
    rows, cols, cost = found.rows, found.cols, found.sqdist / scale
    floor, cfloor = found.floor / scale, (found.col_min + found.width) / scale
    res = sparse_sinkhorn(a, b, rows, cols, cost, reg=reg, reg_m=reg_m, tol=tol, prune_at=prune_at,
                          regime="sparse", **options)
    n_iter, rounds = res.n_iter, 0
    while True:
        total = float(res.plan.sum())
        log_bound = outside_log_bound(a, b, res.f, res.g, floor, cfloor, reg)
        outside = float(np.exp(log_bound).sum())
        if outside <= CERT_OUTSIDE * total or rounds >= max_rounds:
            break
        # the bound does not certify: scan the rows it cannot clear, exactly, and re-admit what matters
        scan = np.flatnonzero(log_bound > math.log(CERT_OUTSIDE * total / n))
        extra, scanned = _excluded_pairs(x, y, a, b, scale, rows, cols, res.f, res.g, scan, reg, prune_at)
        outside = scanned + float(np.exp(np.delete(log_bound, scan)).sum())
        if extra[0].size == 0 or outside <= CERT_OUTSIDE * total:
            break
        rounds += 1
        rows, cols, cost = (np.concatenate([rows, extra[0]]), np.concatenate([cols, extra[1]]),
                            np.concatenate([cost, extra[2]]))
        warm = {k: v for k, v in options.items() if k != "eps_start"}
        res = sparse_sinkhorn(a, b, rows, cols, cost, reg=reg, reg_m=reg_m, tol=tol, prune_at=prune_at,
                              regime="sparse", init=(res.f, res.g), eps_start=reg, **warm)
        n_iter += res.n_iter
    cert = res.certificate.with_truncation(outside / total if total > 0 else math.inf)
    cert = replace(cert, readmitted=cert.readmitted + int(rows.size - found.rows.size))
    return CloudResult("sparse", res.objective, total, res.f, res.g, n_iter,
                       bool(res.converged and cert.holds), cert, time.perf_counter() - t0,
                       float(found.rows.size / (n * m)), int(rows.size), rounds, res)


def _excluded_pairs(x, y, a, b, scale, rows, cols, f, g, scan, reg, at, block: int = 1024):  # noqa: PLR0913
    """On the rows ``scan``: the pairs outside the support whose exponent at ``(f, g)`` exceeds ``-at``, and their mass.

    The rows are compared with every column in blocks of ``block`` rows. Returns ``((rows,
    cols, costs), mass)``, ``mass`` the plan mass at ``(f, g)`` of every outside pair of the
    scanned rows (exact, up to pairs below e^-80).
    """
    m = y.shape[0]
    key = np.sort(rows * m + cols)
    gg = np.where(np.isfinite(g), g, -np.inf)
    log_a, log_b = np.log(a), np.log(b)
    out_r, out_c, out_k, mass = [], [], [], 0.0
    for s in range(0, scan.size, block):
        r = scan[s : s + block]
        C = sqdist(x[r], y, scale)
        E = (f[r][:, None] + gg[None, :] - C) / reg
        ci, cj = np.nonzero(-at - 50.0 < E)
        pr = r[ci]
        k = pr * m + cj
        pos = np.clip(np.searchsorted(key, k), 0, max(key.size - 1, 0))
        outside = key[pos] != k if key.size else np.ones(k.size, dtype=bool)
        ci, cj, pr = ci[outside], cj[outside], pr[outside]
        e = E[ci, cj]
        mass += float(np.exp(log_a[pr] + log_b[cj] + e).sum())
        viol = e > -at
        out_r.append(pr[viol])
        out_c.append(cj[viol])
        out_k.append(C[ci, cj][viol])
    if not out_r:
        empty = np.zeros(0, dtype=np.int64)
        return (empty, empty, np.zeros(0)), mass
    return (np.concatenate(out_r).astype(np.int64), np.concatenate(out_c).astype(np.int64),
            np.concatenate(out_k)), mass


__all__ = ["CloudResult", "cloud_sinkhorn", "sqdist", "sqeuclidean_scale", "support_fraction"]
