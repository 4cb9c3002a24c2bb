"""Domains from the pipeline's tables: the DFT entries and the measurements of one property, side by side.

:func:`domains_from_tables` turns ``data/raw`` and ``data/features`` tables (as the readers
return them) into the source and target :class:`~models.transport.Domain` of an alignment:
entries without a finite value or without descriptors are dropped and counted, descriptors
and element fractions are attached, crystal systems looked up. The align and evaluate stages
build their domains here, so they align the very same entries.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from models.transport.penalties import Domain, fraction_matrix

if TYPE_CHECKING:
    from models.properties import Property


def domains_from_tables(dft: pd.DataFrame, exp: pd.DataFrame, desc: pd.DataFrame, index: pd.DataFrame,
                        prop: Property) -> tuple[Domain, Domain, dict[str, int]]:
    """Build the source (DFT entries with a value) and target (measurements) domains of ``prop``.

    ``dft`` has ``material_id``, ``formula`` and the property's DFT column; ``exp`` has
    ``exp_id``, ``formula``, ``property``, ``value``; ``desc`` is one row per formula; ``index``
    has ``id`` and ``crystal_system``. Returns the two domains and the counts of dropped entries
    (written to ``align.json``); nothing left to align is a ``ValueError``.
    """
    if prop.dft_column not in dft:
        raise ValueError(f"the DFT table has no {prop.dft_column!r} column")
    desc_cols = [c for c in desc.columns if c != "formula"]
    counts: dict[str, int] = {}
    dft = dft.assign(dft_value=pd.to_numeric(dft[prop.dft_column], errors="coerce"))
    counts["dft_without_value"] = int(dft["dft_value"].isna().sum())
    counts["dft_non_finite"] = int(np.isinf(dft["dft_value"]).sum())
    dft = dft[np.isfinite(dft["dft_value"])]
    exp = exp[exp["property"] == prop.name]
    counts["experiment_non_finite"] = int((~np.isfinite(exp["value"].astype(float))).sum())
    exp = exp[np.isfinite(exp["value"].astype(float))]
    known = set(desc["formula"])
    counts["dft_without_descriptors"] = int((~dft["formula"].isin(known)).sum())
    counts["experiment_without_descriptors"] = int((~exp["formula"].isin(known)).sum())
    dft = dft[dft["formula"].isin(known)].reset_index(drop=True)
    exp = exp[exp["formula"].isin(known)].reset_index(drop=True)
    if dft.empty or exp.empty:
        raise ValueError(f"nothing to align for {prop.name}: {len(dft)} DFT and {len(exp)} experimental entries "
                         "with a value and descriptors")
    feats = desc.set_index("formula")[desc_cols].astype(np.float64)
    cs = index.drop_duplicates("id").set_index("id")["crystal_system"].fillna("").astype(str)
    fractions, elements = fraction_matrix(list(dft["formula"]) + list(exp["formula"]))

    def domain(frame: pd.DataFrame, ids: str, values: str, rows: slice) -> Domain:
        return Domain(features=feats.loc[frame["formula"]].to_numpy(), values=frame[values].to_numpy(float),
                      formulas=frame["formula"].to_numpy(), ids=frame[ids].astype(str).to_numpy(),
                      fractions=fractions[rows], elements=elements,
                      crystal_system=cs.reindex(frame[ids].astype(str)).fillna("").to_numpy())

    n = len(dft)
    return domain(dft, "material_id", "dft_value", slice(0, n)), domain(exp, "exp_id", "value", slice(n, None)), counts


__all__ = ["domains_from_tables"]
