"""The facts every layer shares: which properties matshift predicts, and which polymorph stands for a formula.

**Property registry.** :data:`PROPERTIES` holds one :class:`Property` per measured property:
its unit, the DFT column of ``data/raw/dft.parquet`` that simulates it, the mirror file its
measurements come from, the lower clamp of a prediction (a band gap is >= 0) and whether a
simulation-to-experiment shift is additive over elements (formation enthalpies, Hess's law).
Stages, the CLI's ``--property`` choices, ``dvc.yaml``'s ``foreach`` list (checked by a
test) and the library read these facts here and nowhere else.

**Polymorph rule.** A reduced formula can have several DFT entries (polymorphs). Wherever one
entry must stand for the formula (the DFT value fed to a model, the crystal graph paired
with a measurement, the crystal system of a measured formula, the DFT value ``matshift
predict`` looks up), it is chosen by :func:`choose_polymorphs`: the lowest formation energy
per atom (for one composition this orders polymorphs exactly as the energy above hull does,
and unlike ``e_above_hull`` it is known for nearly every entry); ties go to the lower property
value, then to the entry listed first. A formula none of whose entries has a known formation
energy is represented by its only entry, or, with several, by the median of their values and
no entry at all (``material_id`` None: no structure, no crystal system). Training, evaluation
and serving all call this one function, so they cannot pick different polymorphs (a
train/serve skew).

Imports nothing of the project; never reads files.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import pandas as pd


@dataclass(frozen=True)
class Property:
    """A measured property and the facts that go with it."""

    name: str  # as in params.yaml, the CLI and data/aligned/<name>/
    label: str  # for people: "band gap"
    unit: str  # of measurements, DFT values and predictions
    dft_column: str  # the column of data/raw/dft.parquet that simulates it
    measurement_file: str  # the mirror file (under ../shared/datasets) its measurements come from
    clamp_min: float | None  # predictions are clipped below at this value (None: no bound)
    additive: bool  # DFT-to-experiment shifts are additive over elements (energy additivity in align)
    element_value: float | None = None  # what a pure element has by definition (None: nothing fixed)
    # the values a DFT calculation of this property can give in ``unit``, with room to spare: a user's DFT value outside
    # them is another quantity or another unit (meV, kJ/mol, eV per formula unit), refused by `matshift predict`
    dft_bounds: tuple[float, float] = (-math.inf, math.inf)


PROPERTIES: dict[str, Property] = {
    p.name: p
    for p in (
        Property(name="band_gap", label="band gap", unit="eV", dft_column="band_gap_pbe",
                 measurement_file="experiment/expt_gap_zhuo2018.csv", clamp_min=0.0, additive=False,
                 # the mirror's largest PBE gap is 17.8 eV (HSE06: 20.3); no band gap reaches 40 eV
                 dft_bounds=(0.0, 40.0)),
        Property(name="formation_enthalpy", label="formation enthalpy", unit="eV/atom",
                 dft_column="formation_energy_per_atom",
                 measurement_file="experiment/expt_formation_enthalpy_ssub.csv", clamp_min=None, additive=True,
                 # the mirror's DFT formation energies span -4.52 to +2.34 eV/atom (NaCl's -2.1 eV/atom is -411 kJ/mol)
                 element_value=0.0, dft_bounds=(-10.0, 10.0)),
    )
}
PROPERTY_NAMES: tuple[str, ...] = tuple(PROPERTIES)

#: Column of a DFT frame that ranks polymorphs (the entry's formation energy per atom).
STABILITY = "stability"
#: The raw DFT column a reader copies into :data:`STABILITY`.
STABILITY_SOURCE = "formation_energy_per_atom"


def get_property(name: str) -> Property:
    """Return the registered property ``name``; an unknown name is a ``ValueError`` listing the valid ones."""
    try:
        return PROPERTIES[name]
    except KeyError:
        raise ValueError(f"unknown property {name!r} (valid: {', '.join(PROPERTY_NAMES)})") from None


def choose_polymorphs(frame: pd.DataFrame, *, value: str = "dft_value", eligible: pd.Series | None = None
                      ) -> pd.DataFrame:
    """Choose the polymorph that stands for each formula (see the module docstring for the rule).

    ``frame``: one row per DFT entry with ``formula``, ``value`` and optionally ``material_id``
    and :data:`STABILITY` (without it, polymorphs are ordered by value alone). Only rows with a
    known ``value`` (and, with ``eligible``, a boolean mask aligned with ``frame``, only rows
    where it is true: e.g. entries with a crystal graph) compete. Returns one row per formula,
    indexed by formula, with the chosen entry's columns.
    """
    import pandas as pd  # pandas only when a rule is applied (the registry is read by the CLI's start-up)

    keep = frame[value].notna()
    if eligible is not None:
        keep &= eligible.astype(bool)
    rows = frame[keep]
    ranked = rows[rows[STABILITY].notna()] if STABILITY in rows else rows.iloc[:0]
    unranked = rows[~rows["formula"].isin(ranked["formula"])]
    # a stable sort: exact ties keep the order the entries are listed in
    chosen = ranked.sort_values([STABILITY, value], kind="mergesort").drop_duplicates("formula") if len(ranked) else ranked
    # formulas without a known formation energy, in formula order: the median of their entries
    median = unranked.groupby("formula", sort=True)[value].median().rename(value).reset_index()
    if "material_id" in rows:
        ids = unranked.groupby("formula", sort=True)["material_id"]
        only = ids.transform("size") == 1
        median = median.merge(unranked[only.to_numpy()][["formula", "material_id", *(c for c in rows if c not in (
            "formula", "material_id", value))]], on="formula", how="left")
    out = pd.concat([chosen, median], ignore_index=True) if len(median) else chosen.reset_index(drop=True)
    return out.set_index("formula")


def metal_class_conflicts(classes: pd.DataFrame, gaps: pd.DataFrame, *, gap_tol: float) -> tuple[list[str], pd.Series]:
    """Return the metal-class conflicts: formulas labelled both ways, and labelled metals with a measured gap.

    ``classes``: ``formula``, ``is_metal`` (1 metal, 0 non-metal); ``gaps``: band-gap
    measurements (``formula``, ``value``). Returns the sorted formulas with both classes, and
    the largest measured gap (index formula, largest first) of every formula labelled metal
    whose gap exceeds ``gap_tol``. The fetch stage reports them, the metal stage leaves them out.
    """
    per = classes.groupby("formula")["is_metal"].nunique()
    measured = gaps.groupby("formula")["value"].max()
    gapped = measured.reindex(classes.loc[classes["is_metal"] == 1, "formula"].unique()).dropna()
    return sorted(per.index[per > 1]), gapped[gapped > gap_tol].sort_values(ascending=False)


def reference_per_formula(frame: pd.DataFrame, *, value: str = "dft_value") -> pd.Series:
    """Return one DFT value per reduced formula, the chosen polymorph's (:func:`choose_polymorphs`). Index: formula."""
    return choose_polymorphs(frame, value=value)[value].astype(float)


__all__ = [
    "PROPERTIES",
    "PROPERTY_NAMES",
    "STABILITY",
    "STABILITY_SOURCE",
    "Property",
    "choose_polymorphs",
    "get_property",
    "metal_class_conflicts",
    "reference_per_formula",
]
