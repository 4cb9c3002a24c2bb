"""Leak-free, out-of-distribution evaluation: protocols, per-fold refits, scores, the results table.

Layer: the top of :mod:`models`, beside serving. ``config`` (:class:`EvalSettings`, the model
and protocol names), ``splits`` (the folds of every protocol), ``folds`` (every model refitted
per fold on the fold's training part only), ``summary`` (per-protocol and pooled OOD
metrics), ``run`` (one property's whole evaluation: :func:`evaluate_property`), ``report``
(the README's results table), ``metal`` (the metal classifier's cross-validation).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from models._io import lazy_exports
from models.evaluation import config, report, summary
from models.evaluation.config import *
from models.evaluation.report import *
from models.evaluation.summary import *

if TYPE_CHECKING:  # what the lazy names below resolve to, for type checkers and import analysis
    from models.evaluation.folds import *
    from models.evaluation.metal import *
    from models.evaluation.run import *
    from models.evaluation.splits import *

# torch and pymatgen are imported on first use: reading the evaluation settings needs neither
_LAZY = {
    "splits": (
        "FAMILIES", "Fold", "chemical_family", "crystal_system_folds", "family_folds", "grouped_kfold",
        "loco_folds", "make_folds", "range_extrapolation",
    ),
    "folds": (
        "FoldData", "FoldModels", "StackInputs", "alignment_variants", "calibrated_targets",
        "evaluate_folds", "shift_distance", "subset_domain", "training_targets",
    ),
    "metal": (
        "MetalData", "MetalPlan", "metal_card", "metal_cv", "metal_cv_groups", "metal_labels", "metal_metrics", "metal_summary",
        "operating_points", "paired_bootstrap", "prepare_metal", "served_threshold",
    ),
    "run": (
        "EvaluationInputs", "EvaluationRun", "evaluate_property", "plot_tables", "set_threads",
        "stack_inputs",
    ),
}
__getattr__ = lazy_exports(__name__, {name: module for module, names in _LAZY.items() for name in names})

__all__ = [*config.__all__, *summary.__all__, *report.__all__, *(name for names in _LAZY.values() for name in names)]
