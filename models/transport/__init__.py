"""Optimal transport between the DFT distribution (source) and the experimental one (target).

Layer: above :mod:`models._io` and :mod:`models.properties`, beside :mod:`models.nets` (neither
imports the other), below the learners. The way in is :class:`AlignConfig` (every alignment
option, validated from ``params.yaml``'s ``align`` section) and :func:`align` (one alignment;
``align(source, target, **config.kwargs())``), on :class:`Domain` objects; the modules:

* ``config``: :class:`AlignConfig`, :class:`SolverOptions` and the neural map's options;
* ``penalties``: domains, cost terms (descriptor, value, mass, symmetry) and the conservation
  laws (hard stoichiometry block, energy additivity, value calibration);
* ``support``, ``pairsearch``: which pairs may carry mass; ``sinkhorn``: the log-stabilised
  unbalanced Sinkhorn (sparse or dense kernel, with a certificate); ``clouds``: the same between
  point clouds, picking the kernel and re-admitting truncated pairs; ``online``: log-domain with
  online reductions in torch (the GPU path, no n x m matrix); ``formulations``: one solver per method on a
  :class:`Problem`; ``alignment``: :func:`align` and its result; ``blocks``: the same solved
  block by block on an engine; ``diagnostics``: the align stage's tables and ``align.json``;
* ``mixture``: a composition as the mass-conserving mixture of DFT compounds of lowest formation
  energy (the lower convex hull, an LP), a DFT estimate where the formula has no entry;
* ``neural`` (torch, imported on first use): the input-convex neural OT map.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from models._io import lazy_exports
from models.transport import (
    alignment,
    blocks,
    clouds,
    config,
    diagnostics,
    domains,
    formulations,
    mixture,
    online,
    pairsearch,
    penalties,
    problem,
    sinkhorn,
    support,
)
from models.transport.alignment import *
from models.transport.blocks import *
from models.transport.clouds import *
from models.transport.config import *
from models.transport.diagnostics import *
from models.transport.domains import *
from models.transport.formulations import *
from models.transport.mixture import *
from models.transport.online import *
from models.transport.pairsearch import *
from models.transport.penalties import *
from models.transport.problem import *
from models.transport.sinkhorn import *
from models.transport.support import *

if TYPE_CHECKING:  # what the lazy names below resolve to, for type checkers and import analysis
    from models.transport.neural import *

# torch is imported only when the neural formulation is used (align stage start-up without torch)
_LAZY = {
    "neural": (
        "ACTIVATIONS", "ICNN", "CalibrationMap", "MapFileError", "NeuralTransportMap", "config_dict",
        "fit_calibration_map", "fit_dual", "load_map", "neural_formulation", "save_map",
    ),
}
__getattr__ = lazy_exports(__name__, {name: module for module, names in _LAZY.items() for name in names})

__all__ = [*config.__all__, *problem.__all__, *penalties.__all__, *domains.__all__, *pairsearch.__all__, *support.__all__, *sinkhorn.__all__, *clouds.__all__, *online.__all__, *formulations.__all__, *mixture.__all__, *alignment.__all__, *blocks.__all__, *diagnostics.__all__, *(name for names in _LAZY.values() for name in names)]
