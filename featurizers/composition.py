"""Composition descriptors and composition graphs, computed from reduced formulas.

Descriptors are the statistics of matminer's ``ElementProperty.from_preset("magpie")``
(Ward et al., npj Comput. Mater. 2, 16028 (2016)), its ``Stoichiometry`` p-norms and its
``ValenceOrbital`` shell occupations, with matminer's own column names. They are computed
here by a vectorised implementation over a (composition x element) table built from
matminer's element tables (``MagpieData(impute_nan=True)``), because matminer evaluates one
composition at a time in Python (~700 compositions/s/core). matminer stays the reference:
``tests/featurizers/test_composition.py`` checks equality to 1e-8, and ``benchmarks/featurize.py``
times both.

Missing element data (NaN in the Magpie tables, e.g. ``GSmagmom`` of heavy elements)
follows matminer's ``impute_nan=True`` rule: the property's mean over the elements that
have it (rounded for integer-valued properties, as matminer does). So no descriptor is NaN;
a formula that cannot be parsed is reported as a failure, never silently filled.

This module never reads files or parameters; callers pass formulas and options.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from functools import lru_cache

import numpy as np
import pandas as pd
from pymatgen.core import Composition, Element

from featurizers.chemistry import FormulaError, parse_formula
from featurizers.elements import element_embedding
from featurizers.settings import DESCRIPTOR_SETS

__all__ = [
    "DESCRIPTOR_SETS",
    "MAGPIE_FEATURES",
    "MAGPIE_STATS",
    "DescriptorFailure",
    "DescriptorResult",
    "composition_descriptors",
    "composition_graph",
    "descriptor_labels",
    "matminer_descriptors",
]

MAGPIE_FEATURES: tuple[str, ...] = (
    "Number", "MendeleevNumber", "AtomicWeight", "MeltingT", "Column", "Row", "CovalentRadius",
    "Electronegativity", "NsValence", "NpValence", "NdValence", "NfValence", "NValence",
    "NsUnfilled", "NpUnfilled", "NdUnfilled", "NfUnfilled", "NUnfilled", "GSvolume_pa",
    "GSbandgap", "GSmagmom", "SpaceGroupNumber",
)
MAGPIE_STATS: tuple[str, ...] = ("minimum", "maximum", "range", "mean", "avg_dev", "mode")
STOICHIOMETRY_P: tuple[int, ...] = (0, 2, 3, 5, 7, 10)
ORBITALS: tuple[str, ...] = ("s", "p", "d", "f")
_MAX_Z = 103  # MagpieData covers H..Lr


@dataclass(frozen=True)
class DescriptorFailure:
    formula: str
    reason: str


@dataclass(frozen=True)
class DescriptorResult:
    """Descriptors of the formulas that worked (``frame``: ``formula`` + float columns)."""

    frame: pd.DataFrame
    failures: list[DescriptorFailure] = field(default_factory=list)


def descriptor_labels(sets: Sequence[str] = DESCRIPTOR_SETS) -> list[str]:
    """Column names, identical to matminer's ``feature_labels()`` of the same featurizers."""
    _check_sets(sets)
    labels: list[str] = []
    if "magpie" in sets:
        labels += [f"MagpieData {s} {f}" for f in MAGPIE_FEATURES for s in MAGPIE_STATS]
    if "stoichiometry" in sets:
        labels += [f"{p}-norm" for p in STOICHIOMETRY_P]
    if "valence_orbital" in sets:
        labels += [f"{prop} {o} valence electrons" for prop in ("avg", "frac") for o in ORBITALS]
    return labels


def _check_sets(sets: Sequence[str]) -> None:
    unknown = [s for s in sets if s not in DESCRIPTOR_SETS]
    if unknown or not sets:
        raise ValueError(f"descriptor sets must be a non-empty subset of {DESCRIPTOR_SETS}, got {list(sets)}")


@lru_cache(maxsize=1)
def _magpie_table() -> np.ndarray:
    """(Z, property) table from matminer's MagpieData with its NaN imputation; row 0 unused."""
    # matminer: seconds to import; only when descriptors are computed
    from matminer.utils.data import MagpieData

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        data = MagpieData(impute_nan=True)
    table = np.full((_MAX_Z + 1, len(MAGPIE_FEATURES)), np.nan)
    for z in range(1, _MAX_Z + 1):
        el = Element.from_Z(z)
        for j, prop in enumerate(MAGPIE_FEATURES):
            table[z, j] = data.get_elemental_property(el, prop)
    table.flags.writeable = False
    return table


def _composition_arrays(comps: Sequence[Composition]) -> tuple[np.ndarray, np.ndarray]:
    """Return padded atomic numbers [n, k] and amounts [n, k] (0 = padding)."""
    k = max(len(c) for c in comps)
    z = np.zeros((len(comps), k), dtype=np.int64)
    amt = np.zeros((len(comps), k))
    for i, comp in enumerate(comps):
        items = list(comp.element_composition.items())
        z[i, : len(items)] = [el.Z for el, _ in items]
        amt[i, : len(items)] = [a for _, a in items]
    return z, amt


def _descriptor_matrix(z: np.ndarray, amt: np.ndarray, sets: Sequence[str]) -> np.ndarray:
    r"""Vectorised matminer statistics.

    With weights :math:`w_e` (element amounts) and property values :math:`p_e`:
    mean :math:`\bar p = \sum_e w_e p_e / \sum_e w_e`, avg_dev
    :math:`\sum_e w_e |p_e - \bar p| / \sum_e w_e`, mode = smallest :math:`p_e` among the
    elements whose weight is close (``np.isclose``) to the largest weight.
    """
    table = _magpie_table()
    present = z > 0
    w = amt / amt.sum(axis=1, keepdims=True)  # [n, k] fractions (0 on padding)
    vals = table[z]  # [n, k, f]; row 0 is NaN padding, masked below
    blocks: list[np.ndarray] = []
    if "magpie" in sets or "valence_orbital" in sets:
        mean = np.einsum("nk,nkf->nf", w, np.where(present[..., None], vals, 0.0))
    if "magpie" in sets:
        big = np.where(present[..., None], vals, np.inf)
        small = np.where(present[..., None], vals, -np.inf)
        vmin = big.min(axis=1)
        vmax = small.max(axis=1)
        dev = np.abs(np.where(present[..., None], vals, 0.0) - mean[:, None, :])
        avg_dev = np.einsum("nk,nkf->nf", w, dev)
        wmax = amt.max(axis=1, keepdims=True)
        # same closeness test as matminer's PropertyStats.mode (np.isclose defaults)
        top = present & (np.abs(amt - wmax) <= 1e-8 + 1e-5 * np.abs(wmax))
        mode = np.where(top[..., None], vals, np.inf).min(axis=1)
        stats = {"minimum": vmin, "maximum": vmax, "range": vmax - vmin, "mean": mean,
                 "avg_dev": avg_dev, "mode": mode}
        blocks.append(np.stack([stats[s] for s in MAGPIE_STATS], axis=2).reshape(len(z), -1))
    if "stoichiometry" in sets:
        cols = [present.sum(axis=1).astype(float)]
        cols += [(w**p).sum(axis=1) ** (1.0 / p) for p in STOICHIOMETRY_P if p != 0]
        blocks.append(np.stack(cols, axis=1))
    if "valence_orbital" in sets:
        idx = [MAGPIE_FEATURES.index(f"N{o}Valence") for o in ORBITALS]
        avg = mean[:, idx]
        total = mean[:, [MAGPIE_FEATURES.index("NValence")]]
        blocks.append(np.concatenate([avg, avg / total], axis=1))
    return np.concatenate(blocks, axis=1)


def composition_descriptors(
    formulas: Iterable[str],
    *,
    sets: Sequence[str] = DESCRIPTOR_SETS,
    chunk_size: int = 4096,
) -> DescriptorResult:
    """Descriptors for each distinct formula (duplicates are computed once).

    Formulas that do not parse, or contain elements beyond Lr, become failures with the
    reason; rows with a non-finite value are also failures (never written as NaN).
    """
    _check_sets(sets)
    labels = descriptor_labels(sets)
    distinct = list(dict.fromkeys(formulas))
    comps: list[Composition] = []
    kept: list[str] = []
    failures: list[DescriptorFailure] = []
    for formula in distinct:
        try:
            comp = parse_formula(formula)
        except FormulaError as exc:
            failures.append(DescriptorFailure(str(formula), f"cannot parse formula: {exc}"))
            continue
        too_heavy = [el.symbol for el in comp if el.Z > _MAX_Z]
        if too_heavy:
            failures.append(DescriptorFailure(formula, f"no Magpie data for {', '.join(too_heavy)}"))
            continue
        comps.append(comp)
        kept.append(formula)
    parts = []
    for start in range(0, len(comps), chunk_size):
        z, amt = _composition_arrays(comps[start : start + chunk_size])
        parts.append(_descriptor_matrix(z, amt, sets))
    matrix = np.concatenate(parts) if parts else np.zeros((0, len(labels)))
    finite = np.isfinite(matrix).all(axis=1)
    for i in np.flatnonzero(~finite):
        bad = [labels[j] for j in np.flatnonzero(~np.isfinite(matrix[i]))]
        failures.append(DescriptorFailure(kept[i], f"non-finite descriptor(s): {', '.join(bad[:3])}"))
    frame = pd.DataFrame(matrix[finite], columns=labels)
    frame.insert(0, "formula", [f for f, ok in zip(kept, finite, strict=True) if ok])
    return DescriptorResult(frame=frame, failures=failures)


def matminer_descriptors(
    formulas: Sequence[str], *, sets: Sequence[str] = DESCRIPTOR_SETS, n_jobs: int = 1
) -> pd.DataFrame:
    """Compute the same descriptors with matminer itself (the reference; slow).

    Uses ``MultipleFeaturizer.featurize_many`` with ``ignore_errors=False`` so a failure
    raises instead of turning into NaN.
    """
    # matminer: seconds to import; only when descriptors are computed
    from matminer.featurizers.base import MultipleFeaturizer
    from matminer.featurizers.composition import ElementProperty, Stoichiometry, ValenceOrbital

    _check_sets(sets)
    parts = {
        "magpie": lambda: ElementProperty.from_preset("magpie"),
        "stoichiometry": Stoichiometry,
        "valence_orbital": ValenceOrbital,
    }
    feat = MultipleFeaturizer([parts[s]() for s in DESCRIPTOR_SETS if s in sets])
    feat.set_n_jobs(n_jobs)
    comps = [parse_formula(f) for f in formulas]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        rows = feat.featurize_many(comps, ignore_errors=False, pbar=False)
    frame = pd.DataFrame(np.asarray(rows, dtype=float), columns=feat.feature_labels())
    frame.insert(0, "formula", list(formulas))
    return frame


def composition_graph(formula: str, *, embedding: str = "megnet16"):
    """Graph of a composition for entries without a structure.

    Nodes are the distinct elements sorted by atomic number; ``x`` is the same element
    embedding the crystal graphs use, ``z`` the atomic numbers, ``weight`` the atomic
    fractions (summing to 1); ``edge_index`` connects every ordered pair of distinct
    elements (no self loops; a single element gives no edges).

    >>> g = composition_graph("Fe2O3")
    >>> g.z.tolist(), [round(w, 2) for w in g.weight.tolist()], g.edge_index.shape[1]
    ([8, 26], [0.6, 0.4], 2)
    """
    # torch / PyG: seconds to import; only the tensor path needs them
    import torch
    from torch_geometric.data import Data

    comp = parse_formula(formula)
    frac = comp.fractional_composition
    items = sorted(((el.Z, float(a)) for el, a in frac.items()), key=lambda t: t[0])
    zs = np.array([z for z, _ in items], dtype=np.int64)
    table = element_embedding(embedding)
    n = len(zs)
    src, dst = np.meshgrid(np.arange(n), np.arange(n), indexing="ij")
    off = src != dst
    weight = np.array([a for _, a in items])
    if not math.isclose(weight.sum(), 1.0, abs_tol=1e-9):
        raise FormulaError(f"formula {formula!r}: fractions sum to {weight.sum()}, not 1")
    return Data(
        x=torch.from_numpy(table[zs].astype(np.float32)),
        z=torch.from_numpy(zs),
        weight=torch.from_numpy(weight.astype(np.float32)),
        edge_index=torch.from_numpy(np.stack([src[off], dst[off]]).astype(np.int64)),
        num_nodes=n,
    )
