"""Post-hoc checks on the evaluate and metal stages' out-of-fold predictions: can combining them differently help?

Reads only what `dvc repro` wrote (no model is fitted), so it runs in seconds:

* ``blend``: the served band-gap model mixed with the GNN with OT terms, ``w * stacked_ot + (1 - w) * gnn_ot``
  (the train stage's ``train.stack.blend_weight``), on the evaluate stage's seed-0 folds
  (``plots/band_gap/predictions.csv``), against ``w = 1``;
* ``stretch``: the served model's predictions stretched away from (factor > 1) or pulled toward (< 1) the
  mean measured gap, ``mean + k * (prediction - mean)``, clipped at 0: out of distribution narrow gaps are
  predicted too high and wide ones too low, so a model that shrinks too much would gain. The centre is the
  mean over every measurement of the file, which the test rows are part of: an exploration, not a model;
* ``metal``: the metal stage's out-of-fold P(metal) and its band-gap regressor's out-of-fold gap of the same
  formula in one cross-validated logistic model (``plots/metal/predictions.csv``, grouped CV, per formula and
  fold seed; folds by formula): ROC-AUC and, per threshold, the all-compositions and non-metal band-gap MAE
  (a metal counted at 0 eV; a formula called metal predicted 0) against P(metal) alone, and, as the two
  scores are calibrated differently, the lowest all-compositions MAE each reaches at a threshold that adds
  at most 0.01 to 0.04 eV to the non-metal MAE of the regressor alone. Would the regressor's gap tell the
  classifier which of its metal calls are wide-gap non-metals?
* ``shrink``: on the same rows, a reported gap that falls linearly from the regressor's to 0 eV as P(metal) rises
  between two values, instead of a cut at one threshold (:func:`metal_shrink`): does a softer call buy
  all-compositions MAE at less non-metal cost?
* ``by_dft``: the same rows split by whether the mirror's DFT data hold the formula (a PBE gap in
  ``data/raw/dft.parquet``), each part's operating points at the hard cut (:func:`metal_by_dft`): is the
  non-metal cost of issue 17 the lack of DFT entries (a DFT list with the metals would then remove it), or is it
  there where the classifier sees the formula's DFT polymorphs too?

Each MAE difference has a 95% interval from resampling formulas (:func:`benchmarks.metal_features.paired_by_formula`).

    PYTHONPATH=. python -m benchmarks.posthoc_checks          # writes benchmarks/posthoc_checks_results.json

``--data`` names the fetch stage's output folder (default ``data/raw``) for ``by_dft``.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import pandas as pd

from benchmarks.metal_features import paired_by_formula

HERE = Path(__file__).resolve().parent
OOD = ("loco", "family_out", "crystal_system_out")


def _errors(rows: pd.DataFrame, prediction: np.ndarray) -> pd.DataFrame:
    return pd.DataFrame({"protocol": rows["protocol"].to_numpy(), "formula": rows["formula"].to_numpy(),
                         "error": np.abs(prediction - rows["value"].to_numpy())})


def _per_protocol(before: pd.DataFrame, after: pd.DataFrame) -> dict[str, dict]:
    """MAE before / after and the paired difference per protocol and pooled over the OOD protocols."""
    out = {}
    pooled = before["protocol"].isin(OOD)
    parts = {p: before["protocol"] == p for p in sorted(before["protocol"].unique())} | {"pooled_ood": pooled}
    for name, mask in parts.items():
        b, a = before[mask].reset_index(drop=True), after[mask].reset_index(drop=True)
        diff, lo, hi = paired_by_formula([b], [a])
        out[name] = {"before": float(b["error"].mean()), "after": float(a["error"].mean()), "diff": diff, "ci95": [lo, hi]}
    return out


def blend_and_stretch(predictions: pd.DataFrame, weights: list[float], factors: list[float]) -> dict[str, dict]:
    """The ``blend`` and ``stretch`` checks (module docstring) on the evaluate stage's predictions."""
    rows = predictions.dropna(subset=["stacked_ot", "gnn_ot"]).reset_index(drop=True)
    served = rows["stacked_ot"].to_numpy(float)
    before = _errors(rows, served)
    centre = float(rows["value"].mean())
    out = {"blend": {}, "stretch": {}, "rows": len(rows), "centre": centre}
    for w in weights:
        out["blend"][str(w)] = _per_protocol(before, _errors(rows, w * served + (1 - w) * rows["gnn_ot"].to_numpy(float)))
    for k in factors:
        out["stretch"][str(k)] = _per_protocol(before, _errors(rows, np.maximum(centre + k * (served - centre), 0.0)))
    return out


def _metal_rows(predictions: pd.DataFrame) -> pd.DataFrame:
    """The metal stage's grouped-CV rows, one per fold seed and formula (the regressor's gap averaged over its rows)."""
    rows = predictions[(predictions["protocol"] == "grouped_cv")].dropna(subset=["regressor"]).copy()
    rows["seed"] = rows.groupby("formula").cumcount()  # the file lists the fold seeds one after the other
    return rows.groupby(["seed", "formula"], as_index=False).agg(
        is_metal=("is_metal", "first"), probability=("probability", "first"), regressor=("regressor", "mean"),
        measured=("measured", "mean"))


def _metal_errors(f: pd.DataFrame, reported: np.ndarray) -> np.ndarray:
    """Absolute errors of a reported gap per row of :func:`_metal_rows` (a metal's gap counted as 0 eV)."""
    truth = np.where(f["is_metal"].to_numpy() == 1, 0.0, f["measured"].to_numpy(float))
    return np.abs(reported - truth)


def _cut(f: pd.DataFrame, score: np.ndarray, threshold: float) -> np.ndarray:
    """The reported gap with one threshold: 0 eV where ``score`` reaches it, the regressor's gap elsewhere."""
    return np.where(score >= threshold, 0.0, f["regressor"].to_numpy(float))


def _operating_points(f: pd.DataFrame, reported: dict) -> dict:
    """Per key of ``reported`` (a reported gap each): all-compositions MAE and non-metal cost against the regressor alone."""
    nonmetal = f["is_metal"].to_numpy() == 0
    alone = _metal_errors(f, f["regressor"].to_numpy(float))[nonmetal].mean()
    return {key: (float(e.mean()), float(e[nonmetal].mean() - alone))
            for key, gap in reported.items() for e in [_metal_errors(f, gap)]}


def _best_at_cost(points: dict, budget: float, label: str) -> dict | None:
    """The lowest all-compositions MAE among ``points`` whose non-metal cost is at most ``budget``, and its key."""
    ok = [(mae, key) for key, (mae, cost) in points.items() if cost <= budget]
    return {"all": min(ok)[0], label: min(ok)[1]} if ok else None


#: thresholds of the hard cut searched for the best operating point at a non-metal cost
THRESHOLDS = np.round(np.arange(0.01, 1.0, 0.01), 2)
#: non-metal cost budgets (eV) of the frontiers
BUDGETS = (0.01, 0.02, 0.03, 0.04)


def metal_shrink(f: pd.DataFrame) -> dict:
    """The ``shrink`` check (module docstring) on :func:`_metal_rows`: the gap scaled down as P(metal) rises.

    The reported gap is ``gap * clip((high - P) / (high - low), 0, 1)``: the regressor's gap below ``low``, 0 eV from
    ``high`` on, a straight line between. For each non-metal cost budget, the lowest all-compositions MAE over a grid of
    ``low < high`` (steps of 0.025) against the lowest over hard thresholds (steps of 0.01). Both are chosen on the rows
    they are scored on: an optimistic bound for either, not a model.
    """
    p, gap = f["probability"].to_numpy(float), f["regressor"].to_numpy(float)
    steps = np.round(np.arange(0.0, 1.0001, 0.025), 3)
    hard = _operating_points(f, {float(t): _cut(f, p, t) for t in THRESHOLDS})
    soft = _operating_points(f, {(float(lo), float(hi)): gap * np.clip((hi - p) / (hi - lo), 0.0, 1.0)
                                 for lo in steps for hi in steps if hi > lo})
    frontier = {str(b): {"threshold": _best_at_cost(hard, b, "at"), "shrink": _best_at_cost(soft, b, "at")}
                for b in BUDGETS}
    nonmetal = f["is_metal"].to_numpy() == 0
    return {"formula_seed_rows": len(f), "nonmetal_regressor_only": float(_metal_errors(f, gap)[nonmetal].mean()),
            "best_at_nonmetal_cost": frontier}


def metal_stacking(f: pd.DataFrame, thresholds: list[float], *, folds: int = 5) -> dict:
    """The ``metal`` check (module docstring) on :func:`_metal_rows` of the metal stage's out-of-fold predictions."""
    # scikit-learn: about a second to import; only this check needs it
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import roc_auc_score
    from sklearn.model_selection import GroupKFold

    p = f["probability"].to_numpy(float).clip(1e-6, 1 - 1e-6)
    logit = np.log(p / (1 - p))
    gap = f["regressor"].to_numpy(float)
    design = np.column_stack([logit, gap, logit * gap])
    stacked = np.zeros(len(f))
    for seed in sorted(f["seed"].unique()):
        idx = np.flatnonzero(f["seed"].to_numpy() == seed)
        for tr, te in GroupKFold(folds).split(idx, groups=f["formula"].to_numpy()[idx]):
            model = LogisticRegression(max_iter=1000).fit(design[idx[tr]], f["is_metal"].to_numpy()[idx[tr]])
            stacked[idx[te]] = model.predict_proba(design[idx[te]])[:, 1]
    nonmetal = f["is_metal"].to_numpy() == 0
    table = {}
    for t in thresholds:
        b, a = _metal_errors(f, _cut(f, p, t)), _metal_errors(f, _cut(f, stacked, t))
        frame = [pd.DataFrame({"formula": f["formula"], "error": e}) for e in (b, a)]
        diff, lo, hi = paired_by_formula([frame[0]], [frame[1]])
        table[str(t)] = {"all_before": float(b.mean()), "all_after": float(a.mean()), "all_diff": diff,
                         "all_ci95": [lo, hi], "nonmetal_before": float(b[nonmetal].mean()),
                         "nonmetal_after": float(a[nonmetal].mean())}
    # the two scores are calibrated differently, so compare their best operating points at equal non-metal cost
    points = {name: _operating_points(f, {float(t): _cut(f, score, t) for t in THRESHOLDS})
              for name, score in (("before", p), ("after", stacked))}
    frontier = {str(b): {name: _best_at_cost(pts, b, "threshold") for name, pts in points.items()} for b in BUDGETS}
    return {"formula_seed_rows": len(f), "roc_auc_before": float(roc_auc_score(f["is_metal"], p)),
            "roc_auc_after": float(roc_auc_score(f["is_metal"], stacked)),
            "nonmetal_regressor_only": float(_metal_errors(f, gap)[nonmetal].mean()),
            "thresholds": table, "best_at_nonmetal_cost": frontier}


def metal_by_dft(f: pd.DataFrame, dft_formulas: set[str], thresholds: list[float]) -> dict:
    """The ``by_dft`` check (module docstring) on :func:`_metal_rows`: each part's operating points at the hard cut.

    Per part (formulas with a DFT entry, formulas without) and threshold: the share of non-metal rows called metal,
    the metals' recall, the all-compositions MAE and what the calls add to the non-metal MAE against the regressor
    alone, with a 95% interval from resampling formulas.
    """
    has = f["formula"].isin(dft_formulas).to_numpy()
    out = {}
    for name, part in (("with_dft", f[has]), ("without_dft", f[~has])):
        part = part.reset_index(drop=True)
        p = part["probability"].to_numpy(float)
        metal, nonmetal = part["is_metal"].to_numpy() == 1, part["is_metal"].to_numpy() == 0
        alone = pd.DataFrame({"formula": part["formula"][nonmetal],
                              "error": _metal_errors(part, part["regressor"].to_numpy(float))[nonmetal]})
        rows = {}
        for t in thresholds:
            errors = _metal_errors(part, _cut(part, p, t))
            called = pd.DataFrame({"formula": alone["formula"], "error": errors[nonmetal]})
            diff, lo, hi = paired_by_formula([alone], [called])
            rows[str(t)] = {"all": float(errors.mean()), "nonmetal_cost": diff,
                            "nonmetal_cost_ci95": [lo, hi], "nonmetals_called": float((p[nonmetal] >= t).mean()),
                            "metal_recall": float((p[metal] >= t).mean())}
        out[name] = {"formula_seed_rows": len(part), "metals": int(metal.sum()), "nonmetals": int(nonmetal.sum()),
                     "nonmetal_regressor_only": float(alone["error"].mean()), "thresholds": rows}
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--plots", type=Path, default=Path("plots"))
    parser.add_argument("--data", type=Path, default=Path("data/raw"))
    parser.add_argument("--out", type=Path, default=HERE / "posthoc_checks_results.json")
    args = parser.parse_args(argv)
    try:
        gaps = pd.read_csv(args.plots / "band_gap" / "predictions.csv")
        metal = pd.read_csv(args.plots / "metal" / "predictions.csv")
        dft = pd.read_parquet(args.data / "dft.parquet", columns=["formula", "band_gap_pbe"])
    except FileNotFoundError as exc:
        raise SystemExit(f"posthoc_checks: {exc.filename} is missing; run `dvc repro` first") from None
    metal_rows = _metal_rows(metal)
    result = {"band_gap": blend_and_stretch(gaps, [0.95, 0.9, 0.8, 0.7], [0.95, 1.05, 1.1, 1.2]),
              "metal": metal_stacking(metal_rows, [0.3, 0.5, 0.7, 0.9, 0.95]), "metal_shrink": metal_shrink(metal_rows),
              "metal_by_dft": metal_by_dft(metal_rows, set(dft.loc[dft["band_gap_pbe"].notna(), "formula"]),
                                           [0.5, 0.8, 0.9, 0.95, 0.99])}
    for kind in ("blend", "stretch"):
        for key, table in result["band_gap"][kind].items():
            pooled = table["pooled_ood"]
            print(f"{kind} {key}: pooled OOD {pooled['before']:.4f} -> {pooled['after']:.4f} {pooled['diff']:+.4f} "
                  f"[{pooled['ci95'][0]:+.4f}, {pooled['ci95'][1]:+.4f}]")
    m = result["metal"]
    print(f"metal: ROC-AUC {m['roc_auc_before']:.5f} -> {m['roc_auc_after']:.5f}")
    for t, row in m["thresholds"].items():
        print(f"  threshold {t}: all {row['all_before']:.4f} -> {row['all_after']:.4f} {row['all_diff']:+.4f} "
              f"[{row['all_ci95'][0]:+.4f}, {row['all_ci95'][1]:+.4f}], non-metal {row['nonmetal_before']:.4f} -> "
              f"{row['nonmetal_after']:.4f}")
    for budget, best in m["best_at_nonmetal_cost"].items():
        print(f"  non-metal cost <= {budget}: best all-compositions MAE " + ", ".join(
            f"{k} {v['all']:.4f} (threshold {v['threshold']:.2f})" if v else f"{k} none" for k, v in best.items()))
    for budget, best in result["metal_shrink"]["best_at_nonmetal_cost"].items():
        print(f"  shrink, non-metal cost <= {budget}: best all-compositions MAE " + ", ".join(
            f"{k} {v['all']:.4f} (at {v['at']})" if v else f"{k} none" for k, v in best.items()))
    for part, table in result["metal_by_dft"].items():
        print(f"  {part} ({table['nonmetals']} non-metal, {table['metals']} metal rows; regressor alone "
              f"{table['nonmetal_regressor_only']:.4f} eV on the non-metals):")
        for t, row in table["thresholds"].items():
            lo, hi = row["nonmetal_cost_ci95"]
            print(f"    threshold {t}: all {row['all']:.4f}, non-metal cost {row['nonmetal_cost']:+.4f} [{lo:+.4f}, "
                  f"{hi:+.4f}], non-metals called {row['nonmetals_called']:.1%}, metal recall {row['metal_recall']:.1%}")
    args.out.write_text(json.dumps(result, indent=1) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
