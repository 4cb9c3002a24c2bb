"""Fit the GNN ensemble (with and without OT terms), the stacked model and the baselines for one property.

:func:`fit_property` takes frames (never paths): DFT entries with ``formula``, ``dft_value``,
``stability`` (formation energy per atom: the polymorph rule of :mod:`models.properties`),
optionally ``material_id`` and the align stage's ``calibrated_target``/``confidence``;
measurements with ``formula``, ``value``; descriptors keyed by ``formula``. The measured
formulas are split once (grouped, seeded) into a training and a selection part; all models are
fitted on the training part and scored on the selection part (the GNNs never see the calibrated
targets of a selection formula's DFT entries, which the alignment takes from its measurements). With the stacked model, the
conformal prediction intervals (:class:`models.learners.ConformalIntervals`) are calibrated
on out-of-fold residuals of the training part (grouped folds; each fold's stacked model
without OT features, ``intervals.bags`` boosters, sharing the DFT surrogate) and checked on
the selection part (``interval_coverage_selection``, ``interval_width_selection``).
:func:`write_outputs` writes everything a later ``predict`` needs into a directory.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Iterable
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from models._io import write_manifest
from models.learners.baselines import DescriptorForest, LinearCalibration, RawDFT, mae, save_forest
from models.learners.config import FitConfig, IntervalConfig, StackConfig, TrainConfig
from models.learners.intervals import ConformalIntervals, out_of_fold
from models.learners.pretrained import PretrainedEncoders, reuse_pretrained
from models.learners.shift_field import ShiftField
from models.learners.stacked import (
    DFTSurrogate,
    StackedModel,
    descriptor_matrix,
    reuse_surrogate,
    save_stacked,
)
from models.learners.table import EntryTable, grouped_split
from models.learners.training import (
    DataParallelHook,
    TrainResult,
    determine_device,
    frozen_embeddings,
    predict_ensemble,
    pretrain_members,
    train_model,
)
from models.nets import save_model
from models.parallel import fork_map
from models.progress import Steps, bar, showing
from models.properties import Property, reference_per_formula

__all__ = ["FitResult", "fit_property", "without_calibrated_targets", "write_outputs"]

log = logging.getLogger(__name__)


@dataclass
class FitResult:
    """Everything trained for one property, and the selection-split scores (MAE, same units as the data)."""

    members: list[TrainResult]
    members_no_ot: list[TrainResult]
    linear: LinearCalibration
    forest: DescriptorForest
    dft_reference: pd.Series
    metrics: dict[str, float]
    selection: pd.DataFrame
    seconds: float
    stacked: StackedModel | None = None
    blend_weight: float = 0.0
    # reduced formulas of the training measurements: the applicability domain's reference set
    measured_formulas: list[str] | None = None
    intervals: ConformalIntervals | None = None


@dataclass
class _Split:
    """The measurements split once: training rows ``tr``, selection rows ``sel``, and their table rows."""

    tr: pd.DataFrame
    sel: pd.DataFrame
    table: EntryTable
    train_rows: np.ndarray
    sel_rows: np.ndarray


def fit_property(
    *,
    dft: pd.DataFrame,
    experiment: pd.DataFrame,
    descriptors: pd.DataFrame,
    config: FitConfig,
    prop: Property,
    graphs: dict[str, Any] | None = None,
    parallel: DataParallelHook | None = None,
    dask_client: Any = None,
    surrogate: DFTSurrogate | None = None,
    pretrained: PretrainedEncoders | None = None,
) -> FitResult:
    """Fit everything for ``prop`` with ``config``; see the module docstring.

    With ``config.stack.enabled`` the multi-fidelity :class:`models.learners.StackedModel` is
    fitted on the training part too, and served with weight ``config.stack.blend_weight``
    (``w * stacked + (1 - w) * gnn_ot``, fixed beforehand from the CV benchmark, never fitted on
    the selection part). With ``config.stack.ot_features`` the served stacked model takes the
    align stage's calibration shifts (``dft`` columns ``calibrated_target``, ``confidence``)
    extended to every composition by :class:`models.learners.ShiftField`; the stacked model
    without them is fitted beside it (same surrogate) as the no-OT comparison. ``parallel``
    shares each GNN minibatch among data-parallel ranks (:mod:`models.learners.distributed`).
    ``dask_client`` (a ``dask.distributed.Client``): the stacked model's DFT surrogate is fitted
    on that cluster with LightGBM's Dask interface (:meth:`DFTSurrogate.fit`). ``surrogate``: one
    fitted beforehand (the surrogate stage's), used as :func:`reuse_surrogate` decides; otherwise
    it is fitted here. ``pretrained``: the pretrain stage's DFT-pretrained encoders, used as
    :func:`models.learners.reuse_pretrained` decides; otherwise pretrained here.
    """
    t0 = time.perf_counter()
    dev = determine_device(config.device)
    torch.manual_seed(config.seed)
    train_config = config.train_config(prop)
    stack_config = config.stack_config(prop)
    steps = Steps(f"train {prop.name}", [*(["DFT pretraining"] if train_config.pretrain_epochs else []),
                                         "GNN members with and without OT", "baselines",
                                         *(["stacked model", "prediction intervals"] if stack_config else [])], log)
    ref = reference_per_formula(dft)
    if stack_config is not None:
        surrogate = reuse_surrogate(surrogate, stack_config, descriptors, ref, who=f"train {prop.name}")
    split = _split(dft, experiment, descriptors, ref, graphs, config)
    fitted, embeddings = _fit_gnns(split, train_config, config, dev, parallel, steps, prop=prop, pretrained=pretrained)
    # member k started from encoder k % len(embeddings): its frozen output, as it trained and validated on
    preds = {name: predict_ensemble([r.model for r in res], split.table, split.sel_rows, device=dev,
                                    clamp_min=prop.clamp_min,
                                    embeddings=[embeddings[k % len(embeddings)] for k in range(len(res))],
                                    graphs_embedded=train_config.freeze_graph)
             for name, res in fitted.items()}
    tr, sel = split.tr, split.sel
    d_tr, d_sel = tr["formula"].map(ref).to_numpy(float), sel["formula"].map(ref).to_numpy(float)
    with steps("baselines"):
        linear = LinearCalibration(clamp_min=prop.clamp_min).fit(d_tr, tr["value"].to_numpy())
        forest = DescriptorForest(n_estimators=config.rf_trees, seed=config.seed).fit(
            descriptors, tr["formula"].tolist(), tr["value"].to_numpy())
    selection = pd.DataFrame({
        "formula": sel["formula"].to_numpy(), "value": sel["value"].to_numpy(), "dft_value": d_sel,
        "raw_dft": RawDFT().fit(d_tr, tr["value"]).predict(d_sel),
        "linear_dft": linear.predict(d_sel),
        "rf_descriptors": forest.predict(descriptors, sel["formula"].tolist()),
        "gnn_no_ot": preds["gnn_no_ot"].experiment,
        "gnn_ot": preds["gnn_ot"].experiment,
        "gnn_ot_std": preds["gnn_ot"].experiment_std,
    })
    stacked, intervals = None, None
    if stack_config is not None:
        with steps("stacked model"):
            stacked = _fit_stacked(dft, descriptors, ref, split, selection, stack_config,
                                   extra_fidelities=config.extra_fidelities(prop), ot_features=config.stack.ot_features,
                                   client=dask_client, surrogate=surrogate, workers=config.workers)
        served = selection["stacked_ot" if "stacked_ot" in selection else "stacked"]
        w = config.stack.blend_weight
        selection["served"] = w * served + (1 - w) * selection["gnn_ot"]
        try:
            with steps("prediction intervals"):
                intervals = _fit_intervals(descriptors, split, stacked, config.intervals, prop, seed=config.seed,
                                           workers=config.workers)
        except ValueError as exc:  # too few measurements for the out-of-fold models: served without intervals
            log.warning("%s: no prediction intervals (%s); predictions will have lower/upper NaN", prop.name, exc)
        if intervals is not None:
            x_sel = descriptor_matrix(descriptors, sel["formula"].tolist(), stacked.surrogate.columns_)
            selection["lower"], selection["upper"] = intervals.interval(selection["served"].to_numpy(), x_sel,
                                                                        sel["formula"].tolist())
    metrics = _selection_metrics(selection)
    if intervals is not None:
        inside = (selection["value"] >= selection["lower"]) & (selection["value"] <= selection["upper"])
        metrics |= {"interval_coverage_selection": float(inside.mean()),
                    "interval_width_selection": float((selection["upper"] - selection["lower"]).mean())}
    return FitResult(members=fitted["gnn_ot"], members_no_ot=fitted["gnn_no_ot"], linear=linear, forest=forest,
                     dft_reference=ref, metrics=metrics, selection=selection,
                     seconds=time.perf_counter() - t0, stacked=stacked,
                     blend_weight=config.stack.blend_weight if stacked is not None else 0.0,
                     measured_formulas=sorted(set(tr["formula"])), intervals=intervals)


def _split(dft: pd.DataFrame, experiment: pd.DataFrame, descriptors: pd.DataFrame, ref: pd.Series,
           graphs: dict[str, Any] | None, config: FitConfig) -> _Split:
    cols = ["formula", "value", *(["material_id"] if "material_id" in experiment else [])]
    exp = experiment[cols].reset_index(drop=True)
    tr_idx, sel_idx = grouped_split(exp["formula"].tolist(), fraction=config.selection_fraction, seed=config.seed)
    tr, sel = exp.iloc[tr_idx], exp.iloc[sel_idx]
    # the alignment moves mass only between entries of one formula (its hard block), so a held-out formula's
    # calibrated targets are its own measurements carried onto its DFT entries: the GNNs would learn what they
    # are scored on. They get none (the stacked model's shift field never reads a formula's own shift).
    dft = without_calibrated_targets(dft, sel["formula"])
    table = EntryTable.build(dft=dft, experiment=pd.concat([tr, sel]), descriptors=descriptors, dft_reference=ref,
                             graphs=graphs)
    n_dft = len(dft)
    return _Split(tr=tr, sel=sel, table=table, train_rows=np.arange(n_dft + len(tr)),
                  sel_rows=np.arange(n_dft + len(tr), len(table)))


def without_calibrated_targets(dft: pd.DataFrame, formulas: Iterable[str]) -> pd.DataFrame:
    """Return ``dft`` with no calibrated target (and no confidence) on the entries of ``formulas``: those are theirs."""
    if "calibrated_target" not in dft:
        return dft
    held = dft["formula"].isin(set(formulas)).to_numpy()
    return dft.assign(calibrated_target=dft["calibrated_target"].where(~held),
                      **({"confidence": dft["confidence"].where(~held)} if "confidence" in dft else {}))


def _fit_gnns(split: _Split, train_config: TrainConfig, config: FitConfig, device: torch.device,
              parallel: DataParallelHook | None, steps: Steps, *, prop: Property,
              pretrained: PretrainedEncoders | None = None) -> tuple[dict[str, list[TrainResult]], list[torch.Tensor | None]]:
    """DFT-only pretraining, then ``config.members`` GNNs without and with OT terms (encoders shared round-robin).

    Returns the members by variant and, per encoder, its frozen output on ``split.table`` (``[None]`` when the
    encoders train with the members).

    The pretraining is ``pretrained``'s (the pretrain stage's) when it is the one this run would
    compute (:func:`reuse_pretrained`). Encoders and members train in ``config.workers`` forked
    processes of one torch thread each (:func:`models.parallel.fork_map`; not with data-parallel
    ranks or a GPU), each seeded as in the serial loop.
    """
    workers = config.workers if parallel is None else 1
    states = None
    if train_config.pretrain_epochs:
        with steps("DFT pretraining"):
            states = reuse_pretrained(pretrained, split.table, config, prop, who=f"train {prop.name}")
            if states is None:
                states = pretrain_members(split.table, train_config, n_members=min(config.encoders, config.members),
                                          epochs=train_config.pretrain_epochs,
                                          batch_size=train_config.pretrain_batch_size, seed=config.seed,
                                          device=device, parallel=parallel, progress=showing(), workers=workers)
    # both variants' members in one queue, those with OT (the longer fits) first: a worker done early takes the
    # members without OT instead of waiting for the other's last member (two queues left one core idle 40 s)
    jobs = [(name, k) for name in ("gnn_ot", "gnn_no_ot") for k in range(config.members)]
    with steps("GNN members with and without OT"):
        # a frozen encoder's output is the same for every member it starts: computed once per encoder, in the workers
        # (with the crystal-graph encoder frozen too, every crystal graph's convolutions: part of this step's time)
        embeddings = [None]
        if states is not None and train_config.freeze_encoder:
            embeddings = list(fork_map(lambda state: frozen_embeddings(split.table, train_config, state, device=device),
                                       states, workers=workers, device=device))

        def member(job: tuple[str, int]) -> TrainResult:
            name, k = job
            return train_model(split.table, replace(train_config, use_ot=name == "gnn_ot"), seed=config.seed + k,
                               train_rows=split.train_rows, device=device,
                               init_state=None if states is None else states[k % len(states)],
                               parallel=parallel, progress=showing() and workers <= 1,
                               embeddings=embeddings[k % len(embeddings)])

        done = list(bar(fork_map(member, jobs, workers=workers, device=device), desc="GNN members",
                        total=len(jobs), unit="member"))
    return ({name: [r for (n, _), r in zip(jobs, done, strict=True) if n == name] for name in ("gnn_no_ot", "gnn_ot")},
            embeddings)


def _fit_stacked(dft: pd.DataFrame, descriptors: pd.DataFrame, ref: pd.Series, split: _Split,
                 selection: pd.DataFrame, stack_config: StackConfig, *, extra_fidelities: tuple[str, ...],
                 ot_features: bool, client: Any = None, surrogate: DFTSurrogate | None = None,
                 workers: int = 1) -> StackedModel:
    """Fit the stacked model without OT and, with ``ot_features``, with the shift field (returned: the served one).

    ``surrogate``: the DFT surrogate to share (checked by the caller); None fits it here. ``workers``:
    forked processes for the boosters (:meth:`StackedModel.fit`).
    """
    tr, sel = split.tr, split.sel
    extra = {c: reference_per_formula(dft, value=c) for c in extra_fidelities if c in dft}
    # on a Dask cluster: the DFT surrogate (the part that grows with the DFT side); else StackedModel fits it
    if surrogate is None and client is not None:
        surrogate = DFTSurrogate(stack_config).fit(descriptors, ref, client=client)
    stacked = StackedModel(stack_config, dft_reference=ref, extra_reference=extra, surrogate=surrogate).fit(
        descriptors, tr["formula"].tolist(), tr["value"].to_numpy(), workers=workers)
    selection["stacked"] = stacked.predict(descriptors, sel["formula"].tolist())
    if not (ot_features and {"calibrated_target", "confidence"} <= set(dft.columns)):
        return stacked
    try:
        field = ShiftField.fit(dft["formula"].to_numpy(str), dft["dft_value"].to_numpy(float),
                               dft["calibrated_target"].to_numpy(float), dft["confidence"].to_numpy(float),
                               descriptors, k=stack_config.ot_neighbours)
    except ValueError as exc:
        raise ValueError(f"OT features of the stacked model: {exc} (too little overlap between the align "
                         "stage's DFT entries and the measurements; set train.stack.ot_features: false "
                         "to train without them)") from exc
    stacked = StackedModel(stack_config, dft_reference=ref, extra_reference=extra, surrogate=stacked.surrogate,
                           shift_field=field).fit(descriptors, tr["formula"].tolist(), tr["value"].to_numpy(),
                                                  workers=workers)
    selection["stacked_ot"] = stacked.predict(descriptors, sel["formula"].tolist())
    return stacked


def _fit_intervals(descriptors: pd.DataFrame, split: _Split, stacked: StackedModel, settings: IntervalConfig,
                   prop: Property, *, seed: int, workers: int = 1) -> ConformalIntervals:
    """Calibrate the conformal intervals on out-of-fold residuals of the training part (see the module docstring).

    The out-of-fold models are ``stacked``'s settings under :meth:`IntervalConfig.booster_config`, without OT;
    ``workers`` > 1: its folds in that many forked processes, one LightGBM thread each.
    """
    tr = split.tr
    config = settings.booster_config(stacked.config)
    if workers > 1:
        config = replace(config, n_jobs=1)

    def fit_predict(formulas: list[str], y: np.ndarray, test: list[str]) -> np.ndarray:
        model = StackedModel(config, dft_reference=stacked.dft_reference, surrogate=stacked.surrogate,
                             extra_reference=stacked.extra_reference)
        return model.fit(descriptors, formulas, y).predict(descriptors, test)

    y = tr["value"].to_numpy(float)
    oof = out_of_fold(fit_predict, tr["formula"].tolist(), y, folds=settings.folds, seed=seed, workers=workers)
    x = descriptor_matrix(descriptors, tr["formula"].tolist(), stacked.surrogate.columns_)
    return ConformalIntervals(settings, clamp_min=prop.clamp_min, elements_apart=prop.element_value is not None).fit(
        x, tr["formula"].tolist(), y - oof)


def _selection_metrics(selection: pd.DataFrame) -> dict[str, float]:
    """MAE of every model on the selection rows, raw DFT on the rows that have a DFT value, and the coverage."""
    scored = [m for m in ("raw_dft", "linear_dft", "rf_descriptors", "gnn_no_ot", "gnn_ot", "stacked", "stacked_ot",
                          "served") if m in selection]
    y, d = selection["value"].to_numpy(), selection["dft_value"].to_numpy()
    metrics = {f"mae_{m}": mae(y, selection[m].to_numpy()) for m in scored}
    covered = ~np.isnan(d)
    if covered.any():
        metrics["mae_raw_dft_covered"] = mae(y[covered], d[covered])
    metrics["dft_coverage"] = float(covered.mean())
    return metrics


def _history_frame(result: FitResult) -> pd.DataFrame:
    rows = []
    for variant, res in (("gnn_ot", result.members), ("gnn_no_ot", result.members_no_ot)):
        for k, m in enumerate(res):
            rows += [{"variant": variant, "member": k, **asdict(h)} for h in m.history]
    return pd.DataFrame(rows)


def write_outputs(result: FitResult, directory: Path, *, descriptors: pd.DataFrame, prop: Property,
                  config: dict[str, Any]) -> None:
    """Write the ensemble, baselines, metrics, history and a learning-curve plot into ``directory``.

    ``config`` (the stage's settings, plain data) goes into ``ensemble.json``. The last file
    written is the sha256 manifest (:func:`models._io.write_manifest`) that loaders verify.
    """
    property_name, clamp_min = prop.name, prop.clamp_min
    directory.mkdir(parents=True, exist_ok=True)
    names = []
    for k, m in enumerate(result.members):
        name = f"member_{k}"
        save_model(m.model, directory / name, extra={"property": property_name, "seed": m.seed,
                                                      "best_epoch": m.best_epoch, "best_val_mae": m.best_val_mae})
        names.append(name)
    meta = {"property": property_name, "members": names, "clamp_min": clamp_min, "metrics": result.metrics,
            "config": config}
    if result.stacked is not None:
        # served prediction: blend_weight * stacked + (1 - blend_weight) * GNN ensemble (models.serving)
        save_stacked(result.stacked, directory / "stacked")  # JSON + LightGBM text files, no pickle
        meta["stacked"] = {"dir": "stacked", "blend_weight": result.blend_weight}
    if result.intervals is not None:
        result.intervals.save(directory / "intervals")  # JSON + npz, no pickle
        meta["intervals"] = {"dir": "intervals", "method": "normalised conformal (crepes), out-of-fold residuals",
                             "coverage": result.intervals.config.coverage,
                             "calibration": result.intervals.calibration_summary()}
    (directory / "ensemble.json").write_text(json.dumps(meta, indent=2, sort_keys=True, default=str) + "\n")
    (directory / "metrics.json").write_text(json.dumps(result.metrics, indent=2, sort_keys=True) + "\n")
    (directory / "baselines.json").write_text(json.dumps(
        {"linear_dft": {"a": float(result.linear.a_), "b": float(result.linear.b_),
                        "fallback": result.linear.fallback_}}, indent=2) + "\n")
    save_forest(result.forest, directory)  # skops + JSON, not a pickle (models/_io.py)
    descriptors.to_parquet(directory / "descriptors.parquet", index=False)
    result.dft_reference.rename("dft_value").rename_axis("formula").reset_index().to_parquet(
        directory / "dft_reference.parquet", index=False)
    result.selection.to_csv(directory / "selection_predictions.csv", index=False)
    if result.measured_formulas is not None:
        (directory / "measured_formulas.json").write_text(json.dumps(result.measured_formulas) + "\n")
    hist = _history_frame(result)
    hist.to_csv(directory / "history.csv", index=False)
    _plot_history(hist, directory / "learning_curves.png")
    write_manifest(directory)  # last: the sha256 of every file above, checked by every loader


def _plot_history(hist: pd.DataFrame, path: Path) -> None:
    # matplotlib: about a second to import, and only when the figure is drawn
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # only after the backend is chosen

    fig, ax = plt.subplots(figsize=(6, 4))
    for (variant, member), g in hist.groupby(["variant", "member"]):
        ax.plot(g["epoch"], g["val_mae"], ls="-" if variant == "gnn_ot" else "--", label=f"{variant} #{member}")
    ax.set_xlabel("epoch")
    ax.set_ylabel("validation MAE")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
