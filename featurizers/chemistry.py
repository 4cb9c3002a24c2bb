"""Formula parsing shared by every stage, so both domains key compositions the same way.

pymatgen's ``Composition`` accepts strings that are not chemistry (``"Xx2"`` becomes a
dummy species, ``"H-1"`` a negative amount). :func:`parse_formula` accepts only real
elements with positive, finite amounts and raises :class:`FormulaError` naming the input
otherwise.
"""

from __future__ import annotations

import contextlib
import functools
import math
import re
import warnings
from collections.abc import Iterable, Iterator

import numpy as np
from pymatgen.core import Composition, Element
from pymatgen.util.string import formula_double_format

__all__ = ["FormulaError", "element_fractions", "element_mask", "is_element", "no_pauling_warning", "parse_formula", "reduced_formula"]

# Characters a formula may contain: element symbols, amounts, brackets, hydrate dots.
_ALLOWED = re.compile(r"^[A-Za-z0-9.()\[\]{}·* ]+$")
_MAX_LEN = 200
_SYMBOL = re.compile(r"[A-Z][a-z]*")


class FormulaError(ValueError):
    """A formula that does not describe a composition of real elements."""


def parse_formula(formula: str) -> Composition:
    """Parse ``formula`` into a pymatgen ``Composition`` of real elements.

    >>> parse_formula("Hg0.7Cd0.3Te").reduced_formula
    'Hg0.7Cd0.3Te'
    """
    if not isinstance(formula, str):
        raise FormulaError(f"formula must be a string, got {type(formula).__name__}")
    text = formula.strip()
    if not text:
        raise FormulaError("empty formula")
    if len(text) > _MAX_LEN:
        raise FormulaError(f"formula {text[:40]!r}... is longer than {_MAX_LEN} characters")
    if not _ALLOWED.match(text):
        raise FormulaError(f"formula {text!r} contains characters that are not part of a formula")
    if re.search(r"\d[eE][-+]?\d", text):  # "H1e5" would be 100000 H: formulas never use exponent notation
        raise FormulaError(f"formula {text!r}: amounts in exponent notation are not accepted")
    text = _expand_hydrate(text)
    unknown = sorted({sym for sym in _SYMBOL.findall(text) if not Element.is_valid_symbol(sym)})
    if unknown:
        names = ", ".join(repr(u) for u in unknown)
        raise FormulaError(f"formula {text!r}: unknown element {names}")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            comp = Composition(text, strict=True)
    except (ValueError, KeyError, IndexError, TypeError, AttributeError) as exc:
        raise FormulaError(f"cannot parse formula {text!r}: {exc}") from exc
    if len(comp) == 0:
        raise FormulaError(f"formula {text!r} has no elements")
    if re.search(r"(?<![0-9.])0+(\.0*)?(?![0-9.])", text):
        raise FormulaError(f"formula {text!r} has an element with amount 0")
    for el, amount in comp.items():
        if not isinstance(el, Element):
            raise FormulaError(f"formula {text!r}: {el} is not a chemical element")
        if not math.isfinite(amount) or amount <= 0:
            raise FormulaError(f"formula {text!r}: amount of {el} must be positive, got {amount}")
    return comp


def _expand_hydrate(text: str) -> str:
    """``CuSO4·5H2O`` -> ``CuSO4(H2O)5``: pymatgen reads no adduct dots."""
    parts = re.split(r"\s*[·*]\s*", text)
    if len(parts) == 1:
        return text
    out = [parts[0]]
    for part in parts[1:]:
        m = re.match(r"^(\d+(?:\.\d+)?)?(.+)$", part)
        if not m or not part:
            raise FormulaError(f"formula {text!r}: empty part around an adduct dot")
        count, rest = m.group(1), m.group(2)
        out.append(f"({rest}){count or ''}")
    return "".join(out)


def reduced_formula(formula: str | Composition) -> str:
    """Canonical reduced formula: elements by electronegativity, amounts reduced.

    Unlike pymatgen's ``reduced_formula`` it never groups polyatomic ions
    (``"AlKO6Si2" -> "KAlSi2O6"``, not ``"KAl(SiO3)2"``), so the key is the same however
    the input was written.

    >>> reduced_formula("Fe4O6"), reduced_formula("O3Fe2")
    ('Fe2O3', 'Fe2O3')
    """
    comp = parse_formula(formula) if isinstance(formula, str) else formula
    with no_pauling_warning():  # pymatgen orders the elements by Pauling electronegativity
        reduced, _ = comp.get_reduced_composition_and_factor()
    parts = sorted(reduced.items(), key=lambda kv: (_electronegativity(kv[0]), kv[0].symbol))
    return "".join(f"{el.symbol}{formula_double_format(amt)}" for el, amt in parts)


@contextlib.contextmanager
def no_pauling_warning() -> Iterator[None]:
    """Silence pymatgen's "No Pauling electronegativity for Ar" (noble gases have none), and nothing else."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="No Pauling electronegativity", category=UserWarning)
        yield


def _electronegativity(el: Element) -> float:
    with no_pauling_warning():
        x = el.X
    return x if math.isfinite(x) else math.inf  # no Pauling value: sorted last


def element_fractions(formula: str | Composition) -> dict[str, float]:
    """Atomic fractions by element symbol, summing to 1 (a new dict on every call)."""
    if isinstance(formula, str):
        return dict(_fractions_of(formula))
    return {el.symbol: float(amt) for el, amt in formula.fractional_composition.items()}


@functools.lru_cache(maxsize=1 << 17)
def _fractions_of(formula: str) -> tuple[tuple[str, float], ...]:
    """:func:`element_fractions` of a formula string, remembered.

    The stacked models' elemental correction asks for every training and test row in every fold
    (a pymatgen parse is ~50 us; about 32,000 rows per evaluate fold).
    """
    return tuple((el.symbol, float(amt)) for el, amt in parse_formula(formula).fractional_composition.items())


@functools.lru_cache(maxsize=1 << 16)
def is_element(formula: str) -> bool:
    """Whether ``formula`` is a pure element ("Fe", "O2"); remembered, as models ask per row in every fold."""
    return len(element_fractions(formula)) == 1


def element_mask(formulas: Iterable[str]) -> np.ndarray:
    """:func:`is_element` of each formula, as a boolean array (a model's rows, a calibration set)."""
    return np.fromiter((is_element(str(f)) for f in formulas), dtype=bool)
