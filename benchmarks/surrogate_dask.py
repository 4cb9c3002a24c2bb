"""The stacked model's DFT surrogate at k x the mirror: local LightGBM vs LightGBM's Dask interface.

``python -m benchmarks.surrogate_dask [--scale 10] [--work DIR] [--runs 2]``; appends its figures
to ``benchmarks/surrogate_dask_results.json`` and prints them. The inputs are
:mod:`benchmarks.cost_curve`'s scaled tables (``matshift fetch`` of the mirror, ``scaled_raw``,
then ``matshift featurize``; reused when ``--work`` already holds them). Timed, one after the
other on the same inputs: :meth:`models.learners.DFTSurrogate.fit` with params.yaml's
``train.stack`` settings on this process's 2 LightGBM threads, and the same fit on a
``LocalCluster`` of 2 worker processes of one thread (``train.engine: dask``), cluster start-up
timed apart. Both report their out-of-fold MAE: the distributed fit must learn as well.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from pathlib import Path

import pandas as pd

from benchmarks.cost_curve import ROOT, run_stage, scaled_raw, stage_params

RESULTS = ROOT / "benchmarks" / "surrogate_dask_results.json"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--scale", type=int, default=10)
    ap.add_argument("--work", type=Path, default=Path("/tmp/matshift-cost-curve"))
    ap.add_argument("--runs", type=int, default=2)
    a = ap.parse_args(argv)
    # deferred: LightGBM, Dask and the library only once the arguments are valid
    from dask.distributed import Client, LocalCluster

    from models.learners import DFTSurrogate
    from models.properties import get_property, reference_per_formula
    from pipeline.config import load_section
    from pipeline.params.train import TrainParams

    a.work.mkdir(parents=True, exist_ok=True)
    params = stage_params(a.work, a.scale)
    if not (a.work / "raw_1/dft.parquet").is_file():
        run_stage(["fetch", "--params", str(stage_params(a.work, 1))], a.work / "fetch.log")
    raw, feats = a.work / f"raw_{a.scale}", a.work / f"features_{a.scale}"
    if not (raw / "dft.parquet").is_file():
        scaled_raw(a.work / "raw_1", raw, a.scale)
    if not (feats / "descriptors.parquet").is_file():
        run_stage(["featurize", "--params", str(params)], a.work / f"featurize_{a.scale}.log")
    prop = get_property("band_gap")
    dft = pd.read_parquet(raw / "dft.parquet", columns=["material_id", "formula", prop.dft_column,
                                                        "formation_energy_per_atom"])
    desc = pd.read_parquet(feats / "descriptors.parquet")
    ref = reference_per_formula(dft.rename(columns={prop.dft_column: "dft_value"}).dropna(subset=["dft_value"]))
    config = load_section(TrainParams, "train", ROOT / "params.yaml").fit.stack_config(prop)
    out: dict = {"scale": a.scale, "formulas": len(ref), "descriptor_columns": desc.shape[1] - 1,
                 "load_before": round(os.getloadavg()[0], 2), "local_s": [], "dask_s": []}
    for _ in range(a.runs):
        t0 = time.perf_counter()
        local = DFTSurrogate(config).fit(desc, ref)
        out["local_s"].append(round(time.perf_counter() - t0, 1))
    t0 = time.perf_counter()
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None,
                      silence_logs=40) as cluster, Client(cluster) as client:
        out["cluster_start_s"] = round(time.perf_counter() - t0, 1)
        for _ in range(a.runs):
            t0 = time.perf_counter()
            spread = DFTSurrogate(config).fit(desc, ref, client=client)
            out["dask_s"].append(round(time.perf_counter() - t0, 1))
    out |= {"local_median_s": statistics.median(out["local_s"]), "dask_median_s": statistics.median(out["dask_s"]),
            "oof_mae_local": round(local.mae_, 4), "oof_mae_dask": round(spread.mae_, 4)}
    history = json.loads(RESULTS.read_text()) if RESULTS.is_file() else []
    RESULTS.write_text(json.dumps([*history, out], indent=1) + "\n")
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
