"""PNG figures of the align and evaluate stages (the CSVs beside them are the DVC plots' data).

Align (:func:`draw_alignment`): ``plan_heatmap.png`` and ``mass_hist.png``. Evaluate (:func:`draw`):

* ``parity.png``: measured against predicted, one panel per model, all protocols' test rows.
* ``error_vs_shift.png``: per fold, MAE against the OT shift between training and test.
* ``mass_vs_error.png``: the align stage's transported mass of each measurement (relative to
  its marginal; low = treated as an outlier) against the OT model's absolute error.
* ``ad_error.png``: absolute error against the applicability-domain score.
* ``reliability.png``: nominal against empirical coverage of the conformal intervals, per
  protocol; ``interval_width.png``: interval width against the served model's absolute error.
* ``calibration.png``: calibrated DFT values (linear, OT + nearest neighbours, neural OT map)
  against the measurement, on the test rows with a DFT value.

The "OT model" of the single-model figures is the served one (``stacked_ot``) when it was
evaluated, else ``gnn_ot``.

Metal stage (:func:`draw_metal`): ``roc.png`` and ``threshold.png``.

Reads nothing; writes only into the directory it is given.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd


def _pyplot():
    """Return pyplot on the Agg backend (files only, no display)."""
    # matplotlib: about a second to import, and only when a figure is drawn
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # only after the backend is chosen

    return plt


def draw(out: Path, preds: pd.DataFrame, folds: pd.DataFrame, *, models: Sequence[str], unit: str, prop: str) -> None:
    plt = _pyplot()

    n = len(models)
    cols = min(4, n)
    rows = int(np.ceil(n / cols))
    fig, axes = plt.subplots(rows, cols, figsize=(3.2 * cols, 3.1 * rows), squeeze=False)
    lo = float(min(preds["value"].min(), *(preds[m].min() for m in models)))
    hi = float(max(preds["value"].max(), *(preds[m].max() for m in models)))
    for ax, m in zip(axes.flat, models, strict=False):
        ax.scatter(preds["value"], preds[m], s=3, alpha=0.3)
        ax.plot([lo, hi], [lo, hi], "k--", lw=0.7)
        mae = float(np.mean(np.abs(preds[m] - preds["value"])))
        ax.set_title(f"{m}\nMAE {mae:.3f} {unit}", fontsize=8)
        ax.set_xlabel(f"measured ({unit})", fontsize=7)
        ax.set_ylabel(f"predicted ({unit})", fontsize=7)
    for ax in list(axes.flat)[n:]:
        ax.axis("off")
    fig.suptitle(f"{prop}: parity over all protocols' test rows", fontsize=9)
    fig.tight_layout()
    fig.savefig(out / "parity.png", dpi=100)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(5.5, 4))
    ot_model = next((m for m in ("stacked_ot", "gnn_ot") if m in preds), None)
    for m in [m for m in ("stacked_ot", "stacked", "gnn_ot", "gnn_no_ot", "rf_descriptors", "linear_dft")
              if f"mae_{m}" in folds]:
        ax.scatter(folds["shift_ot"], folds[f"mae_{m}"], label=m, s=18)
    for _, r in folds.iterrows():
        ax.annotate(f"{r['protocol'][:4]}:{r['fold']}", (r["shift_ot"], r.get(f"mae_{ot_model}", np.nan)), fontsize=5)
    ax.set_xlabel("OT shift, training -> test measurements (standardised descriptors)")
    ax.set_ylabel(f"fold MAE ({unit})")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out / "error_vs_shift.png", dpi=100)
    plt.close(fig)

    if ot_model is not None:
        scatters = [("ad_score", "applicability-domain score (percentile of training kNN distance)", "ad_error.png")]
        if preds["transported_mass"].notna().any():
            scatters.insert(0, ("transported_mass", "transported mass / marginal (align stage, all measurements)",
                                "mass_vs_error.png"))
        for column, xlabel, name in scatters:
            g = preds.dropna(subset=[column])
            fig, ax = plt.subplots(figsize=(5, 4))
            ax.scatter(g[column], (g[ot_model] - g["value"]).abs(), s=3, alpha=0.3)
            ax.set_xlabel(xlabel)
            ax.set_ylabel(f"|error| of {ot_model} ({unit})")
            fig.tight_layout()
            fig.savefig(out / name, dpi=100)
            plt.close(fig)

    calib = [m for m in ("linear_dft", "calib_ot_knn", "calib_neural") if m in preds]
    covered = preds["dft_value"].notna() if "dft_value" in preds else pd.Series(False, index=preds.index)
    if len(calib) > 1 and covered.any():
        g = preds[covered]
        fig, axes = plt.subplots(1, len(calib), figsize=(3.2 * len(calib), 3.2), squeeze=False)
        lo, hi = float(g["value"].min()), float(g["value"].max())
        for ax, m in zip(axes.flat, calib, strict=True):
            ax.scatter(g["value"], g[m], s=3, alpha=0.3)
            ax.plot([lo, hi], [lo, hi], "k--", lw=0.7)
            ax.set_title(f"{m}\nMAE {float(np.mean(np.abs(g[m] - g['value']))):.3f} {unit}", fontsize=8)
            ax.set_xlabel(f"measured ({unit})", fontsize=7)
        axes.flat[0].set_ylabel(f"calibrated DFT value ({unit})", fontsize=7)
        fig.suptitle(f"{prop}: calibration of held-out formulas' own DFT values ({len(g)} rows)", fontsize=9)
        fig.tight_layout()
        fig.savefig(out / "calibration.png", dpi=100)
        plt.close(fig)

    if "lower" in preds and ot_model is not None and preds["lower"].notna().any():
        _draw_intervals(plt, out, preds[preds["lower"].notna()], ot_model, unit=unit, prop=prop)


def _draw_intervals(plt, out: Path, preds: pd.DataFrame, model: str, *, unit: str, prop: str) -> None:
    """``reliability.png`` (nominal against empirical coverage per protocol) and ``interval_width.png``."""
    levels = sorted(c for c in preds if c.startswith("in_"))
    nominal = [int(c[3:]) / 100 for c in levels]
    fig, ax = plt.subplots(figsize=(4.6, 4.4))
    for proto, g in preds.groupby("protocol", sort=False):
        ax.plot(nominal, [g[c].mean() for c in levels], marker="o", ms=3, label=proto)
    ax.plot([0.45, 1], [0.45, 1], "k--", lw=0.7)
    ax.set(xlabel="nominal coverage", ylabel="empirical coverage", title=f"{prop}: conformal intervals")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out / "reliability.png", dpi=100)
    plt.close(fig)
    fig, ax = plt.subplots(figsize=(5, 4))
    width, err = preds["upper"] - preds["lower"], (preds[model] - preds["value"]).abs()
    for proto, g in preds.groupby("protocol", sort=False):
        ax.scatter(width[g.index], err[g.index], s=3, alpha=0.3, label=proto)
    top = float(np.nanmax(width[np.isfinite(width)])) if np.isfinite(width).any() else 1.0
    ax.plot([0, top], [0, top / 2], "k--", lw=0.7, label="|error| = half-width")
    ax.set(xlabel=f"interval width ({unit})", ylabel=f"|error| of {model} ({unit})")
    ax.legend(fontsize=7, markerscale=3)
    fig.tight_layout()
    fig.savefig(out / "interval_width.png", dpi=100)
    plt.close(fig)


__all__ = ["draw", "draw_alignment", "draw_metal"]


def draw_alignment(out: Path, res, source, target, *, prop: str, unit: str) -> None:
    """``plan_heatmap.png`` (plan mass over DFT value x measured value) and ``mass_hist.png`` into ``out``."""
    plt = _pyplot()

    plan = res.plan
    fig, ax = plt.subplots(figsize=(5, 4.2))
    lo = min(source.values.min(), target.values.min())
    hi = max(source.values.max(), target.values.max())
    bins = np.linspace(lo, hi, 41)
    h, xe, ye = np.histogram2d(source.values[plan.row], target.values[plan.col], bins=[bins, bins],
                               weights=plan.data)
    im = ax.imshow(np.log10(h.T + 1e-12 * max(h.max(), 1e-300)), origin="lower", aspect="auto",
                   extent=[xe[0], xe[-1], ye[0], ye[-1]], cmap="viridis")
    ax.plot([lo, hi], [lo, hi], "w--", lw=0.8)
    ax.set_xlabel(f"DFT value ({unit})")
    ax.set_ylabel(f"measured value ({unit})")
    ax.set_title(f"{prop}: transport plan mass (log10)")
    fig.colorbar(im, ax=ax)
    fig.tight_layout()
    fig.savefig(out / "plan_heatmap.png", dpi=110)
    plt.close(fig)

    fig, axes = plt.subplots(1, 2, figsize=(8, 3.2))
    for ax, mass, marg, name in ((axes[0], res.source_mass, res.a, "DFT entries"),
                                 (axes[1], res.target_mass, res.b, "measurements")):
        ax.hist(mass / marg, bins=40, color="tab:blue")
        ax.set_xlabel("transported mass / marginal")
        ax.set_ylabel("entries")
        ax.set_title(name)
    fig.tight_layout()
    fig.savefig(out / "mass_hist.png", dpi=110)
    plt.close(fig)


def draw_metal(out: Path, results: dict[str, tuple[pd.DataFrame, pd.DataFrame]], *, threshold: float) -> None:
    """Metal stage: ``roc.png`` (ROC per protocol) and ``threshold.png`` (band-gap MAE against the threshold, first CV).

    ``results``: protocol -> the per-formula and per-row tables of :func:`models.evaluation.metal_cv`.
    """
    # scikit-learn: only when this figure is drawn
    from sklearn.metrics import roc_curve

    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(5, 5))
    for name, (pf, _) in results.items():
        if pf["is_metal"].nunique() == 2:
            fpr, tpr, _ = roc_curve(pf["is_metal"], pf["probability"])
            ax.plot(fpr, tpr, lw=1, label=name)
    ax.plot([0, 1], [0, 1], "k:", lw=0.8)
    ax.set(xlabel="false metal rate", ylabel="metal recall", title="metal classifier, out of fold")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out / "roc.png", dpi=110)
    plt.close(fig)
    pf, pr = next(iter(results.values()))
    prob = pr["formula"].map(dict(zip(pf["formula"], pf["probability"], strict=True))).to_numpy()
    grid = np.round(np.arange(0.05, 0.96, 0.05), 2)
    nonmetal = pr["is_metal"].to_numpy() == 0
    rows = []
    for t in grid:
        err = np.abs(np.where(prob >= t, 0.0, pr["regressor"]) - pr["measured"]).to_numpy()
        rows.append((t, err.mean(), err[nonmetal].mean(), err[~nonmetal].mean()))
    curve = np.array(rows)
    fig, ax = plt.subplots(figsize=(6, 4))
    for k, label in enumerate(("all compositions", "non-metals", "metals"), start=1):
        ax.plot(curve[:, 0], curve[:, k], marker=".", label=label)
    ax.axvline(threshold, color="k", ls=":", label=f"served threshold {threshold:.2f}")
    ax.set(xlabel="P(metal) threshold", ylabel="band-gap MAE (eV)", title="metal calls: error against threshold")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out / "threshold.png", dpi=110)
    plt.close(fig)
