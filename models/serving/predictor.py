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

Never reads params.yaml or environment variables: paths and thresholds are arguments.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from featurizers.composition import DESCRIPTOR_SETS, composition_descriptors, descriptor_labels
from models.learners.applicability import ApplicabilityDomain


class ModelNotFoundError(FileNotFoundError):
    """A model reference that does not point at a trained model."""

class Predictor:
    """A trained model ready for :meth:`predict` on :class:`featurizers.inputs.ParsedInput`."""

    def __init__(self, ensemble, *, property: str, dft: pd.DataFrame | None, ad_threshold: float = 95.0,
                 features_dir: Path | str | None = None, calibration=None):
        self.ensemble = ensemble
        self.property = property
        self.ad_threshold = ad_threshold
        desc = ensemble.descriptors
        self.columns = [c for c in desc.columns if c != "formula"]
        self.sets = next((s for s in (tuple(DESCRIPTOR_SETS), ("magpie",)) if descriptor_labels(s) == self.columns), None)
        # the AD reference is the training *measurements* when the model lists them: the
        # evaluate stage found that distance to measured compositions picks out inputs with
        # larger errors, distance to DFT + measured compositions does not (README results)
        measured = getattr(ensemble, "measured_formulas", None)
        ref = desc[desc["formula"].isin(measured)] if measured else desc
        if len(ref) <= 5:
            ref = desc
        self.ad_reference = "training measurements" if ref is not desc else "all training compositions"
        self.ad = ApplicabilityDomain.fit(ref[self.columns].to_numpy(np.float64))
        # formula -> material_id / dft_value of the most stable polymorph, and structure_id of the
        # most stable polymorph that has a crystal graph (the one training paired with measurements)
        self.dft = dft
        self.features_dir = Path(features_dir) if features_dir is not None else None
        self.calibration = calibration  # models.icnn.CalibrationMap or None

    @classmethod
    def load(cls, ref: str | Path, *, property: str, raw_dir: Path | str = "data/raw",
             features_dir: Path | str = "data/features", aligned_dir: Path | str = "data/aligned") -> Predictor:
        from models.serving.ensemble import EnsemblePredictor

        directory = _resolve(ref)
        ensemble = EnsemblePredictor(directory)
        meta_prop = ensemble.meta.get("property")
        if meta_prop and meta_prop != property:
            raise ModelNotFoundError(f"model {ref} predicts {meta_prop}, not {property}")
        features_dir = Path(features_dir)
        calibration = _calibration_map(Path(aligned_dir) / property / "neural_map", ensemble.descriptors)
        return cls(ensemble, property=property, dft=_dft_lookup(Path(raw_dir), property, features_dir),
                   features_dir=features_dir, calibration=calibration)

    def predict(self, items) -> pd.DataFrame:
        formulas = [i.formula for i in items]
        desc = self._descriptors(formulas)
        dft_value, structure_used, structure_ids = [], [], []
        uses_graphs = self.ensemble.uses_graphs
        for item in items:
            mid, val, sid = None, np.nan, None
            if self.dft is not None and item.formula in self.dft.index:
                mid, val, sid = self.dft.loc[item.formula, ["material_id", "dft_value", "structure_id"]]
                # a structure is looked up only when the served model uses crystal graphs
                sid = sid if isinstance(sid, str) and uses_graphs else None
            dft_value.append(float(val))
            structure_ids.append(sid if item.kind == "formula" else None)
            if item.kind == "cif":
                structure_used.append(f"user CIF ({item.input})")
            elif sid and sid == mid:
                structure_used.append(f"{mid} (most stable polymorph)")
            elif sid:
                structure_used.append(f"{sid} (most stable polymorph with a structure; DFT value of {mid})")
            elif mid and not uses_graphs:
                structure_used.append(f"{mid} (most stable polymorph: its DFT value)")
            else:
                structure_used.append(f"{mid} (most stable polymorph; no structure)" if mid else "none: composition only")
        graphs = self._graphs(items, structure_ids, structure_used) if uses_graphs else None
        if not uses_graphs:
            for k, item in enumerate(items):
                if item.kind == "cif":
                    structure_used[k] += "; composition view (the served model uses composition and DFT value only)"
        frame = pd.DataFrame({"formula": formulas, "dft_value": dft_value})
        out = self.ensemble.predict(frame, graphs=graphs)
        features = desc.set_index("formula").loc[formulas, self.columns].to_numpy(np.float64)
        ad = self.ad.score(features)
        has_graph = [g is not None for g in graphs] if graphs is not None else [False] * len(items)
        calibrated = np.full(len(items), np.nan)
        has = np.isfinite(dft_value)
        if self.calibration is not None and has.any():
            calibrated[has] = self.calibration.calibrate(np.asarray(dft_value)[has], features[has])[0]
        return pd.DataFrame(
            {
                "prediction": out["prediction"].to_numpy(),
                "uncertainty": out["uncertainty"].to_numpy(),
                "view": [("structure" if g else "composition") + ("+DFT" if np.isfinite(v) else "")
                         for g, v in zip(has_graph, dft_value, strict=True)],
                "structure_used": structure_used,
                "dft_value": dft_value,
                "calibrated_dft": calibrated,
                "ad_score": ad,
                "ad_warning": ad > self.ad_threshold,
            }
        )

    def _graphs(self, items, structure_ids: list[str | None], notes: list[str]) -> list:
        """Crystal graph per item: a DFT polymorph's from graphs.pt, or the user's CIF featurized."""
        graphs: list = [None] * len(items)
        wanted = [s for s in structure_ids if s]
        path = self.features_dir / "graphs.pt" if self.features_dir is not None else None
        if wanted and path is not None and path.is_file():
            from featurizers.crystal_graph import load_graphs

            found = load_graphs(path, ids=wanted)
            graphs = [found.get(s) if s else None for s in structure_ids]
        cif_rows = [k for k, item in enumerate(items) if item.kind == "cif"]
        if cif_rows:
            featurizer = self._featurizer()
            for k in cif_rows:
                if featurizer is None:
                    notes[k] += "; not featurized (no graph_config.json): composition view"
                    continue
                from featurizers.crystal_graph import StructureError

                try:
                    graphs[k] = featurizer.featurize(items[k].structure, structure_id=items[k].input)
                except StructureError as exc:
                    notes[k] += f"; structure not usable ({exc}): composition view"
        return graphs

    def _featurizer(self):
        path = self.features_dir / "graph_config.json" if self.features_dir is not None else None
        if path is None or not path.is_file():
            return None
        import json

        from featurizers.crystal_graph import CrystalGraphFeaturizer

        return CrystalGraphFeaturizer.from_config(json.loads(path.read_text(encoding="utf-8")))

    def _descriptors(self, formulas: list[str]) -> pd.DataFrame:
        known = self.ensemble.descriptors
        missing = sorted(set(formulas) - set(known["formula"]))
        if missing:
            if self.sets is None:
                raise ValueError("the model's descriptor columns are not ones matshift can compute")
            result = composition_descriptors(missing, sets=self.sets)
            if result.failures:
                f = result.failures[0]
                raise ValueError(f"no descriptors for formula {f.formula!r}: {f.reason}")
            known = pd.concat([known, result.frame[["formula", *self.columns]]], ignore_index=True)
            self.ensemble.descriptors = known
        return known

def _resolve(ref: str | Path) -> Path:
    path = Path(ref)
    if path.is_dir():
        if not (path / "ensemble.json").is_file():
            raise ModelNotFoundError(f"{path} has no ensemble.json: not a directory written by `matshift train`")
        return path
    text = str(ref)
    if "/" in text and not path.exists() and text.count("/") == 1 and not text.startswith((".", "data")):
        name, version = text.split("/")
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

def _calibration_map(directory: Path, descriptors: pd.DataFrame):
    """Load the align stage's neural map if it saved one (for the model's descriptors); else None."""
    if not (directory / "map.json").is_file():
        return None
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

def _dft_lookup(raw_dir: Path, prop: str, features_dir: Path | None = None) -> pd.DataFrame | None:
    path = raw_dir / "dft.parquet"
    column = {"band_gap": "band_gap_pbe", "formation_enthalpy": "formation_energy_per_atom"}[prop]
    if not path.is_file():
        return None
    columns = list(dict.fromkeys(["material_id", "formula", column, "formation_energy_per_atom"]))
    dft = pd.read_parquet(path, columns=columns)
    # the most stable polymorph: lowest formation energy per atom (same order as E_hull for one formula)
    dft = dft[np.isfinite(dft[column])].sort_values(["formation_energy_per_atom", "material_id"], na_position="last")
    dft = dft.rename(columns={column: "dft_value"})
    out = dft.drop_duplicates("formula").set_index("formula")[["material_id", "dft_value"]]
    out["structure_id"] = None
    index = features_dir / "index.parquet" if features_dir is not None else None
    if index is not None and index.is_file():
        # as in training: the most stable polymorph (with a value) that has a crystal graph
        feats = pd.read_parquet(index, columns=["id", "domain", "has_graph"])
        with_graph = set(feats.loc[(feats["domain"] == "dft") & feats["has_graph"], "id"])
        best = dft[dft["material_id"].isin(with_graph)].drop_duplicates("formula").set_index("formula")["material_id"]
        out["structure_id"] = best.reindex(out.index).astype(object).where(lambda s: s.notna(), None)
    return out


__all__ = ["ModelNotFoundError", "Predictor"]
