"""Reading the files between stages, once and the same way for every stage.

Every stage reads its upstream outputs here (the column contract is docs/ARCHITECTURE.md): a
missing, truncated or corrupt file, a missing column, and a NaN or inf where a number is
required are each a :class:`~pipeline.errors.MissingInputError` or
:class:`~pipeline.errors.MatshiftError` naming the file and saying which stage to rerun,
never a traceback and never a silently wrong number.

The frames are handed to the library as they are: which polymorph stands for a formula is
:func:`models.properties.choose_polymorphs`'s business, not a reader's.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow.parquet as pq

from models.properties import STABILITY, STABILITY_SOURCE, Property
from pipeline.errors import MatshiftError, MissingInputError

log = logging.getLogger(__name__)

RERUN = "run the upstream stage first (dvc repro)"


def read_table(path: Path, columns: Sequence[str] = (), *, rerun: str = RERUN,
               only: Sequence[str] | None = None) -> pd.DataFrame:
    """Read a parquet output; a missing or unreadable file or a missing column is a :class:`MissingInputError`.

    ``only``: read just ``columns`` and those of ``only`` the file has (DFT tables carry
    structures as JSON: reading them costs ``matshift predict`` most of its start-up).
    """
    if not path.exists():
        raise MissingInputError(f"{path} does not exist; {rerun}")
    try:
        if only is None:
            frame = pd.read_parquet(path)
        else:
            names = pq.read_schema(path).names
            frame = pd.read_parquet(path, columns=[c for c in dict.fromkeys([*columns, *only]) if c in names])
    except (OSError, ValueError) as exc:  # missing, or truncated/corrupt (pyarrow's ArrowInvalid is a ValueError)
        raise MissingInputError(f"cannot read {path}: {exc}; {rerun}") from exc
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise MissingInputError(f"{path} lacks column(s) {', '.join(missing)} (see docs/ARCHITECTURE.md); {rerun}")
    return frame


def refuse_non_finite(frame: pd.DataFrame, columns: Sequence[str], path: Path, *, allow_nan: bool = False) -> None:
    """Upstream stages never write NaN/inf where a number is required: such a file is not used silently."""
    for col in columns:
        values = pd.to_numeric(frame[col], errors="coerce").to_numpy(dtype=float)
        bad = np.isinf(values) if allow_nan else ~np.isfinite(values)
        if bad.any():
            row = frame.loc[bad].iloc[0]
            key = row.get("formula", row.name)
            raise MatshiftError(f"{path}: column {col!r} holds {int(bad.sum())} non-finite value(s) (e.g. {key!r}: "
                                f"{values[bad][0]}); rerun the upstream stage (dvc repro)")


def read_dft(raw_dir: Path, prop: Property, extra: Sequence[str] = ()) -> pd.DataFrame:
    """Read the DFT entries with ``material_id``, ``formula``, the property's DFT column, ``stability`` and ``extra`` columns.

    ``stability`` (the polymorph rank) is the entry's formation energy per atom. Columns of
    ``extra`` the file lacks are skipped; NaN means unknown, inf is refused.
    """
    path = raw_dir / "dft.parquet"
    frame = read_table(path, ["material_id", "formula", prop.dft_column, STABILITY_SOURCE], only=extra)
    columns = list(dict.fromkeys(["material_id", "formula", prop.dft_column, STABILITY_SOURCE,
                                  *(c for c in extra if c in frame)]))
    frame = frame[columns].assign(**{STABILITY: frame[STABILITY_SOURCE]})
    refuse_non_finite(frame, [prop.dft_column], path, allow_nan=True)
    return frame


def read_structures(raw_dir: Path, material_ids: Sequence[str]) -> pd.Series:
    """``material_id`` -> structure (pymatgen JSON) of those of ``material_ids`` whose DFT entry has one."""
    frame = read_table(raw_dir / "dft.parquet", ["material_id"], only=["structure"])
    if "structure" not in frame:
        return pd.Series(dtype=object)
    frame = frame[frame["material_id"].isin(set(material_ids)) & frame["structure"].notna()]
    return frame.drop_duplicates("material_id").set_index("material_id")["structure"]


def read_measurements(raw_dir: Path, prop: Property) -> pd.DataFrame:
    """Read the measurements of ``prop``: ``exp_id``, ``formula``, ``value`` (finite), ``property``."""
    path = raw_dir / "experiment.parquet"
    exp = read_table(path, ["exp_id", "formula", "property", "value"])
    exp = exp[exp["property"] == prop.name].reset_index(drop=True)
    if exp.empty:
        raise MissingInputError(f"{path} holds no {prop.name} measurements")
    refuse_non_finite(exp, ["value"], path)
    return exp


def read_descriptors(features_dir: Path) -> pd.DataFrame:
    """``descriptors.parquet``: one row per formula (unique), finite descriptor columns."""
    path = features_dir / "descriptors.parquet"
    desc = read_table(path, ["formula"])
    if desc["formula"].duplicated().any():
        raise MatshiftError(f"{path} repeats formula {desc.loc[desc['formula'].duplicated(), 'formula'].iloc[0]!r}")
    cols = [c for c in desc.columns if c != "formula"]
    bad = ~np.isfinite(desc[cols].to_numpy(np.float64)).all(axis=1)
    if bad.any():  # the featurize contract: no NaN; a descriptor NaN would silently poison every cost
        raise MatshiftError(f"{path} holds non-finite descriptors for {int(bad.sum())} formula(s), e.g. "
                            f"{desc.loc[bad, 'formula'].iloc[0]!r}; rerun the featurize stage (dvc repro)")
    return desc


def read_index(features_dir: Path) -> pd.DataFrame:
    """``index.parquet`` keyed by entry ``id`` (``domain``, ``crystal_system``, ``has_graph``)."""
    index = read_table(features_dir / "index.parquet", ["id", "domain", "crystal_system"])
    return index.drop_duplicates("id").set_index("id")


def read_graphs(features_dir: Path, *, hint: str) -> dict[str, Any]:
    """Crystal graphs by material id (``graphs.pt``); ``hint`` says how to do without them."""
    from featurizers.crystal_graph import load_graphs  # torch + PyG, only when graphs are used

    path = features_dir / "graphs.pt"
    if not path.exists():
        raise MissingInputError(f"{path} is missing; run the featurize stage or {hint}")
    try:
        return load_graphs(path)
    except Exception as exc:  # torch raises many types for a truncated/corrupt file (re-raised, chained)
        raise MissingInputError(f"cannot read {path} ({type(exc).__name__}: {str(exc)[:200]}); rerun the "
                                f"featurize stage (dvc repro) or {hint}") from exc


def read_alignment(aligned_dir: Path) -> dict[str, Any]:
    """``align.json``; an alignment that did not converge is refused unless align allowed it.

    The align stage itself refuses to write an unconverged plan unless ``align.allow_unconverged``
    is true, and records that choice in ``align.json`` (``params.allow_unconverged``); readers
    check again so that a hand-made or stale alignment is never used silently.
    """
    path = aligned_dir / "align.json"
    try:
        diag = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise MissingInputError(f"{path} is missing; run `matshift align` (dvc repro) first") from exc
    except (OSError, ValueError) as exc:
        raise MissingInputError(f"cannot read {path}: {exc}; rerun `matshift align` (dvc repro)") from exc
    if not isinstance(diag, dict) or not isinstance(diag.get("converged"), bool):
        raise MissingInputError(f"{path} has no 'converged' flag; rerun `matshift align` (dvc repro)")
    if not diag["converged"]:
        if (diag.get("params") or {}).get("allow_unconverged") is not True:
            raise MatshiftError(f"{path}: the alignment did not converge ({diag.get('iterations')} iterations) and "
                                "align.allow_unconverged is not set; fix the alignment (align.max_iter, align.reg) "
                                "rather than training on it")
        log.warning("%s: training on an alignment that did NOT converge (align.allow_unconverged: true)", path)
    return diag


def read_domain_tables(raw_dir: Path, features_dir: Path, prop: Property) -> tuple[pd.DataFrame, ...]:
    """Read what aligning ``prop``'s DFT entries onto its measurements needs: DFT, measurements, descriptors, index.

    The tables go to :func:`models.transport.domains_from_tables`.
    """
    return (read_table(raw_dir / "dft.parquet", ["material_id", "formula", prop.dft_column]),
            read_table(raw_dir / "experiment.parquet", ["exp_id", "formula", "property", "value"]),
            read_descriptors(features_dir),
            read_table(features_dir / "index.parquet", ["id", "domain", "crystal_system"]))


__all__ = [
    "read_alignment",
    "read_descriptors",
    "read_dft",
    "read_domain_tables",
    "read_graphs",
    "read_index",
    "read_measurements",
    "read_table",
    "refuse_non_finite",
]
