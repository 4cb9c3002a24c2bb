"""The DFT-only pretrained encoders of the train stage's GNNs, fitted once (the pretrain stage) and reused.

:func:`models.learners.pretrain_members` trains on DFT labels only (no measurement, no
calibrated target), so its states depend on the DFT entries, their descriptors and crystal
graphs and the settings of :data:`PRETRAIN_FIELDS`, not on the measurements, the alignment or
the fine-tuning settings. :class:`PretrainedEncoders` keeps those states with what they were
fitted from: the settings and a fingerprint of the table's DFT rows. The train stage reuses
them (:func:`reuse_pretrained`) only when both are the ones it would pretrain with, and
pretrains itself otherwise, so a stale directory costs time, never a number.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import Tensor

from models._io import read_header, write_header, write_with
from models.learners.config import FitConfig
from models.learners.table import EntryTable
from models.learners.training import DataParallelHook, pretrain_members
from models.properties import Property, reference_per_formula

__all__ = ["PRETRAIN_FIELDS", "PretrainedEncoders", "load_pretrained", "pretrain_settings", "pretraining_table",
           "reuse_pretrained", "save_pretrained"]

log = logging.getLogger(__name__)

#: The ``train.optim`` fields DFT pretraining reads (besides ``train.model``, ``train.seed`` and the encoder count):
#: ``pretrain_members`` overrides the others or never reaches them (a test perturbs each of those and sees the
#: same states). ``clamp_min`` is the property's: the validation MAE that picks the best epoch is clamped.
PRETRAIN_FIELDS = ("pretrain_epochs", "pretrain_batch_size", "lr", "weight_decay", "w_dft", "loss", "clamp_min")

_HEADER = "pretrained.json"


def pretrain_settings(fit: FitConfig, prop: Property) -> dict[str, Any]:
    """Return what the train stage's DFT pretraining for ``prop`` depends on, as plain JSON data."""
    config = fit.train_config(prop)
    settings = {"seed": fit.seed, "n_encoders": min(fit.encoders, fit.members),
                **{f: getattr(config, f) for f in PRETRAIN_FIELDS}, "model": asdict(config.model)}
    return json.loads(json.dumps(settings))


def pretraining_table(dft: pd.DataFrame, prop: Property, *, descriptors: pd.DataFrame,
                      graphs: dict[str, Any] | None = None) -> EntryTable:
    """Return the table DFT pretraining for ``prop`` reads: every DFT entry with a ``prop.dft_column`` value, in order.

    The train stage's table holds these rows first (its measurement rows never enter pretraining), so the pretrain
    stage, and an evaluate stage pretraining for itself, build it here and pretrain on the same rows.
    ``graphs``: crystal graphs by material id (with ``train.model.use_graphs``), or None.
    """
    dft = dft.rename(columns={prop.dft_column: "dft_value"}).dropna(subset=["dft_value"]).reset_index(drop=True)
    return EntryTable.build(dft=dft, descriptors=descriptors, dft_reference=reference_per_formula(dft), graphs=graphs)


def dft_fingerprint(table: EntryTable) -> str:
    """sha256 of what pretraining reads of ``table``: its DFT rows' formulas, labels, DFT inputs, descriptors, graphs."""
    rows = np.flatnonzero(~table.is_experiment)
    h = hashlib.sha256("\n".join(table.formulas[i] for i in rows).encode())
    for arr in (table.y_dft[rows], table.dft_input[rows]):
        h.update(np.ascontiguousarray(arr, dtype=np.float64).tobytes())
    if table.descriptors is not None:
        h.update(repr(table.descriptors.shape[1]).encode())
        h.update(np.ascontiguousarray(table.descriptors[rows]).tobytes())
    for i in rows if table.graphs is not None else ():
        g = table.graphs[i]
        h.update(b"-" if g is None else b"g")
        for t in () if g is None else (g.x, g.edge_index, g.edge_attr):
            h.update(repr(tuple(t.shape)).encode())
            h.update(t.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


@dataclass
class PretrainedEncoders:
    """DFT-pretrained model states (one per encoder) with the settings and the DFT-row fingerprint they came from."""

    states: list[dict[str, Tensor]]
    settings: dict[str, Any]
    fingerprint: str
    seconds: float = 0.0

    @classmethod
    def fit(cls, table: EntryTable, fit: FitConfig, prop: Property, *, device: torch.device | None = None,
            parallel: DataParallelHook | None = None, workers: int = 1, progress: bool = False) -> PretrainedEncoders:
        """Pretrain as the train stage does (:func:`pretrain_members` on ``table``'s DFT rows) and keep the states."""
        config = fit.train_config(prop)
        if config.pretrain_epochs < 1:
            raise ValueError("train.optim.pretrain_epochs is 0: there is nothing to pretrain")
        t0 = time.perf_counter()
        states = pretrain_members(table, config, n_members=min(fit.encoders, fit.members),
                                  epochs=config.pretrain_epochs, batch_size=config.pretrain_batch_size,
                                  seed=fit.seed, device=device, parallel=parallel, progress=progress, workers=workers)
        return cls(states=[{k: v.detach().cpu() for k, v in s.items()} for s in states],
                   settings=pretrain_settings(fit, prop), fingerprint=dft_fingerprint(table),
                   seconds=time.perf_counter() - t0)

    def mismatch(self, table: EntryTable, fit: FitConfig, prop: Property) -> str | None:
        """Why these states are not what pretraining with ``fit`` on ``table`` would give; None when they are."""
        want = pretrain_settings(fit, prop)
        differ = [k for k in sorted(set(want) | set(self.settings)) if want.get(k) != self.settings.get(k)]
        if differ:
            return "settings differ: " + ", ".join(f"{k} {self.settings.get(k)!r} != {want.get(k)!r}" for k in differ)
        if self.fingerprint != dft_fingerprint(table):
            return "pretrained on other DFT entries, descriptors or crystal graphs"
        return None


def reuse_pretrained(pretrained: PretrainedEncoders | None, table: EntryTable, fit: FitConfig, prop: Property, *,
                     who: str) -> list[dict[str, Tensor]] | None:
    """Return ``pretrained``'s states when they are what pretraining here would give, else None (logged under ``who``)."""
    if pretrained is None:
        return None
    why = pretrained.mismatch(table, fit, prop)
    if why:
        log.warning("%s: the pretrain stage's encoders are not this run's (%s); pretraining here", who, why)
        return None
    log.info("%s: %d DFT-pretrained encoder(s) from the pretrain stage (%.0f s there)", who, len(pretrained.states),
             pretrained.seconds)
    return [{k: v.clone() for k, v in s.items()} for s in pretrained.states]


def save_pretrained(pretrained: PretrainedEncoders, directory: Path) -> None:
    """Write ``encoder_<k>.pt`` (plain tensors) and the ``pretrained.json`` header (sha256 of each, settings, fingerprint)."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    files = []
    for k, state in enumerate(pretrained.states):
        files.append(f"encoder_{k}.pt")
        write_with(directory / files[-1], lambda p, s=state: torch.save(s, p))
    write_header(directory / _HEADER, cls="PretrainedEncoders", files=files, settings=pretrained.settings,
                 fingerprint=pretrained.fingerprint, seconds=pretrained.seconds)


def load_pretrained(directory: Path) -> PretrainedEncoders:
    """Read :func:`save_pretrained`'s directory; ``ValueError`` naming the file when it is missing or altered."""
    directory = Path(directory)
    meta = read_header(directory / _HEADER, classes=("PretrainedEncoders",), what="pretrained encoders",
                       error=ValueError)
    names = sorted(meta["files"], key=lambda n: int(n.removeprefix("encoder_").removesuffix(".pt")))
    try:  # weights_only: a file that needs to run code to load is refused, never executed
        states = [torch.load(directory / n, map_location="cpu", weights_only=True) for n in names]
    except Exception as exc:  # torch raises many types for an unreadable file
        raise ValueError(f"cannot read the pretrained encoders in {directory}: {exc}") from exc
    if meta["settings"].get("pretrain_epochs") and len(states) != meta["settings"].get("n_encoders"):
        raise ValueError(f"{directory / _HEADER}: {len(states)} encoder file(s) for n_encoders "
                         f"{meta['settings'].get('n_encoders')}")
    return PretrainedEncoders(states=states, settings=meta["settings"], fingerprint=str(meta["fingerprint"]),
                              seconds=float(meta.get("seconds", 0.0)))
