"""Evaluation (TODO doc)."""

from __future__ import annotations

from models._io import lazy_exports
from models.evaluation.config import (
    BASELINES,
    CALIBRATIONS,
    GNN_VARIANTS,
    NON_OT_MODELS,
    OOD_PROTOCOLS,
    OT_MODELS,
    PROTOCOLS,
    STACKED_MODELS,
    EvalSettings,
    GnnVariant,
)
from models.evaluation.report import (
    CALIBRATION_LABELS,
    MODEL_LABELS,
    PROTOCOL_LABELS,
    render_results,
)
from models.evaluation.summary import (
    EvaluationResult,
    regression_metrics,
    summarise,
)

# torch and pymatgen are imported on first use: reading the evaluation settings needs neither
_LAZY = {
    "EvaluationInputs": "run",
    "EvaluationRun": "run",
    "FAMILIES": "splits",
    "Fold": "splits",
    "StackInputs": "folds",
    "alignment_variants": "folds",
    "calibrated_targets": "folds",
    "chemical_family": "splits",
    "crystal_system_folds": "splits",
    "evaluate_folds": "folds",
    "evaluate_property": "run",
    "family_folds": "splits",
    "grouped_kfold": "splits",
    "loco_folds": "splits",
    "make_folds": "splits",
    "plot_tables": "run",
    "range_extrapolation": "splits",
    "set_threads": "run",
    "shift_distance": "folds",
    "stack_inputs": "run",
    "subset_domain": "folds",
    "training_targets": "folds",
}
__getattr__ = lazy_exports(__name__, _LAZY)

__all__ = [
    "BASELINES",
    "CALIBRATIONS",
    "CALIBRATION_LABELS",
    "FAMILIES",
    "GNN_VARIANTS",
    "MODEL_LABELS",
    "NON_OT_MODELS",
    "OOD_PROTOCOLS",
    "OT_MODELS",
    "PROTOCOLS",
    "PROTOCOL_LABELS",
    "STACKED_MODELS",
    "EvalSettings",
    "EvaluationInputs",
    "EvaluationResult",
    "EvaluationRun",
    "Fold",
    "GnnVariant",
    "StackInputs",
    "alignment_variants",
    "calibrated_targets",
    "chemical_family",
    "crystal_system_folds",
    "evaluate_folds",
    "evaluate_property",
    "family_folds",
    "grouped_kfold",
    "loco_folds",
    "make_folds",
    "plot_tables",
    "range_extrapolation",
    "regression_metrics",
    "render_results",
    "set_threads",
    "shift_distance",
    "stack_inputs",
    "subset_domain",
    "summarise",
    "training_targets",
]
