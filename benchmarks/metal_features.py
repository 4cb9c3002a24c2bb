"""The metal classifier's features and trees, before and after the bonding descriptors, paired on the same folds.

Runs the metal stage's grouped cross-validation (:func:`models.evaluation.metal_cv`: per fold
the classifier, an inner CV for its threshold, the band-gap regressor) for two classifier
settings on the same folds, with one band-gap regressor per fold shared by both, so that the
difference is the classifier's alone:

* ``before``: the settings of the metal stage up to commit 1cecacb (31 leaves, 10 rows per leaf,
  colsample 0.5, no bonding descriptors);
* ``after``: ``metal.classifier`` of params.yaml.

Reports per setting the grouped-CV ROC-AUC and all-compositions / non-metal / metal band-gap
MAE (mean ± std over the fold seeds), and the paired difference after - before with a 95%
bootstrap interval that resamples formulas (the same draw for every seed; a formula's
measurement rows move together).

Other pairs of settings: ``--before`` / ``--after`` take JSON overrides of ``metal.classifier``
(e.g. ``--before '{"ionic": false}' --after '{}'``: params.yaml's classifier without and with
the IonProperty descriptors); ``--seeds`` limits the fold seeds.

Run after ``dvc repro metal`` (it reads ``data/raw`` and ``data/features``):
``PYTHONPATH=. python -m benchmarks.metal_features``; writes
``benchmarks/metal_features_results.{json,md}`` (also printed; ``--out`` elsewhere).
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import pandas as pd

from models.evaluation import metal_cv, metal_summary, prepare_metal
from models.evaluation.metal import MetalData
from models.properties import get_property
from pipeline.config import DEFAULT_PARAMS, load_section
from pipeline.metal import load_inputs
from pipeline.params.metal import MetalParams
from pipeline.params.train import TrainParams

HERE = Path(__file__).resolve().parent
BEFORE = {"leaves": 31, "min_child_samples": 10, "colsample": 0.5, "bonding": False}


@dataclass
class SharedRegressor(MetalData):
    """:class:`MetalData` whose band-gap regressor is fitted once per training set; copies made by
    ``dataclasses.replace`` share the fitted ones."""

    fitted: dict = field(default_factory=dict)

    def regressor(self, formulas, values):
        key = tuple(formulas)
        if key not in self.fitted:
            self.fitted[key] = super().regressor(formulas, values)
        return self.fitted[key]


def row_errors(per_row: pd.DataFrame) -> pd.DataFrame:
    """Absolute error of the combined prediction per all-compositions row, with its formula and class."""
    return per_row.assign(error=np.abs(per_row["combined"] - per_row["measured"]))[["formula", "is_metal", "error"]]


def paired_by_formula(before: list[pd.DataFrame], after: list[pd.DataFrame], *, n: int = 2000, seed: int = 0
                      ) -> tuple[float, float, float]:
    """Mean over seeds of (MAE after - MAE before), and a 95% interval from resampling formulas (one draw for all seeds)."""
    formulas = sorted(set(before[0]["formula"]))
    index = {f: k for k, f in enumerate(formulas)}
    draws = np.random.default_rng(seed).integers(0, len(formulas), size=(n, len(formulas)))
    point, reps = [], np.zeros(n)
    for b, a in zip(before, after, strict=True):
        k = b["formula"].map(index).to_numpy()
        count = np.bincount(k, minlength=len(formulas))
        delta = np.bincount(k, a["error"].to_numpy() - b["error"].to_numpy(), minlength=len(formulas))
        point.append(delta.sum() / count.sum())
        reps += delta[draws].sum(axis=1) / count[draws].sum(axis=1) / len(before)
    return float(np.mean(point)), float(np.quantile(reps, 0.025)), float(np.quantile(reps, 0.975))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--params", type=Path, default=DEFAULT_PARAMS)
    parser.add_argument("--out", type=Path, default=HERE / "metal_features_results.json")
    parser.add_argument("--before", type=json.loads, default=BEFORE, help="JSON overrides of metal.classifier")
    parser.add_argument("--after", type=json.loads, default={}, help="JSON overrides of metal.classifier")
    parser.add_argument("--seeds", type=int, nargs="+", help="fold seeds (default metal.cv_seeds)")
    args = parser.parse_args(argv)
    params = load_section(MetalParams, "metal", args.params)
    train = load_section(TrainParams, "train", args.params)
    prop = get_property("band_gap")
    stack = replace(train.fit.stack_config(prop), bags=params.cv.regressor_bags, n_jobs=params.classifier.n_jobs)
    t0 = time.perf_counter()
    cv = replace(params.cv, protocols=[], cv_seeds=args.seeds or params.cv.cv_seeds)
    plan = prepare_metal(**load_inputs(params, train), config=params.classifier, stack=stack, cv=cv,
                         extra_columns=train.fit.extra_fidelities(prop))
    data = SharedRegressor(**{f: getattr(plan.data, f) for f in MetalData.__dataclass_fields__})
    settings = {"before": replace(params.classifier, **args.before), "after": replace(params.classifier, **args.after)}
    results, errors = {}, {}
    for name, config in settings.items():
        arm = replace(data, classifier=data.classifier_for_fold(config))
        runs = {fold_name: metal_cv(arm, folds, inner_folds=params.cv.inner_folds, seed=params.classifier.seed)
                for fold_name, folds in plan.folds.items()}
        results[name] = metal_summary(runs)["grouped_cv"]
        errors[name] = [row_errors(per_row) for _, per_row in runs.values()]
        print(f"{name}: ROC-AUC {results[name]['roc_auc']['mean']:.4f}, all-compositions MAE "
              f"{results[name]['mae_all']['mean']:.4f} ± {results[name]['mae_all']['std']:.4f}", flush=True)
    for b, a in zip(errors["before"], errors["after"], strict=True):
        if not b["formula"].equals(a["formula"]):
            raise RuntimeError("the two settings' rows differ: the folds are not the same")
    paired = {}
    for label, cls in (("mae_all", None), ("mae_nonmetal", 0), ("mae_metal", 1)):
        pick = (lambda e: e) if cls is None else (lambda e, c=cls: e[e["is_metal"] == c])
        paired[label] = paired_by_formula([pick(e) for e in errors["before"]], [pick(e) for e in errors["after"]])
    out = {"settings": {"before": args.before, "after": args.after},
           "grouped_cv": results, "paired_after_minus_before": paired, "seeds": list(cv.cv_seeds),
           "seconds": round(time.perf_counter() - t0, 1), "machine": f"{platform.machine()}, {platform.processor() or '?'}"}
    args.out.write_text(json.dumps(out, indent=2) + "\n", encoding="utf-8")
    lines = ["| grouped 5-fold CV, mean ± std over fold seeds | before | after | after - before (95% CI, by formula) |",
             "|---|---|---|---|"]
    for key, label in (("roc_auc", "ROC-AUC"), ("mae_all", "all-compositions MAE (eV)"),
                       ("mae_nonmetal", "non-metal MAE (eV)"), ("mae_metal", "metal MAE (eV)")):
        b, a = results["before"][key], results["after"][key]
        diff = f"{paired[key][0]:+.4f} [{paired[key][1]:+.4f}, {paired[key][2]:+.4f}]" if key in paired else ""
        lines.append(f"| {label} | {b['mean']:.4f} ± {b['std']:.4f} | {a['mean']:.4f} ± {a['std']:.4f} | {diff} |")
    table = "\n".join(lines) + "\n"
    args.out.with_suffix(".md").write_text(table, encoding="utf-8")
    print(table)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
