"""Featurization throughput on the local and the Dask engine, and the projected cost of 150,000 structures.

``python -m benchmarks.scale [--quick] [--runs N] [--limit N]``; the last stdout line is one
JSON object with the figures. Measured on the mirror's 18,928 perovskites
(``scale/perov5_heat_ref.json.zip``) plus its distinct MP structures (loaders shared with
``benchmarks/featurize.py``), as the featurize stage sees them (JSON strings, chunks of 128,
crystal graphs kept as arrays):

- ``local`` engine with 1 and 2 worker processes, ``dask`` engine (``LocalCluster``,
  processes, 1 thread each) with 1 and 2 workers; cluster start-up is timed separately;
- a digest of every run's graphs (ids, edges, distances, in order): the engines must agree;
- the curve ``(structures done, seconds)`` recorded as chunks arrive, fitted by least squares
  to ``t = t0 + n / rate``; the projection for 150,000 structures is ``t0 + 150000 / rate``
  for each configuration (the perovskites and MP cells are small, 5-40 atoms; larger cells
  cost more per structure, so the projection holds for cells of this size).

``--quick`` uses 1,500 structures and one run. The machine is shared: the load average is
recorded with every figure; compare configurations measured under the same load only.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import statistics
import time
from collections.abc import Callable, Iterable
from typing import Any

import numpy as np

from benchmarks.mirror import mp_structures, perovskites
from featurizers.crystal_graph import CrystalGraphFeaturizer
from pipeline.engine import open_engine

CHUNK = 128
PROJECT_TO = 150_000


def load_items(limit: int | None) -> list[tuple[str, str]]:
    """Perovskites then MP structures, as (id, structure JSON) in a fixed order."""
    per = perovskites()
    mp = mp_structures()
    items = [(k, json.dumps(v)) for k, v in per.items()] + [(k, json.dumps(v)) for k, v in mp.items()]
    return items[:limit] if limit else items


def digest(graphs: dict[str, Any]) -> str:
    h = hashlib.sha256()
    for sid, g in graphs.items():
        h.update(sid.encode())
        h.update(np.ascontiguousarray(g.edge_index).tobytes())
        h.update(np.ascontiguousarray(g.edge_dist).tobytes())
        h.update(np.ascontiguousarray(g.z).tobytes())
    return h.hexdigest()[:16]


class Clock:
    """Wraps an engine's map to record (structures done, seconds since start) as chunks arrive."""

    def __init__(self, mapper: Callable[..., Iterable[Any]]) -> None:
        self.mapper = mapper
        self.t0 = time.perf_counter()
        self.curve: list[tuple[int, float]] = []

    def __call__(self, fn, *iterables):
        done = 0
        self.t0 = time.perf_counter()
        for res in self.mapper(fn, *iterables):
            done += len(res)
            self.curve.append((done, time.perf_counter() - self.t0))
            yield res


def fit_curve(curve: list[tuple[int, float]]) -> tuple[float, float]:
    """Least-squares ``t = t0 + n / rate`` over the curve; returns (t0, rate)."""
    n = np.array([c[0] for c in curve], float)
    t = np.array([c[1] for c in curve], float)
    if n.size < 2:
        return 0.0, float(n[-1] / t[-1])
    slope, t0 = np.polyfit(n, t, 1)
    return float(t0), float(1.0 / slope)


def run_config(engine: str, workers: int, items: list[tuple[str, str]], featurizer: CrystalGraphFeaturizer) -> dict:
    t_start = time.perf_counter()
    with open_engine(engine, n_workers=workers) as eng:
        startup = time.perf_counter() - t_start
        clock = Clock(eng.map)
        t0 = time.perf_counter()
        batch = featurizer.featurize_many(items, chunk_size=CHUNK, as_data=False, mapper=clock)
        seconds = time.perf_counter() - t0
    t0_fit, rate = fit_curve(clock.curve)
    return {
        "engine": engine, "workers": workers, "structures": len(items), "graphs": len(batch.graphs),
        "failures": len(batch.failures), "startup_s": startup, "seconds": seconds,
        "structures_per_s": len(items) / seconds, "fit_t0_s": t0_fit, "fit_rate_per_s": rate,
        "projected_150k_s": startup + t0_fit + PROJECT_TO / rate, "digest": digest(batch.graphs),
        "load_avg_1min": os.getloadavg()[0],
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="1,500 structures, one run")
    parser.add_argument("--runs", type=int, default=1, help="runs per configuration (median reported)")
    parser.add_argument("--limit", type=int, default=None, help="first N structures only")
    parser.add_argument("--configs", default="local:1,local:2,dask:1,dask:2",
                        help="comma-separated engine:workers list")
    args = parser.parse_args(argv)
    limit = 1500 if args.quick else args.limit
    runs = 1 if args.quick else max(1, args.runs)
    items = load_items(limit)
    featurizer = CrystalGraphFeaturizer(on_error="record")
    featurizer.featurize_many(items[:8], as_data=False)  # warm-up: element tables, imports
    print(f"{len(items)} structures; load average {os.getloadavg()}", flush=True)
    results = []
    for spec in args.configs.split(","):
        engine, workers = spec.split(":")
        reps = [run_config(engine, int(workers), items, featurizer) for _ in range(runs)]
        med = dict(reps[0])
        for key in ("startup_s", "seconds", "structures_per_s", "fit_t0_s", "fit_rate_per_s", "projected_150k_s",
                    "load_avg_1min"):
            med[key] = statistics.median(r[key] for r in reps)
        med["runs"] = runs
        med["digests_agree_across_runs"] = len({r["digest"] for r in reps}) == 1
        results.append(med)
        print(f"{engine}:{workers}  {med['seconds']:.1f} s  {med['structures_per_s']:.0f} structures/s  "
              f"start-up {med['startup_s']:.1f} s  150k projected {med['projected_150k_s'] / 60:.1f} min  "
              f"load {med['load_avg_1min']:.1f}  digest {med['digest']}", flush=True)
    summary = {
        "benchmark": "scale", "structures": len(items), "chunk_size": CHUNK, "results": results,
        "digests_identical_across_engines": len({r["digest"] for r in results}) == 1,
        "cpu_count": os.cpu_count(),
    }
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
