"""TODO docstring."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from models.transport.penalties import (
    Domain,
)

if TYPE_CHECKING:
    from models.transport.neural import NeuralAlignConfig


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


__all__ = [
    "AlignmentError",
    "Formulation",
    "Problem",
    "Solution",
    "SolverOptions",
]
