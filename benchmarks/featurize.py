"""Featurize throughput and memory on the mirror's structures and compositions.

``python -m benchmarks.featurize [--quick] [--runs N]``; the last stdout line is one JSON
object with the figures. Measured:

- crystal graphs (parse from ``as_dict`` dicts + spglib canonicalisation + neighbours +
  ``Data`` assembly) for the mirror's MP structures (6,317) and the 18,928 perovskites, with
  1 and 2 worker processes (after a warm-up that loads the element tables and imports);
  peak memory = largest sum of PSS (proportional set size: pages shared after fork are
  split, not double-counted) over this process and its children, sampled every 50 ms;
- the floor: the bare periodic neighbour search (``find_points_in_spheres``) on the same
  canonical cells, against graph assembly from those cells (canonicalisation excluded):
  neighbour lists + packing into the graphs.pt tensors, as the stage does; the Gaussian
  expansion of edge_attr (done by ``load_graphs``, not stored) is timed separately;
- canonicalisation alone;
- composition descriptors for the 43,921 compositions of ``mp_non_metals_band_gap.csv`` plus
  the experimental ones: our vectorised implementation, and matminer's ``featurize_many`` on
  a subset (its rate extrapolated to the full set).

Figures are medians over ``--runs`` runs. The machine is shared: timings are noisy.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import pandas as pd
import psutil

from benchmarks.mirror import MIRROR, mp_structures, perovskites
from featurizers.chemistry import reduced_formula
from featurizers.composition import composition_descriptors, matminer_descriptors
from featurizers.crystal_graph import (
    CrystalGraphFeaturizer,
    GraphArrays,
    canonicalise,
    periodic_neighbours,
)


class PeakRSS:
    """Sample PSS of this process plus its children in a thread; ``peak`` in MiB."""

    def __init__(self, interval: float = 0.05) -> None:
        self.interval = interval
        self.peak = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        me = psutil.Process()
        while not self._stop.is_set():
            total = 0
            for proc in [me, *me.children(recursive=True)]:
                try:
                    # PSS splits pages shared after fork between processes (no double count)
                    total += proc.memory_full_info().pss
                except psutil.Error:  # child exited between listing and reading
                    continue
            self.peak = max(self.peak, total / 2**20)
            time.sleep(self.interval)

    def __enter__(self) -> PeakRSS:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def timed(fn: Callable[[], Any], runs: int) -> tuple[float, list[float], Any]:
    times, out = [], None
    for _ in range(runs):
        t0 = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), times, out


def bench_graphs(items: list[tuple[str, dict]], featurizer: CrystalGraphFeaturizer, runs: int) -> dict[str, Any]:
    out: dict[str, Any] = {"n_structures": len(items)}
    for workers in (1, 2):
        times, peaks = [], []
        n_fail = 0
        for _ in range(runs):
            with PeakRSS() as mem:
                t0 = time.perf_counter()
                # the stage's path: arrays from the workers, packed once for graphs.pt
                batch = featurizer.featurize_many(items, n_workers=workers, chunk_size=128, as_data=False)
                featurizer.pack_arrays(batch.graphs)
                times.append(time.perf_counter() - t0)
            peaks.append(mem.peak)
            n_fail = len(batch.failures)
            del batch
        med = statistics.median(times)
        out[f"workers{workers}"] = {
            "seconds_median": round(med, 2),
            "seconds_runs": [round(t, 2) for t in times],
            "structures_per_s": round(len(items) / med, 1),
            "peak_pss_mib_median": round(statistics.median(peaks), 1),
            "failures": n_fail,
        }
        print(f"  graphs, {workers} worker(s): {med:.1f} s ({len(items) / med:.0f}/s)", file=sys.stderr)
    return out


def bench_floor(items: list[tuple[str, dict]], featurizer: CrystalGraphFeaturizer, runs: int) -> dict[str, Any]:
    from pymatgen.optimization.neighbors import find_points_in_spheres

    cells = []
    t0 = time.perf_counter()
    for sid, s in items:
        lattice, frac, numbers = featurizer._cell(s, sid)
        cells.append(canonicalise(lattice, frac, numbers, symprec=featurizer.symprec,
                                  angle_tolerance=featurizer.angle_tolerance))
    canon_s = time.perf_counter() - t0
    prepared = [(np.ascontiguousarray(c.lattice), np.ascontiguousarray(c.frac @ c.lattice)) for c in cells]
    pbc = np.array([1, 1, 1], dtype=np.int64)

    def bare() -> int:
        n = 0
        for lat, cart in prepared:
            n += len(find_points_in_spheres(cart, cart, r=featurizer.cutoff, pbc=pbc, lattice=lat, tol=1e-8)[0])
        return n

    def assembly() -> int:
        arrays = {}
        for (sid, _), c in zip(items, cells, strict=True):
            ei, d = periodic_neighbours(c.lattice, c.frac, cutoff=featurizer.cutoff)
            arrays[sid] = GraphArrays(z=c.numbers, edge_index=ei, edge_dist=d, spacegroup=c.spacegroup,
                                      num_sites=len(c.numbers), volume_per_atom=1.0)
        payload = featurizer.pack_arrays(arrays)
        return int(payload["edge_index"].shape[1])

    bare_med, bare_runs, _ = timed(bare, runs)
    asm_med, asm_runs, n_edges = timed(assembly, runs)
    dists = np.concatenate([periodic_neighbours(c.lattice, c.frac, cutoff=featurizer.cutoff)[1] for c in cells])
    expand_med, _, _ = timed(lambda: featurizer.expand_distances(dists), runs)
    print(f"  floor: bare {bare_med:.2f} s, assembly {asm_med:.2f} s, canonicalise {canon_s:.1f} s", file=sys.stderr)
    return {
        "n_structures": len(items),
        "n_edges": int(n_edges),
        "canonicalise_seconds_1worker": round(canon_s, 2),
        "bare_neighbour_search_seconds_median": round(bare_med, 3),
        "graph_assembly_seconds_median": round(asm_med, 3),
        "assembly_over_bare": round(asm_med / bare_med, 2),
        "edge_attr_expansion_seconds_median": round(expand_med, 3),
        "assembly_with_expansion_over_bare": round((asm_med + expand_med) / bare_med, 2),
        "bare_runs": [round(t, 3) for t in bare_runs],
        "assembly_runs": [round(t, 3) for t in asm_runs],
    }


def bench_descriptors(runs: int, quick: bool) -> dict[str, Any]:
    mp = pd.read_csv(MIRROR / "mp" / "mp_non_metals_band_gap.csv")["composition"].tolist()
    exp = pd.read_csv(MIRROR / "experiment" / "expt_gap_zhuo2018.csv")["composition"].tolist()
    exp += pd.read_csv(MIRROR / "experiment" / "expt_formation_enthalpy_ssub.csv")["formula"].tolist()
    formulas = mp + exp
    if quick:
        formulas = formulas[::10]
    med, all_runs, res = timed(lambda: composition_descriptors(formulas), runs)
    n_distinct = len(res.frame) + len(res.failures)
    # the stage keys by reduced formula; measure that step too
    red_med, _, _ = timed(lambda: [reduced_formula(f) for f in formulas], 1)
    n_mm = 500 if quick else 2000
    sample = res.frame["formula"].tolist()[:n_mm]
    mm = {}
    for jobs in (1, 2):
        t, _, _ = timed(lambda jobs=jobs: matminer_descriptors(sample, n_jobs=jobs), 1)
        mm[f"matminer_jobs{jobs}_per_s"] = round(n_mm / t, 1)
        mm[f"matminer_jobs{jobs}_extrapolated_seconds"] = round(n_distinct / (n_mm / t), 1)
    print(f"  descriptors: {n_distinct} distinct in {med:.2f} s; matminer {mm}", file=sys.stderr)
    return {
        "n_formulas": len(formulas),
        "n_distinct": n_distinct,
        "n_failures": len(res.failures),
        "failures": [f"{f.formula}: {f.reason}" for f in res.failures[:5]],
        "vectorised_seconds_median": round(med, 2),
        "vectorised_runs": [round(t, 2) for t in all_runs],
        "reduced_formula_seconds": round(red_med, 2),
        "matminer_sample": n_mm,
        **mm,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="subsets and one run (smoke test)")
    parser.add_argument("--runs", type=int, default=None, help="runs per figure (default 3; 1 with --quick)")
    args = parser.parse_args(argv)
    runs = args.runs or (1 if args.quick else 3)
    limit_mp, limit_pv = (400, 800) if args.quick else (None, None)
    mp = mp_structures(MIRROR, limit=limit_mp)
    pv = perovskites(MIRROR, limit=limit_pv)
    featurizer = CrystalGraphFeaturizer(on_error="record")
    print(f"featurize benchmark: {len(mp)} MP + {len(pv)} perovskites, {runs} run(s); {featurizer}", file=sys.stderr)
    items = list(mp.items()) + list(pv.items())
    featurizer.featurize_many(items[:20], n_workers=1)  # warm-up: imports, element tables
    result: dict[str, Any] = {
        "runs": runs,
        "quick": args.quick,
        "cpu_count": psutil.cpu_count(),
        "load_avg_1min_at_start": round(psutil.getloadavg()[0], 2),
        "config": {"cutoff": featurizer.cutoff, "embedding": featurizer.embedding, "symprec": featurizer.symprec},
    }
    result["graphs_all"] = bench_graphs(items, featurizer, runs)
    result["floor_mp"] = bench_floor(list(mp.items()), featurizer, runs)
    result["floor_perovskites"] = bench_floor(list(pv.items()), featurizer, runs)
    result["descriptors"] = bench_descriptors(runs, args.quick)
    result["load_avg_1min_at_end"] = round(psutil.getloadavg()[0], 2)
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
