"""Which DFT polymorph stands for an input: the user's structure matched to one, or the spread over them.

A formula can have several DFT polymorphs with very different values: the mirror's carbon holds
graphite (mp-48, PBE gap 0 eV) and lonsdaleite (mp-47, 3.34 eV), and training, like serving by
formula, uses the most stable one (:func:`models.properties.choose_polymorphs`). Two things
follow for an input of such a formula:

* **With a structure** (a CIF), the DFT value should be that polymorph's. :meth:`Polymorphs.match`
  compares it with the formula's DFT structures by pymatgen's ``StructureMatcher`` (default
  tolerances, lattices scaled to a common volume). Without an exact match, the nearest polymorph
  by two numbers that tell polymorphs apart, volume per atom and mean first-shell coordination
  (neighbours within 1.2 x each site's nearest-neighbour distance), stands for it, and the
  distance is reported: a diamond CIF finds lonsdaleite (both 4-coordinated at the same density),
  not the 3-coordinated, less dense graphite. The polymorph's other fidelities (HSE, GLLB-SC,
  SCAN) come with it, NaN where that polymorph has none.
* **Without one**, the prediction keeps the most stable polymorph, and :meth:`Polymorphs.window`
  lists the polymorphs whose formation energy lies within ``window`` eV/atom of the lowest, so
  the predictor can show the range of predictions over them and widen the interval to cover it.

Polymorphs with an unknown formation energy are left out of the window (nothing ranks them).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from models.properties import STABILITY, Property

__all__ = ["PolymorphMatch", "Polymorphs", "fingerprint", "valued_entries"]

#: first-shell cut, as a multiple of each site's nearest-neighbour distance
SHELL = 1.2
#: a 10% change of volume per atom weighs as much as one neighbour more or less
VOLUME_SCALE = 0.1


def valued_entries(dft: pd.DataFrame, prop: Property) -> pd.DataFrame:
    """Return the DFT entries with a finite value of ``prop``, its DFT column renamed ``dft_value``."""
    frame = dft.rename(columns={prop.dft_column: "dft_value"})
    return frame[np.isfinite(frame["dft_value"].to_numpy(float))]


def fingerprint(structure) -> tuple[float, float]:
    """Volume per atom (Å^3) and mean first-shell coordination number of a pymatgen ``Structure``."""
    n = len(structure)
    if n == 0 or not structure.volume > 0:
        raise ValueError("empty structure or zero volume")
    radius = max(3.0, 2.0 * (structure.volume / n) ** (1 / 3))
    centre, _, _, dist = structure.get_neighbor_list(radius)
    dist = np.asarray(dist, float)
    centre = np.asarray(centre, int)
    keep = dist > 1e-6
    centre, dist = centre[keep], dist[keep]
    nearest = np.full(n, np.inf)
    np.minimum.at(nearest, centre, dist)
    if not np.isfinite(nearest).all():
        raise ValueError(f"a site has no neighbour within {radius:.1f} Å")
    shell = dist <= SHELL * nearest[centre]
    return float(structure.volume / n), float(np.bincount(centre[shell], minlength=n).mean())


def fingerprint_distance(a: tuple[float, float], b: tuple[float, float]) -> float:
    """|ln(volume ratio)| / 0.1 + |coordination difference|."""
    return abs(np.log(a[0] / b[0])) / VOLUME_SCALE + abs(a[1] - b[1])


@dataclass(frozen=True)
class PolymorphMatch:
    """The polymorph that stands for a user's structure: its table row, ``exact`` or nearest, and the distance."""

    row: pd.Series
    exact: bool
    distance: float

    @property
    def material_id(self) -> str:
        return str(self.row["material_id"])

    def describe(self) -> str:
        if self.exact:
            return f"matches {self.material_id} (StructureMatcher): its DFT value"
        return (f"no DFT polymorph matches; nearest by density and coordination: {self.material_id} "
                f"(distance {self.distance:.2f}): its DFT value")


class Polymorphs:
    """DFT polymorphs of the formulas that have more than one.

    Args:
        table: one row per DFT entry: ``material_id``, ``formula``, ``dft_value``, :data:`STABILITY`
            (formation energy per atom; NaN = unknown) and the other fidelities' columns (``extra``).
        structures: ``material_id`` -> structure as pymatgen JSON (a Series, or a callable that
            returns one for the ids it is given: read only when a user's structure is matched).
        extra: names of the other fidelities' columns of ``table``.

    """

    def __init__(self, table: pd.DataFrame, *, structures: pd.Series | Callable[[list[str]], pd.Series] | None = None,
                 extra: tuple[str, ...] = ()):
        self.table = table.reset_index(drop=True)
        self.extra = tuple(c for c in extra if c in self.table)
        self._structures = structures
        self._by_formula = {f: part for f, part in self.table.groupby("formula", sort=False)}
        self._fingerprints: dict[str, tuple[float, float] | None] = {}
        self._parsed: dict[str, object] = {}

    @classmethod
    def from_dft(cls, dft: pd.DataFrame, prop: Property, *, extra: tuple[str, ...] = (),
                 structures: pd.Series | Callable[[list[str]], pd.Series] | None = None) -> Polymorphs | None:
        """From the DFT table (``read_dft``'s columns): entries with a value whose formula has two or more; None if none."""
        frame = valued_entries(dft, prop)
        counts = frame["formula"].value_counts()
        frame = frame[frame["formula"].isin(counts.index[counts > 1])]
        if frame.empty:
            return None
        stability = frame.get(STABILITY, np.nan)
        cols = ["material_id", "formula", "dft_value", *(c for c in extra if c in frame)]
        table = frame[cols].assign(**{STABILITY: stability}).reset_index(drop=True)
        if isinstance(structures, pd.Series):
            structures = structures[structures.index.isin(set(table["material_id"]))]
        return cls(table, structures=structures, extra=extra)

    def __contains__(self, formula: str) -> bool:
        return formula in self._by_formula

    def window(self, formula: str, window: float) -> pd.DataFrame:
        """Return the formula's polymorphs within ``window`` eV/atom of its lowest formation energy (empty if none ranked)."""
        part = self._by_formula.get(formula)
        if part is None or window <= 0:
            return self.table.iloc[:0]
        energy = part[STABILITY].to_numpy(float)
        if not np.isfinite(energy).any():
            return self.table.iloc[:0]
        return part[np.isfinite(energy) & (energy <= np.nanmin(energy) + window)]

    def match(self, structure, formula: str) -> PolymorphMatch | None:
        """Find the polymorph of ``formula`` that stands for ``structure`` (None: no polymorph with a structure)."""
        part = self._by_formula.get(formula)
        if part is None or self._structures is None:
            return None
        self._load([m for m in part["material_id"] if m not in self._parsed])
        ids = [m for m in part["material_id"] if self._parsed.get(m) is not None]
        if not ids:
            return None
        rows = part.set_index("material_id").loc[ids].reset_index()
        # most stable first: an exact match to several (duplicated entries) takes the stable one
        rows = rows.sort_values(STABILITY, kind="mergesort", na_position="last").reset_index(drop=True)
        # pymatgen's matcher: only when a user's structure is matched
        from pymatgen.analysis.structure_matcher import StructureMatcher

        matcher = StructureMatcher()
        for _, row in rows.iterrows():
            try:
                if matcher.fit(structure, self._parsed[row["material_id"]]):
                    return PolymorphMatch(row, exact=True, distance=0.0)
            except (ValueError, TypeError):  # the matcher refuses an odd structure: try the fingerprint
                continue
        mine = fingerprint(structure)
        distances = [fingerprint_distance(mine, fp) if (fp := self._fingerprint(m)) is not None else np.inf
                     for m in rows["material_id"]]
        best = int(np.argmin(distances))
        if not np.isfinite(distances[best]):
            return None
        return PolymorphMatch(rows.iloc[best], exact=False, distance=float(distances[best]))

    def _load(self, ids: list[str]) -> None:
        if not ids:
            return
        # pymatgen: only when a user's structure is matched
        from pymatgen.core import Structure

        found = self._structures_for(ids)
        for m in ids:
            text = found.get(m) if m in found.index else None
            try:
                self._parsed[m] = Structure.from_dict(json.loads(text)) if isinstance(text, str) else None
            except (ValueError, KeyError, TypeError):  # an unreadable stored structure: that polymorph is not matched
                self._parsed[m] = None

    def _structures_for(self, ids: list[str]) -> pd.Series:
        """``material_id`` -> stored structure JSON for ``ids`` (from the Series, or read through the callable)."""
        source = self._structures
        found = source if isinstance(source, pd.Series) else source(ids)
        return found[~found.index.duplicated()]

    def _fingerprint(self, material_id: str) -> tuple[float, float] | None:
        if material_id not in self._fingerprints:
            try:
                self._fingerprints[material_id] = fingerprint(self._parsed[material_id])
            except ValueError:
                self._fingerprints[material_id] = None
        return self._fingerprints[material_id]

    # ------------------------------------------------------------------ storage (a parquet file, no pickle)

    def save(self, path: Path) -> None:
        """Write the table and the structures of its entries (when known) as one parquet file."""
        frame = self.table.copy()
        if self._structures is not None:
            found = self._structures_for(list(frame["material_id"]))
            frame["structure"] = [found.get(m) if m in found.index else None for m in frame["material_id"]]
        frame.to_parquet(path, index=False)

    @classmethod
    def load(cls, path: Path, *, extra: tuple[str, ...] = ()) -> Polymorphs:
        frame = pd.read_parquet(path)
        structures = None
        if "structure" in frame:
            structures = frame.set_index("material_id")["structure"].dropna()
            frame = frame.drop(columns="structure")
        extra = extra or tuple(c for c in frame if c not in ("material_id", "formula", "dft_value", STABILITY))
        return cls(frame, structures=structures, extra=extra)
