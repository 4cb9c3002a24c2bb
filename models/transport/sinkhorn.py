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

from models.transport.support import component_labels

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


# One function on purpose: the epsilon schedule, absorption, over-relaxation and stopping share the
# iteration state; issue 19 reworks this solver (certificate, dense regime), with POT as the reference.
def sparse_sinkhorn(  # noqa: C901, PLR0913, PLR0915
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
                comp = component_labels(rows, cols, n, m)[1]
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


__all__ = ["SparseSinkhornResult", "sparse_sinkhorn", "truncation_bound", "unbalanced_objective"]
