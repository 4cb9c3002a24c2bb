"""Leak-free evaluation: every model and ablation refitted per fold, scored per protocol.

:func:`evaluate_folds` takes the whole problem (DFT entries and measurements as
:class:`models.penalties.Domain` objects, a base :class:`models.training.EntryTable`, the
descriptor table) and a list of :class:`models.splits.Fold` over the measurements. In each
fold, everything that learns from measurements sees the fold's *training* part only:

* the alignment (:func:`models.transport.align` between all DFT entries and the training
  measurements, with the align stage's parameters; its descriptor standardisation is pooled
  over exactly those two sides) and so the calibrated targets and their confidence;
* the GNN's validation split, early stopping and model selection
  (:func:`models.training.train_model` with ``train_rows`` = DFT rows + training
  measurements; the test measurements' values are also blanked to NaN in the fold's table);
* the baselines (linear calibration, descriptor random forest: fitted on training rows);
* the applicability-domain reference and the scaler of the shift distance.

The DFT-only pretraining of the composition encoder (and the descriptor scaler it fits) uses
no measurement (:func:`models.training.pretrain_members` trains on DFT rows only), so it is
computed once per property by the caller and shared by every fold: ``pretrained``.

Models per fold (names used in metrics and plots):

``raw_dft``, ``linear_dft``, ``rf_descriptors``: baselines; ``gnn_no_ot``: the GNN without
OT terms; ``gnn_ot``: the OT-aligned GNN (calibrated targets + minibatch UOT); ablations
``gnn_ot_balanced`` (balanced OT instead of unbalanced), ``gnn_ot_no_penalties`` (cost
without the mass/symmetry terms, no hard block, no energy additivity) and
``gnn_ot_no_calibrated`` (calibrated-target weight 0, minibatch OT kept); ``stacked``: the
multi-fidelity stacked model of :mod:`models.stacked` without OT, ``stacked_ot``: the same with
the fold's unbalanced alignment as features (its calibration shifts extended to every
composition by :class:`models.shift_field.ShiftField`: the train stage's served model).

Calibration of DFT values (issue 10's comparison), on the test rows whose formula has a DFT
entry: ``calib_ot_knn`` adds the fold alignment's shift field to the formula's own DFT value
(barycentric projection extended by nearest neighbours); ``calib_neural`` applies the
conditional neural OT map of :mod:`models.icnn` fitted on the fold's training measurements;
raw DFT and ``linear_dft`` are the references on the same rows.

This module never reads files: the stage (``pipeline/evaluate.py``) does.
"""

from __future__ import annotations

import copy
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace

import numpy as np
import pandas as pd
import scipy.sparse as sp
import torch

from models.evaluation.config import BASELINES, GNN_VARIANTS, STACKED_MODELS
from models.evaluation.splits import Fold
from models.evaluation.summary import EvaluationResult, regression_metrics
from models.learners import (
    ApplicabilityDomain,
    DescriptorForest,
    DFTSurrogate,
    EntryTable,
    LinearCalibration,
    RawDFT,
    ShiftField,
    StackConfig,
    StackedModel,
    TrainConfig,
    predict_ensemble,
    train_model,
)
from models.transport import AlignConfig, CostWeights, Domain, NeuralAlignConfig, align

log = logging.getLogger(__name__)

__all__ = [
    "StackInputs",
    "alignment_variants",
    "calibrated_targets",
    "evaluate_folds",
    "shift_distance",
    "subset_domain",
    "training_targets",
]


@dataclass
class StackInputs:
    """What the stacked models need besides the fold: config, per-formula DFT references, fitted surrogate.

    The surrogate learned DFT values only (no measurement), so the folds share it.
    """

    config: StackConfig
    dft_reference: pd.Series
    surrogate: DFTSurrogate  # fitted
    extra_reference: dict[str, pd.Series] = field(default_factory=dict)


def alignment_variants(config: AlignConfig) -> dict[str, AlignConfig]:
    """Return the align stage's alignment and the two ablated ones (balanced; no conservation penalties)."""
    no_pen = CostWeights(descriptor=config.cost.descriptor, value=config.cost.value, mass=0.0, symmetry=0.0,
                         hard_block=False)
    return {
        "unbalanced": config,
        "balanced": replace(config, method="balanced"),
        "no_penalties": replace(config, cost=no_pen, energy_additivity=False),
    }


def subset_domain(domain: Domain, rows: np.ndarray) -> Domain:
    """Return rows ``rows`` of ``domain`` (all arrays sliced alike; masses back to uniform 1/n)."""
    rows = np.asarray(rows)
    return Domain(
        features=domain.features[rows], values=np.asarray(domain.values)[rows], formulas=np.asarray(domain.formulas)[rows],
        ids=np.asarray(domain.ids)[rows],
        fractions=None if domain.fractions is None else sp.csr_matrix(domain.fractions)[rows],
        elements=domain.elements,
        crystal_system=None if domain.crystal_system is None else np.asarray(domain.crystal_system)[rows],
    )


def training_targets(fold: Fold) -> np.ndarray:
    """Return the measurements an alignment of ``fold`` may see: its training part only.

    A separate function so the leakage test can swap in a leaky version and show that the
    test detects it.
    """
    return fold.train


def calibrated_targets(source: Domain, target: Domain, rows: np.ndarray, config: AlignConfig
                       ) -> tuple[np.ndarray, np.ndarray, dict[str, float]]:
    """Calibrated targets and confidence of every source entry from OT onto ``target[rows]``."""
    sub = subset_domain(target, rows)
    res = align(source, sub, **config.kwargs())
    fallback = np.asarray(source.values, float) + res.source_offset
    targets, confidence = res.calibrated_targets(sub.values, fallback=fallback)
    diag = {"mass_moved_fraction": res.mass_moved / float(res.a.sum()), "converged": float(res.converged),
            "seconds": res.seconds}
    return targets, confidence, diag


def shift_distance(x_train: np.ndarray, x_test: np.ndarray, *, sample: int = 500, seed: int = 0) -> float:
    r"""Exact OT distance (:func:`ot.emd2`) between training and test point clouds.

    Descriptors are standardised with the training rows' mean and std, the std floored at a
    tenth of the std over both sides together: a column (nearly) constant in the training
    part but varying in the test part (an element seen only in the held-out crystal system)
    would otherwise give z-scores of 1e8; columns constant on both sides are ignored. The cost is the squared Euclidean distance divided by the dimension, so the
    value is a mean squared per-feature z-score difference (0 for identical distributions,
    about 2 for independent standard normals). Each side is subsampled (seeded) to ``sample``
    points so the LP stays small.
    """
    # POT: only for the exact LP methods and distances
    import ot

    x_train, x_test = np.asarray(x_train, float), np.asarray(x_test, float)
    if len(x_train) == 0 or len(x_test) == 0:
        raise ValueError("shift_distance: both sides need at least one row")
    mean = x_train.mean(axis=0)
    pooled = np.concatenate([x_train, x_test]).std(axis=0)
    std = np.maximum(x_train.std(axis=0), 0.1 * pooled)
    keep = pooled > 0
    rng = np.random.default_rng(seed)
    a = x_train[rng.choice(len(x_train), size=min(sample, len(x_train)), replace=False)]
    b = x_test[rng.choice(len(x_test), size=min(sample, len(x_test)), replace=False)]
    za, zb = (a[:, keep] - mean[keep]) / std[keep], (b[:, keep] - mean[keep]) / std[keep]
    cost = ot.dist(za, zb) / max(int(keep.sum()), 1)
    return float(ot.emd2(np.full(len(za), 1 / len(za)), np.full(len(zb), 1 / len(zb)), cost, numItermax=1_000_000))


def evaluate_folds(
    *,
    source: Domain,
    target: Domain,
    table: EntryTable,
    descriptors: pd.DataFrame,
    dft_reference: np.ndarray,
    folds: Sequence[Fold],
    train_config: TrainConfig,
    align_config: AlignConfig,
    pretrained: Sequence[dict[str, torch.Tensor]],
    variants: Sequence[str] = tuple(GNN_VARIANTS),
    members: int = 1,
    rf_trees: int = 100,
    shift_sample: int = 500,
    ad_k: int = 5,
    ad_threshold: float = 95.0,
    seed: int = 0,
    device: torch.device | None = None,
    transported_mass: np.ndarray | None = None,
    on_fold: Callable[[int, int, dict], None] | None = None,
    stack: StackInputs | None = None,
    neural: NeuralAlignConfig | None = None,
) -> EvaluationResult:
    """Fit and score every model on every fold (see the module docstring for what each sees).

    ``table`` holds the DFT entries (rows ``0 .. source.size - 1``, in ``source`` order) then
    the measurements (in ``target`` order); its calibrated targets are replaced per fold.
    ``dft_reference`` [n_target] is the DFT value of each measurement's composition (NaN
    where none is known). ``transported_mass`` [n_target], optional, is only copied into the
    predictions for the mass-against-error plot; it never reaches a model. ``stack`` is needed
    for the stacked models; ``neural`` (a :class:`models.icnn.NeuralAlignConfig`) adds the
    neural-map calibration (None: not fitted).
    """
    t0 = time.perf_counter()
    n_dft = source.size
    if len(table) != n_dft + target.size:
        raise ValueError(f"table has {len(table)} rows, expected {n_dft} DFT + {target.size} measurements")
    unknown = [v for v in variants if v not in GNN_VARIANTS and v not in STACKED_MODELS]
    if unknown:
        raise ValueError(f"unknown model variant {unknown[0]!r} (valid: {', '.join([*GNN_VARIANTS, *STACKED_MODELS])})")
    gnn_variants = [v for v in variants if v in GNN_VARIANTS]
    stacked_models = [v for v in variants if v in STACKED_MODELS]
    if gnn_variants and not pretrained:
        raise ValueError("evaluate_folds needs at least one pretrained encoder state")
    if stacked_models and stack is None:
        raise ValueError(f"model {stacked_models[0]!r} needs the stack inputs")
    y_all = np.asarray(target.values, float)
    formulas = np.asarray(target.formulas)
    desc = descriptors.drop_duplicates("formula").set_index("formula").select_dtypes(include="number")
    x_exp = desc.loc[formulas].to_numpy(float)
    src_formulas = np.asarray(source.formulas)
    dft_formulas = np.unique(src_formulas)
    settings = alignment_variants(align_config)
    # the stage's own (unbalanced) alignment also feeds stacked_ot and the shift-field calibration
    needed = sorted({GNN_VARIANTS[v].alignment for v in gnn_variants} - {None} | {"unbalanced"})
    calibrations = ["calib_ot_knn", *(["calib_neural"] if neural is not None else [])]
    pred_frames, fold_rows = [], []
    for k, fold in enumerate(folds):
        tf = time.perf_counter()
        tr, te = np.asarray(fold.train), np.asarray(fold.test)
        if len(tr) == 0 or len(te) == 0:
            raise ValueError(f"fold {fold.protocol}/{fold.name} has an empty side")
        y_tr, y_te = y_all[tr], y_all[te]
        d_tr, d_te = dft_reference[tr], dft_reference[te]
        out = pd.DataFrame({"protocol": fold.protocol, "fold": fold.name, "exp_id": np.asarray(target.ids)[te],
                            "formula": formulas[te], "value": y_te, "dft_value": d_te})
        out["raw_dft"] = RawDFT().fit(d_tr, y_tr).predict(d_te)
        clamp = train_config.clamp_min
        out["linear_dft"] = (LinearCalibration(clamp_min=clamp).fit(d_tr, y_tr).predict(d_te)
                             if np.isfinite(d_tr).sum() >= 2 else float(np.mean(y_tr)))
        t_rf = time.perf_counter()
        out["rf_descriptors"] = DescriptorForest(n_estimators=rf_trees, seed=seed).fit(
            descriptors, formulas[tr].tolist(), y_tr).predict(descriptors, formulas[te].tolist())
        info: dict[str, float] = {"rf_seconds": time.perf_counter() - t_rf}

        # the fold's table: test values blanked, calibrated targets from the fold's own alignment
        fold_table = copy.copy(table)
        fold_table.y_exp = table.y_exp.copy()
        fold_table.y_exp[n_dft + te] = np.nan
        align_rows = training_targets(fold)
        calibrated: dict[str, tuple[np.ndarray, np.ndarray]] = {}
        for name in needed:
            t_cal, conf, diag = calibrated_targets(source, target, align_rows, settings[name])
            calibrated[name] = (t_cal, conf)
            info[f"mass_moved_fraction_{name}"] = diag["mass_moved_fraction"]
            info[f"align_seconds_{name}"] = diag["seconds"]
        train_rows = np.concatenate([np.arange(n_dft), n_dft + tr])
        test_rows = n_dft + te
        covered = np.isfinite(d_te)
        try:
            shift_field = ShiftField.fit(src_formulas, np.asarray(source.values, float), *calibrated["unbalanced"],
                                         descriptors, k=stack.config.ot_neighbours if stack is not None else 5)
        except ValueError as exc:
            raise ValueError(f"fold {fold.protocol}/{fold.name}: {exc}") from exc
        out["calib_ot_knn"] = np.nan
        out.loc[covered, "calib_ot_knn"] = d_te[covered] + shift_field.predict(descriptors, formulas[te][covered])
        if neural is not None and covered.any():
            from models.transport import fit_calibration_map  # torch, only when the neural map is fitted

            t_nn = time.perf_counter()
            cal_map = fit_calibration_map(
                np.asarray(source.values, float), source.features, src_formulas, y_tr, target.features[tr],
                formulas[tr], config=neural)
            out["calib_neural"] = np.nan
            out.loc[covered, "calib_neural"] = cal_map.calibrate(d_te[covered], target.features[te][covered])[0]
            info["neural_seconds"] = time.perf_counter() - t_nn
        if stacked_models:
            for name in stacked_models:
                t_st = time.perf_counter()
                model = StackedModel(stack.config, dft_reference=stack.dft_reference, surrogate=stack.surrogate,
                                     extra_reference=stack.extra_reference,
                                     shift_field=shift_field if name == "stacked_ot" else None)
                out[name] = model.fit(descriptors, formulas[tr].tolist(), y_tr).predict(descriptors, formulas[te].tolist())
                info[f"train_seconds_{name}"] = time.perf_counter() - t_st
        for name in gnn_variants:
            v = GNN_VARIANTS[name]
            cal = np.full(len(table), np.nan)
            conf = np.full(len(table), np.nan)
            if v.alignment is not None:
                cal[:n_dft], conf[:n_dft] = calibrated[v.alignment]
            fold_table.calibrated, fold_table.confidence = cal, conf
            t_gnn = time.perf_counter()
            cfg = replace(train_config, use_ot=v.use_ot,
                          w_calibrated=train_config.w_calibrated if v.w_calibrated is None else v.w_calibrated)
            fitted = [train_model(fold_table, cfg, seed=seed + 1000 * k + m, train_rows=train_rows, device=device,
                                  init_state=copy.deepcopy(pretrained[m % len(pretrained)])).model
                      for m in range(members)]
            pred = predict_ensemble(fitted, fold_table, test_rows, device=device, clamp_min=clamp)
            out[name] = pred.experiment
            info[f"train_seconds_{name}"] = time.perf_counter() - t_gnn

        # applicability domain, as models/predictor.py scores it, against this fold's training data:
        # ad_score: reference = every composition the fold's model was trained on (DFT + training
        # measurements), like the predictor's table; ad_score_measured: training measurements only.
        t_ad = time.perf_counter()
        ref_all = np.union1d(dft_formulas, np.unique(formulas[tr]))
        ad_all = ApplicabilityDomain.fit(desc.loc[ref_all].to_numpy(float), k=ad_k, seed=seed)
        ad_meas = ApplicabilityDomain.fit(desc.loc[np.unique(formulas[tr])].to_numpy(float), k=ad_k, seed=seed)
        out["ad_score"] = ad_all.score(x_exp[te])
        out["ad_score_measured"] = ad_meas.score(x_exp[te])
        out["ad_flag"] = out["ad_score"] > ad_threshold
        out["ad_flag_measured"] = out["ad_score_measured"] > ad_threshold
        info["ad_seconds"] = time.perf_counter() - t_ad
        out["transported_mass"] = np.nan if transported_mass is None else np.asarray(transported_mass)[te]
        shift = shift_distance(x_exp[tr], x_exp[te], sample=shift_sample, seed=seed)
        row = {"protocol": fold.protocol, "fold": fold.name, "n_train": len(tr), "n_test": len(te),
               "shift_ot": shift, **info}
        for m in (*BASELINES, *variants):
            row[f"mae_{m}"] = regression_metrics(y_te, out[m].to_numpy())["mae"]
        row["n_test_with_dft"] = int(covered.sum())
        for m in ("raw_dft", "linear_dft", *calibrations):
            row[f"calibration_mae_{m}"] = (regression_metrics(y_te[covered], out.loc[covered, m].to_numpy())["mae"]
                                          if covered.any() else float("nan"))
        row["seconds"] = time.perf_counter() - tf
        fold_rows.append(row)
        pred_frames.append(out)
        if on_fold is not None:
            on_fold(k, len(folds), row)
    return EvaluationResult(predictions=pd.concat(pred_frames, ignore_index=True), folds=pd.DataFrame(fold_rows),
                            seconds=time.perf_counter() - t0, models=[*BASELINES, *variants],
                            calibrations=calibrations)
