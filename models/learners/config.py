"""Settings of the learners: the single source of every training option and its default.

The train stage validates ``params.yaml``'s ``train`` section straight into
:class:`FitConfig` (``train.model`` -> :class:`ModelConfig`, ``train.optim`` ->
:class:`TrainConfig`, ``train.stack`` -> :class:`StackConfig`) and the evaluate stage refits
per fold with the same objects under a smaller budget, so the two cannot drift apart. Fields
marked ``derived`` are set from other facts (the property's clamp, the run's seed, the
model section), never from params.yaml.

Torch-free, so that reading a configuration imports no training code.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Literal

from models._io import PARAM_DERIVED, PARAM_INLINE

if TYPE_CHECKING:
    from models.properties import Property


@dataclass(frozen=True)
class ModelConfig:
    """Keyword arguments of :class:`models.nets.MultiFidelityNet` (descriptor width is set from the data)."""

    comp_hidden: int = 64
    comp_layers: int = 2
    comp_heads: int = 1
    emb_dim: int = 64
    head_hidden: int = 64
    head_depth: int = 2
    dropout: float = 0.0
    use_descriptors: bool = True
    use_graphs: bool = True
    graph_hidden: int = 64
    graph_layers: int = 3

    def __post_init__(self) -> None:
        if min(self.comp_hidden, self.comp_layers, self.comp_heads, self.emb_dim, self.head_hidden, self.head_depth) < 1:
            raise ValueError("model sizes must be >= 1")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout}")


@dataclass(frozen=True)
class TrainConfig:
    """Optimisation settings of one GNN (``train.optim`` in params.yaml); ``use_ot=False`` gives the GNN without OT.

    ``pretrain_epochs`` / ``pretrain_batch_size``: DFT-only pretraining of the composition
    encoder. :func:`models.learners.fit_property` and the evaluate stage run it once, shared by
    the members (:func:`models.learners.pretrain_members`); :func:`models.learners.train_model`
    runs it in-loop only when it is given no pretrained state. ``freeze_encoder`` keeps a
    pretrained composition encoder fixed while fine-tuning (its embeddings are computed once),
    so fine-tuning costs only the heads: the cheap mode for CV on two cores. ``freeze_graph``
    (with ``freeze_encoder``) keeps the pretrained crystal-graph encoder fixed too: its output
    joins the cached embeddings, so no minibatch builds or convolves a crystal graph. ``use_ot``,
    ``clamp_min`` (the property's) and ``model`` are set by the caller, not by params.yaml.
    """

    epochs: int = 60
    pretrain_epochs: int = 0
    pretrain_batch_size: int = 256
    batch_size: int = 128
    dft_batch_size: int = 256
    lr: float = 2e-3
    weight_decay: float = 1e-5
    patience: int = 12
    val_fraction: float = 0.15
    w_dft: float = 0.5
    w_exp: float = 1.0
    w_calibrated: float = 0.3
    w_ot: float = 0.05
    use_ot: bool = field(default=True, metadata=PARAM_DERIVED)
    ot_reg: float = 0.1
    ot_reg_m: float = 1.0
    ot_iters: int = 30
    loss: Literal["l1", "huber"] = "l1"
    clamp_min: float | None = field(default=None, metadata=PARAM_DERIVED)
    freeze_encoder: bool = False
    freeze_graph: bool = False
    model: ModelConfig = field(default_factory=ModelConfig, metadata=PARAM_DERIVED)

    def __post_init__(self) -> None:
        if self.epochs < 1 or self.pretrain_epochs < 0:
            raise ValueError("epochs must be >= 1 and pretrain_epochs >= 0")
        if self.batch_size < 2 or self.dft_batch_size < 2 or self.pretrain_batch_size < 2:
            raise ValueError("batch sizes must be >= 2")
        if not 0.0 <= self.val_fraction < 1.0:
            raise ValueError(f"val_fraction must be in [0, 1), got {self.val_fraction}")
        if min(self.lr, self.ot_reg, self.ot_reg_m) <= 0:
            raise ValueError("lr, ot_reg and ot_reg_m must be > 0")
        if min(self.w_dft, self.w_exp, self.w_calibrated, self.w_ot, self.weight_decay) < 0:
            raise ValueError("loss weights and weight_decay must be >= 0")
        if self.patience < 1:
            raise ValueError("patience must be >= 1")
        if self.loss not in ("l1", "huber"):
            raise ValueError(f"loss must be 'l1' or 'huber', got {self.loss!r}")
        if self.freeze_graph and not self.freeze_encoder:
            raise ValueError("freeze_graph needs freeze_encoder: the frozen crystal-graph output joins the frozen "
                             "composition encoder's cached embeddings")


#: The boosters' LightGBM objectives a :class:`StackConfig` takes (L2, L1, Huber).
OBJECTIVES = ("regression", "regression_l1", "huber")


def _check_classes(classes: Sequence[str], where: str) -> None:
    """Raise ``ValueError`` naming ``where`` when ``classes`` holds a name that is no :data:`featurizers.bonding.ELEMENT_CLASSES` key."""
    from featurizers.bonding import ELEMENT_CLASSES  # a light module, only for this check

    unknown = [c for c in classes if c not in ELEMENT_CLASSES]
    if unknown:
        raise ValueError(f"{where}: no element class {unknown[0]!r} (known: {', '.join(ELEMENT_CLASSES)})")


@dataclass(frozen=True)
class StackConfig:
    """Options of the stacked model (chosen on seed-1 folds, see benchmarks/cv_experiment_results.md).

    ``surrogate_*`` configure the DFT surrogate, the rest the model of the measurements.
    ``max_bin`` / ``surrogate_max_bin``: LightGBM's histogram bins per feature (fewer = faster
    trees; 255 is LightGBM's default). ``colsample`` / ``surrogate_colsample``: the fraction of
    the columns each tree draws (fewer = faster trees), of the boosters and of the surrogate.
    ``surrogate_bonding`` (set per property from ``train.stack.surrogate_bonding``): the surrogate
    also sees the bonding and ionic descriptors of :mod:`featurizers.bonding` (element classes,
    valence electrons, charge balance, ionic character).
    ``objective`` is LightGBM's (``regression`` = L2, ``regression_l1``, ``huber``); ``huber_delta``: the
    residual (in the property's unit) where Huber's loss turns from squared to absolute (LightGBM's
    ``alpha``, default 0.9). ``bags``
    boosters with seeds ``seed .. seed + bags - 1`` are averaged (row/column subsampling differ).
    ``correction_alpha``: ridge penalty of the fitted elemental correction (None: no correction,
    boosters fit the measurement directly). ``ot_in_correction``: with a shift field, its OT
    shift is also a linear term of that correction (besides being a booster feature).
    ``ot_neighbours``: aligned formulas averaged by the shift field the callers build for it.
    ``monotone``: the boosters' residual is non-decreasing in the DFT-valued columns (known
    value, best estimate, best estimate plus OT shift, corrected estimate), so the prediction
    never falls as the DFT value rises (LightGBM monotone constraints).
    ``extrapolate`` (set per property from ``train.stack.extrapolate``): the corrected estimate
    gets a calibration slope (reduced major axis of measurement against it, which a cut on the
    measured range does not flatten), and beyond the training targets' range the boosters'
    pull back toward that range is faded out, so the prediction follows the calibrated DFT
    trend there instead of a constant.
    ``bonding`` (set per property from ``train.stack.bonding``): the boosters also see the
    element-class fractions, valence-electron count, charge balance and ionic character of
    :mod:`featurizers.bonding`. ``correction_terms`` (set per property from
    ``train.stack.correction_terms``): columns of the model's features (descriptor names; with
    ``bonding`` also the bonding ones) that enter the fitted correction as linear terms beside the
    element fractions, z-scored on the training rows and clipped to their range; unlike a
    per-element offset they have a value for a formula whose elements training never saw.
    ``correction_classes`` (set per property from ``train.stack.correction_classes``): named
    element classes (:data:`featurizers.bonding.ELEMENT_CLASSES`) whose atomic fraction enters
    the fitted correction beside the element fractions, unscaled like them: one offset shared
    by the class's elements, which reaches an element of the class that training never saw.
    ``element_value`` (the property's, :mod:`models.properties`): a pure element is predicted
    this value, which it has by definition (0 eV/atom formation enthalpy of an element in its
    reference state); None: elements are predicted like compounds.
    """

    surrogate_trees: int = 300
    surrogate_leaves: int = 63
    surrogate_lr: float = 0.05
    surrogate_folds: int = 5
    surrogate_max_bin: int = 255
    surrogate_colsample: float = 0.5
    surrogate_bonding: bool = field(default=False, metadata=PARAM_DERIVED)  # train.stack.surrogate_bonding
    trees: int = 800
    leaves: int = 31
    lr: float = 0.03
    min_child_samples: int = 10
    colsample: float = 0.5
    subsample: float = 0.8
    objective: str = "regression"
    huber_delta: float = 0.9
    max_bin: int = 255
    bags: int = 5
    correction_alpha: float | None = 10.0
    ot_in_correction: bool = False
    ot_neighbours: int = 5
    monotone: bool = False
    extrapolate: bool = field(default=False, metadata=PARAM_DERIVED)  # train.stack.extrapolate
    clamp_min: float | None = field(default=None, metadata=PARAM_DERIVED)  # the property's
    bonding: bool = field(default=False, metadata=PARAM_DERIVED)  # train.stack.bonding
    correction_terms: tuple[str, ...] = field(default=(), metadata=PARAM_DERIVED)  # train.stack.correction_terms
    correction_classes: tuple[str, ...] = field(default=(), metadata=PARAM_DERIVED)  # train.stack.correction_classes
    element_value: float | None = field(default=None, metadata=PARAM_DERIVED)  # the property's
    seed: int = field(default=0, metadata=PARAM_DERIVED)  # train.seed
    n_jobs: int = 2

    def __post_init__(self) -> None:
        object.__setattr__(self, "correction_terms", tuple(self.correction_terms))  # a JSON or YAML list
        object.__setattr__(self, "correction_classes", tuple(self.correction_classes))
        for name in ("surrogate_trees", "surrogate_leaves", "trees", "leaves", "min_child_samples", "n_jobs", "bags",
                     "ot_neighbours"):
            if getattr(self, name) < 1:
                raise ValueError(f"StackConfig.{name} must be >= 1, got {getattr(self, name)}")
        for name in ("max_bin", "surrogate_max_bin"):
            if getattr(self, name) < 2:
                raise ValueError(f"StackConfig.{name} must be >= 2, got {getattr(self, name)}")
        if self.surrogate_folds < 2:
            raise ValueError(f"StackConfig.surrogate_folds must be >= 2, got {self.surrogate_folds}")
        for name in ("colsample", "surrogate_colsample", "subsample", "lr", "surrogate_lr"):
            if not 0.0 < getattr(self, name) <= 1.0:
                raise ValueError(f"StackConfig.{name} must be in (0, 1], got {getattr(self, name)}")
        self._check_correction()
        if not self.huber_delta > 0:
            raise ValueError(f"StackConfig.huber_delta must be > 0, got {self.huber_delta}")
        if self.objective not in OBJECTIVES:
            raise ValueError(f"StackConfig.objective must be one of {', '.join(OBJECTIVES)}, got {self.objective!r}")

    def _check_correction(self) -> None:
        if self.correction_alpha is not None and self.correction_alpha <= 0:
            raise ValueError(f"StackConfig.correction_alpha must be > 0 or None, got {self.correction_alpha}")
        if self.extrapolate and self.correction_alpha is None:
            raise ValueError("StackConfig.extrapolate calibrates the corrected DFT estimate: it needs correction_alpha")
        if self.correction_terms and self.correction_alpha is None:
            raise ValueError("StackConfig.correction_terms are terms of the fitted correction: they need correction_alpha")
        if len(set(self.correction_terms)) != len(self.correction_terms):
            raise ValueError(f"StackConfig.correction_terms names a column twice: {list(self.correction_terms)}")
        if not self.correction_classes:
            return
        if self.correction_alpha is None:
            raise ValueError("StackConfig.correction_classes are terms of the fitted correction: they need correction_alpha")
        _check_classes(self.correction_classes, "StackConfig.correction_classes")
        if len(set(self.correction_classes)) != len(self.correction_classes):
            raise ValueError(f"StackConfig.correction_classes names a class twice: {list(self.correction_classes)}")

    def missing_terms(self, descriptor_columns: Sequence[str]) -> list[str]:
        """Return the ``correction_terms`` that are no feature column: not in ``descriptor_columns``, nor bonding ones with ``bonding``."""
        from featurizers.bonding import BONDING_COLUMNS, IONIC_COLUMNS  # a light module, only for this check

        known = set(descriptor_columns) | ({*BONDING_COLUMNS, *IONIC_COLUMNS} if self.bonding else set())
        return [name for name in self.correction_terms if name not in known]


@dataclass(frozen=True)
class StackSettings:
    """How the stacked model is used (``train.stack``; its :class:`StackConfig` keys stand beside these).

    ``blend_weight`` is fixed from the CV benchmark (benchmarks/cv_experiment_results.md), never
    fitted: the served prediction is ``w * stacked + (1 - w) * gnn_ot``. ``ot_features``: the
    served stacked model takes the align stage's calibration shifts (:class:`ShiftField`).
    ``extra_fidelities``: other DFT fidelities of ``data/raw/dft.parquet`` given to the stacked
    model where known (the property's own DFT column is skipped). ``extrapolate``: the
    properties whose stacked model uses the extrapolating calibration, ``bonding`` those whose
    boosters also see the bonding and ionic descriptors (:class:`StackConfig`), ``surrogate_bonding``
    those whose DFT surrogate does.
    ``colsample_for``: property -> the boosters' column fraction per tree for that property,
    instead of ``config.colsample`` (the surrogate's, ``surrogate_colsample``, is shared).
    ``objective_for``: property -> the boosters' LightGBM objective for that property, instead of
    ``config.objective`` (the surrogate's stays L2).
    ``correction_terms``: property -> feature columns that enter its fitted correction as linear
    terms (:class:`StackConfig`); a property not named has none. ``correction_classes``: property
    -> element classes whose atomic fraction enters it (:class:`StackConfig`).
    """

    enabled: bool = True
    blend_weight: float = 1.0
    ot_features: bool = True
    extra_fidelities: tuple[str, ...] = ("band_gap_hse", "band_gap_gllb_sc", "band_gap_scan")
    extrapolate: tuple[str, ...] = ("band_gap",)
    bonding: tuple[str, ...] = ()
    surrogate_bonding: tuple[str, ...] = ()
    colsample_for: dict[str, float] = field(default_factory=dict)
    objective_for: dict[str, str] = field(default_factory=dict)
    correction_terms: dict[str, tuple[str, ...]] = field(default_factory=dict)
    correction_classes: dict[str, tuple[str, ...]] = field(default_factory=dict)
    config: StackConfig = field(default_factory=StackConfig, metadata=PARAM_INLINE)

    def __post_init__(self) -> None:
        if not 0.0 <= self.blend_weight <= 1.0:
            raise ValueError(f"stack.blend_weight must be in [0, 1], got {self.blend_weight}")
        if self.blend_weight > 0 and not self.enabled:
            raise ValueError("stack.blend_weight > 0 needs stack.enabled: true")
        from models.properties import PROPERTY_NAMES  # a light module; imported here like the type above

        for key in ("extrapolate", "bonding", "surrogate_bonding", "colsample_for", "objective_for", "correction_terms",
                    "correction_classes"):
            unknown = sorted(set(getattr(self, key)) - set(PROPERTY_NAMES))
            if unknown:
                raise ValueError(f"stack.{key}: unknown propert{'ies' if len(unknown) > 1 else 'y'} {unknown} "
                                 f"(valid: {', '.join(PROPERTY_NAMES)})")
        for name, fraction in self.colsample_for.items():
            if not 0.0 < fraction <= 1.0:
                raise ValueError(f"stack.colsample_for.{name} must be in (0, 1], got {fraction}")
        for name, objective in self.objective_for.items():
            if objective not in OBJECTIVES:
                raise ValueError(f"stack.objective_for.{name} must be one of {', '.join(OBJECTIVES)}, got {objective!r}")
        for name, classes in self.correction_classes.items():
            _check_classes(classes, f"stack.correction_classes.{name}")


@dataclass(frozen=True)
class IntervalConfig:
    """Settings of the conformal prediction intervals (:class:`models.learners.ConformalIntervals`; ``train.intervals``).

    ``folds``: grouped folds of the out-of-fold residuals (by formula); ``bags``: boosters of
    each fold's model (1: cheap; the residual distribution is what matters); ``trees`` / ``lr``:
    those boosters' trees and learning rate (None: the stacked model's), see :meth:`booster_config`. ``max_z``: the
    standardised descriptors of calibration rows and queries are clipped to ``[-max_z, max_z]``
    before distances are taken, so that a column almost constant among the calibration rows
    cannot put a composition millions of standard deviations away (by Chebyshev at most
    ``1 / max_z**2`` of the calibration rows lie beyond it in any one column).
    """

    coverage: float = 0.9
    folds: int = 5
    bags: int = 1
    trees: int | None = None
    lr: float | None = None
    k_residual: int = 25
    k_distance: int = 5
    distance_power: float = 0.75
    beta: float = 0.01
    max_z: float = 10.0

    def __post_init__(self) -> None:
        if not 0.0 < self.coverage < 1.0:
            raise ValueError(f"IntervalConfig.coverage must be in (0, 1), got {self.coverage}")
        if not self.max_z > 0:
            raise ValueError(f"IntervalConfig.max_z must be > 0, got {self.max_z}")
        if self.folds < 2 or min(self.bags, self.k_residual, self.k_distance) < 1:
            raise ValueError("IntervalConfig: folds must be >= 2 and bags, k_residual, k_distance >= 1")
        if self.distance_power < 0 or self.beta <= 0:
            raise ValueError("IntervalConfig: distance_power must be >= 0 and beta > 0")
        if self.trees is not None and self.trees < 1:
            raise ValueError(f"IntervalConfig.trees must be >= 1 (or null: the stacked model's), got {self.trees}")
        if self.lr is not None and not self.lr > 0:
            raise ValueError(f"IntervalConfig.lr must be > 0 (or null: the stacked model's), got {self.lr}")

    def booster_config(self, stack: StackConfig) -> StackConfig:
        """Return the settings of the models whose out-of-fold residuals calibrate the intervals.

        ``stack`` (the served stacked model's) with ``bags`` boosters and, where set, ``trees``
        and ``lr``: the residuals only have to be those of a model of the same accuracy.
        """
        return replace(stack, bags=self.bags, trees=self.trees or stack.trees, lr=self.lr or stack.lr)


@dataclass(frozen=True)
class FitConfig:
    """Everything :func:`models.learners.fit_property` fits for one property (``train`` in params.yaml, less paths).

    ``members`` GNNs per variant (seeds ``seed, seed + 1, ...``) share ``encoders``
    DFT-pretrained encoders round-robin, and train in ``workers`` forked processes
    (1 = one after the other, here); ``selection_fraction`` of the measured formulas (grouped)
    are held out to compare every model on the same unseen formulas.
    """

    seed: int = 0
    members: int = 4
    encoders: int = 2
    selection_fraction: float = 0.2
    rf_trees: int = 300
    device: str = "auto"
    workers: int = 1
    model: ModelConfig = field(default_factory=ModelConfig)
    # the train stage's recipe: DFT-pretrained composition and crystal-graph encoders, frozen while the heads fine-tune
    optim: TrainConfig = field(default_factory=lambda: TrainConfig(epochs=40, pretrain_epochs=4, dft_batch_size=128,
                                                                   patience=8, freeze_encoder=True, freeze_graph=True))
    stack: StackSettings = field(default_factory=StackSettings)
    # conformal intervals around the served (stacked) model's predictions
    intervals: IntervalConfig = field(default_factory=IntervalConfig)

    def __post_init__(self) -> None:
        if self.members < 1:
            raise ValueError(f"members must be >= 1, got {self.members}")
        if not 1 <= self.encoders <= self.members:
            raise ValueError(f"encoders must be in 1..members, got {self.encoders}")
        if not 0.0 < self.selection_fraction < 0.5:
            raise ValueError(f"selection_fraction must be in (0, 0.5), got {self.selection_fraction}")
        if self.rf_trees < 1:
            raise ValueError(f"rf_trees must be >= 1, got {self.rf_trees}")
        if self.workers < 1:
            raise ValueError(f"workers must be >= 1, got {self.workers}")

    def train_config(self, prop: Property) -> TrainConfig:
        """Return the GNN training settings for ``prop``: ``optim`` with ``model`` and the property's clamp."""
        return replace(self.optim, model=self.model, clamp_min=prop.clamp_min)

    def stack_config(self, prop: Property) -> StackConfig | None:
        """Return the stacked model's settings for ``prop`` (seed, clamp, element value and per-property options set), or None when the stack is off."""
        if not self.stack.enabled:
            return None
        return replace(self.stack.config, seed=self.seed, clamp_min=prop.clamp_min, element_value=prop.element_value,
                       extrapolate=prop.name in self.stack.extrapolate, bonding=prop.name in self.stack.bonding,
                       surrogate_bonding=prop.name in self.stack.surrogate_bonding,
                       colsample=self.stack.colsample_for.get(prop.name, self.stack.config.colsample),
                       objective=self.stack.objective_for.get(prop.name, self.stack.config.objective),
                       correction_terms=tuple(self.stack.correction_terms.get(prop.name, ())),
                       correction_classes=tuple(self.stack.correction_classes.get(prop.name, ())))

    def extra_fidelities(self, prop: Property) -> tuple[str, ...]:
        """Return the other DFT fidelities the stacked model takes for ``prop`` (never its own DFT column)."""
        return tuple(c for c in self.stack.extra_fidelities if c != prop.dft_column)


@dataclass(frozen=True)
class MetalConfig:
    """Options of the metal classifier (:class:`models.learners.MetalClassifier`; ``metal.classifier`` in params.yaml).

    ``trees`` / ``leaves`` / ``lr`` / ``min_child_samples`` / ``colsample`` / ``subsample``:
    the LightGBM classifiers, ``bags`` of them with seeds ``seed ..`` averaged; ``max_bin``
    their histogram bins per feature (as :class:`StackConfig`'s). ``surrogate_*``:
    the two composition models of DFT data (PBE gap, PBE metallic or not), cross-fitted like
    the stacked model's surrogate. ``dft_metal_gap``: a DFT entry whose PBE gap is at most
    this (eV) counts as metallic. ``bonding``: the classifiers also see
    :func:`featurizers.bonding.bonding_descriptors` (element classes, valence-electron count).
    ``ionic``: they also see :func:`featurizers.bonding.ionic_descriptors` (charge balance with
    common oxidation states, ionic character).
    """

    trees: int = 600
    leaves: int = 31
    lr: float = 0.03
    min_child_samples: int = 10
    colsample: float = 0.5
    subsample: float = 0.8
    bags: int = 3
    max_bin: int = 255
    surrogate_trees: int = 300
    surrogate_leaves: int = 63
    surrogate_lr: float = 0.05
    surrogate_folds: int = 5
    surrogate_max_bin: int = 255
    dft_metal_gap: float = 0.0
    bonding: bool = True
    ionic: bool = False
    seed: int = 0
    n_jobs: int = 2

    def __post_init__(self) -> None:
        for name in ("trees", "leaves", "min_child_samples", "bags", "surrogate_trees", "surrogate_leaves", "n_jobs"):
            if getattr(self, name) < 1:
                raise ValueError(f"MetalConfig.{name} must be >= 1, got {getattr(self, name)}")
        for name in ("max_bin", "surrogate_max_bin"):
            if getattr(self, name) < 2:
                raise ValueError(f"MetalConfig.{name} must be >= 2, got {getattr(self, name)}")
        if self.surrogate_folds < 2:
            raise ValueError(f"MetalConfig.surrogate_folds must be >= 2, got {self.surrogate_folds}")
        for name in ("colsample", "subsample", "lr", "surrogate_lr"):
            if not 0.0 < getattr(self, name) <= 1.0:
                raise ValueError(f"MetalConfig.{name} must be in (0, 1], got {getattr(self, name)}")
        if self.dft_metal_gap < 0:
            raise ValueError(f"MetalConfig.dft_metal_gap must be >= 0, got {self.dft_metal_gap}")

    def surrogate_config(self) -> StackConfig:
        """Return the :class:`StackConfig` a :class:`~models.learners.DFTSurrogate` of these settings takes."""
        return StackConfig(surrogate_trees=self.surrogate_trees, surrogate_leaves=self.surrogate_leaves,
                           surrogate_lr=self.surrogate_lr, surrogate_folds=self.surrogate_folds,
                           surrogate_max_bin=self.surrogate_max_bin, surrogate_colsample=self.colsample,
                           subsample=self.subsample, seed=self.seed, n_jobs=self.n_jobs)


__all__ = ["FitConfig", "IntervalConfig", "MetalConfig", "ModelConfig", "StackConfig", "StackSettings", "TrainConfig"]
