"""Stage ``fetch``: read DFT and experimental sources into ``data/raw/``.

Outputs (contract in docs/ARCHITECTURE.md, rules in docs/DATA.md): ``dft.parquet`` (one
row per mp-id), ``experiment.parquet`` (one row per measurement), ``metal_class.parquet``
(one row per measured metal / non-metal class of a composition), ``rejected.parquet``
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
import json
import logging
import os
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from models import sha256_bytes, write_json, write_parquet
from pipeline.config import DEFAULT_PARAMS, load_section, to_dict
from pipeline.errors import MatshiftError
from pipeline.params.fetch import FetchParams

if TYPE_CHECKING:
    from pipeline.sources import Source
    from pipeline.sources.merge import FetchResult

log = logging.getLogger(__name__)

OUTPUTS = ("dft.parquet", "experiment.parquet", "metal_class.parquet", "rejected.parquet", "manifest.json")
MANIFEST_VERSION = 2


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--params", type=Path, default=DEFAULT_PARAMS, help="parameter file (default params.yaml)")
    parser.add_argument("--force", action="store_true", help="fetch even when the outputs are up to date")
    parser.add_argument(
        "--accept-changed", action="store_true",
        help="accept mirror files whose sha256 differs from the pinned one, and re-pin them",
    )


def build_sources(config: FetchParams, *, root: Path, accept_changed: bool, env: dict[str, str],
                  injected: dict[str, Any] | None = None) -> list[Source]:
    """Instantiate the configured sources; ``injected`` passes fake clients (tests)."""
    from pipeline.sources import get_source  # pymatgen, only when the stage runs

    injected = injected or {}
    return [
        get_source(name).from_config(config, root=root, env=env, accept_changed=accept_changed,
                                     **injected.get(name, {}))
        for name in config.sources
    ]


def params_digest(config: FetchParams) -> str:
    return sha256_bytes(json.dumps(to_dict(config), sort_keys=True).encode("utf-8"))


def is_up_to_date(out_dir: Path, fingerprints: dict[str, str] | None, digest: str) -> bool:
    if fingerprints is None or not all((out_dir / name).is_file() for name in OUTPUTS):
        return False
    try:
        manifest = json.loads((out_dir / "manifest.json").read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return False
    return (
        manifest.get("version") == MANIFEST_VERSION
        and manifest.get("params_digest") == digest
        and manifest.get("input_fingerprints") == fingerprints
    )


def fetch(config: FetchParams, *, root: Path, force: bool = False, accept_changed: bool = False,
          env: dict[str, str] | None = None, injected: dict[str, Any] | None = None) -> FetchResult | None:
    """Run the stage; returns None when the outputs were already up to date."""
    # pymatgen parsing: imported when the stage runs, not for `--help`
    from pipeline.sources.merge import manifest, merge_tables

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
    digest = params_digest(config)
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
    result = merge_tables(tables, workers=config.workers, gap_tol=config.gap_conflict_tol,
                          energy_tol=config.energy_conflict_tol, exp_conflict_tol=config.spread_tolerances(),
                          metal_gap_tol=config.metal_gap_conflict_tol)
    for name, c in result.counts.items():
        if c.read != c.kept + c.rejected:
            raise MatshiftError(f"internal accounting error for {name}: read {c.read} != kept {c.kept} + rejected {c.rejected}")
    meta = manifest(result, tables, version=MANIFEST_VERSION, params=to_dict(config), digest=digest, fingerprints=prints,
                    read_seconds=read_s, total_seconds=time.perf_counter() - started)
    write_parquet(out_dir / "dft.parquet", result.dft)
    write_parquet(out_dir / "experiment.parquet", result.experiment)
    write_parquet(out_dir / "metal_class.parquet", result.metal_class)
    write_parquet(out_dir / "rejected.parquet", result.rejected)
    write_json(out_dir / "manifest.json", meta)  # last: its presence marks a complete fetch
    log.info(
        "fetch: %d materials (%d with structure), %d measurements, %d metal/non-metal classes, %d rejected rows "
        "-> %s (%.1f s)", len(result.dft), meta["dft"]["with_structure"], len(result.experiment),
        len(result.metal_class), len(result.rejected), out_dir, meta["seconds"]["total"],
    )
    conflicts = result.metal_conflicts
    if conflicts.get("labelled_metal_with_measured_gap") or conflicts.get("formulas_with_both_classes"):
        log.warning("fetch: metal classes: %d formula(s) labelled metal with a measured gap above %g eV (%s), "
                    "%d labelled both metal and non-metal; see manifest.json (left out of the metal classifier)",
                    conflicts["labelled_metal_with_measured_gap"], conflicts["gap_tolerance"],
                    ", ".join(list(conflicts["largest"])[:5]), conflicts["formulas_with_both_classes"])
    return result


def run(args: argparse.Namespace) -> int:
    config = load_section(FetchParams, "fetch", args.params)
    root = Path(args.params).resolve().parent
    # the one place the environment is read: MP_API_KEY, handed to the mp_api source only
    env = {"MP_API_KEY": os.environ["MP_API_KEY"]} if "mp_api" in config.sources and os.environ.get("MP_API_KEY") else {}
    fetch(config, root=root, force=args.force, accept_changed=args.accept_changed, env=env)
    return 0
