"""Optimal transport between the DFT distribution (source) and the experimental one (target).

Layer: above :mod:`models._io` and :mod:`models.properties`, beside :mod:`models.nets` (neither
imports the other), below the learners. The way in is :class:`AlignConfig` (every alignment
option, validated from ``params.yaml``'s ``align`` section) and :func:`align` (one alignment;
``align(source, target, **config.kwargs())``), on :class:`Domain` objects; the modules:

* ``config``: :class:`AlignConfig`, :class:`SolverOptions` and the neural map's options;
* ``penalties``: domains, cost terms (descriptor, value, mass, symmetry) and the conservation
  laws (hard stoichiometry block, energy additivity, value calibration);
* ``support``, ``pairsearch``: which pairs may carry mass; ``sinkhorn``: the sparse
  log-domain unbalanced Sinkhorn; ``formulations``: one solver per method on a
  :class:`Problem`; ``alignment``: :func:`align` and its result; ``blocks``: the same solved
  block by block on an engine; ``diagnostics``: the align stage's tables and ``align.json``;
* ``neural`` (torch, imported on first use): the input-convex neural OT map.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

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
from models.transport.domains import (
    domains_from_tables,
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

if TYPE_CHECKING:  # what the lazy names below resolve to, for type checkers and import analysis
    from models.transport.neural import (
        ACTIVATIONS,
        ICNN,
        CalibrationMap,
        MapFileError,
        NeuralTransportMap,
        config_dict,
        fit_calibration_map,
        fit_dual,
        load_map,
        neural_formulation,
        save_map,
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
    "domains_from_tables",
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
