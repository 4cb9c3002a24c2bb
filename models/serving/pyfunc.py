"""The MLflow ``pyfunc`` wrapper of a trained ensemble (kept apart so prediction needs no MLflow)."""

from __future__ import annotations

import mlflow.pyfunc
import pandas as pd

from models.serving.ensemble import EnsemblePredictor
from models.serving.metal import MetalPredictor

__all__ = ["MatshiftPyfunc", "MetalPyfunc"]


class MatshiftPyfunc(mlflow.pyfunc.PythonModel):
    """MLflow wrapper around :class:`EnsemblePredictor` (artifact key ``model_dir``)."""

    def load_context(self, context) -> None:
        self.predictor = EnsemblePredictor(context.artifacts["model_dir"])

    def predict(self, context, model_input: pd.DataFrame, params=None) -> pd.DataFrame:
        return self.predictor.predict(model_input)


class MetalPyfunc(mlflow.pyfunc.PythonModel):
    """MLflow wrapper around :class:`MetalPredictor` (artifact key ``model_dir``).

    Input: ``formula``; output: ``metal_probability`` and ``metal``.
    """

    def load_context(self, context) -> None:
        self.predictor = MetalPredictor(context.artifacts["model_dir"])

    def predict(self, context, model_input: pd.DataFrame, params=None) -> pd.DataFrame:
        if "formula" not in model_input:
            raise ValueError("input needs a 'formula' column")
        return self.predictor.predict(model_input["formula"].astype(str).tolist())
