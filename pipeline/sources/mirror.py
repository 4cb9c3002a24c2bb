"""The offline mirror ``../shared/datasets``: every documented DFT and experimental file.

Files are read in place, never copied. Their sha256 are pinned in ``mirror_sha256.json``
next to this module; a file whose content changed raises :class:`SourceChangedError`
naming the file and both hashes, unless the caller accepts the change (which re-pins).

Format quirks handled here (see the mirror's README):

* matminer CSVs start with a ``# ref:`` comment line;
* ``dielectric_constant`` and ``piezoelectric_tensor`` rows carry one more field than the
  header: a leading copy of ``idx`` (pandas wrote its index). The first row decides
  whether a file is "indexed"; every row must then have that width, and the extra field
  is dropped only when it equals ``idx``. Rows with another width, a differing lead, or
  a ``meta`` literal naming another mp-id than the ``material_id`` column (shifted
  fields) are rejected;
* ``flla_2015``: ``formula`` is a Python dict literal, ``structure`` a Python literal of
  ``Structure.as_dict()`` (parsed with :func:`ast.literal_eval`, which runs no code);
* CIF in ``structure``, POSCAR in ``poscar``: the POSCAR is parsed (same cell, ~9x faster
  than pymatgen's CIF reader), the CIF is the fallback when it does not parse;
* megnet JSON zips: ``{split: {mp-id: value}}`` with values as strings;
* ``multifidelity_band_gaps``: the experimental part is keyed by ICSD id with neither a
  composition nor a structure, so it cannot be matched to anything: every entry goes to
  ``rejected.parquet`` with that reason (and a note in the manifest).

``scale/`` is not read (it is for benchmarks).
"""

from __future__ import annotations

import ast
import csv
import gzip
import io
import json
import sys
import zipfile
from collections.abc import Callable, Iterator, Mapping
from functools import partial
from pathlib import Path
from typing import Any, ClassVar

from models import sha256_file, write_json
from pipeline.errors import MatshiftError, SourceChangedError
from pipeline.sources.base import DftRow, ExpRow, Source, SourceTable
from pipeline.sources.records import Rejection, truncate

PINS_PATH = Path(__file__).with_name("mirror_sha256.json")

ORIGINS = {
    "mp/flla_2015.csv.gz": "matminer 0.4.0 matminer/datasets/flla_2015.csv (Faber et al. 2015)",
    "mp/dielectric_constant.csv.gz": "matminer 0.4.0 dielectric_constant (Petousis et al. 2017)",
    "mp/elastic_tensor.csv.gz": "matminer 0.4.0 elastic_tensor_2015 (de Jong et al. 2015)",
    "mp/piezoelectric_tensor.csv.gz": "matminer 0.4.0 piezoelectric_tensor (de Jong et al. 2015)",
    "mp/megnet_gappbe.json.zip": "JARVIS-Leaderboard megnet_gappbe.json.zip (MP 2018.6.1)",
    "mp/megnet_e_form.json.zip": "JARVIS-Leaderboard megnet_e_form.json.zip (MP 2018.6.1)",
    "mp/multifidelity_band_gaps.json.gz": "materialsvirtuallab/megnet multifidelity/data_no_structs.json.gz",
    "mp/mp_non_metals_band_gap.csv": "CompRhys/roost data/datasets/roost/mp-non-metals.csv",
    "experiment/expt_gap_zhuo2018.csv": "Zhuo et al. 2018 via CompRhys/roost expt-non-metals.csv",
    "experiment/expt_formation_enthalpy_ssub.csv": "qmpy/data/thermodata/ssub.dat (SGTE SSUB)",
    "experiment/expt_is_metal.csv": "Zhuo et al. 2018 via matbench expt_is_metal (anthony-wang/CrabNet)",
}

# matminer CSVs: which column holds which label (DFT column name of the contract).
_MATMINER_LABELS = {
    "flla_2015": {"formation_energy_per_atom": "formation_energy_per_atom", "e_above_hull": "e_above_hull"},
    "dielectric_constant": {"band_gap": "band_gap_pbe"},
    "elastic_tensor": {},
    "piezoelectric_tensor": {},
}

_FIDELITIES = {"pbe": "band_gap_pbe", "hse": "band_gap_hse", "gllb-sc": "band_gap_gllb_sc", "scan": "band_gap_scan"}
_ICSD_REASON = (
    "experimental band gap keyed by ICSD id with no composition or structure in this file; "
    "cannot be matched to a formula"
)


def _name(rel: str) -> str:
    return Path(rel).name.split(".")[0]


class MirrorSource(Source):
    """Every DFT/experimental file of the offline mirror (default source)."""

    name: ClassVar[str] = "mirror"

    def __init__(self, *, root: Path, pins_path: Path = PINS_PATH, accept_changed: bool = False) -> None:
        self.root = Path(root)
        self.pins_path = Path(pins_path)
        self.accept_changed = accept_changed
        self._hashes: dict[str, str] | None = None

    @classmethod
    def from_config(cls, config: Any, *, root: Path, env: Mapping[str, str], accept_changed: bool,
                    **overrides: Any) -> MirrorSource:
        mirror = config.mirror if config.mirror.is_absolute() else root / config.mirror
        return cls(**{"root": mirror, "accept_changed": accept_changed, **overrides})

    # ----------------------------------------------------------------- integrity
    def _path(self, rel: str) -> Path:
        path = self.root / rel
        if not path.is_file():
            raise MatshiftError(
                f"mirror file {path} is missing (mirror root {self.root}; set fetch.mirror in params.yaml)"
            )
        return path

    def fingerprint(self) -> dict[str, str]:
        """sha256 of every mirror file, checked against the pinned values."""
        if self._hashes is not None:
            return self._hashes
        if not self.root.is_dir():
            raise MatshiftError(f"mirror directory {self.root} does not exist (set fetch.mirror in params.yaml)")
        hashes = {rel: sha256_file(self._path(rel)) for rel in ORIGINS}
        pins = self._read_pins()
        changed = {rel: (pins.get(rel), h) for rel, h in hashes.items() if pins.get(rel) != h}
        if changed and not self.accept_changed:
            rel, (old, new) = next(iter(changed.items()))
            raise SourceChangedError(
                f"mirror file {self.root / rel} changed: pinned sha256 {old}, found {new}"
                + (f" ({len(changed) - 1} more files changed)" if len(changed) > 1 else "")
                + "; check the file, then rerun with `matshift fetch --accept-changed` to re-pin"
            )
        if changed:
            write_json(self.pins_path, {**pins, **hashes})
        self._hashes = hashes
        return hashes

    def _read_pins(self) -> dict[str, str]:
        try:
            return json.loads(self.pins_path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return {}
        except json.JSONDecodeError as exc:
            raise MatshiftError(f"checksum file {self.pins_path} is not valid JSON: {exc}") from exc

    # ----------------------------------------------------------------- reading
    def tables(self) -> Iterator[SourceTable]:
        hashes = self.fingerprint()
        readers: dict[str, Callable[[Path, str], SourceTable]] = {
            "mp/flla_2015.csv.gz": self._matminer_csv,
            "mp/dielectric_constant.csv.gz": self._matminer_csv,
            "mp/elastic_tensor.csv.gz": self._matminer_csv,
            "mp/piezoelectric_tensor.csv.gz": self._matminer_csv,
            "mp/megnet_gappbe.json.zip": self._megnet,
            "mp/megnet_e_form.json.zip": self._megnet,
            "mp/multifidelity_band_gaps.json.gz": self._multifidelity,
            "mp/mp_non_metals_band_gap.csv": self._mp_non_metals,
            "experiment/expt_gap_zhuo2018.csv": partial(self._measurements, prop="band_gap", formula="composition",
                                                        value="Eg", id_column="material_id"),
            "experiment/expt_formation_enthalpy_ssub.csv": partial(self._measurements, prop="formation_enthalpy",
                                                                   formula="formula", value="dHf_eV_per_atom"),
            "experiment/expt_is_metal.csv": partial(self._measurements, prop="is_metal", formula="formula",
                                                    value="target"),
        }
        for rel, reader in readers.items():
            path = self._path(rel)
            table = reader(path, rel)
            table.sha256 = hashes[rel]
            # A file that changed between fingerprint() and now is caught here.
            if sha256_file(path) != table.sha256:
                raise SourceChangedError(f"mirror file {path} changed while it was being read")
            yield table

    def _table(self, rel: str, kind: str, rows: list, rejected: list, notes: list[str] | None = None) -> SourceTable:
        return SourceTable(
            name=_name(rel), kind=kind, origin=ORIGINS[rel], path=str(self.root / rel), sha256="",
            rows=rows, rejected=rejected, notes=notes or [],
        )

    def _matminer_csv(self, path: Path, rel: str) -> SourceTable:
        name = _name(rel)
        labels = _MATMINER_LABELS[name]
        _, records, rejected = read_matminer_csv(path, source=name)
        rows: list[DftRow] = []
        for row_no, rec, content in records:
            if name == "flla_2015":
                fmt, fallback, fallback_fmt = "dict_literal", None, None
                try:
                    formula_hint = _formula_from_dict_literal(rec["formula"])
                except ValueError as exc:
                    rejected.append(Rejection(name, row_no, rec.get("material_id", ""), f"unparsable formula: {exc}", content))
                    continue
            else:
                # POSCAR first: it holds the same cell as the CIF (checked on every mirror row
                # with StructureMatcher; tests keep the CIF as the reference) and parses ~9x
                # faster. The CIF is the fallback.
                structure, fmt, fallback, fallback_fmt = rec.get("poscar"), "poscar", rec["structure"], "cif"
                formula_hint = rec.get("formula")
            if name == "flla_2015":
                structure = rec["structure"]
            rows.append(DftRow(
                row=row_no, material_id=rec["material_id"], content=content, formula=formula_hint,
                structure=structure, structure_fmt=fmt, fallback=fallback, fallback_fmt=fallback_fmt,
                labels={dst: rec[src] for src, dst in labels.items()},
            ))
        return self._table(rel, "dft", rows, rejected)

    def _megnet(self, path: Path, rel: str) -> SourceTable:
        label = "band_gap_pbe" if "gappbe" in rel else "formation_energy_per_atom"
        with zipfile.ZipFile(path) as zf:
            members = [m for m in zf.namelist() if m.endswith(".json")]
            if len(members) != 1:
                raise MatshiftError(f"{path}: expected one .json member, found {members}")
            data = json.loads(zf.read(members[0]))
        rows: list[DftRow] = []
        rejected: list[Rejection] = []
        row_no = 0
        for split, entries in data.items():
            if not isinstance(entries, dict):
                raise MatshiftError(f"{path}: split {split!r} is not a mapping of mp-id to value")
            for mp_id, value in entries.items():
                row_no += 1
                rows.append(DftRow(row=row_no, material_id=mp_id, content=f"{split}: {mp_id}: {value!r}",
                                   labels={label: value}))
        return self._table(rel, "dft", rows, rejected)

    def _multifidelity(self, path: Path, rel: str) -> SourceTable:
        name = _name(rel)
        with gzip.open(path, "rt", encoding="utf-8") as fh:
            data = json.load(fh)
        rows: list[DftRow] = []
        rejected: list[Rejection] = []
        row_no = 0
        notes = []
        for key, entries in data.items():
            for ident, value in entries.items():
                row_no += 1
                content = f"{key}: {ident}: {value!r}"
                if key in _FIDELITIES:
                    rows.append(DftRow(row=row_no, material_id=ident, content=content,
                                       labels={_FIDELITIES[key]: value}))
                elif key.endswith("_exp"):
                    rejected.append(Rejection(name, row_no, str(ident), _ICSD_REASON, content))
                else:
                    rejected.append(Rejection(name, row_no, str(ident), f"unknown section {key!r}", content))
            if key.endswith("_exp"):
                notes.append(f"{key} ({len(entries)} entries) not used: {_ICSD_REASON}")
        return self._table(rel, "dft", rows, rejected, notes)

    def _mp_non_metals(self, path: Path, rel: str) -> SourceTable:
        name = _name(rel)
        rows: list[DftRow] = []
        rejected: list[Rejection] = []
        for row_no, rec, content in _read_plain_csv(path, name, ["material_id", "composition", "band_gap"], rejected):
            rows.append(DftRow(row=row_no, material_id=rec["material_id"], content=content,
                               formula=rec["composition"], labels={"band_gap_pbe": rec["band_gap"]}))
        return self._table(rel, "dft", rows, rejected)

    def _measurements(self, path: Path, rel: str, *, prop: str, formula: str, value: str,
                      id_column: str | None = None) -> SourceTable:
        """Read a plain CSV of measurements (or classes) whose header starts ``[id_column,] formula, value``.

        The row id is ``id_column``'s text when the file has one (and it is not blank), else the row number.
        """
        columns = [*([id_column] if id_column else []), formula, value]
        rows: list[ExpRow] = []
        rejected: list[Rejection] = []
        for row_no, rec, content in _read_plain_csv(path, _name(rel), columns, rejected):
            row_id = (rec[id_column].strip() if id_column else "") or str(row_no)
            rows.append(ExpRow(row=row_no, row_id=row_id, formula_raw=rec[formula], property=prop, value=rec[value],
                               content=content))
        return self._table(rel, "experiment", rows, rejected)


# ------------------------------------------------------------------ file readers


def _csv_field_limit() -> None:
    # CIF and tensor fields exceed csv's default 128 KiB field limit in a few rows.
    csv.field_size_limit(min(sys.maxsize, 2**31 - 1))


def read_matminer_csv(path: Path, *, source: str) -> tuple[list[str], list[tuple[int, dict, str]], list[Rejection]]:
    """Rows of a matminer 0.4 CSV as ``(row, {column: text}, raw)``, plus rejections.

    Row numbers are 1-based data rows (after the ``# ref:`` line and the header).
    """
    _csv_field_limit()
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt", encoding="utf-8", newline="") as fh:
        first = fh.readline()
        if not first.startswith("#"):
            fh.seek(0)
        reader = csv.reader(fh)
        try:
            header = next(reader)
        except StopIteration as exc:
            raise MatshiftError(f"{path}: no header line") from exc
        except csv.Error as exc:
            raise MatshiftError(f"{path}: unreadable header: {exc}") from exc
        out: list[tuple[int, dict, str]] = []
        rejected: list[Rejection] = []
        row_no = 0
        indexed: bool | None = None
        while True:
            try:
                fields = next(reader)
            except StopIteration:
                break
            except csv.Error as exc:
                row_no += 1
                rejected.append(Rejection(source, row_no, "", f"malformed CSV line: {exc}", ""))
                continue
            row_no += 1
            content = truncate(",".join(fields))
            if indexed is None:
                # The first row decides whether the file carries pandas' index as an extra
                # leading field; every later row must then have the same width.
                indexed = len(fields) == len(header) + 1 and "idx" in header
            width = len(header) + int(indexed)
            if len(fields) != width:
                rejected.append(Rejection(source, row_no, "", f"{len(fields)} fields, expected {width} (header has {len(header)})", content))
                continue
            if indexed:
                lead, fields = fields[0], fields[1:]
                if lead != fields[header.index("idx")]:
                    rejected.append(Rejection(source, row_no, "", f"extra leading field {lead!r} differs from idx {fields[header.index('idx')]!r}", content))
                    continue
            rec = dict(zip(header, fields, strict=True))
            mid = rec.get("material_id", "")
            meta_id = _meta_material_id(rec.get("meta"))
            if meta_id is not None and meta_id != mid:
                rejected.append(Rejection(source, row_no, mid, f"meta material_id {meta_id!r} differs from column {mid!r} (shifted fields?)", content))
                continue
            out.append((row_no, rec, content))
    return header, out, rejected


def _meta_material_id(meta: str | None) -> str | None:
    """Return the ``material_id`` inside a Python-2 ``{u'...': ...}`` meta literal, if readable."""
    if not meta:
        return None
    try:
        value = ast.literal_eval(meta)  # u'...' is still valid Python 3 syntax
    except (ValueError, SyntaxError, MemoryError, RecursionError):
        return None
    return value.get("material_id") if isinstance(value, dict) else None


def _formula_from_dict_literal(text: str) -> str:
    try:
        value = ast.literal_eval(text)
    except (ValueError, SyntaxError) as exc:
        raise ValueError(f"formula {truncate(text)!r} is not a dict literal") from exc
    if not isinstance(value, dict) or not value:
        raise ValueError(f"formula {truncate(text)!r} is not a non-empty dict")
    parts = []
    for el, amount in value.items():
        if not isinstance(el, str) or isinstance(amount, bool) or not isinstance(amount, (int, float)):
            raise ValueError(f"formula {truncate(text)!r} has a non-numeric amount")
        parts.append(f"{el}{amount:g}")
    return "".join(parts)


def _read_plain_csv(path: Path, source: str, columns: list[str], rejected: list[Rejection]) -> Iterator[tuple[int, dict, str]]:
    text = path.read_text(encoding="utf-8")
    reader = csv.reader(io.StringIO(text, newline=""))
    header = next(reader, None)
    if header is None or [h.strip() for h in header[: len(columns)]] != columns:
        raise MatshiftError(f"{path}: header {header} does not start with the expected columns {columns}")
    for row_no, fields in enumerate(reader, start=1):
        content = truncate(",".join(fields))
        if len(fields) != len(header):
            rejected.append(Rejection(source, row_no, fields[0] if fields else "", f"{len(fields)} fields, header has {len(header)}", content))
            continue
        yield row_no, dict(zip(header, fields, strict=True)), content

