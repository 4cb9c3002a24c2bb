"""Stage ``fetch``: read DFT and experimental sources into ``data/raw/``.

Outputs (contract in docs/ARCHITECTURE.md, rules in docs/DATA.md): ``dft.parquet`` (one
row per mp-id), ``experiment.parquet`` (one row per measurement), ``rejected.parquet``
(every input row not kept, with its reason) and ``manifest.json`` (per table: origin,
path, sha256, rows read / kept / rejected, retrieval time; conflicts; timings).

Policies: partial occupancy is kept with ``partial_occupancy = True``; label-only mp-ids,
unparsable formulas/structures, unknown elements, non-finite or impossible values and
exact experimental duplicates are rejected with a reason; repeated measurements of one
composition with different values are kept as separate rows and summarised in the
manifest.

A rerun is skipped ("up to date") when every source can be fingerprinted without a
download (the mirror) and the fingerprints and the ``fetch`` params equal those in the
existing manifest and all outputs exist. ``--force`` bypasses that check.

The stage reads ``MP_API_KEY`` from the environment (only when ``mp_api`` is a source)
and passes it to the source; the key never reaches the log, the manifest or an output.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from models import write_json, write_parquet
from pipeline.config import load_section, to_dict
from pipeline.errors import MatshiftError

if TYPE_CHECKING:  # the sources pull in pymatgen and pandas: imported when the stage runs
    from pipeline.sources import Source
    from pipeline.sources.merge import FetchResult

log = logging.getLogger(__name__)

OUTPUTS = ("dft.parquet", "experiment.parquet", "rejected.parquet", "manifest.json")
MANIFEST_VERSION = 1


@dataclass(frozen=True)
class MPApiConfig:
    """Query of the Materials Project API (source ``mp_api``)."""

    elements: list[str] = field(default_factory=list)
    max_e_above_hull: float = 0.1
    limit: int = 1000

    def __post_init__(self) -> None:
        if self.max_e_above_hull < 0:
            raise ValueError(f"mp_api.max_e_above_hull must be >= 0, got {self.max_e_above_hull}")
        if self.limit < 1:
            raise ValueError(f"mp_api.limit must be >= 1, got {self.limit}")


@dataclass(frozen=True)
class FetchConfig:
    """The ``fetch`` section of params.yaml."""

    mirror: Path = Path("../shared/datasets")
    sources: list[str] = field(default_factory=lambda: ["mirror"])
    out_dir: Path = Path("data/raw")
    workers: int = 2
    gap_conflict_tol: float = 0.01
    energy_conflict_tol: float = 0.01
    exp_gap_spread_tol: float = 0.2
    exp_enthalpy_spread_tol: float = 0.05
    mp_api: MPApiConfig = field(default_factory=MPApiConfig)

    def __post_init__(self) -> None:
        if not self.sources:
            raise ValueError("sources must name at least one source")
        if len(set(self.sources)) != len(self.sources):
            raise ValueError(f"sources has duplicates: {self.sources}")
        if self.workers < 1:
            raise ValueError(f"workers must be >= 1, got {self.workers}")
        for name in ("gap_conflict_tol", "energy_conflict_tol", "exp_gap_spread_tol", "exp_enthalpy_spread_tol"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--params", type=Path, default=Path("params.yaml"), help="parameter file (default params.yaml)")
    parser.add_argument("--force", action="store_true", help="fetch even when the outputs are up to date")
    parser.add_argument(
        "--accept-changed", action="store_true",
        help="accept mirror files whose sha256 differs from the pinned one, and re-pin them",
    )


def build_sources(config: FetchConfig, *, root: Path, accept_changed: bool, env: dict[str, str],
                  injected: dict[str, Any] | None = None) -> list[Source]:
    """Instantiate the configured sources; ``injected`` passes fake clients (tests)."""
    from pipeline.sources import get_source

    injected = injected or {}
    return [
        get_source(name).from_config(config, root=root, env=env, accept_changed=accept_changed,
                                     **injected.get(name, {}))
        for name in config.sources
    ]


def _params_digest(config: FetchConfig) -> str:
    return hashlib.sha256(json.dumps(to_dict(config), sort_keys=True).encode("utf-8")).hexdigest()


def is_up_to_date(out_dir: Path, fingerprints: dict[str, str] | None, params_digest: str) -> bool:
    if fingerprints is None or not all((out_dir / name).is_file() for name in OUTPUTS):
        return False
    try:
        manifest = json.loads((out_dir / "manifest.json").read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return False
    return (
        manifest.get("version") == MANIFEST_VERSION
        and manifest.get("params_digest") == params_digest
        and manifest.get("input_fingerprints") == fingerprints
    )


def fetch(config: FetchConfig, *, root: Path, force: bool = False, accept_changed: bool = False,
          env: dict[str, str] | None = None, injected: dict[str, Any] | None = None) -> FetchResult | None:
    """Run the stage; returns None when the outputs were already up to date."""
    from pipeline.sources.merge import merge_tables

    started = time.perf_counter()
    out_dir = config.out_dir if config.out_dir.is_absolute() else root / config.out_dir
    sources = build_sources(config, root=root, accept_changed=accept_changed, env=env or {}, injected=injected)
    prints: dict[str, str] | None = {}
    for source in sources:
        fp = source.fingerprint()
        if fp is None or prints is None:
            prints = None
        else:
            prints.update({f"{source.name}:{k}": v for k, v in fp.items()})
    digest = _params_digest(config)
    if not force and is_up_to_date(out_dir, prints, digest):
        log.info("fetch: %s is up to date (same source checksums and params); nothing to do", out_dir)
        return None

    tables = []
    for source in sources:
        log.info("fetch: reading source %s", source.name)
        tables.extend(source.tables())
    names = [t.name for t in tables]
    if len(set(names)) != len(names):
        raise MatshiftError(f"two sources produced tables with the same name: {names}")
    read_s = time.perf_counter() - started
    result = merge_tables(
        tables, workers=config.workers, gap_tol=config.gap_conflict_tol, energy_tol=config.energy_conflict_tol,
        exp_conflict_tol={"band_gap": config.exp_gap_spread_tol, "formation_enthalpy": config.exp_enthalpy_spread_tol},
    )
    for name, c in result.counts.items():
        if c.read != c.kept + c.rejected:
            raise MatshiftError(f"internal accounting error for {name}: read {c.read} != kept {c.kept} + rejected {c.rejected}")

    dft = result.dft
    manifest = {
        "version": MANIFEST_VERSION,
        "params_digest": digest,
        "params": to_dict(config),
        "input_fingerprints": prints,
        "sources": {
            t.name: {
                "origin": t.origin,
                "path": t.path,
                "sha256": t.sha256,
                "kind": t.kind,
                "retrieved_at": t.retrieved_at,
                "rows_read": result.counts[t.name].read,
                "rows_kept": result.counts[t.name].kept,
                "rows_rejected": result.counts[t.name].rejected,
                "rejected_reasons": dict(result.counts[t.name].reasons.most_common()),
                "notes": t.notes,
            }
            for t in tables
        },
        "dft": {
            "materials": len(dft),
            "with_structure": int(dft["structure"].notna().sum()),
            "with_structure_and_band_gap_pbe": int((dft["structure"].notna() & dft["band_gap_pbe"].notna()).sum()),
            "with_structure_and_formation_energy": int(
                (dft["structure"].notna() & dft["formation_energy_per_atom"].notna()).sum()),
            "partial_occupancy": int(dft["partial_occupancy"].sum()),
            **{f"with_{c}": int(dft[c].notna().sum()) for c in
               ("band_gap_pbe", "band_gap_hse", "band_gap_gllb_sc", "band_gap_scan", "formation_energy_per_atom", "e_above_hull")},
            "conflicts": result.dft_conflicts,
            "structure_fallbacks": result.structure_fallbacks,
        },
        "experiment": {
            "rows": len(result.experiment),
            "rows_per_property": {k: int(v) for k, v in result.experiment["property"].value_counts().sort_index().items()},
            "conflicts": result.experiment_conflicts,
        },
        "rejected": len(result.rejected),
        "seconds": {"read": round(read_s, 2), "total": round(time.perf_counter() - started, 2)},
    }
    write_parquet(out_dir / "dft.parquet", dft)
    write_parquet(out_dir / "experiment.parquet", result.experiment)
    write_parquet(out_dir / "rejected.parquet", result.rejected)
    write_json(out_dir / "manifest.json", manifest)  # last: its presence marks a complete fetch
    log.info(
        "fetch: %d materials (%d with structure), %d measurements, %d rejected rows -> %s (%.1f s)",
        len(dft), manifest["dft"]["with_structure"], len(result.experiment), len(result.rejected), out_dir,
        manifest["seconds"]["total"],
    )
    return result


def run(args: argparse.Namespace) -> int:
    config = load_section(FetchConfig, "fetch", args.params)
    root = Path(args.params).resolve().parent
    env = {"MP_API_KEY": os.environ["MP_API_KEY"]} if "mp_api" in config.sources and os.environ.get("MP_API_KEY") else {}
    fetch(config, root=root, force=args.force, accept_changed=args.accept_changed, env=env)
    return 0
