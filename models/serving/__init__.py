"""Serving (TODO doc)."""

from __future__ import annotations

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
