"""The MLflow ``pyfunc`` wrappers of the served predictor and of the metal classifier.

Kept apart so prediction needs no MLflow. :class:`MatshiftPyfunc` serves the whole predictor
packaged by :func:`models.serving.bundle.write_bundle` (DFT lookup, polymorph choice,
applicability domain, intervals, metal probability): ``mlflow models serve`` answers with the
rows ``matshift predict --output x.json`` writes, one per requested formula, with the same
``error`` column for an input that is not a formula. An optional ``dft_value`` column is the
caller's own DFT value per row, as ``matshift predict --input``'s CSV column.
"""

from __future__ import annotations

import math

import mlflow.pyfunc
import pandas as pd
from mlflow.exceptions import MlflowException
from mlflow.protos.databricks_pb2 import INVALID_PARAMETER_VALUE

from featurizers.inputs import parse_dft_value, parse_formula_input
from models.properties import get_property
from models.serving.bundle import find_bundle, load_bundle
from models.serving.metal import MetalPredictor
from models.serving.output import predict_items

__all__ = ["MAX_ROWS", "MatshiftPyfunc", "MetalPyfunc", "formula_rows", "request_frame"]

MAX_ROWS = 10_000  # per request: a larger batch is refused (4xx) rather than tying the server up


def _bad_request(message: str) -> MlflowException:
    """Return an error the scoring server answers with HTTP 400 and this message."""
    return MlflowException(message, error_code=INVALID_PARAMETER_VALUE)


def request_frame(model_input):
    """Return a dict request as a DataFrame (columns of unequal length or scalars only: a 400), anything else as it came."""
    if not isinstance(model_input, dict):
        return model_input
    try:
        return pd.DataFrame(model_input)
    except ValueError as exc:
        raise _bad_request(f"the request's columns do not form a table: {exc}") from exc


def formula_rows(model_input) -> list[str]:
    """Return the request's formulas, in order; a request without a ``formula`` column is a 400 naming what it had."""
    model_input = request_frame(model_input)
    if not isinstance(model_input, pd.DataFrame) or "formula" not in model_input:
        got = list(model_input.columns) if isinstance(model_input, pd.DataFrame) else type(model_input).__name__
        raise _bad_request(f"the request needs a 'formula' column (one formula per row); got {got}")
    if len(model_input) > MAX_ROWS:
        raise _bad_request(f"{len(model_input)} rows in one request; send at most {MAX_ROWS}")
    return ["" if v is None or (isinstance(v, float) and math.isnan(v)) else str(v) for v in model_input["formula"]]


class MatshiftPyfunc(mlflow.pyfunc.PythonModel):
    """MLflow wrapper around the packaged :class:`~models.serving.Predictor` (artifact key ``bundle``).

    Params (optional, per request): ``coverage``, the nominal coverage of the intervals.
    """

    def load_context(self, context) -> None:
        path = find_bundle(context.artifacts["bundle"])
        if path is None:
            raise MlflowException(f"no matshift predictor bundle in {context.artifacts['bundle']}")
        self.predictor = load_bundle(path)
        self.unit = get_property(self.predictor.property).unit

    def predict(self, context, model_input: pd.DataFrame, params=None) -> pd.DataFrame:
        coverage = (params or {}).get("coverage")
        if coverage is not None and not (isinstance(coverage, (int, float)) and 0 < coverage < 1):
            raise _bad_request(f"coverage {coverage!r}: give a fraction between 0 and 1, e.g. 0.9")
        model_input = request_frame(model_input)
        items = [parse_formula_input(f) for f in formula_rows(model_input)]
        if "dft_value" in model_input:  # the caller's own DFT value (empty: the packaged DFT table's), as --input's
            items = [parse_dft_value(i, v) for i, v in zip(items, model_input["dft_value"], strict=True)]
        return predict_items(items, self.predictor, unit=self.unit, coverage=coverage)


class MetalPyfunc(mlflow.pyfunc.PythonModel):
    """MLflow wrapper around :class:`MetalPredictor` (artifact key ``model_dir``).

    Input: ``formula``; output: ``metal_probability`` and ``metal``.
    """

    def load_context(self, context) -> None:
        self.predictor = MetalPredictor(context.artifacts["model_dir"])

    def predict(self, context, model_input: pd.DataFrame, params=None) -> pd.DataFrame:
        try:
            return self.predictor.predict(formula_rows(model_input))
        except ValueError as exc:  # a formula that does not parse, or has no descriptors: the request's fault
            raise _bad_request(str(exc)) from exc
