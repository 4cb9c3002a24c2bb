"""The whole predictor as one self-contained directory: what MLflow serves and ``matshift.load_model`` loads.

``matshift predict`` builds its :class:`~models.serving.Predictor` from the pipeline's
directories: the trained ensemble, the DFT table (which polymorph's DFT value feeds the
model), the crystal graphs, the align stage's neural map and the metal classifier. A
deployed model must give the same answers without those directories, so
:func:`write_bundle` copies exactly what the predictor reads into one directory::

    bundle.json        property, format, which optional parts are present
    model/             the trained ensemble (``matshift train``'s directory, manifest checked)
    lookup.parquet     per formula: material_id, dft_value, structure_id (dft_lookup: the polymorph rule)
    polymorphs.parquet the formulas with several DFT polymorphs: each one's values and structure (Polymorphs)
    graphs.pt          the looked-up structures' crystal graphs (only when the served value uses them)
    graph_config.json  the featurizer settings, for a user's structure (same condition)
    neural_map/        the align stage's neural calibration map, when it saved one
    metal/             the metal classifier (band gaps), when it exists

and :func:`load_bundle` turns it back into the same :class:`~models.serving.Predictor`.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path

import pandas as pd

from featurizers.crystal_graph import load_graphs, save_graphs
from models._io import write_json
from models.properties import get_property
from models.serving.ensemble import EnsemblePredictor
from models.serving.metal import MetalPredictor
from models.serving.polymorphs import Polymorphs
from models.serving.predictor import ModelNotFoundError, Predictor, calibration_map, dft_lookup

BUNDLE_FORMAT = "matshift-predictor/1"

__all__ = ["BUNDLE_FORMAT", "find_bundle", "load_bundle", "write_bundle"]


def write_bundle(dest: Path, *, model_dir: Path, property: str, dft: pd.DataFrame | None,
                 index: pd.DataFrame | None = None, features_dir: Path | None = None,
                 neural_map: Path | None = None, metal_dir: Path | None = None,
                 structures: pd.Series | Callable[[list[str]], pd.Series] | None = None) -> Path:
    """Copy everything :meth:`Predictor.load` would read for ``model_dir`` into ``dest`` (created).

    Arguments as in :meth:`Predictor.load`: ``dft`` is the DFT table (None: composition only),
    ``index`` the featurize stage's, ``features_dir`` holds ``graphs.pt``/``graph_config.json``,
    ``structures`` the DFT structures (only those of formulas with several polymorphs are kept).
    """
    prop = get_property(property)
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=False)
    shutil.copytree(model_dir, dest / "model")
    ensemble = EnsemblePredictor(dest / "model")
    parts: dict[str, bool] = {"lookup": dft is not None, "graphs": False, "neural_map": False, "metal": False,
                              "polymorphs": False}
    lookup = dft_lookup(dft, prop, index) if dft is not None else None
    if lookup is not None:
        lookup.reset_index(names="formula").to_parquet(dest / "lookup.parquet", index=False)
        polymorphs = Polymorphs.from_dft(dft, prop, extra=tuple(ensemble.extra_fidelities), structures=structures)
        if polymorphs is not None:
            polymorphs.save(dest / "polymorphs.parquet")
            parts["polymorphs"] = True
    if features_dir is not None and ensemble.uses_graphs:
        graphs_path, config = Path(features_dir) / "graphs.pt", Path(features_dir) / "graph_config.json"
        if config.is_file():
            shutil.copy2(config, dest / "graph_config.json")
        wanted = [s for s in lookup["structure_id"] if isinstance(s, str)] if lookup is not None else []
        if wanted and graphs_path.is_file():
            save_graphs(dest / "graphs.pt", load_graphs(graphs_path, ids=wanted))
            parts["graphs"] = True
    if neural_map is not None and (Path(neural_map) / "map.json").is_file():
        shutil.copytree(neural_map, dest / "neural_map")
        parts["neural_map"] = True
    if metal_dir is not None and prop.name == "band_gap" and (Path(metal_dir) / "metal.json").is_file():
        MetalPredictor(metal_dir)  # refuse to package a broken classifier
        shutil.copytree(metal_dir, dest / "metal")
        parts["metal"] = True
    write_json(dest / "bundle.json", {"format": BUNDLE_FORMAT, "property": prop.name, "parts": parts})
    return dest


def find_bundle(path: Path) -> Path | None:
    """Find the bundle directory at or below ``path`` (an MLflow model's artifacts nest it), or None."""
    path = Path(path)
    if (path / "bundle.json").is_file():
        return path
    found = sorted(path.rglob("bundle.json")) if path.is_dir() else []
    return found[0].parent if found else None


def load_bundle(path: Path) -> Predictor:
    """Load the :class:`Predictor` that :func:`write_bundle` packaged; a broken bundle is a :class:`ModelNotFoundError`."""
    path = Path(path)
    try:
        meta = json.loads((path / "bundle.json").read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ModelNotFoundError(f"{path} is not a matshift predictor bundle: {exc}") from exc
    if not isinstance(meta, dict) or meta.get("format") != BUNDLE_FORMAT:
        raise ModelNotFoundError(f"{path}/bundle.json: not a {BUNDLE_FORMAT} bundle")
    prop = get_property(meta["property"])
    parts = meta.get("parts", {})
    ensemble = EnsemblePredictor(path / "model")
    lookup = None
    if parts.get("lookup"):
        lookup = pd.read_parquet(path / "lookup.parquet").set_index("formula")
        lookup["structure_id"] = lookup["structure_id"].astype(object).where(lookup["structure_id"].notna(), None)
    calibration = calibration_map(path / "neural_map", ensemble.descriptors) if parts.get("neural_map") else None
    metal = MetalPredictor(path / "metal") if parts.get("metal") else None
    # bundles written before polymorphs were packaged have no such part: every input then takes its formula's polymorph
    polymorphs = Polymorphs.load(path / "polymorphs.parquet") if parts.get("polymorphs") else None
    return Predictor(ensemble, property=prop.name, dft=lookup, features_dir=path, calibration=calibration,
                     metal=metal, polymorphs=polymorphs)
