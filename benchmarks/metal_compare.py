"""Two runs of the metal stage, paired on their grouped-CV folds: all-compositions, non-metal and metal band-gap MAE.

The metal stage writes every out-of-fold call to ``plots/metal/predictions.csv`` (per formula:
fold, class, P(metal), threshold, the call, the regressor's gap). Two runs on the same data and
fold seeds (a change of the threshold rule, say) are compared here row by row: each
all-compositions row (a measured gap of a non-metal, 0 eV for a metal) is scored with each run's
call, and the difference of the MAE gets a 95% interval from resampling formulas
(:func:`benchmarks.metal_features.paired_by_formula`, one draw for every fold seed).

``PYTHONPATH=. python -m benchmarks.metal_compare BEFORE.csv AFTER.csv`` in the pipeline clone
(it reads ``data/raw/experiment.parquet`` for the measured gaps); ``--out`` writes the table.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import pandas as pd

from benchmarks.metal_features import paired_by_formula
from models.properties import get_property
from pipeline import readers


def seed_errors(predictions: pd.DataFrame, gaps: pd.DataFrame) -> list[pd.DataFrame]:
    """Per grouped-CV fold seed: formula, class and absolute error of each all-compositions row."""
    cv = predictions[predictions["protocol"].str.startswith("grouped_cv")]
    formulas = cv["formula"].nunique()
    if len(cv) % formulas:
        raise ValueError("the grouped-CV rows do not split into whole fold seeds")
    out = []
    for seed in range(len(cv) // formulas):
        f = cv.iloc[seed * formulas:(seed + 1) * formulas].set_index("formula")
        nonmetal = gaps[gaps["formula"].isin(f.index[f["is_metal"] == 0])].assign(is_metal=0)
        metal = pd.DataFrame({"formula": f.index[f["is_metal"] == 1], "value": 0.0, "is_metal": 1})
        rows = pd.concat([nonmetal, metal], ignore_index=True).sort_values(["formula", "value"], kind="stable")
        called = rows["formula"].map(f["called_metal"]).astype(bool).to_numpy()
        gap = rows["formula"].map(f["regressor"]).to_numpy(float)
        error = np.abs(np.where(called, 0.0, gap) - rows["value"].to_numpy(float))
        out.append(pd.DataFrame({"formula": rows["formula"].to_numpy(), "is_metal": rows["is_metal"].to_numpy(),
                                 "error": error}))
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("before", type=Path)
    parser.add_argument("after", type=Path)
    parser.add_argument("--raw-dir", type=Path, default=Path("data/raw"))
    parser.add_argument("--out", type=Path, help="write the Markdown table here as well")
    args = parser.parse_args(argv)
    gaps = readers.read_measurements(args.raw_dir, get_property("band_gap"))[["formula", "value"]]
    before, after = (seed_errors(pd.read_csv(p), gaps) for p in (args.before, args.after))
    lines = ["| grouped 5-fold CV, per fold seed | before | after | after - before (95% CI, by formula) |",
             "|---|---|---|---|"]
    for label, cls in (("all-compositions MAE (eV)", None), ("non-metal MAE (eV)", 0), ("metal MAE (eV)", 1)):
        pick = (lambda e: e) if cls is None else (lambda e, c=cls: e[e["is_metal"] == c])
        b, a = [pick(e) for e in before], [pick(e) for e in after]
        mean, low, high = paired_by_formula(b, a)
        fmt = lambda runs: " / ".join(f"{r['error'].mean():.4f}" for r in runs)  # noqa: E731
        lines.append(f"| {label} | {fmt(b)} | {fmt(a)} | {mean:+.4f} [{low:+.4f}, {high:+.4f}] |")
    table = "\n".join(lines) + "\n"
    print(table)
    if args.out:
        args.out.write_text(table, encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
