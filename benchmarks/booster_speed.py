"""Seconds to fit one booster of the stacked model on the mirror's band-gap measurements, per LightGBM setting.

The booster is the one :class:`models.learners.StackedModel` fits on the measurements (params.yaml's
``train.stack``: trees, leaves, rate, subsampling; one thread, as in the evaluate folds), on the
Magpie descriptors of the 3,195 measured rows plus 30 noise columns standing in for the DFT,
surrogate, OT and bonding columns (the speed depends on the shape, not on the values). Each
setting is fitted ``--repeats`` times; the median is reported, the base setting first and last
so that a drift of the machine shows.

Run after ``dvc repro featurize``: ``PYTHONPATH=. python -m benchmarks.booster_speed``.
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
import pandas as pd

from pipeline.config import load_section
from pipeline.params.train import TrainParams

SETTINGS = {
    "params.yaml (colsample 0.5: band gaps)": {},
    "colsample 0.3 (formation enthalpy: train.stack.colsample_for)": {"colsample_bytree": 0.3},
    "colsample 0.3, max_bin 255 (LightGBM's default)": {"colsample_bytree": 0.3, "max_bin": 255},
    "colsample 0.3, max_bin 31": {"colsample_bytree": 0.3, "max_bin": 31},
    "colsample 0.3, 400 trees at rate 0.06": {"colsample_bytree": 0.3, "n_estimators": 400, "learning_rate": 0.06},
    "params.yaml again": {},
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args(argv)
    import lightgbm as lgb

    params = load_section(TrainParams, "train", args.params)
    c = params.fit.stack.config
    desc = pd.read_parquet(params.features_dir / "descriptors.parquet").drop_duplicates("formula")
    desc = desc.set_index("formula").select_dtypes("number")
    exp = pd.read_parquet(params.raw_dir / "experiment.parquet")
    exp = exp[exp["property"] == "band_gap"]
    x = desc.loc[exp["formula"]].to_numpy(np.float32)
    x = np.hstack([x, np.random.default_rng(0).normal(size=(len(x), 30)).astype(np.float32)])
    y = exp["value"].to_numpy(float)
    base = dict(objective=c.objective, n_estimators=c.trees, num_leaves=c.leaves, learning_rate=c.lr,
                subsample=c.subsample, subsample_freq=1, colsample_bytree=c.colsample,
                min_child_samples=c.min_child_samples, max_bin=c.max_bin, random_state=0, n_jobs=1, verbose=-1)
    out = {"rows": int(x.shape[0]), "columns": int(x.shape[1]), "seconds": {}}
    for name, overrides in SETTINGS.items():
        times = []
        for _ in range(args.repeats):
            t0 = time.perf_counter()
            lgb.LGBMRegressor(**{**base, **overrides}).fit(x, y)
            times.append(time.perf_counter() - t0)
        out["seconds"][name] = float(np.median(times))
        print(f"{name}: {np.median(times):.2f} s (median of {args.repeats})", flush=True)
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
