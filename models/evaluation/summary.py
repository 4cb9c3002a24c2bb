"""Scores of an evaluation: per-protocol metrics and the pooled out-of-distribution summary.

:func:`summarise` turns :func:`models.evaluation.evaluate_folds`'s predictions into the
``protocols`` and ``pooled_ood`` parts of ``metrics/<property>.json``, :func:`seed_summary` the stacked
models over several seeds (its ``seeds`` part). Pure pandas/NumPy.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from models.evaluation.config import NON_OT_MODELS, OT_MODELS, STACKED_MODELS


@dataclass
class EvaluationResult:
    """Per test row and model predictions (long over folds), and one row per fold."""

    predictions: pd.DataFrame
    folds: pd.DataFrame
    seconds: float = 0.0
    models: list[str] = field(default_factory=list)
    calibrations: list[str] = field(default_factory=list)
    # the stacked models' test predictions on the folds of every seed (column ``seed``; the first seed's rows are
    # those of ``predictions``), or None when one seed was asked for
    seed_predictions: pd.DataFrame | None = None


def regression_metrics(y: np.ndarray, p: np.ndarray) -> dict[str, float]:
    """MAE, RMSE and R^2 (1 - SSE/SST; NaN when the targets are constant)."""
    y, p = np.asarray(y, float), np.asarray(p, float)
    if y.shape != p.shape or y.size == 0:
        raise ValueError(f"regression_metrics: need equal non-empty shapes, got {y.shape} and {p.shape}")
    if not (np.isfinite(y).all() and np.isfinite(p).all()):
        raise ValueError("regression_metrics: non-finite values")
    err = p - y
    sst = float(np.sum((y - y.mean()) ** 2))
    return {"mae": float(np.mean(np.abs(err))), "rmse": float(np.sqrt(np.mean(err**2))),
            "r2": float(1 - np.sum(err**2) / sst) if sst > 0 else float("nan")}


def summarise(result: EvaluationResult, *, ood_protocols: Sequence[str], ad_model: str | None = None) -> dict:
    """Metrics per protocol (pooled over its test rows) and the pooled out-of-distribution summary.

    A protocol's test rows are pooled over its folds before computing MAE, RMSE and R^2, so a
    protocol's figure weighs every test measurement once; ``per_fold`` (all protocols but grouped
    CV, whose folds are random) gives each held-out group's own MAE. The OOD summary pools the rows of
    ``ood_protocols``; ``ot_model`` is the headline OT model (the first of :data:`OT_MODELS`
    evaluated: the served one) and ``gain_vs_best_non_ot`` is ``1 - MAE(ot_model) / min MAE(non-OT
    models)``; ``gains`` gives that ratio for every OT model. ``calibration`` (per protocol and
    pooled) scores the DFT calibrations on the test rows with a DFT value. The applicability
    domain is scored on ``ad_model`` (default: the headline OT model).
    """
    p, f = result.predictions, result.folds
    models = result.models
    ot_models = [m for m in OT_MODELS if m in models]
    ad_model = ad_model or (ot_models[0] if ot_models else models[-1])
    calib = ["raw_dft", "linear_dft", *result.calibrations]
    out: dict = {"protocols": {}}
    for proto, g in p.groupby("protocol", sort=False):
        ff = f[f["protocol"] == proto]
        entry: dict = {"n_folds": len(ff), "n_test_rows": len(g), "shift_ot_mean": float(ff["shift_ot"].mean())}
        for m in models:
            entry[m] = regression_metrics(g["value"].to_numpy(), g[m].to_numpy())
        if ad_model in g:
            entry["ad"] = _ad_summary(g, ad_model)
        entry["calibration"] = _calibration_summary(g, calib)
        if "lower" in g:
            entry["intervals"] = interval_summary(g, ad_model)
        if proto != "grouped_cv":  # named folds (a family, a crystal system, a cluster): each one's own MAE
            entry["per_fold"] = {str(name): {"n_test_rows": len(h), **{m: regression_metrics(
                h["value"].to_numpy(), h[m].to_numpy())["mae"] for m in models}} for name, h in g.groupby("fold", sort=False)}
        out["protocols"][proto] = entry
    ood = p[p["protocol"].isin(ood_protocols)]
    if len(ood):
        pooled = {m: regression_metrics(ood["value"].to_numpy(), ood[m].to_numpy())["mae"] for m in models}
        non_ot = {m: v for m, v in pooled.items() if m in NON_OT_MODELS}
        best = min(non_ot, key=non_ot.get)
        summary = {"protocols": list(ood_protocols), "n_test_rows": len(ood), "mae": pooled, "best_non_ot_model": best}
        if ot_models:
            summary["ot_model"] = ot_models[0]
            summary["gain_vs_best_non_ot"] = 1.0 - pooled[ot_models[0]] / non_ot[best]
            summary["gains"] = {m: 1.0 - pooled[m] / non_ot[best] for m in ot_models}
        summary["calibration"] = _calibration_summary(ood, calib)
        if ad_model in ood:
            summary["ad"] = _ad_summary(ood, ad_model)
        if "lower" in ood:
            summary["intervals"] = interval_summary(ood, ad_model)
        out["pooled_ood"] = summary
    return out


def paired_by_formula(error_a: np.ndarray, error_b: np.ndarray, formulas: Sequence[str], *, n: int = 2000,
                      seed: int = 0) -> tuple[float, float, float]:
    """Mean of ``error_b - error_a`` over rows and its 95% bootstrap interval, formulas resampled whole.

    Rows of one formula (repeated measurements, the same formula in several seeds' folds) are
    not independent, so the bootstrap draws formulas with replacement and keeps all their rows.
    """
    d = pd.DataFrame({"f": np.asarray(formulas, dtype=object), "d": np.asarray(error_b, float) - np.asarray(error_a, float)})
    if d.empty:
        raise ValueError("paired_by_formula: no rows")
    per = d.groupby("f", sort=False)["d"].agg(["sum", "size"])
    sums, sizes = per["sum"].to_numpy(), per["size"].to_numpy()
    draw = np.random.default_rng(seed).integers(0, len(per), size=(n, len(per)))
    means = sums[draw].sum(axis=1) / sizes[draw].sum(axis=1)
    return float(d["d"].mean()), float(np.quantile(means, 0.025)), float(np.quantile(means, 0.975))


def seed_summary(seed_predictions: pd.DataFrame, *, ood_protocols: Sequence[str]) -> dict:
    """Summarise the stacked models over seeds per protocol and pooled OOD: MAE per seed, mean, std; the OT features' effect.

    ``ot_features`` is MAE(stacked_ot) - MAE(stacked) on the rows of every seed together, with
    its 95% interval from resampling formulas (:func:`paired_by_formula`): the ablation of the
    served model's OT features. Negative = the OT features lower the error.
    """
    sp = seed_predictions
    models = [m for m in STACKED_MODELS if m in sp]
    pooled = sp[sp["protocol"].isin(ood_protocols)].assign(protocol="pooled_ood")
    out: dict = {"seeds": sorted(int(s) for s in sp["seed"].unique()), "protocols": {}}
    for proto, g in pd.concat([sp, pooled], ignore_index=True).groupby("protocol", sort=False):
        entry: dict = {"n_test_rows_per_seed": int(len(g) / g["seed"].nunique())}
        for m in models:
            maes = [float(np.mean(np.abs(h[m] - h["value"]))) for _, h in g.groupby("seed", sort=True)]
            entry[m] = {"mean": float(np.mean(maes)), "std": float(np.std(maes)), "per_seed": maes}
        if len(models) == 2:
            y = g["value"].to_numpy(float)
            diff, lo, hi = paired_by_formula(np.abs(g["stacked"].to_numpy(float) - y),
                                             np.abs(g["stacked_ot"].to_numpy(float) - y), g["formula"].to_numpy())
            entry["ot_features"] = {"diff": diff, "ci95": [lo, hi]}
        out["protocols"][proto] = entry
    return out


def interval_summary(g: pd.DataFrame, model: str) -> dict:
    """Empirical coverage and width of the conformal intervals around ``model`` on the rows of ``g``.

    ``coverage`` / ``mean_width`` / ``median_width`` at the nominal level; ``spearman_width_abs_error``
    (does a wider interval go with a larger error?); ``reliability``: nominal -> empirical
    coverage from the ``in_<pct>`` columns.
    """
    # SciPy: only when intervals are scored
    from scipy.stats import spearmanr

    missing = int(g["lower"].isna().sum())  # folds too small to calibrate (see the fold table)
    g = g[g["lower"].notna()]
    if not len(g):
        return {"model": model, "n_rows": 0, "rows_without_interval": missing}
    width = (g["upper"] - g["lower"]).to_numpy(float)
    err = (g[model] - g["value"]).abs().to_numpy(float)
    inside = (g["value"] >= g["lower"]) & (g["value"] <= g["upper"])
    finite = np.isfinite(width)
    rho = spearmanr(width[finite], err[finite]).statistic if finite.sum() > 2 and np.ptp(width[finite]) > 0 else None
    return {
        "model": model, "n_rows": len(g), "rows_without_interval": missing, "coverage": float(inside.mean()),
        "mean_width": float(np.mean(width[finite])) if finite.any() else None,
        "median_width": float(np.median(width[finite])) if finite.any() else None,
        "infinite_width_rows": int((~finite).sum()),
        "spearman_width_abs_error": None if rho is None else float(rho),
        "reliability": {c[3:]: float(g[c].astype(float).mean()) for c in g.columns if c.startswith("in_")},
    }


def _calibration_summary(g: pd.DataFrame, columns: Sequence[str]) -> dict:
    covered = g["dft_value"].notna().to_numpy() if "dft_value" in g else np.zeros(len(g), bool)
    res: dict = {"n_rows": int(covered.sum())}
    if covered.any():
        for m in columns:
            if m in g:
                res[m] = regression_metrics(g.loc[covered, "value"].to_numpy(), g.loc[covered, m].to_numpy())
    return res


def _ad_summary(g: pd.DataFrame, model: str) -> dict:
    err = (g[model] - g["value"]).abs()
    res: dict = {"model": model}
    for suffix, col in (("", "ad_flag"), ("_measured", "ad_flag_measured")):
        flag = g[col].to_numpy(bool)
        res[f"n_flagged{suffix}"] = int(flag.sum())
        res[f"mae_in_domain{suffix}"] = float(err[~flag].mean()) if (~flag).any() else None
        res[f"mae_flagged{suffix}"] = float(err[flag].mean()) if flag.any() else None
    return res


__all__ = ["EvaluationResult", "interval_summary", "paired_by_formula", "regression_metrics", "seed_summary", "summarise"]
