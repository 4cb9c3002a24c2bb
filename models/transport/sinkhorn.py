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

# regime="auto": the dense kernel (all n x m entries, BLAS matrix-vector products on two threads)
# is used when the support holds at least this fraction of all pairs and the matrix fits; below
# it the sparse kernel's O(nnz) products win (crossover measured in benchmarks/ot_solver.py)
DENSE_FRACTION = 0.1
DENSE_MAX_ENTRIES = 400_000_000  # 3.2 GB per float64 matrix; the dense kernel holds two (cost and kernel)

# the certificate holds when the first-order residual and the mass outside the solved support
# (both relative to the plan's mass) are below these
CERT_RESIDUAL = 1e-5
CERT_OUTSIDE = 1e-6
_MAX_READMIT_ROUNDS = 50


@dataclass(frozen=True)
class Certificate:
    """What the solver can show about the point it stopped at, all relative to the plan's mass.

    ``residual``: first-order residual, the L1 violation of the optimality conditions of the
    marginals, ``sum_i |r_i - a_i e^{-f_i/rho}| + sum_j |c_j - b_j e^{-g_j/rho}|`` (``r, c``
    the plan's row and column sums; balanced: ``|r - a| + |c - b|``), over points with support.
    ``pruned_mass``: the mass the plan would put, at the final potentials, on the pairs the
    solver pruned and did not re-admit (an exact sum, not a bound). ``truncation_bound``: a
    bound on the mass of pairs that were never in the support given to the solver (a kNN or
    radius support; 0 for exact supports such as the hard block or all pairs), set by the
    caller that knows the geometry (:func:`truncation_bound`). ``readmitted``: pruned pairs
    brought back because the final potentials said they matter.
    """

    residual: float
    pruned_mass: float
    truncation_bound: float = 0.0
    readmitted: int = 0

    @property
    def holds(self) -> bool:
        return (self.residual <= CERT_RESIDUAL
                and self.pruned_mass + self.truncation_bound <= CERT_OUTSIDE)

    def with_truncation(self, bound: float) -> Certificate:
        return Certificate(self.residual, self.pruned_mass, float(bound), self.readmitted)

    def as_info(self) -> dict[str, float]:
        """Return the certificate as float entries of a solver ``info`` dict (keys ``cert_*``)."""
        return {"cert_residual": self.residual, "cert_pruned_mass": self.pruned_mass,
                "cert_truncation_bound": self.truncation_bound, "cert_readmitted": float(self.readmitted)}

    @classmethod
    def from_info(cls, info: dict[str, float]) -> Certificate | None:
        """Read back :meth:`as_info` entries (None when a formulation gives no certificate)."""
        if "cert_residual" not in info:
            return None
        return cls(float(info["cert_residual"]), float(info["cert_pruned_mass"]),
                   float(info["cert_truncation_bound"]), int(info["cert_readmitted"]))

    def as_dict(self) -> dict[str, float | int | bool]:
        return {"residual": self.residual, "pruned_mass": self.pruned_mass,
                "truncation_bound": self.truncation_bound, "readmitted": self.readmitted,
                "residual_limit": CERT_RESIDUAL, "outside_limit": CERT_OUTSIDE, "holds": self.holds}


@dataclass(frozen=True)
class SparseSinkhornResult:
    """Solution of :func:`sparse_sinkhorn` on the support ``(rows, cols)``.

    ``plan`` holds the plan values aligned with ``rows``/``cols``; ``f`` and ``g`` the dual
    potentials (``-inf`` for points without support). ``objective`` is the primal value of
    the problem above (generalised KL); ``linear_cost`` is ``<C, P>``. ``converged`` means the
    iteration met ``tol`` *and* the :class:`Certificate` holds; ``regime`` says which kernel
    solved it (``"sparse"`` or ``"dense"``).
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
    regime: str = "sparse"
    certificate: Certificate | None = None

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


class _SparseKernel:
    """The support as CSR (rows sorted): kernel values, pruning and re-admission of pairs.

    ``base`` is ``log a_i + log b_j``; the kernel at eps with absorbed potentials ``f_bar,
    g_bar`` is ``exp(base + (f_bar_i + g_bar_j - C_ij) / eps)``, i.e. ``a_i b_j`` times the
    plan's exponent, so the plan is the kernel scaled by the scalings.
    """

    def __init__(self, rows, cols, cost, log_a, log_b) -> None:
        self.n, self.m = log_a.size, log_b.size
        self.log_a, self.log_b = log_a, log_b
        self._set(rows, cols, cost)
        empty = np.zeros(0, dtype=np.int64)
        self.dropped = (empty, empty, np.zeros(0))

    def _set(self, rows, cols, cost) -> None:
        self.rows, self.cols, self.cost = rows, cols, cost
        self.base = self.log_a[rows] + self.log_b[cols]
        counts = np.bincount(rows, minlength=self.n)
        self.indptr = np.zeros(self.n + 1, dtype=np.int64)
        np.cumsum(counts, out=self.indptr[1:])
        self.row_has = counts > 0
        self.col_has = np.bincount(cols, minlength=self.m) > 0

    def exponent(self, eps, f_bar, g_bar) -> np.ndarray:
        return (f_bar[self.rows] + g_bar[self.cols] - self.cost) / eps

    def operators(self, eps, f_bar, g_bar):
        data = np.exp(self.base + self.exponent(eps, f_bar, g_bar))
        K = sp.csr_matrix((data, self.cols, self.indptr), shape=(self.n, self.m))
        KT = K.T.tocsr()
        return K.__matmul__, KT.__matmul__

    def plan(self, eps, f_bar, g_bar) -> np.ndarray:
        return np.exp(self.base + self.exponent(eps, f_bar, g_bar))

    def components(self) -> np.ndarray:
        return component_labels(self.rows, self.cols, self.n, self.m)[1]

    def start_potentials(self, fi: float) -> tuple[np.ndarray, np.ndarray]:
        """``f = fi min_j C_ij``, then ``g = fi min_i (C_ij - f_i)``: every row and column has a kernel entry near 1."""
        f = np.full(self.n, np.inf)
        np.minimum.at(f, self.rows, self.cost)
        f = np.where(np.isfinite(f), fi * f, 0.0)
        g = np.full(self.m, np.inf)
        np.minimum.at(g, self.cols, self.cost - f[self.rows])
        return f, np.where(np.isfinite(g), fi * g, 0.0)

    def prune(self, eps, f_bar, g_bar, at: float) -> int:
        """Drop pairs whose kernel exponent is below ``-at`` (kept aside for re-admission)."""
        keep = self.exponent(eps, f_bar, g_bar) > -at
        if keep.all():
            return 0
        dr, dc, dk = self.dropped
        self.dropped = (np.concatenate([dr, self.rows[~keep]]), np.concatenate([dc, self.cols[~keep]]),
                        np.concatenate([dk, self.cost[~keep]]))
        self._set(self.rows[keep], self.cols[keep], self.cost[keep])
        return int((~keep).sum())

    def _dropped_exponent(self, eps, f_bar, g_bar) -> np.ndarray:
        dr, dc, dk = self.dropped
        return (f_bar[dr] + g_bar[dc] - dk) / eps

    def refresh_lost(self, eps, f_bar, g_bar, fi: float) -> None:
        """Give points that lost every pair to pruning their c-transform over the dropped pairs (in place).

        The iteration leaves such a point's potential where it was when its last pair went; the
        optimality check needs the potential the full support would give it,
        ``f_i = -fi eps LSE_j(log b_j + (g_j - C_ij) / eps)`` (and the same for columns).
        """
        dr, dc, dk = self.dropped
        lost = ~self.row_has[dr]
        if lost.any():
            lse = _group_lse(self.log_b[dc[lost]] + (g_bar[dc[lost]] - dk[lost]) / eps, dr[lost], self.n)
            upd = np.isfinite(lse)
            f_bar[upd] = -fi * eps * lse[upd]
        lost = ~self.col_has[dc]
        if lost.any():
            lse = _group_lse(self.log_a[dr[lost]] + (f_bar[dr[lost]] - dk[lost]) / eps, dc[lost], self.m)
            upd = np.isfinite(lse)
            g_bar[upd] = -fi * eps * lse[upd]

    def readmit(self, eps, f_bar, g_bar, at: float, fi: float) -> int:
        """Bring back the dropped pairs whose exponent at the current potentials exceeds ``-at``."""
        dr, dc, dk = self.dropped
        if dr.size == 0:
            return 0
        self.refresh_lost(eps, f_bar, g_bar, fi)
        back = self._dropped_exponent(eps, f_bar, g_bar) > -at
        if not back.any():
            return 0
        rows = np.concatenate([self.rows, dr[back]])
        cols = np.concatenate([self.cols, dc[back]])
        cost = np.concatenate([self.cost, dk[back]])
        order = np.argsort(rows * self.m + cols, kind="stable")
        self._set(rows[order], cols[order], cost[order])
        self.dropped = (dr[~back], dc[~back], dk[~back])
        return int(back.sum())

    def dropped_mass(self, eps, f_bar, g_bar, fi: float) -> float:
        """Mass the plan would put on the dropped pairs at these potentials (exact sum)."""
        dr, dc, _ = self.dropped
        if dr.size == 0:
            return 0.0
        f_bar, g_bar = f_bar.copy(), g_bar.copy()
        self.refresh_lost(eps, f_bar, g_bar, fi)
        z = self.log_a[dr] + self.log_b[dc] + self._dropped_exponent(eps, f_bar, g_bar)
        return float(np.exp(z).sum())


class _DenseKernel:
    """All n x m entries in one float64 matrix (``+inf`` cost = forbidden pair, kernel 0).

    The products are BLAS matrix-vector products (numpy's BLAS uses every thread it is given);
    no pair is ever pruned. One more n x m buffer holds the kernel, refilled in place.
    """

    def __init__(self, cost_matrix: np.ndarray, log_a: np.ndarray, log_b: np.ndarray) -> None:
        self.n, self.m = cost_matrix.shape
        self.C = cost_matrix
        self.log_a, self.log_b = log_a, log_b
        finite = np.isfinite(cost_matrix)
        self.row_has = finite.any(1)
        self.col_has = finite.any(0)
        self.all_finite = bool(self.row_has.all() and finite.all())
        del finite
        self.K = np.empty_like(cost_matrix)

    def _fill(self, eps, f_bar, g_bar) -> np.ndarray:
        np.multiply(self.C, -1.0 / eps, out=self.K)
        self.K += (self.log_a + f_bar / eps)[:, None]
        self.K += (self.log_b + g_bar / eps)[None, :]
        np.exp(self.K, out=self.K)
        return self.K

    def operators(self, eps, f_bar, g_bar):
        K = self._fill(eps, f_bar, g_bar)
        return K.__matmul__, K.T.__matmul__

    def plan(self, eps, f_bar, g_bar) -> np.ndarray:
        return self._fill(eps, f_bar, g_bar)

    def components(self) -> np.ndarray:
        if self.all_finite:  # every pair allowed: one block
            return np.zeros(self.n + self.m, dtype=np.int64)
        rows, cols = np.nonzero(np.isfinite(self.C))
        return component_labels(rows, cols, self.n, self.m)[1]

    def start_potentials(self, fi: float) -> tuple[np.ndarray, np.ndarray]:
        f = self.C.min(1)
        f = np.where(np.isfinite(f), fi * f, 0.0)
        g = np.full(self.m, np.inf)
        for s in range(0, self.n, 4096):  # blocked: no second n x m temporary
            np.minimum(g, (self.C[s : s + 4096] - f[s : s + 4096, None]).min(0), out=g)
        return f, np.where(np.isfinite(g), fi * g, 0.0)

    def prune(self, eps, f_bar, g_bar, at: float) -> int:
        return 0

    def readmit(self, eps, f_bar, g_bar, at: float, fi: float) -> int:
        return 0

    def dropped_mass(self, eps, f_bar, g_bar, fi: float) -> float:
        return 0.0


def _check_inputs(a, b, reg, reg_m, omega, omega_probe) -> tuple[np.ndarray, np.ndarray]:
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    if reg <= 0 or not math.isfinite(reg):
        raise ValueError(f"reg must be a positive finite number, got {reg}")
    if isinstance(omega, str):
        if omega != "auto":
            raise ValueError(f"omega must be a number in [1, 2) or 'auto', got {omega!r}")
    elif not 1.0 <= omega < 2.0:
        raise ValueError(f"omega must be in [1, 2), got {omega}")
    if omega_probe < 2:
        raise ValueError(f"omega_probe must be >= 2, got {omega_probe}")
    if reg_m <= 0:
        raise ValueError(f"reg_m must be positive (inf for balanced), got {reg_m}")
    if np.any(a <= 0) or np.any(b <= 0):
        raise ValueError("masses a and b must be positive")
    return a, b


def sparse_sinkhorn(  # noqa: PLR0913
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
    regime: Literal["auto", "sparse", "dense"] = "auto",
    init: tuple[np.ndarray, np.ndarray] | None = None,
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
    error. No tuning per problem.

    Pruning (sparse regime): near the target eps, pairs whose kernel exponent falls below
    ``-prune_at`` are set aside (``None`` keeps all); this also splits well-separated
    clusters into blocks whose translations are then solved independently. Potentials still
    move after a pair is pruned, so at the target eps the set-aside pairs are checked against
    the final potentials and every pair whose exponent is back above ``-prune_at`` is
    re-admitted and the iteration resumed, until none is (the result's
    :class:`Certificate` gives the mass left on pruned pairs, and the first-order residual).

    ``regime``: ``"sparse"`` (CSR products, O(nnz) per iteration), ``"dense"`` (one n x m
    matrix, BLAS products; forbidden pairs have kernel 0; no pruning) or ``"auto"`` (dense
    when the support holds at least :data:`DENSE_FRACTION` of all pairs and n m is at most
    :data:`DENSE_MAX_ENTRIES`). ``init``: potentials ``(f, g)`` to start from (e.g. a solve on
    a smaller support; ``-inf`` entries start at 0).
    """
    t0 = time.perf_counter()
    a, b = _check_inputs(a, b, reg, reg_m, omega, omega_probe)
    rows = np.asarray(rows, dtype=np.int64)
    cols = np.asarray(cols, dtype=np.int64)
    cost = np.asarray(cost, dtype=np.float64)
    n, m = a.size, b.size
    if not (rows.shape == cols.shape == cost.shape):
        raise ValueError(f"support arrays differ in shape: {rows.shape}, {cols.shape}, {cost.shape}")
    if not np.all(np.isfinite(cost)):
        raise ValueError("costs must be finite (express forbidden pairs by leaving them out of the support)")
    if rows.size and (rows.min() < 0 or rows.max() >= n or cols.min() < 0 or cols.max() >= m):
        raise ValueError("support indices out of range")
    if regime not in ("auto", "sparse", "dense"):
        raise ValueError(f"regime must be 'auto', 'sparse' or 'dense', got {regime!r}")

    # CSR order once; only .data changes afterwards. Supports that arrive sorted (the pair
    # searches return them so) skip the O(nnz log nnz) sort.
    key = rows * m + cols
    if key.size > 1 and not np.all(key[1:] > key[:-1]):
        order = np.argsort(key, kind="stable")
        rows, cols, cost, key = rows[order], cols[order], cost[order], key[order]
    if key.size > 1 and np.any(key[1:] == key[:-1]):
        raise ValueError("support has duplicate pairs")
    log_a, log_b = np.log(a), np.log(b)
    dense = regime == "dense" or (regime == "auto" and n * m <= DENSE_MAX_ENTRIES
                                  and rows.size >= DENSE_FRACTION * n * m and rows.size > 0)
    if dense:
        C = np.full((n, m), np.inf)
        C[rows, cols] = cost
        kernel: _SparseKernel | _DenseKernel = _DenseKernel(C, log_a, log_b)
    else:
        kernel = _SparseKernel(rows, cols, cost, log_a, log_b)
    state = _solve(kernel, log_a, log_b, reg=float(reg), reg_m=reg_m, tol=tol, max_iter=max_iter,
                   eps_start=eps_start, eps_decay=eps_decay, iter_per_eps=iter_per_eps,
                   translation_invariant=translation_invariant, prune_at=None if dense else prune_at,
                   omega=omega, omega_probe=omega_probe, init=init,
                   cost_max=float(cost.max(initial=0.0)))
    f_bar, g_bar, eps = state["f_bar"], state["g_bar"], float(reg)
    fi = 1.0 if math.isinf(reg_m) else reg_m / (reg_m + reg)
    if dense:
        plan = kernel.plan(eps, f_bar, g_bar)[rows, cols]
    else:
        rows, cols, cost = kernel.rows, kernel.cols, kernel.cost
        plan = kernel.plan(eps, f_bar, g_bar)
    f = np.where(kernel.row_has, f_bar, -np.inf)
    g = np.where(kernel.col_has, g_bar, -np.inf)
    cert = _certificate(plan, rows, cols, a, b, f, g, reg_m, pruned=kernel.dropped_mass(eps, f_bar, g_bar, fi),
                        readmitted=state["readmitted"])
    del kernel  # a dense kernel's n x m buffers are not needed any more
    objective = unbalanced_objective(plan, rows, cols, cost, a, b, reg=eps, reg_m=reg_m)
    comp = state["comp"]
    return SparseSinkhornResult(
        rows=rows,
        cols=cols,
        plan=plan,
        f=f,
        g=g,
        objective=objective,
        linear_cost=float(np.dot(plan, cost)),
        n_iter=state["n_iter"],
        converged=bool(state["converged"] and cert.holds),
        error=float(state["err"]),
        seconds=time.perf_counter() - t0,
        n_pruned=state["n_pruned"],
        n_blocks=int(comp.max()) + 1 if comp is not None and comp.size else 0,
        omega=float(state["omega"]),
        regime="dense" if dense else "sparse",
        certificate=cert,
    )


@dataclass(frozen=True)
class DenseSinkhornResult:
    """Solution of :func:`dense_sinkhorn`: the (n, m) ``plan`` and the potentials, as in :class:`SparseSinkhornResult`."""

    plan: np.ndarray
    f: np.ndarray
    g: np.ndarray
    objective: float
    linear_cost: float
    n_iter: int
    converged: bool
    error: float
    seconds: float
    omega: float = 1.0
    certificate: Certificate | None = None
    regime: str = "dense"


def dense_sinkhorn(  # noqa: PLR0913
    a: np.ndarray,
    b: np.ndarray,
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
    omega: float | Literal["auto"] = 1.0,
    omega_probe: int = 10,
    init: tuple[np.ndarray, np.ndarray] | None = None,
) -> DenseSinkhornResult:
    """Solve the problem of :func:`sparse_sinkhorn` on a full (n, m) cost matrix, without index arrays.

    Same algorithm and options (eps-scaling, absorption, translation-invariant steps,
    over-relaxation); ``+inf`` entries of ``cost`` are forbidden pairs (kernel 0). Memory: the
    cost matrix and one n x m kernel buffer. Equals POT's ``sinkhorn_unbalanced`` on the same
    matrix, also where POT's plain exp-domain iteration underflows (small reg).
    """
    t0 = time.perf_counter()
    a, b = _check_inputs(a, b, reg, reg_m, omega, omega_probe)
    C = np.ascontiguousarray(cost, dtype=np.float64)
    if C.shape != (a.size, b.size):
        raise ValueError(f"cost has shape {C.shape}, expected ({a.size}, {b.size})")
    if not (C.min(initial=0.0) > -np.inf and not np.isnan(C.max(initial=0.0))):
        raise ValueError("costs must be finite or +inf (a forbidden pair)")
    log_a, log_b = np.log(a), np.log(b)
    kernel = _DenseKernel(C, log_a, log_b)
    state = _solve(kernel, log_a, log_b, reg=float(reg), reg_m=reg_m, tol=tol, max_iter=max_iter,
                   eps_start=eps_start, eps_decay=eps_decay, iter_per_eps=iter_per_eps,
                   translation_invariant=translation_invariant, prune_at=None, omega=omega,
                   omega_probe=omega_probe, init=init,
                   cost_max=float(np.max(C, where=np.isfinite(C), initial=0.0)))
    eps = float(reg)
    plan = kernel.plan(eps, state["f_bar"], state["g_bar"])  # the kernel's buffer, handed over
    f = np.where(kernel.row_has, state["f_bar"], -np.inf)
    g = np.where(kernel.col_has, state["g_bar"], -np.inf)
    objective, linear = _dense_objective(plan, C, a, b, eps, reg_m)
    r, c = plan.sum(1), plan.sum(0)
    cert = _marginal_certificate(r, c, a, b, f, g, reg_m, total=float(r.sum()), pruned=0.0, readmitted=0)
    return DenseSinkhornResult(plan=plan, f=f, g=g, objective=objective, linear_cost=linear, n_iter=state["n_iter"],
                               converged=bool(state["converged"] and cert.holds), error=float(state["err"]),
                               seconds=time.perf_counter() - t0, omega=float(state["omega"]), certificate=cert)


def _dense_objective(P: np.ndarray, C: np.ndarray, a, b, reg: float, reg_m: float, block: int = 2048) -> tuple[float, float]:
    """Objective and ``<C, P>`` of a dense plan, in row blocks (bounded temporaries)."""
    linear = ent = 0.0
    log_b = np.log(b)
    for s in range(0, P.shape[0], block):
        p = P[s : s + block]
        pos = p > 0
        with np.errstate(divide="ignore", invalid="ignore"):
            linear += float(np.where(pos, p * C[s : s + block], 0.0).sum())
            ent += float(np.where(pos, p * (np.log(p) - np.log(a[s : s + block])[:, None] - log_b[None, :]), 0.0).sum())
    ent += -float(P.sum()) + float(a.sum() * b.sum())
    value = linear + reg * ent
    if math.isfinite(reg_m):
        value += reg_m * (_gkl(P.sum(1), a) + _gkl(P.sum(0), b))
    return value, linear


def _certificate(plan, rows, cols, a, b, f, g, reg_m, *, pruned: float, readmitted: int) -> Certificate:
    """First-order residual of the marginals and the pruned pairs' mass, relative to the plan's mass."""
    r = np.bincount(rows, weights=plan, minlength=a.size)
    c = np.bincount(cols, weights=plan, minlength=b.size)
    return _marginal_certificate(r, c, a, b, f, g, reg_m, total=float(plan.sum()), pruned=pruned, readmitted=readmitted)


def _marginal_certificate(r, c, a, b, f, g, reg_m, *, total: float, pruned: float, readmitted: int) -> Certificate:
    ok_r, ok_c = np.isfinite(f), np.isfinite(g)
    if math.isfinite(reg_m):
        want_r = a[ok_r] * np.exp(-f[ok_r] / reg_m)
        want_c = b[ok_c] * np.exp(-g[ok_c] / reg_m)
    else:
        want_r, want_c = a[ok_r], b[ok_c]
    if total <= 0:
        return Certificate(math.inf, math.inf, 0.0, readmitted)
    residual = float(np.abs(r[ok_r] - want_r).sum() + np.abs(c[ok_c] - want_c).sum()) / total
    return Certificate(residual, pruned / total, 0.0, readmitted)


# One function on purpose: the epsilon schedule, absorption, over-relaxation, pruning and
# re-admission share the iteration state; the kernel (sparse or dense) is the only thing that varies.
def _solve(kernel, log_a, log_b, *, reg, reg_m, tol, max_iter, eps_start, eps_decay,  # noqa: C901, PLR0913, PLR0915
           iter_per_eps, translation_invariant, prune_at, omega, omega_probe, init, cost_max) -> dict:
    n, m = log_a.size, log_b.size
    auto_omega = isinstance(omega, str)
    fi = 1.0 if math.isinf(reg_m) else reg_m / (reg_m + reg)
    f_bar, g_bar = np.zeros(n), np.zeros(m)
    if init is not None:
        f_bar = np.where(np.isfinite(init[0]), init[0], 0.0).astype(np.float64)
        g_bar = np.where(np.isfinite(init[1]), init[1], 0.0).astype(np.float64)
    lu, lv = np.zeros(n), np.zeros(m)
    eps_target = reg
    eps0 = float(eps_start) if eps_start is not None else max(cost_max, eps_target)
    eps_list = []
    e = eps0
    while e > eps_target:
        eps_list.append(e)
        e *= eps_decay
    eps_list.append(eps_target)

    if init is None:
        # a row (column) whose every kernel entry underflows at the first eps would divide by 0:
        # then start from potentials that give each one an entry near 1 (otherwise from 0)
        K, KT = kernel.operators(eps_list[0], f_bar, g_bar)
        with np.errstate(over="ignore"):
            underflow = (np.any(K(np.ones(m))[kernel.row_has] <= 0)
                         or np.any(KT(np.ones(n))[kernel.col_has] <= 0))
        if underflow:
            f_bar, g_bar = kernel.start_potentials(fi)
    n_iter, err, converged, comp, n_pruned, readmitted = 0, math.inf, False, None, 0, 0
    om = 1.0
    stage = rounds = 0
    with np.errstate(divide="ignore"):
        while stage < len(eps_list):
            eps = eps_list[stage]
            last = stage == len(eps_list) - 1
            if prune_at is not None and eps <= 4.0 * eps_target:
                # set aside pairs whose kernel is below e^-prune_at at this eps; re-checked at the end
                dropped = kernel.prune(eps, f_bar, g_bar, prune_at)
                n_pruned += dropped
                if dropped:
                    comp = None
            if translation_invariant and fi < 1.0 and comp is None:
                comp = kernel.components()
            row_has, col_has = kernel.row_has, kernel.col_has
            K, KT = kernel.operators(eps, f_bar, g_bar)
            budget = max_iter - n_iter if last else iter_per_eps
            # over-relaxation only at the target eps, and switched off if the error grows
            om = omega if last and not auto_omega else 1.0
            rising = 0
            probe_errs: list[float] = []
            gate = _AUTO_GATE  # estimate omega only once the error is this small (local regime)
            converged = False
            for _ in range(budget):
                n_iter += 1
                if last and auto_omega and len(probe_errs) == omega_probe:
                    est = _young_omega(probe_errs)
                    if est is None:  # not yet in the linear regime (error not decreasing): probe again
                        probe_errs = []
                    else:
                        om = est
                        probe_errs.append(math.nan)  # estimated: stop probing
                kv = K(np.exp(lv))
                lu_new = fi * (log_a - np.log(kv)) - (1.0 - fi) * f_bar / eps
                if om != 1.0:
                    lu_new = lu + om * (lu_new - lu)
                lu_new[~row_has] = 0.0  # before the product: a dense kernel multiplies them by its zeros
                ktu = KT(np.exp(lu_new))
                lv_new = fi * (log_b - np.log(ktu)) - (1.0 - fi) * g_bar / eps
                if om != 1.0:
                    lv_new = lv + om * (lv_new - lv)
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
                    K, KT = kernel.operators(eps, f_bar, g_bar)
                if last and err < tol:
                    converged = True
                    break
            # absorb before changing eps: the kernel depends on eps
            f_bar += eps * lu
            g_bar += eps * lv
            lu[:] = 0.0
            lv[:] = 0.0
            if last and prune_at is not None and n_iter < max_iter and rounds < _MAX_READMIT_ROUNDS:
                back = kernel.readmit(eps, f_bar, g_bar, prune_at, fi)
                if back:  # the final potentials say these pairs matter: solve again with them
                    rounds += 1
                    readmitted += back
                    comp = None
                    err = math.inf
                    continue
            stage += 1
    return {"f_bar": f_bar, "g_bar": g_bar, "n_iter": n_iter, "err": err, "converged": converged,
            "comp": comp, "n_pruned": n_pruned, "readmitted": readmitted, "omega": om}


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


def outside_log_bound(a, b, f, g, floor, cfloor, reg) -> np.ndarray:
    r"""Per row, the log of a bound on the plan mass at ``(f, g)`` of its pairs outside a support.

    ``floor`` (n,) and ``cfloor`` (m,) bound the cost of every excluded pair from below through
    its row and through its column (radius support: nearest cost + width; kNN support: the k-th
    neighbour's cost). A pair is outside only if its cost exceeds both floors, so
    row i's outside mass is at most ``a_i e^{f_i/eps} (sum_{j: cf_j >= fl_i} b_j e^{(g_j - cf_j)/eps}
    + e^{-fl_i/eps} sum_{j: cf_j < fl_i} b_j e^{g_j/eps})``: with the columns sorted by floor, a
    suffix and a prefix log-sum-exp and one binary search per row, O((n + m) log m), no pair visited.
    """
    ok = np.isfinite(g)
    order = np.argsort(cfloor[ok])
    cf = cfloor[ok][order]
    v = (np.log(b[ok]) + g[ok] / reg)[order]
    u = v - cf / reg
    suffix = np.append(np.logaddexp.accumulate(u[::-1])[::-1], -np.inf)  # LSE(u[k:])
    prefix = np.concatenate([[-np.inf], np.logaddexp.accumulate(v)])     # LSE(v[:k])
    k = np.searchsorted(cf, floor, side="left")
    with np.errstate(invalid="ignore"):
        out = np.log(a) + f / reg + np.logaddexp(suffix[k], prefix[k] - floor / reg)
    return np.where(np.isfinite(f), out, -np.inf)


def truncation_bound(
    res: SparseSinkhornResult, a: np.ndarray, b: np.ndarray, kth_cost: np.ndarray, reg: float,
    kth_cost_target: np.ndarray | None = None,
) -> float:
    r"""Upper bound on the plan mass cut away by a kNN support, relative to the plan mass.

    An excluded pair of row i costs at least ``kth_cost[i]`` (its k-th neighbour's cost;
    valid when the remaining cost terms are non-negative), so its entry in the optimal dense
    plan with the same potentials is at most ``a_i b_j exp((f_i + g_j - kth_cost_i)/eps)``;
    summing over j bounds the mass row i could gain. With ``kth_cost_target`` (each column's
    k-th neighbour cost) an excluded pair is bounded through both floors
    (:func:`outside_log_bound`), which is far tighter where some column's potential is large.
    The floors come from a float32 search: they are lowered by 1e-5 relative to stay bounds.
    It is a diagnostic, not an estimate.
    """
    total = float(res.plan.sum())
    ok = np.isfinite(res.f)
    okg = np.isfinite(res.g)
    if not ok.any() or not okg.any() or total <= 0:
        return 0.0
    floor = np.asarray(kth_cost, dtype=np.float64) * (1.0 - 1e-5)
    if kth_cost_target is not None:
        cfloor = np.asarray(kth_cost_target, dtype=np.float64) * (1.0 - 1e-5)
        log_rows = outside_log_bound(a, b, res.f, res.g, floor, cfloor, reg)
        return float(math.exp(_lse(log_rows[np.isfinite(log_rows)])) / total) if np.isfinite(log_rows).any() else 0.0
    log_gsum = _lse(np.log(b[okg]) + res.g[okg] / reg)
    log_rows = np.log(a[ok]) + (res.f[ok] - floor[ok]) / reg + log_gsum
    return float(math.exp(min(_lse(log_rows), 700.0)) / total)


__all__ = [
    "CERT_OUTSIDE",
    "CERT_RESIDUAL",
    "DENSE_FRACTION",
    "DENSE_MAX_ENTRIES",
    "Certificate",
    "DenseSinkhornResult",
    "SparseSinkhornResult",
    "dense_sinkhorn",
    "outside_log_bound",
    "sparse_sinkhorn",
    "truncation_bound",
    "unbalanced_objective",
]
