"""The Python API behind ``import matshift``: load a model, predict, featurize.

Everything here goes through the code ``matshift predict`` runs (input validation,
:class:`models.serving.Predictor`, the output table), so a notebook, the command line and the
MLflow model server give the same numbers for the same model.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

import pandas as pd

from featurizers.composition import composition_descriptors
from featurizers.inputs import (
    InputProblem,
    ParsedInput,
    parse_cif,
    parse_dft_value,
    parse_formula_input,
    parse_structure,
)
from matshift.featurizers import CrystalGraph, formula_of
from models.properties import PROPERTY_NAMES, get_property
from models.serving import (
    COLUMNS,
    ModelNotFoundError,
    Predictor,
    check_metal_threshold,
    find_bundle,
    load_bundle,
    predict_items,
)
from pipeline.errors import MatshiftError
from pipeline.predict import load_predictor

__all__ = ["COLUMNS", "Model", "ModelNotFoundError", "featurize", "load_model", "to_inputs"]

_URI_SCHEMES = ("models:/", "runs:/", "file:", "mlflow-artifacts:", "s3://", "gs://", "http://", "https://")


class Model:
    """A trained predictor: :meth:`predict` gives the table ``matshift predict`` writes.

    ``property`` (``band_gap`` or ``formation_enthalpy``), ``unit`` and ``source`` (where it
    was loaded from) say what it is; ``predictor`` is the underlying
    :class:`models.serving.Predictor`.
    """

    def __init__(self, predictor: Predictor, *, source: str, max_sites: int = 500) -> None:
        self.predictor = predictor
        self.property = predictor.property
        self.unit = get_property(self.property).unit
        self.source = source
        self.max_sites = max_sites

    def __repr__(self) -> str:
        return f"matshift.Model({self.property!r}, source={self.source!r})"

    def predict(self, inputs: Any, *, coverage: float | None = None) -> pd.DataFrame:
        """Predict for formulas, ``Composition``/``Structure`` objects, CIF paths or a DataFrame.

        Returns one row per input with :data:`COLUMNS` (as ``matshift predict --output x.csv``):
        ``prediction`` and its conformal interval ``lower``..``upper`` at ``coverage`` (default
        the model's, 0.9), the metal call for band gaps, the DFT value and structure used, the
        applicability domain. An invalid input gets its ``error`` and no number; it never
        raises. A DataFrame is read by its ``formula``, ``composition``, ``structure`` or ``cif``
        column (the first one filled in a row wins, in the order structure, cif, composition,
        formula); an optional ``dft_value`` column is your own DFT value of that material, as in
        ``matshift predict --input``'s CSV (a missing cell: the mirror's; not a number: the row's error).
        """
        if coverage is not None and not (isinstance(coverage, (int, float)) and 0 < coverage < 1):
            raise ValueError(f"coverage {coverage!r}: give a fraction between 0 and 1, e.g. 0.9")
        items = to_inputs(inputs, max_sites=self.max_sites)
        return predict_items(items, self.predictor, unit=self.unit, coverage=coverage)


def load_model(model: str | Path = "band_gap", *, params: str | Path | None = None, metal: bool = True,
               max_sites: int = 500, metal_threshold: float | None = None) -> Model:
    """Load a trained model.

    ``model``: a property name (``"band_gap"``: the pipeline's model, with the DFT table,
    graphs and metal classifier read from the directories of ``params``, params.yaml by
    default: exactly what ``matshift predict`` uses); a directory written by ``matshift train``
    (same lookups), or one holding a packaged predictor; or an MLflow model URI such as
    ``models:/matshift-band_gap/1`` (the registered, self-contained predictor that
    ``mlflow models serve`` runs; the tracking store is ``MLFLOW_TRACKING_URI`` or MLflow's
    default). ``metal``: band gaps use the metal classifier when it exists (pipeline models
    only; a packaged predictor carries its own). ``metal_threshold``: call a band gap metal at
    P(metal) >= this instead of the classifier's own threshold (``matshift predict
    --metal-threshold``; ``ValueError`` outside [0, 1]). Raises :class:`ModelNotFoundError` naming
    the reference when there is no usable model, or no metal classifier for a threshold.
    """
    if metal_threshold is not None:
        check_metal_threshold(metal_threshold)
        if not metal:
            raise ValueError("metal_threshold and metal=False contradict each other: give one")
    text = str(model)
    if text.startswith(_URI_SCHEMES):
        return Model(_thresholded(load_bundle(_download(text)), metal_threshold, text), source=text, max_sites=max_sites)
    path = Path(model)
    bundle = find_bundle(path) if path.is_dir() else None
    if bundle is not None:
        return Model(_thresholded(load_bundle(bundle), metal_threshold, str(path)), source=str(path), max_sites=max_sites)
    if text in PROPERTY_NAMES:
        prop, ref = text, None
    elif path.is_dir():
        prop, ref = _property_of(path), path
    else:
        raise ModelNotFoundError(f"no model at {text!r}: give a property ({', '.join(PROPERTY_NAMES)}), a model "
                                 "directory, or an MLflow URI such as models:/matshift-band_gap/1")
    try:
        predictor = load_predictor(ref, property=prop, params=Path(params) if params is not None else None,
                                   metal=metal, metal_threshold=metal_threshold)
    except MatshiftError as exc:
        raise ModelNotFoundError(str(exc)) from None
    return Model(predictor, source=str(ref if ref is not None else f"pipeline model for {prop}"), max_sites=max_sites)


def _thresholded(predictor: Predictor, threshold: float | None, source: str) -> Predictor:
    """``predictor`` with its packaged metal classifier calling at ``threshold`` (None: as packaged)."""
    if threshold is None:
        return predictor
    if predictor.metal is None:
        raise ModelNotFoundError(f"{source} has no metal classifier for metal_threshold (band-gap predictors carry one)")
    predictor.metal.threshold = float(threshold)
    return predictor


def _download(uri: str) -> Path:
    # MLflow: seconds to import; only for an MLflow model URI
    import mlflow

    try:
        local = Path(mlflow.artifacts.download_artifacts(uri))
    except Exception as exc:  # noqa: BLE001 - MLflow raises many types for a missing model or store
        raise ModelNotFoundError(f"MLflow model {uri} cannot be loaded: {str(exc).splitlines()[0][:300]}") from None
    found = find_bundle(local)
    if found is None:
        raise ModelNotFoundError(f"MLflow model {uri} holds no matshift predictor (logged by an older matshift "
                                 "train? re-run `dvc repro`)")
    return found


def _property_of(path: Path) -> str:
    import json  # only for a model directory without a bundle

    try:
        meta = json.loads((path / "ensemble.json").read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ModelNotFoundError(f"{path} is not a directory written by `matshift train` ({exc})") from None
    prop = meta.get("property") if isinstance(meta, dict) else None
    if prop not in PROPERTY_NAMES:
        raise ModelNotFoundError(f"{path}/ensemble.json names no known property ({prop!r})")
    return prop


def to_inputs(inputs: Any, *, max_sites: int = 500) -> list[ParsedInput | InputProblem]:
    """Validate ``inputs`` one by one (see :meth:`Model.predict`); nothing here raises for bad input."""
    if isinstance(inputs, pd.DataFrame):
        return _frame_inputs(inputs, max_sites=max_sites)
    if isinstance(inputs, (str, Path)) or not isinstance(inputs, Iterable) or hasattr(inputs, "composition") \
            or hasattr(inputs, "element_composition"):
        inputs = [inputs]
    return [_one(x, max_sites=max_sites) for x in inputs]


def _one(item: Any, *, max_sites: int) -> ParsedInput | InputProblem:
    if isinstance(item, Path) or (isinstance(item, str) and item.strip().lower().endswith(".cif")):
        return parse_cif(Path(item), max_sites=max_sites)
    if isinstance(item, str):
        return parse_formula_input(item)
    if hasattr(item, "lattice") and hasattr(item, "sites"):  # a pymatgen Structure
        return parse_structure(item, name=_structure_name(item), max_sites=max_sites)
    if hasattr(item, "element_composition"):  # a pymatgen Composition
        return parse_formula_input(formula_of(item))
    shown = repr(item)[:80]
    return InputProblem(shown, "formula", f"{shown}: not a formula, Composition, Structure or CIF path "
                        f"({type(item).__name__})")


def _structure_name(structure: Any) -> str:
    try:
        return f"Structure {structure.composition.reduced_formula}"
    except Exception:  # noqa: BLE001 - a broken object: its check in parse_structure says why
        return "Structure"


def _frame_inputs(frame: pd.DataFrame, *, max_sites: int) -> list[ParsedInput | InputProblem]:
    columns = {str(c).strip().lower(): c for c in frame.columns}
    known = [c for c in ("structure", "cif", "composition", "formula") if c in columns]
    if not known:
        return [InputProblem("<DataFrame>", "formula", "the DataFrame needs a 'formula', 'composition', "
                             f"'structure' or 'cif' column; it has {list(frame.columns)}")] if len(frame) else []
    items = []
    for _, row in frame.iterrows():
        values = [row[columns[c]] for c in known]
        filled = [v for v in values if v is not None and not (isinstance(v, float) and v != v) and str(v).strip()]
        if not filled:
            items.append(InputProblem("", "formula", f"empty row: no {', '.join(known)} value"))
            continue
        value, col = filled[0], known[values.index(filled[0])]
        item = _one(Path(str(value)) if col == "cif" else value, max_sites=max_sites)
        # the user's own DFT value, as the --input CSV's column: refused by row when it is not a number
        items.append(parse_dft_value(item, row[columns["dft_value"]]) if "dft_value" in columns else item)
    return items


def featurize(inputs: Any, *, kind: str = "descriptors") -> pd.DataFrame | list:
    """Compute the features the models use, for formulas, ``Composition`` or ``Structure`` objects.

    ``kind="descriptors"``: a DataFrame with one row per input, ``input``, ``formula``, the
    composition descriptor columns and ``error`` (an input without descriptors has NaNs and the
    reason). ``kind="graph"``: a list of PyTorch Geometric ``Data`` crystal graphs, one per
    ``Structure`` (None for an input that is not a featurizable structure).

    >>> import matshift
    >>> table = matshift.featurize(["GaAs", "NaCl", "Xx2"])
    >>> table[["formula", "error"]].to_dict("records")[2]["error"]
    "formula 'Xx2': unknown element 'Xx'"
    >>> round(float(table.loc[0, "MagpieData mean Number"]), 1)
    32.0
    """
    items = to_inputs(inputs)
    if kind == "graph":
        featurizer = CrystalGraph()
        graphs = []
        for item in items:
            try:
                graphs.append(featurizer.featurize(item.structure)[0]
                              if isinstance(item, ParsedInput) and item.structure is not None else None)
            except ValueError:
                graphs.append(None)
        return graphs
    if kind != "descriptors":
        raise ValueError(f"kind {kind!r}: use 'descriptors' or 'graph'")
    valid = [i for i in items if isinstance(i, ParsedInput)]
    result = composition_descriptors(sorted({i.formula for i in valid}))
    table = result.frame.set_index("formula")
    reasons = {f.formula: f.reason for f in result.failures}
    rows = []
    for item in items:
        if isinstance(item, InputProblem):
            rows.append({"input": item.input, "formula": None, "error": item.reason})
        elif item.formula in table.index:
            rows.append({"input": item.input, "formula": item.formula, **table.loc[item.formula].to_dict(),
                         "error": None})
        else:
            rows.append({"input": item.input, "formula": item.formula, "error": reasons.get(item.formula)})
    return pd.DataFrame(rows, columns=["input", "formula", *table.columns, "error"])
