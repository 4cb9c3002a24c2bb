"""``matshift featurize``: data/raw/ -> data/features/ (contract in docs/ARCHITECTURE.md).

Crystal graphs for every DFT row with a structure (parallel over processes, failures
recorded), composition descriptors once per distinct formula of either domain and of the
measured metal / non-metal classes, an index of
every entry and the failures (:func:`featurizers.tables.feature_tables`). All outputs are built
in a temporary directory and swapped in together, so a killed run leaves the previous
data/features/ intact.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import os
import time
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path

from models import atomic_dir, write_json, write_parquet
from models.progress import showing
from pipeline import readers
from pipeline.config import DEFAULT_PARAMS, load_section
from pipeline.engine import open_engine
from pipeline.params.featurize import FeaturizeParams

log = logging.getLogger(__name__)

RERUN = "run `matshift fetch` first"


@dataclass(frozen=True)
class FeaturizeSummary:
    n_dft: int
    n_experiment: int
    n_graphs: int
    n_formulas: int
    n_failures: int
    seconds: float


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--params", type=Path, default=DEFAULT_PARAMS, help="parameter file (default: params.yaml)")
    parser.add_argument("--raw-dir", type=Path, default=None, help="override featurize.raw_dir")
    parser.add_argument("--out-dir", type=Path, default=None, help="override featurize.out_dir")
    parser.add_argument("--workers", type=int, default=None, help="override featurize.n_workers (0 = all cores)")


def featurize(cfg: FeaturizeParams, *, progress: bool = True) -> FeaturizeSummary:
    """Run the stage with ``cfg``; writes the five files of data/features/."""
    # pymatgen and matminer only when the stage runs (`matshift --help` stays fast)
    from featurizers.crystal_graph import save_graphs
    from featurizers.tables import DFT_COLUMNS, EXPERIMENT_COLUMNS, feature_tables

    start = time.perf_counter()
    dft = readers.read_table(cfg.raw_dir / "dft.parquet", DFT_COLUMNS, rerun=RERUN)
    exp = readers.read_table(cfg.raw_dir / "experiment.parquet", EXPERIMENT_COLUMNS, rerun=RERUN)
    classes = None
    if (cfg.raw_dir / "metal_class.parquet").is_file():
        classes = readers.read_table(cfg.raw_dir / "metal_class.parquet", ["exp_id", "formula"], rerun=RERUN)
    else:  # a data/raw/ written before the metal classes existed (or by hand): no metal stage inputs
        log.warning("featurize: %s has no metal_class.parquet; the metal stage will lack descriptors "
                    "(rerun `matshift fetch`)", cfg.raw_dir)
    n_workers = cfg.n_workers or os.cpu_count() or 1
    with ExitStack() as stack:
        mapper = None
        if cfg.engine != "local":
            # same chunks, same per-chunk function, results consumed in chunk order: the output
            # is the local engine's, byte for byte (tests/pipeline/test_engine.py)
            engine = stack.enter_context(open_engine(cfg.engine, n_workers=n_workers,
                                                     scheduler_address=cfg.scheduler_address))
            mapper, n_workers = engine.map, engine.n_workers
        log.info("featurizing %d structures on %s (%d worker(s))", int(dft["structure"].notna().sum()), cfg.engine,
                 n_workers)
        tables = feature_tables(dft, exp, graph=cfg.graph, descriptor_sets=cfg.descriptor_sets, n_workers=n_workers,
                                chunk_size=cfg.chunk_size, mapper=mapper, progress=progress,
                                classes=classes)
    with atomic_dir(cfg.out_dir) as tmp:
        save_graphs(tmp / "graphs.pt", tables.featurizer.pack_arrays(tables.graphs))
        write_json(tmp / "graph_config.json", tables.featurizer.config())
        write_parquet(tmp / "descriptors.parquet", tables.descriptors)
        write_parquet(tmp / "index.parquet", tables.index)
        write_parquet(tmp / "failures.parquet", tables.failures)
    summary = FeaturizeSummary(n_dft=len(dft), n_experiment=len(exp), n_graphs=len(tables.graphs),
                               n_formulas=len(tables.descriptors), n_failures=len(tables.failures),
                               seconds=time.perf_counter() - start)
    log.info("featurize: %s", dataclasses.asdict(summary))
    return summary


def run(args: argparse.Namespace) -> int:
    cfg = load_section(FeaturizeParams, "featurize", args.params)
    overrides = {k: v for k, v in {"raw_dir": args.raw_dir, "out_dir": args.out_dir, "n_workers": args.workers}.items()
                 if v is not None}
    if overrides:
        cfg = dataclasses.replace(cfg, **overrides)
    summary = featurize(cfg, progress=showing())
    log.info("%d graphs, %d formulas with descriptors, %d failure rows -> %s (%.1f s)",
             summary.n_graphs, summary.n_formulas, summary.n_failures, cfg.out_dir, summary.seconds)
    return 0
