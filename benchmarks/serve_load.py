"""Load test of the registered model behind ``mlflow models serve``, on loopback, bounded in count and time.

Starts the server as the README says (``mlflow models serve -m models:/matshift-band_gap/N
--env-manager local``, one uvicorn worker), then for batch sizes 1 and 100: ``--clients``
threads send ``--requests`` requests in all (each a seeded draw of formulas from
:func:`benchmarks.predict.formulas`: half measured, half DFT-only), stopping early at
``--max-seconds``; a third phase sends batches of 100 ternary formulas new to the model
(each sent once, so each is featurized on arrival). Reports requests/s, formulas/s, p50/p99 latency and the errors (any
non-200 answer, a wrong row count or a request that failed). A bad-request phase then sends
malformed requests between good ones: each must get a 4xx with a message, and the good
ones must still be answered.

Run after ``dvc repro`` (it serves the latest registered version from ``sqlite:///mlflow.db``):
``PYTHONPATH=. python -m benchmarks.serve_load``; writes ``benchmarks/serve_load_results.json``
and the Markdown table ``benchmarks/serve_load_results.md`` (also printed).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pandas as pd

from benchmarks.predict import formulas
from tests.model_server import formulas_payload, serve

ROOT = Path(__file__).resolve().parents[1]


def percentile(values: list[float], q: float) -> float:
    return float(np.percentile(values, q)) if values else float("nan")


def novel_formulas(n: int, seed: int, raw_dir: Path) -> list[str]:
    """Return ``n`` ternary formulas (two cations, one anion) that neither the DFT table nor the measurements hold."""
    from pymatgen.core import Composition

    known = set()
    for name in ("experiment.parquet", "dft.parquet"):
        known |= set(pd.read_parquet(raw_dir / name, columns=["formula"])["formula"])
    cations = ["Li", "Na", "K", "Rb", "Cs", "Mg", "Ca", "Sr", "Ba", "Zn", "Cd", "Ga", "In", "Al", "Sc", "Y", "La",
               "Ti", "Zr", "Sn", "Pb", "Bi", "Cu", "Ag"]
    anions = ["F", "Cl", "Br", "I", "O", "S", "Se", "Te", "N", "P", "As", "Sb"]
    rng = np.random.default_rng(seed)
    out: set[str] = set()
    while len(out) < n:
        a, b = rng.choice(cations, 2, replace=False)
        x, y, z = rng.integers(1, 5, 3)
        formula = Composition(f"{a}{x}{b}{y}{rng.choice(anions)}{z}").reduced_formula
        if formula not in known:
            out.add(formula)
    return sorted(out)


def load_phase(server, pool: list[str], *, batch: int, clients: int, requests: int, max_seconds: float,
               seed: int, fresh: bool = False) -> dict:
    """``requests`` requests of ``batch`` formulas from ``clients`` threads; latency of each and the errors.

    ``fresh``: consecutive slices of ``pool``, so no formula is sent twice (the server featurizes
    each one on first sight); else seeded draws from ``pool``.
    """
    rng = np.random.default_rng(seed)
    if fresh:
        requests = min(requests, len(pool) // batch)
        bodies = [formulas_payload(pool[k * batch:(k + 1) * batch]) for k in range(requests)]
    else:
        bodies = [formulas_payload(list(rng.choice(pool, batch, replace=len(pool) < batch))) for _ in range(requests)]
    latencies: list[float] = []
    errors: list[str] = []
    rows_refused: list[int] = []  # rows answered with an error (a formula the model cannot featurize)
    lock = threading.Lock()
    queue = iter(range(requests))
    deadline = time.monotonic() + max_seconds

    def client() -> None:
        while time.monotonic() < deadline:
            with lock:
                k = next(queue, None)
            if k is None:
                return
            t0 = time.perf_counter()
            try:
                reply = server.post(bodies[k], timeout=120)
                ok = reply.status == 200 and len(reply.body["predictions"]) == batch
                problem = None if ok else f"HTTP {reply.status}: {str(reply.body)[:200]}"
                refused = sum(r.get("error") is not None for r in reply.body["predictions"]) if ok else 0
            except Exception as exc:  # noqa: BLE001 - a failed request is counted and named, never raised
                problem, refused = f"{type(exc).__name__}: {exc}", 0
            elapsed = time.perf_counter() - t0
            with lock:
                latencies.append(elapsed)
                rows_refused.append(refused)
                if problem:
                    errors.append(problem)

    t0 = time.perf_counter()
    threads = [threading.Thread(target=client) for _ in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    done = len(latencies)
    return {"formulas": "new to the model" if fresh else "in the DFT table or measured", "batch": batch,
            "clients": clients, "requests": done, "errors": len(errors), "error_examples": errors[:3],
            "rows_with_error": sum(rows_refused),
            "seconds": round(wall, 2), "requests_per_s": round(done / wall, 2),
            "formulas_per_s": round(done * batch / wall, 1),
            "p50_ms": round(1000 * percentile(latencies, 50), 1), "p99_ms": round(1000 * percentile(latencies, 99), 1),
            "max_ms": round(1000 * max(latencies, default=float("nan")), 1), "stopped_by_time": done < requests}


def parity(server, formulas: list[str], *, model: str, tracking_uri: str, params: Path) -> dict:
    """Largest difference between the HTTP answers, the Python API's and ``matshift predict``'s on ``formulas``."""
    import matshift
    from pipeline.predict import predict

    os.environ["MLFLOW_TRACKING_URI"] = tracking_uri
    reply = server.post(formulas_payload(formulas))
    http = pd.DataFrame(reply.body["predictions"])
    api = matshift.load_model(model).predict(formulas)
    cli = predict(formulas, property="band_gap", params=params)
    out = {"formulas": len(formulas), "predicted": int(http["prediction"].notna().sum())}
    for name, other in (("api", api), ("cli", cli)):
        diff = [np.nanmax(np.abs(pd.to_numeric(http[c]).to_numpy(float) - pd.to_numeric(other[c]).to_numpy(float)),
                          initial=0.0) for c in ("prediction", "lower", "upper", "dft_value")]
        same_nan = all((http[c].isna() == other[c].isna()).all() for c in ("prediction", "lower", "upper"))
        out[f"max_abs_diff_http_vs_{name}"] = float(max(diff)) if same_nan else float("inf")
    return out


BAD = {
    "no formula column": {"dataframe_split": {"columns": ["composition"], "data": [["GaN"]]}},
    "coverage out of range": formulas_payload(["GaN"], coverage=1.5),
    "coverage not a number": formulas_payload(["GaN"], coverage="wide"),
    "not a table": {"inputs": 3},
}


def bad_phase(server, pool: list[str], rounds: int) -> dict:
    """Malformed requests between good ones: each bad one a 4xx with a message, every good one answered."""
    answered, refused, wrong = 0, 0, []
    for k in range(rounds):
        for name, body in [*BAD.items(), ("broken JSON", None)]:
            reply = server.post(body, raw=b'{"dataframe_split": {"columns": ["formula"' if body is None else None)
            if 400 <= reply.status < 500 and str(reply.body).strip():
                refused += 1
            else:
                wrong.append(f"{name}: HTTP {reply.status}")
        good = server.post(formulas_payload([pool[(10 * k + j) % len(pool)] for j in range(10)]))
        answered += good.status == 200 and len(good.body["predictions"]) == 10
    return {"bad_requests": rounds * (len(BAD) + 1), "refused_with_4xx": refused, "not_refused": wrong[:5],
            "good_between": rounds, "good_answered": answered}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="models:/matshift-band_gap/latest", help="MLflow model URI")
    parser.add_argument("--tracking-uri", default=f"sqlite:///{ROOT / 'mlflow.db'}")
    parser.add_argument("--clients", type=int, default=4, help="concurrent client threads (default 4)")
    parser.add_argument("--requests", type=int, nargs=3, default=[400, 40, 20], metavar=("N1", "N100", "NEW"),
                        help="requests at batch 1, at batch 100, and at batch 100 of formulas new to the model "
                             "(default 400 40 20)")
    parser.add_argument("--max-seconds", type=float, default=120.0, help="time limit per phase (default 120)")
    parser.add_argument("--workers", type=int, default=1, help="uvicorn workers of the server (default 1)")
    parser.add_argument("--raw-dir", type=Path, default=ROOT / "data/raw", help="where the formula pool is drawn from")
    parser.add_argument("--pool", type=int, default=2000, help="formulas in the pool (half measured, half DFT-only)")
    parser.add_argument("--parity", action="store_true",
                        help="first compare 200 answers (100 of the pool, 100 new) with the Python API's and "
                             "matshift predict's (the pipeline's band-gap model: serve the version it registered)")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks/serve_load_results.json")
    args = parser.parse_args(argv)
    pool = formulas(args.pool, seed=1, raw_dir=args.raw_dir)
    novel = novel_formulas(100 * args.requests[2], seed=2, raw_dir=args.raw_dir)
    load = os.getloadavg()[0]
    t0 = time.perf_counter()
    with serve(args.model, tracking_uri=args.tracking_uri, cwd=ROOT, workers=args.workers) as server:
        startup = time.perf_counter() - t0
        for b in (1, 100):  # warm-up: first requests pay lazy imports and descriptor lookups
            server.post(formulas_payload(pool[:b]))
        match = parity(server, pool[:100] + novel[:100], model=args.model, tracking_uri=args.tracking_uri,
                       params=ROOT / "params.yaml") if args.parity else None
        phases = [load_phase(server, pool, batch=b, clients=args.clients, requests=n, max_seconds=args.max_seconds,
                             seed=b) for b, n in zip((1, 100), args.requests[:2], strict=True)]
        phases.append(load_phase(server, novel, batch=100, clients=args.clients, requests=args.requests[2],
                                 max_seconds=args.max_seconds, seed=3, fresh=True))
        bad = bad_phase(server, pool, rounds=5)
    result = {"model": args.model, "server": f"mlflow models serve --env-manager local, {args.workers} worker(s)",
              "machine": f"{platform.machine()}, {os.cpu_count()} cores", "load_average_at_start": round(load, 2),
              "startup_s": round(startup, 1), "parity": match, "phases": phases, "bad_requests": bad,
              "formula_pool": f"{len(pool)} formulas: half measured, half DFT-only (benchmarks.predict.formulas, seed 1)"}
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    args.out.with_suffix(".md").write_text(f"# Serving load test\n\n`{' '.join(['python -m benchmarks.serve_load', *(sys.argv[1:] if argv is None else argv)])}`"
                                           f" against {args.model}\n\n{table(result)}\n")
    print(table(result))
    ok = all(p["errors"] == 0 for p in phases) and not bad["not_refused"] and bad["good_answered"] == bad["good_between"]
    ok = ok and (match is None or max(match["max_abs_diff_http_vs_api"], match["max_abs_diff_http_vs_cli"]) <= 1e-9)
    return 0 if ok else 1


def table(result: dict) -> str:
    """Return the Markdown table of a result (the README's)."""
    lines = ["| formulas | batch | clients | requests | errors | rows with an error | requests/s | formulas/s | p50 ms "
             "| p99 ms |", "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for p in result["phases"]:
        lines.append(f"| {p['formulas']} | {p['batch']} | {p['clients']} | {p['requests']} | {p['errors']} | {p['rows_with_error']} | {p['requests_per_s']} | "
                     f"{p['formulas_per_s']} | {p['p50_ms']} | {p['p99_ms']} |")
    bad = result["bad_requests"]
    if result.get("parity"):
        p = result["parity"]
        lines.append(f"\nParity on {p['formulas']} formulas ({p['predicted']} predicted): largest difference HTTP vs "
                     f"Python API {p['max_abs_diff_http_vs_api']:.1e}, HTTP vs `matshift predict` "
                     f"{p['max_abs_diff_http_vs_cli']:.1e}.")
    lines.append(f"\nBad requests: {bad['refused_with_4xx']}/{bad['bad_requests']} answered with a 4xx and a message; "
                 f"{bad['good_answered']}/{bad['good_between']} good requests between them answered. "
                 f"Server start {result['startup_s']} s; {result['machine']}; load average at start "
                 f"{result['load_average_at_start']}.")
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(main())
