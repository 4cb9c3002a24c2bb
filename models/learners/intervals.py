r"""Prediction intervals with a stated coverage: normalised conformal prediction (crepes).

A point prediction needs an error bar that means something: with nominal coverage 0.9, nine
in ten measurements should fall inside their intervals, and a hard input (far from the
training compositions, among neighbours the model got wrong) should get a wider one.

:class:`ConformalIntervals` calibrates on *out-of-fold* residuals of the training
measurements (each predicted by a model that did not see its formula, cross-conformal
style; :func:`out_of_fold` makes them) and normalises every residual by a difficulty
estimate

.. math::  \sigma(x) = \Big(\beta + \tfrac1k \sum_{j \in N_k(x)} |r_j|\Big)\,
           \Big(\frac{\bar d_5(x)}{\operatorname{median}_{cal} \bar d_5}\Big)^{p}

where :math:`N_k(x)` are the ``k_residual`` nearest training rows of *other* formulas (fewer
when the calibration set has fewer) in
standardised descriptor space (z-scores clipped at ``max_z``), :math:`r_j` their out-of-fold residuals, and :math:`\bar d_5`
the mean distance to the ``k_distance`` nearest such rows (``distance_power`` :math:`p`).
The residual term widens intervals where the model was wrong on similar compositions; the
distance term widens them out of distribution, where neighbours' residuals say little.
A calibration row's own formula is never its neighbour, exactly as for a new composition.
:class:`crepes.ConformalRegressor` turns the normalised residuals into interval half-widths
(the conformal quantile with its finite-sample correction); intervals are clipped below at
the property's bound. The choice of this difficulty among simpler ones (constant, residual
only, distance only, value-scaled) was made on the evaluate protocols of the training
measurements: see the README.

``elements_apart`` (for a property that fixes a pure element's value, e.g. formation enthalpy
0 eV/atom): Mondrian conformal prediction with two categories, pure elements and compounds,
each calibrated on its own rows' normalised residuals. An element's prediction is a
definition, not a model's guess, so its error is the measurements' scatter about it; pooled
with the compounds' residuals it got the compounds' widths (Fe: +-0.41 eV/atom). A category
with too few calibration rows for the asked coverage (about ``coverage / (1 - coverage)``: 9 at
0.9, 19 at 0.95) falls back to the pooled calibration.

Stored without pickle (JSON + NumPy arrays; crepes' calibration is refitted on load, which
is a sort).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pandas as pd

from featurizers.chemistry import element_mask
from models._io import sha256_file
from models.learners.config import IntervalConfig
from models.parallel import fork_map
from models.progress import bar

__all__ = ["ConformalIntervals", "out_of_fold"]


def out_of_fold(fit_predict: Callable[[list[str], np.ndarray, list[str]], np.ndarray], formulas: Sequence[str],
                y: np.ndarray, *, folds: int = 5, seed: int = 0, workers: int = 1) -> np.ndarray:
    """Out-of-fold predictions: formulas dealt to ``folds`` groups at random (seeded), each predicted by a model of the others.

    ``fit_predict(train_formulas, train_y, test_formulas)`` fits a fresh model and predicts.
    ``workers`` > 1: the folds in that many forked processes (:func:`models.parallel.fork_map`;
    LightGBM models in ``fit_predict`` then need ``n_jobs`` 1).
    """
    formulas = np.asarray(formulas, dtype=object)
    y = np.asarray(y, float)
    groups = pd.unique(formulas)
    if len(groups) < folds:
        raise ValueError(f"out_of_fold: {len(groups)} formulas cannot make {folds} folds")
    order = np.random.default_rng(seed).permutation(len(groups))
    fold_of = dict(zip(groups[order], np.arange(len(groups)) % folds, strict=True))
    label = np.array([fold_of[f] for f in formulas])
    def one(k: int) -> np.ndarray:
        test = label == k
        return fit_predict(list(formulas[~test]), y[~test], list(formulas[test]))

    out = np.empty(len(y))
    for k, values in enumerate(bar(fork_map(one, range(folds), workers=workers), total=folds,
                                   desc="out-of-fold models", unit="fold")):
        out[label == k] = values
    return out


class ConformalIntervals:
    """Normalised conformal intervals around a model's predictions (see the module docstring)."""

    def __init__(self, config: IntervalConfig | None = None, *, clamp_min: float | None = None,
                 elements_apart: bool = False):
        self.config = config or IntervalConfig()
        self.clamp_min = clamp_min
        self.elements_apart = elements_apart

    def fit(self, x: np.ndarray, formulas: Sequence[str], residuals: np.ndarray) -> ConformalIntervals:
        """Calibrate on training rows: descriptors ``x`` [n, d], their formulas and out-of-fold residuals."""
        x = np.asarray(x, float)
        r = np.asarray(residuals, float)
        if x.ndim != 2 or len(x) != len(r) or len(formulas) != len(r):
            raise ValueError(f"ConformalIntervals: x {x.shape}, {len(formulas)} formulas, {len(r)} residuals")
        if not (np.isfinite(x).all() and np.isfinite(r).all()):
            raise ValueError("ConformalIntervals: descriptors and residuals must be finite")
        if len(set(formulas)) < 2:
            raise ValueError("ConformalIntervals: need residuals of at least 2 formulas (a row's own formula is "
                             "never its neighbour)")
        self.mean_ = x.mean(axis=0)
        self.scale_ = np.where(x.std(axis=0) > 0, x.std(axis=0), 1.0)
        self.x_ = self._standardise(x)
        self.formulas_ = np.asarray(formulas, dtype=object)
        self.residuals_ = r
        self.median_distance_ = 1.0
        dist, res = self._neighbours(self.x_, self.formulas_)
        self.median_distance_ = float(np.median(dist)) or 1.0
        self.sigmas_ = self._sigma(dist, res)
        self._calibrate()
        return self

    def _calibrate(self) -> None:
        # crepes: the conformal quantile of the normalised residuals (a sort), on fit and on load
        from crepes import ConformalRegressor

        self.regressor_ = ConformalRegressor().fit(residuals=self.residuals_, sigmas=self.sigmas_)
        # Mondrian categories (elements_apart): {is element: (regressor of that category's rows, row count)}
        self.categories_: dict[bool, tuple[ConformalRegressor, int]] = {}
        if self.elements_apart:
            element = element_mask(self.formulas_)
            for key in (False, True):
                rows = element == key
                if rows.any():
                    self.categories_[key] = (ConformalRegressor().fit(residuals=self.residuals_[rows],
                                                                      sigmas=self.sigmas_[rows]), int(rows.sum()))

    def _neighbours(self, xq: np.ndarray, fq: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Mean distance to the ``k_distance`` and mean |residual| of the ``k_residual`` nearest rows of other formulas."""
        # scikit-learn: about a second to import; only when intervals are computed
        from sklearn.neighbors import NearestNeighbors

        c = self.config
        k = max(c.k_residual, c.k_distance)
        counts = pd.Series(self.formulas_).value_counts()
        extra = int(counts.max())  # rows of the query's own formula are skipped, so ask for that many more
        nn = NearestNeighbors(n_neighbors=min(k + extra, len(self.x_))).fit(self.x_)
        dist, idx = nn.kneighbors(xq)
        other = self.formulas_[idx] != np.asarray(fq, dtype=object)[:, None]
        rank = np.cumsum(other, axis=1)
        near_d = other & (rank <= c.k_distance)
        near_r = other & (rank <= c.k_residual)
        mean_d = (dist * near_d).sum(axis=1) / np.maximum(near_d.sum(axis=1), 1)
        mean_r = (np.abs(self.residuals_[idx]) * near_r).sum(axis=1) / np.maximum(near_r.sum(axis=1), 1)
        return mean_d, mean_r

    def _standardise(self, x: np.ndarray) -> np.ndarray:
        """z-scores of the calibration rows' mean and std, clipped to ``[-max_z, max_z]`` (see IntervalConfig).

        Without the clip, a column almost constant among the calibration rows dominates every
        distance: Magpie's ``mode GSmagmom`` had a std of 5e-7 in a grouped-CV training part
        (one row a rounding error away from 0), so TiFe2Si (2.1 there) stood 4 million standard
        deviations away and got an interval 22,000 eV wide.
        """
        return self._clip((np.asarray(x, float) - self.mean_) / self.scale_)

    def _clip(self, z: np.ndarray) -> np.ndarray:
        return np.clip(z, -self.config.max_z, self.config.max_z)

    def _sigma(self, dist: np.ndarray, res: np.ndarray) -> np.ndarray:
        c = self.config
        return (c.beta + res) * (np.maximum(dist, 1e-12) / self.median_distance_) ** c.distance_power

    def difficulty(self, x: np.ndarray, formulas: Sequence[str]) -> np.ndarray:
        """Return the difficulty estimate sigma of each row (descriptors ``x`` [n, d], the calibration's columns)."""
        return self._sigma(*self._neighbours(self._standardise(x), np.asarray(formulas, dtype=object)))

    def interval(self, prediction: np.ndarray, x: np.ndarray, formulas: Sequence[str],
                 coverage: float | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Lower and upper bounds at ``coverage`` (default: the config's) around ``prediction``."""
        return self.bounds(prediction, self.difficulty(x, formulas), coverage, formulas=formulas)

    def bounds(self, prediction: np.ndarray, sigma: np.ndarray, coverage: float | None = None, *,
               formulas: Sequence[str] | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Lower and upper bounds for difficulties ``sigma`` already computed (:meth:`difficulty`), at several levels cheaply.

        ``formulas`` (the rows' formulas) are needed with ``elements_apart``, to pick each row's category.
        """
        coverage = self.config.coverage if coverage is None else float(coverage)
        if not 0.0 < coverage < 1.0:
            raise ValueError(f"coverage must be in (0, 1), got {coverage}")
        prediction, sigma = np.asarray(prediction, float), np.asarray(sigma, float)
        bounds = self.regressor_.predict_int(y_hat=prediction, sigmas=sigma, confidence=coverage)
        if self.elements_apart:
            if formulas is None or len(formulas) != len(prediction):
                raise ValueError("ConformalIntervals.bounds: elements_apart needs the rows' formulas")
            element = element_mask(formulas)
            for key, (regressor, n) in self.categories_.items():
                rows = element == key
                # crepes' own test of a finite quantile (its index int((1 - c)(n + 1)) - 1 >= 0); else the pooled bounds stay
                if rows.any() and int((1.0 - coverage) * (n + 1)) >= 1:
                    bounds[rows] = regressor.predict_int(y_hat=prediction[rows], sigmas=sigma[rows],
                                                         confidence=coverage)
        lower, upper = bounds[:, 0], bounds[:, 1]
        if self.clamp_min is not None:
            lower = np.maximum(lower, self.clamp_min)
            upper = np.maximum(upper, self.clamp_min)
        return lower, upper

    def calibration_summary(self) -> dict[str, float]:
        """Numbers worth logging: rows, |residual| quantiles, sigma quantiles, the 90% normalised score."""
        score = np.abs(self.residuals_) / self.sigmas_
        q = lambda v, p: float(np.quantile(v, p))  # noqa: E731
        out = {"n_calibration": len(self.residuals_), "abs_residual_median": q(np.abs(self.residuals_), 0.5),
               "abs_residual_q90": q(np.abs(self.residuals_), 0.9), "sigma_median": q(self.sigmas_, 0.5),
               "sigma_q90": q(self.sigmas_, 0.9), "normalised_score_q90": q(score, 0.9)}
        if self.elements_apart:
            element = element_mask(self.formulas_)
            out["n_calibration_elements"] = int(element.sum())
            if element.any():
                out["abs_residual_q90_elements"] = q(np.abs(self.residuals_[element]), 0.9)
        return out

    # ------------------------------------------------------------------------- storage (no pickle)
    def save(self, directory: Path) -> None:
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        np.savez(directory / "calibration.npz", x=self.x_, residuals=self.residuals_, mean=self.mean_,
                 scale=self.scale_)
        meta = {"config": asdict(self.config), "clamp_min": self.clamp_min, "elements_apart": self.elements_apart,
                "formulas": [str(f) for f in self.formulas_],
                "median_distance": self.median_distance_, "summary": self.calibration_summary(),
                "sha256": sha256_file(directory / "calibration.npz")}
        (directory / "intervals.json").write_text(json.dumps(meta, indent=1) + "\n", encoding="utf-8")

    @classmethod
    def load(cls, directory: Path) -> ConformalIntervals:
        directory = Path(directory)
        try:
            meta = json.loads((directory / "intervals.json").read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as exc:
            raise ValueError(f"{directory / 'intervals.json'} is missing or not valid JSON: {exc}") from exc
        if sha256_file(directory / "calibration.npz") != meta.get("sha256"):
            raise ValueError(f"{directory / 'calibration.npz'}: sha256 differs from intervals.json")
        arrays = np.load(directory / "calibration.npz", allow_pickle=False)
        # files written before the Mondrian categories have no "elements_apart": one pooled calibration, as then
        self = cls(IntervalConfig(**meta["config"]), clamp_min=meta["clamp_min"],
                   elements_apart=bool(meta.get("elements_apart", False)))
        self.residuals_ = arrays["residuals"]
        self.mean_, self.scale_ = arrays["mean"], arrays["scale"]
        # files written before max_z hold unclipped z-scores: clipped here as a new fit would
        self.x_ = self._clip(arrays["x"])
        self.formulas_ = np.asarray(meta["formulas"], dtype=object)
        self.median_distance_ = float(meta["median_distance"])
        self.sigmas_ = self._sigma(*self._neighbours(self.x_, self.formulas_))
        self._calibrate()
        return self
