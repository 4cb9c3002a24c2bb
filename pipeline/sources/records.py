"""Validation of single raw rows into normalised DFT or experimental records.

Every function here turns one raw row into either a record (a plain dict with the columns
of ``docs/ARCHITECTURE.md``) or a :class:`Rejection` carrying the reason. Nothing is
dropped silently and nothing here reads files, parameters or the environment.

Policies (see docs/DATA.md):

* *Partial occupancy*: a structure with a disordered site is **kept** with
  ``partial_occupancy = True`` (downstream stages decide whether to use it); a structure
  whose sites hold a non-element (dummy species) is rejected.
* *Values*: a non-finite value or a negative band gap is rejected; formation energies and
  enthalpies outside ``[-10, 5]`` eV/atom are rejected as physically impossible.
* *Formulas*: parsed with :func:`featurizers.chemistry.parse_formula`; anything it refuses
  (unknown element, zero amount, junk characters) is rejected with its message.
"""

from __future__ import annotations

import ast
import json
import math
import re
import warnings
from dataclasses import dataclass
from typing import Any

from pymatgen.core import Element, Structure

from featurizers.chemistry import FormulaError, reduced_formula

#: Materials Project ids: ``mp-N``, and ``mvc-N`` for the Materials Virtual Lab candidates
#: MP also serves (they appear in the megnet and roost files).
MP_ID = re.compile(r"^(mp|mvc)-\d+$")

#: Range of formation energies / enthalpies accepted as physical, eV/atom.
ENERGY_RANGE = (-10.0, 5.0)
#: Largest band gap accepted as physical, eV (solid Ne has ~21.7 eV, the widest known).
MAX_GAP = 25.0

DFT_LABELS = (
    "band_gap_pbe",
    "band_gap_hse",
    "band_gap_gllb_sc",
    "band_gap_scan",
    "formation_energy_per_atom",
    "e_above_hull",
)

_CONTENT_CHARS = 300


@dataclass(frozen=True)
class Rejection:
    """One input row that was not kept: where it came from and why."""

    source: str
    row: int
    id: str
    reason: str
    content: str


class RowError(ValueError):
    """A raw row that cannot become a record; the message is the rejection reason."""


def truncate(content: Any) -> str:
    text = content if isinstance(content, str) else repr(content)
    return text if len(text) <= _CONTENT_CHARS else text[:_CONTENT_CHARS] + "..."


def parse_float(value: Any, *, name: str) -> float:
    """Return a finite float from a number or a numeric string (megnet files store strings)."""
    if isinstance(value, bool):
        raise RowError(f"{name}: expected a number, got {value!r}")
    try:
        out = float(value)
    except (TypeError, ValueError) as exc:
        raise RowError(f"{name}: not a number: {truncate(value)!r}") from exc
    if not math.isfinite(out):
        raise RowError(f"{name}: non-finite value {out}")
    return out


def check_class(name: str, value: float) -> int:
    """Return a class label, which must be exactly 0 or 1 (``is_metal``: 1 = metal, 0 = non-metal)."""
    if value not in (0.0, 1.0):
        raise RowError(f"{name}: class must be 0 or 1, got {value:g}")
    return int(value)


def check_label(name: str, value: float) -> float:
    """Reject physically impossible DFT/experimental values (units: eV or eV/atom)."""
    if name.startswith("band_gap"):
        if value < 0:
            raise RowError(f"{name}: negative band gap {value} eV")
        if value > MAX_GAP:
            raise RowError(f"{name}: band gap {value} eV above {MAX_GAP} eV")
    elif name == "e_above_hull":
        if value < -1e-6:
            raise RowError(f"{name}: negative energy above hull {value} eV/atom")
    elif not ENERGY_RANGE[0] <= value <= ENERGY_RANGE[1]:
        raise RowError(f"{name}: {value} eV/atom outside {list(ENERGY_RANGE)}")
    return value


def check_mp_id(value: Any) -> str:
    text = str(value).strip()
    if not MP_ID.match(text):
        raise RowError(f"material_id {truncate(text)!r} is not a Materials Project id (mp-N or mvc-N)")
    return text


def formula_key(formula: str) -> str:
    try:
        return reduced_formula(formula)
    except FormulaError as exc:
        raise RowError(f"unparsable formula: {exc}") from exc


# ---------------------------------------------------------------- structures


@dataclass(frozen=True)
class ParsedStructure:
    json: str
    formula: str
    nsites: int
    partial_occupancy: bool
    used_fallback: bool = False


def _to_structure(payload: Any, fmt: str):
    # pymatgen's file parsers: only when a CIF/POSCAR is read
    from pymatgen.io.vasp import Poscar

    if fmt == "object":
        if not isinstance(payload, Structure):
            raise RowError(f"structure: expected a pymatgen Structure, got {type(payload).__name__}")
        return payload
    if fmt == "dict_literal":
        # Python literal, not JSON (single quotes); literal_eval never executes code.
        payload = ast.literal_eval(payload)
        fmt = "dict"
    if fmt == "dict":
        return Structure.from_dict(payload)
    if fmt == "cif":
        return Structure.from_str(payload, fmt="cif")
    if fmt == "poscar":
        return Poscar.from_str(payload).structure
    raise ValueError(f"unknown structure format {fmt!r}")


def parse_structure(payload: Any, fmt: str, fallback: Any = None, fallback_fmt: str | None = None) -> ParsedStructure:
    """Parse a structure, falling back to a second representation (POSCAR beside a CIF).

    Raises :class:`RowError` with the reason when neither representation parses or the
    structure is not physical (no sites, zero volume, a non-element species).
    """
    errors = []
    attempts = [(payload, fmt, False)]
    if fallback is not None and fallback_fmt is not None:
        attempts.append((fallback, fallback_fmt, True))
    for data, kind, is_fallback in attempts:
        if data is None or (isinstance(data, str) and not data.strip()) or (isinstance(data, float) and math.isnan(data)):
            errors.append(f"{kind}: empty")
            continue
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # CIF readers warn on every rounded occupancy
                structure = _to_structure(data, kind)
        except RowError:
            raise
        except Exception as exc:  # noqa: BLE001 - third-party parsers raise anything; kept as the reason
            errors.append(f"{kind}: {type(exc).__name__}: {truncate(str(exc))}")
            continue
        return _describe(structure, used_fallback=is_fallback)
    raise RowError("unparsable structure (" + "; ".join(errors) + ")")


def _describe(structure, *, used_fallback: bool) -> ParsedStructure:

    if len(structure) == 0:
        raise RowError("structure has no sites")
    volume = structure.lattice.volume
    if not math.isfinite(volume) or volume <= 1e-6:
        raise RowError(f"structure has a degenerate lattice (volume {volume})")
    comp = structure.composition.element_composition
    for el in comp:
        if not isinstance(el, Element):
            raise RowError(f"structure has a non-element species {el}")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # Composition.formula sorts by X; noble gases have none
        text_formula = comp.formula
    formula = formula_key(text_formula.replace(" ", ""))
    text = json.dumps(structure.as_dict(), separators=(",", ":"))
    return ParsedStructure(
        json=text,
        formula=formula,
        nsites=len(structure),
        partial_occupancy=not structure.is_ordered,
        used_fallback=used_fallback,
    )


def parse_structure_task(task: tuple[Any, str, Any, str | None]) -> ParsedStructure | str:
    """Process-pool entry point: a parsed structure, or the rejection reason as a string."""
    payload, fmt, fallback, fallback_fmt = task
    try:
        return parse_structure(payload, fmt, fallback, fallback_fmt)
    except RowError as exc:
        return str(exc)
    except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError) as exc:
        return f"unparsable structure: {type(exc).__name__}: {truncate(str(exc))}"
