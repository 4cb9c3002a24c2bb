"""Serving: trained models as predictors, the predict table, and MLflow packaging.

Layer: the top of :mod:`models`, beside evaluation. :class:`EnsemblePredictor` serves a model
directory (the stacked model alone needs no torch); :class:`Predictor` adds the DFT lookup
(the one polymorph rule; :class:`Polymorphs` matches a user's structure to its DFT polymorph and
spreads a formula over its polymorphs), the applicability domain, the neural calibration and,
for band gaps, the metal call of :class:`MetalPredictor`; ``output``
renders ``matshift predict``'s table; ``bundle`` packages the whole predictor in one
directory (what MLflow serves); ``tracking`` logs a training run and registers the
model in MLflow, whose ``pyfunc`` wrapper (``pyfunc``, ``pyfunc_code``) is the only module
that imports MLflow at import time.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from models._io import lazy_exports
from models.serving import bundle, ensemble, metal, output, polymorphs, predictor, tracking
from models.serving.bundle import *
from models.serving.ensemble import *
from models.serving.metal import *
from models.serving.output import *
from models.serving.polymorphs import *
from models.serving.predictor import *
from models.serving.tracking import *

if TYPE_CHECKING:  # what the lazy names below resolve to, for type checkers and import analysis
    from models.serving.pyfunc import *

# MLflow is imported only by the MLflow wrapper: prediction does not need it
_LAZY = {
    "pyfunc": (
        "MatshiftPyfunc", "MetalPyfunc",
    ),
}
__getattr__ = lazy_exports(__name__, {name: module for module, names in _LAZY.items() for name in names})

__all__ = [*bundle.__all__, *ensemble.__all__, *metal.__all__, *predictor.__all__, *output.__all__, *polymorphs.__all__, *tracking.__all__, *(name for names in _LAZY.values() for name in names)]
