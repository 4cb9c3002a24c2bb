"""How much could shrinking the boosters' residual toward the calibrated base gain out of distribution? An upper bound.

The stacked model predicts ``base + residual``: ``base`` is the best DFT estimate after the ridge
correction and the extrapolating calibration line (the DFT trend, which transfers to chemistry
training never saw), ``residual`` the boosters' mean. Out of distribution the boosters' part is the
less trustworthy one, so a shrunk prediction ``base + lam * residual`` with ``lam < 1`` far from the
training formulas is the textbook hedge. This benchmark measures what that hedge could buy at best:
per fold of the evaluate stage (stacked model without OT, shared DFT surrogate, ``--bags`` boosters)
it records base, residual and the test formula's distance to the training formulas (mean distance to
its 5 nearest training formulas in z-scored descriptor space, over the training formulas' own median),
then scores every ``lam`` of a grid, globally and per distance quintile of all test rows.

The ``lam`` is picked on the scored rows themselves (an oracle), so every gain here is an upper
bound for a rule that would have to choose ``lam`` on training folds: if the bound is small, so is
every such rule. Paired 95% bootstrap intervals over formulas for the best global ``lam`` against 1.

    PYTHONPATH=. python -m benchmarks.residual_shrink --property band_gap --seeds 0 1 2
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
from sklearn.neighbors import NearestNeighbors

from benchmarks import seeded
from benchmarks.metal_features import paired_by_formula
from benchmarks.stack_options import spread_over_seeds
from models.evaluation.config import OOD_PROTOCOLS
from models.evaluation.splits import make_folds
from models.learners import StackedModel
from models.learners.stacked import descriptor_matrix

HERE = Path(__file__).resolve().parent
LAMBDAS = (0.0, 0.5, 0.7, 0.8, 0.9, 1.0, 1.1, 1.2)
QUINTILES = 5


def base_and_residual(model: StackedModel, descriptors: pd.DataFrame, formulas: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """The fitted ``model``'s calibrated base and its boosters' mean residual (faded as in predict) per formula.

    ``model.apply_bounds(formulas, base + residual)`` is ``model.predict(descriptors, formulas)``.
    """
    x = model.features(descriptors, formulas)
    base = model._corrected(formulas, x)
    design = np.column_stack([x, base]).astype(np.float32)
    residual = np.mean([model._faded(base, m.predict(design)) for m in model.models_], axis=0)
    return base, residual


def relative_distance(train: np.ndarray, test: np.ndarray, k: int = 5) -> np.ndarray:
    """Mean distance of each test row to its ``k`` nearest training rows over the training rows' own median of that.

    Columns z-scored on the training rows (clipped at 10), so 1 is as far as a typical training row from the others.
    """
    mu, sd = train.mean(axis=0), train.std(axis=0)
    sd = np.where(sd > 0, sd, 1.0)
    z_train, z_test = (np.clip((a - mu) / sd, -10, 10) for a in (train, test))
    nn = NearestNeighbors(n_neighbors=k + 1).fit(z_train)
    own = nn.kneighbors(z_train)[0][:, 1:].mean(axis=1)  # without the row itself
    return nn.kneighbors(z_test, n_neighbors=k)[0].mean(axis=1) / np.median(own)


def fold_parts(config, stack, descriptors: pd.DataFrame, formulas: list[str], y: np.ndarray, folds: list) -> pd.DataFrame:
    """Per test row of every fold: value, base, residual, relative distance (the stacked model fitted per fold)."""
    x = np.nan_to_num(descriptor_matrix(descriptors, formulas))
    rows = []
    for f in folds:
        model = StackedModel(config, dft_reference=stack.dft_reference, surrogate=stack.surrogate,
                             extra_reference=stack.extra_reference)
        test = [formulas[i] for i in f.test]
        model.fit(descriptors, [formulas[i] for i in f.train], y[f.train])
        base, residual = base_and_residual(model, descriptors, test)
        # a value apply_bounds pins whatever the models say (a pure element's formation enthalpy), NaN elsewhere
        pinned = np.where(model.apply_bounds(test, np.full(len(test), np.nan)) == config.element_value,
                          config.element_value, np.nan) if config.element_value is not None else np.nan
        rows.append(pd.DataFrame({"protocol": f.protocol, "fold": f.name, "formula": test, "value": y[f.test],
                                  "base": base, "residual": residual, "pinned": pinned,
                                  "distance": relative_distance(x[f.train], x[f.test])}))
    return pd.concat(rows, ignore_index=True)


def shrunk(table: pd.DataFrame, lam: float | np.ndarray, clamp_min: float | None) -> np.ndarray:
    """``base + lam * residual`` with the model's bounds (the clamp, the pinned values)."""
    out = table["base"].to_numpy() + lam * table["residual"].to_numpy()
    if clamp_min is not None:
        out = np.maximum(out, clamp_min)
    pinned = table["pinned"].to_numpy(float)
    return np.where(np.isnan(pinned), out, pinned)


def score(tables: list[pd.DataFrame], clamp_min: float | None) -> dict:
    """Per protocol (and pooled OOD): MAE per lam over seeds; the best global lam against 1 with its interval."""
    out = {}
    for protocol in [*sorted(set(tables[0]["protocol"])), "pooled_ood"]:
        parts = [(t[t["protocol"].isin(OOD_PROTOCOLS)] if protocol == "pooled_ood" else t[t["protocol"] == protocol])
                 .reset_index(drop=True) for t in tables]
        errors = {lam: [p.assign(error=np.abs(shrunk(p, lam, clamp_min) - p["value"])) for p in parts] for lam in LAMBDAS}
        mae = {str(lam): spread_over_seeds([e["error"] for e in errs]) for lam, errs in errors.items()}
        best = min(LAMBDAS, key=lambda lam: mae[str(lam)]["mean"])
        diff, lo, hi = paired_by_formula(errors[1.0], errors[best])
        out[protocol] = {"rows": len(parts[0]), "mae": mae, "best_lambda": best,
                         "best_minus_served": {"mean": diff, "ci95": [lo, hi]}}
    return out


def by_distance(tables: list[pd.DataFrame], clamp_min: float | None) -> list[dict]:
    """Pooled OOD rows per distance quintile (edges from every test row of every protocol): MAE per lam, the oracle's."""
    pooled = pd.concat(tables, ignore_index=True)
    edges = np.quantile(pooled["distance"], np.linspace(0, 1, QUINTILES + 1))
    ood = pooled[pooled["protocol"].isin(OOD_PROTOCOLS)]
    q = np.clip(np.searchsorted(edges, ood["distance"], side="right") - 1, 0, QUINTILES - 1)
    rows = []
    for k in range(QUINTILES):
        part = ood[q == k]
        mae = {str(lam): float(np.mean(np.abs(shrunk(part, lam, clamp_min) - part["value"]))) for lam in LAMBDAS}
        rows.append({"quintile": k, "distance": [float(edges[k]), float(edges[k + 1])], "rows": len(part), "mae": mae,
                     "best_lambda": float(min(LAMBDAS, key=lambda lam: mae[str(lam)]))})
    # the oracle that takes each quintile's best lam: its pooled OOD MAE (rows of all seeds together)
    best = np.array([rows[k]["best_lambda"] for k in range(QUINTILES)])[q]
    served = np.abs(shrunk(ood, 1.0, clamp_min) - ood["value"])
    oracle = np.abs(shrunk(ood, best, clamp_min) - ood["value"])
    return [*rows, {"oracle_per_quintile": {"served": float(served.mean()), "oracle": float(oracle.mean())}}]


def run_property(name: str, params, train, *, seeds: list[int], bags: int) -> dict:
    prop, full, inputs, exp, formulas, y, stack = seeded.evaluate_problem(name, params, train, bags=bags)
    tables = []
    for seed in seeds:
        folds = make_folds(full, formulas, y, exp["crystal_system"].tolist(), inputs.descriptors, seed=seed)
        tables.append(fold_parts(replace(stack.config, seed=seed), stack, inputs.descriptors, formulas, y, folds))
        print(f"{name} seed {seed}: {len(tables[-1])} test rows", flush=True)
    clamp = stack.config.clamp_min
    return {"unit": prop.unit, "protocols": score(tables, clamp), "distance": by_distance(tables, clamp)}


def markdown(results: dict) -> str:
    lines = ["# Shrinking the boosters' residual toward the calibrated base (benchmarks/residual_shrink.py)", "",
             f"{results['machine']}; seeds {results['seeds']}, {results['bags']} boosters, stacked model without OT, "
             f"evaluate folds; {seeded.took(results)}. "
             "MAE of base + lam x residual (mean over seeds); lam chosen on the scored rows (an oracle: an upper "
             "bound); best minus lam = 1 with a 95% bootstrap interval over formulas.", ""]
    for name in results["properties"]:
        r = results[name]
        lines += [f"## {name} ({r['unit']})", "",
                  "| protocol | rows | " + " | ".join(f"lam {lam}" for lam in LAMBDAS) + " | best lam, minus lam 1 |",
                  "|---|---|" + "---|" * (len(LAMBDAS) + 1)]
        for protocol, s in r["protocols"].items():
            d = s["best_minus_served"]
            lines.append(f"| {protocol} | {s['rows']} | " + " | ".join(f"{s['mae'][str(lam)]['mean']:.4f}" for lam in LAMBDAS)
                         + f" | {s['best_lambda']}: {d['mean']:+.4f} [{d['ci95'][0]:+.4f}, {d['ci95'][1]:+.4f}] |")
        lines += ["", "Pooled OOD rows by distance quintile (all seeds' rows together):", "",
                  "| quintile | distance | rows | " + " | ".join(f"lam {lam}" for lam in LAMBDAS) + " | best lam |",
                  "|---|---|---|" + "---|" * (len(LAMBDAS) + 1)]
        for q in r["distance"][:-1]:
            lines.append(f"| {q['quintile']} | {q['distance'][0]:.2f}-{q['distance'][1]:.2f} | {q['rows']} | "
                         + " | ".join(f"{q['mae'][str(lam)]:.4f}" for lam in LAMBDAS) + f" | {q['best_lambda']} |")
        o = r["distance"][-1]["oracle_per_quintile"]
        lines += ["", f"Each quintile at its own best lam (oracle): pooled OOD {o['served']:.4f} -> {o['oracle']:.4f}.", ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = seeded.parser(__doc__, HERE / "residual_shrink_results.json")
    args = parser.parse_args(argv)
    return seeded.run(args, lambda name, params, train: run_property(name, params, train, seeds=args.seeds,
                                                                      bags=args.bags), markdown)


if __name__ == "__main__":
    raise SystemExit(main())
