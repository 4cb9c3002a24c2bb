"""Serving predictions for validated inputs: value, uncertainty, view and applicability domain.

:class:`Predictor` wraps a trained ensemble (:class:`models.serving.EnsemblePredictor`) and
adds what a user needs beside the number: which DFT value (and so which Materials Project
entry) fed the experimental head, and an applicability-domain (AD) score. The AD score is
the mean distance of an input to its ``k`` nearest training compositions in standardised
descriptor space, expressed as the percentile of the same quantity over the training
compositions themselves (leave-one-out); inputs above ``threshold`` are flagged. When the
align stage saved a neural calibration map (``align.method: neural``), the DFT value of an
input is also calibrated by that map (``calibrated_dft``), including DFT entries that were
never part of the alignment.

The DFT value of an input is its formula's polymorph by the one rule of
:func:`models.properties.choose_polymorphs` (the one training used), from the DFT table the
caller passes (:func:`dft_lookup`). Never reads params.yaml, environment variables or files
it was not given: tables, paths and thresholds are arguments.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from featurizers.chemistry import element_mask
from featurizers.crystal_graph import CrystalGraphFeaturizer, StructureError, load_graphs
from models.learners import ApplicabilityDomain
from models.properties import Property, choose_polymorphs, get_property
from models.serving.ensemble import EnsemblePredictor
from models.serving.metal import MetalPredictor, check_metal_threshold
from models.serving.polymorphs import PolymorphMatch, Polymorphs, valued_entries

if TYPE_CHECKING:
    from models.transport import CalibrationMap

log = logging.getLogger(__name__)


class ModelNotFoundError(FileNotFoundError):
    """A model reference that does not point at a trained model."""


class Predictor:
    """A trained model ready for :meth:`predict` on :class:`featurizers.inputs.ParsedInput`."""

    def __init__(self, ensemble: EnsemblePredictor, *, property: str, dft: pd.DataFrame | None,
                 ad_threshold: float = 95.0, features_dir: Path | str | None = None,
                 calibration: CalibrationMap | None = None, metal: MetalPredictor | None = None,
                 polymorphs: Polymorphs | None = None, polymorph_window: float = 0.2):
        self.ensemble = ensemble
        # a formula's DFT polymorphs: a user's structure matched to one, the spread over those within the window
        self.polymorphs = polymorphs
        if not polymorph_window >= 0:
            raise ValueError(f"polymorph_window must be >= 0 eV/atom, got {polymorph_window}")
        self.polymorph_window = float(polymorph_window)
        self.metal = metal  # band gaps: P(metal) and the metal call (0 eV) per row
        intervals = ensemble.intervals
        self.coverage = intervals.config.coverage if intervals is not None else 0.9
        self.property = property
        self.ad_threshold = ad_threshold
        desc = ensemble.descriptors
        self.columns = [c for c in desc.columns if c != "formula"]
        # the AD reference is the training *measurements* when the model lists them: the
        # evaluate stage found that distance to measured compositions picks out inputs with
        # larger errors, distance to DFT + measured compositions does not (README results)
        measured = getattr(ensemble, "measured_formulas", None)
        ref = desc[desc["formula"].isin(measured)] if measured else desc
        if len(ref) <= 5:
            ref = desc
        self.ad_reference = "training measurements" if ref is not desc else "all training compositions"
        # a pure element is a kind of input a model may never have been trained on (the mirror measures no band
        # gap of an element): its descriptors can still sit near compounds', so the distance alone would not say it
        self.elements_measured = bool(element_mask(measured).any()) if measured else True
        self.ad = ApplicabilityDomain.fit(ref[self.columns].to_numpy(np.float64))
        # formula -> material_id / dft_value of the most stable polymorph, and structure_id of the
        # most stable polymorph that has a crystal graph (the one training paired with measurements)
        self.dft = dft
        self.features_dir = Path(features_dir) if features_dir is not None else None
        self.calibration = calibration  # models.transport.CalibrationMap or None
        # the DFT values the model was trained on (its per-formula references; else the lookup table's): a user's
        # value beyond them is extrapolated, and the row says so
        known = (ensemble.dft_reference if ensemble.dft_reference is not None
                 else dft["dft_value"] if dft is not None else pd.Series(dtype=float))
        known = known.to_numpy(float)
        known = known[np.isfinite(known)]
        self.dft_range = (float(known.min()), float(known.max())) if len(known) else (-np.inf, np.inf)

    @classmethod
    def load(cls, ref: str | Path, *, prop: Property, dft: pd.DataFrame | None = None,
             index: pd.DataFrame | None = None, features_dir: Path | str | None = None,
             neural_map: Path | str | None = None, metal_dir: Path | str | None = None,
             structures: pd.Series | Callable[[list[str]], pd.Series] | None = None,
             polymorph_window: float = 0.2, metal_threshold: float | None = None) -> Predictor:
        """Load the model at ``ref`` (a directory written by ``matshift train``, or ``NAME/VERSION`` in MLflow).

        ``dft``: the DFT entries (``material_id``, ``formula``, the property's DFT column,
        ``stability``) the inputs' DFT values are looked up in, and ``index`` (the featurize
        stage's, by ``id``) says which have a crystal graph; ``features_dir`` holds
        ``graphs.pt`` and ``graph_config.json``; ``neural_map`` is the align stage's map
        directory, used when it exists. Without ``dft`` every input is predicted from its
        composition alone. ``metal_dir``: a ``matshift metal`` classifier, used for band gaps
        when it exists (a missing directory means no metal calls; a broken one is an error).
        ``structures``: ``material_id`` -> pymatgen JSON of the DFT entries (or a callable giving
        them for a list of ids), for matching a user's structure to a polymorph; ``polymorph_window``
        (eV/atom): see :class:`models.serving.Polymorphs` (``dft`` should then carry the model's
        other fidelities' columns too, so a matched polymorph brings its own). ``metal_threshold``: the
        P(metal) at or above which a band gap is called metal, instead of the classifier's stored one.
        """
        ensemble = EnsemblePredictor(_resolve(ref))
        meta_prop = ensemble.meta.get("property")
        if meta_prop and meta_prop != prop.name:
            raise ModelNotFoundError(f"model {ref} predicts {meta_prop}, not {prop.name}")
        calibration = calibration_map(Path(neural_map), ensemble.descriptors) if neural_map is not None else None
        if metal_threshold is not None:  # asked for: refused here rather than silently ignored
            if prop.name != "band_gap" or metal_dir is None:
                raise ValueError("a metal threshold applies to band gaps with the metal classifier"
                                 + ("" if prop.name == "band_gap" else f", not to {prop.name}"))
            check_metal_threshold(metal_threshold)  # before the classifier loads, whose errors read as a broken classifier
        metal = None
        if metal_dir is not None and prop.name == "band_gap":
            if not (Path(metal_dir) / "metal.json").is_file():
                if metal_threshold is not None:  # asked for: an error, not the warning
                    raise ModelNotFoundError(f"no metal classifier at {metal_dir} for the metal threshold: "
                                             "run `matshift metal`")
                log.warning("no metal classifier at %s (run `matshift metal`): every band gap is the non-metal "
                            "estimate, a metal's too; --no-metal says so without this warning", metal_dir)
            else:
                try:
                    metal = MetalPredictor(metal_dir, threshold=metal_threshold)
                except (ValueError, KeyError) as exc:
                    raise ModelNotFoundError(f"metal classifier at {metal_dir} is unusable: {exc}; rerun "
                                             "`matshift metal` or pass --no-metal") from exc
        polymorphs = None if dft is None else Polymorphs.from_dft(dft, prop, extra=tuple(ensemble.extra_fidelities),
                                                                   structures=structures)
        return cls(ensemble, property=prop.name, dft=None if dft is None else dft_lookup(dft, prop, index),
                   features_dir=features_dir, calibration=calibration, metal=metal, polymorphs=polymorphs,
                   polymorph_window=polymorph_window)

    def predict(self, items, *, coverage: float | None = None) -> pd.DataFrame:
        """One row per item: the prediction, its conformal interval at ``coverage`` (default the model's, 0.9), the rest.

        Interval semantics with the metal classifier (band gaps): a row called metal is 0 eV, and
        its interval is [0, 0] when P(metal) >= coverage, else [0, upper of the non-metal
        interval]; a row called non-metal whose P(metal) >= 1 - coverage has its lower bound at 0
        (a metal is then too likely to leave out). Without calibrated intervals (an old model or
        ``train.stack.enabled: false``) ``lower``/``upper`` are NaN.
        """
        formulas = [i.formula for i in items]
        desc = self._descriptors(formulas)
        dft_value, structure_used, structure_ids = [], [], []
        chosen: dict[int, pd.Series] = {}  # row -> the polymorph (table row) a user's structure stands for
        uses_graphs = self.ensemble.uses_graphs
        for k, item in enumerate(items):
            mid, val, sid = None, np.nan, None
            if self.dft is not None and item.formula in self.dft.index:
                mid, val, sid = self.dft.loc[item.formula, ["material_id", "dft_value", "structure_id"]]
                # a structure is looked up only when the served model uses crystal graphs
                sid = sid if isinstance(sid, str) and uses_graphs else None
            match, why = self._match(item)
            if match is not None:
                val, chosen[k] = float(match.row["dft_value"]), match.row
            dft_value.append(float(val) if item.dft_value is None else float(item.dft_value))
            structure_ids.append(sid if item.structure is None else None)
            note = _source(item, mid, val, sid, uses_graphs=uses_graphs)
            structure_used.append(note + (f"; {match.describe()}" if match is not None else f"; {why}" if why else ""))
        beyond = self._beyond_dft_range(items, structure_used)
        graphs = self._graphs(items, structure_ids, structure_used) if uses_graphs else None
        if not uses_graphs:
            for k, item in enumerate(items):
                if item.structure is not None:
                    structure_used[k] += "; composition view (the served model uses composition and DFT value only)"
        # the spread over polymorphs: formula inputs without a DFT value of their own, one row per polymorph in the window
        spread = {k: rows for k, item in enumerate(items) if item.structure is None and item.dft_value is None
                  and self.polymorphs is not None and len(rows := self.polymorphs.window(item.formula,
                                                                                         self.polymorph_window)) > 1}
        frame = self._frame(formulas, dft_value, [i.dft_value for i in items], chosen, spread)
        if graphs is not None:
            graphs = [*graphs, *([None] * (len(frame) - len(items)))]
        every = self.ensemble.predict(frame, graphs=graphs, coverage=coverage)
        out, extra_out = every.iloc[:len(items)].reset_index(drop=True), every.iloc[len(items):]
        value, spread_bag = out["prediction"].to_numpy(float), out["bag_spread"].to_numpy(float)
        cov = self.coverage if coverage is None else float(coverage)
        lower, upper = (out[c].to_numpy(float) if c in out else np.full(len(items), np.nan) for c in ("lower", "upper"))
        n_poly, poly_low, poly_high = np.zeros(len(items), dtype=int), np.full(len(items), np.nan), np.full(len(items), np.nan)
        start = 0
        for k, rows in spread.items():
            part = extra_out.iloc[start:start + len(rows)]
            start += len(rows)
            n_poly[k] = len(rows)
            poly_low[k], poly_high[k] = part["prediction"].min(), part["prediction"].max()
            covered = "lower" in part and np.isfinite(part[["lower", "upper"]].to_numpy(float)).all()
            if covered:  # the interval covers every polymorph's
                lower[k] = np.nanmin([lower[k], part["lower"].min()])
                upper[k] = np.nanmax([upper[k], part["upper"].max()])
            structure_used[k] += (f"; {len(rows)} polymorphs within {self.polymorph_window:g} eV/atom predict "
                                  f"{poly_low[k]:.2f} to {poly_high[k]:.2f}" + (": the interval covers them" if covered else ""))
        metal_p, metal = np.full(len(items), np.nan), np.zeros(len(items), dtype=bool)
        if self.metal is not None:
            calls = self.metal.predict(formulas, desc)
            metal_p, metal = calls["metal_probability"].to_numpy(float), calls["metal"].to_numpy(bool)
        if self.metal is not None:
            lower = np.where(metal | (metal_p >= 1 - cov), 0.0, lower)
            upper = np.where(metal & (metal_p >= cov), 0.0, upper)
        wanted = desc[desc["formula"].isin(set(formulas))]  # the request's rows, not a copy of the whole table
        features = wanted.set_index("formula").loc[formulas, self.columns].to_numpy(np.float64)
        ad = self.ad.score(features)
        unseen = self._unseen_elements(formulas, structure_used)
        has_graph = [g is not None for g in graphs] if graphs is not None else [False] * len(items)
        calibrated = np.full(len(items), np.nan)
        has = np.isfinite(dft_value)
        if self.calibration is not None and has.any():
            calibrated[has] = self.calibration.calibrate(np.asarray(dft_value)[has], features[has])[0]
        return pd.DataFrame(
            {
                # a metal's gap is 0 eV: no spread to show; the non-metal estimate stays beside it
                "prediction": np.where(metal, 0.0, value),
                "lower": lower,
                "upper": upper,
                "coverage": cov if self.ensemble.intervals is not None else np.nan,
                "bag_spread": np.where(metal, np.nan, spread_bag),
                "metal": metal if self.metal is not None else [None] * len(items),
                "metal_probability": metal_p,
                "metal_threshold": np.full(len(items), np.nan if self.metal is None else self.metal.threshold),
                "nonmetal_prediction": value if self.metal is not None else np.full(len(items), np.nan),
                "view": [("structure" if g else "composition") + ("+DFT" if np.isfinite(v) else "")
                         for g, v in zip(has_graph, dft_value, strict=True)],
                "structure_used": structure_used,
                "dft_value": dft_value,
                "polymorphs": n_poly,
                "polymorph_low": poly_low,
                "polymorph_high": poly_high,
                "calibrated_dft": calibrated,
                "ad_score": ad,
                "ad_warning": (ad > self.ad_threshold) | unseen | beyond,
            }
        )

    def _beyond_dft_range(self, items, notes: list[str]) -> np.ndarray:
        """Which inputs carry a user's ``dft_value`` outside :attr:`dft_range` (each note says so)."""
        low, high = self.dft_range
        beyond = np.array([item.dft_value is not None and not low <= item.dft_value <= high for item in items], bool)
        unit = get_property(self.property).unit
        for k in np.flatnonzero(beyond):
            notes[k] += (f"; dft_value beyond the DFT values the model was trained on ({low:.2f} to {high:.2f} {unit}): "
                         "extrapolated")
        return beyond

    def _unseen_elements(self, formulas: list[str], notes: list[str]) -> np.ndarray:
        """Which inputs are pure elements when the training measurements hold none (each note says so)."""
        unseen = element_mask(formulas) & (not self.elements_measured)
        for k in np.flatnonzero(unseen):
            notes[k] += "; no pure element among the training measurements: extrapolated from compounds"
        return unseen

    def _match(self, item) -> tuple[PolymorphMatch | None, str | None]:
        """Match a user's structure to its DFT polymorph (none without a structure or with the user's DFT value)."""
        if item.structure is None or item.dft_value is not None or self.polymorphs is None:
            return None, None
        if item.formula not in self.polymorphs:
            return None, None
        try:
            return self.polymorphs.match(item.structure, item.formula), None
        except ValueError as exc:  # a structure the fingerprint cannot read: the formula's polymorph, said so
            return None, f"not matched to a DFT polymorph ({exc}): the most stable one's DFT value"

    def _frame(self, formulas: list[str], dft_value: list[float], user_dft: list[float | None],
               chosen: dict[int, pd.Series], spread: dict[int, pd.DataFrame]) -> pd.DataFrame:
        """Build the ensemble's input: one row per item, then one per polymorph of each spread, with their fidelities.

        A row's other fidelities (HSE, ...) are its formula's as in training, except for a matched or
        spread polymorph: that entry's own values (NaN where it has none).
        """
        names = self.ensemble.extra_fidelities
        own = self.ensemble.extra_lookup(formulas)
        extra = {n: [float(v) for v in own[n]] for n in names}
        for k, row in chosen.items():
            for n in names:
                if n in row.index:
                    extra[n][k] = float(row[n])
        rows_formula, rows_dft = list(formulas), list(dft_value)
        for k, rows in spread.items():
            rows_formula += [formulas[k]] * len(rows)
            rows_dft += rows["dft_value"].astype(float).tolist()
            for n in names:
                extra[n] += rows[n].astype(float).tolist() if n in rows else [float(own[n][k])] * len(rows)
        user = [item_dft is not None for item_dft in user_dft] + [False] * (len(rows_formula) - len(formulas))
        return pd.DataFrame({"formula": rows_formula, "dft_value": rows_dft, "user_dft": user, **extra})

    def _graphs(self, items, structure_ids: list[str | None], notes: list[str]) -> list:
        """Crystal graph per item: a DFT polymorph's from graphs.pt, or the user's CIF featurized."""
        graphs: list = [None] * len(items)
        wanted = [s for s in structure_ids if s]
        path = self.features_dir / "graphs.pt" if self.features_dir is not None else None
        if wanted and path is not None and path.is_file():

            found = load_graphs(path, ids=wanted)
            graphs = [found.get(s) if s else None for s in structure_ids]
        cif_rows = [k for k, item in enumerate(items) if item.structure is not None]
        if cif_rows:
            featurizer = self._featurizer()
            for k in cif_rows:
                if featurizer is None:
                    notes[k] += "; not featurized (no graph_config.json): composition view"
                    continue

                try:
                    graphs[k] = featurizer.featurize(items[k].structure, structure_id=items[k].input)
                except StructureError as exc:
                    notes[k] += f"; structure not usable ({exc}): composition view"
        return graphs

    def _featurizer(self):
        path = self.features_dir / "graph_config.json" if self.features_dir is not None else None
        if path is None or not path.is_file():
            return None

        return CrystalGraphFeaturizer.from_config(json.loads(path.read_text(encoding="utf-8")))

    def _descriptors(self, formulas: list[str]) -> pd.DataFrame:
        return self.ensemble.descriptors_for(formulas)

    def refused(self, items) -> dict[str, str]:
        """Return ``{formula: reason}`` for the items whose composition cannot be featurized (predict refuses them)."""
        return self.ensemble.featurize_missing([i.formula for i in items])

    def bad_dft_value(self, item) -> str | None:
        """Why the user's ``dft_value`` of ``item`` cannot be the property's DFT value in its unit, else None.

        Below the property's floor (a negative band gap), or outside :attr:`~models.properties.Property.dft_bounds`
        (a value in meV, kJ/mol or per formula unit): refused, never extrapolated into a confident number.
        """
        if item.dft_value is None:
            return None
        prop = get_property(self.property)
        low, high = prop.dft_bounds
        if prop.clamp_min is not None and item.dft_value < prop.clamp_min:
            return f"dft_value {item.dft_value:g} is below {prop.clamp_min:g}, the lowest possible {prop.label}"
        if not low <= item.dft_value <= high:
            return (f"dft_value {item.dft_value:g} is outside {low:g} to {high:g} {prop.unit}, the range a DFT "
                    f"{prop.label} can take: is it in another unit? (the model takes {prop.unit})")
        return None


def _resolve(ref: str | Path) -> Path:
    path = Path(ref)
    if path.is_dir():
        if not (path / "ensemble.json").is_file():
            raise ModelNotFoundError(f"{path} has no ensemble.json: not a directory written by `matshift train`")
        return path
    text = str(ref)
    if "/" in text and not path.exists() and text.count("/") == 1 and not text.startswith((".", "data")):
        name, version = text.split("/")
        # MLflow: seconds to import; only when tracking or resolving a registered model
        import mlflow

        try:
            local = mlflow.artifacts.download_artifacts(f"models:/{name}/{version}")
        except Exception as exc:
            raise ModelNotFoundError(f"registered model {name} version {version} not found: {exc}") from exc
        found = list(Path(local).rglob("ensemble.json"))
        if not found:
            raise ModelNotFoundError(f"registered model {name}/{version} holds no matshift ensemble")
        return found[0].parent
    raise ModelNotFoundError(f"no model at {ref}: run `dvc repro` (or `matshift train`) first, or pass --model")


def calibration_map(directory: Path, descriptors: pd.DataFrame):
    """Load the align stage's neural map if it saved one (for the model's descriptors); else None."""
    if not (directory / "map.json").is_file():
        return None
    # torch: the neural map is loaded only when the align stage saved one
    from models.transport import CalibrationMap, MapFileError

    try:
        cal, extra = CalibrationMap.load(directory)
    except MapFileError as exc:
        raise ModelNotFoundError(f"neural calibration map at {directory} is unusable: {exc}") from exc
    columns = [c for c in descriptors.columns if c != "formula"]
    if extra.get("descriptor_columns") != columns:
        raise ModelNotFoundError(f"neural calibration map at {directory} was fitted on other descriptor columns "
                                 "than the model; re-run `dvc repro` so align and train agree")
    return cal


def dft_lookup(dft: pd.DataFrame, prop: Property, index: pd.DataFrame | None = None) -> pd.DataFrame:
    """Per formula: ``material_id`` and ``dft_value`` of its polymorph, and ``structure_id`` of its graph's.

    Both by :func:`models.properties.choose_polymorphs`, as in training: the polymorph among
    all entries with a value, and the polymorph among those with a crystal graph (``index``
    marks them; without it no structure is looked up).
    """
    frame = valued_entries(dft, prop)
    out = choose_polymorphs(frame)[["material_id", "dft_value"]].copy()
    out["structure_id"] = None
    if index is not None:
        with_graph = set(index.index[(index["domain"] == "dft") & index["has_graph"].astype(bool)])
        best = choose_polymorphs(frame, eligible=frame["material_id"].isin(with_graph))["material_id"]
        out["structure_id"] = best.reindex(out.index).astype(object).where(lambda s: s.notna(), None)
    return out


def _source(item, mid, val: float, sid, *, uses_graphs: bool) -> str:
    """Say where one input's structure and DFT value came from (the ``structure_used`` column)."""
    user = f"user {'CIF' if item.kind == 'cif' else 'structure'} ({item.input})" if item.structure is not None else None
    if item.dft_value is not None:
        return "user DFT value" + (f"; {user}" if user else "")
    if user:  # a CIF file, or a Structure given through the Python API
        return user
    if sid and sid == mid:
        return f"{mid} (most stable polymorph)"
    if sid:
        return f"{sid} (most stable polymorph with a structure; DFT value of {mid})"
    if mid and not uses_graphs:
        return f"{mid} (most stable polymorph: its DFT value)"
    if mid:
        return f"{mid} (most stable polymorph; no structure)"
    return "median DFT value of its polymorphs (formation energies unknown)" if np.isfinite(val) else "none: composition only"


__all__ = ["ModelNotFoundError", "Predictor", "calibration_map", "dft_lookup"]
