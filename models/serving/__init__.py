"""Serving (TODO doc)."""

from __future__ import annotations

from models._io import lazy_exports
from models.serving.ensemble import (
    EnsemblePredictor,
)
from models.serving.predictor import (
    ModelNotFoundError,
    Predictor,
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
    "EnsemblePredictor",
    "MatshiftPyfunc",
    "ModelNotFoundError",
    "Predictor",
    "TrackingError",
    "ensure_store",
    "log_run",
]
