"""``matshift predict``: measured-property predictions for formulas and CIF files.

Inputs are validated one by one (:mod:`featurizers.inputs`): a bad input is reported with
its reason and gets no number, while the valid inputs of the same call are still
predicted; the exit code is 1 when any input failed. :func:`predict` is the same thing for
notebooks and returns a DataFrame.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

import pandas as pd

from models.properties import PROPERTY_NAMES, get_property
from models.serving import ModelNotFoundError, Predictor, format_table, predict_items, write_table
from pipeline import readers
from pipeline.config import DEFAULT_PARAMS, load_section, paths_from
from pipeline.errors import MatshiftError
from pipeline.inputs import collect_inputs, read_input_csv
from pipeline.params.metal import MetalParams
from pipeline.params.train import TrainParams

log = logging.getLogger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("formulas", nargs="*", metavar="FORMULA", help="chemical formulas, e.g. GaAs Fe2O3")
    parser.add_argument("--cif", nargs="+", default=[], type=Path, metavar="FILE", help="CIF files to predict")
    parser.add_argument("--input", type=Path, help="CSV with a 'formula' and/or a 'cif' column (CIF paths relative to "
                        "the CSV); optional 'dft_value': your DFT value of that material, used instead of the mirror's (the "
                        "prediction never falls as it rises)")
    parser.add_argument("--property", choices=PROPERTY_NAMES, default="band_gap", help="property (default: %(default)s)")
    parser.add_argument("--model", default=None,
                        help="model: a directory written by `matshift train`, or an MLflow registered model as "
                        "NAME/VERSION (default: data/models/<property>)")
    parser.add_argument("--output", type=Path, help="write the table to this .csv or .json file")
    parser.add_argument("--params", type=Path, default=None,
                        help="parameter file whose train section says where the data and models are; its relative "
                        "directories are read from the file's own directory, so the repository's params.yaml works "
                        "from anywhere (default: params.yaml when there is one here, else data/...)")
    parser.add_argument("--max-sites", type=int, default=500, help="largest CIF cell accepted (default: %(default)s)")
    parser.add_argument("--no-metal", action="store_true", help="band gaps: skip the metal classifier "
                        "(data/models/metal); every row gets the non-metal gap estimate")
    parser.add_argument("--metal-threshold", type=float, default=None, metavar="P",
                        help="band gaps: call a row metal (0 eV) when P(metal) >= P instead of the threshold chosen on "
                        "training folds (data/models/metal/card.md gives it and the errors at others). Higher: "
                        "fewer semiconductors called metal, more metals given a gap")
    parser.add_argument("--coverage", type=float, default=None, help="nominal coverage of the conformal prediction "
                        "intervals `lower`..`upper` (default: the model's, train.intervals.coverage = 0.9)")
    parser.add_argument("--polymorph-window", type=float, default=0.2, metavar="EV_PER_ATOM",
                        help="a formula's DFT polymorphs within this formation energy of its most stable one give the range "
                        "polymorph_low..polymorph_high, which the interval covers (0 = off; a CIF takes its own "
                        "polymorph's DFT value instead; default: %(default)s)")


def predict(
    inputs: Sequence[str | Path] | str,
    *,
    property: str = "band_gap",
    model: str | Path | None = None,
    max_sites: int = 500,
    metal: bool = True,
    params: Path | str | None = None,
    polymorph_window: float = 0.2,
    metal_threshold: float | None = None,
) -> pd.DataFrame:
    """Predict ``property`` for formulas and CIF paths (strings ending in .cif or Paths).

    Returns one row per input with the columns of :data:`~models.serving.COLUMNS`; invalid inputs have an
    ``error`` and no prediction. ``metal``: band gaps use the metal classifier (see :func:`load_predictor`);
    ``params``: the parameter file saying where the data and models are (default params.yaml);
    ``polymorph_window``: as ``matshift predict --polymorph-window`` (eV/atom); ``metal_threshold``: as
    ``--metal-threshold`` (None: the classifier's own).
    """
    if isinstance(inputs, str):
        inputs = [inputs]
    formulas = [i for i in inputs if isinstance(i, str) and not i.lower().endswith(".cif")]
    cifs = [Path(i) for i in inputs if isinstance(i, Path) or str(i).lower().endswith(".cif")]
    items = collect_inputs(formulas, cifs, max_sites=max_sites)
    predictor = load_predictor(model, property=property, metal=metal, params=Path(params) if params else None,
                               polymorph_window=polymorph_window, metal_threshold=metal_threshold)
    return predict_items(items, predictor, unit=get_property(property).unit)


def load_predictor(model: str | Path | None, *, property: str, params: Path | None = None, metal: bool = True,
                   polymorph_window: float = 0.2, metal_threshold: float | None = None):
    """Load a trained model (directory or MLflow ``NAME/VERSION``) as a predictor.

    The DFT table, the crystal graphs and the align stage's neural map are read from the
    ``train`` section's directories of ``params`` (params.yaml when it exists, else the
    defaults): the data the served model was trained with; band gaps add the metal classifier
    (``metal`` section's ``out_dir``) when it exists and ``metal`` is true: 0 eV for a metal. The DFT
    structures are read only when a user's structure is matched to a polymorph. ``metal_threshold``:
    the P(metal) at or above which a band gap is called metal (None: the classifier's own).
    """
    if not polymorph_window >= 0:
        raise MatshiftError(f"--polymorph-window {polymorph_window}: give a formation-energy window >= 0 eV/atom")
    if metal_threshold is not None and property != "band_gap":
        raise MatshiftError(f"--metal-threshold applies to band gaps, not to {property}")
    if metal_threshold is not None and not metal:
        raise MatshiftError("--metal-threshold and --no-metal contradict each other: give one")
    if params is not None and not params.is_file():  # a file named but missing is a typo, not "use the defaults"
        raise MatshiftError(f"parameter file {params} does not exist")
    prop = get_property(property)
    path = params if params is not None else DEFAULT_PARAMS
    # the file's relative directories are its own directory's (where `dvc repro` runs), not the working directory's
    dirs = (paths_from(path, load_section(TrainParams, "train", path), "raw_dir", "features_dir", "aligned_dir",
                       "out_dir") if path.is_file() else TrainParams())
    metal_dir = (paths_from(path, load_section(MetalParams, "metal", path), "out_dir") if path.is_file()
                 else MetalParams()).out_dir if metal else None
    has_dft = (dirs.raw_dir / "dft.parquet").is_file()
    dft = readers.read_dft(dirs.raw_dir, prop, extra=dirs.fit.extra_fidelities(prop)) if has_dft else None
    index = readers.read_index(dirs.features_dir) if (dirs.features_dir / "index.parquet").is_file() else None
    try:
        return Predictor.load(model if model is not None else dirs.out_dir / prop.name, prop=prop, dft=dft,
                              index=index, features_dir=dirs.features_dir,
                              neural_map=dirs.aligned_dir / prop.name / "neural_map", metal_dir=metal_dir,
                              structures=(lambda ids: readers.read_structures(dirs.raw_dir, ids)) if has_dft else None,
                              polymorph_window=polymorph_window, metal_threshold=metal_threshold)
    except (ModelNotFoundError, ValueError) as exc:  # ValueError: a setting refused (a metal threshold, say)
        raise MatshiftError(str(exc)) from exc


def run(args: argparse.Namespace) -> int:
    items = collect_inputs(args.formulas, args.cif, max_sites=args.max_sites)
    if args.input is not None:
        items += read_input_csv(args.input, max_sites=args.max_sites)
    if not items:
        raise MatshiftError("no input: give formulas, --cif FILE ... or --input FILE.csv (see matshift predict --help)")
    if args.coverage is not None and not 0 < args.coverage < 1:  # before the models load: a typo answered at once
        raise MatshiftError(f"--coverage {args.coverage}: give a fraction between 0 and 1, e.g. 0.9")
    predictor = load_predictor(args.model, property=args.property, params=args.params, metal=not args.no_metal,
                               polymorph_window=args.polymorph_window, metal_threshold=args.metal_threshold)
    frame = predict_items(items, predictor, unit=get_property(args.property).unit, coverage=args.coverage)
    # refused inputs (not a formula, a bad CIF, an element without Magpie data) are rows with an error: said here too
    bad = [(i, e) for i, e in zip(items, frame["error"], strict=True) if isinstance(e, str)]
    for item, reason in bad:
        named = item.input.strip() and repr(item.input.strip()) in reason  # formula errors name it already
        print(f"matshift predict: {reason if named else f'{item.kind} {item.input!r}: {reason}'}", file=sys.stderr)
    if args.output is not None:
        write_table(args.output, frame)
        log.info("wrote %d rows to %s", len(frame), args.output)
    else:
        print(format_table(frame))
    return 1 if bad else 0
