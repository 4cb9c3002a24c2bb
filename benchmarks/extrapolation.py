"""The stacked model's extrapolating calibration, with and without, on nested and on the evaluate stage's folds.

Three settings of :class:`models.learners.StackedModel` (``stacked``, without the OT features),
everything else as ``train.stack`` in params.yaml:

* ``plain``: ``extrapolate`` and ``monotone`` off (the stacked model before commit b5d55c6);
* ``extrapolate``: the reduced-major-axis calibration slope and the fade of the boosters' pull
  back toward the training range (what ``train.stack.extrapolate`` turns on per property);
* ``monotone``: ``plain`` with the boosters' residual non-decreasing in the DFT-valued columns.

Two kinds of folds:

* ``nested``: inside the *training* part of the evaluate stage's range-extrapolation fold, its
  own top 10% held out; inside the training parts of the halide and oxide family-out folds,
  the halide, oxide and pnictide families held out in turn. No test row of the evaluate stage
  is seen; this is where the per-property choice of ``train.stack.extrapolate`` is made (the
  setting with the lower mean of the two nested MAEs).
* ``outer``: the evaluate stage's own folds (``evaluate.full``), reported as the ablation.

Per protocol: MAE mean ± std over the seeds (each seed: its folds for the seeded protocols,
booster seeds for all), and the paired difference setting - plain with a 95% bootstrap
interval that resamples formulas (one draw for all seeds). A difference whose interval holds 0
is no difference.

Run after ``dvc repro featurize`` (reads ``data/raw``, ``data/features``):
``PYTHONPATH=. python -m benchmarks.extrapolation``; writes
``benchmarks/extrapolation_results.{json,md}`` (also printed).
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd

from benchmarks import seeded
from benchmarks.metal_features import paired_by_formula
from models.evaluation.splits import Fold, family_folds, make_folds, range_extrapolation
from pipeline.params.evaluate import EvaluateParams
from pipeline.params.train import TrainParams

HERE = Path(__file__).resolve().parent
SETTINGS = {"plain": {"extrapolate": False, "monotone": False}, "extrapolate": {"extrapolate": True, "monotone": False},
            "monotone": {"extrapolate": False, "monotone": True}}
NESTED_FAMILIES = ("halide", "oxide", "pnictide")


def nested_folds(folds: list[Fold], values: np.ndarray, formulas: list[str]) -> list[Fold]:
    """Folds inside the training parts of the range-extrapolation and the halide / oxide family-out folds."""
    out = []
    for f in folds:
        train_formulas = [formulas[i] for i in f.train]
        if f.protocol == "range_extrapolation":
            inner = range_extrapolation(values[f.train], train_formulas, top_fraction=0.1)
            out.append(Fold("range_extrapolation", f"in-{f.name}", f.train[inner.train], f.train[inner.test]))
        elif f.protocol == "family_out" and f.name in ("halide", "oxide"):
            out += [Fold("family_out", f"in-{f.name}/{g.name}", f.train[g.train], f.train[g.test])
                    for g in family_folds(train_formulas) if g.name in NESTED_FAMILIES]
    return out


def run_property(name: str, params: EvaluateParams, train: TrainParams, seeds: list[int], bags: int, threads: int,
                 raw: Path | None = None) -> dict:
    prop, settings, inputs, exp, formulas, y, stack = seeded.evaluate_problem(name, params, train, bags=bags,
                                                                              threads=threads)
    errors: dict[tuple[str, str, str], list[pd.DataFrame]] = {}
    for seed in seeds:
        outer = make_folds(settings, formulas, y, exp["crystal_system"].tolist(), inputs.descriptors, seed=seed)
        for kind, folds in (("nested", nested_folds(outer, y, formulas)), ("outer", outer)):
            for setting, change in SETTINGS.items():
                table = seeded.fold_errors(replace(stack.config, seed=seed, **change), stack, inputs.descriptors,
                                           formulas, y, folds)
                if kind == "outer":  # the nested folds have one OOD protocol: its pool would be a copy of it
                    table = seeded.with_pooled_ood(table)
                for protocol, part in table.groupby("protocol"):
                    errors.setdefault((kind, protocol, setting), []).append(part.reset_index(drop=True))
                print(f"{name} seed {seed} {kind:6s} {setting:11s} "
                      + " ".join(f"{p} {g['error'].mean():.4f}" for p, g in table.groupby("protocol")), flush=True)
    if raw is not None:  # the per-row errors, for a second look
        pd.concat([p.assign(kind=k, setting=s, seed=seeds[i]) for (k, _, s), parts in errors.items()
                   for i, p in enumerate(parts)]).to_parquet(raw)
    out: dict = {}
    for (kind, protocol, setting), parts in errors.items():
        maes = [p["error"].mean() for p in parts]
        entry = {"mae_mean": float(np.mean(maes)), "mae_std": float(np.std(maes)), "n_rows": len(parts[0])}
        if setting != "plain":
            diff, lo, hi = paired_by_formula(errors[(kind, protocol, "plain")], parts)
            entry["diff_vs_plain"] = {"mean": diff, "ci95": [lo, hi]}
        out.setdefault(kind, {}).setdefault(protocol, {})[setting] = entry
    nested = out["nested"]
    score = {s: np.mean([nested[p][s]["mae_mean"] for p in ("range_extrapolation", "family_out")]) for s in SETTINGS}
    out["nested_choice"] = {"score": {k: float(v) for k, v in score.items()},
                            "extrapolate": bool(score["extrapolate"] < score["plain"])}
    out["unit"] = prop.unit
    return out


def markdown(results: dict) -> str:
    lines = ["# Extrapolating calibration of the stacked model (benchmarks/extrapolation.py)", "",
             f"{results['machine']}; seeds {results['seeds']}, {results['bags']} boosters per model; "
             f"{seeded.took(results)}. MAE mean ± std "
             "over seeds; difference to `plain` with a 95% bootstrap interval over formulas (one draw for all seeds).", ""]
    for name in results["properties"]:
        r = results[name]
        lines += [f"## {name} ({r['unit']})", "",
                  "Nested choice (mean of nested range and family-out MAE): "
                  + ", ".join(f"{k} {v:.4f}" for k, v in r["nested_choice"]["score"].items())
                  + f" -> extrapolate {'on' if r['nested_choice']['extrapolate'] else 'off'}", "",
                  "| folds | protocol | rows | plain | extrapolate | diff [95% CI] | monotone | diff [95% CI] |",
                  "|---|---|---|---|---|---|---|---|"]
        for kind in ("nested", "outer"):
            for protocol, s in r[kind].items():
                cells = [kind, protocol, str(s["plain"]["n_rows"]), f"{s['plain']['mae_mean']:.4f} ± {s['plain']['mae_std']:.4f}"]
                for setting in ("extrapolate", "monotone"):
                    d = s[setting]["diff_vs_plain"]
                    cells += [f"{s[setting]['mae_mean']:.4f} ± {s[setting]['mae_std']:.4f}",
                              f"{d['mean']:+.4f} [{d['ci95'][0]:+.4f}, {d['ci95'][1]:+.4f}]"]
                lines.append("| " + " | ".join(cells) + " |")
        lines.append("")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = seeded.parser(__doc__, HERE / "extrapolation_results.json",
                           bags_help="boosters per model (the evaluate stage uses train.stack.bags)")
    parser.add_argument("--threads", type=int, default=2, help="LightGBM threads (1 beside another CPU-heavy job: "
                        "OpenMP threads on oversubscribed cores spin and stall both)")
    args = parser.parse_args(argv)
    return seeded.run(args, lambda name, params, train: run_property(
        name, params, train, args.seeds, args.bags, args.threads,
        raw=args.out.with_name(f"{args.out.stem}_{name}_errors.parquet")), markdown, threads=args.threads)

if __name__ == "__main__":
    raise SystemExit(main())
