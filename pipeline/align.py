"""``matshift align --property P``: optimal transport from DFT entries to measurements.

Reads ``data/raw/{dft,experiment}.parquet`` and ``data/features/{descriptors,index}.parquet``,
aligns the DFT entries that have a value for the property (source) onto the measurements of
that property (target) with the ``align`` section's :class:`~models.transport.AlignConfig`,
and writes ``data/aligned/<property>/`` as documented in docs/ARCHITECTURE.md. The descriptor
scaler is fitted on exactly what is aligned; evaluation calls the library per fold instead.
A plan that did not converge is an error unless ``align.allow_unconverged`` is true; either
way ``align.json`` carries the ``converged`` flag (the iteration met ``tol`` and the solver's
certificate holds) and the ``certificate`` (first-order residual, mass outside the support).
"""

from __future__ import annotations

import argparse
import functools
import logging
import os
import time
from contextlib import ExitStack
from pathlib import Path

import pandas as pd
import scipy.sparse as sp

from models import atomic_dir, write_json
from models.properties import PROPERTY_NAMES, Property, get_property
from models.transport import (
    AlignmentError,
    AlignmentResult,
    Domain,
    NeuralAlignConfig,
    align,
    alignment_outputs,
    block_solver,
    distances_before_after,
    domains_from_tables,
    transport_distance,
)
from pipeline import figures, readers
from pipeline.config import DEFAULT_PARAMS, load_section, to_dict
from pipeline.engine import open_engine
from pipeline.errors import MatshiftError
from pipeline.params.align import AlignParams

log = logging.getLogger(__name__)

NEURAL_MAP_DIR = "neural_map"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--params", type=Path, default=DEFAULT_PARAMS, help="parameter file (default params.yaml)")
    parser.add_argument("--property", required=True, choices=PROPERTY_NAMES, help="property to align")
    parser.add_argument("--show-outliers", type=int, default=0, metavar="N",
                        help="after aligning, print the N least-transported measurements (also in outliers.csv)")


def run(args: argparse.Namespace) -> int:
    n_show = getattr(args, "show_outliers", 0)
    if n_show < 0:
        raise MatshiftError(f"--show-outliers must be >= 0, got {n_show}")
    params = load_section(AlignParams, "align", args.params)
    prop = get_property(args.property)
    out = params.out_dir / prop.name
    report = align_property(params, prop, out)
    log.info("aligned %s: %d DFT x %d experiment entries, mass moved %.3f, OT distance %.4g -> %.4g, %s",
             prop.name, report["n_source"], report["n_target"], report["mass_moved"],
             report["ot_distance_before"], report["ot_distance_after"],
             _convergence(report))
    if n_show > 0:
        table = pd.read_csv(out / "outliers.csv").head(n_show)
        with pd.option_context("display.width", 200, "display.max_columns", 20):
            print(table.to_string(index=False, float_format=lambda v: f"{v:.3f}"))
    return 0


def _convergence(report: dict) -> str:
    cert = report.get("certificate")
    word = "converged" if report["converged"] else "NOT converged"
    if not cert:
        return word
    return f"{word} (residual {cert['residual']:.1e}, mass outside the support {cert['pruned_mass'] + cert['truncation_bound']:.1e})"


def align_property(params: AlignParams, prop: Property, out: Path) -> dict:
    """Run the alignment for ``prop`` and write ``out`` atomically; returns the diagnostics."""
    t0 = time.perf_counter()
    source, target, counts = domains(params.raw_dir, params.features_dir, prop)
    config = params.config.for_property(prop)
    with ExitStack() as stack:
        solve, distance = align, transport_distance
        if params.split_blocks:
            engine = stack.enter_context(open_engine(params.engine, n_workers=params.n_workers or os.cpu_count() or 1,
                                                     scheduler_address=params.scheduler_address))
            # a few pieces per worker evens out blocks of unequal size
            solver = block_solver(config.method, mapper=engine.map, n_pieces=4 * engine.n_workers)
            solve = functools.partial(align, solver=solver)
            distance = functools.partial(transport_distance, solver=solver)
        try:
            res = solve(source, target, **config.kwargs())
        except AlignmentError as exc:
            raise MatshiftError(f"align {prop.name}: {exc}") from exc
        if not res.converged and not params.allow_unconverged:
            raise MatshiftError(
                f"align {prop.name}: method {config.method!r} did not converge in {res.n_iter} iterations "
                f"(info {res.info}); raise align.max_iter or align.reg, or set align.allow_unconverged: true"
            )
        before, after = distances_before_after(res, source, target, config, distance=distance)
    outputs = alignment_outputs(res, source, target, config, before=before, after=after,
                                min_pair_mass=params.min_pair_mass)
    diag = {"property": prop.name, **outputs.diagnostics, "seconds": time.perf_counter() - t0, "dropped": counts,
            "params": to_dict(params)}
    with atomic_dir(out) as tmp:
        outputs.pairs.to_parquet(tmp / "pairs.parquet", index=False)
        sp.save_npz(tmp / "plan.npz", sp.coo_matrix(res.plan))
        outputs.dft.to_parquet(tmp / "dft.parquet", index=False)
        outputs.experiment.to_parquet(tmp / "experiment.parquet", index=False)
        write_json(tmp / "corrections.json", {"property": prop.name, "used": config.energy_additivity,
                                              "corrections_ev_per_atom": outputs.corrections})
        write_json(tmp / "align.json", diag)
        outputs.outliers.to_csv(tmp / "outliers.csv", index=False, float_format="%.6g")
        figures.draw_alignment(tmp, res, source, target, prop=prop.name, unit=prop.unit)
        _save_map(res, tmp / NEURAL_MAP_DIR, params, config.options.neural, prop)
    return diag


def domains(raw_dir: Path, features_dir: Path, prop: Property) -> tuple[Domain, Domain, dict[str, int]]:
    """Source and target domains of ``prop`` from the stage's input files (a bad input is a clear error)."""
    try:
        return domains_from_tables(*readers.read_domain_tables(raw_dir, features_dir, prop), prop)
    except ValueError as exc:
        raise MatshiftError(str(exc)) from exc


def _save_map(res: AlignmentResult, directory: Path, params: AlignParams, neural: NeuralAlignConfig | None,
              prop: Property) -> None:
    """Save the neural formulation's fitted map: it calibrates DFT entries never aligned (matshift predict)."""
    if res.artifact is None:
        return
    columns = [c for c in readers.read_descriptors(params.features_dir).columns if c != "formula"]
    res.artifact.save(directory, extra={"property": prop.name, "unit": prop.unit, "descriptor_columns": columns,
                                        "params": to_dict(neural)})
