"""Validation of user inputs for prediction: formulas and CIF files.

Every input becomes either a :class:`ParsedInput` or an :class:`InputProblem` that names
the input and says why it was refused; nothing here raises for bad user input, so one bad
line never stops the valid ones from being predicted.
"""

from __future__ import annotations

import io
import math
import warnings
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from featurizers.chemistry import FormulaError, parse_formula, reduced_formula

if TYPE_CHECKING:  # pymatgen's CIF reader is imported only when a CIF is read (start-up time)
    from pymatgen.core import Structure

__all__ = ["InputProblem", "ParsedInput", "parse_cif", "parse_cif_text", "parse_dft_value", "parse_formula_input",
           "parse_structure"]

MAX_CIF_BYTES = 5_000_000


@dataclass(frozen=True)
class ParsedInput:
    """A valid input: its text as given, its reduced formula, for a CIF its structure, and the user's own DFT value.

    ``dft_value``: the caller's DFT value of this material for the property predicted (e.g. its
    PBE gap), used instead of the mirror's polymorph; None = look the formula up.
    """

    input: str
    kind: Literal["formula", "cif", "structure"]
    formula: str
    structure: Structure | None = None
    dft_value: float | None = None


@dataclass(frozen=True)
class InputProblem:
    """An input refused with a reason (shown to the user, never turned into a number)."""

    input: str
    kind: Literal["formula", "cif", "structure"]
    reason: str


def parse_dft_value(item: ParsedInput | InputProblem, value: object) -> ParsedInput | InputProblem:
    """Attach the user's DFT value to a parsed input; a non-number or inf/NaN is a problem.

    ``value``: a CSV cell's text (empty: none; the text "nan" is refused) or a DataFrame cell (a
    number; None, a float NaN or pandas.NA, pandas' empty cells, are none).
    """
    if isinstance(item, InputProblem) or _empty_cell(value):
        return item
    text = str(value).strip()
    if not text:
        return item
    try:
        value = float(text)
    except ValueError:
        return InputProblem(item.input, item.kind, f"dft_value {text!r} is not a number")
    if not math.isfinite(value):
        return InputProblem(item.input, item.kind, f"dft_value {text!r} is not a finite number")
    return replace(item, dft_value=value)


def _empty_cell(value: object) -> bool:
    """None, pandas.NA / NaT, or a NaN of any float type (a DataFrame's missing cell); text is never empty here."""
    if value is None or type(value).__name__ in ("NAType", "NaTType"):
        return True
    if isinstance(value, str):
        return False
    try:
        return math.isnan(value)
    except TypeError:  # not a number: its text is parsed (and refused) by the caller
        return False


def parse_formula_input(text: str) -> ParsedInput | InputProblem:
    """Validate one formula typed by a user."""
    shown = text if isinstance(text, str) else repr(text)
    try:
        comp = parse_formula(text)
    except FormulaError as exc:
        return InputProblem(shown, "formula", str(exc))
    return ParsedInput(shown.strip(), "formula", reduced_formula(comp))


def parse_cif(path: Path | str, *, max_sites: int = 500) -> ParsedInput | InputProblem:
    """Read one CIF file: a single ordered structure of at most ``max_sites`` sites."""
    path = Path(path)
    shown = str(path)
    try:
        size = path.stat().st_size
    except (OSError, ValueError) as exc:  # ValueError: a NUL character in the path
        return InputProblem(shown, "cif", f"cannot read CIF file: {getattr(exc, 'strerror', None) or exc}")
    if size == 0:
        return InputProblem(shown, "cif", "CIF file is empty")
    if size > MAX_CIF_BYTES:
        return InputProblem(shown, "cif", f"CIF file is larger than {MAX_CIF_BYTES // 1_000_000} MB")
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError as exc:
        return InputProblem(shown, "cif", f"cannot read CIF file: {exc.strerror or exc}")
    return parse_cif_text(text, name=shown, max_sites=max_sites)


def parse_cif_text(text: str, *, name: str, max_sites: int = 500) -> ParsedInput | InputProblem:
    """Parse CIF text (see :func:`parse_cif`); ``name`` identifies it in messages."""
    if "_cell_length_a" not in text:
        return InputProblem(name, "cif", "not a CIF file (no _cell_length_a entry)")
    # pymatgen's file parsers: only when a CIF/POSCAR is read
    from pymatgen.io.cif import CifParser

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            parser = CifParser(io.StringIO(text))
            structures = parser.parse_structures(primitive=False, on_error="raise")
    except Exception as exc:  # noqa: BLE001 - pymatgen raises many types for malformed CIFs
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        return InputProblem(name, "cif", f"malformed CIF: {reason}")
    if not structures:
        return InputProblem(name, "cif", "malformed CIF: no structure could be read")
    if len(structures) > 1:
        return InputProblem(name, "cif", f"CIF holds {len(structures)} structures; give one per file")
    return parse_structure(structures[0], name=name, max_sites=max_sites, kind="cif")


def parse_structure(structure, *, name: str, max_sites: int = 500,
                    kind: Literal["cif", "structure"] = "structure") -> ParsedInput | InputProblem:
    """Validate a pymatgen ``Structure`` (read from a CIF, or given in Python); ``name`` identifies it in messages."""
    if not all(hasattr(structure, a) for a in ("is_ordered", "composition", "volume", "sites")):
        return InputProblem(name, kind, f"not a pymatgen Structure ({type(structure).__name__})")
    if not structure.is_ordered:
        return InputProblem(
            name, kind, "partially occupied sites (disordered structure): give an ordered structure or the formula"
        )
    if len(structure) == 0:
        return InputProblem(name, kind, "structure has no sites")
    if len(structure) > max_sites:
        return InputProblem(name, kind, f"cell has {len(structure)} sites, above the limit of {max_sites}")
    if not math.isfinite(structure.volume) or structure.volume <= 0:
        return InputProblem(name, kind, "cell has no positive volume")
    try:
        formula = reduced_formula(structure.composition.formula.replace(" ", ""))
    except FormulaError as exc:
        return InputProblem(name, kind, f"composition not usable: {exc}")
    return ParsedInput(name, kind, formula, structure)
