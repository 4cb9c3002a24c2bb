"""Both domains' entries as the aligned arrays the GNN trains on, and the grouped split.

:class:`EntryTable` holds one row per DFT entry or measurement (labels, OT-calibrated targets
with confidence, the DFT value fed to the experimental head, descriptors, crystal graphs) and
builds the minibatch inputs of :class:`models.nets.MultiFidelityNet`. :func:`grouped_split`
splits rows so that no reduced formula is on both sides.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch
from pymatgen.core import Element
from torch import Tensor
from torch_geometric.data import Batch, Data

from featurizers.chemistry import element_fractions


def encode_compositions(formulas: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    """Encode formulas as padded element arrays: atomic numbers ``Z`` [N, M] (0 = padding) and fractions ``W`` [N, M]."""
    cache: dict[str, list[tuple[int, float]]] = {}
    rows = []
    for f in formulas:
        if f not in cache:
            fr = element_fractions(f)
            cache[f] = sorted((Element(el).Z, x) for el, x in fr.items())
        rows.append(cache[f])
    m = max((len(r) for r in rows), default=1)
    z = np.zeros((len(rows), m), dtype=np.int64)
    w = np.zeros((len(rows), m), dtype=np.float32)
    for i, r in enumerate(rows):
        for j, (zz, ww) in enumerate(r):
            z[i, j], w[i, j] = zz, ww
    return z, w


@dataclass
class EntryTable:
    """Entries of both domains as aligned arrays (one row per DFT entry or measurement).

    ``is_experiment`` marks measurements. Labels are NaN where unknown: ``y_dft`` (DFT
    label, DFT rows), ``y_exp`` (measured value, experimental rows), ``calibrated`` (OT-calibrated
    target of DFT rows, with ``confidence`` in [0, 1]). ``dft_input`` is the known DFT value
    of the row's composition fed to the experimental head (NaN when none is known).
    ``descriptors`` [N, D] optional composition descriptors (raw; the trainer standardises them
    on the training rows).
    """

    formulas: list[str]
    is_experiment: np.ndarray
    y_dft: np.ndarray
    y_exp: np.ndarray
    calibrated: np.ndarray
    confidence: np.ndarray
    dft_input: np.ndarray
    descriptors: np.ndarray | None = None
    graphs: list[Data | None] | None = None

    def __post_init__(self) -> None:
        n = len(self.formulas)
        for name in ("is_experiment", "y_dft", "y_exp", "calibrated", "confidence", "dft_input"):
            arr = np.asarray(getattr(self, name))
            if arr.shape != (n,):
                raise ValueError(f"EntryTable.{name}: expected shape ({n},), got {arr.shape}")
            setattr(self, name, arr.astype(bool if name == "is_experiment" else np.float64))
        if self.descriptors is not None:
            self.descriptors = np.asarray(self.descriptors, dtype=np.float32)
            if self.descriptors.shape[0] != n or not np.isfinite(self.descriptors).all():
                raise ValueError("EntryTable.descriptors: need one finite row per entry")
        if self.graphs is not None and len(self.graphs) != n:
            raise ValueError(f"EntryTable.graphs: expected {n} entries (None where no structure), got {len(self.graphs)}")
        bad = np.isnan(self.confidence) & ~np.isnan(self.calibrated)
        if bad.any():
            raise ValueError(f"EntryTable: calibrated target without confidence at row {int(np.argmax(bad))}")
        self._z, self._w = encode_compositions(self.formulas)

    def __len__(self) -> int:
        return len(self.formulas)

    @classmethod
    def build(
        cls,
        *,
        dft: pd.DataFrame | None = None,
        experiment: pd.DataFrame | None = None,
        descriptors: pd.DataFrame | None = None,
        dft_reference: pd.Series | None = None,
        graphs: dict[str, Data] | None = None,
    ) -> EntryTable:
        """Assemble from frames keyed by reduced formula.

        ``dft``: ``formula``, ``dft_value`` and optionally ``calibrated_target``, ``confidence``
        (the align stage's ``data/aligned/<property>/dft.parquet``). ``experiment``: ``formula``
        and ``value`` (NaN for rows to predict). ``descriptors``: ``formula`` + numeric columns.
        ``dft_reference``: known DFT value per formula (index = formula) for the experimental head.
        ``graphs``: crystal graphs by ``material_id`` (``featurizers.crystal_graph.load_graphs``);
        a row uses the graph of its ``material_id`` column (DFT rows, and measurements given a
        matched structure), and its composition alone otherwise.
        """
        frames = []
        if dft is not None:
            frames.append(pd.DataFrame({
                "formula": dft["formula"].astype(str),
                "is_experiment": False,
                "y_dft": dft["dft_value"].astype(float),
                "y_exp": np.nan,
                "calibrated": dft["calibrated_target"].astype(float) if "calibrated_target" in dft else np.nan,
                "confidence": dft["confidence"].astype(float) if "confidence" in dft else np.nan,
                "material_id": dft["material_id"].astype(str) if "material_id" in dft else None,
            }))
        if experiment is not None:
            frames.append(pd.DataFrame({
                "formula": experiment["formula"].astype(str),
                "is_experiment": True,
                "y_dft": np.nan,
                "y_exp": experiment["value"].astype(float),
                "calibrated": np.nan,
                "confidence": np.nan,
                "material_id": experiment.get("material_id"),
            }))
        if not frames:
            raise ValueError("EntryTable.build: give at least one of dft, experiment")
        t = pd.concat(frames, ignore_index=True)
        t.loc[t["calibrated"].isna(), "confidence"] = np.nan
        ref = dft_reference if dft_reference is not None else pd.Series(dtype=float)
        t["dft_input"] = t["formula"].map(ref).astype(float)
        desc = None
        if descriptors is not None:
            d = descriptors.drop_duplicates("formula").set_index("formula")
            d = d.select_dtypes(include="number")
            missing = sorted(set(t["formula"]) - set(d.index))
            if missing:
                raise ValueError(f"descriptors missing for {len(missing)} formulas, e.g. {missing[0]!r}")
            desc = d.loc[t["formula"]].to_numpy(dtype=np.float32)
        return cls(
            formulas=t["formula"].tolist(),
            is_experiment=t["is_experiment"].to_numpy(),
            y_dft=t["y_dft"].to_numpy(),
            y_exp=t["y_exp"].to_numpy(),
            calibrated=t["calibrated"].to_numpy(),
            confidence=t["confidence"].to_numpy(),
            dft_input=t["dft_input"].to_numpy(),
            descriptors=desc,
            graphs=None if graphs is None else [graphs.get(m) if isinstance(m, str) else None for m in t["material_id"]],
        )

    def batch(self, idx: np.ndarray, device: torch.device, *, graphs: bool = True) -> dict[str, Tensor | int]:
        """Model inputs for rows ``idx`` (flat PyG-style composition nodes); ``graphs=False`` leaves the crystal graphs out."""
        z = torch.from_numpy(self._z[idx])
        w = torch.from_numpy(self._w[idx])
        mask = z > 0
        batch = torch.arange(len(idx)).unsqueeze(1).expand_as(z)[mask]
        out: dict[str, Tensor | int] = {
            "z": z[mask].to(device),
            "weight": w[mask].to(device),
            "batch": batch.to(device),
            "num_entries": len(idx),
            "dft_value": torch.from_numpy(self.dft_input[idx]).float().to(device),
        }
        if self.descriptors is not None:
            out["descriptors"] = torch.from_numpy(self.descriptors[idx]).to(device)
        if graphs and self.graphs is not None:
            pos = [k for k, i in enumerate(idx) if self.graphs[i] is not None]
            if pos:
                out["graph"] = Batch.from_data_list([self.graphs[idx[k]] for k in pos]).to(device)
                out["graph_rows"] = torch.tensor(pos, dtype=torch.long, device=device)
        return out

    def graph_dims(self) -> tuple[int, int]:
        """(node feature width, edge feature width) of the table's crystal graphs, (0, 0) without."""
        for g in self.graphs or []:
            if g is not None:
                return int(g.x.shape[1]), int(g.edge_attr.shape[1])
        return 0, 0


def grouped_split(groups: Sequence[str], *, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Split row indices into (train, validation) so that no group is on both sides."""
    groups = np.asarray(groups)
    uniq = np.unique(groups)
    rng = np.random.default_rng(seed)
    n_val = max(1, round(fraction * len(uniq))) if fraction > 0 and len(uniq) > 1 else 0
    val_groups = set(rng.permutation(uniq)[:n_val].tolist())
    is_val = np.array([g in val_groups for g in groups], dtype=bool)
    return np.flatnonzero(~is_val), np.flatnonzero(is_val)


__all__ = ["EntryTable", "encode_compositions", "grouped_split"]
