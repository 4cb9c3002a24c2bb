"""The project's Sinkhorn (:func:`models.transport.cloud_sinkhorn`) beside POT's dense solver, in one process per problem.

``python -m benchmarks.ot_solver [--quick] [--repeats R] [--out benchmarks/ot_solver_results.json]``;
the last stdout line is one JSON object, and a Markdown table is written beside it.

Three kinds of problem, squared-Euclidean cost over the mean squared distance, uniform masses,
reg 0.01, rho 1, stop threshold 1e-6 (POT's ``stopThr``; ours: the largest log-scaling change):

* ``clustered``: the project's own benchmark shape (``benchmarks/align.py``; d = 32, about 500
  sources per cluster); the entropic plan is negligible across clusters: the sparse kernel;
* ``gaussian``: one unclustered cloud (d = 32, targets shifted by 0.5); a fifth to a quarter of
  all pairs matter: the dense kernel;
* ``magpie``: real composition descriptors (``data/features/descriptors.parquet``, standardised,
  constant columns dropped): random disjoint formulas with the target side shifted by 0.1
  (the issue's problem), and ``pipeline``: the align stage's real clouds without the hard block,
  every band-gap DFT entry's formula (source) against every measured band-gap formula (target).

Per problem a worker process builds the clouds, warms both solvers up on a small problem, then
runs POT (``ot.dist`` + ``ot.unbalanced.sinkhorn_unbalanced``) and ours ``repeats`` times in
alternating order (so load hits both alike); it reports median seconds, the median of the paired
ratios, the peak memory each call allocated (tracemalloc: numpy's allocations), the regime ours
chose, its certificate, and the objective gap to the stable reference: POT's dense solver where
it ran without a numerical warning and moved mass, else (real descriptors up to 10,000 x 2,000)
the project's independent log-domain solver (:func:`models.transport.online_sinkhorn`, torch, on
the CPU: no kernel matrix, nothing to underflow), else none. POT's own log-stabilised unbalanced
solver (``method="sinkhorn_stabilized"``) is no reference here: on these clouds it does not
converge (3,000 x 600: 275 s, objective 8x POT's plain one). Objectives are one primal functional
(:func:`models.transport.unbalanced_objective`, blocked) evaluated on each plan.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
import tracemalloc
import warnings
from pathlib import Path

import numpy as np

REG, REG_M, TOL = 0.01, 1.0, 1e-6
FULL = [("clustered", 20000, 4000), ("gaussian", 20000, 4000), ("clustered", 10000, 2000), ("gaussian", 10000, 2000),
        ("magpie", 3000, 600), ("magpie", 10000, 2000), ("pipeline", 0, 0)]
QUICK = [("clustered", 4000, 800), ("gaussian", 4000, 800), ("magpie", 3000, 600)]


def clouds(kind: str, n: int, m: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(1)
    if kind == "clustered":
        k = max(2, n // 500)
        c = rng.normal(size=(k, 32)) * 3.0
        return (c[rng.integers(0, k, n)] + rng.normal(size=(n, 32)) * 0.7,
                c[rng.integers(0, k, m)] + rng.normal(size=(m, 32)) * 0.7 + 0.2)
    if kind == "gaussian":
        return rng.normal(size=(n, 32)), rng.normal(size=(m, 32)) + 0.5
    import pandas as pd

    desc = pd.read_parquet("data/features/descriptors.parquet").set_index("formula")
    desc = desc.loc[:, desc.std() > 0]
    z = (desc - desc.mean()) / desc.std()
    if kind == "magpie":
        v = z.to_numpy()[rng.permutation(len(z))]
        return v[:n], v[n : n + m] + 0.1
    dft = pd.read_parquet("data/raw/dft.parquet", columns=["formula", "band_gap_pbe"]).dropna()
    exp = pd.read_parquet("data/raw/experiment.parquet", columns=["formula", "property"])
    exp = exp[exp["property"] == "band_gap"]
    return (z.reindex(dft["formula"]).dropna().to_numpy(), z.reindex(exp["formula"]).dropna().to_numpy())


def _objective(P, M, a, b, reg=REG, reg_m=REG_M) -> float:
    # the shared primal functional, evaluated block by block on a dense plan
    from models.transport.sinkhorn import _dense_objective

    return _dense_objective(P, M, a, b, reg, reg_m)[0]


def _measure(fn):
    tracemalloc.start()
    t0 = time.perf_counter()
    out = fn()
    seconds = time.perf_counter() - t0
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    return out, seconds, peak / 2**30


def _pot(x, y, scale, a, b, method="sinkhorn"):
    import ot

    M = ot.dist(x, y) / scale
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with np.errstate(all="ignore"):
            P = ot.unbalanced.sinkhorn_unbalanced(a, b, M, REG, REG_M, method=method, stopThr=TOL, numItermax=100000)
    ok = bool(np.isfinite(P).all() and P.sum() > 1e-3 and not caught)
    obj = _objective(P, M, a, b) if np.isfinite(P).all() else float("nan")
    return {"objective": obj, "mass": float(P.sum()) if np.isfinite(P).all() else float("nan"), "stable": ok,
            "warnings": sorted({str(w.message)[:80] for w in caught})}


def _ours(x, y, scale):
    from models.transport import cloud_sinkhorn

    res = cloud_sinkhorn(x, y, reg=REG, reg_m=REG_M, scale=scale, tol=TOL, omega="auto", eps_start=4 * REG,
                         iter_per_eps=10)
    return {"objective": res.objective, "mass": res.mass, "regime": res.regime, "iterations": res.n_iter,
            "support_fraction": round(res.support_fraction, 4), "rounds": res.rounds, "converged": res.converged,
            "certificate": res.certificate.as_dict()}


def worker(kind: str, n: int, m: int, repeats: int, log_reference: bool) -> dict:
    from models.transport import cloud_sinkhorn, sqeuclidean_scale

    x, y = clouds(kind, n, m)
    n, m = len(x), len(y)
    scale = sqeuclidean_scale(x, y)
    a, b = np.full(n, 1.0 / n), np.full(m, 1.0 / m)
    wx, wy = x[:300], y[:60]  # warm-up: imports, BLAS and torch threads, for both
    cloud_sinkhorn(wx, wy, reg=REG, reg_m=REG_M, tol=TOL)
    _pot(wx, wy, sqeuclidean_scale(wx, wy), np.full(300, 1 / 300), np.full(60, 1 / 60))
    runs = {"pot": [], "ours": []}
    for k in range(repeats):
        order = ("pot", "ours") if k % 2 == 0 else ("ours", "pot")
        for who in order:
            fn = (lambda: _pot(x, y, scale, a, b)) if who == "pot" else (lambda: _ours(x, y, scale))
            out, seconds, peak = _measure(fn)
            runs[who].append({**out, "seconds": seconds, "peak_gib": peak})
    pot, ours = runs["pot"][0], runs["ours"][0]
    ref, ref_name = (pot["objective"], "pot_dense") if pot["stable"] else (None, None)
    if ref is None and log_reference:
        from models.transport import online_sinkhorn

        out, seconds, _ = _measure(lambda: online_sinkhorn(x, y, a, b, reg=REG, reg_m=REG_M, scale=scale, tol=TOL,
                                                           device="cpu", eps_start=4 * REG, iter_per_eps=10))
        if out.converged:
            ref, ref_name = out.objective, f"online log-domain, CPU ({seconds:.0f} s)"
    med = lambda who, key: statistics.median(r[key] for r in runs[who])  # noqa: E731
    ratios = [p["seconds"] / o["seconds"] for p, o in zip(runs["pot"], runs["ours"], strict=True)]
    return {"kind": kind, "n": n, "m": m, "repeats": repeats, "load_1min": os.getloadavg()[0],
            "pot_s": round(med("pot", "seconds"), 3), "ours_s": round(med("ours", "seconds"), 3),
            "speedup_median": round(statistics.median(ratios), 2), "speedup_min": round(min(ratios), 2),
            "pot_peak_gib": round(med("pot", "peak_gib"), 3), "ours_peak_gib": round(med("ours", "peak_gib"), 3),
            "pot_stable": pot["stable"], "pot_warnings": pot["warnings"], "pot_mass": pot["mass"],
            "ours_mass": ours["mass"], "regime": ours["regime"], "support_fraction": ours["support_fraction"],
            "iterations": ours["iterations"], "rounds": ours["rounds"], "converged": ours["converged"],
            "certificate": ours["certificate"], "reference": ref_name,
            "objective_rel_gap": None if ref is None else abs(ours["objective"] - ref) / abs(ref)}


def _table(rows: list[dict]) -> str:
    head = ("| problem | n x m | POT s | ours s | speed-up (median, min) | POT / ours peak GiB | regime | "
            "certificate residual / outside mass | objective gap (reference) |\n|---|---|---|---|---|---|---|---|---|\n")
    lines = []
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['kind']} | {r.get('n')} x {r.get('m')} | {r['error']} |||||||")
            continue
        c = r["certificate"]
        gap = "n/a" if r["objective_rel_gap"] is None else f"{r['objective_rel_gap']:.1e} ({r['reference']})"
        pot = f"{r['pot_s']:.2f}" + ("" if r["pot_stable"] else " (failed: " + "; ".join(r["pot_warnings"])[:60] + ")")
        lines.append(f"| {r['kind']} | {r['n']} x {r['m']} | {pot} | {r['ours_s']:.2f} | {r['speedup_median']:.1f}x, "
                     f"{r['speedup_min']:.1f}x | {r['pot_peak_gib']:.2f} / {r['ours_peak_gib']:.2f} | {r['regime']} "
                     f"({r['support_fraction']:.3f}) | {c['residual']:.1e} / {c['pruned_mass'] + c['truncation_bound']:.1e}"
                     f" | {gap} |")
    return head + "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="small problems only (a minute)")
    ap.add_argument("--repeats", type=int, default=3, help="paired runs per problem (default 3)")
    ap.add_argument("--out", default="benchmarks/ot_solver_results.json")
    ap.add_argument("--worker", nargs=3, metavar=("KIND", "N", "M"), help=argparse.SUPPRESS)
    ap.add_argument("--log-reference", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        kind, n, m = args.worker
        print(json.dumps(worker(kind, int(n), int(m), args.repeats, args.log_reference)))
        return
    rows = []
    for kind, n, m in QUICK if args.quick else FULL:
        cmd = [sys.executable, "-m", "benchmarks.ot_solver", "--worker", kind, str(n), str(m),
               "--repeats", str(1 if kind == "pipeline" else args.repeats)]
        if kind == "magpie":
            cmd.append("--log-reference")
        proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
        row = (json.loads(proc.stdout.strip().splitlines()[-1]) if proc.returncode == 0
               else {"kind": kind, "n": n, "m": m, "error": (proc.stderr.strip().splitlines() or ["failed"])[-1]})
        print(json.dumps(row), flush=True)
        rows.append(row)
    out = Path(args.out)
    out.write_text(json.dumps(rows, indent=1) + "\n")
    out.with_suffix(".md").write_text(_table(rows))
    print(json.dumps(rows))


if __name__ == "__main__":
    main()
