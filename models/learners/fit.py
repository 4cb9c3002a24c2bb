"""Fit the GNN ensemble (with and without OT terms) and the baselines for one property.

:func:`fit_property` takes frames (never paths): DFT entries with ``formula``, ``dft_value``,
optional ``stability`` (formation energy per atom, to rank polymorphs) or ``e_above_hull`` and the align stage's ``calibrated_target``/``confidence``;
measurements with ``formula``, ``value``; descriptors keyed by ``formula``. The measured
formulas are split once (grouped, seeded) into a training and a selection part; all models are
fitted on the training part and scored on the selection part. :func:`write_outputs` writes
everything a later ``predict`` needs into a directory.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from models._io import write_manifest
from models.learners.baselines import DescriptorForest, LinearCalibration, RawDFT, mae, save_forest
from models.learners.config import TrainConfig
from models.learners.stacked import StackConfig, StackedModel, save_stacked
from models.learners.table import EntryTable, grouped_split
from models.learners.training import (
    DataParallelHook,
    TrainResult,
    determine_device,
    predict_ensemble,
    pretrain_members,
    train_model,
)
from models.nets import save_model
from models.properties import reference_per_formula

__all__ = ["FitResult", "fit_property", "write_outputs"]


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


def fit_property(
    *,
    dft: pd.DataFrame,
    experiment: pd.DataFrame,
    descriptors: pd.DataFrame,
    train_config: TrainConfig,
    graphs: dict[str, Any] | None = None,
    members: int = 4,
    encoders: int = 2,
    pretrain_epochs: int = 4,
    pretrain_batch_size: int = 256,
    selection_fraction: float = 0.2,
    rf_trees: int = 300,
    seed: int = 0,
    device: str = "auto",
    parallel: DataParallelHook | None = None,
    stack_config: StackConfig | None = None,
    blend_weight: float = 0.0,
    extra_fidelities: tuple[str, ...] = (),
    ot_features: bool = True,
) -> FitResult:
    """Fit everything for one property; see the module docstring.

    ``stack_config``: when given, also fit the multi-fidelity :class:`models.stacked.StackedModel`
    on the training part. ``blend_weight`` (0..1, needs ``stack_config``): weight of the stacked
    model in the served prediction ``w * stacked + (1 - w) * gnn_ot`` (fixed beforehand from the
    CV benchmark, never fitted on the selection part); 0 serves the GNN alone.
    ``extra_fidelities``: columns of ``dft`` (e.g. HSE or GLLB-SC gaps) whose per-formula value
    (most stable polymorph where known) the stacked model also takes; absent columns are skipped.
    ``ot_features``: the served stacked model takes the align stage's calibration shifts
    (``dft`` columns ``calibrated_target``, ``confidence``) extended to every composition by
    :class:`models.shift_field.ShiftField`; the stacked model without them is fitted beside it
    (same surrogate) and scored on the selection part as the no-OT comparison.
    """
    import time

    if not 0.0 <= blend_weight <= 1.0:
        raise ValueError(f"blend_weight must be in [0, 1], got {blend_weight}")
    if blend_weight > 0 and stack_config is None:
        raise ValueError("blend_weight > 0 needs a stack_config (the stacked model it blends in)")
    t0 = time.perf_counter()
    dev = determine_device(device)
    torch.manual_seed(seed)
    rank = next((c for c in ("stability", "e_above_hull") if c in dft), None)
    ref = reference_per_formula(dft, value="dft_value", rank=rank)
    cols = ["formula", "value", *(["material_id"] if "material_id" in experiment else [])]
    exp = experiment[cols].reset_index(drop=True)
    tr_idx, sel_idx = grouped_split(exp["formula"].tolist(), fraction=selection_fraction, seed=seed)
    tr, sel = exp.iloc[tr_idx], exp.iloc[sel_idx]
    table = EntryTable.build(dft=dft, experiment=pd.concat([tr, sel]), descriptors=descriptors, dft_reference=ref,
                             graphs=graphs)
    n_dft = len(dft)
    train_rows = np.arange(n_dft + len(tr))
    sel_rows = np.arange(n_dft + len(tr), len(table))
    y_sel = sel["value"].to_numpy()
    clamp = train_config.clamp_min

    # DFT-only pretraining; members share the encoders round-robin and differ in head seeds
    states = pretrain_members(table, train_config, n_members=min(encoders, members), epochs=pretrain_epochs,
                              batch_size=pretrain_batch_size, seed=seed, device=dev, parallel=parallel)
    fitted: dict[str, list[TrainResult]] = {}
    for name, use_ot in (("gnn_no_ot", False), ("gnn_ot", True)):
        fitted[name] = [
            train_model(table, replace(train_config, use_ot=use_ot), seed=seed + k, train_rows=train_rows, device=dev,
                        init_state=states[k % len(states)], parallel=parallel)
            for k in range(members)
        ]
    preds = {name: predict_ensemble([r.model for r in res], table, sel_rows, device=dev, clamp_min=clamp)
             for name, res in fitted.items()}
    d_tr, d_sel = tr["formula"].map(ref).to_numpy(float), sel["formula"].map(ref).to_numpy(float)
    linear = LinearCalibration(clamp_min=clamp).fit(d_tr, tr["value"].to_numpy())
    forest = DescriptorForest(n_estimators=rf_trees, seed=seed).fit(descriptors, tr["formula"].tolist(), tr["value"].to_numpy())
    selection = pd.DataFrame({
        "formula": sel["formula"].to_numpy(), "value": y_sel, "dft_value": d_sel,
        "raw_dft": RawDFT().fit(d_tr, tr["value"]).predict(d_sel),
        "linear_dft": linear.predict(d_sel),
        "rf_descriptors": forest.predict(descriptors, sel["formula"].tolist()),
        "gnn_no_ot": preds["gnn_no_ot"].experiment,
        "gnn_ot": preds["gnn_ot"].experiment,
        "gnn_ot_std": preds["gnn_ot"].experiment_std,
    })
    scored = ["raw_dft", "linear_dft", "rf_descriptors", "gnn_no_ot", "gnn_ot"]
    stacked = None
    if stack_config is not None:
        extra = {c: reference_per_formula(dft, value=c, rank=rank) for c in extra_fidelities if c in dft}
        stack_cfg = replace(stack_config, clamp_min=clamp, seed=seed)
        stacked = StackedModel(stack_cfg, dft_reference=ref, extra_reference=extra).fit(
            descriptors, tr["formula"].tolist(), tr["value"].to_numpy())
        selection["stacked"] = stacked.predict(descriptors, sel["formula"].tolist())
        scored.append("stacked")
        if ot_features and {"calibrated_target", "confidence"} <= set(dft.columns):
            from models.learners.shift_field import ShiftField

            try:
                field = ShiftField.fit(dft["formula"].to_numpy(str), dft["dft_value"].to_numpy(float),
                                       dft["calibrated_target"].to_numpy(float), dft["confidence"].to_numpy(float),
                                       descriptors, k=stack_cfg.ot_neighbours)
            except ValueError as exc:
                raise ValueError(f"OT features of the stacked model: {exc} (too little overlap between the align "
                                 "stage's DFT entries and the measurements; set train.stack.ot_features: false "
                                 "to train without them)") from exc
            stacked = StackedModel(stack_cfg, dft_reference=ref, extra_reference=extra, surrogate=stacked.surrogate,
                                   shift_field=field).fit(descriptors, tr["formula"].tolist(), tr["value"].to_numpy())
            selection["stacked_ot"] = stacked.predict(descriptors, sel["formula"].tolist())
            scored.append("stacked_ot")
        served = selection["stacked_ot" if "stacked_ot" in selection else "stacked"]
        selection["served"] = blend_weight * served + (1 - blend_weight) * selection["gnn_ot"]
        scored.append("served")
    metrics = {f"mae_{m}": mae(y_sel, selection[m].to_numpy()) for m in scored}
    covered = ~np.isnan(d_sel)
    if covered.any():
        metrics["mae_raw_dft_covered"] = mae(y_sel[covered], d_sel[covered])
    metrics["dft_coverage"] = float(covered.mean())
    return FitResult(members=fitted["gnn_ot"], members_no_ot=fitted["gnn_no_ot"], linear=linear, forest=forest,
                     dft_reference=ref, metrics=metrics, selection=selection, seconds=time.perf_counter() - t0,
                     stacked=stacked, blend_weight=blend_weight if stacked is not None else 0.0,
                     measured_formulas=sorted(set(tr["formula"])))


def _history_frame(result: FitResult) -> pd.DataFrame:
    rows = []
    for variant, res in (("gnn_ot", result.members), ("gnn_no_ot", result.members_no_ot)):
        for k, m in enumerate(res):
            rows += [{"variant": variant, "member": k, **asdict(h)} for h in m.history]
    return pd.DataFrame(rows)


def write_outputs(result: FitResult, directory: Path, *, descriptors: pd.DataFrame, property_name: str,
                  clamp_min: float | None, config: dict[str, Any]) -> None:
    """Write the ensemble, baselines, metrics, history and a learning-curve plot into ``directory``.

    The last file written is the sha256 manifest (:mod:`models.integrity`) that loaders verify.
    """
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
    (directory / "ensemble.json").write_text(json.dumps(meta, indent=2, sort_keys=True, default=str) + "\n")
    (directory / "metrics.json").write_text(json.dumps(result.metrics, indent=2, sort_keys=True) + "\n")
    (directory / "baselines.json").write_text(json.dumps(
        {"linear_dft": {"a": float(result.linear.a_), "b": float(result.linear.b_),
                        "fallback": result.linear.fallback_}}, indent=2) + "\n")
    save_forest(result.forest, directory)  # skops + JSON, not a pickle (models/integrity.py)
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
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for (variant, member), g in hist.groupby(["variant", "member"]):
        ax.plot(g["epoch"], g["val_mae"], ls="-" if variant == "gnn_ot" else "--", label=f"{variant} #{member}")
    ax.set_xlabel("epoch")
    ax.set_ylabel("validation MAE")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
