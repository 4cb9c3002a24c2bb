"""Leak-free, out-of-distribution evaluation: protocols, per-fold refits, scores, the results table.

Layer: the top of :mod:`models`, beside serving. ``config`` (:class:`EvalSettings`, the model
and protocol names), ``splits`` (the folds of every protocol), ``folds`` (every model refitted
per fold on the fold's training part only), ``summary`` (per-protocol and pooled OOD
metrics), ``run`` (one property's whole evaluation: :func:`evaluate_property`), ``report``
(the README's results table).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

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

if TYPE_CHECKING:  # what the lazy names below resolve to, for type checkers and import analysis
    from models.evaluation.folds import (
        StackInputs,
        alignment_variants,
        calibrated_targets,
        evaluate_folds,
        shift_distance,
        subset_domain,
        training_targets,
    )
    from models.evaluation.run import (
        EvaluationInputs,
        EvaluationRun,
        evaluate_property,
        plot_tables,
        set_threads,
        stack_inputs,
    )
    from models.evaluation.splits import (
        FAMILIES,
        Fold,
        chemical_family,
        crystal_system_folds,
        family_folds,
        grouped_kfold,
        loco_folds,
        make_folds,
        range_extrapolation,
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
