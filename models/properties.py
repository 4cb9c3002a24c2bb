"""TODO docstring."""

from __future__ import annotations

import pandas as pd


def reference_per_formula(frame: pd.DataFrame, *, value: str, rank: str | None = None) -> pd.Series:
    """One DFT value per reduced formula, for the experimental head's DFT input.

    The polymorph with the lowest ``rank`` (e.g. energy above hull or formation energy) where
    it is known, the median over polymorphs otherwise. Index: formula.
    """
    f = frame.dropna(subset=[value])
    parts = []
    if rank is not None and rank in f:
        ranked = f.dropna(subset=[rank]).sort_values([rank, value]).drop_duplicates("formula")
        parts.append(ranked.set_index("formula")[value])
        f = f[~f["formula"].isin(ranked["formula"])]
    parts.append(f.groupby("formula")[value].median())
    return pd.concat(parts).astype(float)


__all__ = ["reference_per_formula"]
