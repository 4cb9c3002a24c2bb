"""A trained matshift ensemble as a predictor (formulas in, predictions out).

The MLflow ``pyfunc`` wrapper lives in :mod:`models.serving.pyfunc`, so serving does not import MLflow.

Input: a DataFrame with ``formula`` (str) and optionally ``dft_value`` (float, the DFT value
of the composition when known, NaN otherwise) and columns named as the stacked model's other
fidelities (:attr:`EnsemblePredictor.extra_fidelities`, e.g. ``band_gap_hse``: that material's
value, NaN where unknown; a fidelity without a column is looked up by formula), and ``user_dft``
(bool): the row's ``dft_value`` is the caller's own, so its stacked prediction is the monotone
rearrangement of the model's response in the DFT value (:meth:`StackedModel.rearranged`):
it never falls as the caller's value rises. Output: a DataFrame with ``prediction``,
``bag_spread`` (the ensemble's standard deviation: a diagnostic, not an error bar) and, when
the train stage calibrated conformal intervals (``ensemble.json`` key ``intervals``),
``lower`` / ``upper`` at the nominal coverage (:class:`models.learners.ConformalIntervals`),
one row per input row. When the train stage saved a multi-fidelity stacked model
(``ensemble.json`` key ``stacked``), the prediction is ``w * stacked + (1 - w) * ensemble``
with the saved weight ``w`` and the bag spread combines both ensembles' spreads (GNN
members, stacked bags); the intervals are calibrated for the stacked model (``w = 1``). With ``w = 1`` (the default) the
GNN members take no part in the served value, so they are loaded only on demand and
``torch``/PyTorch Geometric are never imported: the first prediction takes about a second
instead of several. Descriptors for
formulas are looked up in the table saved with the model; a formula not in it gets its
descriptors computed (:func:`featurizers.composition.composition_descriptors`) when the
model's columns are ones matshift computes, and an error naming the formula otherwise.

This module never reads environment variables; the directory it loads is the artifact MLflow
gives it.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from featurizers.chemistry import reduced_formula
from featurizers.settings import DESCRIPTOR_SETS
from models._io import verify_manifest
from models.learners import ConformalIntervals, descriptor_matrix, load_stacked

__all__ = ["EnsemblePredictor"]


_EXTEND_LOCK = threading.Lock()  # guards EnsemblePredictor.descriptors while a request extends it


class EnsemblePredictor:
    """Load ``ensemble.json`` + member directories + ``descriptors.parquet`` from ``directory``."""

    def __init__(self, directory: Path | str):
        directory = Path(directory)
        verify_manifest(directory)  # refuse a directory whose files changed after training
        self.meta = json.loads((directory / "ensemble.json").read_text(encoding="utf-8"))
        self.directory = directory
        self._models: list | None = None
        desc_path = directory / "descriptors.parquet"
        self.descriptors = pd.read_parquet(desc_path) if desc_path.exists() else None
        self.clamp_min = self.meta.get("clamp_min")
        measured = directory / "measured_formulas.json"
        self.measured_formulas = json.loads(measured.read_text(encoding="utf-8")) if measured.is_file() else None
        stacked = self.meta.get("stacked")
        self.stacked, self.blend_weight = None, 0.0
        if stacked:

            self.stacked = load_stacked(directory / stacked["dir"])
            self.blend_weight = float(stacked["blend_weight"])
        intervals = self.meta.get("intervals")
        self.intervals = ConformalIntervals.load(directory / intervals["dir"]) if intervals and self.stacked else None

    @property
    def extra_fidelities(self) -> list[str]:
        """The other DFT fidelities the served stacked model takes (looked up by formula unless given per row)."""
        return list(self.stacked.extra_reference) if self.stacked is not None else []

    @property
    def dft_reference(self) -> pd.Series | None:
        """The per-formula DFT values the served stacked model was trained on; None without one."""
        return None if self.stacked is None else self.stacked.dft_reference

    def extra_lookup(self, formulas: Sequence[str]) -> dict[str, np.ndarray]:
        """Per fidelity of :attr:`extra_fidelities`: the value training looked up for each formula (NaN: none)."""
        return {} if self.stacked is None else self.stacked.extra_lookup(formulas)

    def descriptors_for(self, formulas: list[str]) -> pd.DataFrame | None:
        """Return the model's descriptor table, extended (and kept) with any formula of ``formulas`` it lacks.

        A ``ValueError`` names the first formula that cannot be featurized (:meth:`featurize_missing`).
        """
        refused = self.featurize_missing(formulas)
        if refused:
            formula, reason = next(iter(refused.items()))
            raise ValueError(f"formula {formula!r}: {reason}")
        return self.descriptors

    def featurize_missing(self, formulas: list[str]) -> dict[str, str]:
        """Add the descriptors of every formula of ``formulas`` the table lacks; return the refused ones and why.

        A missing formula's descriptors are computed when the model's columns are ones matshift
        computes; a formula that cannot be featurized (no Magpie data for an element, a
        non-finite descriptor), or any missing one when the columns are unknown, is returned
        as ``{formula: reason}`` and left out of the table.
        """
        if self.descriptors is None:
            return {}
        missing = sorted(set(formulas) - set(self.descriptors["formula"]))
        if not missing:
            return {}
        # pymatgen and matminer only when a formula outside the training table is asked for
        from featurizers.composition import composition_descriptors, descriptor_labels

        cols = [c for c in self.descriptors.columns if c != "formula"]
        sets = next((c for c in (DESCRIPTOR_SETS, ("magpie",)) if descriptor_labels(c) == cols), None)
        if sets is None:
            return {f: "no descriptors: the model's descriptor columns are not ones matshift computes" for f in missing}
        result = composition_descriptors(missing, sets=sets)
        # a server predicts from several threads: append under a lock, to the table as it is now, what it still lacks
        # (featurizing outside it), so no thread's additions are lost and no formula is added twice
        with _EXTEND_LOCK:
            new = result.frame[~result.frame["formula"].isin(set(self.descriptors["formula"]))]
            if len(new):
                self.descriptors = pd.concat([self.descriptors, new[["formula", *cols]]], ignore_index=True)
        return {bad.formula: f"no descriptors: {bad.reason}" for bad in result.failures}

    @property
    def models(self) -> list:
        """The GNN ensemble members (loaded, with torch, on first use)."""
        if self._models is None:
            # torch: the GNN members are loaded only when they take part in the served value
            from models.nets import load_model

            self._models = [load_model(self.directory / m)[0] for m in self.meta["members"]]
        return self._models

    @property
    def gnn_weight(self) -> float:
        """Weight of the GNN ensemble in the served value (0 when the stacked model is served alone)."""
        return 1.0 - self.blend_weight if self.stacked is not None else 1.0

    @property
    def uses_graphs(self) -> bool:
        """Whether a structure changes the served prediction (GNN members with a crystal-graph encoder, weight > 0)."""
        return self.gnn_weight > 0 and any(getattr(m, "crystal", None) is not None for m in self.models)

    def predict(self, frame: pd.DataFrame, graphs: Sequence[Any | None] | None = None,
                coverage: float | None = None) -> pd.DataFrame:
        """Predictions for ``frame``'s rows; ``graphs`` (one crystal graph or None per row) as in training.

        Training feeds a measurement the graph of its composition's most stable DFT polymorph
        with a structure; serving must do the same for the prediction to be the model's.
        Rows without a graph use the composition view. Graphs are ignored by a model
        trained without the crystal-graph encoder. ``coverage``: of the intervals (default:
        the calibrated one, 0.9).
        """
        if "formula" not in frame:
            raise ValueError("input needs a 'formula' column")
        formulas = [reduced_formula(str(f)) for f in frame["formula"]]
        dft = frame["dft_value"].astype(float).to_numpy() if "dft_value" in frame else np.full(len(frame), np.nan)
        ref = pd.Series(dft, index=formulas)
        ref = ref[~ref.index.duplicated()].dropna()
        desc = self.descriptors_for(formulas)
        extra = {c: frame[c].astype(float).to_numpy() for c in self.extra_fidelities if c in frame}
        if self.gnn_weight == 0:  # the stacked model alone: no GNN, no torch
            value, spread = self._stacked(frame, desc, formulas, dft, extra)
            return self._with_intervals(value, spread, desc, formulas, coverage)
        # torch: only a blend with GNN members needs the entry table
        from models.learners import EntryTable, predict_ensemble

        rows = pd.DataFrame({"formula": formulas, "value": np.nan})
        by_id = None
        if graphs is not None and self.uses_graphs:
            if len(graphs) != len(frame):
                raise ValueError(f"graphs: expected one entry per row ({len(frame)}), got {len(graphs)}")
            rows["material_id"] = [f"row-{i}" if g is not None else None for i, g in enumerate(graphs)]
            by_id = {f"row-{i}": g for i, g in enumerate(graphs) if g is not None}
        table = EntryTable.build(
            experiment=rows, descriptors=desc, dft_reference=ref, graphs=by_id,
        )
        table.dft_input = dft.astype(np.float64)
        pred = predict_ensemble(self.models, table, clamp_min=self.clamp_min)
        value, spread = pred.experiment, pred.experiment_std
        if self.stacked is not None and self.blend_weight > 0:
            # uncertainty of the blend: the two ensembles' spreads (GNN members, stacked bags)
            # combined as if independent
            w = self.blend_weight
            stacked, stacked_spread = self._stacked(frame, desc, formulas, dft, extra)
            value = w * stacked + (1 - w) * value
            spread = np.sqrt((w * stacked_spread) ** 2 + ((1 - w) * spread) ** 2)
            # the blend keeps what the property fixes (a pure element's formation enthalpy is 0)
            value = self.stacked.apply_bounds(formulas, np.array(value, float), spread)
        return self._with_intervals(value, spread, desc, formulas, coverage)

    def _stacked(self, frame: pd.DataFrame, desc: pd.DataFrame, formulas: list[str], dft: np.ndarray,
                 extra: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        """Predict with the stacked model (value, bag spread); rows marked ``user_dft`` rise with their DFT value."""
        value, spread = self.stacked.predict_with_spread(desc, formulas, dft_value=dft, extra_value=extra)
        mine = frame["user_dft"].fillna(False).astype(bool).to_numpy() if "user_dft" in frame else np.zeros(len(frame), bool)
        mine &= np.isfinite(dft)
        if mine.any():
            rows = np.flatnonzero(mine)
            value = value.copy()
            value[rows] = self.stacked.rearranged(desc, [formulas[i] for i in rows], dft[rows],
                                                  {k: v[rows] for k, v in extra.items()})
        return value, spread

    def _with_intervals(self, value: np.ndarray, spread: np.ndarray, desc: pd.DataFrame, formulas: list[str],
                        coverage: float | None) -> pd.DataFrame:
        out = pd.DataFrame({"prediction": value, "bag_spread": spread})
        if self.intervals is not None:
            x = descriptor_matrix(desc, formulas, self.stacked.surrogate.columns_)
            out["lower"], out["upper"] = self.intervals.interval(np.asarray(value, float), x, formulas, coverage)
        return out
