"""Speed, memory and accuracy of the sparse unbalanced Sinkhorn against POT.

``python -m benchmarks.align [--quick]``; the last stdout line is one JSON object.

Problem: a clustered point cloud in d = 32 (cluster centres ~ N(0, 9 I), points ~ centre +
N(0, 0.49 I), about 500 source points per cluster, targets shifted by 0.2), uniform masses,
squared Euclidean cost divided by the mean squared distance over all pairs, eps = 0.01 and
rho = 1 in those units. Materials descriptors are clustered like this (chemical families); at this eps the entropic plan is dense inside a cluster and
negligible across clusters, which is what a sparse kernel exploits. With a fixed number of
clusters and growing n the plan itself has O(n m / K) non-negligible entries and no sparse
method can be sub-quadratic: the scaling curve therefore keeps the cluster size fixed.

Each measurement runs in a fresh subprocess (``--worker``) so that the peak RSS it reports
(``ru_maxrss``) belongs to that run alone; POT and our runs alternate, so that load on a
shared machine hits both alike, and each run records the 1-minute load average. POT is run
dense (``ot.dist`` + ``ot.unbalanced.sinkhorn_unbalanced``, same reg, reg_m, stop threshold);
ours includes the pair search (:func:`models.transport.radius_pairs`: exact, the pairs
within e^-40 of their row's or column's best kernel entry, found with their distances in
one blocked BLAS pass), and the solve (eps-scaling from 4 eps, ``omega="auto"``). Beyond
``--exact-limit`` pairs the scaling curve uses the exact cell-pruned search
(:func:`models.transport.radius_pairs_pruned`), or the approximate IVF search with
``--large-search ivf``; every scaling run is checked against the dense problem on
``--verify-rows`` sampled rows (off-support mass, dense first-order conditions). The
objectives are the same primal functional (:func:`models.transport.unbalanced_objective`)
evaluated on each plan, so ``objective_rel_gap_max`` is the distance of our restricted
optimum to POT's dense one; ``marginal_residual`` is a certificate that needs no
reference (the first-order conditions of the returned plan, relative).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time

import numpy as np

D = 32
REG = 0.01
REG_M = 1.0
TOL = 1e-6


def make_problem(n: int, m: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray, float]:
    rng = np.random.default_rng(seed)
    k = max(2, n // 500)
    centres = rng.normal(size=(k, D)) * 3.0
    x = centres[rng.integers(0, k, n)] + rng.normal(size=(n, D)) * 0.7
    y = centres[rng.integers(0, k, m)] + rng.normal(size=(m, D)) * 0.7 + 0.2
    # mean squared distance over all n x m pairs, in closed form
    scale = float((x * x).sum(1).mean() + (y * y).sum(1).mean() - 2.0 * x.mean(0) @ y.mean(0))
    return x, y, scale


def _dense_objective(P: np.ndarray, M: np.ndarray, a: np.ndarray, b: np.ndarray) -> float:
    from models.transport.sinkhorn import _gkl

    pos = P > 0
    q = np.outer(a, b)
    ent = float(np.sum(P[pos] * np.log(P[pos] / q[pos])) - P.sum() + a.sum() * b.sum())
    return float(np.sum(P * M) + REG * ent + REG_M * (_gkl(P.sum(1), a) + _gkl(P.sum(0), b)))


def _marginal_residual(res, a: np.ndarray, b: np.ndarray) -> float:
    """Largest violation of the unbalanced first-order conditions, relative (0 at the optimum).

    At the optimum of the KL-relaxed problem the row sums are ``a * exp(-f / rho)`` and the
    column sums ``b * exp(-g / rho)`` (f, g the dual potentials); this checks the returned
    plan against its own potentials, a certificate that needs no reference solver.
    """
    rs = np.bincount(res.rows, weights=res.plan, minlength=a.size)
    cs = np.bincount(res.cols, weights=res.plan, minlength=b.size)
    ok_r, ok_c = np.isfinite(res.f), np.isfinite(res.g)
    want_r = a[ok_r] * np.exp(-res.f[ok_r] / REG_M)
    want_c = b[ok_c] * np.exp(-res.g[ok_c] / REG_M)
    return float(max(np.max(np.abs(rs[ok_r] / want_r - 1.0), initial=0.0),
                     np.max(np.abs(cs[ok_c] / want_c - 1.0), initial=0.0)))


def _verify_rows(res, x, y, a, b, scale: float, n_rows: int, seed: int = 1) -> dict:
    """Check the sparse solution against the *dense* problem on a random sample of rows.

    With the returned potentials (f, g), the dense problem's plan would be
    ``a_i b_j exp((f_i + g_j - C_ij) / eps)`` on every pair. For sampled rows this computes
    it exactly on all m columns (one float64 distance row each), and reports (1) the share
    of that row mass lying off our support, scaled up to the whole plan (an unbiased
    estimate: the mass a dense solver would put where the sparse support has none), and
    (2) the largest relative violation of the dense first-order condition for those rows,
    ``sum_j P_ij = a_i exp(-f_i / rho)``. Both are 0 for the exact dense optimum.
    """
    import torch

    rng = np.random.default_rng(seed)
    n = a.size
    rows = np.sort(rng.choice(n, size=min(n_rows, n), replace=False))
    xs = torch.from_numpy(x[rows])
    yt = torch.from_numpy(y)
    C = (((xs * xs).sum(1)[:, None] + (yt * yt).sum(1)[None, :] - 2.0 * xs @ yt.T).clamp_min(0) / scale).numpy()
    g = np.where(np.isfinite(res.g), res.g, -np.inf)
    f = res.f[rows]
    ok = np.isfinite(f)
    with np.errstate(under="ignore"):
        P = a[rows][:, None] * b[None, :] * np.exp((f[:, None] + g[None, :] - C) / REG)
    P[~ok] = 0.0
    in_support = np.zeros(P.shape, dtype=bool)
    pos = np.searchsorted(rows, res.rows)
    hit = (pos < rows.size) & (rows[np.minimum(pos, rows.size - 1)] == res.rows)
    in_support[pos[hit], res.cols[hit]] = True
    off = float(P[~in_support].sum())
    total_plan = float(res.plan.sum())
    row_sum = P.sum(1)
    want = a[rows] * np.exp(-f / REG_M)
    return {
        "verify_rows": int(rows.size),
        "verify_off_support_mass_fraction_est": off * (n / rows.size) / total_plan if total_plan > 0 else 0.0,
        "verify_dense_row_condition_max": float(np.max(np.abs(row_sum[ok] / want[ok] - 1.0), initial=0.0)),
    }


def worker(spec: dict) -> dict:
    import torch

    torch.set_num_threads(spec.get("threads", 2))
    n, m, k = spec["n"], spec["m"], spec["k"]
    x, y, scale = make_problem(n, m)
    a = np.full(n, 1.0 / n)
    b = np.full(m, 1.0 / m)
    t0 = time.perf_counter()
    if spec["solver"] == "pot":
        import ot

        M = ot.dist(x, y) / scale
        t1 = time.perf_counter()
        P = ot.unbalanced.sinkhorn_unbalanced(a, b, M, REG, REG_M, stopThr=TOL, numItermax=100000)
        t2 = time.perf_counter()
        out = {"seconds": t2 - t0, "seconds_solve": t2 - t1, "objective": _dense_objective(P, M, a, b),
               "mass": float(P.sum())}
    else:
        from models.transport import (
            ivf_support,
            radius_pairs,
            radius_pairs_pruned,
            sparse_sinkhorn,
            truncation_bound,
        )

        search = spec.get("search", "radius")
        if search in ("radius", "pruned"):
            # exact: pairs within e^-40 of their row's or column's best kernel entry at eps = REG,
            # found with their squared distances (the costs come free): one blocked BLAS pass
            # over all pairs ("radius"), or over the cell combinations the bounds cannot rule out
            if search == "radius":
                found = radius_pairs(x, y, width=40.0 * REG * scale, threads=1)
            else:
                found = radius_pairs_pruned(x, y, width=40.0 * REG * scale)
            r, c, kth = found.rows, found.cols, found.floor
            cost = found.sqdist / scale
        else:
            r, c, kth = ivf_support(x, y, k_source=k, k_target=k, cell_size=2 * k, n_probe=3)
            search = "ivf"
            cost = np.empty(r.size)
            for s in range(0, r.size, 1_000_000):  # chunked: x[r] - y[c] at once is n_pairs x d doubles
                diff = x[r[s : s + 1_000_000]] - y[c[s : s + 1_000_000]]
                cost[s : s + 1_000_000] = np.einsum("ij,ij->i", diff, diff) / scale
        t1 = time.perf_counter()
        # eps-scaling from 4 eps, over-relaxation estimated by the solver (omega="auto")
        res = sparse_sinkhorn(a, b, r, c, cost, reg=REG, reg_m=REG_M, tol=TOL, omega="auto", eps_start=4 * REG,
                              iter_per_eps=10)
        t2 = time.perf_counter()
        out = {"seconds": t2 - t0, "seconds_search": t1 - t0, "seconds_solve": t2 - t1,
               "objective": res.objective, "mass": float(res.plan.sum()), "iterations": res.n_iter,
               "omega": res.omega, "converged": res.converged, "support": int(r.size),
               "support_after_pruning": int(res.rows.size),
               "truncation_bound": truncation_bound(res, a, b, kth / scale, REG), "search": search,
               "marginal_residual": _marginal_residual(res, a, b)}
        if spec.get("verify_rows"):
            out.update(_verify_rows(res, x, y, a, b, scale, spec["verify_rows"]))
    out["load_average_1min"] = os.getloadavg()[0]
    out["peak_rss_gib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    out.update(spec)
    return out


def run_worker(spec: dict, timeout: float) -> dict:
    cmd = [sys.executable, "-m", "benchmarks.align", "--worker", json.dumps(spec)]
    th = str(spec.get("threads", 2))
    env = dict(os.environ, OMP_NUM_THREADS=th, MKL_NUM_THREADS=th, OPENBLAS_NUM_THREADS=th)
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env, check=False)
    except subprocess.TimeoutExpired:
        return {**spec, "error": f"timed out after {timeout:.0f} s"}
    if proc.returncode != 0:
        return {**spec, "error": proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else "failed"}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="small sizes (< 2 min)")
    parser.add_argument("--repeats", type=int, default=None, help="runs of our solver per size (median)")
    parser.add_argument("--sizes", type=int, nargs="+", help="source sizes of the scaling curve")
    parser.add_argument("--only", choices=["compare", "scaling"], help="run one part only")
    parser.add_argument("--exact-limit", type=float, default=1e8,
                        help="scaling curve: exact radius search up to this many n*m pairs, IVF beyond")
    parser.add_argument("--large-search", choices=["pruned", "ivf"], default="pruned",
                        help="scaling curve beyond --exact-limit: exact cell-pruned search or approximate IVF")
    parser.add_argument("--timeout", type=float, default=600, help="seconds allowed to one scaling run")
    parser.add_argument("--verify-rows", type=int, default=2000,
                        help="scaling curve: rows on which each solution is checked against the dense problem")
    parser.add_argument("--threads", type=int, default=2,
                        help="BLAS/torch threads of every run, POT's and ours (default 2, the machine's cores)")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        print(json.dumps(worker(json.loads(args.worker))))
        return 0

    if args.quick:
        cmp_n, cmp_m, curve, repeats = 3000, 600, [1000, 4000, 10000], args.repeats or 1
    else:
        cmp_n, cmp_m, curve, repeats = 20000, 4000, [1000, 5000, 20000, 50000, 100000, 200000], args.repeats or 3
    if args.sizes:
        curve = args.sizes
    k_cmp = 128  # about one cluster of targets (m / clusters = 100 at 20,000 x 4,000)

    results: dict = {"problem": {"d": D, "reg": REG, "reg_m": REG_M, "tol": TOL, "machine_cores": os.cpu_count(),
                                 "threads": args.threads, "load_average_at_start": os.getloadavg()}}
    if args.only == "scaling":
        cmp_n = 0
    # interleaved (POT, ours) pairs, so that load on a shared machine hits both alike
    pots, ours = [], []
    for _ in range(repeats if cmp_n else 0):
        pots.append(run_worker({"solver": "pot", "n": cmp_n, "m": cmp_m, "k": 0, "threads": args.threads}, timeout=900))
        ours.append(run_worker({"solver": "ours", "n": cmp_n, "m": cmp_m, "k": k_cmp, "threads": args.threads}, timeout=600))
    ok = [r for r in ours if "error" not in r]
    pok = [r for r in pots if "error" not in r]
    cmp = {"n": cmp_n, "m": cmp_m, "pot_runs": pots, "ours_runs": ours}
    if ok and pok:
        t_ours = statistics.median(r["seconds"] for r in ok)
        t_pot = statistics.median(r["seconds"] for r in pok)
        cmp.update({
            "ours_seconds_median": t_ours,
            "pot_seconds_median": t_pot,
            "speedup_total": t_pot / t_ours,
            "speedup_total_per_pair": [p["seconds"] / o["seconds"] for p, o in zip(pots, ours, strict=True)
                                       if "error" not in p and "error" not in o],
            "speedup_solve": statistics.median(r["seconds_solve"] for r in pok)
            / statistics.median(r["seconds_solve"] for r in ok),
            "objective_rel_gap_max": max(abs(o["objective"] - p["objective"]) / abs(p["objective"])
                                         for o in ok for p in pok),
            "ours_peak_rss_gib": max(r["peak_rss_gib"] for r in ok),
            "pot_peak_rss_gib": max(r["peak_rss_gib"] for r in pok),
            "load_average_1min": [r["load_average_1min"] for r in pots + ours if "load_average_1min" in r],
        })
    results["vs_pot"] = cmp
    print(f"vs POT at {cmp_n} x {cmp_m}: {json.dumps({k: v for k, v in cmp.items() if not isinstance(v, (dict, list))})}",
          file=sys.stderr)

    curve_out = []
    for n in curve if args.only != "compare" else []:
        m = n // 10
        reps = repeats if n <= 20000 else 1
        runs = [run_worker({"solver": "ours", "n": n, "m": m, "k": 64, "threads": args.threads,
                               "search": "radius" if n * m <= args.exact_limit else args.large_search,
                               "verify_rows": args.verify_rows}, timeout=args.timeout) for _ in range(reps)]
        good = [r for r in runs if "error" not in r]
        row = {"n": n, "m": m, "runs": len(runs)}
        if good:
            row.update({
                "seconds_median": statistics.median(r["seconds"] for r in good),
                "seconds_search": statistics.median(r["seconds_search"] for r in good),
                "seconds_solve": statistics.median(r["seconds_solve"] for r in good),
                "peak_rss_gib": max(r["peak_rss_gib"] for r in good),
                "iterations": good[0]["iterations"], "converged": good[0]["converged"],
                "objective": good[0]["objective"], "omega": good[0]["omega"],
                "support": good[0]["support"], "truncation_bound": good[0]["truncation_bound"],
                "search": good[0]["search"], "marginal_residual": good[0]["marginal_residual"],
                **{k: v for k, v in good[0].items() if k.startswith("verify_")},
                "load_average_1min": [r["load_average_1min"] for r in good],
            })
        else:
            row["error"] = runs[0].get("error")
        print(f"scaling {n} x {m}: {json.dumps(row)}", file=sys.stderr)
        curve_out.append(row)
    results["scaling"] = curve_out
    print(json.dumps(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
