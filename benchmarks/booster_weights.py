"""Does reweighting the stacked model's boosters, or a multiplicative residual, lower the out-of-distribution error?

Issue 16's out-of-distribution excess sits in families the training part lacks (family out: halide
and oxide), so two textbook remedies for covariate shift are tried on the band-gap stacked model as
the evaluate stage builds it (without OT features, ``--bags`` boosters), paired with it on the same
folds:

* ``family<a>``: each training row weighted by (1 / rows of its chemical family)^a, so that the
  majority family (chalcogenides, 55% of the band gaps) no longer dominates the trees;
* ``density<a>``: each training row weighted by (mean distance to its 10 nearest training rows in
  standardised descriptor space)^a, so that rare chemistry counts more (importance weighting by
  an inverse-density estimate; z-scores clipped at +-10 as the intervals do);
* ``log1p``: the boosters fit ``log1p(y) - log1p(base)`` instead of ``y - base`` (a residual that
  scales with the gap, as the PBE error does), inverted after averaging; the fade beyond the
  training range then acts on the log scale.

Weights are normalised to mean 1, capped at 5 and normalised to mean 1 again (so a capped row can end
above 5 when the cap lowered the mean); they use the training part of each fold only. Exploration on the evaluate folds (no setting is chosen here): ``PYTHONPATH=.
python -m benchmarks.booster_weights --seeds 0 --variants family1 family0.5 density1 density2 log1p``
(``--property formation_enthalpy`` without ``log1p``: an enthalpy is negative).
"""

from __future__ import annotations

import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd

from benchmarks import seeded
from benchmarks.metal_features import paired_by_formula
from models.evaluation.splits import chemical_family, make_folds
from models.learners.stacked import StackedModel, _booster
from models.properties import get_property

HERE = Path(__file__).resolve().parent


def row_weights(descriptors: pd.DataFrame, formulas: list[str], variant: str) -> np.ndarray:
    """Per training row: the variant's weight (``family<a>`` or ``density<a>``), mean 1, capped at 5."""
    if variant.startswith("family"):
        family = pd.Series([chemical_family(f) for f in formulas])
        w = (1.0 / family.map(family.value_counts()).to_numpy(float)) ** float(variant[len("family"):])
    elif variant.startswith("density"):
        from sklearn.neighbors import NearestNeighbors

        table = descriptors.drop_duplicates("formula").set_index("formula").select_dtypes("number")
        x = table.loc[formulas].to_numpy(float)
        sd = x.std(axis=0)
        z = np.clip((x - x.mean(axis=0)) / np.where(sd > 0, sd, 1.0), -10, 10)
        dist = NearestNeighbors(n_neighbors=11).fit(z).kneighbors(z)[0][:, 1:].mean(axis=1)
        w = dist ** float(variant[len("density"):])
    else:
        raise ValueError(f"unknown weighting {variant!r}")
    w = np.minimum(w / w.mean(), 5.0)
    return w / w.mean()


class VariantModel(StackedModel):
    """The stacked model with weighted boosters or a log1p residual (``variant``); ``base`` = the stacked model."""

    variant = "base"

    def fit(self, descriptors, formulas, y):
        if self.variant == "base":
            return super().fit(descriptors, formulas, y)
        c, formulas, y = self.config, list(formulas), np.asarray(y, float)
        x = self.features(descriptors, formulas)
        base = self._fit_correction(formulas, x, y)
        self.calibration_ = self.target_range_ = None
        log = self.variant == "log1p"
        target = np.log1p(np.maximum(y, 0.0)) if log else y
        if c.extrapolate:
            from models.learners.stacked import _major_axis

            self.calibration_ = _major_axis(base, y)
            base = self._calibrated(base)
            lo, hi = np.quantile(target, [0.02, 0.98])
            self.target_range_ = (float(lo), float(hi), float(np.std(target)) or 1.0)
        x = np.column_stack([x, base]).astype(np.float32)
        weight = None if log else row_weights(descriptors, formulas, self.variant)
        residual = target - (np.log1p(np.maximum(base, 0.0)) if log else base)
        self.models_ = [_booster(c, trees=c.trees, leaves=c.leaves, lr=c.lr, seed=c.seed + b, max_bin=c.max_bin,
                                 colsample=c.colsample, objective=c.objective, min_child_samples=c.min_child_samples
                                 ).fit(x, residual, sample_weight=weight) for b in range(c.bags)]
        return self

    def predict_with_spread(self, descriptors, formulas, dft_value=None, extra_value=None):
        if self.variant != "log1p":
            return super().predict_with_spread(descriptors, formulas, dft_value, extra_value)
        formulas = list(formulas)
        x = self.features(descriptors, formulas, dft_value, extra_value)
        base = np.log1p(np.maximum(self._corrected(formulas, x), 0.0))
        x = np.column_stack([x, self._corrected(formulas, x)]).astype(np.float32)
        residuals = np.stack([self._faded(base, m.predict(x)) for m in self.models_])
        spread = residuals.std(axis=0)
        return self.apply_bounds(formulas, np.expm1(base + residuals.mean(axis=0)), spread), spread


def variant_class(variant: str) -> type[VariantModel]:
    return type(f"VariantModel_{variant}", (VariantModel,), {"variant": variant})


def run_property(name, params, train, variants: list[str], seeds: list[int], bags: int) -> dict:
    prop = get_property(name)
    if "log1p" in variants and prop.clamp_min != 0.0:
        raise SystemExit(f"booster_weights: log1p needs a property >= 0 (band_gap), not {name}")
    _, full, inputs, exp, formulas, y, stack = seeded.evaluate_problem(name, params, train, bags=bags)
    errors: dict[str, list[pd.DataFrame]] = {v: [] for v in ["base", *variants]}
    for seed in seeds:
        folds = make_folds(full, formulas, y, exp["crystal_system"].tolist(), inputs.descriptors, seed=seed)
        for v in errors:
            t0 = time.perf_counter()
            tab = seeded.with_pooled_ood(seeded.fold_errors(replace(stack.config, seed=seed, n_jobs=1), stack,
                                                            inputs.descriptors, formulas, y, folds,
                                                            model=variant_class(v)))
            errors[v].append(tab)
            print(f"{name} seed {seed} {v} ({time.perf_counter() - t0:.0f} s) "
                  + " ".join(f"{p} {g['error'].mean():.4f}" for p, g in tab.groupby("protocol")), flush=True)
    out: dict = {"unit": prop.unit, "protocols": {}}
    for protocol in sorted(errors["base"][0]["protocol"].unique()):
        part = {v: [t[t["protocol"] == protocol].reset_index(drop=True) for t in tabs] for v, tabs in errors.items()}
        row = {"base": float(np.mean([t["error"].mean() for t in part["base"]]))}
        for v in variants:
            diff, lo, hi = paired_by_formula(part["base"], part[v])
            row[v] = {"mae": float(np.mean([t["error"].mean() for t in part[v]])), "diff": diff, "ci95": [lo, hi]}
        out["protocols"][protocol] = row
    return out


def markdown(results: dict) -> str:
    lines = ["# Reweighted boosters and a log1p residual (benchmarks/booster_weights.py)", "",
             f"{results['machine']}; seeds {results['seeds']}, {results['bags']} boosters, stacked model without OT; "
             f"{seeded.took(results)}. MAE of the stacked model "
             "(base) and per variant its MAE and the paired difference variant - base (95% bootstrap interval over formulas).", ""]
    for name in results["properties"]:
        r = results[name]
        variants = results["variants"]
        lines += [f"## {name} ({r['unit']})", "", "| protocol | base | " + " | ".join(variants) + " |",
                  "|---|---|" + "---|" * len(variants)]
        for p, row in r["protocols"].items():
            cells = [f"{row[v]['mae']:.4f}: {row[v]['diff']:+.4f} [{row[v]['ci95'][0]:+.4f}, {row[v]['ci95'][1]:+.4f}]"
                     for v in variants]
            lines.append(f"| {p} | {row['base']:.4f} | " + " | ".join(cells) + " |")
        lines.append("")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = seeded.parser(__doc__, HERE / "booster_weights_results.json")
    parser.set_defaults(property=["band_gap"])
    parser.add_argument("--variants", nargs="+", default=["family1", "family0.5", "density1", "density2", "log1p"])
    args = parser.parse_args(argv)
    return seeded.run(args, lambda name, params, train: run_property(name, params, train, args.variants, args.seeds,
                                                                     args.bags),
                      markdown, variants=args.variants)


if __name__ == "__main__":
    raise SystemExit(main())
