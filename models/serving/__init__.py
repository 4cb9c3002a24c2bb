"""Serving: trained models as predictors, the predict table, and MLflow packaging.

Layer: the top of :mod:`models`, beside evaluation. :class:`EnsemblePredictor` serves a model
directory (the stacked model alone needs no torch); :class:`Predictor` adds the DFT lookup
(the one polymorph rule), the applicability domain and the neural calibration; ``output``
renders ``matshift predict``'s table; ``tracking`` logs a training run and registers the
model in MLflow, whose ``pyfunc`` wrapper (``pyfunc``, ``pyfunc_code``) is the only module
that imports MLflow at import time.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from models._io import lazy_exports
from models.serving.ensemble import (
    EnsemblePredictor,
)
from models.serving.output import (
    COLUMNS,
    format_table,
    predict_items,
)
from models.serving.predictor import (
    ModelNotFoundError,
    Predictor,
    dft_lookup,
)
from models.serving.tracking import (
    TrackingError,
    ensure_store,
    log_run,
)

if TYPE_CHECKING:  # what the lazy names below resolve to, for type checkers and import analysis
    from models.serving.pyfunc import (
        MatshiftPyfunc,
    )

# MLflow is imported only by the MLflow wrapper: prediction does not need it
_LAZY = {
    "MatshiftPyfunc": "pyfunc",
}
__getattr__ = lazy_exports(__name__, _LAZY)

__all__ = [
    "COLUMNS",
    "EnsemblePredictor",
    "MatshiftPyfunc",
    "ModelNotFoundError",
    "Predictor",
    "TrackingError",
    "dft_lookup",
    "ensure_store",
    "format_table",
    "log_run",
    "predict_items",
]
