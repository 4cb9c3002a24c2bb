"""The evaluation budget: which protocols, which models, and how much training per fold.

:class:`EvalSettings` is ``evaluate.full`` / ``evaluate.quick`` in params.yaml. The per-fold
models are the train stage's (:class:`models.learners.FitConfig`) with the smaller budget
given here; the alignment per fold is the align stage's (:class:`models.transport.AlignConfig`).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

from models.learners.config import MetalConfig

PROTOCOLS = ("grouped_cv", "loco", "family_out", "crystal_system_out", "range_extrapolation")
OOD_PROTOCOLS = ("loco", "family_out", "crystal_system_out")
BASELINES = ("raw_dft", "linear_dft", "rf_descriptors")
STACKED_MODELS = ("stacked", "stacked_ot")
CALIBRATIONS = ("calib_ot_knn", "calib_neural")



@dataclass(frozen=True)
class GnnVariant:
    """One GNN model of the comparison: which alignment feeds it and which loss terms it uses.

    ``alignment`` names an entry of :meth:`AlignSettings.variants` (None: no calibrated targets).
    """

    name: str
    use_ot: bool
    alignment: str | None
    w_calibrated: float | None = None  # None: the train config's weight


GNN_VARIANTS: dict[str, GnnVariant] = {
    v.name: v
    for v in (
        GnnVariant("gnn_no_ot", use_ot=False, alignment=None),
        GnnVariant("gnn_ot", use_ot=True, alignment="unbalanced"),
        GnnVariant("gnn_ot_balanced", use_ot=True, alignment="balanced"),
        GnnVariant("gnn_ot_no_penalties", use_ot=True, alignment="no_penalties"),
        GnnVariant("gnn_ot_no_calibrated", use_ot=True, alignment=None, w_calibrated=0.0),
    )
}
# models that use no optimal transport at all (the comparison of issue 6's must-show)
NON_OT_MODELS = ("raw_dft", "linear_dft", "rf_descriptors", "gnn_no_ot", "stacked")
OT_MODELS = ("stacked_ot", "gnn_ot")  # the headline OT model is the first present (the served one)




@dataclass(frozen=True)
class EvalSettings:
    """One evaluation budget (``evaluate.full`` or ``evaluate.quick``).

    The per-fold GNN is the train stage's model and optimiser (``train.model``,
    ``train.optim``) with a smaller budget: ``members`` members per model sharing
    ``encoders`` DFT-pretrained composition encoders (``pretrain_epochs``), fine-tuned for at
    most ``epochs`` with early-stopping ``patience``, and optionally without the crystal-graph
    branch (``use_graphs``), because five GNN variants x ~23 folds x 2 properties must fit in
    45 minutes on two cores. ``pretraining``: ``own`` pretrains those encoders here;
    ``train`` starts every fold's GNNs from the train stage's DFT-pretrained encoders (the
    pretrain stage's output, or the same pretraining computed here when that is missing or not
    this run's) with ``train.model`` as it is, crystal-graph branch included: ``encoders``,
    ``pretrain_epochs`` and ``use_graphs`` are then the train stage's, and the folds judge the
    served recipe (the members' fine-tuning from frozen encoders) under a smaller budget.
    """

    protocols: list[str] = field(default_factory=lambda: list(PROTOCOLS))
    models: list[str] = field(default_factory=lambda: ["stacked", "stacked_ot", "gnn_no_ot", "gnn_ot", "gnn_ot_balanced",
                                                       "gnn_ot_no_penalties", "gnn_ot_no_calibrated"])
    n_folds: int = 5
    loco_clusters: int = 5
    top_fraction: float = 0.1
    max_measurements: int = 0  # 0 = all; otherwise a seeded subsample of whole formulas
    max_dft: int = 0  # 0 = all; otherwise the measured formulas' entries plus a seeded sample
    members: int = 1
    encoders: int = 1
    pretrain_epochs: int = 2
    epochs: int = 15
    patience: int = 5
    use_graphs: bool = False
    pretraining: str = "own"
    rf_trees: int = 100
    shift_sample: int = 500
    stack_bags: int = 0  # boosters per stacked model and fold; 0 = train.stack.bags
    # the stacked models also on the folds of seeds seed + 1 .. seed + stack_seeds - 1 (fold and booster seeds):
    # mean and std of their MAE over the seeds, and a paired interval of the OT features' difference
    stack_seeds: int = 1
    neural_iterations: int = 0  # outer steps of the per-fold neural OT map (calib_neural); 0 = not fitted

    def __post_init__(self) -> None:
        bad = [p for p in self.protocols if p not in PROTOCOLS]
        if bad:
            raise ValueError(f"unknown protocol {bad[0]!r} (valid: {', '.join(PROTOCOLS)})")
        bad = [m for m in self.models if m not in GNN_VARIANTS and m not in STACKED_MODELS]
        if bad:
            raise ValueError(f"unknown model {bad[0]!r} (valid: {', '.join([*STACKED_MODELS, *GNN_VARIANTS])})")
        if self.pretraining not in ("own", "train"):
            raise ValueError(f"pretraining must be 'own' or 'train', got {self.pretraining!r}")
        if self.stack_bags < 0 or self.neural_iterations < 0:
            raise ValueError("stack_bags and neural_iterations must be >= 0")
        if self.stack_seeds < 1:
            raise ValueError(f"stack_seeds must be >= 1, got {self.stack_seeds}")
        if min(self.n_folds, self.loco_clusters) < 2:
            raise ValueError("n_folds and loco_clusters must be >= 2")
        if not 0 < self.top_fraction < 1:
            raise ValueError(f"top_fraction must be in (0, 1), got {self.top_fraction}")
        if min(self.members, self.encoders, self.epochs, self.patience, self.rf_trees, self.shift_sample) < 1:
            raise ValueError("members, encoders, epochs, patience, rf_trees and shift_sample must be >= 1")
        if self.max_measurements < 0 or self.max_dft < 0 or self.pretrain_epochs < 0:
            raise ValueError("max_measurements, max_dft and pretrain_epochs must be >= 0")

    def uses_graphs(self, model_uses_graphs: bool) -> bool:
        """Whether the folds' GNN tables carry crystal graphs.

        With ``pretraining: train`` the train stage's model's ``use_graphs`` (``model_uses_graphs``), else this
        budget's own ``use_graphs``.
        """
        return model_uses_graphs if self.pretraining == "train" else self.use_graphs


@dataclass(frozen=True)
class MetalCVSettings:
    """Cross-validation of the metal classifier (``metal`` section of params.yaml, inline).

    Grouped ``n_folds``-fold CV by reduced formula runs once per seed of ``cv_seeds`` (folds
    differ); each of the OOD ``protocols`` (``loco`` with ``loco_clusters`` k-means clusters,
    ``family_out``, ``crystal_system_out``) runs once. Per fold the threshold comes from an
    ``inner_folds``-fold CV of the training part, and the band-gap regressor is the train
    stage's stacked model without OT with ``regressor_bags`` boosters. The inner CV's
    classifiers take ``inner_trees`` trees at rate ``inner_lr`` (None: the classifier's) and one
    booster: they only set the threshold. A formula labelled
    metal with a measured gap above ``gap_conflict_tol`` (eV) is left out. The folds run in
    ``workers`` forked processes (1 = one after the other).
    """

    cv_seeds: list[int] = field(default_factory=lambda: [0, 1, 2])
    n_folds: int = 5
    inner_folds: int = 4
    inner_trees: int | None = None
    inner_lr: float | None = None
    protocols: list[str] = field(default_factory=lambda: list(OOD_PROTOCOLS))
    loco_clusters: int = 5
    regressor_bags: int = 2
    gap_conflict_tol: float = 0.1
    workers: int = 1

    def __post_init__(self) -> None:
        if not self.cv_seeds:
            raise ValueError("cv_seeds must list at least one seed")
        if self.n_folds < 2 or self.inner_folds < 2:
            raise ValueError(f"n_folds and inner_folds must be >= 2, got {self.n_folds} and {self.inner_folds}")
        unknown = sorted(set(self.protocols) - set(OOD_PROTOCOLS))
        if unknown:
            raise ValueError(f"unknown protocols {unknown} (valid: {', '.join(OOD_PROTOCOLS)})")
        if self.loco_clusters < 2 or self.regressor_bags < 1 or self.workers < 1:
            raise ValueError("loco_clusters must be >= 2, regressor_bags and workers >= 1")
        if self.gap_conflict_tol < 0:
            raise ValueError(f"gap_conflict_tol must be >= 0, got {self.gap_conflict_tol}")
        if (self.inner_trees is not None and self.inner_trees < 1) or (self.inner_lr is not None and self.inner_lr <= 0):
            raise ValueError(f"inner_trees must be >= 1 and inner_lr > 0 (or null), got {self.inner_trees} and {self.inner_lr}")

    def inner_config(self, classifier: MetalConfig) -> MetalConfig:
        """Return the inner CV's classifier config: ``classifier`` with one booster and ``inner_trees`` / ``inner_lr``."""
        return replace(classifier, bags=1, trees=self.inner_trees or classifier.trees, lr=self.inner_lr or classifier.lr)


__all__ = [
    "BASELINES",
    "CALIBRATIONS",
    "GNN_VARIANTS",
    "NON_OT_MODELS",
    "OOD_PROTOCOLS",
    "OT_MODELS",
    "PROTOCOLS",
    "STACKED_MODELS",
    "EvalSettings",
    "GnnVariant",
    "MetalCVSettings",
]
