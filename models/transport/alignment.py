"""The entry point of optimal transport: :func:`align` (DFT entries onto measurements) and its result.

:func:`align` builds the sparse problem (standardised descriptors, cost terms of
:mod:`models.transport.penalties`, the support: same-formula blocks under the hard block, all
pairs when small, a kNN graph otherwise), solves it with the formulation ``method`` names
(:mod:`models.transport.formulations`), optionally alternates with the energy-additivity
corrections, and returns an :class:`AlignmentResult` (sparse plan, transported masses,
calibrated targets, diagnostics). :func:`transport_distance` is the objective used as a
distance between two distributions. A caller with an :class:`~models.transport.AlignConfig`
passes ``**config.kwargs()``.

The library never reads files or params; the caller passes arrays (evaluation calls it per
fold with training data only; the scaler is fitted on exactly the data passed in).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import scipy.sparse as sp

from models.transport.penalties import (
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
from models.transport.support import block_support, dense_support, knn_support

if TYPE_CHECKING:
    pass
from models.transport.formulations import _lookup_costs, resolve
from models.transport.problem import AlignmentError, Formulation, Problem, SolverOptions


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


def build_support(
    std: Standardised,
    source: Domain,
    target: Domain,
    *,
    weights: CostWeights,
    dense_limit: int,
    knn: int,
    offset: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray, tuple[np.ndarray, np.ndarray] | None]:
    """Choose the allowed pairs: same-formula blocks (hard block), all pairs (small), or a kNN graph.

    The third value is None for exact supports; for the kNN graph it is the k-th neighbour
    cost of every source and of every target (lower bounds of the costs left out).

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
    r, c, kth, kth_t = knn_support(xs, xt, k_source=knn, k_target=knn, target_kth=True)
    return r, c, (kth, kth_t)


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
    solver: Formulation | None = None,
) -> AlignmentResult:
    """Align ``source`` (DFT) onto ``target`` (experiment) with formulation ``method``.

    ``solver`` replaces the formulation's solve of each plan (same problem, same result
    contract): :func:`models.transport.block_solver` is one that solves the blocks of the
    support separately, so everything around the solve (calibration, support, costs,
    corrections, diagnostics) is this one function's.

    With ``energy_additivity`` the plan and per-element corrections are fitted alternately
    (``additivity_iters`` rounds): solve the plan with DFT values shifted by the current
    corrections, refit the corrections on the plan (:func:`fit_element_corrections`), repeat.
    Needs ``source.fractions``. With ``weights.value_calibration="linear"`` a robust linear
    map DFT -> experiment is fitted first on the same-formula pairs of ``source`` and
    ``target`` (:func:`models.transport.fit_value_calibration`) and every DFT value is replaced
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
    rows, cols, kths = build_support(std, source, target, weights=weights, dense_limit=dense_limit, knn=knn,
                                     offset=base_offset)
    kth, kth_t = kths if kths is not None else (None, None)
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
                          hard_block=weights.hard_block, kth_cost=kth, kth_cost_target=kth_t, source=source,
                          target=target)
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
                          hard_block=weights.hard_block, kth_cost=kth, kth_cost_target=kth_t)
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


def transport_distance(source: Domain, target: Domain, *, weights: CostWeights, options: SolverOptions,
                       dense_limit: int = 4_000_000, knn: int = 64, solver: Formulation | None = None) -> float:
    """OT distance used in the diagnostics: the unbalanced entropic objective between the domains.

    It is :func:`align`'s ``unbalanced`` objective in the joint (chemistry, property) space with
    the given cost weights; comparing it for the raw DFT values and for the calibrated targets
    measures how much of the DFT-to-experiment shift the alignment removed.
    """
    return align(source, target, method="unbalanced", weights=weights, options=options,
                 dense_limit=dense_limit, knn=knn, solver=solver).objective


__all__ = [
    "AlignmentResult",
    "align",
    "build_support",
    "transport_distance",
]
