"""Optimal transport between the DFT and experimental distributions (TODO doc)."""

from __future__ import annotations

from models._io import lazy_exports
from models.transport.alignment import (
    AlignmentResult,
    align,
    build_support,
    transport_distance,
)
from models.transport.blocks import (
    SPLIT_METHODS,
    align_blocks,
    solve_blocks,
    support_components,
    transport_distance_blocks,
)
from models.transport.config import (
    ACTIVATION_NAMES,
    METHODS,
    AlignConfig,
    DualConfig,
    NeuralAlignConfig,
    SolverOptions,
)
from models.transport.diagnostics import (
    OT_DISTANCE_DEFINITION,
    AlignmentOutputs,
    alignment_outputs,
    distances_before_after,
    outlier_table,
)
from models.transport.formulations import (
    FORMULATIONS,
    resolve,
)
from models.transport.pairsearch import (
    PairSearch,
    kmeans_cells,
    radius_pairs,
    radius_pairs_pruned,
)
from models.transport.penalties import (
    IDENTITY_CALIBRATION,
    VALUE_CALIBRATIONS,
    CostWeights,
    Domain,
    ElementCorrections,
    Standardised,
    ValueCalibration,
    fit_element_corrections,
    fit_value_calibration,
    fraction_l1,
    fraction_matrix,
    joint_embedding,
    pair_costs,
    standardise,
)
from models.transport.problem import (
    AlignmentError,
    Formulation,
    Problem,
    Solution,
)
from models.transport.sinkhorn import (
    SparseSinkhornResult,
    sparse_sinkhorn,
    truncation_bound,
    unbalanced_objective,
)
from models.transport.support import (
    block_support,
    component_labels,
    dense_support,
    ivf_support,
    knn_support,
    radius_support,
)

# torch is imported only when the neural formulation is used (align stage start-up without torch)
_LAZY = {
    "ACTIVATIONS": "neural",
    "CalibrationMap": "neural",
    "ICNN": "neural",
    "MapFileError": "neural",
    "NeuralTransportMap": "neural",
    "config_dict": "neural",
    "fit_calibration_map": "neural",
    "fit_dual": "neural",
    "load_map": "neural",
    "neural_formulation": "neural",
    "save_map": "neural",
}
__getattr__ = lazy_exports(__name__, _LAZY)

__all__ = [
    "ACTIVATIONS",
    "ACTIVATION_NAMES",
    "FORMULATIONS",
    "ICNN",
    "IDENTITY_CALIBRATION",
    "METHODS",
    "OT_DISTANCE_DEFINITION",
    "SPLIT_METHODS",
    "VALUE_CALIBRATIONS",
    "AlignConfig",
    "AlignmentError",
    "AlignmentOutputs",
    "AlignmentResult",
    "CalibrationMap",
    "CostWeights",
    "Domain",
    "DualConfig",
    "ElementCorrections",
    "Formulation",
    "MapFileError",
    "NeuralAlignConfig",
    "NeuralTransportMap",
    "PairSearch",
    "Problem",
    "Solution",
    "SolverOptions",
    "SparseSinkhornResult",
    "Standardised",
    "ValueCalibration",
    "align",
    "align_blocks",
    "alignment_outputs",
    "block_support",
    "build_support",
    "component_labels",
    "config_dict",
    "dense_support",
    "distances_before_after",
    "fit_calibration_map",
    "fit_dual",
    "fit_element_corrections",
    "fit_value_calibration",
    "fraction_l1",
    "fraction_matrix",
    "ivf_support",
    "joint_embedding",
    "kmeans_cells",
    "knn_support",
    "load_map",
    "neural_formulation",
    "outlier_table",
    "pair_costs",
    "radius_pairs",
    "radius_pairs_pruned",
    "radius_support",
    "resolve",
    "save_map",
    "solve_blocks",
    "sparse_sinkhorn",
    "standardise",
    "support_components",
    "transport_distance",
    "transport_distance_blocks",
    "truncation_bound",
    "unbalanced_objective",
]
