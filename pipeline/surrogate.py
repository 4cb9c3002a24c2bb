"""``matshift surrogate --property P``: the stacked models' DFT surrogate, fitted once and shared.

The surrogate (:class:`models.learners.DFTSurrogate`) learns the property's DFT value from
composition descriptors on the DFT labels alone, cross-fitted. It sees no measurement, so the
served model (train stage) and every evaluate fold can share one fit instead of each fitting
the same model. Reads ``data/raw/dft.parquet`` and ``data/features/descriptors.parquet``; fits
with the ``train.stack`` settings the surrogate depends on
(:data:`models.learners.SURROGATE_FIELDS`) and ``train.seed``; writes
``data/surrogates/<property>/`` (``surrogate.json``: settings, descriptor columns, out-of-fold
estimates, the sha256 of its inputs; ``surrogate.txt``: the LightGBM model).

The train and evaluate stages take it from there when its settings and inputs are the ones
they would fit with (:meth:`~models.learners.DFTSurrogate.mismatch`); otherwise, or without the
directory, they fit their own and say why, so a stale file never changes a number.
"""

from __future__ import annotations

import argparse
import logging
import time
from dataclasses import replace
from pathlib import Path

from models import atomic_dir
from models.properties import PROPERTY_NAMES, get_property, reference_per_formula
from pipeline import readers
from pipeline.config import DEFAULT_PARAMS, load_section
from pipeline.errors import MatshiftError
from pipeline.params.train import TrainParams

log = logging.getLogger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--params", type=Path, default=DEFAULT_PARAMS, help="parameter file (default params.yaml)")
    parser.add_argument("--property", choices=PROPERTY_NAMES, required=True,
                        help="whose DFT value the surrogate learns")


def run(args: argparse.Namespace) -> int:
    # LightGBM: imported when the stage runs, not for `--help`
    from models.learners import DFTSurrogate, save_surrogate

    params = load_section(TrainParams, "train", args.params)
    prop = get_property(args.property)
    fit = params.fit
    # the stacked model's settings; with the stack off nothing reads the surrogate, which is fitted all the same
    config = fit.stack_config(prop) or replace(fit.stack.config, seed=fit.seed)
    dft = readers.read_dft(params.raw_dir, prop).rename(columns={prop.dft_column: "dft_value"})
    ref = reference_per_formula(dft.dropna(subset=["dft_value"]))
    descriptors = readers.read_descriptors(params.features_dir)
    t0 = time.perf_counter()
    try:
        # its six fits in train.workers forked processes, one LightGBM thread each (DFTSurrogate.fit)
        surrogate = DFTSurrogate(config).fit(descriptors, ref, workers=fit.workers)
    except ValueError as exc:
        raise MatshiftError(f"surrogate {prop.name}: {exc}") from exc
    out = params.surrogate_dir / prop.name
    with atomic_dir(out) as tmp:
        save_surrogate(surrogate, tmp)
    log.info("surrogate %s: DFT surrogate (DFT labels only) on %d formulas, out-of-fold MAE %.4f %s, in %.0f s -> %s%s",
             prop.name, len(ref), surrogate.mae_, prop.unit, time.perf_counter() - t0, out,
             "" if fit.stack.enabled else " (train.stack.enabled is false: nothing reads it)")
    return 0

