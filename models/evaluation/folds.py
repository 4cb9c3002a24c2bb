"""Leak-free evaluation: every model and ablation refitted per fold, scored per protocol.

:func:`evaluate_folds` takes the whole problem (DFT entries and measurements as
:class:`models.transport.Domain` objects, a base :class:`models.learners.EntryTable`, the
descriptor table) and a list of :class:`models.evaluation.Fold` over the measurements. In each
fold, everything that learns from measurements sees the fold's *training* part only:

* the alignment (:func:`models.transport.align` between all DFT entries and the training
  measurements, with the align stage's parameters; its descriptor standardisation is pooled
  over exactly those two sides) and so the calibrated targets and their confidence;
* the GNN's validation split, early stopping and model selection
  (:func:`models.learners.train_model` with ``train_rows`` = DFT rows + training
  measurements; the test measurements' values are also blanked to NaN in the fold's table);
* the baselines (linear calibration, descriptor random forest: fitted on training rows);
* the applicability-domain reference and the scaler of the shift distance.

The DFT-only pretraining of the composition encoder (and the descriptor scaler it fits) uses
no measurement (:func:`models.learners.pretrain_members` trains on DFT rows only), so it is
computed once per property by the caller and shared by every fold: ``pretrained``.

Models per fold (names used in metrics and plots):

``raw_dft``, ``linear_dft``, ``rf_descriptors``: baselines; ``gnn_no_ot``: the GNN without
OT terms; ``gnn_ot``: the OT-aligned GNN (calibrated targets + minibatch UOT); ablations
``gnn_ot_balanced`` (balanced OT instead of unbalanced), ``gnn_ot_no_penalties`` (cost
without the mass/symmetry terms, no hard block, no energy additivity) and
``gnn_ot_no_calibrated`` (calibrated-target weight 0, minibatch OT kept); ``stacked``: the
multi-fidelity stacked model of :mod:`models.learners` without OT, ``stacked_ot``: the same with
the fold's unbalanced alignment as features (its calibration shifts extended to every
composition by :class:`models.learners.ShiftField`: the train stage's served model).

Calibration of DFT values (issue 10's comparison), on the test rows whose formula has a DFT
entry: ``calib_ot_knn`` adds the fold alignment's shift field to the formula's own DFT value
(barycentric projection extended by nearest neighbours); ``calib_neural`` applies the
conditional neural OT map of :mod:`models.transport` fitted on the fold's training measurements;
raw DFT and ``linear_dft`` are the references on the same rows.

Seeds: with ``extra_seeds``, the stacked models alone are fitted again on the folds of other
seeds (the grouped-CV and LOCO folds are redrawn; boosters reseeded), each fold with its own
alignment on its training part, as above; their spread over seeds and the paired difference the
OT features make are summarised by :func:`models.evaluation.seed_summary`.

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
    ConformalIntervals,
    DescriptorForest,
    DFTSurrogate,
    EntryTable,
    IntervalConfig,
    LinearCalibration,
    RawDFT,
    ShiftField,
    StackConfig,
    StackedModel,
    TrainConfig,
    descriptor_matrix,
    frozen_embeddings,
    out_of_fold,
    predict_ensemble,
    train_model,
)
from models.parallel import fork_map
from models.progress import bar
from models.transport import AlignConfig, CostWeights, Domain, NeuralAlignConfig, align

log = logging.getLogger(__name__)

__all__ = [
    "FoldData",
    "FoldModels",
    "StackInputs",
    "alignment_variants",
    "calibrated_targets",
    "evaluate_folds",
    "fold_shift_field",
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
    # conformal intervals around the served stacked model, calibrated per fold as the train stage does
    intervals: IntervalConfig | None = None


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


def fold_shift_field(source: Domain, target: Domain, descriptors: pd.DataFrame, fold: Fold, config: AlignConfig, *,
                     k: int, calibrated: tuple[np.ndarray, np.ndarray] | None = None) -> ShiftField:
    """Return the stacked model's OT features on ``fold``: its own alignment on its training part, extended to every composition.

    ``calibrated``: that alignment's calibrated targets and confidence when computed already
    (:func:`calibrated_targets` of ``training_targets(fold)`` with ``config``).
    """
    if calibrated is None:
        calibrated = calibrated_targets(source, target, training_targets(fold), config)[:2]
    try:
        return ShiftField.fit(np.asarray(source.formulas), np.asarray(source.values, float), *calibrated, descriptors, k=k)
    except ValueError as exc:
        raise ValueError(f"fold {fold.protocol}/{fold.name}: {exc}") from exc


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


@dataclass
class FoldData:
    """The whole problem every fold is cut from.

    ``table`` holds the DFT entries (rows ``0 .. source.size - 1``, in ``source`` order) then
    the measurements (in ``target`` order); its calibrated targets are replaced per fold.
    ``dft_reference`` [n_target] is the DFT value of each measurement's composition (NaN
    where none is known). ``transported_mass`` [n_target], optional, is only copied into the
    predictions for the mass-against-error plot; it never reaches a model.
    """

    source: Domain
    target: Domain
    table: EntryTable
    descriptors: pd.DataFrame
    dft_reference: np.ndarray
    transported_mass: np.ndarray | None = None


@dataclass
class FoldModels:
    """What is fitted in every fold: the GNN training and alignment settings, the models, their budget.

    ``pretrained``: DFT-only encoder states (shared, no measurement seen); ``stack`` is needed
    for the stacked models; ``neural`` adds the neural-map calibration (None: not fitted).
    """

    train_config: TrainConfig
    align_config: AlignConfig
    pretrained: Sequence[dict[str, torch.Tensor]]
    variants: Sequence[str] = tuple(GNN_VARIANTS)
    members: int = 1
    rf_trees: int = 100
    stack: StackInputs | None = None
    neural: NeuralAlignConfig | None = None


#: Nominal coverages at which the evaluate stage checks the intervals (the reliability plot).
RELIABILITY_LEVELS = (0.5, 0.6, 0.7, 0.8, 0.9, 0.95)


def evaluate_folds(data: FoldData, folds: Sequence[Fold], models: FoldModels, *, shift_sample: int = 500,
                   ad_k: int = 5, ad_threshold: float = 95.0, seed: int = 0, device: torch.device | None = None,
                   workers: int = 1, on_fold: Callable[[int, int, dict], None] | None = None,
                   extra_seeds: Sequence[tuple[int, Sequence[Fold]]] = ()) -> EvaluationResult:
    """Fit and score every model on every fold (see the module docstring for what each sees).

    ``workers`` > 1: the folds run in that many forked processes (:func:`models.parallel.fork_map`);
    every fold seeds its own models, so the results equal the serial run's. ``on_fold(k, n, row)``
    is called here, in fold order, after fold ``k`` of ``n`` with its row of the per-fold table.
    ``extra_seeds``: (seed, its folds) pairs on which the stacked models alone are fitted again
    (:meth:`_FoldRunner.run_stacked`, same leakage rules), into ``seed_predictions`` with the
    first seed's rows.
    """
    t0 = time.perf_counter()
    runner = _FoldRunner(data, models, ad_k=ad_k, ad_threshold=ad_threshold, seed=seed, device=device)
    extra = [(k, fold, s) for s, seed_folds in extra_seeds for k, fold in enumerate(seed_folds)]
    if extra and not runner.stacked_models:
        raise ValueError("extra seeds refit the stacked models, and none is listed")

    def one(item: tuple[int, Fold, int | None]) -> tuple[pd.DataFrame, dict | None]:
        k, fold, other_seed = item
        if other_seed is not None:
            return runner.run_stacked(fold, other_seed), None
        tf = time.perf_counter()
        out, row = runner.run(k, fold)
        row["shift_ot"] = shift_distance(runner.x_exp[fold.train], runner.x_exp[fold.test], sample=shift_sample,
                                         seed=seed)
        row = runner.scores(out, row)
        row["seconds"] = time.perf_counter() - tf
        return out, row

    pred_frames, fold_rows, seed_frames = [], [], []
    items = [(k, fold, None) for k, fold in enumerate(folds)] + extra
    done = fork_map(one, items, workers=workers, device=device)
    for out, row in bar(done, desc="evaluate folds", total=len(items), unit="fold", leave=False):
        if row is None:
            seed_frames.append(out)
            continue
        fold_rows.append(row)
        pred_frames.append(out)
        if on_fold is not None:
            on_fold(len(fold_rows) - 1, len(folds), row)
    predictions = pd.concat(pred_frames, ignore_index=True)
    seed_predictions = None
    if seed_frames:
        first = predictions[[c for c in seed_frames[0].columns if c != "seed"]].assign(seed=seed)
        seed_predictions = pd.concat([first, *seed_frames], ignore_index=True)
    return EvaluationResult(predictions=predictions, folds=pd.DataFrame(fold_rows),
                            seconds=time.perf_counter() - t0, models=[*BASELINES, *models.variants],
                            calibrations=runner.calibrations, seed_predictions=seed_predictions)



class _FoldRunner:
    """One fold's fits and predictions; the state every fold shares is computed once, here."""

    def __init__(self, data: FoldData, models: FoldModels, *, ad_k: int, ad_threshold: float, seed: int,
                 device: torch.device | None) -> None:
        self.data, self.models = data, models
        self.ad_k, self.ad_threshold, self.seed, self.device = ad_k, ad_threshold, seed, device
        self.n_dft = data.source.size
        if len(data.table) != self.n_dft + data.target.size:
            raise ValueError(f"table has {len(data.table)} rows, expected {self.n_dft} DFT + "
                             f"{data.target.size} measurements")
        unknown = [v for v in models.variants if v not in GNN_VARIANTS and v not in STACKED_MODELS]
        if unknown:
            raise ValueError(f"unknown model variant {unknown[0]!r} (valid: {', '.join([*GNN_VARIANTS, *STACKED_MODELS])})")
        self.gnn_variants = [v for v in models.variants if v in GNN_VARIANTS]
        self.stacked_models = [v for v in models.variants if v in STACKED_MODELS]
        if self.gnn_variants and not models.pretrained:
            raise ValueError("evaluate_folds needs at least one pretrained encoder state")
        if self.stacked_models and models.stack is None:
            raise ValueError(f"model {self.stacked_models[0]!r} needs the stack inputs")
        self.y_all = np.asarray(data.target.values, float)
        self.formulas = np.asarray(data.target.formulas)
        self.desc = data.descriptors.drop_duplicates("formula").set_index("formula").select_dtypes(include="number")
        self.x_exp = self.desc.loc[self.formulas].to_numpy(float)
        self.src_formulas = np.asarray(data.source.formulas)
        self.dft_formulas = np.unique(self.src_formulas)
        self.alignments = alignment_variants(models.align_config)
        # the stage's own (unbalanced) alignment also feeds stacked_ot and the shift-field calibration
        self.needed = sorted({GNN_VARIANTS[v].alignment for v in self.gnn_variants} - {None} | {"unbalanced"})
        self.calibrations = ["calib_ot_knn", *(["calib_neural"] if models.neural is not None else [])]
        # every fold's GNN variants start from these encoders, frozen, on the same table: their output once, here
        frozen = self.gnn_variants and models.train_config.freeze_encoder
        self.embeddings = ([frozen_embeddings(data.table, models.train_config, state, device=device)
                            for state in models.pretrained] if frozen else [None])

    def run(self, k: int, fold: Fold) -> tuple[pd.DataFrame, dict]:
        """Fit every model on the fold; return their test-row predictions and the fold's timings and diagnostics."""
        tr, te = np.asarray(fold.train), np.asarray(fold.test)
        if len(tr) == 0 or len(te) == 0:
            raise ValueError(f"fold {fold.protocol}/{fold.name} has an empty side")
        out = self._rows(fold, te).assign(dft_value=self.data.dft_reference[te])
        info = self._baselines(out, tr, te)
        calibrated = {}
        for name in self.needed:
            t_cal, conf, diag = calibrated_targets(self.data.source, self.data.target, training_targets(fold),
                                                   self.alignments[name])
            calibrated[name] = (t_cal, conf)
            info[f"mass_moved_fraction_{name}"] = diag["mass_moved_fraction"]
            info[f"align_seconds_{name}"] = diag["seconds"]
        shift_field = self._calibrations(out, info, fold, tr, te, calibrated["unbalanced"])
        self._stacked(out, info, tr, te, shift_field)
        self._gnns(out, info, k, tr, te, calibrated)
        self._applicability(out, info, tr, te)
        tm = self.data.transported_mass
        out["transported_mass"] = np.nan if tm is None else np.asarray(tm)[te]
        row = {"protocol": fold.protocol, "fold": fold.name, "n_train": len(tr), "n_test": len(te), "shift_ot": None,
               **info}
        return out, row

    def run_stacked(self, fold: Fold, seed: int) -> pd.DataFrame:
        """Fit the stacked models alone on ``fold`` (another seed's fold); return test predictions with ``seed``.

        As in :meth:`run`: the fold's own unbalanced alignment on its training part feeds the
        shift field of ``stacked_ot``; the boosters' seeds follow ``seed`` (``bags`` apart, so no
        two seeds share a booster seed); no interval is calibrated.
        """
        tr, te = np.asarray(fold.train), np.asarray(fold.test)
        if len(tr) == 0 or len(te) == 0:
            raise ValueError(f"fold {fold.protocol}/{fold.name} (seed {seed}) has an empty side")
        out = self._rows(fold, te).assign(seed=seed)
        shift_field = self._shift_field(fold) if "stacked_ot" in self.stacked_models else None
        self._stacked(out, {}, tr, te, shift_field, seed=seed)
        return out

    def _rows(self, fold: Fold, te: np.ndarray) -> pd.DataFrame:
        return pd.DataFrame({"protocol": fold.protocol, "fold": fold.name, "exp_id": np.asarray(self.data.target.ids)[te],
                             "formula": self.formulas[te], "value": self.y_all[te]})

    def _shift_field(self, fold: Fold, unbalanced: tuple[np.ndarray, np.ndarray] | None = None) -> ShiftField:
        """Return the stacked model's OT features on ``fold`` (:func:`fold_shift_field`; ``unbalanced``: its alignment's, if run)."""
        stack = self.models.stack
        return fold_shift_field(self.data.source, self.data.target, self.data.descriptors, fold,
                                self.alignments["unbalanced"], k=stack.config.ot_neighbours if stack is not None else 5,
                                calibrated=unbalanced)

    def _baselines(self, out: pd.DataFrame, tr: np.ndarray, te: np.ndarray) -> dict[str, float]:
        y_tr, d_tr, d_te = self.y_all[tr], self.data.dft_reference[tr], self.data.dft_reference[te]
        out["raw_dft"] = RawDFT().fit(d_tr, y_tr).predict(d_te)
        clamp = self.models.train_config.clamp_min
        out["linear_dft"] = (LinearCalibration(clamp_min=clamp).fit(d_tr, y_tr).predict(d_te)
                             if np.isfinite(d_tr).sum() >= 2 else float(np.mean(y_tr)))
        t_rf = time.perf_counter()
        desc = self.data.descriptors
        out["rf_descriptors"] = DescriptorForest(n_estimators=self.models.rf_trees, seed=self.seed).fit(
            desc, self.formulas[tr].tolist(), y_tr).predict(desc, self.formulas[te].tolist())
        return {"rf_seconds": time.perf_counter() - t_rf}

    def _calibrations(self, out: pd.DataFrame, info: dict, fold: Fold, tr: np.ndarray, te: np.ndarray,
                      unbalanced: tuple[np.ndarray, np.ndarray]) -> ShiftField:
        """Calibrated DFT values of the test rows with one (OT + neighbours; the neural map); returns the shift field."""
        source, target, desc = self.data.source, self.data.target, self.data.descriptors
        d_te = self.data.dft_reference[te]
        covered = np.isfinite(d_te)
        shift_field = self._shift_field(fold, unbalanced)
        out["calib_ot_knn"] = np.nan
        out.loc[covered, "calib_ot_knn"] = d_te[covered] + shift_field.predict(desc, self.formulas[te][covered])
        if self.models.neural is not None and covered.any():
            from models.transport import fit_calibration_map  # torch, only when the neural map is fitted

            t_nn = time.perf_counter()
            cal_map = fit_calibration_map(
                np.asarray(source.values, float), source.features, self.src_formulas, self.y_all[tr],
                target.features[tr], self.formulas[tr], config=self.models.neural)
            out["calib_neural"] = np.nan
            out.loc[covered, "calib_neural"] = cal_map.calibrate(d_te[covered], target.features[te][covered])[0]
            info["neural_seconds"] = time.perf_counter() - t_nn
        return shift_field

    def _stacked(self, out: pd.DataFrame, info: dict, tr: np.ndarray, te: np.ndarray, shift_field: ShiftField | None,
                 *, seed: int | None = None) -> None:
        """Fit the stacked models (for the first seed also the intervals around the last); ``seed``: another seed's boosters."""
        if not self.stacked_models:  # the GNN variants alone: no stack inputs to read
            return
        stack, desc = self.models.stack, self.data.descriptors
        config = stack.config
        if seed is not None:
            config = replace(config, seed=config.seed + (seed - self.seed) * config.bags)
        for name in self.stacked_models:
            t_st = time.perf_counter()
            model = StackedModel(config, dft_reference=stack.dft_reference, surrogate=stack.surrogate,
                                 extra_reference=stack.extra_reference,
                                 shift_field=shift_field if name == "stacked_ot" else None)
            out[name] = model.fit(desc, self.formulas[tr].tolist(), self.y_all[tr]).predict(
                desc, self.formulas[te].tolist())
            info[f"train_seconds_{name}"] = time.perf_counter() - t_st
        if self.stacked_models and stack.intervals is not None and seed is None:
            self._intervals(out, info, tr, te, self.stacked_models[-1])

    def _intervals(self, out: pd.DataFrame, info: dict, tr: np.ndarray, te: np.ndarray, served: str) -> None:
        """Conformal intervals around ``served``'s test predictions, calibrated on the fold's training part only.

        As the train stage: out-of-fold residuals of the training rows (grouped inner folds,
        the stacked model without OT, :meth:`IntervalConfig.booster_config`), normalised by the
        neighbours' residuals and distance; ``lower``/``upper`` at the nominal coverage and
        ``in_<pct>`` (covered at each level of :data:`RELIABILITY_LEVELS`) per test row.
        """
        t_iv = time.perf_counter()
        stack, desc, settings = self.models.stack, self.data.descriptors, self.models.stack.intervals
        config = settings.booster_config(stack.config)

        def fit_predict(formulas: list[str], y: np.ndarray, test: list[str]) -> np.ndarray:
            return StackedModel(config, dft_reference=stack.dft_reference, surrogate=stack.surrogate,
                                extra_reference=stack.extra_reference).fit(desc, formulas, y).predict(desc, test)

        f_tr, f_te = self.formulas[tr].tolist(), self.formulas[te].tolist()
        try:
            oof = out_of_fold(fit_predict, f_tr, self.y_all[tr], folds=settings.folds, seed=self.seed)
        except ValueError as exc:  # too few training rows for the inner folds: no interval, said in the fold row
            out["lower"], out["upper"] = np.nan, np.nan
            info["interval_skipped"] = str(exc)
            return
        columns = stack.surrogate.columns_
        cal = ConformalIntervals(settings, clamp_min=config.clamp_min,
                                 elements_apart=config.element_value is not None).fit(
            descriptor_matrix(desc, f_tr, columns), f_tr, self.y_all[tr] - oof)
        pred = out[served].to_numpy(float)
        sigma = cal.difficulty(descriptor_matrix(desc, f_te, columns), f_te)  # the kNN queries, once for every level
        out["lower"], out["upper"] = cal.bounds(pred, sigma, formulas=f_te)
        for level in RELIABILITY_LEVELS:
            lo, hi = cal.bounds(pred, sigma, coverage=level, formulas=f_te)
            out[f"in_{round(100 * level)}"] = (out["value"] >= lo) & (out["value"] <= hi)
        info["interval_seconds"] = time.perf_counter() - t_iv

    def _gnns(self, out: pd.DataFrame, info: dict, k: int, tr: np.ndarray, te: np.ndarray,
              calibrated: dict[str, tuple[np.ndarray, np.ndarray]]) -> None:
        """Every GNN variant on the fold's table: test values blanked, calibrated targets from the fold's alignment."""
        table, n_dft, models = self.data.table, self.n_dft, self.models
        fold_table = copy.copy(table)
        fold_table.y_exp = table.y_exp.copy()
        fold_table.y_exp[n_dft + te] = np.nan
        train_rows = np.concatenate([np.arange(n_dft), n_dft + tr])
        # member m starts from encoder m % len(pretrained), and trains and predicts on that encoder's frozen output
        member_embeddings = [self.embeddings[m % len(self.embeddings)] for m in range(models.members)]
        for name in self.gnn_variants:
            v = GNN_VARIANTS[name]
            cal = np.full(len(table), np.nan)
            conf = np.full(len(table), np.nan)
            if v.alignment is not None:
                cal[:n_dft], conf[:n_dft] = calibrated[v.alignment]
            fold_table.calibrated, fold_table.confidence = cal, conf
            t_gnn = time.perf_counter()
            base = models.train_config
            cfg = replace(base, use_ot=v.use_ot, w_calibrated=base.w_calibrated if v.w_calibrated is None else v.w_calibrated)
            fitted = [train_model(fold_table, cfg, seed=self.seed + 1000 * k + m, train_rows=train_rows,
                                  device=self.device,
                                  init_state=copy.deepcopy(models.pretrained[m % len(models.pretrained)]),
                                  embeddings=member_embeddings[m]).model
                      for m in range(models.members)]
            pred = predict_ensemble(fitted, fold_table, n_dft + te, device=self.device, clamp_min=base.clamp_min,
                                    embeddings=member_embeddings, graphs_embedded=base.freeze_graph)
            out[name] = pred.experiment
            info[f"train_seconds_{name}"] = time.perf_counter() - t_gnn

    def _applicability(self, out: pd.DataFrame, info: dict, tr: np.ndarray, te: np.ndarray) -> None:
        """Applicability domain as :class:`models.serving.Predictor` scores it, against this fold's training data.

        ``ad_score``: reference = every composition the fold's model was trained on (DFT +
        training measurements); ``ad_score_measured``: training measurements only.
        """
        t_ad = time.perf_counter()
        measured = np.unique(self.formulas[tr])
        ad_all = ApplicabilityDomain.fit(self.desc.loc[np.union1d(self.dft_formulas, measured)].to_numpy(float),
                                         k=self.ad_k, seed=self.seed)
        ad_meas = ApplicabilityDomain.fit(self.desc.loc[measured].to_numpy(float), k=self.ad_k, seed=self.seed)
        out["ad_score"] = ad_all.score(self.x_exp[te])
        out["ad_score_measured"] = ad_meas.score(self.x_exp[te])
        out["ad_flag"] = out["ad_score"] > self.ad_threshold
        out["ad_flag_measured"] = out["ad_score_measured"] > self.ad_threshold
        info["ad_seconds"] = time.perf_counter() - t_ad

    def scores(self, out: pd.DataFrame, row: dict) -> dict:
        """Score the fold into its row: MAE of every model, and of the calibrations on the test rows with a DFT value."""
        y_te = out["value"].to_numpy()
        covered = out["dft_value"].notna().to_numpy()
        for m in (*BASELINES, *self.models.variants):
            row[f"mae_{m}"] = regression_metrics(y_te, out[m].to_numpy())["mae"]
        row["n_test_with_dft"] = int(covered.sum())
        for m in ("raw_dft", "linear_dft", *self.calibrations):
            row[f"calibration_mae_{m}"] = (regression_metrics(y_te[covered], out.loc[covered, m].to_numpy())["mae"]
                                          if covered.any() else float("nan"))
        return row
