r"""Cross-validation of the metal classifier and of the band-gap predictor that uses it.

The labelled set is one row per formula: the measured classes of ``metal_class.parquet``
plus every formula with a measured band gap (a measured gap is a non-metal's: all of them
are > 0), minus the conflicts (a formula labelled both ways, or labelled metal while a gap
above the fetch tolerance was measured). The "all-compositions" band-gap set is every
band-gap measurement row plus one row at 0 eV per labelled metal.

Per fold, on the fold's training formulas only:

1. the classifier is fitted; an inner grouped CV gives out-of-fold probabilities;
2. the band-gap regressor (the stacked model without OT: :class:`models.learners.StackedModel`)
   is fitted on the training formulas' measured gaps;
3. the threshold is :func:`models.learners.choose_threshold` on the inner out-of-fold
   probabilities, a missed metal costing the regressor's prediction for it (metals never
   train the regressor, so that prediction is out of sample) and a false metal its measured
   gaps (summed over its measurement rows, which the all-compositions MAE counts): the
   threshold nearest 0.5 whose summed cost is within one standard error of the minimum.

The test formulas then get P(metal), the call at that threshold, the regressor's gap and the
combined prediction (0 eV when called metal). The DFT surrogates and the per-formula DFT
tables come from DFT entries only, so folds share them.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

from models.evaluation.config import MetalCVSettings
from models.evaluation.splits import (
    Fold,
    crystal_system_folds,
    family_folds,
    grouped_kfold,
    loco_descriptors,
    loco_folds,
)
from models.learners import (
    DFT_METAL_COLUMNS,
    DFTSurrogate,
    MetalClassifier,
    MetalConfig,
    StackConfig,
    StackedModel,
    choose_threshold,
    dft_metal_table,
    reuse_surrogate,
)
from models.parallel import fork_map
from models.progress import bar
from models.properties import choose_polymorphs, metal_class_conflicts, reference_per_formula

log = logging.getLogger(__name__)

__all__ = [
    "MetalData",
    "MetalPlan",
    "metal_card",
    "metal_cv",
    "metal_labels",
    "metal_metrics",
    "metal_summary",
    "operating_points",
    "paired_bootstrap",
    "prepare_metal",
    "served_threshold",
]


def metal_labels(classes: pd.DataFrame, gaps: pd.DataFrame, *, gap_tol: float) -> tuple[pd.Series, dict[str, list[str]]]:
    """One class per formula (index formula, 1 = metal) and the formulas left out, by reason.

    ``classes``: ``formula``, ``is_metal``; ``gaps``: band-gap measurements (``formula``, ``value``).
    """
    both, gapped = metal_class_conflicts(classes, gaps, gap_tol=gap_tol)
    gapped_metals = sorted(gapped.index)
    conflicts = set(both) | set(gapped_metals)
    labels = classes.groupby("formula")["is_metal"].max().astype(int)
    extra = pd.Series(0, index=sorted(set(gaps["formula"]) - set(labels.index) - conflicts), dtype=int)
    labels = pd.concat([labels[~labels.index.isin(conflicts)], extra]).sort_index()
    labels.index.name = "formula"
    return labels, {"labelled_both_ways": both, "labelled_metal_with_measured_gap": gapped_metals}


@dataclass
class MetalData:
    """What the metal cross-validation reads: labels, gap measurements and the shared DFT-only models."""

    labels: pd.Series  # per formula, 1 = metal
    gaps: pd.DataFrame  # band-gap measurements: formula, value (non-metals; conflicts removed)
    descriptors: pd.DataFrame
    classifier: MetalClassifier  # with fitted surrogates: folds copy them
    stack: StackConfig
    dft_reference: pd.Series  # chosen polymorph's PBE gap per formula
    extra_reference: dict[str, pd.Series]
    gap_surrogate: DFTSurrogate

    def classifier_for_fold(self, config: MetalConfig | None = None) -> MetalClassifier:
        base = self.classifier
        return MetalClassifier(config or base.config, dft_table=base.dft_table, gap_surrogate=base.gap_surrogate,
                               metal_surrogate=base.metal_surrogate, feature_cache=base.feature_cache)

    def regressor(self, formulas: Sequence[str], values: np.ndarray) -> StackedModel:
        return StackedModel(self.stack, dft_reference=self.dft_reference, surrogate=self.gap_surrogate,
                            extra_reference=self.extra_reference).fit(self.descriptors, list(formulas), values)


def _fold_threshold(data: MetalData, train: np.ndarray, regressor: StackedModel, *, inner_folds: int, seed: int,
                    inner: MetalConfig | None = None) -> float:
    """Threshold from inner out-of-fold probabilities of the training formulas (see the module docstring).

    ``inner``: the inner classifiers' config (None: :meth:`MetalCVSettings.inner_config`'s default, the
    classifier's with one booster).
    """
    formulas = data.labels.index.to_numpy()[train]
    y = data.labels.to_numpy()[train]
    oof = np.empty(len(train))
    inner = inner or MetalCVSettings().inner_config(data.classifier.config)
    for fold in grouped_kfold(list(formulas), n_folds=inner_folds, seed=seed + 1):
        clf = data.classifier_for_fold(inner).fit(data.descriptors, formulas[fold.train], y[fold.train])
        oof[fold.test] = clf.predict_proba(data.descriptors, formulas[fold.test])
    measured = data.gaps.groupby("formula")["value"].sum()  # the MAE counts every measurement row
    predicted = regressor.predict(data.descriptors, list(formulas))
    false_cost = measured.reindex(formulas).to_numpy(float)
    false_cost = np.where(np.isfinite(false_cost), false_cost, predicted)
    return choose_threshold(oof, y, cost_if_missed=predicted, cost_if_false=false_cost)


def metal_cv(data: MetalData, folds: Sequence[Fold], *, inner_folds: int = 4, seed: int = 0, workers: int = 1,
             on_fold: Callable[[int, int, str], None] | None = None, inner: MetalConfig | None = None
             ) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Run every fold (positions into ``data.labels``); returns the per-formula and the per-gap-row tables.

    Per formula: ``protocol``, ``fold``, ``formula``, ``is_metal``, ``probability``,
    ``threshold``, ``called_metal``. Per row of the all-compositions set: ``protocol``,
    ``fold``, ``formula``, ``is_metal``, ``measured`` (0 for a metal), ``regressor`` (the
    band-gap model alone) and ``combined`` (0 where called metal). ``workers``, ``on_fold``,
    ``inner``: as in :func:`metal_cv_groups`.
    """
    return metal_cv_groups(data, {"folds": folds}, inner_folds=inner_folds, seed=seed, workers=workers,
                           on_fold=on_fold, inner=inner)["folds"]


def metal_cv_groups(data: MetalData, groups: dict[str, Sequence[Fold]], *, inner_folds: int = 4, seed: int = 0,
                    workers: int = 1, on_fold: Callable[[int, int, str], None] | None = None,
                    inner: MetalConfig | None = None) -> dict[str, tuple[pd.DataFrame, pd.DataFrame]]:
    """:func:`metal_cv` of every named group of folds, all folds in one queue; the two tables per group.

    ``workers`` > 1: the folds run in that many forked processes (:func:`models.parallel.fork_map`;
    give the models one thread each), with the serial run's results. ``on_fold(k, n, message)``
    is called here, in order, after fold ``k`` of all ``n``. ``inner``: the config of the classifiers
    of each fold's inner CV, which only sets the threshold (None: the classifier's with one booster).
    """
    items = [(name, fold) for name, folds in groups.items() for fold in folds]
    tables: dict[str, tuple[list, list]] = {name: ([], []) for name in groups}
    done = fork_map(lambda item: _metal_fold(data, item[1], inner_folds=inner_folds, seed=seed, inner=inner), items,
                    workers=workers)
    for k, ((name, fold), (formula_table, row_table, seconds)) in enumerate(
            zip(items, bar(done, desc="metal folds", total=len(items), unit="fold", leave=False), strict=True)):
        tables[name][0].append(formula_table)
        tables[name][1].append(row_table)
        if on_fold is not None:
            on_fold(k, len(items), f"{fold.protocol}/{fold.name}: threshold {formula_table['threshold'].iloc[0]:.2f}, "
                    f"{len(formula_table)} test formulas, {seconds:.0f} s")
    return {name: (pd.concat(f, ignore_index=True), pd.concat(r, ignore_index=True)) for name, (f, r) in tables.items()}


def _metal_fold(data: MetalData, fold: Fold, *, inner_folds: int, seed: int, inner: MetalConfig | None = None
                ) -> tuple[pd.DataFrame, pd.DataFrame, float]:
    """One fold of :func:`metal_cv`: its per-formula and per-gap-row tables and its seconds."""
    t0 = time.perf_counter()
    formulas = data.labels.index.to_numpy()
    y = data.labels.to_numpy()
    tr, te = np.asarray(fold.train), np.asarray(fold.test)
    clf = data.classifier_for_fold().fit(data.descriptors, formulas[tr], y[tr])
    train_gaps = data.gaps[data.gaps["formula"].isin(set(formulas[tr]))]
    regressor = data.regressor(train_gaps["formula"], train_gaps["value"].to_numpy(float))
    threshold = _fold_threshold(data, tr, regressor, inner_folds=inner_folds, seed=seed, inner=inner)
    p = clf.predict_proba(data.descriptors, formulas[te])
    per_formula = pd.DataFrame({"protocol": fold.protocol, "fold": fold.name, "formula": formulas[te],
                                "is_metal": y[te], "probability": p, "threshold": threshold,
                                "called_metal": p >= threshold})
    test_set = set(formulas[te])
    metals = [f for f, c in zip(formulas[te], y[te], strict=True) if c == 1]
    rows = pd.concat([data.gaps.loc[data.gaps["formula"].isin(test_set), ["formula", "value"]],
                      pd.DataFrame({"formula": metals, "value": 0.0})], ignore_index=True)
    called = pd.Series(p >= threshold, index=formulas[te])
    gap = regressor.predict(data.descriptors, rows["formula"].tolist())
    per_row = pd.DataFrame({
        "protocol": fold.protocol, "fold": fold.name, "formula": rows["formula"].to_numpy(),
        "is_metal": rows["formula"].map(data.labels).to_numpy(int), "measured": rows["value"].to_numpy(float),
        "regressor": gap, "combined": np.where(rows["formula"].map(called).to_numpy(bool), 0.0, gap)})
    return per_formula, per_row, time.perf_counter() - t0


def paired_bootstrap(a: np.ndarray, b: np.ndarray, *, n: int = 2000, seed: int = 0) -> tuple[float, float, float]:
    """Mean of ``a - b`` and its 95% percentile-bootstrap interval (rows resampled in pairs)."""
    d = np.asarray(a, float) - np.asarray(b, float)
    rng = np.random.default_rng(seed)
    means = d[rng.integers(0, len(d), size=(n, len(d)))].mean(axis=1)
    return float(d.mean()), float(np.quantile(means, 0.025)), float(np.quantile(means, 0.975))


def metal_metrics(per_formula: pd.DataFrame, per_row: pd.DataFrame) -> dict[str, float]:
    """Classifier and combined-predictor scores of one protocol's pooled test rows.

    ``roc_auc`` pooled over folds (``roc_auc_fold_mean`` the mean of per-fold values where a
    fold holds both classes); ``balanced_accuracy``, ``f1``, ``precision``, ``recall`` of the
    metal calls at each fold's threshold; ``mae_all`` the all-compositions band-gap MAE with
    the classifier and ``mae_all_regressor_only`` without it; ``mae_nonmetal`` /
    ``mae_nonmetal_regressor_only`` on the measured-gap rows, with the paired difference and
    its bootstrap interval; ``mae_metal`` on the metal rows.
    """
    # scikit-learn: about a second to import; only the scores need it
    from sklearn.metrics import (
        balanced_accuracy_score,
        f1_score,
        precision_score,
        recall_score,
        roc_auc_score,
    )

    y, p, called = per_formula["is_metal"].to_numpy(int), per_formula["probability"].to_numpy(), per_formula["called_metal"]
    fold_auc = [roc_auc_score(g["is_metal"], g["probability"]) for _, g in per_formula.groupby("fold")
                if g["is_metal"].nunique() == 2]
    nonmetal = per_row[per_row["is_metal"] == 0]
    metal = per_row[per_row["is_metal"] == 1]
    err = lambda f, c: np.abs(f[c].to_numpy() - f["measured"].to_numpy())  # noqa: E731
    diff, low, high = paired_bootstrap(err(nonmetal, "combined"), err(nonmetal, "regressor"))
    out = {
        "formulas": len(per_formula), "metals": int(y.sum()), "rows_all_compositions": len(per_row),
        "roc_auc": float(roc_auc_score(y, p)) if len(set(y)) == 2 else float("nan"),
        "roc_auc_fold_mean": float(np.mean(fold_auc)) if fold_auc else float("nan"),
        "balanced_accuracy": float(balanced_accuracy_score(y, called)),
        "f1": float(f1_score(y, called, zero_division=0)),
        "precision": float(precision_score(y, called, zero_division=0)),
        "recall": float(recall_score(y, called, zero_division=0)),
        "threshold_mean": float(per_formula.groupby("fold")["threshold"].first().mean()),
        "mae_all": float(err(per_row, "combined").mean()),
        "mae_all_regressor_only": float(err(per_row, "regressor").mean()),
        "mae_nonmetal": float(err(nonmetal, "combined").mean()) if len(nonmetal) else float("nan"),
        "mae_nonmetal_regressor_only": float(err(nonmetal, "regressor").mean()) if len(nonmetal) else float("nan"),
        "nonmetal_mae_difference": diff, "nonmetal_mae_difference_ci95": [low, high],
        "mae_metal": float(err(metal, "combined").mean()) if len(metal) else float("nan"),
    }
    return out


@dataclass
class MetalPlan:
    """:func:`prepare_metal`'s result: the shared data, the folds per protocol name, the data counts."""

    data: MetalData
    folds: dict[str, list[Fold]]
    counts: dict


def _crystal_systems(dft: pd.DataFrame, crystal_system: pd.Series) -> pd.Series:
    """Crystal system per formula: its polymorph's among the entries with a known system (the one rule)."""
    systems = dft["material_id"].map(crystal_system).fillna("").astype(str)
    return choose_polymorphs(dft.assign(crystal_system=systems), eligible=systems != "")["crystal_system"]


def prepare_metal(*, classes: pd.DataFrame, gaps: pd.DataFrame, dft: pd.DataFrame, descriptors: pd.DataFrame,
                  crystal_system: pd.Series, config: MetalConfig, stack: StackConfig, cv: MetalCVSettings,
                  extra_columns: Sequence[str] = (), gap_surrogate: DFTSurrogate | None = None) -> MetalPlan:
    """Labels, the DFT-only surrogates and tables, and the folds of grouped CV (per seed) and each OOD protocol.

    ``dft``: one row per DFT entry with ``material_id``, ``formula``, ``dft_value`` (the PBE
    gap), ``stability`` and the ``extra_columns`` fidelities; ``crystal_system`` by entry id
    (the crystal-system-out protocol). A labelled formula without descriptors is left out
    and counted. ``stack`` is the per-fold regressor's (its ``bags`` set by the caller).
    ``gap_surrogate``: the surrogate stage's PBE-gap surrogate (the stacked model's, ``stack``'s
    settings), used for the classifier's gap column and the regressor where
    :func:`models.learners.reuse_surrogate` finds it is the one ``stack`` would fit on these
    inputs; otherwise the classifier's own (``config.surrogate_*``) is fitted here.
    """
    known = set(descriptors["formula"])
    labels, left_out = metal_labels(classes, gaps, gap_tol=cv.gap_conflict_tol)
    missing = sorted(set(labels.index) - known)
    labels = labels[labels.index.isin(known)]
    gaps = gaps[gaps["formula"].isin(set(labels.index))]
    dft = dft[dft["formula"].isin(known)]
    t0 = time.perf_counter()
    dft_reference = reference_per_formula(dft)
    shared = reuse_surrogate(gap_surrogate, stack, descriptors, dft_reference, who="metal")
    classifier = MetalClassifier(config, dft_table=dft_metal_table(dft, metal_gap=config.dft_metal_gap),
                                 gap_surrogate=shared)
    classifier.fit_surrogates(descriptors, workers=cv.workers)  # one LightGBM thread each when > 1 (the caller)
    log.info("metal: DFT surrogates (PBE gap MAE %.3f eV, PBE-metal indicator MAE %.3f) on %d formulas in %.0f s",
             classifier.gap_surrogate.mae_, classifier.metal_surrogate.mae_, len(classifier.dft_table),
             time.perf_counter() - t0)
    classifier.cache_features(descriptors, labels.index)  # every fold's rows: computed once, before the folds fork
    classifier.gap_surrogate.remember(descriptors, gaps["formula"])  # so is the regressor's surrogate column
    data = MetalData(labels=labels, gaps=gaps, descriptors=descriptors, classifier=classifier, stack=stack,
                     dft_reference=dft_reference,
                     extra_reference={c: reference_per_formula(dft, value=c) for c in extra_columns if c in dft},
                     gap_surrogate=classifier.gap_surrogate)
    formulas = list(labels.index)
    folds = {f"grouped_cv_seed{s}": grouped_kfold(formulas, n_folds=cv.n_folds, seed=s) for s in cv.cv_seeds}
    for proto in cv.protocols:
        if proto == "loco":
            folds[proto] = loco_folds(formulas, loco_descriptors(descriptors, formulas), n_clusters=cv.loco_clusters,
                                      seed=config.seed)
        elif proto == "family_out":
            folds[proto] = family_folds(formulas)
        elif proto == "crystal_system_out":
            systems = _crystal_systems(dft, crystal_system).reindex(formulas).fillna("")
            folds[proto] = crystal_system_folds(formulas, list(systems))
        else:
            raise ValueError(f"unknown protocol {proto!r} (valid: loco, family_out, crystal_system_out)")
    counts = {"labelled_formulas": len(labels), "metals": int(labels.sum()), "gap_rows": len(gaps),
              "with_dft_entry": int(labels.index.isin(classifier.dft_table.index).sum()),
              "left_out": {k: len(v) for k, v in left_out.items()}, "left_out_formulas": left_out,
              "without_descriptors": len(missing), "dft_columns": list(DFT_METAL_COLUMNS)}
    return MetalPlan(data=data, folds=folds, counts=counts)


def served_threshold(per_formula: pd.DataFrame, per_row: pd.DataFrame) -> dict[str, float]:
    """Return the served threshold, chosen on one CV's pooled out-of-fold rows, and the scores there.

    Costs and rule as in the folds: a missed metal costs the regressor's prediction for it, a
    false metal its measured gaps summed over its rows; the threshold nearest 0.5 within one
    standard error of the least cost.
    """
    f = per_formula["formula"]
    missed = f.map(per_row[per_row["is_metal"] == 1].groupby("formula")["regressor"].mean()).fillna(0.0)
    false = f.map(per_row[per_row["is_metal"] == 0].groupby("formula")["measured"].sum()).fillna(0.0)
    threshold = choose_threshold(per_formula["probability"].to_numpy(), per_formula["is_metal"].to_numpy(),
                                 cost_if_missed=missed.to_numpy(), cost_if_false=false.to_numpy())
    at = _scores_at(per_formula, per_row, threshold)
    keys = ("precision", "recall", "balanced_accuracy", "f1", "mae_all", "mae_nonmetal", "mae_metal")
    return {"threshold": threshold, **{k: at[k] for k in keys}}


def _scores_at(per_formula: pd.DataFrame, per_row: pd.DataFrame, threshold: float) -> dict[str, float]:
    """:func:`metal_metrics` of out-of-fold rows with every formula called at one ``threshold``."""
    called = per_formula["probability"] >= threshold
    row_called = per_row["formula"].map(dict(zip(per_formula["formula"], called, strict=True))).to_numpy(bool)
    return metal_metrics(per_formula.assign(called_metal=called),
                         per_row.assign(combined=np.where(row_called, 0.0, per_row["regressor"])))


#: Thresholds of the model card's operating-point table (``matshift predict --metal-threshold``).
OPERATING_THRESHOLDS = (0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.99)


def operating_points(per_formula: pd.DataFrame, per_row: pd.DataFrame,
                     thresholds: Sequence[float] = OPERATING_THRESHOLDS) -> list[dict[str, float]]:
    """Return the errors of other thresholds on the same out-of-fold rows as :func:`served_threshold`'s choice.

    Per threshold: precision and recall of the metal calls, the all-compositions band-gap MAE, the
    non-metal MAE and what the calls add to it (``nonmetal_cost``: with minus without the classifier,
    and its 95% bootstrap interval over rows, ``nonmetal_cost_ci95``), the share of measured non-metals
    called metal. A user who screens for semiconductors may take a higher threshold than the served
    one, which minimises the all-compositions error.
    """
    nonmetal_formulas = per_formula["is_metal"] == 0
    out = []
    for t in thresholds:
        at = _scores_at(per_formula, per_row, float(t))
        out.append({"threshold": float(t), "precision": at["precision"], "recall": at["recall"],
                    "mae_all": at["mae_all"], "mae_nonmetal": at["mae_nonmetal"],
                    "nonmetal_cost": at["nonmetal_mae_difference"],
                    "nonmetal_cost_ci95": at["nonmetal_mae_difference_ci95"],
                    "nonmetals_called_metal": float((per_formula["probability"][nonmetal_formulas] >= t).mean())})
    return out


def metal_summary(results: dict[str, tuple[pd.DataFrame, pd.DataFrame]]) -> dict:
    """Per protocol :func:`metal_metrics`, and grouped CV as mean / std over its seeds (``grouped_cv*`` names)."""
    per = {name: metal_metrics(pf, pr) for name, (pf, pr) in results.items()}
    grouped = [v for k, v in per.items() if k.startswith("grouped_cv")]
    if not grouped:
        return {"grouped_cv": {}, "per_protocol": per}
    keys = [k for k, v in grouped[0].items() if isinstance(v, float)]
    summary = {k: {"mean": float(np.mean([g[k] for g in grouped])),
                   "std": float(np.std([g[k] for g in grouped], ddof=1)) if len(grouped) > 1 else 0.0}
               for k in keys}
    return {"grouped_cv": summary, "per_protocol": per}


def metal_card(metrics: dict, served: dict[str, float], counts: dict, points: Sequence[dict] = ()) -> str:
    """Return the model card (Markdown): the data, the threshold, the scores per protocol and ``points``.

    ``points``: :func:`operating_points`, a table of other thresholds.
    """
    g = metrics["grouped_cv"]
    lines = [
        "# matshift-metal: metal / non-metal classifier",
        "",
        f"Trained on {counts['labelled_formulas']} formulas ({counts['metals']} metals; classes from "
        "expt_is_metal.csv, plus every formula with a measured band gap as a non-metal); "
        f"{counts['with_dft_entry']} have a DFT entry. Left out as conflicts: {counts['left_out']}.",
        "",
        f"**Threshold {served['threshold']:.2f}**: a composition with P(metal) >= this is reported as a metal "
        "(band gap 0 eV); the non-metal gap estimate stays in the output. Chosen on grouped-CV out-of-fold "
        "probabilities (training folds) by the band-gap error the calls add.",
        f"At this threshold (out of fold): precision {served['precision']:.3f}, recall {served['recall']:.3f}, "
        f"balanced accuracy {served['balanced_accuracy']:.3f}, F1 {served['f1']:.3f}.",
        "",
        "| grouped 5-fold CV (mean ± std over fold seeds) | value |",
        "|---|---|",
        *(f"| {k} | {g[k]['mean']:.4f} ± {g[k]['std']:.4f} |" for k in (
            "roc_auc", "balanced_accuracy", "f1", "precision", "recall", "mae_all", "mae_all_regressor_only",
            "mae_nonmetal", "mae_nonmetal_regressor_only", "nonmetal_mae_difference") if k in g),
        "",
        "| protocol | ROC-AUC | balanced acc. | F1 | MAE all (eV) | non-metal MAE with / without (eV) |",
        "|---|---|---|---|---|---|",
        *(f"| {name} | {m['roc_auc']:.3f} | {m['balanced_accuracy']:.3f} | {m['f1']:.3f} | {m['mae_all']:.3f} | "
          f"{m['mae_nonmetal']:.3f} / {m['mae_nonmetal_regressor_only']:.3f} |"
          for name, m in metrics["per_protocol"].items()),
    ]
    if points:
        lines += [
            "",
            "Other thresholds (`matshift predict --metal-threshold P`), on the same out-of-fold rows as the served "
            "one: a higher threshold calls fewer measured non-metals metal (their whole gap lost) and gives more "
            "metals a gap; no threshold is best for both.",
            "",
            "| threshold | precision | recall | non-metals called metal | MAE all (eV) | non-metal MAE (eV) | "
            "added to non-metal MAE (eV) [95% CI] |",
            "|---|---|---|---|---|---|---|",
            *(f"| {p['threshold']:.2f}{' (served)' if abs(p['threshold'] - served['threshold']) < 1e-9 else ''} | "
              f"{p['precision']:.3f} | {p['recall']:.3f} | {p['nonmetals_called_metal']:.1%} | {p['mae_all']:.3f} | "
              f"{p['mae_nonmetal']:.3f} | {p['nonmetal_cost']:+.3f} [{p['nonmetal_cost_ci95'][0]:+.3f}, "
              f"{p['nonmetal_cost_ci95'][1]:+.3f}] |" for p in points),
        ]
    return "\n".join(lines) + "\n"
