"""The MLflow ``pyfunc`` wrapper of a trained ensemble (kept apart so prediction needs no MLflow)."""

from __future__ import annotations

import mlflow.pyfunc
import pandas as pd

from models.serving.ensemble import EnsemblePredictor

__all__ = ["MatshiftPyfunc"]


class MatshiftPyfunc(mlflow.pyfunc.PythonModel):
    """MLflow wrapper around :class:`EnsemblePredictor` (artifact key ``model_dir``)."""

    def load_context(self, context) -> None:
        self.predictor = EnsemblePredictor(context.artifacts["model_dir"])

    def predict(self, context, model_input: pd.DataFrame, params=None) -> pd.DataFrame:
        return self.predictor.predict(model_input)
