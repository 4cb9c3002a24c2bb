r"""Training loop for :class:`models.nets.MultiFidelityNet` on DFT and experimental entries.

The loss of one step combines, over a minibatch of DFT rows and one of experimental rows,

.. math::
    L = w_{dft}\,\ell(\hat y_{dft}, y_{dft})
      + w_{exp}\,\ell(\hat y_{exp}, y_{exp})
      + w_{cal}\,\frac{\sum_i c_i\,\ell(\hat y_{exp,i}, t_i)}{\sum_i c_i}
      + w_{ot}\,\mathrm{UOT}_\varepsilon(e_{dft}, e_{exp})

with :math:`\ell` the absolute (or Huber) error, :math:`t_i, c_i` the OT-calibrated targets
of DFT entries and their confidence (from the align stage), and UOT the entropic unbalanced
optimal-transport cost between the two minibatches' embeddings (KL-relaxed marginals,
log-domain Sinkhorn, differentiable). ``use_ot=False`` drops the last two terms (the
"GNN without OT" baseline).

Early stopping and model selection use a validation split of the *training* experimental
rows (grouped by formula); test data never enters here. The calibrated targets of the
validation formulas' DFT entries never reach the gradient (their error counts as 0 in the
third term): the align stage's hard block carries a formula's own measurements onto its
entries, so they would train on what validation scores (with a kNN support instead, the
no-penalties ablation, a neighbouring formula's target can still hold part of a validation
measurement). Everything is seeded; a run can be resumed from its checkpoint; the device is
an argument (see :func:`determine_device`). This module never reads files it was not given,
environment variables or global state.
"""

from __future__ import annotations

import copy
import math
import random
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
from torch import Tensor

from models._io import write_with
from models.learners.config import TrainConfig
from models.learners.losses import uot_embedding_loss
from models.learners.table import EntryTable, grouped_split
from models.nets import MultiFidelityNet, NetOutput
from models.parallel import fork_map
from models.progress import bar


class DataParallelHook(Protocol):
    """What :func:`train_model` needs from data-parallel training (see models/learners/distributed.py)."""

    def shard(self, d_idx: np.ndarray, e_idx: np.ndarray) -> tuple[np.ndarray, np.ndarray]: ...

    def sync_gradients(self, model: torch.nn.Module) -> None: ...


def determine_device(preferred: str = "auto") -> torch.device:
    """Choose the device once, at the entry point: ``"auto"`` takes CUDA when present, else CPU."""
    if preferred == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(preferred)


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch (CPU and CUDA) generators."""
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)


@dataclass(frozen=True)
class EpochRecord:
    """Per-epoch means of the loss terms and the validation MAE (NaN where absent)."""

    epoch: int
    phase: str
    loss: float
    loss_dft: float
    loss_exp: float
    loss_calibrated: float
    loss_ot: float
    val_mae: float


@dataclass
class TrainResult:
    """A trained member: the best model (by validation MAE), its history and split."""

    model: MultiFidelityNet
    history: list[EpochRecord]
    best_epoch: int
    best_val_mae: float
    stopped_early: bool
    seed: int
    train_rows: np.ndarray
    val_rows: np.ndarray


@dataclass
class Prediction:
    """Predictions for N entries: DFT head, experimental head, and ensemble spread (0 for one model)."""

    dft: np.ndarray
    experiment: np.ndarray
    experiment_std: np.ndarray


@dataclass
class EnsembleResult:
    members: list[TrainResult]

    def predict(self, table: EntryTable, rows: np.ndarray | None = None, *, device: torch.device | None = None) -> Prediction:
        return predict_ensemble([m.model for m in self.members], table, rows, device=device)


def _elementwise(kind: str, pred: Tensor, target: Tensor) -> Tensor:
    if kind == "huber":
        return torch.nn.functional.huber_loss(pred, target, reduction="none", delta=0.5)
    return (pred - target).abs()


def build_model(config: TrainConfig, table: EntryTable) -> MultiFidelityNet:
    m = config.model
    ddim = table.descriptors.shape[1] if (m.use_descriptors and table.descriptors is not None) else 0
    node_dim, edge_dim = table.graph_dims() if m.use_graphs else (0, 0)
    model = MultiFidelityNet(
        graph_node_dim=node_dim, graph_edge_dim=edge_dim, graph_hidden=m.graph_hidden, graph_layers=m.graph_layers,
        comp_hidden=m.comp_hidden, comp_layers=m.comp_layers, comp_heads=m.comp_heads, emb_dim=m.emb_dim,
        descriptor_dim=ddim, head_hidden=m.head_hidden, head_depth=m.head_depth, dropout=m.dropout,
    )
    return model


def _fit_scaler(model: MultiFidelityNet, table: EntryTable, rows: np.ndarray) -> None:
    if model.descriptor is None or table.descriptors is None:
        return
    d = table.descriptors[rows]
    mean = torch.from_numpy(d.mean(axis=0))
    std = torch.from_numpy(d.std(axis=0)).clamp_min(1e-6)
    model.set_descriptor_scaler(mean, std)


def _inputs(table: EntryTable, idx: np.ndarray, device: torch.device, cached: Tensor | None,
            graphs_cached: bool) -> dict:
    """Return the model's inputs for table rows ``idx``.

    ``cached`` (the frozen encoders' output per table row) replaces the composition encoder's; with ``graphs_cached``
    it holds the frozen crystal-graph encoder's output too, and no graph batch is built.
    """
    inputs = table.batch(idx, device, graphs=not (cached is not None and graphs_cached))
    if cached is not None:
        inputs["composition_embedding"] = cached[torch.from_numpy(np.asarray(idx)).to(device)]
    return inputs


@torch.no_grad()
def predict(model: MultiFidelityNet, table: EntryTable, rows: np.ndarray | None = None, *, device: torch.device | None = None,
            batch_size: int = 1024, clamp_min: float | None = None, embeddings: Tensor | None = None,
            graphs_embedded: bool = False) -> Prediction:
    """Predictions of one model for ``rows`` of ``table`` (all rows by default).

    ``embeddings``: the model's frozen encoders' output per row of ``table`` (:func:`frozen_embeddings`, what the
    model trained on), used instead of running those encoders again; ``graphs_embedded``: it holds the frozen
    crystal-graph encoder's output too (``freeze_graph``), so no crystal graph is convolved.
    """
    device = device or next(model.parameters()).device
    rows = np.arange(len(table)) if rows is None else np.asarray(rows)
    if embeddings is not None and len(embeddings) != len(table):
        raise ValueError(f"embeddings for {len(embeddings)} rows, the table has {len(table)}")
    cached = None if embeddings is None else embeddings.to(device)
    model.eval()
    dft, exp = [], []
    for s in range(0, len(rows), batch_size):
        out = model(**_inputs(table, rows[s : s + batch_size], device, cached, graphs_embedded))
        dft.append(out.dft.cpu().numpy())
        exp.append(out.experiment.cpu().numpy())
    d = np.concatenate(dft) if dft else np.zeros(0)
    e = np.concatenate(exp) if exp else np.zeros(0)
    if clamp_min is not None:
        d, e = np.maximum(d, clamp_min), np.maximum(e, clamp_min)
    return Prediction(dft=d.astype(np.float64), experiment=e.astype(np.float64), experiment_std=np.zeros(len(e)))


def predict_ensemble(models: Sequence[MultiFidelityNet], table: EntryTable, rows: np.ndarray | None = None, *,
                     device: torch.device | None = None, clamp_min: float | None = None,
                     embeddings: Sequence[Tensor | None] | None = None, graphs_embedded: bool = False) -> Prediction:
    """Mean prediction of the members and their standard deviation as uncertainty.

    ``embeddings``: per member, its frozen encoders' output per table row, or None (:func:`predict`).
    """
    if embeddings is not None and len(embeddings) != len(models):
        raise ValueError(f"{len(embeddings)} embeddings for {len(models)} members")
    cached = embeddings if embeddings is not None else [None] * len(models)
    preds = [predict(m, table, rows, device=device, clamp_min=clamp_min, embeddings=e, graphs_embedded=graphs_embedded)
             for m, e in zip(models, cached, strict=True)]
    e = np.stack([p.experiment for p in preds])
    return Prediction(
        dft=np.mean([p.dft for p in preds], axis=0), experiment=e.mean(axis=0),
        experiment_std=e.std(axis=0) if len(preds) > 1 else np.zeros(e.shape[1]),
    )


def _val_mae(model: MultiFidelityNet, table: EntryTable, val_rows: np.ndarray, device: torch.device,
             clamp_min: float | None, cached: Tensor | None = None, graphs_cached: bool = False) -> float:
    if len(val_rows) == 0:
        return math.nan
    p = predict(model, table, val_rows, device=device, clamp_min=clamp_min, embeddings=cached,
                graphs_embedded=graphs_cached)
    if table.is_experiment[val_rows].any():
        sel = table.is_experiment[val_rows]
        return float(np.mean(np.abs(p.experiment[sel] - table.y_exp[val_rows][sel])))
    return float(np.mean(np.abs(p.dft - table.y_dft[val_rows])))


@dataclass
class _Rows:
    """The rows one training uses: measured rows to fit and to validate on, DFT rows (all, and labelled)."""

    exp_train: np.ndarray
    val_rows: np.ndarray
    dft_rows: np.ndarray
    dft_labelled: np.ndarray
    #: per table row: a DFT entry of a validation formula, whose calibrated target the loss leaves out
    val_formula_dft: np.ndarray


def _split_rows(table: EntryTable, rows: np.ndarray, config: TrainConfig, seed: int) -> _Rows:
    """Split the measured rows (grouped) into training and validation; without any, the labelled DFT rows."""
    exp_rows = rows[table.is_experiment[rows] & ~np.isnan(table.y_exp[rows])]
    dft_rows = rows[~table.is_experiment[rows]]
    if len(exp_rows):
        tr, va = grouped_split([table.formulas[i] for i in exp_rows], fraction=config.val_fraction, seed=seed)
        exp_train, val_rows = exp_rows[tr], exp_rows[va]
    else:
        labelled = dft_rows[~np.isnan(table.y_dft[dft_rows])]
        tr, va = grouped_split([table.formulas[i] for i in labelled], fraction=config.val_fraction, seed=seed)
        exp_train, val_rows = exp_rows, labelled[va]
        dft_rows = np.setdiff1d(dft_rows, labelled[va])
    held = np.zeros(len(table), dtype=bool)
    held[dft_rows] = np.isin(np.asarray(table.formulas, dtype=object)[dft_rows],
                             list({table.formulas[i] for i in val_rows}))
    return _Rows(exp_train=exp_train, val_rows=val_rows, dft_rows=dft_rows,
                 dft_labelled=dft_rows[~np.isnan(table.y_dft[dft_rows])], val_formula_dft=held)


def _initial_model(table: EntryTable, config: TrainConfig, rows: _Rows | None, init_state: dict[str, Tensor] | None,
                   device: torch.device, embeddings: Tensor | None = None) -> tuple[MultiFidelityNet, Tensor | None]:
    """Build the model to train (from ``init_state`` or freshly scaled) and, with a frozen encoder, its embeddings."""
    model = build_model(config, table)
    if init_state is not None:
        # keeps the initial model's descriptor scaler too: its layers were fitted to that scaling
        try:
            model.load_state_dict(init_state, strict=True)
        except RuntimeError as exc:
            raise ValueError(f"init_state does not fit the model: {exc}") from exc
    else:
        _fit_scaler(model, table, np.concatenate([rows.exp_train, rows.dft_rows]))
    model.to(device)
    if not config.freeze_encoder:
        if embeddings is not None:
            raise ValueError("embeddings are the output of a frozen encoder: they need freeze_encoder")
        return model, None
    if init_state is None:
        raise ValueError("freeze_encoder needs init_state (a pretrained composition encoder)")
    frozen = [model.composition, *([model.crystal] if config.freeze_graph and model.crystal is not None else [])]
    for p in (p for module in frozen for p in module.parameters()):
        p.requires_grad_(False)
    if embeddings is None:
        return model, _frozen_embeddings(model, table, device, graphs=config.freeze_graph)
    if tuple(embeddings.shape) != (len(table), model.composition.out_dim):
        raise ValueError(f"embeddings of shape {tuple(embeddings.shape)} for a table of {len(table)} rows and an "
                         f"encoder of width {model.composition.out_dim}")
    return model, embeddings.to(device)


def frozen_embeddings(table: EntryTable, config: TrainConfig, init_state: dict[str, Tensor], *,
                      device: torch.device | None = None) -> Tensor:
    """Return what :func:`train_model` computes first with ``freeze_encoder``: the frozen encoders' output per table row.

    Members that start from the same ``init_state`` on the same table (the train stage's members
    sharing an encoder, every evaluate fold's GNN variants) get it once from here
    (``train_model(..., embeddings=...)``) instead of each recomputing it; the tensor is the same.
    """
    if not config.freeze_encoder or init_state is None:
        raise ValueError("frozen_embeddings needs config.freeze_encoder and the encoder's init_state")
    _, out = _initial_model(table, config, None, init_state, device or torch.device("cpu"))
    return out


def _total_steps(config: TrainConfig, rows: _Rows, pre_epochs: int, total: int) -> int:
    """Count the optimiser steps of all epochs (pretraining epochs step over labelled DFT rows)."""
    n_exp = len(rows.exp_train)
    return max(1, sum(
        _steps(len(rows.dft_labelled), config.dft_batch_size) if e < pre_epochs
        else _steps(n_exp if n_exp else len(rows.dft_labelled), config.batch_size if n_exp else config.dft_batch_size)
        for e in range(total)
    ))


def _minibatches(phase: str, rows: _Rows, config: TrainConfig, gen: torch.Generator
                 ) -> list[tuple[np.ndarray, np.ndarray]]:
    """Draw one epoch's ``(DFT rows, measured rows)`` minibatches from ``gen``."""
    if phase == "pretrain" or len(rows.exp_train) == 0:
        order = rows.dft_labelled[torch.randperm(len(rows.dft_labelled), generator=gen).numpy()]
        return [(order[s : s + config.dft_batch_size], np.zeros(0, dtype=np.int64))
                for s in range(0, len(order), config.dft_batch_size)]
    order = rows.exp_train[torch.randperm(len(rows.exp_train), generator=gen).numpy()]
    chunks = []
    for s in range(0, len(order), config.batch_size):
        d_idx = (rows.dft_rows[torch.randint(len(rows.dft_rows), (config.dft_batch_size,), generator=gen).numpy()]
                 if len(rows.dft_rows) else np.zeros(0, dtype=np.int64))
        chunks.append((d_idx, order[s : s + config.batch_size]))
    return chunks


def _loss_terms(out: NetOutput, table: EntryTable, d_idx: np.ndarray, e_idx: np.ndarray, *, phase: str,
                config: TrainConfig, device: torch.device, held: np.ndarray | None = None) -> list[Tensor]:
    """Compute the four terms of the loss (module docstring): DFT, measured, calibrated targets, minibatch UOT.

    ``held``: per table row, True where a DFT entry's calibrated target must not enter (a validation formula's).
    """
    nd = len(d_idx)
    terms = [torch.zeros((), device=device) for _ in range(4)]
    yd = torch.from_numpy(table.y_dft[d_idx]).float().to(device)
    ok = ~torch.isnan(yd)
    if ok.any():
        terms[0] = _elementwise(config.loss, out.dft[:nd][ok], yd[ok]).mean()
    if len(e_idx):
        ye = torch.from_numpy(table.y_exp[e_idx]).float().to(device)
        terms[1] = _elementwise(config.loss, out.experiment[nd:], ye).mean()
    if phase == "train" and config.use_ot and nd:
        cal = torch.from_numpy(table.calibrated[d_idx]).float().to(device)
        conf = torch.from_numpy(np.nan_to_num(table.confidence[d_idx])).float().to(device)
        has = ~torch.isnan(cal) & (conf > 0)
        # a held-out formula's entry counts as an error of 0 (the term's scale, and a data-parallel rank's share of it,
        # stay those of the minibatch): its target never reaches the gradient
        keep = has if held is None else has & ~torch.from_numpy(held[d_idx]).to(device)
        if has.any():
            terms[2] = (conf[keep] * _elementwise(config.loss, out.experiment[:nd][keep], cal[keep])).sum() / conf[has].sum()
        if len(e_idx) >= 2 and nd >= 2 and config.w_ot > 0:
            terms[3] = uot_embedding_loss(out.embedding[:nd], out.embedding[nd:], reg=config.ot_reg,
                                          reg_m=config.ot_reg_m, n_iter=config.ot_iters)
    return terms


def _restore(ckpt: Path, model: MultiFidelityNet, opt, sched, gen: torch.Generator) -> dict[str, Any]:
    """Load a checkpoint's full state (weights, optimiser, schedule, generators) and return its bookkeeping."""
    saved = torch.load(ckpt, map_location="cpu", weights_only=True)
    model.load_state_dict(saved["model"], strict=True)
    opt.load_state_dict(saved["optimizer"])
    sched.load_state_dict(saved["scheduler"])
    gen.set_state(saved["generator"])
    torch.set_rng_state(saved["torch_rng"])
    return {
        "epoch": int(saved["epoch"]), "history": [EpochRecord(**h) for h in saved["history"]],
        "best_val": float(saved["best_val"]), "best_epoch": int(saved["best_epoch"]), "bad": int(saved["bad"]),
        "best_state": saved["best_state"],
    }


def train_model(
    table: EntryTable,
    config: TrainConfig,
    *,
    seed: int = 0,
    train_rows: np.ndarray | None = None,
    device: torch.device | None = None,
    init_state: dict[str, Tensor] | None = None,
    checkpoint: Path | str | None = None,
    stop_after: int | None = None,
    progress: bool = False,
    parallel: DataParallelHook | None = None,
    embeddings: Tensor | None = None,
) -> TrainResult:
    """Train one member on ``train_rows`` of ``table`` (all rows by default).

    A grouped (by formula) validation split of the training experimental rows
    (``config.val_fraction``) drives early stopping and model selection; without
    experimental rows, DFT rows are split instead. ``init_state`` starts from given weights
    (e.g. DFT pretraining; the pretraining phase is then skipped). With ``checkpoint``, the
    full state is saved after every epoch and a run finding it resumes where it stopped;
    ``stop_after`` ends this call after that many epochs (time-sliced runs; resume later).
    ``parallel`` (data-parallel training, :class:`models.learners.DataParallel`) keeps
    this rank's share of each minibatch and averages gradients over ranks after backward.
    ``embeddings``: with ``freeze_encoder``, :func:`frozen_embeddings` of ``init_state`` on this
    table, computed once for members that share it (None: computed here).
    """
    device = device or torch.device("cpu")
    seed_everything(seed)
    rows_all = np.arange(len(table)) if train_rows is None else np.asarray(train_rows)
    rows = _split_rows(table, rows_all, config, seed)
    model, cached = _initial_model(table, config, rows, init_state, device, embeddings)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=config.lr,
                            weight_decay=config.weight_decay)
    gen = torch.Generator().manual_seed(seed)
    pre_epochs = 0 if init_state is not None else config.pretrain_epochs
    total = pre_epochs + config.epochs
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=config.lr, total_steps=_total_steps(
        config, rows, pre_epochs, total), pct_start=0.2)
    state = {"epoch": 0, "history": [], "best_val": math.inf, "best_epoch": -1, "bad": 0, "best_state": None}
    ckpt = Path(checkpoint) if checkpoint is not None else None
    if ckpt is not None and ckpt.exists():
        state = _restore(ckpt, model, opt, sched, gen)
    stopped = False
    start_epoch = state["epoch"]
    epochs = bar(range(start_epoch, total), desc="epochs", unit="epoch", show=progress)
    for epoch in epochs:
        phase = "pretrain" if epoch < pre_epochs else "train"
        model.train()
        sums = np.zeros(5)
        n_steps = 0
        for d_idx, e_idx in _minibatches(phase, rows, config, gen):
            if parallel is not None:
                d_idx, e_idx = parallel.shard(d_idx, e_idx)
            idx = np.concatenate([d_idx, e_idx])
            # a frozen crystal-graph encoder's output is in the cached embeddings: no graph batch to build
            inputs = _inputs(table, idx, device, cached, config.freeze_graph)
            terms = _loss_terms(model(**inputs), table, d_idx, e_idx, phase=phase, config=config, device=device,
                                held=rows.val_formula_dft)
            w_dft = config.w_dft if phase == "train" else 1.0
            loss = w_dft * terms[0] + config.w_exp * terms[1] + config.w_calibrated * terms[2] + config.w_ot * terms[3]
            opt.zero_grad(set_to_none=True)
            loss.backward()
            if parallel is not None:
                parallel.sync_gradients(model)
            torch.nn.utils.clip_grad_norm_(model.parameters(), 5.0)
            opt.step()
            sched.step()
            sums += [float(loss.detach()), *(float(t.detach()) for t in terms)]
            n_steps += 1
        means = sums / max(n_steps, 1)
        # scored on the frozen encoders' cached output, as trained (not recomputed every epoch)
        val = _val_mae(model, table, rows.val_rows, device, config.clamp_min, cached, config.freeze_graph)
        state["history"].append(EpochRecord(
            epoch=epoch, phase=phase, loss=float(means[0]), loss_dft=float(means[1]), loss_exp=float(means[2]),
            loss_calibrated=float(means[3]), loss_ot=float(means[4]), val_mae=float(val)))
        # model selection only in the final phase (pretraining optimises a different target)
        if phase == "train" or pre_epochs == total:
            score = val if math.isfinite(val) else float(means[0])
            if score < state["best_val"] - 1e-6:
                state.update(best_val=score, best_epoch=epoch, bad=0,
                             best_state={k: v.detach().cpu().clone() for k, v in model.state_dict().items()})
            else:
                state["bad"] += 1
        state["epoch"] = epoch + 1
        epochs.set_postfix(loss=f"{means[0]:.3f}", val=f"{val:.3f}")
        if ckpt is not None:
            _save_checkpoint(ckpt, model, opt, sched, gen, state)
        if phase == "train" and state["bad"] >= config.patience:
            stopped = True
            break
        if stop_after is not None and epoch + 1 - start_epoch >= stop_after:
            break
    if state["best_state"] is not None:
        model.load_state_dict(state["best_state"], strict=True)
    model.eval()
    return TrainResult(model=model, history=list(state["history"]), best_epoch=int(state["best_epoch"]),
                       best_val_mae=float(state["best_val"]), stopped_early=stopped, seed=seed,
                       train_rows=np.setdiff1d(rows_all, rows.val_rows), val_rows=rows.val_rows)


@torch.no_grad()
def _frozen_embeddings(model: MultiFidelityNet, table: EntryTable, device: torch.device, *, graphs: bool = False,
                       batch_size: int = 2048) -> Tensor:
    """Return the frozen encoders' output for every row (once is enough).

    The composition encoder's, plus with ``graphs`` the crystal-graph encoder's where a row has a
    graph, added as :meth:`models.nets.MultiFidelityNet.embed` adds it.
    """
    model.eval()
    parts = []
    for s in range(0, len(table), batch_size):
        b = table.batch(np.arange(s, min(s + batch_size, len(table))), device, graphs=graphs)
        e = model.composition(b["z"], b["weight"], b["batch"], num_graphs=b["num_entries"])
        if "graph" in b:
            g = b["graph"]
            e = e.index_add(0, b["graph_rows"], model.crystal(g.x, g.edge_index, g.edge_attr, g.batch,
                                                              num_graphs=g.num_graphs))
        parts.append(e)
    return torch.cat(parts)


def _steps(n: int, bs: int) -> int:
    return max(1, math.ceil(n / bs))


def _save_checkpoint(path: Path, model, opt, sched, gen, state) -> None:
    payload = {
        "model": model.state_dict(), "optimizer": opt.state_dict(), "scheduler": sched.state_dict(),
        "generator": gen.get_state(), "torch_rng": torch.get_rng_state(),
        "epoch": state["epoch"], "history": [vars(h) for h in state["history"]], "best_val": state["best_val"],
        "best_epoch": state["best_epoch"], "bad": state["bad"], "best_state": state["best_state"],
    }
    write_with(path, lambda p: torch.save(payload, p))


def train_ensemble(
    table: EntryTable,
    config: TrainConfig,
    *,
    n_members: int = 3,
    seed: int = 0,
    train_rows: np.ndarray | None = None,
    device: torch.device | None = None,
    init_states: Sequence[dict[str, Tensor]] | None = None,
    progress: bool = False,
) -> EnsembleResult:
    """Train ``n_members`` members with seeds ``seed, seed+1, ...`` (each its own validation split)."""
    if n_members < 1:
        raise ValueError("n_members must be >= 1")
    if init_states is not None and len(init_states) != n_members:
        raise ValueError(f"init_states: expected {n_members}, got {len(init_states)}")
    members = []
    for k in range(n_members):
        init = copy.deepcopy(init_states[k]) if init_states is not None else None
        members.append(train_model(table, config, seed=seed + k, train_rows=train_rows, device=device,
                                   init_state=init, progress=progress))
    return EnsembleResult(members=members)


def pretrain_members(
    table: EntryTable,
    config: TrainConfig,
    *,
    n_members: int,
    epochs: int,
    batch_size: int = 256,
    seed: int = 0,
    device: torch.device | None = None,
    parallel: DataParallelHook | None = None,
    progress: bool = False,
    workers: int = 1,
) -> list[dict[str, Tensor]]:
    """DFT-only pretraining of ``n_members`` models (seeds ``seed + 100 + k``); returns their states.

    Only rows without a measurement are used, and on them the DFT labels only: the OT terms are
    off, so the calibrated targets a table may carry (the align stage's, made of measurements)
    never enter, and the states can be shared by every CV fold, and start every member, without
    leaking experimental labels. ``workers`` > 1: the members train in forked processes
    (:func:`models.parallel.fork_map`), each seeded as in the serial loop.
    """
    dft_rows = np.flatnonzero(~table.is_experiment)
    cfg = replace(config, epochs=epochs, pretrain_epochs=0, patience=epochs, val_fraction=0.05,
                  dft_batch_size=batch_size, freeze_encoder=False, freeze_graph=False, use_ot=False)

    def member(k: int) -> dict[str, Tensor]:
        return train_model(table, cfg, seed=seed + 100 + k, train_rows=dft_rows, device=device, parallel=parallel,
                           progress=progress).model.state_dict()

    return list(fork_map(member, range(n_members), workers=workers if parallel is None else 1, device=device))


__all__ = [
    "DataParallelHook",
    "EnsembleResult",
    "EpochRecord",
    "Prediction",
    "TrainResult",
    "build_model",
    "determine_device",
    "frozen_embeddings",
    "predict",
    "predict_ensemble",
    "pretrain_members",
    "seed_everything",
    "train_ensemble",
    "train_model",
]
