"""A second learner beside the boosters: extremely randomised trees on the same columns, blended in.

The stacked model's error out of distribution behaves like variance, not bias: binned by its own
prediction, the seed-0 OOD folds show no systematic offset (the measured gap given the predicted one
has slope 0.95 to 1.11 per protocol). Averaging in a learner that errs differently is the textbook
remedy for variance. Here an :class:`sklearn.ensemble.ExtraTreesRegressor` (``--trees`` trees,
``--max-features`` of the columns per split, leaves of at least 2 rows) is fitted on each fold's
training part to the same residual the boosters learn (target minus the stacked model's corrected
base), on the same columns (descriptors, DFT value, surrogate, extra fidelities, the corrected base;
NaN as -1 beside the has-DFT flag), and its prediction is blended with the stacked model's at
``--weights``. The stacked model is the evaluate stage's without OT features (shared DFT surrogate,
``--bags`` boosters), on the evaluate stage's folds. Per protocol and pooled OOD: MAE of the stacked
model and of each blend, the paired difference with a 95% bootstrap interval over formulas.

Exploration on the evaluate folds (a weight to serve would be chosen on ``--nested`` folds first):

    PYTHONPATH=. python -m benchmarks.tree_blend --property band_gap --out benchmarks/tree_blend_band_gap.json
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
from sklearn.ensemble import ExtraTreesRegressor

from benchmarks import seeded
from benchmarks.metal_features import paired_by_formula
from benchmarks.stack_options import inner_folds, spread_over_seeds
from models.evaluation.splits import loco_descriptors, make_folds
from models.learners import StackedModel

HERE = Path(__file__).resolve().parent


def residual_design(model: StackedModel, descriptors: pd.DataFrame, formulas: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """The columns the fitted ``model``'s boosters see (NaN as -1) and its corrected base, for ``formulas``."""
    x = model.features(descriptors, formulas)
    base = model._corrected(formulas, x)
    return np.nan_to_num(np.column_stack([x, base]), nan=-1.0), base


def fold_predictions(config, stack, descriptors: pd.DataFrame, formulas: list[str], y: np.ndarray, folds: list, *,
                     trees: int, max_features: float) -> pd.DataFrame:
    """Per test row of every fold: the stacked model's prediction and the extra trees' (same base, same columns)."""
    rows = []
    for f in folds:
        model = StackedModel(config, dft_reference=stack.dft_reference, surrogate=stack.surrogate,
                             extra_reference=stack.extra_reference)
        train, test = [formulas[i] for i in f.train], [formulas[i] for i in f.test]
        model.fit(descriptors, train, y[f.train])
        x_train, base_train = residual_design(model, descriptors, train)
        x_test, base_test = residual_design(model, descriptors, test)
        trees_model = ExtraTreesRegressor(n_estimators=trees, max_features=max_features, min_samples_leaf=2, n_jobs=1,
                                          random_state=config.seed).fit(x_train, y[f.train] - base_train)
        other = model.apply_bounds(test, base_test + trees_model.predict(x_test))
        rows.append(pd.DataFrame({"protocol": f.protocol, "fold": f.name, "formula": test, "value": y[f.test],
                                  "stacked": model.predict(descriptors, test), "trees": other}))
    return pd.concat(rows, ignore_index=True)


def run_property(name: str, params, train, *, seeds: list[int], bags: int, weights: list[float], trees: int,
                 max_features: float, nested: bool) -> dict:
    prop, full, inputs, exp, formulas, y, stack = seeded.evaluate_problem(name, params, train, bags=bags)
    x_rows = loco_descriptors(inputs.descriptors, formulas) if nested else None
    tables = []
    for seed in seeds:
        folds = make_folds(full, formulas, y, exp["crystal_system"].tolist(), inputs.descriptors, seed=seed)
        if nested:
            folds = inner_folds(folds, y, formulas, seed=seed, descriptors=x_rows, clusters=full.loco_clusters)
        tab = fold_predictions(replace(stack.config, seed=seed), stack, inputs.descriptors, formulas, y, folds,
                               trees=trees, max_features=max_features)
        tables.append(seeded.with_pooled_ood(tab))
        print(f"{name} seed {seed}: " + " ".join(f"{p} {(g['stacked'] - g['value']).abs().mean():.4f}"
                                                 for p, g in tables[-1].groupby("protocol")), flush=True)
    out = {}
    for protocol in sorted(set(tables[0]["protocol"])):
        parts = [t[t["protocol"] == protocol].reset_index(drop=True) for t in tables]
        before = [p.assign(error=(p["stacked"] - p["value"]).abs()) for p in parts]
        row = {"rows": len(parts[0]), "stacked": spread_over_seeds([p["error"] for p in before]), "blends": {}}
        for w in weights:
            after = [p.assign(error=((1 - w) * p["stacked"] + w * p["trees"] - p["value"]).abs()) for p in parts]
            diff, lo, hi = paired_by_formula(before, after)
            row["blends"][str(w)] = {"mae": spread_over_seeds([p["error"] for p in after]),
                                     "diff": {"mean": diff, "ci95": [lo, hi]}}
        out[protocol] = row
    return {"unit": prop.unit, "folds": "nested" if nested else "outer", "protocols": out}


def markdown(results: dict) -> str:
    weights = results["weights"]
    lines = ["# Extra trees blended into the stacked model (benchmarks/tree_blend.py)", "",
             f"{results['machine']}; seeds {results['seeds']}, {results['bags']} boosters, stacked model without OT; "
             f"{results['trees']} extra trees, max_features {results['max_features']}; {seeded.took(results)}"
             ". MAE (mean ± std over seeds); blend = "
             "(1 - w) stacked + w extra trees; difference blend - stacked with a 95% bootstrap interval over formulas.", ""]
    for name in results["properties"]:
        r = results[name]
        lines += [f"## {name} ({r['unit']}), {r['folds']} folds", "",
                  "| protocol | rows | stacked | " + " | ".join(f"w = {w}" for w in weights) + " |",
                  "|---|---|---|" + "---|" * len(weights)]
        for protocol, s in r["protocols"].items():
            cells = [f"{b['mae']['mean']:.4f}, {b['diff']['mean']:+.4f} [{b['diff']['ci95'][0]:+.4f}, "
                     f"{b['diff']['ci95'][1]:+.4f}]" for b in (s["blends"][str(w)] for w in weights)]
            lines.append(f"| {protocol} | {s['rows']} | {s['stacked']['mean']:.4f} ± {s['stacked']['std']:.4f} | "
                         + " | ".join(cells) + " |")
        lines.append("")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = seeded.parser(__doc__, HERE / "tree_blend_results.json")
    parser.add_argument("--weights", type=float, nargs="+", default=[1.0, 0.5, 0.3], help="blend weights of the extra trees")
    parser.add_argument("--trees", type=int, default=300)
    parser.add_argument("--max-features", type=float, default=0.6, help="fraction of the columns tried per split")
    parser.add_argument("--nested", action="store_true", help="folds inside the evaluate folds' training parts")
    args = parser.parse_args(argv)
    if not all(0 <= w <= 1 for w in args.weights):
        parser.error(f"--weights {args.weights}: give blend weights between 0 and 1")
    return seeded.run(args, lambda name, params, train: run_property(
        name, params, train, seeds=args.seeds, bags=args.bags, weights=args.weights, trees=args.trees,
        max_features=args.max_features, nested=args.nested), markdown, weights=args.weights, trees=args.trees,
        max_features=args.max_features, nested=args.nested)


if __name__ == "__main__":
    raise SystemExit(main())
