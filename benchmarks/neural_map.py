"""Neural OT map (models/transport/neural.py): closed-form Gaussians and out-of-sample calibration on the mirror.

``python -m benchmarks.neural_map gaussian`` — full-size version of the tests' Gaussian cases
(d = 2 and 16, closed-form map ``T(x) = m_t + A (x - m_s)``): relative MSE (to the target's
total variance), the same for a mean-shift-only map, fit seconds; with and without the
quadratic layer of the ICNN.

``python -m benchmarks.neural_map mirror --property band_gap`` — grouped K-fold by reduced
formula over the measurements (needs ``data/raw`` and ``data/features``). In each fold only
the training measurements are seen: the neural map (params.yaml ``align.neural``) and the
pipeline's own alignment (params.yaml ``align``, barycentric projection) are fitted on all DFT
entries and the training measurements. Held-out formulas that have a DFT entry are then
calibrated from their DFT reference (most stable polymorph, lowest formation energy per atom)
and compared with their measurements:

* ``raw_dft``: the DFT value itself;
* ``linear``: ``a v + b`` fitted on the training measurements' DFT references;
* ``bary_nn1``: the barycentric target of the nearest aligned DFT entry (joint descriptor +
  value embedding of the cost) — the plan's calibration extended literally by nearest neighbour;
* ``bary_nn5_shift``: the DFT value plus the mean calibration shift (target - DFT value) of the
  5 nearest aligned entries;
* ``neural``: the conditional neural map.

The last stdout line is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np


def gaussian(args: argparse.Namespace) -> dict:
    import torch

    from models.transport import DualConfig, fit_dual
    from tests.models.transport.test_neural import gaussian_problem

    torch.set_num_threads(args.threads)
    out = {}
    for d in (2, 16):
        for quadratic in (True, False):
            runs = []
            for seed in range(args.repeats):
                problem = gaussian_problem(d, seed=seed)
                ms, ss, mt, st, a = problem
                rng = np.random.default_rng(100 + seed)
                xs = rng.multivariate_normal(ms, ss, size=args.samples)
                xt = rng.multivariate_normal(mt, st, size=args.samples)
                cfg = DualConfig(hidden=(64, 64), iterations=args.iterations, inner_steps=5, seed=seed,
                                 quadratic=quadratic)
                nmap = fit_dual(xs, xt, config=cfg)
                x = rng.multivariate_normal(ms, ss, size=5000)
                true = mt + (x - ms) @ a.T
                rel = float(((nmap(x) - true) ** 2).sum(axis=1).mean() / np.trace(st))
                shift = float(((x - ms + mt - true) ** 2).sum(axis=1).mean() / np.trace(st))
                runs.append({"seed": seed, "relative_mse": rel, "shift_only_relative_mse": shift,
                             "fit_seconds": nmap.seconds})
                print(f"d={d} quadratic={quadratic} seed={seed}: rel MSE {rel:.4f} (shift only {shift:.3f}), "
                      f"{nmap.seconds:.1f} s", file=sys.stderr)
            key = f"d{d}_{'quadratic' if quadratic else 'icnn_only'}"
            out[key] = {"runs": runs,
                        "median_relative_mse": float(np.median([r["relative_mse"] for r in runs])),
                        "median_fit_seconds": float(np.median([r["fit_seconds"] for r in runs]))}
    out["settings"] = {"samples": args.samples, "iterations": args.iterations, "inner_steps": 5,
                       "hidden": [64, 64], "threads": args.threads}
    return out


def _reference(raw_dir: Path, source, prop: str) -> dict[str, int]:
    """Row of each formula's DFT reference in ``source`` (lowest formation energy per atom)."""
    import pandas as pd

    dft = pd.read_parquet(raw_dir / "dft.parquet", columns=["material_id", "formation_energy_per_atom"])
    fe = dft.set_index("material_id")["formation_energy_per_atom"].reindex(source.ids).to_numpy()
    frame = pd.DataFrame({"formula": source.formulas, "fe": fe, "mid": source.ids, "row": np.arange(source.size)})
    frame = frame.sort_values(["fe", "mid"], na_position="last").drop_duplicates("formula")
    return dict(zip(frame["formula"], frame["row"], strict=True))


def _metrics(pred: np.ndarray, truth: np.ndarray) -> dict:
    err = pred - truth
    return {"mae": float(np.abs(err).mean()), "rmse": float(np.sqrt((err ** 2).mean()))}


def mirror(args: argparse.Namespace) -> dict:
    import torch
    from scipy.spatial import cKDTree
    from sklearn.model_selection import GroupKFold

    from models.properties import get_property
    from models.transport import (
        Domain,
        align,
        fit_calibration_map,
        joint_embedding,
        standardise,
    )
    from pipeline.align import domains
    from pipeline.config import load_section, to_dict
    from pipeline.params.align import AlignParams

    torch.set_num_threads(args.threads)
    params = load_section(AlignParams, "align", args.params)
    prop = args.property
    cfg = params.config.for_property(get_property(prop))
    source, target, _ = domains(params.raw_dir, params.features_dir, get_property(prop))
    ref = _reference(params.raw_dir, source, prop)
    neural_cfg = cfg.options.neural
    folds = GroupKFold(n_splits=args.folds, shuffle=True, random_state=cfg.options.seed) if args.folds > 1 else None
    rows = []
    per_fold = []
    for k, (tr, te) in enumerate(folds.split(target.values, groups=target.formulas)):
        if args.max_folds and k >= args.max_folds:
            break
        tgt = Domain(features=target.features[tr], values=target.values[tr], formulas=target.formulas[tr],
                     ids=target.ids[tr], fractions=target.fractions[tr], elements=target.elements,
                     crystal_system=target.crystal_system[tr])
        test = [j for j in te if target.formulas[j] in ref]
        test_rows = np.array([ref[target.formulas[j]] for j in test])
        truth = target.values[test]
        v = source.values[test_rows]
        preds = {"raw_dft": v}
        # linear calibration on the training measurements' references
        tr_cov = [j for j in tr if target.formulas[j] in ref]
        coef = np.polyfit(source.values[[ref[target.formulas[j]] for j in tr_cov]], target.values[tr_cov], 1)
        preds["linear"] = np.polyval(coef, v)
        t0 = time.perf_counter()
        res = align(source, tgt, **cfg.kwargs())
        bary, _ = res.calibrated_targets(tgt.values, fallback=source.values + res.source_offset)
        t_bary = time.perf_counter() - t0
        aligned = np.flatnonzero(res.source_mass > 0)
        xs, _ = joint_embedding(standardise(source, tgt), source, tgt, cfg.cost)
        tree = cKDTree(xs[aligned])
        # exclude the query itself and entries of the held-out formula (they have no mass anyway)
        _, nn = tree.query(xs[test_rows], k=5)
        preds["bary_nn1"] = bary[aligned[nn[:, 0]]]
        shift = bary[aligned] - source.values[aligned]
        preds["bary_nn5_shift"] = v + shift[nn].mean(axis=1)
        t0 = time.perf_counter()
        cal = fit_calibration_map(source.values, source.features, source.formulas, tgt.values, tgt.features,
                                  tgt.formulas, config=neural_cfg)
        t_neural = time.perf_counter() - t0
        preds["neural"], nconf = cal.calibrate(v, source.features[test_rows])
        fold = {"fold": k, "n_test_measurements": len(test), "n_test_formulas": len(set(target.formulas[test])),
                "n_train_measurements": len(tr), "aligned_dft_entries": int(aligned.size),
                "seconds_barycentric": t_bary, "seconds_neural": t_neural,
                "neural_mean_confidence": float(nconf.mean()),
                **{f"{name}_{m}": val for name, p in preds.items() for m, val in _metrics(p, truth).items()}}
        per_fold.append(fold)
        print(json.dumps(fold), file=sys.stderr, flush=True)
        rows.append((truth, preds))
    truth = np.concatenate([t for t, _ in rows])
    pooled = {name: _metrics(np.concatenate([p[name] for _, p in rows]), truth) for name in rows[0][1]}
    return {"property": prop, "folds": args.folds, "protocol": "GroupKFold by reduced formula over measurements; "
            "held-out formulas with a DFT entry, calibrated from their most stable polymorph",
            "n_test_measurements": int(truth.size), "pooled": pooled, "per_fold": per_fold,
            "align_method_baseline": cfg.method, "energy_additivity_baseline": cfg.energy_additivity,
            "neural_params": to_dict(neural_cfg)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="what", required=True)
    g = sub.add_parser("gaussian")
    g.add_argument("--samples", type=int, default=4000)
    g.add_argument("--iterations", type=int, default=500)
    g.add_argument("--repeats", type=int, default=3)
    g.add_argument("--threads", type=int, default=1)
    m = sub.add_parser("mirror")
    m.add_argument("--property", default="band_gap", choices=["band_gap", "formation_enthalpy"])
    m.add_argument("--params", type=Path, default=Path("params.yaml"))
    m.add_argument("--folds", type=int, default=5)
    m.add_argument("--max-folds", type=int, default=0, help="stop after this many folds (0 = all)")
    m.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    result = gaussian(args) if args.what == "gaussian" else mirror(args)
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
