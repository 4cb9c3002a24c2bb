"""Settings of an alignment: the single source of every alignment option and its default.

:class:`AlignConfig` is everything that decides an alignment and nothing else (no paths, no
engine): the method, the solver options (:class:`SolverOptions`, read by every
formulation), the cost weights (:class:`models.transport.penalties.CostWeights`), the
energy-additivity loop and the support rule. The align stage validates ``params.yaml``'s
``align`` section straight into it (the solver options stand at the section's top level:
they are marked ``inline``), and the evaluate stage refits per fold with the very same
object, so the two cannot drift apart.

Torch-free: the neural formulation's options live here, its networks in
:mod:`models.transport.neural`.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any, Literal

from models._io import PARAM_DERIVED, PARAM_INLINE
from models.transport.penalties import CostWeights

if TYPE_CHECKING:
    from models.properties import Property

#: Activations of the input-convex networks (convex and non-decreasing).
ACTIVATION_NAMES = ("softplus", "celu", "leaky_relu")
METHODS = ("balanced", "unbalanced", "partial", "aot", "mixture", "neural")


@dataclass(frozen=True)
class DualConfig:
    """Min-max training of the pair ``(f, g)`` of :mod:`models.transport.neural`; defaults beside each field."""

    hidden: tuple[int, ...] = (64, 64)  # convex-layer widths of f and g
    cond_hidden: int = 32  # condition-path width (conditioned maps)
    activation: Literal["softplus", "celu", "leaky_relu"] = "softplus"
    quadratic: bool = True
    iterations: int = 1000  # outer (f) steps
    inner_steps: int = 5  # g steps per f step (the inner maximisation)
    batch_size: int = 256
    lr: float = 1e-3
    seed: int = field(default=0, metadata=PARAM_DERIVED)  # the align stage passes align.seed
    dtype: Literal["float32", "float64"] = "float32"

    def __post_init__(self) -> None:
        if not self.hidden or min(self.hidden) < 1 or self.cond_hidden < 1:
            raise ValueError("hidden widths and cond_hidden must be >= 1")
        if self.iterations < 1 or self.inner_steps < 1 or self.batch_size < 2:
            raise ValueError("iterations and inner_steps must be >= 1 and batch_size >= 2")
        if not self.lr > 0:
            raise ValueError(f"lr must be > 0, got {self.lr}")
        if self.activation not in ACTIVATION_NAMES:
            raise ValueError(f"unknown activation {self.activation!r}; valid: {', '.join(sorted(ACTIVATION_NAMES))}")
        if self.dtype not in ("float32", "float64"):
            raise ValueError(f"dtype must be float32 or float64, got {self.dtype!r}")


@dataclass(frozen=True)
class NeuralAlignConfig:
    """The ``neural`` align formulation: a conditional monotone map DFT value -> measured value.

    ``pca_components`` principal components of the standardised composition descriptors form
    the condition; ``clip_min`` bounds the calibrated value from below (0 for band gaps: the
    property's clamp, set by :meth:`AlignConfig.for_property`); ``dual`` trains the pair of
    networks (its keys stand beside ``pca_components`` in params.yaml).
    """

    pca_components: int = 8
    clip_min: float | None = field(default=None, metadata=PARAM_DERIVED)
    dual: DualConfig = field(default_factory=lambda: DualConfig(hidden=(32, 32), cond_hidden=32,
                                                                 iterations=1500, inner_steps=4),
                             metadata=PARAM_INLINE)

    def __post_init__(self) -> None:
        if self.pca_components < 1:
            raise ValueError(f"pca_components must be >= 1, got {self.pca_components}")


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
        if not 0 < self.tol < 1:
            raise ValueError(f"tol must be in (0, 1), got {self.tol}")
        if self.max_iter < 1:
            raise ValueError(f"max_iter must be >= 1, got {self.max_iter}")
        if not 0 < self.partial_mass <= 1:
            raise ValueError(f"partial_mass must be in (0, 1], got {self.partial_mass}")
        if self.n_components < 1:
            raise ValueError(f"n_components must be >= 1, got {self.n_components}")


@dataclass(frozen=True)
class AlignConfig:
    """Everything that decides an alignment (``align`` in params.yaml, less the stage's own keys).

    ``energy_additivity`` asks for per-element corrections fitted alternately with the plan
    where the property is additive (formation enthalpies) and the method is not ``neural``
    (which learns composition-dependent shifts itself): :meth:`for_property` applies that
    rule and the property's clamp. ``dense_limit``: plan entries up to which all pairs form
    the support when there is no hard block; ``knn``: neighbours per point otherwise.
    """

    method: Literal["balanced", "unbalanced", "partial", "aot", "mixture", "neural"] = "unbalanced"
    options: SolverOptions = field(default_factory=SolverOptions, metadata=PARAM_INLINE)
    # the align stage's recipe compares measurements with linearly calibrated DFT values
    cost: CostWeights = field(default_factory=lambda: CostWeights(value_calibration="linear"))
    energy_additivity: bool = True
    additivity_iters: int = 5
    additivity_ridge: float = 1e-4
    dense_limit: int = 4_000_000
    knn: int = 64

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ValueError(f"unknown alignment method {self.method!r}; valid methods: {', '.join(METHODS)}")
        if self.additivity_iters < 1 or self.knn < 1:
            raise ValueError("additivity_iters and knn must be >= 1")

    def for_property(self, prop: Property) -> AlignConfig:
        """Apply this configuration to ``prop``: additivity only where it holds, the neural map's clamp and seed."""
        neural = self.options.neural or NeuralAlignConfig()
        neural = replace(neural, clip_min=prop.clamp_min, dual=replace(neural.dual, seed=self.options.seed))
        return replace(self, options=replace(self.options, neural=neural),
                       energy_additivity=self.energy_additivity and prop.additive and self.method != "neural")

    def kwargs(self) -> dict[str, Any]:
        """Return the keyword arguments of :func:`models.transport.align` (and ``align_blocks``) this configuration sets."""
        return {"method": self.method, "weights": self.cost, "options": self.options,
                "energy_additivity": self.energy_additivity, "additivity_iters": self.additivity_iters,
                "additivity_ridge": self.additivity_ridge, "dense_limit": self.dense_limit, "knn": self.knn}


__all__ = [
    "ACTIVATION_NAMES",
    "METHODS",
    "AlignConfig",
    "DualConfig",
    "NeuralAlignConfig",
    "SolverOptions",
]
