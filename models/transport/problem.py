"""The sparse transport problem every formulation solves, and what a formulation returns.

A :class:`Problem` holds the two marginals, the allowed pairs (the support) and their costs;
a formulation (:data:`models.transport.FORMULATIONS`) maps it and the
:class:`~models.transport.config.SolverOptions` to a :class:`Solution`. Kept apart from the
formulations so that the neural one (:mod:`models.transport.neural`, torch) and the block
solver can speak this contract without importing each other.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from models.transport.config import SolverOptions

if TYPE_CHECKING:
    from models.transport.penalties import Domain


class AlignmentError(ValueError):
    """Bad alignment input or options (unknown method, problem too large for a method...)."""


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
    kth_cost_target: np.ndarray | None = None  # ... and each target's
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
    """A formulation's plan on the support (``rows``, ``cols``, ``plan``) with its objective and diagnostics."""

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


__all__ = [
    "AlignmentError",
    "Formulation",
    "Problem",
    "Solution",
]
