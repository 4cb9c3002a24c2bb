"""Out-of-sample extension of an OT alignment: the calibration shift field over composition space.

The align stage gives each DFT entry it could transport an experiment-calibrated target
(the barycentric projection of the measurements it was matched with) and a confidence (its
transported mass relative to its marginal; outliers get none). The *shift* of an entry is
``calibrated - dft_value``: what experiment adds to simulation for that chemistry. Under the
hard stoichiometry block only formulas that were both computed and measured get one, so a new
composition needs the shift of its neighbours: :class:`ShiftField` averages, per formula, the
confidence-weighted shift of its entries, and predicts for any composition the mean shift of
its ``k`` nearest aligned formulas in standardised descriptor space (the barycentric projection
"extended by nearest neighbours", the baseline the neural map of :mod:`models.transport` is compared
with).

Leave-own-formula-out: :meth:`ShiftField.predict` never uses a formula's own shift for that
formula. For a measured training formula its own shift is (nearly) its own label, so a model
given the field as a feature would otherwise learn to trust it far more than it deserves on new
compositions, where the neighbours' shift is all there is.

Stored without pickle (:meth:`ShiftField.save`: JSON + ``.npy`` loaded with
``allow_pickle=False``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from models._io import read_header, write_header

__all__ = ["ShiftField"]

_HEADER, _POINTS = "shift_field.json", "points.npy"


def descriptor_rows(descriptors: pd.DataFrame, formulas: Sequence[str]) -> pd.DataFrame:
    """Select the rows of ``formulas`` from a descriptor table, indexed by formula (first row of a repeated one).

    Selected before de-duplicating and indexing: a few formulas from a table of tens of
    thousands, as a served request asks, copy a few rows, not the table.
    """
    return descriptors[descriptors["formula"].isin(set(formulas))].drop_duplicates("formula").set_index("formula")


@dataclass
class ShiftField:
    """Per-formula OT calibration shifts and their k-nearest-neighbour extension.

    ``formulas`` (n,) aligned formulas, ``shifts`` (n,) their confidence-weighted mean shift,
    ``weights`` (n,) their summed confidence, ``points`` (n, d) their standardised descriptors
    (``columns``, ``mean``, ``scale``), ``k`` neighbours per query.
    """

    formulas: np.ndarray
    shifts: np.ndarray
    weights: np.ndarray
    points: np.ndarray
    columns: list[str]
    mean: np.ndarray
    scale: np.ndarray
    k: int = 5

    @classmethod
    def fit(cls, formulas: Sequence[str], dft_values: np.ndarray, calibrated: np.ndarray, confidence: np.ndarray,
            descriptors: pd.DataFrame, *, k: int = 5, min_confidence: float = 1e-3) -> ShiftField:
        """Build the field from an alignment's per-entry calibrated targets and confidence.

        Entries with confidence below ``min_confidence`` (not transported: outliers or formulas
        with no measurement) or a non-finite value are left out.
        """
        if k < 1:
            raise ValueError(f"ShiftField: k must be >= 1, got {k}")
        frame = pd.DataFrame({"formula": np.asarray(formulas, dtype=str), "dft": np.asarray(dft_values, float),
                              "cal": np.asarray(calibrated, float), "w": np.asarray(confidence, float)})
        if not (len(frame["dft"]) == len(frame["cal"]) == len(frame["w"])):
            raise ValueError("ShiftField: formulas, dft_values, calibrated and confidence differ in length")
        frame = frame[np.isfinite(frame[["dft", "cal", "w"]]).all(axis=1) & (frame["w"] >= min_confidence)]
        if frame["formula"].nunique() < k + 1:
            raise ValueError(f"ShiftField: need more than k={k} aligned formulas, got {frame['formula'].nunique()}")
        frame = frame.assign(ws=(frame["cal"] - frame["dft"]) * frame["w"])
        per = frame.groupby("formula", sort=True)[["ws", "w"]].sum()
        d = descriptors.drop_duplicates("formula").set_index("formula").select_dtypes(include="number")
        missing = per.index.difference(d.index)
        if len(missing):
            raise ValueError(f"ShiftField: no descriptors for {len(missing)} aligned formulas, e.g. {missing[0]!r}")
        x = d.loc[per.index].to_numpy(float)
        mean, scale = x.mean(axis=0), x.std(axis=0)
        scale[~(scale > 1e-12)] = 1.0
        return cls(formulas=per.index.to_numpy(str), shifts=(per["ws"] / per["w"]).to_numpy(float),
                   weights=per["w"].to_numpy(float), points=((x - mean) / scale).astype(np.float32),
                   columns=list(d.columns), mean=mean, scale=scale, k=k)

    def predict(self, descriptors: pd.DataFrame, formulas: Sequence[str], *, chunk: int = 2048) -> np.ndarray:
        """Mean shift of the ``k`` nearest aligned formulas other than the query's own, per formula."""
        formulas = [str(f) for f in formulas]
        if not formulas:
            return np.zeros(0)
        d = descriptor_rows(descriptors, formulas)
        missing = sorted(set(formulas) - set(d.index))
        if missing:
            raise ValueError(f"ShiftField: no descriptors for {len(missing)} formulas, e.g. {missing[0]!r}")
        x = ((d.loc[formulas, self.columns].to_numpy(float) - self.mean) / self.scale).astype(np.float32)
        if not np.isfinite(x).all():
            raise ValueError("ShiftField: descriptors hold NaN or inf")
        own = pd.Series(np.arange(len(self.formulas)), index=self.formulas).reindex(formulas).to_numpy(float)
        sq = (self.points.astype(np.float64) ** 2).sum(axis=1)
        kk = min(self.k, len(self.formulas) - 1)
        out = np.empty(len(formulas))
        for s in range(0, len(formulas), chunk):
            q = x[s:s + chunk].astype(np.float64)
            dist = sq[None, :] - 2.0 * q @ self.points.T.astype(np.float64)
            rows = np.flatnonzero(np.isfinite(own[s:s + chunk]))
            dist[rows, own[s:s + chunk][rows].astype(int)] = np.inf  # leave the own formula out
            nn = np.argpartition(dist, kk - 1, axis=1)[:, :kk]
            out[s:s + chunk] = self.shifts[nn].mean(axis=1)
        return out

    def save(self, directory: Path | str) -> Path:
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        np.save(directory / _POINTS, self.points, allow_pickle=False)
        write_header(directory / _HEADER, cls="ShiftField", files=[_POINTS], indent=None, k=self.k,
                     formulas=self.formulas.tolist(), shifts=self.shifts.tolist(), weights=self.weights.tolist(),
                     columns=self.columns, mean=self.mean.tolist(), scale=self.scale.tolist())
        return directory

    @classmethod
    def load(cls, directory: Path | str) -> ShiftField:
        directory = Path(directory)
        meta = read_header(directory / _HEADER, classes=("ShiftField",), required=[_POINTS], what="shift field",
                           error=ValueError)
        points = np.load(directory / _POINTS, allow_pickle=False)
        n = len(meta["formulas"])
        if points.shape != (n, len(meta["columns"])) or len(meta["shifts"]) != n:
            raise ValueError(f"{directory}: shift field shapes disagree ({points.shape} points, {n} formulas)")
        return cls(formulas=np.asarray(meta["formulas"], dtype=str), shifts=np.asarray(meta["shifts"], float),
                   weights=np.asarray(meta["weights"], float), points=points, columns=list(meta["columns"]),
                   mean=np.asarray(meta["mean"], float), scale=np.asarray(meta["scale"], float), k=int(meta["k"]))
