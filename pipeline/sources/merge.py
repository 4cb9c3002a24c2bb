"""Validate raw source tables and merge them into the fetch stage's three tables.

Merge rules for ``dft.parquet`` (one row per mp-id), applied in the order the tables come
(sources in ``fetch.sources`` order; within the mirror: flla_2015, dielectric_constant,
elastic_tensor, piezoelectric_tensor, megnet_gappbe, megnet_e_form,
multifidelity_band_gaps, mp_non_metals_band_gap):

* **structure** -- the first table holding a parsable structure for the mp-id wins (the
  matminer files come first, and of them flla_2015 stores the exact ``as_dict``);
* **formula** -- the structure's reduced formula; without a structure, the first stated
  composition. A stated composition that disagrees with the chosen structure is a conflict
  (counted; the structure wins);
* **labels** -- per column, the first table with a value wins, so a label comes from the
  same file as the structure whenever that file has it (same calculation); later values
  that differ by more than the tolerance are counted as conflicts per pair of tables;
* **label-only mp-ids** -- an mp-id with neither a structure nor a composition in any
  table cannot be used by any model: all its rows go to ``rejected.parquet``.

Every input row is either *kept* (its mp-id / measurement is in the output) or rejected
with a reason; :class:`FetchResult` carries the per-table counts that go to the manifest.

Experimental rows: an exact duplicate (same table, same formula as written, same value)
is rejected as a duplicate of the first; the same reduced formula measured with different
values stays as separate rows and is reported in ``experiment_conflicts``.
"""

from __future__ import annotations

import math
import re
from collections import Counter, defaultdict
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import pandas as pd

from models.progress import bar as progress_bar
from models.properties import PROPERTIES, metal_class_conflicts
from pipeline.sources.base import DftRow, SourceTable
from pipeline.sources.records import (
    DFT_LABELS,
    ParsedStructure,
    Rejection,
    RowError,
    check_class,
    check_label,
    check_mp_id,
    formula_key,
    parse_float,
    parse_structure_task,
    truncate,
)

DFT_COLUMNS = [
    "material_id", "formula", "structure", *DFT_LABELS[:4], "formation_energy_per_atom",
    "e_above_hull", "nsites", "partial_occupancy", "source",
]
EXP_COLUMNS = ["exp_id", "formula_raw", "formula", "property", "value", "unit", "source"]
#: ``metal_class.parquet``: measured metal (1) / non-metal (0) classes of compositions.
METAL_COLUMNS = ["exp_id", "formula_raw", "formula", "is_metal", "source"]
#: Experimental rows whose ``property`` is a class, not a value: they go to ``metal_class.parquet``.
CLASS_PROPERTY = "is_metal"
REJECTED_COLUMNS = ["source", "row", "id", "reason", "content"]
UNITS = {**{p.name: p.unit for p in PROPERTIES.values()}, CLASS_PROPERTY: "class"}
LABEL_ONLY_REASON = "labels only: no structure or composition for this mp-id in any source"


@dataclass
class TableCounts:
    read: int = 0
    kept: int = 0
    rejected: int = 0
    reasons: Counter = field(default_factory=Counter)


@dataclass
class FetchResult:
    dft: pd.DataFrame
    experiment: pd.DataFrame
    rejected: pd.DataFrame
    counts: dict[str, TableCounts]
    dft_conflicts: dict[str, Any]
    experiment_conflicts: dict[str, Any]
    structure_fallbacks: dict[str, int]
    metal_class: pd.DataFrame = field(default_factory=lambda: pd.DataFrame(columns=METAL_COLUMNS))
    metal_conflicts: dict[str, Any] = field(default_factory=dict)


def _reason_kind(reason: str) -> str:
    """Reason text without row-specific details (quoted text, numbers), for the summary."""
    text = re.sub(r"'[^']*'|\"[^\"]*\"", "'...'", reason.split(" (")[0] if reason.startswith("unparsable structure") else reason)
    text = re.sub(r"-?\d+(\.\d+)?(e-?\d+)?", "N", text)
    return text if len(text) <= 120 else text[:120] + "..."


def parse_structures(
    rows: Sequence[DftRow], *, workers: int, meanwhile: Callable[[], object] | None = None, desc: str = "structures"
) -> list[ParsedStructure | str]:
    """Parse the structures of ``rows`` (with a process pool when workers > 1).

    ``meanwhile`` runs in this process while the pool works (the merge uses it to parse
    the stated compositions), so the main process is not idle.
    """
    if meanwhile is None:
        meanwhile = lambda: None  # noqa: E731
    tasks = [(r.structure, r.structure_fmt, r.fallback, r.fallback_fmt) for r in rows]
    if not tasks:
        meanwhile()
        return []
    if workers <= 1 or len(tasks) < 200:
        meanwhile()
        return [parse_structure_task(t) for t in progress_bar(tasks, desc=desc, unit="struct")]
    chunk = max(16, len(tasks) // (workers * 16))
    with ProcessPoolExecutor(max_workers=workers) as pool:
        results = pool.map(parse_structure_task, tasks, chunksize=chunk)  # submits every task now
        meanwhile()
        return list(progress_bar(results, desc=desc, total=len(tasks), unit="struct"))


def merge_tables(
    tables: Sequence[SourceTable],
    *,
    workers: int = 1,
    gap_tol: float = 0.01,
    energy_tol: float = 0.01,
    exp_conflict_tol: dict[str, float] | None = None,
    metal_gap_tol: float = 0.1,
) -> FetchResult:
    """Validate every row of ``tables`` and build the dft / experiment / metal-class / rejected tables.

    ``gap_tol`` (eV) and ``energy_tol`` (eV/atom) are the largest differences between two
    tables' values for one mp-id that do not count as a conflict; a formula labelled metal
    whose measured band gap exceeds ``metal_gap_tol`` (eV) is a metal-class conflict.
    """
    exp_conflict_tol = exp_conflict_tol or {"band_gap": 0.2, "formation_enthalpy": 0.05}
    counts = {t.name: TableCounts(read=t.rows_read) for t in tables}
    rejected: list[Rejection] = [r for t in tables for r in t.rejected]
    dft_tables = [t for t in tables if t.kind == "dft"]
    merged = _DftMerge(gap_tol=gap_tol, energy_tol=energy_tol)
    parsed, formulas = _parse_dft(dft_tables, workers=workers)
    for table in dft_tables:
        for row in table.rows:
            try:
                merged.add(table.name, row, *_validated_dft_row(table.name, row, parsed, formulas, merged.fallbacks))
            except RowError as exc:
                rejected.append(Rejection(table.name, row.row, truncate(str(row.material_id)), str(exc), row.content))
    dft = merged.frame(counts, rejected)
    measured = _experiments([t for t in tables if t.kind == "experiment"], counts, rejected)
    is_class = measured["property"] == CLASS_PROPERTY
    experiment = measured[~is_class].reset_index(drop=True)
    metal = (measured[is_class].rename(columns={"value": "is_metal"})[METAL_COLUMNS]
             .astype({"is_metal": "int64"}).reset_index(drop=True))
    for rej in rejected:
        counts[rej.source].rejected += 1
        counts[rej.source].reasons[_reason_kind(rej.reason)] += 1
    rejected_df = pd.DataFrame(
        [(r.source, int(r.row), str(r.id), r.reason, r.content) for r in rejected], columns=REJECTED_COLUMNS
    ).astype({"row": "int64"})
    return FetchResult(dft=dft, experiment=experiment, rejected=rejected_df, counts=counts,
                       dft_conflicts=merged.conflicts(), experiment_conflicts=_spreads(experiment, exp_conflict_tol),
                       structure_fallbacks=dict(merged.fallbacks), metal_class=metal,
                       metal_conflicts=_metal_conflicts(metal, experiment, metal_gap_tol))


def _parse_dft(dft_tables: Sequence[SourceTable], *, workers: int
               ) -> tuple[dict[tuple[str, int], ParsedStructure | str], dict[str, str | RowError]]:
    """Parse every structure of every DFT table in one pool, and the stated formulas meanwhile."""
    with_struct = [(t.name, r) for t in dft_tables for r in t.rows if r.structure_fmt is not None]
    formulas: dict[str, str | RowError] = {}

    def parse_stated_formulas() -> None:
        for table in dft_tables:
            for row in table.rows:
                text = str(row.formula).strip() if row.formula is not None else ""
                if text and text not in formulas:
                    try:
                        formulas[text] = formula_key(text)
                    except RowError as exc:
                        formulas[text] = exc

    parsed = parse_structures([r for _, r in with_struct], workers=workers, meanwhile=parse_stated_formulas)
    return {(name, r.row): p for (name, r), p in zip(with_struct, parsed, strict=True)}, formulas


def _validated_dft_row(table: str, row: DftRow, parsed: dict, formulas: dict, fallbacks: Counter
                       ) -> tuple[str, dict[str, float], ParsedStructure | None, str | None]:
    """``(mp_id, labels, structure, stated formula)`` of a valid row; a :class:`RowError` says why not."""
    mp_id = check_mp_id(row.material_id)
    labels = {}
    for name, raw in row.labels.items():
        if raw is None or (isinstance(raw, str) and not raw.strip()):
            continue  # a missing label, not a bad one
        if isinstance(raw, float) and math.isnan(raw):
            continue
        labels[name] = check_label(name, parse_float(raw, name=name))
    struct: ParsedStructure | None = None
    stated = formulas.get(str(row.formula).strip()) if row.formula is not None else None
    if isinstance(stated, RowError):
        raise RowError(str(stated))
    if row.structure_fmt is not None:
        got = parsed[(table, row.row)]
        if isinstance(got, str):
            raise RowError(got)
        struct = got
        if stated is not None and stated != struct.formula:
            raise RowError(f"stated formula {stated} disagrees with structure {struct.formula}")
        if struct.used_fallback:
            fallbacks[table] += 1
    return mp_id, labels, struct, stated


class _DftMerge:
    """DFT rows merged by mp-id: the first table in merge order wins, later disagreements are counted."""

    def __init__(self, *, gap_tol: float, energy_tol: float) -> None:
        self.gap_tol, self.energy_tol = gap_tol, energy_tol
        self.entries: dict[str, dict[str, Any]] = {}
        self.contributors: dict[str, list[tuple[str, DftRow]]] = defaultdict(list)
        self.label_src: dict[tuple[str, str], str] = {}
        self.label_conflicts: Counter = Counter()
        self.max_diff: dict[str, float] = defaultdict(float)
        self.formula_conflicts = 0
        self.fallbacks: Counter = Counter()

    def add(self, table: str, row: DftRow, mp_id: str, labels: dict[str, float], struct: ParsedStructure | None,
            stated: str | None) -> None:
        entry = self.entries.setdefault(mp_id, {"material_id": mp_id, "formula": None, "structure": None,
                                                "nsites": 0, "partial_occupancy": False, "sources": []})
        self.contributors[mp_id].append((table, row))
        if table not in entry["sources"]:
            entry["sources"].append(table)
        candidate = struct.formula if struct is not None else stated
        if struct is not None and entry["structure"] is None:
            # the first structure decides the formula, even over an earlier composition
            if entry["formula"] is not None and entry["formula"] != struct.formula:
                self.formula_conflicts += 1
            entry.update(structure=struct.json, formula=struct.formula, nsites=struct.nsites,
                         partial_occupancy=struct.partial_occupancy)
        elif candidate is not None:
            if entry["formula"] is None:
                entry["formula"] = candidate
            elif entry["formula"] != candidate:
                self.formula_conflicts += 1
        for name, value in labels.items():
            if name not in entry:
                entry[name] = value
                self.label_src[(mp_id, name)] = table
                continue
            diff = abs(entry[name] - value)
            if diff > (self.gap_tol if name.startswith("band_gap") else self.energy_tol):
                key = f"{name}: {self.label_src[(mp_id, name)]} vs {table}"
                self.label_conflicts[key] += 1
                self.max_diff[key] = max(self.max_diff[key], diff)

    def frame(self, counts: dict[str, TableCounts], rejected: list[Rejection]) -> pd.DataFrame:
        """One row per mp-id with a formula (label-only ids are rejected), sorted by id number."""
        dft_rows = []
        for mp_id, entry in self.entries.items():
            if entry["formula"] is None:
                for name, row in self.contributors[mp_id]:
                    rejected.append(Rejection(name, row.row, mp_id, LABEL_ONLY_REASON, row.content))
                continue
            for name, _ in self.contributors[mp_id]:
                counts[name].kept += 1
            dft_rows.append({
                "material_id": mp_id, "formula": entry["formula"], "structure": entry["structure"],
                **{name: entry.get(name, math.nan) for name in DFT_LABELS},
                "nsites": entry["nsites"], "partial_occupancy": entry["partial_occupancy"],
                "source": ",".join(entry["sources"]),
            })
        dft = pd.DataFrame(dft_rows, columns=DFT_COLUMNS)
        dft = dft.astype({"nsites": "int64", "partial_occupancy": "bool", **dict.fromkeys(DFT_LABELS, "float64")})
        order = dft["material_id"].str.extract(r"^(\w+)-(\d+)$")
        return (dft.assign(_prefix=order[0], _number=order[1].astype("int64"))
                .sort_values(["_prefix", "_number"]).drop(columns=["_prefix", "_number"]).reset_index(drop=True))

    def conflicts(self) -> dict[str, Any]:
        return {
            "gap_tolerance_ev": self.gap_tol,
            "energy_tolerance_ev_per_atom": self.energy_tol,
            "formula_conflicts": self.formula_conflicts,
            "label_conflicts": {k: {"count": v, "max_abs_diff": round(self.max_diff[k], 6)}
                                for k, v in sorted(self.label_conflicts.items())},
        }


def _experiments(tables: Sequence[SourceTable], counts: dict[str, TableCounts], rejected: list[Rejection]
                 ) -> pd.DataFrame:
    """Every valid measurement; an exact duplicate (same formula as written, same value) is rejected."""
    exp_rows = []
    for table in tables:
        seen: dict[tuple[str, float], int] = {}
        for row in table.rows:
            try:
                raw = str(row.formula_raw).strip()
                formula = formula_key(raw)
                value = parse_float(row.value, name=row.property)
                if row.property == CLASS_PROPERTY:
                    value = float(check_class(row.property, value))
                else:
                    value = check_label("band_gap" if row.property == "band_gap" else "formation_enthalpy", value)
            except RowError as exc:
                rejected.append(Rejection(table.name, row.row, row.row_id, str(exc), row.content))
                continue
            if (raw, value) in seen:
                rejected.append(Rejection(table.name, row.row, row.row_id,
                                          f"exact duplicate of row {seen[raw, value]} (same formula and value)", row.content))
                continue
            seen[raw, value] = row.row
            counts[table.name].kept += 1
            exp_rows.append({"exp_id": f"{table.name}:{row.row_id}", "formula_raw": raw, "formula": formula,
                             "property": row.property, "value": value, "unit": UNITS[row.property],
                             "source": table.name})
    return pd.DataFrame(exp_rows, columns=EXP_COLUMNS).astype({"value": "float64"})


def _spreads(experiment: pd.DataFrame, tolerance: dict[str, float]) -> dict[str, Any]:
    """Per property: formulas measured more than once, and those whose values spread beyond ``tolerance``."""
    out: dict[str, Any] = {}
    for prop, group in experiment.groupby("property"):
        spread = group.groupby("formula")["value"].agg(lambda v: float(v.max() - v.min()))
        bad = spread[spread > tolerance[prop]].sort_values(ascending=False)
        out[prop] = {
            "tolerance": tolerance[prop],
            "formulas_measured_more_than_once": int((group["formula"].value_counts() > 1).sum()),
            "formulas_with_spread_above_tolerance": len(bad),
            "largest": {k: round(v, 4) for k, v in bad.head(10).items()},
        }
    return out


def _metal_conflicts(metal: pd.DataFrame, experiment: pd.DataFrame, gap_tol: float) -> dict[str, Any]:
    """Formulas labelled both metal and non-metal, and formulas labelled metal with a measured gap above ``gap_tol``.

    The rows stay in ``metal_class.parquet`` (they are what the file says); the metal
    classifier leaves such formulas out of training and evaluation (models/learners/metal.py).
    """
    both, gapped = metal_class_conflicts(metal, experiment[experiment["property"] == "band_gap"], gap_tol=gap_tol)
    return {
        "formulas_with_both_classes": len(both),
        "both_classes": both[:20],
        "gap_tolerance": gap_tol,
        "labelled_metal_with_measured_gap": len(gapped),
        "largest": {k: round(float(v), 4) for k, v in gapped.head(20).items()},
    }


def manifest(result: FetchResult, tables: list[SourceTable], *, version: int, params: dict[str, Any], digest: str,
             fingerprints: dict[str, str] | None, read_seconds: float, total_seconds: float) -> dict[str, Any]:
    """``manifest.json``: per table its provenance and row accounting, DFT and measurement summaries, timings."""
    dft = result.dft
    return {
        "version": version,
        "params_digest": digest,
        "params": params,
        "input_fingerprints": fingerprints,
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
        "metal_class": {
            "rows": len(result.metal_class),
            "metals": int((result.metal_class["is_metal"] == 1).sum()),
            "non_metals": int((result.metal_class["is_metal"] == 0).sum()),
            "conflicts": result.metal_conflicts,
        },
        "rejected": len(result.rejected),
        "seconds": {"read": round(read_seconds, 2), "total": round(total_seconds, 2)},
    }
