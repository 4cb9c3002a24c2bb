"""Wall time of ``matshift fetch`` on the offline mirror, cache bypassed (``--force``).

Usage: ``python -m benchmarks.fetch_time [--runs 3] [--workers 2] [--quick]``. ``--quick``
runs once. Output goes to a temporary directory. The last stdout line is a JSON object
with every run's wall and CPU seconds, their medians and the counts of the last run.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import tempfile
import time
from pathlib import Path

from pipeline.fetch import fetch
from pipeline.params.fetch import FetchParams

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--quick", action="store_true", help="one run")
    args = parser.parse_args()
    runs = 1 if args.quick else args.runs
    seconds, cpu = [], []
    with tempfile.TemporaryDirectory() as tmp:
        config = FetchParams(mirror=ROOT.parent / "shared" / "datasets", out_dir=Path(tmp) / "raw", workers=args.workers)
        for i in range(runs):
            cpu0 = _cpu_seconds()
            start = time.perf_counter()
            result = fetch(config, root=ROOT, force=True)
            seconds.append(round(time.perf_counter() - start, 2))
            cpu.append(round(_cpu_seconds() - cpu0, 2))
            print(f"run {i + 1}: {seconds[-1]} s wall, {cpu[-1]} s CPU (this process + pool workers)", flush=True)
    dft = result.dft
    has_s = dft["structure"].notna()
    print(json.dumps({
        "benchmark": "fetch_time",
        "runs": seconds,
        "median_s": statistics.median(seconds),
        # CPU seconds depend less on what else runs on the machine than wall time does
        "cpu_s": cpu,
        "median_cpu_s": statistics.median(cpu),
        "workers": args.workers,
        "cpus": os.cpu_count(),
        "load_avg_1min": round(os.getloadavg()[0], 2),
        "mp_ids_with_structure": int(has_s.sum()),
        "with_structure_and_band_gap_pbe": int((has_s & dft["band_gap_pbe"].notna()).sum()),
        "with_structure_and_formation_energy": int((has_s & dft["formation_energy_per_atom"].notna()).sum()),
        "experiment_rows": len(result.experiment),
        "rejected_rows": len(result.rejected),
    }))


def _cpu_seconds() -> float:
    own = resource.getrusage(resource.RUSAGE_SELF)
    children = resource.getrusage(resource.RUSAGE_CHILDREN)  # pool workers, once joined
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


if __name__ == "__main__":
    main()
