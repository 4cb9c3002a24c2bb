"""The DFT surrogate's six LightGBM fits: on two threads one after the other, or two one-thread fits side by side.

The surrogate stage fits :class:`models.learners.DFTSurrogate` (five out-of-fold models and the
full one, ``train.stack.surrogate_*``) on every DFT formula of the mirror. LightGBM's two
threads share each tree's histogram work and wait for each other at every split; two forked
processes of one thread each (``DFTSurrogate.fit(..., workers=2)``) fit whole models apart.
For each property this script fits the surrogate both ways, alternately, ``--repeats`` times on
the pipeline's own inputs (``data/raw``, ``data/features``: run after ``dvc repro featurize``),
and reports the median seconds of each, their ratio and how far the two fits' out-of-fold values
are apart (two threads sum each histogram in another order).

    PYTHONPATH=. python -m benchmarks.surrogate_workers --repeats 3 --out benchmarks/surrogate_workers_results.json

Run it alone: anything else on the two cores voids the timings.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

from models.learners import DFTSurrogate
from models.properties import PROPERTY_NAMES, get_property, reference_per_formula
from pipeline import readers
from pipeline.config import DEFAULT_PARAMS, load_section
from pipeline.params.train import TrainParams

HERE = Path(__file__).resolve().parent


def run_property(name: str, params: TrainParams, repeats: int) -> dict:
    prop = get_property(name)
    config = params.fit.stack_config(prop)
    dft = readers.read_dft(params.raw_dir, prop).rename(columns={prop.dft_column: "dft_value"})
    ref = reference_per_formula(dft.dropna(subset=["dft_value"]))
    descriptors = readers.read_descriptors(params.features_dir)
    ways = {"two threads": dict(config=replace(config, n_jobs=2), workers=1),
            "two workers": dict(config=replace(config, n_jobs=2), workers=2)}
    seconds: dict[str, list[float]] = {w: [] for w in ways}
    fitted: dict[str, DFTSurrogate] = {}
    for r in range(repeats):
        for way, how in ways.items():
            t0 = time.perf_counter()
            fitted[way] = DFTSurrogate(how["config"]).fit(descriptors, ref, workers=how["workers"])
            seconds[way].append(round(time.perf_counter() - t0, 2))
            print(f"{name} repeat {r + 1}/{repeats} {way}: {seconds[way][-1]:.1f} s", flush=True)
    a, b = (fitted[w].out_of_fold_.to_numpy() for w in ways)
    median = {w: statistics.median(s) for w, s in seconds.items()}
    return {"formulas": len(ref), "fits": config.surrogate_folds + 1, "trees": config.surrogate_trees,
            "leaves": config.surrogate_leaves, "seconds": seconds, "median_s": median,
            "ratio_workers_over_threads": round(median["two workers"] / median["two threads"], 3),
            "out_of_fold_mae": {w: fitted[w].mae_ for w in ways}, "max_abs_difference": float(np.max(np.abs(a - b)))}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--params", type=Path, default=DEFAULT_PARAMS)
    parser.add_argument("--properties", nargs="+", choices=PROPERTY_NAMES, default=list(PROPERTY_NAMES))
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", type=Path, default=HERE / "surrogate_workers_results.json")
    args = parser.parse_args(argv)
    params = load_section(TrainParams, "train", args.params)
    results = {"benchmark": "surrogate_workers", "cores": os.cpu_count(), "repeats": args.repeats,
               "properties": {p: run_property(p, params, args.repeats) for p in args.properties}}
    args.out.write_text(json.dumps(results, indent=1) + "\n", encoding="utf-8")
    for p, r in results["properties"].items():
        print(f"{p}: median {r['median_s']['two threads']:.1f} s on two threads, {r['median_s']['two workers']:.1f} s "
              f"in two workers (ratio {r['ratio_workers_over_threads']:.2f}); out-of-fold values apart by at most "
              f"{r['max_abs_difference']:.1e}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
