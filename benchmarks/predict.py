"""Time `matshift predict`: first prediction with the model load, and 1,000 formulas after it.

* cold: ``matshift predict GaAs --property P`` as a fresh process (interpreter start, imports,
  model load, DFT lookup, one prediction, table printed), ``--repeats`` times; median wall time.
* warm: one :func:`pipeline.predict.load_predictor` in this process, then
  :func:`pipeline.predict.predict_items` on 1,000 formulas (a seeded sample of the mirror's
  measured and DFT formulas, half of them never measured), ``--repeats`` times; median.

Run after ``dvc repro`` (it reads ``data/models/P`` and ``data/raw``):
``PYTHONPATH=. python -m benchmarks.predict --property band_gap --repeats 5``.
Prints one JSON line.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parents[1]


def cold(prop: str, repeats: int) -> list[float]:
    exe = Path(sys.executable).with_name("matshift")
    cmd = [str(exe)] if exe.exists() else [sys.executable, "-m", "pipeline.cli"]
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        res = subprocess.run([*cmd, "--quiet", "predict", "GaAs", "--property", prop], cwd=ROOT, capture_output=True,
                             text=True, env={**os.environ, "PYTHONPATH": str(ROOT)})
        times.append(time.perf_counter() - t0)
        if res.returncode != 0:
            raise SystemExit(f"matshift predict failed: {res.stderr[-2000:]}")
    print(res.stdout, file=sys.stderr)
    return times


def formulas(n: int, seed: int = 0, raw_dir: Path = ROOT / "data/raw") -> list[str]:
    exp = pd.read_parquet(raw_dir / "experiment.parquet", columns=["formula"])["formula"].unique()
    dft = pd.read_parquet(raw_dir / "dft.parquet", columns=["formula"])["formula"].unique()
    rng = np.random.default_rng(seed)
    unmeasured = np.setdiff1d(dft, exp)
    half = min(n // 2, len(exp), len(unmeasured))
    return [*rng.choice(exp, half, replace=False), *rng.choice(unmeasured, half, replace=False)]


def warm(prop: str, repeats: int, n: int) -> tuple[float, list[float], int]:
    from featurizers.inputs import parse_formula_input
    from models.properties import get_property
    from models.serving import predict_items
    from pipeline.predict import load_predictor

    t0 = time.perf_counter()
    predictor = load_predictor(None, property=prop)
    load_s = time.perf_counter() - t0
    names = formulas(n)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        items = [parse_formula_input(f) for f in names]
        frame = predict_items(items, predictor, unit=get_property(prop).unit)
        times.append(time.perf_counter() - t0)
    return load_s, times, int(frame["prediction"].notna().sum())


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--property", default="band_gap", choices=["band_gap", "formation_enthalpy"])
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--n", type=int, default=1000)
    args = p.parse_args(argv)
    c = cold(args.property, args.repeats)
    load_s, w, ok = warm(args.property, args.repeats, args.n)
    print(json.dumps({
        "property": args.property, "cold_first_prediction_s": c, "cold_median_s": statistics.median(c),
        "warm_load_s": load_s, f"warm_{args.n}_formulas_s": w, "warm_median_s": statistics.median(w),
        "predicted": ok, "load_average": os.getloadavg()[0],
    }))
    return 0


if __name__ == "__main__":
    sys.exit(main())
