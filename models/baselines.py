r"""Baselines every matshift model is compared against, on the same rows and folds.

* :class:`RawDFT`: the DFT value of the composition as the prediction of the measurement.
* :class:`LinearCalibration`: :math:`\hat y = a\,y_{dft} + b`, least squares on training rows
  that have a DFT value; rows without one get the training mean.
* :class:`DescriptorForest`: composition-only random forest (scikit-learn) on descriptor
  columns (e.g. Magpie) of a frame keyed by formula.
* The GNN without OT terms is :class:`models.training.TrainConfig` with ``use_ot=False``.

All follow the scikit-learn shape: options in ``__init__``, ``fit`` returns ``self``, fitted
state ends in ``_``. Rows without a DFT value are predicted with a fallback that is
explicit (``fallback_`` = training mean), never a silent NaN.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd
from sklearn.ensemble import RandomForestRegressor

__all__ = ["DescriptorForest", "LinearCalibration", "RawDFT", "mae"]


def mae(y_true: np.ndarray, y_pred: np.ndarray) -> float:
    """Mean absolute error; inputs must be finite and of equal length."""
    y_true, y_pred = np.asarray(y_true, float), np.asarray(y_pred, float)
    if y_true.shape != y_pred.shape:
        raise ValueError(f"mae: shapes differ {y_true.shape} vs {y_pred.shape}")
    if not (np.isfinite(y_true).all() and np.isfinite(y_pred).all()):
        raise ValueError("mae: non-finite values")
    return float(np.mean(np.abs(y_true - y_pred)))


class RawDFT:
    """Predict the DFT value itself; rows without one get the training mean (``fallback_``)."""

    def fit(self, dft_value: np.ndarray, y: np.ndarray) -> RawDFT:
        self.fallback_ = float(np.mean(y))
        return self

    def predict(self, dft_value: np.ndarray) -> np.ndarray:
        d = np.asarray(dft_value, float)
        return np.where(np.isnan(d), self.fallback_, d)


class LinearCalibration:
    """Least-squares ``y ~ a * dft + b`` over training rows with a DFT value.

    Args:
        clamp_min: lower bound applied to predictions (0 for band gaps), or None.

    """

    def __init__(self, *, clamp_min: float | None = None):
        self.clamp_min = clamp_min

    def fit(self, dft_value: np.ndarray, y: np.ndarray) -> LinearCalibration:
        d, y = np.asarray(dft_value, float), np.asarray(y, float)
        known = ~np.isnan(d)
        if known.sum() < 2:
            raise ValueError(f"LinearCalibration: need >= 2 training rows with a DFT value, got {int(known.sum())}")
        design = np.column_stack([d[known], np.ones(known.sum())])
        (self.a_, self.b_), *_ = np.linalg.lstsq(design, y[known], rcond=None)
        self.fallback_ = float(np.mean(y))
        return self

    def predict(self, dft_value: np.ndarray) -> np.ndarray:
        d = np.asarray(dft_value, float)
        out = np.where(np.isnan(d), self.fallback_, self.a_ * d + self.b_)
        return out if self.clamp_min is None else np.maximum(out, self.clamp_min)


class DescriptorForest:
    """Random forest on the numeric descriptor columns of ``descriptors`` (keyed by ``formula``).

    Args:
        n_estimators: trees (default 300).
        min_samples_leaf: leaf size (default 1).
        max_features: features per split (default 1/3, the usual regression choice).
        n_jobs: parallel jobs (default 2).
        seed: random state (default 0).

    """

    def __init__(self, *, n_estimators: int = 300, min_samples_leaf: int = 1, max_features: float = 1 / 3,
                 n_jobs: int = 2, seed: int = 0):
        self.n_estimators, self.min_samples_leaf, self.max_features = n_estimators, min_samples_leaf, max_features
        self.n_jobs, self.seed = n_jobs, seed

    @staticmethod
    def _matrix(descriptors: pd.DataFrame, formulas: Sequence[str]) -> np.ndarray:
        d = descriptors.drop_duplicates("formula").set_index("formula").select_dtypes(include="number")
        missing = sorted(set(formulas) - set(d.index))
        if missing:
            raise ValueError(f"DescriptorForest: no descriptors for {len(missing)} formulas, e.g. {missing[0]!r}")
        x = d.loc[list(formulas)].to_numpy(float)
        if not np.isfinite(x).all():
            raise ValueError("DescriptorForest: descriptors hold NaN or inf")
        return x

    def fit(self, descriptors: pd.DataFrame, formulas: Sequence[str], y: np.ndarray) -> DescriptorForest:
        self.columns_ = list(descriptors.drop(columns="formula").select_dtypes(include="number").columns)
        self.forest_ = RandomForestRegressor(
            n_estimators=self.n_estimators, min_samples_leaf=self.min_samples_leaf, max_features=self.max_features,
            n_jobs=self.n_jobs, random_state=self.seed,
        ).fit(self._matrix(descriptors, formulas), np.asarray(y, float))
        return self

    def predict(self, descriptors: pd.DataFrame, formulas: Sequence[str]) -> np.ndarray:
        return self.forest_.predict(self._matrix(descriptors[["formula", *self.columns_]], formulas))
