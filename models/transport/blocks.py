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
starts its epsilon schedule at the *global* largest cost); tests/pipeline/test_engine.py bounds it.

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
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import numpy as np

from models.transport.alignment import AlignmentResult, align
from models.transport.formulations import _lookup_costs, resolve
from models.transport.penalties import Domain
from models.transport.problem import AlignmentError, Formulation, Problem, Solution, SolverOptions
from models.transport.sinkhorn import unbalanced_objective
from models.transport.support import component_labels

SPLIT_METHODS: tuple[str, ...] = ("unbalanced",)

Mapper = Callable[..., Iterable[Any]]


def support_components(rows: np.ndarray, cols: np.ndarray, n: int, m: int) -> list[np.ndarray]:
    """Positions (into ``rows``/``cols``) of the pairs of each connected component, in a fixed order.

    Components are ordered by their smallest pair position, pairs inside a component keep
    their order; points without any pair belong to no component.
    """
    if rows.size == 0:
        return []
    edge_label = component_labels(rows, cols, n, m)[1][rows]
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
                  kth_cost=None if problem.kth_cost is None else problem.kth_cost[src],
                  kth_cost_target=None if problem.kth_cost_target is None else problem.kth_cost_target[tgt])
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


def solve_blocks(problem: Problem, options: SolverOptions, *, method: str = "unbalanced", mapper: Mapper | None = None,
                 n_pieces: int = 1) -> tuple[Solution, int]:
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
    cert = dict.fromkeys(("cert_residual", "cert_pruned_mass", "cert_truncation_bound", "cert_readmitted"), 0.0)
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
            for key in cert:  # relative figures: the worst block bounds the whole; re-admissions add up
                value = float(sol.info.get(key, 0.0))
                cert[key] = cert[key] + value if key == "cert_readmitted" else max(cert[key], value)
    empty = np.zeros(0, dtype=np.int64)
    r = np.concatenate(rows) if rows else empty
    c = np.concatenate(cols) if cols else empty
    p = np.concatenate(vals) if vals else np.zeros(0)
    cost = _lookup_costs(problem, r, c)
    objective = unbalanced_objective(p, r, c, cost, problem.a, problem.b, reg=options.reg, reg_m=options.reg_m)
    # (the number of pieces is left out: outputs must not depend on how the work was divided)
    info = {"error": err, "dual_f_max": fmax, "blocks": float(len(comps))}
    if method == "unbalanced":
        info.update(cert)
    return Solution(r, c, p, float(objective), n_iter, converged, info), len(comps)


def block_solver(method: str = "unbalanced", *, mapper: Mapper | None = None, n_pieces: int = 1) -> Formulation:
    """Return a formulation that solves each connected block of the support on its own (:func:`solve_blocks`).

    Pass it as ``solver=`` to :func:`models.transport.align` or ``transport_distance``: they do
    everything around the solve (value calibration, support, costs, corrections, diagnostics)
    on the whole problem, so only the plan's solve is split. ``mapper``/``n_pieces``: where and
    in how many tasks the blocks are solved.
    """
    if method not in SPLIT_METHODS:
        raise AlignmentError(f"method {method!r} cannot be solved block by block; valid: {', '.join(SPLIT_METHODS)}")

    def solver(problem: Problem, options: SolverOptions) -> Solution:
        return solve_blocks(problem, options, method=method, mapper=mapper, n_pieces=n_pieces)[0]

    return solver


def align_blocks(source: Domain, target: Domain, *, method: str = "unbalanced", mapper: Mapper | None = None,
                 n_pieces: int = 1, **align_kwargs: Any) -> AlignmentResult:
    """:func:`models.transport.align` (same arguments and result) with every plan solved by :func:`block_solver`.

    ``n_iter`` sums, over solves, the largest block's iteration count (the critical path);
    ``info["blocks"]`` is the number of blocks.
    """
    return align(source, target, method=method, solver=block_solver(method, mapper=mapper, n_pieces=n_pieces),
                 **align_kwargs)


__all__ = ["SPLIT_METHODS", "align_blocks", "block_solver", "solve_blocks", "support_components"]
