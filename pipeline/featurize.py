"""The ``featurize`` stage: data/raw/ -> data/features/ (contract in docs/ARCHITECTURE.md).

Crystal graphs for every DFT row with a structure (parallel over processes, failures
recorded), composition descriptors once per distinct formula of either domain, an index of
every entry and the failures. All outputs are built in a temporary directory and swapped in
together, so a killed run leaves the previous data/features/ intact.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import pandas as pd

from models import atomic_dir, write_json, write_parquet
from pipeline.config import check_engine, load_section
from pipeline.errors import MissingInputError

log = logging.getLogger(__name__)

# Kept here (and checked against the library in the tests) so that `matshift --help` does not
# import pymatgen: the featurizers are imported only when the stage runs.
DESCRIPTOR_SETS = ("magpie", "stoichiometry", "valence_orbital")
EMBEDDINGS = ("megnet16", "matscholar200")

DFT_COLUMNS = ("material_id", "formula", "structure")
EXPERIMENT_COLUMNS = ("exp_id", "formula")
FAILURE_COLUMNS = ("id", "formula", "step", "reason")


@dataclass(frozen=True)
class FeaturizeConfig:
    """``featurize`` section of params.yaml."""

    raw_dir: Path = Path("data/raw")
    out_dir: Path = Path("data/features")
    cutoff: float = 5.0  # Å
    embedding: str = "megnet16"
    n_gaussians: int = 40
    gaussian_width: float | None = None  # Å; None = cutoff / (n_gaussians - 1)
    symprec: float = 0.01  # Å
    angle_tolerance: float = 5.0  # degrees
    descriptor_sets: list[str] = field(default_factory=lambda: list(DESCRIPTOR_SETS))
    n_workers: int = 0  # 0 = all CPU cores (dask without scheduler_address: LocalCluster workers)
    chunk_size: int = 128
    engine: Literal["local", "dask"] = "local"
    scheduler_address: str | None = None  # dask only; None = start a LocalCluster

    def __post_init__(self) -> None:
        if not 0 < self.cutoff <= 12:
            raise ValueError(f"cutoff must be in (0, 12] Å, got {self.cutoff}")
        if self.embedding not in EMBEDDINGS:
            raise ValueError(f"embedding must be one of {sorted(EMBEDDINGS)}, got {self.embedding!r}")
        if self.n_gaussians < 2:
            raise ValueError(f"n_gaussians must be >= 2, got {self.n_gaussians}")
        if self.gaussian_width is not None and self.gaussian_width <= 0:
            raise ValueError(f"gaussian_width must be positive, got {self.gaussian_width}")
        if not 0 < self.symprec <= 1:
            raise ValueError(f"symprec must be in (0, 1] Å, got {self.symprec}")
        if not (self.angle_tolerance == -1 or 0 < self.angle_tolerance <= 30):
            raise ValueError(f"angle_tolerance must be -1 or in (0, 30] degrees, got {self.angle_tolerance}")
        bad = [s for s in self.descriptor_sets if s not in DESCRIPTOR_SETS]
        if bad or not self.descriptor_sets:
            raise ValueError(f"descriptor_sets must be a non-empty subset of {list(DESCRIPTOR_SETS)}, got {self.descriptor_sets}")
        if self.n_workers < 0:
            raise ValueError(f"n_workers must be >= 0, got {self.n_workers}")
        if self.chunk_size < 1:
            raise ValueError(f"chunk_size must be >= 1, got {self.chunk_size}")
        check_engine(self.engine, self.scheduler_address)


@dataclass(frozen=True)
class FeaturizeSummary:
    n_dft: int
    n_experiment: int
    n_graphs: int
    n_formulas: int
    n_failures: int
    seconds: float


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--params", type=Path, default=Path("params.yaml"), help="parameter file (default: params.yaml)")
    parser.add_argument("--raw-dir", type=Path, default=None, help="override featurize.raw_dir")
    parser.add_argument("--out-dir", type=Path, default=None, help="override featurize.out_dir")
    parser.add_argument("--workers", type=int, default=None, help="override featurize.n_workers (0 = all cores)")


def _read(path: Path, columns: tuple[str, ...]) -> pd.DataFrame:
    if not path.exists():
        raise MissingInputError(f"{path} does not exist; run `matshift fetch` first")
    try:
        frame = pd.read_parquet(path)
    except (OSError, ValueError) as exc:
        raise MissingInputError(f"cannot read {path}: {exc}") from exc
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise MissingInputError(f"{path} lacks column(s) {', '.join(missing)}; re-run `matshift fetch`")
    return frame


def featurize(cfg: FeaturizeConfig, *, progress: bool = True) -> FeaturizeSummary:
    """Run the stage with ``cfg``; writes the five files of data/features/."""
    from featurizers.composition import composition_descriptors
    from featurizers.crystal_graph import CRYSTAL_SYSTEMS, CrystalGraphFeaturizer, save_graphs

    start = time.perf_counter()
    dft = _read(cfg.raw_dir / "dft.parquet", DFT_COLUMNS)
    exp = _read(cfg.raw_dir / "experiment.parquet", EXPERIMENT_COLUMNS)
    featurizer = CrystalGraphFeaturizer(
        cutoff=cfg.cutoff,
        embedding=cfg.embedding,
        n_gaussians=cfg.n_gaussians,
        gaussian_width=cfg.gaussian_width,
        symprec=cfg.symprec,
        angle_tolerance=cfg.angle_tolerance,
        on_error="record",
    )
    n_workers = cfg.n_workers or os.cpu_count() or 1
    has_structure = dft["structure"].notna()
    items = list(zip(dft.loc[has_structure, "material_id"], dft.loc[has_structure, "structure"], strict=True))
    if cfg.engine == "local":
        log.info("featurizing %d structures on %d worker(s)", len(items), n_workers)
        batch = featurizer.featurize_many(
            items, n_workers=n_workers, chunk_size=cfg.chunk_size, progress=progress, as_data=False
        )
    else:
        from pipeline.engine import open_engine

        # same chunks, same per-chunk function, results consumed in chunk order: the output
        # is the local engine's, byte for byte (tests/test_engine.py)
        with open_engine(cfg.engine, n_workers=n_workers, scheduler_address=cfg.scheduler_address) as engine:
            log.info("featurizing %d structures on %s (%d worker(s))", len(items), cfg.engine, engine.n_workers)
            batch = featurizer.featurize_many(
                items, chunk_size=cfg.chunk_size, progress=progress, as_data=False, mapper=engine.map
            )

    formula_of = dict(zip(dft["material_id"], dft["formula"], strict=True))
    failures = [
        {"id": f.id, "formula": formula_of.get(f.id, ""), "step": f.step, "reason": f.reason}
        for f in batch.failures
    ]
    # graph kept on the input cell: recorded so the loss of cell-choice invariance is visible
    failures += [
        {"id": sid, "formula": formula_of.get(sid, ""), "step": "canonicalise", "reason": f"fallback: {note}"}
        for sid, note in batch.notes.items()
    ]

    entries = pd.concat(
        [
            pd.DataFrame({"id": dft["material_id"].astype(str), "domain": "dft", "formula": dft["formula"]}),
            pd.DataFrame({"id": exp["exp_id"].astype(str), "domain": "experiment", "formula": exp["formula"]}),
        ],
        ignore_index=True,
    )
    formulas = [f for f in entries["formula"].dropna().astype(str).unique()]
    desc = composition_descriptors(formulas, sets=cfg.descriptor_sets)
    failed_formula = {f.formula: f.reason for f in desc.failures}
    null_formula = entries["formula"].isna()
    for row in entries.itertuples(index=False):
        if isinstance(row.formula, str) and row.formula in failed_formula:
            failures.append({"id": row.id, "formula": row.formula, "step": "descriptor", "reason": failed_formula[row.formula]})
    for row in entries[null_formula].itertuples(index=False):
        failures.append({"id": row.id, "formula": "", "step": "descriptor", "reason": "formula is missing"})

    graphs = batch.graphs
    sg = {sid: g.spacegroup for sid, g in graphs.items()}
    cs = {sid: CRYSTAL_SYSTEMS[g.crystal_system] for sid, g in graphs.items()}
    index = entries.assign(
        formula=entries["formula"].fillna("").astype(str),
        has_graph=entries["id"].map(lambda i: i in graphs) & (entries["domain"] == "dft"),
    )
    is_dft = index["domain"] == "dft"
    index["spacegroup"] = [sg.get(i, 0) if d else 0 for i, d in zip(index["id"], is_dft, strict=True)]
    index["crystal_system"] = [cs.get(i, "") if d else "" for i, d in zip(index["id"], is_dft, strict=True)]
    index["spacegroup"] = index["spacegroup"].astype("int64")
    failure_frame = pd.DataFrame(failures, columns=list(FAILURE_COLUMNS)).astype(str)

    with atomic_dir(cfg.out_dir) as tmp:
        save_graphs(tmp / "graphs.pt", featurizer.pack_arrays(graphs))
        write_json(tmp / "graph_config.json", featurizer.config())
        write_parquet(tmp / "descriptors.parquet", desc.frame)
        write_parquet(tmp / "index.parquet", index[["id", "domain", "formula", "has_graph", "spacegroup", "crystal_system"]])
        write_parquet(tmp / "failures.parquet", failure_frame)
    summary = FeaturizeSummary(
        n_dft=len(dft),
        n_experiment=len(exp),
        n_graphs=len(graphs),
        n_formulas=len(desc.frame),
        n_failures=len(failure_frame),
        seconds=time.perf_counter() - start,
    )
    log.info("featurize: %s", dataclasses.asdict(summary))
    return summary


def run(args: argparse.Namespace) -> int:
    cfg = load_section(FeaturizeConfig, "featurize", args.params)
    overrides = {
        k: v
        for k, v in {"raw_dir": args.raw_dir, "out_dir": args.out_dir, "n_workers": args.workers}.items()
        if v is not None
    }
    if overrides:
        cfg = dataclasses.replace(cfg, **overrides)
    summary = featurize(cfg)
    log.info(
        "%d graphs, %d formulas with descriptors, %d failure rows -> %s (%.1f s)",
        summary.n_graphs, summary.n_formulas, summary.n_failures, cfg.out_dir, summary.seconds,
    )
    return 0
