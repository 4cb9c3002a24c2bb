"""Composition descriptors that tell metals from insulators: element classes and the valence-electron count.

The featurize stage's Magpie statistics average element properties; they do not say directly
whether a formula has anything to bond ionically with, nor whether its electrons can pair up.
:func:`bonding_descriptors` adds, per formula:

* the atomic fraction of metals, of transition metals, of f-block elements, of halogens, of
  chalcogens and of the p-block anion formers (N, P, As, O, S, Se, Te, F, Cl, Br, I) and H;
* the valence electrons per atom, counting the group's electrons (s + d for groups 1-12,
  s + p for groups 13-18, three for a lanthanoid or actinoid);
* the parity of the valence-electron count of the reduced formula unit (1 = odd). With an
  odd count per primitive cell the bands cannot all be filled in pairs, so a non-magnetic
  solid with one such formula unit per cell is a metal (a hint, not a rule: the cell may hold
  two); NaN where the reduced amounts are not whole numbers.

Element properties come from pymatgen's periodic table; nothing is fitted.

:func:`ionic_descriptors` adds matminer's ``IonProperty`` (Ward et al. 2016) per formula:
whether the formula can be charge-balanced with each element in one of its common
oxidation states (an intermetallic such as Cu3Au cannot; Al2O3 can), and the maximum and
composition-weighted mean ionic character of its element pairs. The fast mode takes one
oxidation state per element: a mixed-valence compound (Fe3O4) counts as not balanced.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import numpy as np
import pandas as pd
from pymatgen.core import Composition, Element

from featurizers.chemistry import element_fractions, no_pauling_warning, parse_formula

__all__ = ["BONDING_COLUMNS", "ELEMENT_CLASSES", "IONIC_COLUMNS", "bonding_descriptors", "class_fractions",
           "ionic_descriptors"]

#: Column order of :func:`bonding_descriptors`.
BONDING_COLUMNS = ("metal_fraction", "transition_metal_fraction", "f_block_fraction", "halogen_fraction",
                   "chalcogen_fraction", "anion_former_fraction", "valence_electrons_per_atom",
                   "odd_electron_count")

#: Column order of :func:`ionic_descriptors`.
IONIC_COLUMNS = ("charge_balanced", "max_ionic_char", "avg_ionic_char")

_HALOGENS = frozenset({"F", "Cl", "Br", "I"})
_CHALCOGENS = frozenset({"O", "S", "Se", "Te"})
_ANION_FORMERS = frozenset({"N", "P", "As", "H"}) | _HALOGENS | _CHALCOGENS

#: Named element classes for :func:`class_fractions`.
ELEMENT_CLASSES: dict[str, frozenset[str]] = {
    "diatomic_gas": frozenset({"H", "N", "O", "F", "Cl"}),
    "halogen": _HALOGENS,
    "chalcogen": _CHALCOGENS,
    "anion_former": _ANION_FORMERS,
}


@functools.cache
def _element_row(symbol: str) -> tuple[float, ...]:
    """(metal, transition metal, f block, halogen, chalcogen, anion former, valence electrons) of one element."""
    el = Element(symbol)
    f_block = el.is_lanthanoid or el.is_actinoid
    group = el.group
    valence = 3 if f_block else group if group <= 12 else group - 10
    if symbol == "He":
        valence = 2
    return (float(el.is_metal), float(el.is_transition_metal and not f_block), float(f_block),
            float(symbol in _HALOGENS), float(symbol in _CHALCOGENS), float(symbol in _ANION_FORMERS), float(valence))


def _row(comp: Composition) -> list[float]:
    fractions = comp.fractional_composition
    table = np.array([_element_row(el.symbol) for el in fractions])
    weights = np.array([float(amt) for amt in fractions.values()])
    per_atom = weights @ table  # six class fractions and the mean valence count
    reduced = comp.reduced_composition
    amounts = np.array([float(reduced[el]) for el in fractions])
    whole = np.allclose(amounts, np.round(amounts), atol=1e-6)
    parity = float(round(float(np.round(amounts) @ table[:, 6])) % 2) if whole else float("nan")
    return [*per_atom.tolist(), parity]


def bonding_descriptors(formulas: Sequence[str | Composition]) -> pd.DataFrame:
    """Return :data:`BONDING_COLUMNS` per formula (index: the formulas as given).

    Raises :class:`featurizers.chemistry.FormulaError` naming a formula that is not chemistry.
    """
    with no_pauling_warning():  # pymatgen orders a noble gas's composition by electronegativity
        rows = [_formula_row(f) if isinstance(f, str) else _row(f) for f in formulas]
    return _table(rows, formulas, BONDING_COLUMNS)


def _table(rows: list, formulas: Sequence, columns: tuple[str, ...]) -> pd.DataFrame:
    """One row of ``columns`` per formula, indexed by the formulas as given (an empty list gives an empty table)."""
    data = np.array(rows, dtype=float).reshape(len(rows), len(columns))
    return pd.DataFrame(data, index=pd.Index([str(f) for f in formulas], name="formula"), columns=list(columns))


@functools.lru_cache(maxsize=1 << 16)
def _formula_row(formula: str) -> tuple[float, ...]:
    """:func:`_row` of a formula string, remembered: the metal stage asks for the same formulas in every fold."""
    return tuple(_row(parse_formula(formula)))


@functools.cache
def _ion_property():
    # matminer: imported when the first ionic descriptor is asked for
    from matminer.featurizers.composition import IonProperty

    return IonProperty(fast=True)


@functools.lru_cache(maxsize=1 << 16)
def _ionic_row(formula: str) -> tuple[float, float, float]:
    comp = parse_formula(formula)
    with no_pauling_warning():
        balanced, max_char, avg_char = _ion_property().featurize(comp)
    return float(bool(balanced)), float(max_char), float(avg_char)


def ionic_descriptors(formulas: Sequence[str]) -> pd.DataFrame:
    """Return :data:`IONIC_COLUMNS` per formula (index: the formulas as given; see the module docstring).

    Raises :class:`featurizers.chemistry.FormulaError` naming a formula that is not chemistry.
    """
    return _table([_ionic_row(str(f)) for f in formulas], formulas, IONIC_COLUMNS)


def class_fractions(formulas: Sequence[str], names: Sequence[str]) -> np.ndarray:
    """Return the atomic fraction of each named class of :data:`ELEMENT_CLASSES` per formula (rows: formulas).

    Raises ``KeyError`` naming a class that is not in :data:`ELEMENT_CLASSES`, and
    :class:`featurizers.chemistry.FormulaError` naming a formula that is not chemistry.
    """
    unknown = [n for n in names if n not in ELEMENT_CLASSES]
    if unknown:
        raise KeyError(f"no element class {unknown[0]!r} (known: {', '.join(ELEMENT_CLASSES)})")
    out = np.zeros((len(formulas), len(names)))
    for r, formula in enumerate(formulas):
        fractions = element_fractions(str(formula))
        for c, name in enumerate(names):
            out[r, c] = sum(v for e, v in fractions.items() if e in ELEMENT_CLASSES[name])
    return out
