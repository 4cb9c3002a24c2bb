"""Cross-validation protocols, in distribution and out of distribution.

Every protocol returns :class:`Fold` objects of row positions into the table it was given.
Folds never share a reduced formula between their training and test parts, so repeated
measurements of one composition cannot leak an answer across the split. Nothing here looks
at target values except :func:`range_extrapolation`, whose whole point is to hold out the
top of the range.

Chemical families are decided by the most electronegative element of the formula (its
formal anion): F/Cl/Br/I -> halide, O -> oxide, S/Se/Te -> chalcogenide, N/P/As/Sb/Bi ->
pnictide, otherwise (C, H, B, Si, metals...) -> intermetallic/other.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

from featurizers.chemistry import parse_formula
from models.evaluation.config import EvalSettings

__all__ = [
    "FAMILIES",
    "Fold",
    "chemical_family",
    "crystal_system_folds",
    "family_folds",
    "grouped_kfold",
    "loco_descriptors",
    "loco_folds",
    "make_folds",
    "range_extrapolation",
]

FAMILIES = ("halide", "oxide", "chalcogenide", "pnictide", "intermetallic")
_ANION_FAMILY = {
    **dict.fromkeys(("F", "Cl", "Br", "I"), "halide"),
    "O": "oxide",
    **dict.fromkeys(("S", "Se", "Te"), "chalcogenide"),
    **dict.fromkeys(("N", "P", "As", "Sb", "Bi"), "pnictide"),
}


@dataclass(frozen=True)
class Fold:
    """One split: ``protocol`` and ``name`` identify it; indices are row positions."""

    protocol: str
    name: str
    train: np.ndarray
    test: np.ndarray

    def to_dict(self) -> dict:
        return {
            "protocol": self.protocol,
            "name": self.name,
            "train": self.train.tolist(),
            "test": self.test.tolist(),
        }


def chemical_family(formula: str) -> str:
    """Family of ``formula`` by its most electronegative element (see module docstring)."""
    comp = parse_formula(formula)
    if len(comp) == 1:
        return "intermetallic"
    anion = max(comp.elements, key=lambda el: (np.nan_to_num(el.X, nan=0.0), el.Z))
    return _ANION_FAMILY.get(anion.symbol, "intermetallic")


def _folds_from_groups(protocol: str, labels: Sequence[str], names: Sequence[str]) -> list[Fold]:
    labels = np.asarray(labels)
    all_idx = np.arange(len(labels))
    return [
        Fold(protocol, str(name), all_idx[labels != name], all_idx[labels == name])
        for name in names
        if (labels == name).any() and (labels != name).any()
    ]


def grouped_kfold(formulas: Sequence[str], *, n_folds: int = 5, seed: int = 0) -> list[Fold]:
    """K folds grouped by reduced formula, groups assigned at random (seeded).

    Groups are shuffled and dealt greedily to the currently smallest fold, so the folds
    have near-equal numbers of rows even when a few formulas are measured many times.
    """
    if n_folds < 2:
        raise ValueError(f"n_folds must be >= 2, got {n_folds}")
    formulas = pd.Series(np.asarray(formulas, dtype=object))
    groups = formulas.unique()
    if len(groups) < n_folds:
        raise ValueError(f"{len(groups)} distinct formulas cannot make {n_folds} folds")
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(groups))
    sizes = formulas.value_counts()
    fold_of: dict[str, int] = {}
    load = np.zeros(n_folds, dtype=int)
    for g in groups[order]:
        k = int(np.argmin(load))
        fold_of[g] = k
        load[k] += int(sizes[g])
    labels = formulas.map(fold_of).to_numpy()
    return _folds_from_groups("grouped_cv", [str(v) for v in labels], [str(k) for k in range(n_folds)])


def loco_descriptors(descriptors: pd.DataFrame, formulas: Sequence[str]) -> np.ndarray:
    """Return the numeric descriptor row of each of ``formulas`` (repeats included), what :func:`loco_folds` clusters."""
    table = descriptors.drop_duplicates("formula").set_index("formula").select_dtypes(include="number")
    return table.loc[list(formulas)].to_numpy(float)


def loco_folds(
    formulas: Sequence[str], descriptors: np.ndarray, *, n_clusters: int = 5, seed: int = 0
) -> list[Fold]:
    """Leave-one-cluster-out: k-means on standardised descriptors of distinct formulas.

    Clustering is on unique formulas (so repeated measurements do not pull centroids) and
    each row inherits its formula's cluster.
    """
    # scikit-learn: about a second to import; only this method needs it
    from sklearn.cluster import KMeans
    from sklearn.preprocessing import StandardScaler

    formulas = np.asarray(formulas, dtype=object)
    descriptors = np.asarray(descriptors, dtype=float)
    if descriptors.shape[0] != len(formulas):
        raise ValueError("descriptors must have one row per formula")
    uniq, first = np.unique(formulas, return_index=True)
    x = StandardScaler().fit_transform(descriptors[first])
    x = np.nan_to_num(x)
    km = KMeans(n_clusters=n_clusters, n_init=10, random_state=seed).fit(x)
    cluster_of = dict(zip(uniq, km.labels_, strict=True))
    labels = [f"cluster{cluster_of[f]}" for f in formulas]
    return _folds_from_groups("loco", labels, [f"cluster{k}" for k in range(n_clusters)])


def family_folds(formulas: Sequence[str]) -> list[Fold]:
    """Leave-chemical-family-out: each family in :data:`FAMILIES` held out in turn."""
    labels = [chemical_family(f) for f in formulas]
    return _folds_from_groups("family_out", labels, FAMILIES)


def crystal_system_folds(formulas: Sequence[str], crystal_systems: Sequence[str]) -> list[Fold]:
    """Leave-crystal-system-out over rows whose crystal system is known (non-empty).

    Rows with an unknown crystal system are in no fold's test part but stay available for
    training, as are rows of the other systems; a formula's rows always share one system.
    """
    systems = np.asarray([s or "" for s in crystal_systems], dtype=object)
    names = sorted({s for s in systems if s})
    return _folds_from_groups("crystal_system_out", list(systems), names)


def range_extrapolation(values: Sequence[float], formulas: Sequence[str], *, top_fraction: float = 0.1) -> Fold:
    """Hold out the formulas whose mean value is in the top ``top_fraction`` of rows.

    Splitting by formula (not row) keeps repeated measurements on one side.
    """
    if not 0 < top_fraction < 1:
        raise ValueError(f"top_fraction must be in (0, 1), got {top_fraction}")
    frame = pd.DataFrame({"v": np.asarray(values, dtype=float), "f": np.asarray(formulas, dtype=object)})
    mean = frame.groupby("f")["v"].transform("mean").to_numpy()
    threshold = np.quantile(mean, 1 - top_fraction)
    idx = np.arange(len(frame))
    return Fold("range_extrapolation", f"top{round(top_fraction * 100)}pct", idx[mean < threshold], idx[mean >= threshold])


def make_folds(settings: EvalSettings, formulas: Sequence[str], values: Sequence[float],
               crystal_systems: Sequence[str], descriptors: pd.DataFrame, *, seed: int) -> list[Fold]:
    """Build the seeded folds of every protocol in ``settings.protocols``, over measurement rows (positions).

    ``formulas``, ``values`` and ``crystal_systems`` are per measurement; ``descriptors`` keyed by
    formula (LOCO clusters them).
    """
    formulas = list(formulas)
    folds: list[Fold] = []
    for proto in settings.protocols:
        if proto == "grouped_cv":
            folds += grouped_kfold(formulas, n_folds=settings.n_folds, seed=seed)
        elif proto == "loco":
            folds += loco_folds(formulas, loco_descriptors(descriptors, formulas), n_clusters=settings.loco_clusters,
                                seed=seed)
        elif proto == "family_out":
            folds += family_folds(formulas)
        elif proto == "crystal_system_out":
            folds += crystal_system_folds(formulas, list(crystal_systems))
        elif proto == "range_extrapolation":
            folds.append(range_extrapolation(np.asarray(values), formulas, top_fraction=settings.top_fraction))
    if not folds:
        raise ValueError("no fold could be made: check evaluate.*.protocols and the data")
    return folds
