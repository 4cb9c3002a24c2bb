r"""Optimal-transport alignment of DFT entries (source) onto measurements (target).

One entry point, :func:`align`, and one registry, :data:`FORMULATIONS`, mapping a method
name to a solver that works on the same *sparse problem* (masses ``a``, ``b``; allowed pairs
``rows, cols``; their costs from :mod:`models.penalties`):

``balanced``
    :math:`\min_{P 1 = a, P^\top 1 = b} \langle C, P\rangle` — exact LP (POT ``ot.emd``) up
    to ``emd_limit`` plan entries, entropic log-stabilised Sinkhorn otherwise. Under a hard
    block the target masses are rescaled per connected block so that each block balances.
``unbalanced``
    :math:`\min_P \langle C,P\rangle + \varepsilon KL(P|ab^\top) + \rho KL(P1|a) + \rho KL(P^\top 1|b)`
    (Chizat et al. 2018), solved by :func:`models.sinkhorn.sparse_sinkhorn` (float64,
    absorbed log-domain, epsilon-scaling, translation-invariant updates); POT's
    ``ot.unbalanced.sinkhorn_unbalanced`` is the reference in the tests.
``partial``
    exact partial OT with a fixed transported mass ``m = partial_mass * min(|a|, |b|)``
    (POT ``ot.partial.partial_wasserstein``; Chapel et al. 2020).
``aot`` (adaptive mass)
    :math:`\min_{P\ge 0,\ P1 \le a,\ P^\top 1 \le b} \langle C - \lambda, P\rangle`: costs may
    be negative, the inequality marginals let the problem itself decide how much mass moves —
    a pair is worth matching only where :math:`C_{ij} < \lambda`. This is the Lagrangian form
    of optimal partial transport (Caffarelli & McCann 2010, Ann. Math. 171; Figalli 2010,
    ARMA 195), ``lambda`` the price of a unit of matched mass. It is solved exactly as a
    balanced LP with one dummy point on each side (Chapel, Alaya & Gasso 2020, NeurIPS):
    the dummy source holds ``|b|``, the dummy target ``|a|``, all dummy costs are 0.
``neural``
    a conditional monotone map DFT value -> measured value, the gradient of an input-convex
    network trained on the Kantorovich dual (Makkuva et al. 2020), conditioned on the
    composition descriptors (:mod:`models.icnn`); it calibrates every source entry, also those
    with no counterpart, and the fitted map is kept on the result to calibrate new entries.
``mixture``
    OT between Gaussian mixtures fitted to each domain in the joint (descriptor, value)
    space (Delon & Desolneux 2020, POT ``ot.gmm.gmm_ot_plan``); the component plan is
    lifted to points by responsibilities, ``P_ij = sum_kl a_i r_ik / pi_k  W_kl  b_j s_jl / pi'_l``,
    evaluated on the support only (so it scales with the number of allowed pairs).

The library never reads files or params; the caller passes arrays (evaluation calls it per
fold with training data only; the scaler is fitted on exactly the data passed in).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import scipy.sparse as sp
from scipy.sparse.csgraph import connected_components

from models.penalties import (
    CostWeights,
    Domain,
    ElementCorrections,
    Standardised,
    ValueCalibration,
    fit_element_corrections,
    fit_value_calibration,
    joint_embedding,
    pair_costs,
    standardise,
)
from models.sinkhorn import (
    block_support,
    dense_support,
    knn_support,
    sparse_sinkhorn,
    truncation_bound,
    unbalanced_objective,
)

if TYPE_CHECKING:
    from models.icnn import NeuralAlignConfig


class AlignmentError(ValueError):
    """Bad alignment input or options (unknown method, problem too large for a method...)."""


@dataclass(frozen=True)
class SolverOptions:
    """Options of every formulation (each reads the ones it needs; defaults documented)."""

    reg: float = 0.05  # entropic eps, in cost units (costs are O(1))
    reg_m: float = 1.0  # marginal KL weight rho (unbalanced)
    tol: float = 1e-8  # max change of a log-scaling per iteration at convergence
    max_iter: int = 20000
    emd_limit: int = 4_000_000  # plan entries up to which LP methods run (dense)
    partial_mass: float = 0.5  # partial: fraction of min(|a|, |b|) to move
    aot_price: float = 0.5  # aot: lambda, the most a matched pair may cost
    n_components: int = 8  # mixture: components per domain
    seed: int = 0
    neural: NeuralAlignConfig | None = None  # neural: map and training options (None = defaults)

    def __post_init__(self) -> None:
        if not self.reg > 0:
            raise ValueError(f"reg must be > 0, got {self.reg}")
        if not self.reg_m > 0:
            raise ValueError(f"reg_m must be > 0, got {self.reg_m}")
        if not 0 < self.partial_mass <= 1:
            raise ValueError(f"partial_mass must be in (0, 1], got {self.partial_mass}")
        if self.n_components < 1:
            raise ValueError(f"n_components must be >= 1, got {self.n_components}")


@dataclass(frozen=True)
class Problem:
    """A sparse transport problem: masses and the allowed pairs with their costs."""

    a: np.ndarray
    b: np.ndarray
    rows: np.ndarray
    cols: np.ndarray
    cost: np.ndarray
    xs: np.ndarray  # joint embedding (for the mixture formulation)
    xt: np.ndarray
    hard_block: bool
    kth_cost: np.ndarray | None = None  # kNN support: each source's k-th neighbour cost (lower bound off-support)
    source: Domain | None = None  # the domains themselves, for formulations that learn a map (neural)
    target: Domain | None = None

    @property
    def shape(self) -> tuple[int, int]:
        return self.a.size, self.b.size

    def dense_cost(self, fill: float) -> np.ndarray:
        M = np.full(self.shape, fill)
        M[self.rows, self.cols] = self.cost
        return M


@dataclass(frozen=True)
class Solution:
    rows: np.ndarray
    cols: np.ndarray
    plan: np.ndarray
    objective: float
    n_iter: int
    converged: bool
    info: dict[str, float] = field(default_factory=dict)
    calibrated: np.ndarray | None = None  # map-based formulations: calibrated value of every source entry
    calibrated_confidence: np.ndarray | None = None
    artifact: Any = None  # the fitted map (neural), to calibrate entries that were not aligned


Formulation = Callable[[Problem, SolverOptions], Solution]


@dataclass(frozen=True)
class AlignmentResult:
    """Outcome of :func:`align`.

    plan : sparse (n_source, n_target) COO, the transported masses (zeros dropped).
    pair_cost : (nnz,) cost of each plan entry, aligned with ``plan.row``/``plan.col``.
    source_mass, target_mass : transported mass per entry (row / column sums); divided by
        the marginals they are outlier scores (low = little counterpart on the other side).
    objective : the formulation's objective; linear_cost = <C, P>.
    corrections : fitted per-element corrections (energy additivity) or None.
    source_offset : (n_source,) correction added to each DFT value: the value calibration's
        ``calibrated(v) - v`` plus the energy-additivity corrections (zeros without either).
    cost_terms : plan-weighted mean of each cost term (penalty residuals).
    value_calibration : the fitted DFT -> experiment map (``weights.value_calibration="linear"``)
        or None.
    """

    method: str
    plan: sp.coo_matrix
    pair_cost: np.ndarray
    a: np.ndarray
    b: np.ndarray
    source_mass: np.ndarray
    target_mass: np.ndarray
    objective: float
    linear_cost: float
    n_iter: int
    converged: bool
    seconds: float
    support_size: int
    corrections: ElementCorrections | None
    source_offset: np.ndarray
    cost_terms: dict[str, float]
    info: dict[str, float]
    value_calibration: ValueCalibration | None = None
    calibrated: np.ndarray | None = None
    calibrated_confidence: np.ndarray | None = None
    artifact: Any = None


    @property
    def mass_moved(self) -> float:
        return float(self.plan.data.sum())

    def calibrated_targets(self, target_values: np.ndarray, fallback: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Barycentric projection ``t_i = sum_j P_ij y_j / sum_j P_ij`` and its confidence.

        Confidence is the row's transported mass relative to its marginal, clipped to [0, 1];
        rows that received no mass get ``fallback`` (e.g. the DFT value) with confidence 0.
        A map-based formulation (``neural``) returns its map's values and confidence instead.
        """
        if self.calibrated is not None and self.calibrated_confidence is not None:
            return self.calibrated.copy(), self.calibrated_confidence.copy()
        n = self.a.size
        num = np.bincount(self.plan.row, weights=self.plan.data * target_values[self.plan.col], minlength=n)
        den = self.source_mass
        has = den > 0
        targets = np.where(has, num / np.where(has, den, 1.0), fallback)
        confidence = np.clip(den / self.a, 0.0, 1.0)
        return targets, confidence


# ----------------------------------------------------------------------------- formulations


def _balanced(problem: Problem, opts: SolverOptions) -> Solution:
    a, b = problem.a, problem.b.copy()
    n, m = problem.shape
    # per connected block of the support, rescale b so that the block balances
    graph = sp.coo_matrix((np.ones(problem.rows.size), (problem.rows, problem.cols + n)), shape=(n + m, n + m))
    n_comp, label = connected_components(graph, directed=False)
    la, lb = label[:n], label[n:]
    sa = np.bincount(la, weights=a, minlength=n_comp)
    sb = np.bincount(lb, weights=b, minlength=n_comp)
    active_a = np.bincount(problem.rows, minlength=n) > 0
    active_b = np.bincount(problem.cols, minlength=m) > 0
    b = np.where(active_b, b * sa[lb] / np.where(sb[lb] > 0, sb[lb], 1.0), b)
    if problem.rows.size <= opts.emd_limit and n * m <= opts.emd_limit * 4:
        import ot

        rows_out, cols_out, vals = [], [], []
        converged = True
        order = np.argsort(label[:n][problem.rows], kind="stable")
        r_all, c_all = problem.rows[order], problem.cols[order]
        comp_of_pair = la[r_all]
        bounds = np.flatnonzero(np.diff(comp_of_pair)) + 1
        for lo, hi in zip(np.r_[0, bounds], np.r_[bounds, r_all.size], strict=True):
            rr, cc = r_all[lo:hi], c_all[lo:hi]
            ui, ri = np.unique(rr, return_inverse=True)
            uj, cj = np.unique(cc, return_inverse=True)
            M = np.full((ui.size, uj.size), np.inf)
            M[ri, cj] = problem.cost[order][lo:hi]
            big = float(np.max(M[np.isfinite(M)])) * 10 + 1.0
            M[~np.isfinite(M)] = big  # LP only: a large finite cost is exact, unlike in exp-domain Sinkhorn
            G, log = ot.emd(a[ui], b[uj], M, log=True)
            converged &= log["warning"] is None
            nz = np.nonzero(G > 0)
            rows_out.append(ui[nz[0]])
            cols_out.append(uj[nz[1]])
            vals.append(G[nz])
        rows_o = np.concatenate(rows_out) if rows_out else np.zeros(0, dtype=np.int64)
        cols_o = np.concatenate(cols_out) if cols_out else np.zeros(0, dtype=np.int64)
        plan = np.concatenate(vals) if vals else np.zeros(0)
        allowed = set(zip(problem.rows.tolist(), problem.cols.tolist(), strict=True))
        leak = sum(v for r, c, v in zip(rows_o, cols_o, plan, strict=True) if (r, c) not in allowed)
        cost_lookup = _lookup_costs(problem, rows_o, cols_o)
        obj = float(np.dot(plan, cost_lookup))
        return Solution(rows_o, cols_o, plan, obj, 1, converged,
                        {"solver": 0.0, "forbidden_mass": float(leak),
                         "inactive_source": float((~active_a).sum()), "inactive_target": float((~active_b).sum())})
    res = sparse_sinkhorn(np.where(active_a, a, 1.0), np.where(active_b, b, 1.0), problem.rows, problem.cols,
                          problem.cost, reg=opts.reg, reg_m=math.inf, tol=opts.tol, max_iter=opts.max_iter)
    return Solution(res.rows, res.cols, res.plan, res.linear_cost, res.n_iter, res.converged,
                    {"solver": 1.0, "error": res.error})


def _unbalanced(problem: Problem, opts: SolverOptions) -> Solution:
    res = sparse_sinkhorn(problem.a, problem.b, problem.rows, problem.cols, problem.cost,
                          reg=opts.reg, reg_m=opts.reg_m, tol=opts.tol, max_iter=opts.max_iter)
    info = {"error": res.error, "dual_f_max": float(np.max(res.f[np.isfinite(res.f)], initial=0.0))}
    if problem.kth_cost is not None:
        info["truncation_bound"] = truncation_bound(res, problem.a, problem.b, problem.kth_cost, opts.reg)
    return Solution(res.rows, res.cols, res.plan, res.objective, res.n_iter, res.converged, info)


def _need_dense(problem: Problem, opts: SolverOptions, method: str) -> None:
    n, m = problem.shape
    if n * m > opts.emd_limit:
        raise AlignmentError(
            f"method {method!r} solves a dense LP and is limited to emd_limit={opts.emd_limit} plan entries; "
            f"this problem has {n} x {m} = {n * m}. Use 'unbalanced' or 'mixture' at this size."
        )


def _partial(problem: Problem, opts: SolverOptions) -> Solution:
    import ot

    _need_dense(problem, opts, "partial")
    a, b = problem.a, problem.b
    cap = min(a.sum(), b.sum())
    if problem.hard_block:
        # at most min(|a_B|, |b_B|) can move inside each block B
        n = a.size
        graph = sp.coo_matrix((np.ones(problem.rows.size), (problem.rows, problem.cols + n)),
                              shape=(n + b.size, n + b.size))
        n_comp, label = connected_components(graph, directed=False)
        sa = np.bincount(label[:n], weights=a, minlength=n_comp)
        sb = np.bincount(label[n:], weights=b, minlength=n_comp)
        singleton_a = np.bincount(problem.rows, minlength=n) == 0
        singleton_b = np.bincount(problem.cols, minlength=b.size) == 0
        sa -= np.bincount(label[:n][singleton_a], weights=a[singleton_a], minlength=n_comp)
        sb -= np.bincount(label[n:][singleton_b], weights=b[singleton_b], minlength=n_comp)
        cap = min(cap, float(np.minimum(sa, sb).sum()))
    mass = opts.partial_mass * cap
    M = problem.dense_cost(fill=np.nan)
    big = float(np.nanmax(M)) * 10 + 1.0 if problem.cost.size else 1.0
    M = np.where(np.isnan(M), big, M)
    G = ot.partial.partial_wasserstein(a, b, M, m=mass)
    mask = np.zeros(problem.shape, dtype=bool)
    mask[problem.rows, problem.cols] = True
    leak = float(G[~mask].sum())
    r, c = np.nonzero((G > 0) & mask)
    plan = G[r, c]
    return Solution(r, c, plan, float(np.dot(plan, M[r, c])), 1, leak <= 1e-9 * max(mass, 1e-300),
                    {"target_mass": mass, "forbidden_mass": leak})


def _aot(problem: Problem, opts: SolverOptions) -> Solution:
    import ot

    _need_dense(problem, opts, "aot")
    a, b = problem.a, problem.b
    n, m = problem.shape
    lam = opts.aot_price
    M = np.zeros((n + 1, m + 1))
    # forbidden pairs get a positive reduced cost: the zero-cost dummy route always beats them
    M[:n, :m] = 1.0 + abs(lam)
    M[problem.rows, problem.cols] = problem.cost - lam
    aa = np.r_[a, b.sum()]
    bb = np.r_[b, a.sum()]
    G, log = ot.emd(aa, bb, M, log=True)
    core = G[:n, :m]
    mask = np.zeros((n, m), dtype=bool)
    mask[problem.rows, problem.cols] = True
    r, c = np.nonzero((core > 0) & mask)
    plan = core[r, c]
    return Solution(r, c, plan, float(np.dot(plan, M[r, c])), 1, log["warning"] is None,
                    {"price": lam, "forbidden_mass": float(core[~mask].sum())})


def _mixture(problem: Problem, opts: SolverOptions) -> Solution:
    import ot
    from sklearn.mixture import GaussianMixture

    fits = []
    for pts in (problem.xs, problem.xt):
        k = max(1, min(opts.n_components, pts.shape[0] // 2))
        gm = GaussianMixture(n_components=k, covariance_type="full", reg_covar=1e-4, random_state=opts.seed)
        gm.fit(pts)
        fits.append(gm)
    gs, gt = fits
    W = ot.gmm.gmm_ot_plan(gs.means_, gt.means_, gs.covariances_, gt.covariances_, gs.weights_, gt.weights_)
    R = gs.predict_proba(problem.xs) * problem.a[:, None]
    S = gt.predict_proba(problem.xt) * problem.b[:, None]
    R /= np.maximum(R.sum(axis=0), 1e-300)
    S /= np.maximum(S.sum(axis=0), 1e-300)
    RW = R @ W * min(problem.a.sum(), problem.b.sum())
    plan = np.einsum("ij,ij->i", RW[problem.rows], S[problem.cols])
    keep = plan > 0
    rows, cols, plan = problem.rows[keep], problem.cols[keep], plan[keep]
    obj = float(np.dot(plan, problem.cost[keep]))
    mixture_cost = float(np.sum(W * ot.gmm.dist_bures_squared(gs.means_, gt.means_, gs.covariances_, gt.covariances_)))
    return Solution(rows, cols, plan, obj, int(gs.n_iter_ + gt.n_iter_), bool(gs.converged_ and gt.converged_),
                    {"mixture_w2": mixture_cost, "components_source": float(gs.n_components),
                     "components_target": float(gt.n_components),
                     "support_mass_fraction": float(plan.sum() / max(min(problem.a.sum(), problem.b.sum()), 1e-300))})


def _neural(problem: Problem, opts: SolverOptions) -> Solution:
    from models.icnn import neural_formulation  # torch is imported only when asked for

    return neural_formulation(problem, opts)


FORMULATIONS: dict[str, Formulation] = {
    "balanced": _balanced,
    "unbalanced": _unbalanced,
    "partial": _partial,
    "aot": _aot,
    "mixture": _mixture,
    "neural": _neural,
}


def resolve(method: str) -> Formulation:
    try:
        return FORMULATIONS[method]
    except KeyError:
        raise AlignmentError(
            f"unknown alignment method {method!r}; valid methods: {', '.join(sorted(FORMULATIONS))}"
        ) from None


def _lookup_costs(problem: Problem, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
    m = problem.b.size
    key = problem.rows * m + problem.cols
    order = np.argsort(key)
    q = rows * m + cols
    pos = np.clip(np.searchsorted(key[order], q), 0, max(key.size - 1, 0))
    found = key[order][pos] == q
    return np.where(found, problem.cost[order][pos], np.nan)


# ----------------------------------------------------------------------------- entry point


def build_support(
    std: Standardised,
    source: Domain,
    target: Domain,
    *,
    weights: CostWeights,
    dense_limit: int,
    knn: int,
    offset: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """Choose the allowed pairs: same-formula blocks (hard block), all pairs (small), or a kNN graph.

    ``offset`` (n_source,) is added to the DFT values before the kNN search (calibration).
    """
    if weights.hard_block:
        r, c = block_support(np.asarray(source.formulas), np.asarray(target.formulas))
        return r, c, None
    n, m = source.size, target.size
    if n * m <= dense_limit:
        r, c = dense_support(n, m)
        return r, c, None
    xs, xt = joint_embedding(std, source, target, weights, offset)
    r, c, kth = knn_support(xs, xt, k_source=knn, k_target=knn)
    return r, c, kth


def align(
    source: Domain,
    target: Domain,
    *,
    method: str = "unbalanced",
    weights: CostWeights | None = None,
    options: SolverOptions | None = None,
    energy_additivity: bool = False,
    additivity_iters: int = 5,
    additivity_ridge: float = 1e-4,
    dense_limit: int = 4_000_000,
    knn: int = 64,
    solver: Callable[[Problem, SolverOptions], Solution] | None = None,
) -> AlignmentResult:
    """Align ``source`` (DFT) onto ``target`` (experiment) with formulation ``method``.

    ``solver`` replaces the formulation's solve of each plan (same problem, same result
    contract): :func:`models.blocks.align_blocks` passes one that solves the blocks of the
    support separately, so everything around the solve (calibration, support, costs,
    corrections, diagnostics) is this one function's.

    With ``energy_additivity`` the plan and per-element corrections are fitted alternately
    (``additivity_iters`` rounds): solve the plan with DFT values shifted by the current
    corrections, refit the corrections on the plan (:func:`fit_element_corrections`), repeat.
    Needs ``source.fractions``. With ``weights.value_calibration="linear"`` a robust linear
    map DFT -> experiment is fitted first on the same-formula pairs of ``source`` and
    ``target`` (:func:`models.penalties.fit_value_calibration`) and every DFT value is replaced
    by its calibrated value in the cost (the corrections are then fitted on what the map
    leaves), so a systematic DFT error is not mistaken for an outlier.
    """
    t0 = time.perf_counter()
    formulation = solver or resolve(method)
    weights = weights or CostWeights()
    options = options or SolverOptions()
    if source.size == 0 or target.size == 0:
        raise AlignmentError(f"cannot align empty domains ({source.size} source, {target.size} target entries)")
    if energy_additivity and method == "neural":
        raise AlignmentError("method 'neural' learns composition-dependent shifts itself; "
                             "it does not combine with energy_additivity")
    if energy_additivity and source.fractions is None:
        raise AlignmentError("energy additivity needs element fractions of the source entries")
    std = standardise(source, target)
    calibration = None
    base_offset = np.zeros(source.size)
    if weights.value_calibration == "linear":
        calibration = fit_value_calibration(source, target)
        base_offset = calibration.apply(source.values) - np.asarray(source.values, dtype=np.float64)
    rows, cols, kth = build_support(std, source, target, weights=weights, dense_limit=dense_limit, knn=knn,
                                    offset=base_offset)
    if rows.size == 0:
        raise AlignmentError("no allowed pair between the domains (no composition on both sides under the hard block)")
    a, b = source.masses(), target.masses()
    offset = base_offset.copy()
    corrections = None
    rounds = additivity_iters if energy_additivity else 1
    total_iter = 0
    for _ in range(rounds):
        terms = pair_costs(rows, cols, std=std, source=source, target=target, weights=weights, offset=offset)
        xs, xt = (None, None)
        if method == "mixture":
            xs, xt = joint_embedding(std, source, target, weights, offset)
        problem = Problem(a=a, b=b, rows=rows, cols=cols, cost=terms["total"], xs=xs, xt=xt,
                          hard_block=weights.hard_block, kth_cost=kth, source=source, target=target)
        sol = formulation(problem, options)
        total_iter += sol.n_iter
        if energy_additivity:
            corrections = fit_element_corrections(
                sol.rows, sol.cols, sol.plan, source_values=source.values + base_offset,
                target_values=target.values, fractions=source.fractions, elements=source.elements,
                ridge=additivity_ridge,
            )
            offset = base_offset + np.asarray(source.fractions @ corrections.mu).ravel()
    if energy_additivity:
        # final plan with the final corrections, so plan and corrections agree
        terms = pair_costs(rows, cols, std=std, source=source, target=target, weights=weights, offset=offset)
        problem = Problem(a=a, b=b, rows=rows, cols=cols, cost=terms["total"], xs=None, xt=None,
                          hard_block=weights.hard_block, kth_cost=kth)
        sol = formulation(problem, options)
        total_iter += sol.n_iter
    info = dict(sol.info)
    if kth is not None and method == "unbalanced":
        info["knn_support"] = float(knn)
    plan_cost = _lookup_costs(problem, sol.rows, sol.cols)
    keep = sol.plan > 0
    coo = sp.coo_matrix((sol.plan[keep], (sol.rows[keep], sol.cols[keep])), shape=(source.size, target.size))
    plan_cost = plan_cost[keep]
    mass = coo.data.sum()
    term_means = {}
    for name in ("descriptor", "value", "mass", "symmetry"):
        per_pair = _lookup_terms(rows, cols, terms[name], coo.row, coo.col, target.size)
        term_means[name] = float(np.dot(coo.data, per_pair) / mass) if mass > 0 else 0.0
    if not np.all(np.isfinite(coo.data)):
        raise FloatingPointError(f"alignment method {method!r} produced a non-finite plan")
    return AlignmentResult(
        method=method,
        plan=coo,
        pair_cost=plan_cost,
        a=a,
        b=b,
        source_mass=np.bincount(coo.row, weights=coo.data, minlength=source.size),
        target_mass=np.bincount(coo.col, weights=coo.data, minlength=target.size),
        objective=float(sol.objective),
        linear_cost=float(np.dot(coo.data, plan_cost)),
        n_iter=total_iter,
        converged=bool(sol.converged),
        seconds=time.perf_counter() - t0,
        support_size=int(rows.size),
        corrections=corrections,
        source_offset=offset,
        cost_terms=term_means,
        info=info,
        value_calibration=calibration,
        calibrated=sol.calibrated,
        calibrated_confidence=sol.calibrated_confidence,
        artifact=sol.artifact,
    )


def _lookup_terms(rows, cols, values, qr, qc, m) -> np.ndarray:
    key = rows * m + cols
    order = np.argsort(key)
    q = qr * m + qc
    pos = np.clip(np.searchsorted(key[order], q), 0, max(key.size - 1, 0))
    return values[order][pos]


def transport_distance(
    source: Domain,
    target: Domain,
    *,
    weights: CostWeights,
    options: SolverOptions,
    dense_limit: int = 4_000_000,
    knn: int = 64,
) -> float:
    """OT distance used in the diagnostics: the unbalanced entropic objective between the domains.

    It is :func:`align`'s ``unbalanced`` objective in the joint (chemistry, property) space with
    the given cost weights; comparing it for the raw DFT values and for the calibrated targets
    measures how much of the DFT-to-experiment shift the alignment removed.
    """
    return align(source, target, method="unbalanced", weights=weights, options=options,
                 dense_limit=dense_limit, knn=knn).objective


__all__ = [
    "FORMULATIONS",
    "AlignmentError",
    "AlignmentResult",
    "CostWeights",
    "Domain",
    "SolverOptions",
    "align",
    "resolve",
    "transport_distance",
    "unbalanced_objective",
]
