r"""Sparse, log-stabilised, translation-invariant unbalanced Sinkhorn (float64).

Solves the entropic unbalanced optimal-transport problem restricted to a *support* (a set
of allowed pairs ``(i, j)``; every other entry of the plan is zero):

.. math::

    \min_{P \ge 0,\ \mathrm{supp}(P) \subseteq S}
        \langle C, P \rangle + \varepsilon\, \mathrm{KL}(P \,|\, a b^\top)
        + \rho\, \mathrm{KL}(P \mathbf 1 \,|\, a) + \rho\, \mathrm{KL}(P^\top \mathbf 1 \,|\, b)

with the generalised KL divergence :math:`\mathrm{KL}(p|q) = \sum p \log(p/q) - p + q`
(:math:`\rho = \infty` gives balanced OT). With the full support it is exactly POT's
``ot.unbalanced.sinkhorn_unbalanced(a, b, C, reg=eps, reg_m=rho, reg_type="kl")``;
with a sparse support it serves two purposes:

* *hard blocks* (no mass between different compositions): the support is block-diagonal,
  so the blocks are solved together but independently — sparsity instead of a huge finite
  cost, which would make exp-domain Sinkhorn collapse;
* *scale*: a k-nearest-neighbour support (:func:`knn_support`) keeps only pairs whose kernel
  is non-negligible, so 200,000 x 20,000 problems fit in memory; the result reports an
  a-posteriori bound on the plan mass the truncation can have cut away.

Numerics (Schmitzer 2019, "Stabilized sparse scaling algorithms for entropy regularized
transport problems"): the potentials are split into absorbed parts ``f_bar, g_bar`` baked
into the stored kernel values and scaling vectors ``u = exp(f - f_bar)/eps`` kept near 1;
each iteration costs two sparse mat-vecs, and the kernel is recomputed (absorption) only when
a log-scaling leaves [-30, 30] or eps changes. Epsilon-scaling starts at a large eps and
shrinks geometrically to the target. After every iteration the dual is maximised along the
translation ``(f + t, g - t)`` in closed form, ``t = rho/2 * log(sum a e^{-f/rho} /
sum b e^{-g/rho})`` (the idea of Séjourné, Vialard & Peyré 2022, "Faster unbalanced
optimal transport: translation invariant Sinkhorn and 1-D Frank-Wolfe", AISTATS), which
removes the slow total-mass mode of unbalanced Sinkhorn when rho >> eps.

This module does no I/O and never reads global state.
"""

from __future__ import annotations

import itertools
import math
import time
from dataclasses import dataclass
from typing import Literal

import numpy as np
import scipy.sparse as sp

_ABSORB_AT = 30.0
_AUTO_GATE = 0.05  # omega='auto': largest log-scaling change at which the rate is read


@dataclass(frozen=True)
class SparseSinkhornResult:
    """Solution of :func:`sparse_sinkhorn` on the support ``(rows, cols)``.

    ``plan`` holds the plan values aligned with ``rows``/``cols``; ``f`` and ``g`` the dual
    potentials (``-inf`` for points without support). ``objective`` is the primal value of
    the problem above (generalised KL); ``linear_cost`` is ``<C, P>``.
    """

    rows: np.ndarray
    cols: np.ndarray
    plan: np.ndarray
    f: np.ndarray
    g: np.ndarray
    objective: float
    linear_cost: float
    n_iter: int
    converged: bool
    error: float
    seconds: float
    n_pruned: int = 0
    n_blocks: int = 0
    omega: float = 1.0  # over-relaxation in use at the end (``omega="auto"``: the estimated one)

    def to_coo(self, shape: tuple[int, int]) -> sp.coo_matrix:
        return sp.coo_matrix((self.plan, (self.rows, self.cols)), shape=shape)


def unbalanced_objective(
    plan: np.ndarray,
    rows: np.ndarray,
    cols: np.ndarray,
    cost: np.ndarray,
    a: np.ndarray,
    b: np.ndarray,
    *,
    reg: float,
    reg_m: float,
) -> float:
    r"""Primal objective of a (sparse) plan: ``<C,P> + reg KL(P|ab^T) + reg_m (KL(P1|a) + KL(P^T1|b))``.

    Entries off the support are zero, so ``KL(P|ab^T)`` gets ``+ sum(a) sum(b)`` from them
    (the generalised KL's ``+q`` term); with ``reg_m = inf`` the marginal terms are dropped
    (balanced problem). Works the same on a dense plan passed with all pairs.
    """
    plan = np.asarray(plan, dtype=np.float64)
    pos = plan > 0
    q = a[rows[pos]] * b[cols[pos]]
    ent = float(np.sum(plan[pos] * np.log(plan[pos] / q)) - plan.sum() + a.sum() * b.sum())
    value = float(np.dot(plan, cost)) + reg * ent
    if math.isfinite(reg_m):
        r = np.bincount(rows, weights=plan, minlength=a.size)
        c = np.bincount(cols, weights=plan, minlength=b.size)
        value += reg_m * (_gkl(r, a) + _gkl(c, b))
    return value


def _gkl(p: np.ndarray, q: np.ndarray) -> float:
    pos = p > 0
    return float(np.sum(p[pos] * np.log(p[pos] / q[pos])) - p.sum() + q.sum())


def sparse_sinkhorn(
    a: np.ndarray,
    b: np.ndarray,
    rows: np.ndarray,
    cols: np.ndarray,
    cost: np.ndarray,
    *,
    reg: float,
    reg_m: float = math.inf,
    tol: float = 1e-9,
    max_iter: int = 20000,
    eps_start: float | None = None,
    eps_decay: float = 0.5,
    iter_per_eps: int = 20,
    translation_invariant: bool = True,
    prune_at: float | None = 30.0,
    omega: float | Literal["auto"] = 1.0,
    omega_probe: int = 10,
) -> SparseSinkhornResult:
    """Solve entropic (un)balanced OT on the support ``(rows, cols)`` with costs ``cost``.

    ``a``, ``b`` are the (n,), (m,) positive masses; ``rows``, ``cols``, ``cost`` the (nnz,)
    allowed pairs and their costs (duplicates are an error). ``reg`` is the entropic eps (cost
    units); ``reg_m`` the marginal KL weight rho (``inf`` = balanced; then ``sum a`` must
    equal ``sum b`` on every connected block of the support). The solver stops when the
    largest change of a log-scaling in one iteration (``|Δf| / eps``) is below ``tol`` at
    the target eps, or after ``max_iter`` iterations in all. Epsilon-scaling starts at
    ``eps_start`` (default: the largest cost; pass ``reg`` to disable it) and multiplies eps
    by ``eps_decay`` every ``iter_per_eps`` iterations; ``translation_invariant`` switches
    the closed-form dual translation step on (unbalanced only); ``omega`` in [1, 2)
    over-relaxes the log-scaling updates at the target eps (Thibault et al. 2021, "Overrelaxed
    Sinkhorn-Knopp algorithm for regularized optimal transport"), falling back to 1 when
    the error rises for five iterations in a row, applied per connected block
    of the support. ``omega="auto"`` runs ``omega_probe`` plain iterations at the target eps
    once the error is below 0.05 (the local, linear regime the theory covers), reads the
    linear rate ``theta`` of plain Sinkhorn off the error ratio, and switches to
    Young's optimal over-relaxation ``2 / (1 + sqrt(1 - theta))`` (Lehmann, von Renesse,
    Sambale & Uschmajew 2022, "A note on overrelaxation in the Sinkhorn algorithm", Optim.
    Lett. 16), capped at 1.95; if the error then rises, it probes again at a 10x smaller
    error. No tuning per problem. Near the target eps, pairs whose kernel falls below ``exp(-prune_at)``
    are dropped from the support (``None`` keeps all), which also splits well-separated
    clusters into blocks whose translations are then solved independently.

    """
    t0 = time.perf_counter()
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    rows = np.asarray(rows, dtype=np.int64)
    cols = np.asarray(cols, dtype=np.int64)
    cost = np.asarray(cost, dtype=np.float64)
    n, m = a.size, b.size
    if not (rows.shape == cols.shape == cost.shape):
        raise ValueError(f"support arrays differ in shape: {rows.shape}, {cols.shape}, {cost.shape}")
    if reg <= 0 or not math.isfinite(reg):
        raise ValueError(f"reg must be a positive finite number, got {reg}")
    auto_omega = isinstance(omega, str)
    if auto_omega and omega != "auto":
        raise ValueError(f"omega must be a number in [1, 2) or 'auto', got {omega!r}")
    if not auto_omega and not 1.0 <= omega < 2.0:
        raise ValueError(f"omega must be in [1, 2), got {omega}")
    if omega_probe < 2:
        raise ValueError(f"omega_probe must be >= 2, got {omega_probe}")
    if reg_m <= 0:
        raise ValueError(f"reg_m must be positive (inf for balanced), got {reg_m}")
    if np.any(a <= 0) or np.any(b <= 0):
        raise ValueError("masses a and b must be positive")
    if not np.all(np.isfinite(cost)):
        raise ValueError("costs must be finite (express forbidden pairs by leaving them out of the support)")
    if rows.size and (rows.min() < 0 or rows.max() >= n or cols.min() < 0 or cols.max() >= m):
        raise ValueError("support indices out of range")

    # CSR order once; only .data changes afterwards. Supports that arrive sorted (the pair
    # searches return them so) skip the O(nnz log nnz) sort.
    key = rows * m + cols
    if key.size > 1 and not np.all(key[1:] > key[:-1]):
        order = np.argsort(key, kind="stable")
        rows, cols, cost, key = rows[order], cols[order], cost[order], key[order]
    if key.size > 1 and np.any(key[1:] == key[:-1]):
        raise ValueError("support has duplicate pairs")
    row_has = np.bincount(rows, minlength=n) > 0
    col_has = np.bincount(cols, minlength=m) > 0

    fi = 1.0 if math.isinf(reg_m) else reg_m / (reg_m + reg)
    log_a, log_b = np.log(a), np.log(b)
    f_bar = np.zeros(n)
    g_bar = np.zeros(m)
    lu = np.zeros(n)
    lv = np.zeros(m)
    indptr = np.zeros(n + 1, dtype=np.int64)
    np.cumsum(np.bincount(rows, minlength=n), out=indptr[1:])
    base = log_a[rows] + log_b[cols]

    eps_target = float(reg)
    eps0 = float(eps_start) if eps_start is not None else max(float(cost.max(initial=0.0)), eps_target)
    eps_list = []
    e = eps0
    while e > eps_target:
        eps_list.append(e)
        e *= eps_decay
    eps_list.append(eps_target)

    def build_kernel(eps: float) -> tuple[sp.csr_matrix, sp.csr_matrix]:
        data = np.exp(base + (f_bar[rows] + g_bar[cols] - cost) / eps)
        K = sp.csr_matrix((data, cols, indptr), shape=(n, m))
        return K, K.T.tocsr()

    n_iter = 0
    err = math.inf
    converged = False
    comp = None
    n_pruned = 0
    with np.errstate(divide="ignore"):
        for stage, eps in enumerate(eps_list):
            last = stage == len(eps_list) - 1
            if prune_at is not None and eps <= 4.0 * eps_target and rows.size:
                # Drop pairs whose kernel is below e^-prune_at at this eps (their plan mass is
                # negligible); near the target eps the potentials are close to final.
                keep = (f_bar[rows] + g_bar[cols] - cost) / eps > -prune_at
                if not keep.all():
                    n_pruned += int((~keep).sum())
                    rows, cols, cost, base = rows[keep], cols[keep], cost[keep], base[keep]
                    indptr[1:] = np.cumsum(np.bincount(rows, minlength=n))
                    row_has = np.bincount(rows, minlength=n) > 0
                    col_has = np.bincount(cols, minlength=m) > 0
                    comp = None
            if translation_invariant and fi < 1.0 and comp is None:
                comp = _components(rows, cols, n, m)
            K, KT = build_kernel(eps)
            budget = max_iter - n_iter if last else iter_per_eps
            # over-relaxation only at the target eps, and switched off if the error grows
            om = omega if last and not auto_omega else 1.0
            rising = 0
            probe_errs: list[float] = []
            gate = _AUTO_GATE  # estimate omega only once the error is this small (local regime)
            for _ in range(budget):
                n_iter += 1
                if last and auto_omega and len(probe_errs) == omega_probe:
                    est = _young_omega(probe_errs)
                    if est is None:  # not yet in the linear regime (error not decreasing): probe again
                        probe_errs = []
                    else:
                        om = est
                        probe_errs.append(math.nan)  # estimated: stop probing
                kv = K @ np.exp(lv)
                lu_new = fi * (log_a - np.log(kv)) - (1.0 - fi) * f_bar / eps
                if om != 1.0:
                    lu_new = lu + om * (lu_new - lu)
                ktu = KT @ np.exp(lu_new)
                lv_new = fi * (log_b - np.log(ktu)) - (1.0 - fi) * g_bar / eps
                if om != 1.0:
                    lv_new = lv + om * (lv_new - lv)
                lu_new[~row_has] = 0.0
                lv_new[~col_has] = 0.0
                if comp is not None:
                    shift_s, shift_t = _ti_shift(f_bar + eps * lu_new, g_bar + eps * lv_new, log_a, log_b,
                                                 row_has, col_has, comp, reg_m)
                    lu_new += shift_s / eps
                    lv_new -= shift_t / eps
                if not (np.all(np.isfinite(lu_new)) and np.all(np.isfinite(lv_new))):
                    raise FloatingPointError(f"sparse_sinkhorn: non-finite scaling at iteration {n_iter} (eps={eps:g})")
                new_err = max(float(np.max(np.abs(lu_new - lu), initial=0.0)),
                              float(np.max(np.abs(lv_new - lv), initial=0.0)))
                rising = rising + 1 if new_err > err else 0
                if rising >= 5 and om != 1.0:
                    om = 1.0
                    if auto_omega:  # too early: probe again once the error is 10x smaller
                        probe_errs = []
                        gate = min(gate, new_err) / 10.0
                err = new_err
                if last and auto_omega and len(probe_errs) < omega_probe:
                    probe_errs = [*probe_errs, err] if err < gate else []
                lu, lv = lu_new, lv_new
                if max(np.max(np.abs(lu), initial=0.0), np.max(np.abs(lv), initial=0.0)) > _ABSORB_AT:
                    f_bar += eps * lu
                    g_bar += eps * lv
                    lu[:] = 0.0
                    lv[:] = 0.0
                    K, KT = build_kernel(eps)
                if last and err < tol:
                    converged = True
                    break
            # absorb before changing eps: the kernel depends on eps
            f_bar += eps * lu
            g_bar += eps * lv
            lu[:] = 0.0
            lv[:] = 0.0
            if last:
                break

    plan = np.exp(base + (f_bar[rows] + g_bar[cols] - cost) / eps_target)
    f = np.where(row_has, f_bar, -np.inf)
    g = np.where(col_has, g_bar, -np.inf)
    objective = unbalanced_objective(plan, rows, cols, cost, a, b, reg=eps_target, reg_m=reg_m)
    return SparseSinkhornResult(
        rows=rows,
        cols=cols,
        plan=plan,
        f=f,
        g=g,
        objective=objective,
        linear_cost=float(np.dot(plan, cost)),
        n_iter=n_iter,
        converged=converged,
        error=float(err),
        seconds=time.perf_counter() - t0,
        n_pruned=n_pruned,
        n_blocks=int(comp.max()) + 1 if comp is not None and comp.size else 0,
        omega=float(om),
    )


def _young_omega(errs: list[float]) -> float | None:
    """Optimal over-relaxation from the errors of plain iterations, or None if not estimable.

    The rate is read over the second half of the probe and only trusted when the error
    decreased monotonically there (a linear regime).
    """
    tail = errs[len(errs) // 2 - 1 :]
    if not all(math.isfinite(e) and e > 0 for e in tail) or any(b >= a for a, b in itertools.pairwise(tail)):
        return None
    theta = min((tail[-1] / tail[0]) ** (1.0 / (len(tail) - 1)), 0.9975)
    return min(2.0 / (1.0 + math.sqrt(1.0 - theta)), 1.95)


def _components(rows: np.ndarray, cols: np.ndarray, n: int, m: int) -> np.ndarray:
    """Connected-component label of every source (first n) and target (last m) point."""
    from scipy.sparse.csgraph import connected_components

    graph = sp.coo_matrix((np.ones(rows.size, dtype=np.int8), (rows, cols + n)), shape=(n + m, n + m))
    return connected_components(graph, directed=False)[1]


def _ti_shift(f, g, log_a, log_b, row_has, col_has, comp, rho) -> tuple[np.ndarray, np.ndarray]:
    """Dual-optimal translation per connected block of the support (closed form).

    On a block B that shares no pair with the rest, ``(f + t, g - t)`` on B leaves the
    entropic term unchanged, so the best t is ``rho/2 * (LSE_B(log a - f/rho) -
    LSE_B(log b - g/rho))``. Points without support are left alone.
    """
    n = f.size
    cs, ct = comp[:n], comp[n:]
    k = int(comp.max()) + 1 if comp.size else 0
    lse_s = _group_lse(np.where(row_has, log_a - f / rho, -np.inf), cs, k)
    lse_t = _group_lse(np.where(col_has, log_b - g / rho, -np.inf), ct, k)
    with np.errstate(invalid="ignore"):  # blocks of points without support: -inf - -inf
        t = 0.5 * rho * (lse_s - lse_t)
    t[~np.isfinite(t)] = 0.0
    return np.where(row_has, t[cs], 0.0), np.where(col_has, t[ct], 0.0)


def _group_lse(x: np.ndarray, group: np.ndarray, k: int) -> np.ndarray:
    mx = np.full(k, -np.inf)
    np.maximum.at(mx, group, x)
    safe = np.where(np.isfinite(mx), mx, 0.0)
    with np.errstate(divide="ignore"):
        return safe + np.log(np.bincount(group, weights=np.exp(x - safe[group]), minlength=k))


def _lse(x: np.ndarray) -> float:
    mx = float(np.max(x))
    return mx + math.log(float(np.sum(np.exp(x - mx))))


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
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Union of the k nearest targets of every source and the k nearest sources of every target.

    Returns ``rows, cols, kth`` where ``kth`` (n,) is each source's squared distance to its
    ``k_source``-th nearest target (used for the truncation bound). Brute force in chunks with
    torch (float32 distances for the search only; callers recompute float64 costs on the pairs).
    """
    import torch

    if threads is not None:
        torch.set_num_threads(threads)
    xt = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))
    yt = torch.from_numpy(np.ascontiguousarray(y, dtype=np.float32))
    n, m = xt.shape[0], yt.shape[0]
    r1, c1, kth = _brute_knn(xt, yt, min(k_source, m), chunk)
    c2, r2, _ = _brute_knn(yt, xt, min(k_target, n), chunk)  # contiguous rows: faster than topk on d.T
    key = np.unique(np.concatenate([r1, r2]) * m + np.concatenate([c1, c2]))
    return key // m, key % m, kth


def _brute_knn(q, base, k: int, chunk: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
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
    :func:`models.pairsearch.radius_pairs` (exact, float64, one pass), which also returns the
    distances of the pairs; at most ``chunk`` rows per distance block.
    """
    from models.pairsearch import radius_pairs

    found = radius_pairs(x, y, width=width, block_entries=min(max(1, chunk) * max(1, np.shape(y)[0]), 1 << 19))
    return found.rows, found.cols, found.floor


def _kmeans(points, n_cells: int, iters: int, seed: int, sample: int = 16384, chunk: int = 16384):
    """Lloyd k-means in torch (float32) fitted on a sample; returns centroids and all labels.

    Fitting on at most ``sample`` points and assigning in chunks keeps time and memory
    linear in the number of points.
    """
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


def _cell_knn(queries, base, k: int, cell_size: int, n_probe: int, seed: int):
    """Approximate k nearest ``base`` points of every query (inverted-file search).

    ``base`` is split into k-means cells of about ``cell_size`` points; every query scans
    the ``n_probe`` cells with the nearest centroids and keeps its k nearest candidates there.
    Returns (query index, base index, squared distance) triples and each query's k-th distance.
    """
    import torch

    nb = base.shape[0]
    n_cells = max(1, min(nb, nb // max(cell_size, 1)))
    cent, lab = _kmeans(base, n_cells, iters=8, seed=seed)
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
    import torch

    xt = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))
    yt = torch.from_numpy(np.ascontiguousarray(y, dtype=np.float32))
    r1, c1, kth = _cell_knn(xt, yt, k_source, cell_size, n_probe, seed)
    c2, r2, _ = _cell_knn(yt, xt, k_target, cell_size, n_probe, seed + 1)
    m = y.shape[0]
    key = np.unique(np.concatenate([r1, r2]).astype(np.int64) * m + np.concatenate([c1, c2]).astype(np.int64))
    return key // m, key % m, kth


def truncation_bound(
    res: SparseSinkhornResult, a: np.ndarray, b: np.ndarray, kth_cost: np.ndarray, reg: float
) -> float:
    r"""Upper bound on the plan mass cut away by a kNN support, relative to the plan mass.

    An excluded pair of row i costs at least ``kth_cost[i]`` (its k-th neighbour's cost;
    valid when the remaining cost terms are non-negative), so its entry in the optimal dense
    plan with the same potentials is at most ``a_i b_j exp((f_i + g_j - kth_cost_i)/eps)``;
    summing over j bounds the mass row i could gain. It is a diagnostic, not an estimate.
    """
    ok = np.isfinite(res.f)
    okg = np.isfinite(res.g)
    if not ok.any() or not okg.any():
        return 0.0
    log_gsum = _lse(np.log(b[okg]) + res.g[okg] / reg)
    log_rows = np.log(a[ok]) + (res.f[ok] - kth_cost[ok]) / reg + log_gsum
    total = float(res.plan.sum())
    return float(math.exp(_lse(log_rows)) / total) if total > 0 else 0.0
