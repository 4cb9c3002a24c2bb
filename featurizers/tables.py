"""Both domains' entries featurized at once: the contents of ``data/features/`` (docs/ARCHITECTURE.md).

:func:`feature_tables` builds the crystal graph of every DFT entry with a structure, the
composition descriptors of every distinct formula of either domain, the index of every
entry (formula, graph, space group, crystal system) and the failures with their reasons.
A structure or formula that cannot be featurized is a failure row, never fatal. Takes
frames and a ``mapper`` (where the chunks of structures run); writes nothing.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import pandas as pd

from featurizers.composition import composition_descriptors
from featurizers.crystal_graph import CRYSTAL_SYSTEMS, CrystalGraphFeaturizer
from featurizers.settings import GraphSettings

DFT_COLUMNS = ("material_id", "formula", "structure")
EXPERIMENT_COLUMNS = ("exp_id", "formula")
FAILURE_COLUMNS = ("id", "formula", "step", "reason")
INDEX_COLUMNS = ("id", "domain", "formula", "has_graph", "spacegroup", "crystal_system")


@dataclass
class FeatureTables:
    """The featurize stage's outputs, in memory."""

    featurizer: CrystalGraphFeaturizer
    graphs: dict[str, Any]  # material_id -> packed graph arrays (CrystalGraphFeaturizer.pack_arrays)
    descriptors: pd.DataFrame
    index: pd.DataFrame
    failures: pd.DataFrame


def feature_tables(dft: pd.DataFrame, experiment: pd.DataFrame, *, graph: GraphSettings,
                   descriptor_sets: Sequence[str], n_workers: int = 1, chunk_size: int = 128,
                   mapper: Callable[..., Iterable[Any]] | None = None, progress: bool = True,
                   classes: pd.DataFrame | None = None) -> FeatureTables:
    """Featurize ``dft`` (``material_id``, ``formula``, ``structure``) and ``experiment`` (``exp_id``, ``formula``).

    ``classes`` (``exp_id``, ``formula``: the measured metal / non-metal classes) adds
    descriptors for its formulas, after every other formula's (so the rows of the other
    formulas do not move); it adds no index entry.

    Structures run in chunks of ``chunk_size``: through ``mapper`` (an engine's ``map``,
    results in chunk order) when given, else on ``n_workers`` local processes; either way
    the output is the same, byte for byte.
    """
    featurizer = CrystalGraphFeaturizer.from_settings(graph, on_error="record")
    has_structure = dft["structure"].notna()
    items = list(zip(dft.loc[has_structure, "material_id"], dft.loc[has_structure, "structure"], strict=True))
    batch = featurizer.featurize_many(items, n_workers=n_workers, chunk_size=chunk_size, progress=progress,
                                      as_data=False, mapper=mapper)
    formula_of = dict(zip(dft["material_id"], dft["formula"], strict=True))
    failures = [{"id": f.id, "formula": formula_of.get(f.id, ""), "step": f.step, "reason": f.reason}
                for f in batch.failures]
    # graph kept on the input cell: recorded so the loss of cell-choice invariance is visible
    failures += [{"id": sid, "formula": formula_of.get(sid, ""), "step": "canonicalise", "reason": f"fallback: {note}"}
                 for sid, note in batch.notes.items()]
    entries = pd.concat([
        pd.DataFrame({"id": dft["material_id"].astype(str), "domain": "dft", "formula": dft["formula"]}),
        pd.DataFrame({"id": experiment["exp_id"].astype(str), "domain": "experiment", "formula": experiment["formula"]}),
    ], ignore_index=True)
    labelled = (pd.DataFrame({"id": classes["exp_id"].astype(str), "formula": classes["formula"]})
                if classes is not None else pd.DataFrame(columns=["id", "formula"]))
    named = pd.concat([entries[["id", "formula"]], labelled], ignore_index=True)
    desc = composition_descriptors(list(named["formula"].dropna().astype(str).unique()), sets=descriptor_sets)
    failed_formula = {f.formula: f.reason for f in desc.failures}
    for row in named.itertuples(index=False):
        if isinstance(row.formula, str) and row.formula in failed_formula:
            failures.append({"id": row.id, "formula": row.formula, "step": "descriptor",
                             "reason": failed_formula[row.formula]})
    for row in named[named["formula"].isna()].itertuples(index=False):
        failures.append({"id": row.id, "formula": "", "step": "descriptor", "reason": "formula is missing"})
    return FeatureTables(featurizer=featurizer, graphs=batch.graphs, descriptors=desc.frame,
                         index=_index(entries, batch.graphs),
                         failures=pd.DataFrame(failures, columns=list(FAILURE_COLUMNS)).astype(str))


def _index(entries: pd.DataFrame, graphs: dict[str, Any]) -> pd.DataFrame:
    sg = {sid: g.spacegroup for sid, g in graphs.items()}
    cs = {sid: CRYSTAL_SYSTEMS[g.crystal_system] for sid, g in graphs.items()}
    index = entries.assign(
        formula=entries["formula"].fillna("").astype(str),
        has_graph=entries["id"].map(lambda i: i in graphs) & (entries["domain"] == "dft"),
    )
    is_dft = index["domain"] == "dft"
    index["spacegroup"] = [sg.get(i, 0) if d else 0 for i, d in zip(index["id"], is_dft, strict=True)]
    index["crystal_system"] = [cs.get(i, "") if d else "" for i, d in zip(index["id"], is_dft, strict=True)]
    index["spacegroup"] = index["spacegroup"].astype("int64")
    return index[list(INDEX_COLUMNS)]


__all__ = ["DFT_COLUMNS", "EXPERIMENT_COLUMNS", "FAILURE_COLUMNS", "INDEX_COLUMNS", "FeatureTables", "feature_tables"]
