"""One property's whole evaluation: from the loaded tables to ``metrics/<property>.json``'s content.

:func:`evaluate_property` subsamples the problem to the budget (:class:`EvalSettings`), builds
the folds of every protocol, the DFT-only parts every fold may share (the GNN's DFT
pretraining, the stacked models' DFT surrogate: neither sees a measurement), runs
:func:`models.evaluation.evaluate_folds` and summarises. The per-fold models are the train
stage's (:class:`models.learners.FitConfig`) under the budget's smaller training settings, the
per-fold alignment the align stage's (:class:`models.transport.AlignConfig`), so the
evaluation judges what ``dvc repro`` serves. Leakage rules: :mod:`models.evaluation.folds`.

Never reads files: the evaluate stage passes the tables.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import pandas as pd
import torch

from models.evaluation.config import OOD_PROTOCOLS, EvalSettings
from models.evaluation.folds import FoldData, FoldModels, StackInputs, evaluate_folds, subset_domain
from models.evaluation.splits import make_folds
from models.evaluation.summary import EvaluationResult, seed_summary, summarise
from models.learners import (
    DFTSurrogate,
    EntryTable,
    FitConfig,
    PretrainedEncoders,
    determine_device,
    pretrain_members,
    pretraining_table,
    reuse_pretrained,
    reuse_surrogate,
)
from models.properties import STABILITY, Property, choose_polymorphs, reference_per_formula
from models.transport import AlignConfig, Domain

log = logging.getLogger(__name__)

__all__ = ["EvaluationInputs", "EvaluationRun", "evaluate_property", "plot_tables", "set_threads", "stack_inputs"]


@dataclass
class EvaluationInputs:
    """The tables an evaluation reads, as the evaluate stage loaded them.

    ``source``/``target``: the DFT entries with a value and the measurements, as the align
    stage builds them. ``dft``: every DFT entry with ``material_id``, ``formula``, the
    property's DFT column, :data:`~models.properties.STABILITY` and the other fidelities
    (for the stacked models' references). ``index``: ``data/features/index.parquet`` keyed
    by ``id`` (``crystal_system``). ``graphs``: crystal graphs by material id, or None.
    ``transported_mass``: the align stage's mass per ``exp_id`` relative to its marginal
    (for the mass-against-error plot only; it never reaches a model), or None.
    ``surrogate``: the surrogate stage's fitted DFT surrogate (:func:`stack_inputs` checks that
    it is the one it would fit, else fits its own), or None. ``pretrained``: the pretrain
    stage's encoders (:class:`models.learners.PretrainedEncoders`; read with
    ``pretraining: train``, checked as the train stage checks them), or None.
    """

    source: Domain
    target: Domain
    dft: pd.DataFrame
    index: pd.DataFrame
    descriptors: pd.DataFrame
    graphs: dict[str, Any] | None = None
    transported_mass: pd.Series | None = None
    surrogate: DFTSurrogate | None = None
    pretrained: Any = None


@dataclass
class EvaluationRun:
    """What an evaluation produced: the metrics (``metrics/<property>.json``), the raw result and the folds."""

    metrics: dict[str, Any]
    result: EvaluationResult
    folds: list
    experiment: pd.DataFrame


def evaluate_property(inputs: EvaluationInputs, *, prop: Property, settings: EvalSettings, fit: FitConfig,
                      align: AlignConfig, seed: int, ad_k: int, ad_threshold: float, threads: int,
                      workers: int = 1, device: str = "auto", budget: str = "full") -> EvaluationRun:
    """Run every protocol of ``settings`` for ``prop`` and summarise (see the module docstring).

    ``align`` is applied to ``prop`` here (:meth:`~models.transport.AlignConfig.for_property`).
    ``threads``: LightGBM threads of the stacked models (the caller sets torch's), in each of
    ``workers`` processes that run the folds (:func:`~models.evaluation.evaluate_folds`). Raises
    ``ValueError`` for a budget the data cannot meet (no fold, a stacked model without the stack).
    """
    t0 = time.perf_counter()
    align = align.for_property(prop)
    shared = settings.pretraining == "train"  # the train stage's encoders and model, crystal graphs included
    use_graphs = settings.uses_graphs(fit.model.use_graphs)
    problem = _problem(inputs, settings, seed=seed, use_graphs=use_graphs)
    exp = problem["experiment"]
    log.info("%s: %d measurements (%d formulas), %d DFT entries; %s budget", prop.name, len(exp),
             exp["formula"].nunique(), problem["source"].size, budget)
    fold_fit = replace(fit, members=settings.members,
                       encoders=min(fit.encoders, settings.members) if shared else settings.encoders,
                       model=replace(fit.model, use_graphs=use_graphs),
                       optim=replace(fit.optim, epochs=settings.epochs, patience=settings.patience,
                                     pretrain_epochs=fit.optim.pretrain_epochs if shared else settings.pretrain_epochs))
    train_config = fold_fit.train_config(prop)
    dev = determine_device(device)
    def folds_of(fold_seed: int) -> list:
        return make_folds(settings, exp["formula"].tolist(), exp["value"].to_numpy(), exp["crystal_system"].tolist(),
                          inputs.descriptors, seed=fold_seed)

    folds = folds_of(seed)
    log.info("%s: %d folds over %s", prop.name, len(folds), ", ".join(dict.fromkeys(f.protocol for f in folds)))
    stacked = [m for m in settings.models if m.startswith("stacked")]
    # the stacked models again on other seeds' folds (grouped CV and LOCO differ; the named folds are the same)
    extra_seeds = [(s, folds_of(s)) for s in range(seed + 1, seed + settings.stack_seeds)] if stacked else []
    if extra_seeds:
        log.info("%s: %s also on the folds of seeds %s (%d more folds)", prop.name, " and ".join(stacked),
                 ", ".join(str(s) for s, _ in extra_seeds), sum(len(f) for _, f in extra_seeds))
    tp0 = time.perf_counter()
    # DFT-only pretraining (no measurement): computed once, shared by every fold
    pretrained = []
    if any(m.startswith("gnn_") for m in settings.models):
        pretrained = (_train_pretraining(inputs, fit, prop, device=dev, workers=workers)[:settings.members] if shared
                      else pretrain_members(problem["table"], train_config, n_members=settings.encoders,
                                            epochs=max(settings.pretrain_epochs, 1), seed=seed, device=dev,
                                            batch_size=train_config.pretrain_batch_size))
    pretrain_s = time.perf_counter() - tp0
    log.info("%s: %d DFT-pretrained encoder(s) in %.0f s", prop.name, len(pretrained), pretrain_s)
    stack = stack_inputs(inputs.dft, inputs.descriptors, settings, fold_fit, prop, threads=threads,
                         surrogate=inputs.surrogate, formulas=exp["formula"].tolist()) if stacked else None
    neural = None
    if settings.neural_iterations:
        neural = align.options.neural
        neural = replace(neural, dual=replace(neural.dual, iterations=settings.neural_iterations))
    data = FoldData(source=problem["source"], target=problem["target"], table=problem["table"],
                    descriptors=inputs.descriptors, transported_mass=problem["transported_mass"],
                    dft_reference=exp["formula"].map(problem["reference"]).to_numpy(float))
    fitted = FoldModels(train_config=train_config, align_config=align, pretrained=pretrained, variants=settings.models,
                        members=settings.members, rf_trees=settings.rf_trees, stack=stack, neural=neural)
    result = evaluate_folds(data, folds, fitted, shift_sample=settings.shift_sample, ad_k=ad_k,
                            ad_threshold=ad_threshold, seed=seed, device=dev, workers=workers,
                            on_fold=_log_fold(prop), extra_seeds=extra_seeds)
    ood_protocols = [p for p in OOD_PROTOCOLS if p in settings.protocols]
    summary = summarise(result, ood_protocols=ood_protocols)
    if result.seed_predictions is not None:
        summary["seeds"] = seed_summary(result.seed_predictions, ood_protocols=ood_protocols)
    metrics = {
        "property": prop.name, "unit": prop.unit, "budget": budget,
        "n_measurements": len(exp), "n_formulas": int(exp["formula"].nunique()), "n_dft": problem["source"].size,
        "dft_coverage": float(exp["formula"].isin(problem["reference"].index).mean()),
        **summary,
        "ad_threshold": ad_threshold,
        "pretrain_seconds": pretrain_s, "seconds": time.perf_counter() - t0,
    }
    return EvaluationRun(metrics=metrics, result=result, folds=folds, experiment=exp)


def _train_pretraining(inputs: EvaluationInputs, fit: FitConfig, prop: Property, *, device: torch.device,
                       workers: int) -> list[dict[str, torch.Tensor]]:
    """Return the train stage's DFT-pretrained encoder states: the pretrain stage's when they are this run's.

    Otherwise they are computed here the same way, on every DFT entry with a value (the pretrain
    stage's table: no measurement), so the folds get the same states either way.
    """
    table = pretraining_table(inputs.dft, prop, descriptors=inputs.descriptors,
                              graphs=inputs.graphs if fit.model.use_graphs else None)
    states = reuse_pretrained(inputs.pretrained, table, fit, prop, who=f"evaluate {prop.name}")
    return states if states is not None else PretrainedEncoders.fit(table, fit, prop, device=device,
                                                                    workers=workers).states


def _problem(inputs: EvaluationInputs, settings: EvalSettings, *, seed: int,
             use_graphs: bool | None = None) -> dict[str, Any]:
    """Subsample to the budget and build the entry table, the DFT references and the measurement attributes.

    ``use_graphs``: whether the table's rows carry crystal graphs (None: ``settings.use_graphs``).
    """
    source, target = inputs.source, inputs.target
    rng = np.random.default_rng(seed)
    if settings.max_measurements and target.size > settings.max_measurements:
        uniq = rng.permutation(np.unique(target.formulas))
        counts = pd.Series(target.formulas).value_counts()
        keep, n = [], 0
        for f in uniq:
            if n >= settings.max_measurements:
                break
            keep.append(f)
            n += int(counts[f])
        target = subset_domain(target, np.flatnonzero(np.isin(target.formulas, keep)))
    if settings.max_dft and source.size > settings.max_dft:
        measured = np.isin(source.formulas, target.formulas)
        others = np.flatnonzero(~measured)
        extra = rng.choice(others, size=max(0, min(len(others), settings.max_dft - int(measured.sum()))), replace=False)
        source = subset_domain(source, np.sort(np.concatenate([np.flatnonzero(measured), extra])))
    stability = inputs.dft.drop_duplicates("material_id").set_index("material_id")[STABILITY]
    dft = pd.DataFrame({"material_id": source.ids, "formula": source.formulas, "dft_value": source.values})
    dft[STABILITY] = dft["material_id"].map(stability).astype(float)
    ref = reference_per_formula(dft)
    crystal_system = dft["material_id"].map(inputs.index["crystal_system"]).fillna("").astype(str)
    system_of = choose_polymorphs(dft.assign(crystal_system=crystal_system),
                                  eligible=crystal_system != "")["crystal_system"]
    exp = pd.DataFrame({"exp_id": target.ids, "formula": target.formulas, "value": target.values})
    exp["crystal_system"] = exp["formula"].map(system_of).fillna("").astype(str)
    graphs = inputs.graphs if (settings.use_graphs if use_graphs is None else use_graphs) else None
    if graphs is not None:
        # a measurement uses the crystal graph of its formula's polymorph among those with a graph
        exp["material_id"] = exp["formula"].map(
            choose_polymorphs(dft, eligible=dft["material_id"].isin(graphs))["material_id"])
    table = EntryTable.build(dft=dft[["material_id", "formula", "dft_value"]],
                             experiment=exp[["formula", "value", *(["material_id"] if graphs else [])]],
                             descriptors=inputs.descriptors, dft_reference=ref, graphs=graphs)
    mass = None if inputs.transported_mass is None else exp["exp_id"].map(inputs.transported_mass).to_numpy(float)
    return {"source": source, "target": target, "experiment": exp, "table": table, "reference": ref,
            "transported_mass": mass}


def stack_inputs(dft: pd.DataFrame, descriptors: pd.DataFrame, settings: EvalSettings, fit: FitConfig,
                 prop: Property, *, threads: int, surrogate: DFTSurrogate | None = None,
                 formulas: Sequence[str] | None = None) -> StackInputs:
    """Build the stacked models' shared inputs: per-formula DFT references of all DFT entries, the DFT surrogate.

    Both come from DFT labels only (no measurement), so every fold may share them. LightGBM
    gets ``threads``: two properties evaluated side by side with the train stage's 2 threads
    each oversubscribe 2 cores, and OpenMP's spinning then stalls both for minutes.
    ``surrogate``: one fitted beforehand (the surrogate stage's), used as
    :func:`models.learners.reuse_surrogate` decides; otherwise fitted here. ``formulas``: those the
    stacked models will be fitted and scored on (the measurements'), whose surrogate values are
    computed once here; None: every formula of ``descriptors`` (the formation-enthalpy surrogate's
    bonding columns of the 22,000 formulas without a DFT label took about 12 s on one core).
    """
    config = fit.stack_config(prop)
    if config is None:
        raise ValueError("evaluate.*.models lists a stacked model but train.stack.enabled is false")
    config = replace(config, n_jobs=threads, **({"bags": settings.stack_bags} if settings.stack_bags else {}))
    dft = dft[dft["formula"].isin(set(descriptors["formula"]))]
    ref = reference_per_formula(dft.assign(dft_value=dft[prop.dft_column]))
    extra = {c: reference_per_formula(dft, value=c) for c in fit.extra_fidelities(prop) if c in dft}
    t0 = time.perf_counter()
    surrogate = reuse_surrogate(surrogate, config, descriptors, ref, who=prop.name)
    if surrogate is None:
        surrogate = DFTSurrogate(config).fit(descriptors, ref)
        log.info("%s: DFT surrogate of the stacked models (DFT labels only; out-of-fold MAE %.4f on %d formulas) in "
                 "%.0f s", prop.name, surrogate.mae_, len(ref), time.perf_counter() - t0)
    surrogate.remember(descriptors, formulas)  # the trees' values of formulas without DFT, once, before the folds fork
    return StackInputs(config=config, dft_reference=ref, surrogate=surrogate, extra_reference=extra,
                       intervals=fit.intervals)


def _log_fold(prop: Property) -> Callable[[int, int, dict], None]:
    def progress(k: int, n: int, row: dict) -> None:
        parts = {k.replace("_seconds", "").replace("seconds_", ""): round(v, 1) for k, v in row.items()
                 if "seconds" in k and k != "seconds"}
        log.info("%s fold %d/%d %s/%s (%d test rows, shift %.3f) in %.0f s %s: MAE gnn_ot %.4f, gnn_no_ot %s, rf %.4f",
                 prop.name, k + 1, n, row["protocol"], row["fold"], row["n_test"], row["shift_ot"], row["seconds"],
                 parts, row.get("mae_gnn_ot", math.nan), round(row.get("mae_gnn_no_ot", math.nan), 4),
                 row["mae_rf_descriptors"])

    return progress


def plot_tables(run: EvaluationRun) -> dict[str, pd.DataFrame]:
    """Return the DVC plots' data (``plots/<property>/*.csv``): folds, per-row predictions, per-fold errors, mass/error.

    ``seed_predictions`` (with more than one seed): the stacked models' test predictions on every seed's folds.

    ``mass_vs_error`` pairs the align stage's transported mass of a measurement (a diagnostic
    of the full alignment, never used by a model) with the absolute errors of the OT models.
    """
    exp = run.experiment
    folds = pd.DataFrame([{"protocol": f.protocol, "fold": f.name, "exp_id": exp["exp_id"].iloc[i],
                           "formula": exp["formula"].iloc[i]} for f in run.folds for i in f.test])
    preds = run.result.predictions
    mass = preds[["protocol", "fold", "exp_id", "formula", "transported_mass"]].copy()
    for m in ("stacked_ot", "stacked", "gnn_ot", "gnn_no_ot"):
        if m in preds:
            mass[f"abs_error_{m}"] = (preds[m] - preds["value"]).abs()
    tables = {"folds": folds, "predictions": preds, "error_vs_shift": run.result.folds,
              "mass_vs_error": mass.dropna(subset=["transported_mass"])}
    if run.result.seed_predictions is not None:
        tables["seed_predictions"] = run.result.seed_predictions
    return tables


def set_threads(threads: int) -> None:
    """Torch's intra-op threads for this process (two properties evaluated side by side share 2 cores)."""
    torch.set_num_threads(threads)
