"""Compositions as mixtures of DFT compounds (lower convex hull): as a DFT estimate, and as stacked-model columns.

:func:`models.transport.hull_mixtures` writes a formula as the mass-conserving mixture of its
chemical system's DFT compounds with the lowest formation energy (its own entries left out).
Two questions, on the mirror:

* ``estimate``: as an estimate of a formula's own DFT value, is the mixture better than the
  descriptor surrogate (:class:`models.learners.DFTSurrogate`, out of fold), and where? For
  ``--sample`` DFT formulas per property: MAE against the DFT value by number of elements and by
  whether the mixture holds a compound at all (``elements_only``: nothing of the chemical system
  is known). Formation enthalpy: ``hull_energy`` against the formation energy; band gap:
  the mixture's PBE gap against the PBE gap.
* ``stacked``: the stacked model (``train.stack``, without OT features, ``--bags`` boosters)
  with the mixture as extra columns (formation enthalpy: ``hull_energy``; band gap: the
  mixture's gap and ``hull_energy``) against without, on the evaluate stage's folds
  (``evaluate.full``), seeds as given: MAE mean ± std over seeds and the paired difference with
  a 95% bootstrap interval over formulas (one draw for all seeds).

Run after ``dvc repro featurize``: ``PYTHONPATH=. python -m benchmarks.mixture``; writes
``benchmarks/mixture_results.{json,md}``.
"""

from __future__ import annotations

import json
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd

from benchmarks import seeded
from benchmarks.metal_features import paired_by_formula
from featurizers.chemistry import element_fractions
from models.evaluation.splits import make_folds
from models.properties import STABILITY, choose_polymorphs
from models.transport import hull_mixtures
from pipeline.params.evaluate import EvaluateParams
from pipeline.params.train import TrainParams

HERE = Path(__file__).resolve().parent
GAP, ENERGY = "band_gap_pbe", "formation_energy_per_atom"


def mixture_reference(dft: pd.DataFrame) -> pd.DataFrame:
    """One row per formula with a formation energy: its most stable polymorph's energy and PBE gap."""
    frame = dft.dropna(subset=[ENERGY]).assign(**{STABILITY: lambda f: f[ENERGY], "dft_value": lambda f: f[ENERGY]})
    chosen = choose_polymorphs(frame)
    return pd.DataFrame({"formula": chosen.index, "energy": chosen[ENERGY].to_numpy(float),
                         GAP: chosen[GAP].to_numpy(float) if GAP in chosen else np.nan})


def mixture_columns(name: str, mix: pd.DataFrame) -> dict[str, pd.Series]:
    cols = {"hull_energy": mix["hull_energy"]}
    if name == "band_gap":
        cols["mixture_gap"] = mix[f"mixture_{GAP}"]
    return {k: v.dropna() for k, v in cols.items()}


def run_property(name: str, params: EvaluateParams, train: TrainParams, raw: Path, seeds: list[int], bags: int,
                 sample: int) -> dict:
    prop, settings, inputs, exp, formulas, y, stack = seeded.evaluate_problem(name, params, train, bags=bags)
    dft_all = pd.read_parquet(raw / "dft.parquet", columns=["material_id", "formula", GAP, ENERGY])
    reference = mixture_reference(dft_all)
    # estimate: the mixture against the surrogate on a sample of DFT formulas, own entries left out
    oof = stack.surrogate.out_of_fold_
    rng = np.random.default_rng(0)
    picked = sorted(rng.choice(oof.index.to_numpy(), size=min(sample, len(oof)), replace=False))
    # one LP per formula, for the sample and the measured formulas together (own DFT entries left out)
    wanted = sorted(set(picked) | set(formulas))
    t0 = time.perf_counter()
    every = hull_mixtures(reference, wanted, value_columns=[GAP])
    lp_seconds = (time.perf_counter() - t0) / len(wanted)
    mix = every.loc[picked]
    mixed = mix["hull_energy"] if name == "formation_enthalpy" else mix[f"mixture_{GAP}"]
    table = pd.DataFrame({"truth": stack.dft_reference.loc[picked].to_numpy(float), "surrogate": oof.loc[picked].to_numpy(),
                          "mixture": mixed.to_numpy(float), "elements": [len(element_fractions(f)) for f in picked],
                          "elements_only": mix["elements_only"].fillna(True).astype(bool).to_numpy()})
    table = table[np.isfinite(table["mixture"])]
    groups = {"all": table, **{f"{k} elements": g for k, g in table.groupby(table["elements"].clip(upper=4))},
              "mixture holds a compound": table[~table["elements_only"]], "elements only": table[table["elements_only"]]}
    estimate = {k: {"n": len(g), "surrogate": float((g["surrogate"] - g["truth"]).abs().mean()),
                    "mixture": float((g["mixture"] - g["truth"]).abs().mean())} for k, g in groups.items() if len(g)}
    print(name, "estimate", json.dumps(estimate), flush=True)
    # stacked: the mixture columns for every measured formula, with and without
    extra = mixture_columns(name, every.loc[sorted(set(formulas))])
    errors: dict[tuple[str, str], list[pd.DataFrame]] = {}
    for seed in seeds:
        folds = make_folds(settings, formulas, y, exp["crystal_system"].tolist(), inputs.descriptors, seed=seed)
        for setting, more in (("without", {}), ("with", extra)):
            tab = seeded.with_pooled_ood(seeded.fold_errors(replace(stack.config, seed=seed), stack, inputs.descriptors,
                                                            formulas, y, folds,
                                                            extra_reference={**stack.extra_reference, **more}))
            for protocol, part in tab.groupby("protocol"):
                errors.setdefault((protocol, setting), []).append(part.reset_index(drop=True))
            print(f"{name} seed {seed} {setting:7s} " + " ".join(f"{p} {g['error'].mean():.4f}"
                                                               for p, g in tab.groupby("protocol")), flush=True)
    stacked = {}
    for protocol in sorted({p for p, _ in errors}):
        before, after = errors[(protocol, "without")], errors[(protocol, "with")]
        diff, lo, hi = paired_by_formula(before, after)
        stacked[protocol] = {"rows": len(before[0]), **{s: {"mean": float(np.mean([p["error"].mean() for p in parts])),
                                                            "std": float(np.std([p["error"].mean() for p in parts]))}
                                                        for s, parts in (("without", before), ("with", after))},
                             "diff": {"mean": diff, "ci95": [lo, hi]}}
    return {"unit": prop.unit, "estimate": estimate, "lp_ms_per_formula": 1000 * lp_seconds,
            "columns": list(extra), "stacked": stacked}


def markdown(results: dict) -> str:
    lines = ["# Compositions as mixtures of DFT compounds (benchmarks/mixture.py)", "",
             f"{results['machine']}; seeds {results['seeds']}, {results['bags']} boosters, {results['sample']} sampled DFT "
             f"formulas; {seeded.took(results)}.", ""]
    for name in results["properties"]:
        r = results[name]
        lines += [f"## {name} ({r['unit']})", "", f"DFT estimate of a formula's own value (LP {r['lp_ms_per_formula']:.1f} ms "
                  "per formula): MAE against the DFT value", "", "| formulas | n | descriptor surrogate (out of fold) | "
                  "mixture (own entries left out) |", "|---|---|---|---|"]
        lines += [f"| {k} | {v['n']} | {v['surrogate']:.4f} | {v['mixture']:.4f} |" for k, v in r["estimate"].items()]
        lines += ["", f"Stacked model with the mixture columns ({', '.join(r['columns'])}) against without:", "",
                  "| protocol | rows | without | with | diff [95% CI] |", "|---|---|---|---|---|"]
        for p, s in r["stacked"].items():
            d = s["diff"]
            lines.append(f"| {p} | {s['rows']} | {s['without']['mean']:.4f} ± {s['without']['std']:.4f} | "
                         f"{s['with']['mean']:.4f} ± {s['with']['std']:.4f} | {d['mean']:+.4f} "
                         f"[{d['ci95'][0]:+.4f}, {d['ci95'][1]:+.4f}] |")
        lines.append("")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = seeded.parser(__doc__, HERE / "mixture_results.json")
    parser.add_argument("--sample", type=int, default=3000, help="DFT formulas for the estimate comparison")
    args = parser.parse_args(argv)
    return seeded.run(args, lambda name, params, train: run_property(name, params, train, train.raw_dir, args.seeds,
                                                                     args.bags, args.sample), markdown, sample=args.sample)

if __name__ == "__main__":
    raise SystemExit(main())
