"""The monotone rearrangement of a caller's DFT value: how often the model falls, and what the rearrangement costs.

``matshift predict`` serves a user's own ``dft_value`` through
:meth:`models.learners.StackedModel.rearranged` (the model's response over the DFT reference's
range, sorted), so the prediction never falls as the value rises. This measures, out of sample
on the evaluate stage's grouped-CV folds (``evaluate.full``: the stacked model without OT
features, ``--bags`` boosters, seeds as given):

* ``falls``: along a sweep of the DFT value (the reference range in 0.05 steps) for each test
  formula, the share of steps where the plain model's prediction falls, and the largest fall;
* ``mae``: MAE of the test rows that have a DFT value, predicted at that value plainly and
  rearranged (as if the user had given the mirror's value), mean ± std over seeds, and the
  paired difference with a 95% bootstrap interval over formulas (one draw for all seeds).

Run after ``dvc repro featurize``: ``PYTHONPATH=. python -m benchmarks.rearrangement``; writes
``benchmarks/rearrangement_results.{json,md}``.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd

from benchmarks import seeded
from benchmarks.metal_features import paired_by_formula
from models.evaluation.splits import make_folds
from models.learners import StackedModel
from pipeline.params.evaluate import EvaluateParams
from pipeline.params.train import TrainParams

HERE = Path(__file__).resolve().parent


def run_property(name: str, params: EvaluateParams, train: TrainParams, seeds: list[int], bags: int,
                 points: int) -> dict:
    prop, settings, inputs, exp, formulas, y, stack = seeded.evaluate_problem(
        name, params, train, bags=bags, settings=replace(params.full, protocols=["grouped_cv"]))
    ref = stack.dft_reference
    sweep = np.arange(float(ref.min()), float(ref.max()), 0.05)
    plain_err, mono_err, falls, worst, change = [], [], [], [], []
    for seed in seeds:
        rows_p, rows_m = [], []
        for fold in make_folds(settings, formulas, y, exp["crystal_system"].tolist(), inputs.descriptors, seed=seed):
            model = StackedModel(replace(stack.config, seed=seed), dft_reference=ref, surrogate=stack.surrogate,
                                 extra_reference=stack.extra_reference)
            model.fit(inputs.descriptors, [formulas[i] for i in fold.train], y[fold.train])
            test = [i for i in fold.test if formulas[i] in ref.index]
            f_test = [formulas[i] for i in test]
            d = ref.loc[f_test].to_numpy(float)
            plain = model.predict(inputs.descriptors, f_test, d)
            mono = model.rearranged(inputs.descriptors, f_test, d, points=points)
            change.append(np.abs(mono - plain))
            for part, pred in ((rows_p, plain), (rows_m, mono)):
                part.append(pd.DataFrame({"formula": f_test, "error": np.abs(pred - y[test])}))
            for f in sorted(set(f_test))[:40]:  # sweeps of the first 40 test formulas of each fold
                curve = model.predict(inputs.descriptors, [f] * len(sweep), sweep)
                steps = np.diff(curve)
                falls.append(float((steps < -1e-9).mean()))
                worst.append(float(steps.min()))
        plain_err.append(pd.concat(rows_p, ignore_index=True))
        mono_err.append(pd.concat(rows_m, ignore_index=True))
        print(f"{name} seed {seed}: plain {plain_err[-1]['error'].mean():.4f}, rearranged {mono_err[-1]['error'].mean():.4f}",
              flush=True)
    diff, lo, hi = paired_by_formula(plain_err, mono_err)
    maes = {k: [p["error"].mean() for p in v] for k, v in (("plain", plain_err), ("rearranged", mono_err))}
    return {"unit": prop.unit, "rows": len(plain_err[0]), "sweep_points": len(sweep),
            "mae": {k: {"mean": float(np.mean(v)), "std": float(np.std(v))} for k, v in maes.items()},
            "diff": {"mean": diff, "ci95": [lo, hi]},
            "mean_abs_change": float(np.concatenate(change).mean()),
            "falls": {"share_of_steps": float(np.mean(falls)), "sweeps_with_a_fall": float(np.mean(np.array(worst) < -1e-9)),
                      "largest": float(-np.min(worst)), "median_largest": float(-np.median(worst))}}


def markdown(results: dict) -> str:
    lines = ["# Monotone rearrangement of a caller's DFT value (benchmarks/rearrangement.py)", "",
             f"{results['machine']}; seeds {results['seeds']}, {results['bags']} boosters, {results['points']} grid points; "
             f"{seeded.took(results)}"
             ". Grouped-CV folds of the evaluate stage, stacked "
             "model without OT features; test rows with a DFT value.", "",
             "| property | rows | MAE plain | MAE rearranged | diff [95% CI] | mean abs change | sweeps with a fall | "
             "steps that fall | largest fall (median) |", "|---|---|---|---|---|---|---|---|---|"]
    for name in results["properties"]:
        r = results[name]
        m, d, f = r["mae"], r["diff"], r["falls"]
        lines.append(f"| {name} ({r['unit']}) | {r['rows']} | {m['plain']['mean']:.4f} ± {m['plain']['std']:.4f} | "
                     f"{m['rearranged']['mean']:.4f} ± {m['rearranged']['std']:.4f} | {d['mean']:+.4f} "
                     f"[{d['ci95'][0]:+.4f}, {d['ci95'][1]:+.4f}] | {r['mean_abs_change']:.4f} | "
                     f"{100 * f['sweeps_with_a_fall']:.0f}% | {100 * f['share_of_steps']:.1f}% | "
                     f"{f['largest']:.3f} ({f['median_largest']:.3f}) |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = seeded.parser(__doc__, HERE / "rearrangement_results.json")
    parser.add_argument("--points", type=int, default=256, help="grid points of the rearrangement (serving's default)")
    args = parser.parse_args(argv)
    return seeded.run(args, lambda name, params, train: run_property(name, params, train, args.seeds, args.bags,
                                                                     args.points), markdown, points=args.points)

if __name__ == "__main__":
    raise SystemExit(main())
