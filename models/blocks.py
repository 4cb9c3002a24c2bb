r"""Alignment solved block by block: the connected components of the support as separate problems.

Under the hard mass penalty (``CostWeights.hard_block``) a DFT entry may only send mass to
measurements of its own reduced formula, so the support of the plan is block-diagonal and
the unbalanced problem

.. math::
    \min_P \langle C,P\rangle + \varepsilon KL(P|ab^\top) + \rho KL(P1|a) + \rho KL(P^\top 1|b)

separates: every term is a sum over entries (KL terms over points), and no point belongs to
two blocks, so the optimum restricted to a block is the optimum of that block's problem.
More generally this holds for the connected components of any sparse support.
:func:`align_blocks` is :func:`models.transport.align` with the plan solved per component,
each component **on its own** (its own epsilon schedule and stopping test), so a block's
solution does not depend on which other blocks share a worker: the result is identical for
every ``mapper`` (in-process loop, process pool, Dask cluster) and every grouping of blocks
into pieces. It differs from the single sparse solve of :func:`~models.transport.align` only
within the solver tolerance (the single solve stops when the *slowest* block converges and
starts its epsilon schedule at the *global* largest cost); tests/test_engine.py bounds it.

Scaling, standardisation, costs and the per-element corrections of energy additivity stay
global (fitted on everything passed in, between block solves), exactly as in ``align``.
Only the ``unbalanced`` formulation is split: ``mixture`` fits one mixture to the whole
domain, and the LP methods are small-problem methods.

This module does no I/O and never reads params; ``mapper`` is how the caller distributes
work (``mapper(fn, *iterables)`` yielding results in input order, e.g.
``pipeline.engine.Engine.map``).
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import numpy as np
import scipy.sparse as sp
from scipy.sparse.csgraph import connected_components

from models.penalties import CostWeights, Domain, fit_element_corrections, pair_costs, standardise
from models.sinkhorn import unbalanced_objective
from models.transport import (
    AlignmentError,
    AlignmentResult,
    Problem,
    Solution,
    SolverOptions,
    _lookup_costs,
    _lookup_terms,
    build_support,
    resolve,
)

SPLIT_METHODS: tuple[str, ...] = ("unbalanced",)

Mapper = Callable[..., Iterable[Any]]


def support_components(rows: np.ndarray, cols: np.ndarray, n: int, m: int) -> list[np.ndarray]:
    """Positions (into ``rows``/``cols``) of the pairs of each connected component, in a fixed order.

    Components are ordered by their smallest pair position, pairs inside a component keep
    their order; points without any pair belong to no component.
    """
    if rows.size == 0:
        return []
    graph = sp.coo_matrix((np.ones(rows.size, dtype=np.int8), (rows, cols + n)), shape=(n + m, n + m))
    _, label = connected_components(graph, directed=False)
    edge_label = label[rows]
    order = np.argsort(edge_label, kind="stable")
    bounds = np.flatnonzero(np.diff(edge_label[order])) + 1
    groups = np.split(order, bounds)
    groups.sort(key=lambda g: int(g[0]))
    return groups


def _sub_problem(problem: Problem, edges: np.ndarray) -> tuple[Problem, np.ndarray, np.ndarray]:
    r, c = problem.rows[edges], problem.cols[edges]
    src, r_loc = np.unique(r, return_inverse=True)
    tgt, c_loc = np.unique(c, return_inverse=True)
    sub = Problem(a=problem.a[src], b=problem.b[tgt], rows=r_loc.astype(np.int64), cols=c_loc.astype(np.int64),
                  cost=problem.cost[edges], xs=None, xt=None, hard_block=problem.hard_block,
                  kth_cost=None if problem.kth_cost is None else problem.kth_cost[src])
    return sub, src, tgt


def _solve_piece(method: str, options: SolverOptions, problems: Sequence[Problem]) -> list[Solution]:
    """Worker function: solve each block of a piece on its own (pure: same input, same output)."""
    formulation = resolve(method)
    return [formulation(p, options) for p in problems]


def _pieces(sizes: Sequence[int], n_pieces: int) -> list[list[int]]:
    """Split component indices into at most ``n_pieces`` contiguous runs of similar total size."""
    n_pieces = max(1, min(n_pieces, len(sizes)))
    cum = np.cumsum(sizes)
    cuts = np.searchsorted(cum, cum[-1] * np.arange(1, n_pieces) / n_pieces, side="right")
    bounds = [0, *sorted(set(int(c) for c in cuts if 0 < c < len(sizes))), len(sizes)]
    return [list(range(lo, hi)) for lo, hi in itertools.pairwise(bounds) if hi > lo]


def solve_blocks(
    problem: Problem,
    options: SolverOptions,
    *,
    method: str = "unbalanced",
    mapper: Mapper | None = None,
    n_pieces: int = 1,
) -> tuple[Solution, int]:
    """Solve ``problem`` per connected component of its support; returns the joined solution and the block count.

    ``n_pieces`` groups the blocks into that many pieces of similar size for ``mapper``
    (one task each); the result does not depend on it. The joined objective is the global
    unbalanced objective of the joined plan (points without support count through the
    marginal KL terms, as in the single solve).
    """
    if method not in SPLIT_METHODS:
        raise AlignmentError(f"method {method!r} cannot be solved block by block; valid: {', '.join(SPLIT_METHODS)}")
    n, m = problem.shape
    comps = support_components(problem.rows, problem.cols, n, m)
    subs = [_sub_problem(problem, e) for e in comps]
    pieces = _pieces([e.size for e in comps], n_pieces)
    payload = [[subs[i][0] for i in piece] for piece in pieces]
    run = mapper or map
    solved = run(_solve_piece, [method] * len(pieces), [options] * len(pieces), payload)
    rows, cols, vals = [], [], []
    n_iter, converged, err, fmax = 0, True, 0.0, 0.0
    for piece, sols in zip(pieces, solved, strict=True):
        for i, sol in zip(piece, sols, strict=True):
            _, src, tgt = subs[i]
            rows.append(src[sol.rows])
            cols.append(tgt[sol.cols])
            vals.append(sol.plan)
            n_iter = max(n_iter, sol.n_iter)
            converged &= bool(sol.converged)
            err = max(err, float(sol.info.get("error", 0.0)))
            fmax = max(fmax, float(sol.info.get("dual_f_max", 0.0)))
    empty = np.zeros(0, dtype=np.int64)
    r = np.concatenate(rows) if rows else empty
    c = np.concatenate(cols) if cols else empty
    p = np.concatenate(vals) if vals else np.zeros(0)
    cost = _lookup_costs(problem, r, c)
    objective = unbalanced_objective(p, r, c, cost, problem.a, problem.b, reg=options.reg, reg_m=options.reg_m)
    # (the number of pieces is left out: outputs must not depend on how the work was divided)
    info = {"error": err, "dual_f_max": fmax, "blocks": float(len(comps))}
    return Solution(r, c, p, float(objective), n_iter, converged, info), len(comps)


def align_blocks(
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
    mapper: Mapper | None = None,
    n_pieces: int = 1,
) -> AlignmentResult:
    """:func:`models.transport.align` with every plan solved by :func:`solve_blocks`.

    Same arguments and result as ``align`` plus ``mapper``/``n_pieces`` (where and in how
    many tasks the blocks are solved). ``n_iter`` is the sum over solves of the largest
    block's iteration count (the critical path); ``info["blocks"]`` the number of blocks.
    """
    t0 = time.perf_counter()
    if method not in SPLIT_METHODS:
        raise AlignmentError(f"method {method!r} cannot be solved block by block; valid: {', '.join(SPLIT_METHODS)}")
    weights = weights or CostWeights()
    options = options or SolverOptions()
    if source.size == 0 or target.size == 0:
        raise AlignmentError(f"cannot align empty domains ({source.size} source, {target.size} target entries)")
    if energy_additivity and source.fractions is None:
        raise AlignmentError("energy additivity needs element fractions of the source entries")
    std = standardise(source, target)
    rows, cols, kth = build_support(std, source, target, weights=weights, dense_limit=dense_limit, knn=knn)
    if rows.size == 0:
        raise AlignmentError("no allowed pair between the domains (no composition on both sides under the hard block)")
    a, b = source.masses(), target.masses()
    offset = np.zeros(source.size)
    corrections = None
    total_iter = 0

    def solve(off: np.ndarray) -> tuple[dict[str, np.ndarray], Problem, Solution]:
        terms = pair_costs(rows, cols, std=std, source=source, target=target, weights=weights, offset=off)
        problem = Problem(a=a, b=b, rows=rows, cols=cols, cost=terms["total"], xs=None, xt=None,
                          hard_block=weights.hard_block, kth_cost=kth)
        sol, _ = solve_blocks(problem, options, method=method, mapper=mapper, n_pieces=n_pieces)
        return terms, problem, sol

    for _ in range(additivity_iters if energy_additivity else 1):
        terms, problem, sol = solve(offset)
        total_iter += sol.n_iter
        if energy_additivity:
            corrections = fit_element_corrections(
                sol.rows, sol.cols, sol.plan, source_values=source.values, target_values=target.values,
                fractions=source.fractions, elements=source.elements, ridge=additivity_ridge,
            )
            offset = np.asarray(source.fractions @ corrections.mu).ravel()
    if energy_additivity:
        terms, problem, sol = solve(offset)  # final plan with the final corrections
        total_iter += sol.n_iter
    info = dict(sol.info)
    if kth is not None:
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
        method=method, plan=coo, pair_cost=plan_cost, a=a, b=b,
        source_mass=np.bincount(coo.row, weights=coo.data, minlength=source.size),
        target_mass=np.bincount(coo.col, weights=coo.data, minlength=target.size),
        objective=float(sol.objective), linear_cost=float(np.dot(coo.data, plan_cost)),
        n_iter=total_iter, converged=bool(sol.converged), seconds=time.perf_counter() - t0,
        support_size=int(rows.size), corrections=corrections, source_offset=offset,
        cost_terms=term_means, info=info,
    )


def transport_distance_blocks(
    source: Domain,
    target: Domain,
    *,
    weights: CostWeights,
    options: SolverOptions,
    dense_limit: int = 4_000_000,
    knn: int = 64,
    mapper: Mapper | None = None,
    n_pieces: int = 1,
) -> float:
    """:func:`models.transport.transport_distance` with the plan solved block by block."""
    return align_blocks(source, target, method="unbalanced", weights=weights, options=options,
                        dense_limit=dense_limit, knn=knn, mapper=mapper, n_pieces=n_pieces).objective


__all__ = ["SPLIT_METHODS", "align_blocks", "solve_blocks", "support_components", "transport_distance_blocks"]
