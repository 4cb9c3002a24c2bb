"""Compositions as mass-conserving mixtures of DFT compounds: the lower convex hull as a DFT estimate.

A formula without a DFT entry still has DFT neighbours in composition space: the compounds of
its chemical system. Written as a mixture of them that conserves every element (the
stoichiometry law the alignment enforces), the mixture of lowest DFT formation energy is the
lower convex hull at that composition, a small linear program (SciPy's HiGHS)::

    minimise   sum_i w_i E_i   over w >= 0
    subject to sum_i w_i x_i = x          (x: atomic fractions of the formula's elements)

over the compounds whose elements are all in the formula, with every pure element at E = 0
available (so the program is always feasible) and the formula's own entries left out (so a
covered formula gets an out-of-sample estimate, as the cross-fitted DFT surrogate gives). The
optimum ``hull_energy`` estimates the formation energy per atom: a compound stable enough to be
measured lies on or near the hull, below it when it is itself stable. The mixture also carries
other values: each of ``value_columns`` is averaged over the mixture's compounds with their
atomic weights ``w`` (for the PBE gap: the gap of the phases the composition would separate
into; NaN when a compound of the mixture has no value, such as an element without a DFT entry
that is not a metal).
"""

from __future__ import annotations

from collections.abc import Sequence
from itertools import combinations

import numpy as np
import pandas as pd

from featurizers.chemistry import element_fractions

__all__ = ["hull_mixtures"]

#: weights below this are not counted as part of the mixture
MIN_WEIGHT = 1e-9


def hull_mixtures(reference: pd.DataFrame, formulas: Sequence[str], *, energy: str = "energy",
                  value_columns: Sequence[str] = ()) -> pd.DataFrame:
    """Lower-hull mixture of each formula of ``formulas`` from ``reference``, its own entries left out.

    ``reference``: one row per DFT formula (reduced), columns ``formula``, ``energy`` (formation
    energy per atom, eV/atom; rows without one are not candidates) and ``value_columns``.
    Returns one row per formula (index: formula) with ``hull_energy``, ``n_components`` (compounds
    and elements with weight), ``elements_only`` (the mixture is pure elements: nothing of the
    chemical system is known) and ``mixture_<column>`` for each value column. A formula that
    cannot be parsed gets NaN.
    """
    # SciPy's LP solver: only when mixtures are computed
    from scipy.optimize import linprog

    ref = reference[np.isfinite(reference[energy].to_numpy(float))].drop_duplicates("formula")
    fractions = {f: element_fractions(f) for f in ref["formula"]}
    by_system: dict[frozenset, list[int]] = {}
    for k, f in enumerate(ref["formula"]):
        by_system.setdefault(frozenset(fractions[f]), []).append(k)
    energies = ref[energy].to_numpy(float)
    values = {c: ref[c].to_numpy(float) for c in value_columns}
    names = ref["formula"].tolist()
    rows = []
    for formula in formulas:
        try:
            target = element_fractions(formula)
        except (ValueError, KeyError):
            rows.append({"formula": formula})
            continue
        elements = sorted(target)
        systems = [frozenset(s) for n in range(1, len(elements) + 1) for s in combinations(elements, n)]
        cand = [k for s in systems for k in by_system.get(s, ()) if names[k] != formula]
        known = {e for k in cand if len(fractions[names[k]]) == 1 for e in fractions[names[k]]}
        virtual = [e for e in elements if e not in known]  # pure elements without a DFT entry: E = 0
        a = np.zeros((len(elements), len(cand) + len(virtual)))
        for j, k in enumerate(cand):
            for e, x in fractions[names[k]].items():
                a[elements.index(e), j] = x
        for j, e in enumerate(virtual):
            a[elements.index(e), len(cand) + j] = 1.0
        cost = np.concatenate([energies[cand], np.zeros(len(virtual))])
        res = linprog(cost, A_eq=a, b_eq=np.array([target[e] for e in elements]), bounds=(0, None), method="highs")
        if res.status != 0:
            rows.append({"formula": formula})
            continue
        w = np.where(res.x > MIN_WEIGHT, res.x, 0.0)
        compound = np.array([len(fractions[names[k]]) > 1 for k in cand] + [False] * len(virtual))
        row = {"formula": formula, "hull_energy": float(res.fun), "n_components": int((w > 0).sum()),
               "elements_only": not bool((w[compound] > 0).any())}
        for c in value_columns:
            v = np.concatenate([values[c][cand], [_element_value(e) for e in virtual]])
            used = w > 0
            row[f"mixture_{c}"] = float(w[used] @ v[used] / w[used].sum()) if np.isfinite(v[used]).all() else np.nan
        rows.append(row)
    out = pd.DataFrame(rows).set_index("formula")
    for col in ("hull_energy", "n_components", "elements_only", *(f"mixture_{c}" for c in value_columns)):
        if col not in out:
            out[col] = np.nan
    return out


def _element_value(symbol: str) -> float:
    """Value of a pure element without a DFT entry: 0 for a metal (no gap), unknown otherwise."""
    # pymatgen: only for elements the DFT table lacks
    from pymatgen.core import Element

    return 0.0 if Element(symbol).is_metal else np.nan
