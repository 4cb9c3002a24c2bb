r"""Baselines every matshift model is compared against, on the same rows and folds.

* :class:`RawDFT`: the DFT value of the composition as the prediction of the measurement.
* :class:`LinearCalibration`: :math:`\hat y = a\,y_{dft} + b`, least squares on training rows
  that have a DFT value; rows without one get the training mean.
* :class:`DescriptorForest`: composition-only random forest (scikit-learn) on descriptor
  columns (e.g. Magpie) of a frame keyed by formula.
* The GNN without OT terms is :class:`models.learners.TrainConfig` with ``use_ot=False``.

All follow the scikit-learn shape: options in ``__init__``, ``fit`` returns ``self``, fitted
state ends in ``_``. Rows without a DFT value are predicted with a fallback that is
explicit (``fallback_`` = training mean), never a silent NaN.

The descriptor random forest is not pickled (:func:`save_forest` / :func:`load_forest`): its
scikit-learn estimator is written with ``skops.io`` (a format that can only rebuild an
allow-list of types and never executes code from the file) and its wrapper settings as JSON.
The only type loaded beyond skops' default allow-list is scikit-learn's tree node storage,
which cannot run code but indexes without bounds checks, so it is loaded only after the
file's hash matched the model directory's manifest (:func:`models._io.verify_manifest`).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
from sklearn.ensemble import RandomForestRegressor

from models._io import (
    MANIFEST,
    IntegrityError,
    read_header,
    sha256_file,
    verify_manifest,
    write_header,
    write_with,
)

__all__ = ["DescriptorForest", "LinearCalibration", "RawDFT", "load_forest", "mae", "save_forest"]


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


# ----------------------------------------------------------------------------- storage (no pickle)


FOREST_ESTIMATOR = "rf_descriptors.skops"
FOREST_META = "rf_descriptors.json"
# reviewed: sklearn's Tree holds node arrays only (no code); trusted once the hash matched
_FOREST_TRUSTED = ["sklearn.tree._tree.Tree"]


def save_forest(forest, directory: Path | str) -> None:
    """Write a fitted :class:`DescriptorForest` as skops + JSON (no pickle)."""
    # skops: only when a stored forest is read or written
    import skops.io as sio

    directory = Path(directory)
    write_with(directory / FOREST_ESTIMATOR, lambda p: sio.dump(forest.forest_, p))
    write_header(directory / FOREST_META, cls="DescriptorForest", files=[FOREST_ESTIMATOR], columns=list(forest.columns_),
                 options={"n_estimators": forest.n_estimators, "min_samples_leaf": forest.min_samples_leaf,
                          "max_features": forest.max_features, "n_jobs": forest.n_jobs, "seed": forest.seed})


def load_forest(directory: Path | str, *, digests: dict[str, str] | None = None):
    """Rebuild the descriptor forest saved by :func:`save_forest`, checking its hashes first.

    ``digests`` is the result of :func:`verify_manifest` when the caller verified the
    directory already; otherwise the manifest is verified here.
    """
    import skops.io as sio  # skops only when a stored forest is read or written

    directory = Path(directory)
    digests = verify_manifest(directory) if digests is None else digests
    for name in (FOREST_ESTIMATOR, FOREST_META):
        if name not in digests:
            raise IntegrityError(f"{directory / name} is not listed in {MANIFEST}; refusing to load it")
        if sha256_file(directory / name) != digests[name]:
            raise IntegrityError(f"model file {directory / name} does not match the sha256 recorded in {MANIFEST}")
    settings = read_header(directory / FOREST_META, classes=("DescriptorForest",), required=[FOREST_ESTIMATOR],
                           what="descriptor forest", error=IntegrityError)
    try:
        estimator = sio.load(directory / FOREST_ESTIMATOR, trusted=_FOREST_TRUSTED)
    except Exception as exc:  # skops raises many types for a bad file (re-raised, chained)
        raise IntegrityError(f"cannot load {directory / FOREST_ESTIMATOR}: {type(exc).__name__}: {exc}") from exc
    if not isinstance(estimator, RandomForestRegressor):
        raise IntegrityError(f"{directory / FOREST_ESTIMATOR} holds a {type(estimator).__name__}, "
                             "not a RandomForestRegressor")
    forest = DescriptorForest(**settings["options"])
    forest.columns_ = list(settings["columns"])
    forest.forest_ = estimator
    return forest
