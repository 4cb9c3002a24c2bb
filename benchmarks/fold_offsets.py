"""How much of the out-of-distribution error is one offset per held-out group, and how much is scatter?

A leave-family-out fold cannot learn what it never saw: with every oxide held out, no training row
carries oxygen, so the fitted elemental correction has no offset for it and the whole fold is
predicted too low or too high by about the same amount. This reads the evaluate stage's stacked
models on every seed's folds (``plots/<property>/seed_predictions.csv``) and reports, per seed and
OOD protocol, the MAE as evaluated and the MAE left once each fold's median residual is removed
(an oracle that knows the held-out group's offset: a bound on what any per-group correction
could gain, not a model), with each fold's median residual beside it.

Beside it, the spread of repeated measurements (``data/raw/experiment.parquet``): each row of a formula
measured more than once predicted by the mean of that formula's other rows. No model can beat the
labels' own disagreement, so this estimates the floor under every MAE (from above: the others' mean
carries its own error too; and on the formulas measured twice or more, which are better studied than
the rest).

It only reads what fetch and the evaluate stage already wrote: nothing here feeds a choice of the
served model. ``PYTHONPATH=. python -m benchmarks.fold_offsets`` in a clone where ``dvc repro``
ran; ``--out`` writes the JSON and a Markdown table beside it.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import pandas as pd

from models.evaluation.config import OOD_PROTOCOLS
from models.properties import PROPERTY_NAMES, get_property
from pipeline import readers
from pipeline.errors import MatshiftError

HERE = Path(__file__).resolve().parent
MODELS = ("stacked", "stacked_ot")


def fold_offsets(predictions: pd.DataFrame, model: str) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Per seed and protocol (OOD protocols and their pool): MAE as evaluated and with each fold's median residual removed.

    ``predictions``: the evaluate stage's ``seed_predictions.csv`` (columns protocol, fold, seed,
    value and the model's). Returns that table and the per-fold one (seed, protocol, fold, rows,
    median residual, MAE before and after removing it).
    """
    missing = {"protocol", "fold", "seed", "value", model} - set(predictions.columns)
    if missing:
        raise ValueError(f"fold_offsets: seed predictions lack the columns {sorted(missing)}")
    rows = predictions[predictions["protocol"].isin(OOD_PROTOCOLS)].copy()
    if rows.empty:
        raise ValueError(f"fold_offsets: no rows of the OOD protocols {list(OOD_PROTOCOLS)}")
    rows["residual"] = rows[model].astype(float) - rows["value"].astype(float)
    rows["offset"] = rows.groupby(["seed", "protocol", "fold"])["residual"].transform("median")
    rows["error"], rows["error_without_offset"] = rows["residual"].abs(), (rows["residual"] - rows["offset"]).abs()
    per_fold = (rows.groupby(["seed", "protocol", "fold"])
                .agg(rows=("error", "size"), offset=("offset", "first"), mae=("error", "mean"),
                     mae_without_offset=("error_without_offset", "mean")).reset_index())
    pooled = rows.assign(protocol="pooled_ood")
    table = (pd.concat([rows, pooled]).groupby(["seed", "protocol"])
             .agg(rows=("error", "size"), mae=("error", "mean"), mae_without_offset=("error_without_offset", "mean"))
             .reset_index())
    return table, per_fold


def repeat_spread(measurements: pd.DataFrame) -> dict[str, float]:
    """Rows of formulas measured twice or more, each predicted by the mean of its formula's other rows: their MAE.

    ``measurements``: columns formula and value (one property). Returns the row and formula counts
    and that MAE (NaN when no formula is measured twice).
    """
    per_formula = measurements.groupby("formula")["value"]
    n, total = per_formula.transform("size"), per_formula.transform("sum")
    repeated = n >= 2
    others = (total[repeated] - measurements.loc[repeated, "value"]) / (n[repeated] - 1)
    error = (others - measurements.loc[repeated, "value"]).abs()
    return {"rows": len(measurements), "repeated_rows": int(repeated.sum()),
            "repeated_formulas": int(measurements.loc[repeated, "formula"].nunique()),
            "mae_mean_of_others": float(error.mean()) if len(error) else float("nan")}


def summary(table: pd.DataFrame) -> dict[str, dict[str, float]]:
    """Per protocol: mean and std over seeds of both MAEs, and the share of the MAE the offsets account for."""
    out = {}
    for protocol, g in table.groupby("protocol"):
        mae, rest = g["mae"].to_numpy(float), g["mae_without_offset"].to_numpy(float)
        out[protocol] = {"rows": int(g["rows"].iloc[0]), "mae": float(mae.mean()), "mae_std": float(mae.std()),
                         "without_offset": float(rest.mean()), "without_offset_std": float(rest.std()),
                         "offset_share": float(1.0 - rest.mean() / mae.mean())}
    return out


def markdown(results: dict) -> str:
    lines = ["# One offset per held-out fold against the scatter (benchmarks/fold_offsets.py)", "",
             "The evaluate stage's stacked models on every seed's folds (`plots/<property>/seed_predictions.csv`); MAE "
             "as evaluated and with each fold's median residual removed (an oracle bound, not a model), mean ± std "
             "over seeds.", ""]
    for name in results["properties"]:
        r = results[name]
        lines += [f"## {name} ({r['unit']}), seeds {r['seeds']}", ""]
        spread = r.get("repeat_spread")
        if spread:
            lines += [f"Repeated measurements: {spread['repeated_rows']} of {spread['rows']} rows belong to the "
                      f"{spread['repeated_formulas']} formulas measured twice or more; each predicted by the mean of its "
                      f"formula's other rows: MAE {spread['mae_mean_of_others']:.4f}.", ""]
        lines += ["| model | protocol | rows per seed | MAE | without each fold's offset | share of the MAE |",
                  "|---|---|---|---|---|---|"]
        for model in MODELS:
            for protocol, s in r["models"].get(model, {}).get("summary", {}).items():
                lines.append(f"| {model} | {protocol} | {s['rows']} | {s['mae']:.4f} ± {s['mae_std']:.4f} | "
                             f"{s['without_offset']:.4f} ± {s['without_offset_std']:.4f} | {100 * s['offset_share']:.0f}% |")
        served = "stacked_ot" if "stacked_ot" in r["models"] else "stacked"
        if served in r["models"]:
            lines += ["", f"Per fold, seed 0, {served}: median residual, MAE as evaluated -> without it", ""]
            lines += [f"- {f['protocol']} {f['fold']} ({f['rows']} rows): {f['offset']:+.4f}, "
                      f"{f['mae']:.4f} -> {f['mae_without_offset']:.4f}" for f in r["models"][served]["folds"] if f["seed"] == 0]
        lines.append("")
    return "\n".join(lines)


def _one_property(name: str, predictions: pd.DataFrame, raw_dir: Path) -> dict:
    """Both tables of one property; the repeated measurements' spread when fetch's output is in ``raw_dir``."""
    models = {}
    for model in MODELS:
        if model in predictions:  # fold_offsets checks the other columns
            table, per_fold = fold_offsets(predictions, model)
            models[model] = {"summary": summary(table), "folds": per_fold.to_dict(orient="records")}
    if not models:
        raise ValueError(f"none of the columns {list(MODELS)}")
    r: dict = {"unit": get_property(name).unit, "seeds": sorted(int(s) for s in predictions["seed"].unique()),
               "models": models}
    if (raw_dir / "experiment.parquet").is_file():
        r["repeat_spread"] = repeat_spread(readers.read_measurements(raw_dir, get_property(name)))
    return r


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--property", choices=PROPERTY_NAMES, nargs="+", default=list(PROPERTY_NAMES))
    parser.add_argument("--plots-dir", type=Path, default=Path("plots"))
    parser.add_argument("--raw-dir", type=Path, default=Path("data/raw"),
                        help="fetch's output, for the spread of repeated measurements (skipped when absent)")
    parser.add_argument("--out", type=Path, default=HERE / "fold_offsets_results.json")
    args = parser.parse_args(argv)
    results: dict = {"properties": args.property}
    for name in args.property:
        path = args.plots_dir / name / "seed_predictions.csv"
        if not path.is_file():
            parser.error(f"{path} not found: run `dvc repro` (the evaluate stage writes it) or pass --plots-dir")
        try:
            results[name] = _one_property(name, pd.read_csv(path), args.raw_dir)
        except (ValueError, MatshiftError) as exc:
            parser.error(f"{path}: {exc}")
    args.out.write_text(json.dumps(results, indent=1, default=lambda v: v.item() if isinstance(v, np.generic) else v),
                        encoding="utf-8")
    text = markdown(results).rstrip("\n")
    args.out.with_suffix(".md").write_text(text + "\n", encoding="utf-8")
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
