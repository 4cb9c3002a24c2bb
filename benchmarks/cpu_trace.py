"""Where a core waits: the machine's busy share over a pipeline run, per DVC stage.

Usage: ``python -m benchmarks.cpu_trace [--interval 2] [--out benchmarks/cpu_trace_results] -- dvc repro -f``
runs the command (default ``dvc repro -f``), samples the machine's CPU counters (``/proc/stat``)
every ``--interval`` seconds, and stamps every line the command writes with the time it was read,
so each sample falls in the stage that ``Running stage 'NAME':`` opened last. Per stage it reports
the wall seconds, the mean busy share of all cores, the idle core-seconds (what more overlap
could at best win back) and the longest stretch below ``--low`` (default 60%) busy, which on a
2-core machine is one core waiting. The samples are of the whole machine: run it on an idle one.

Writes ``<out>.json`` (every sample and stage) and ``<out>.md`` (the table); the last stdout
line is the JSON summary without the samples.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import re
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

STAGE_LINE = re.compile(r"Running stage '([^']+)'")


def cpu_counters() -> tuple[int, int]:
    """(busy, total) jiffies of all cores together, from the first line of ``/proc/stat``."""
    with open("/proc/stat", encoding="ascii") as fh:
        fields = [int(v) for v in fh.readline().split()[1:9]]
    idle = fields[3] + fields[4]  # idle + iowait
    total = sum(fields)
    return total - idle, total


@dataclass(frozen=True)
class StageLoad:
    """One stage's share of the run: ``busy`` is the mean busy fraction of all cores over its samples."""

    stage: str
    seconds: float
    busy: float | None
    idle_core_seconds: float
    longest_low_seconds: float


def stage_loads(samples: Sequence[tuple[float, float]], starts: Sequence[tuple[float, str]], *, end: float,
                cores: int, low: float = 0.6) -> list[StageLoad]:
    """Attribute ``samples`` ((time, busy fraction over the interval ending then), time-ordered) to the stages.

    ``starts``: (time, stage) at which each stage began, time-ordered; the run before the first
    start is ``(start-up)``. A sample counts for the stage running at its time. ``end``: when the
    command exited.
    """
    if not starts:
        raise ValueError("no stage started: is the command `dvc repro`?")
    bounds = [*starts, (end, "")]
    out = []
    for (t0, name), (t1, _) in itertools.pairwise(bounds):
        mine = [(t, b) for t, b in samples if t0 < t <= t1]
        busy = sum(b for _, b in mine) / len(mine) if mine else None  # shorter than one interval
        idle, longest, run, prev = 0.0, 0.0, 0.0, t0
        for t, b in mine:
            dt = t - prev
            idle += (1.0 - b) * cores * dt
            run = run + dt if b < low else 0.0
            longest = max(longest, run)
            prev = t
        out.append(StageLoad(stage=name, seconds=round(t1 - t0, 1), busy=None if busy is None else round(busy, 3),
                             idle_core_seconds=round(idle, 1), longest_low_seconds=round(longest, 1)))
    return out


def trace(command: Sequence[str], *, interval: float) -> tuple[list[tuple[float, float]], list[tuple[float, str]], float,
                                                               int]:
    """Run ``command``, echoing its output; return the CPU samples, the stage starts, the end time and its exit code."""
    samples: list[tuple[float, float]] = []
    starts: list[tuple[float, str]] = []
    done = threading.Event()

    def sample() -> None:
        busy0, total0 = cpu_counters()
        while not done.wait(interval):
            busy1, total1 = cpu_counters()
            samples.append((time.monotonic(), (busy1 - busy0) / max(total1 - total0, 1)))
            busy0, total0 = busy1, total1

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    proc = subprocess.Popen(list(command), stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    assert proc.stdout is not None
    pending = b""
    while chunk := proc.stdout.read1(65536):
        sys.stdout.buffer.write(chunk)
        sys.stdout.flush()
        pending += chunk
        *lines, pending = re.split(rb"[\r\n]", pending)
        now = time.monotonic()
        for line in lines:
            m = STAGE_LINE.search(line.decode("utf-8", "replace"))
            if m:
                starts.append((now, m.group(1)))
    code = proc.wait()
    end = time.monotonic()
    done.set()
    sampler.join()
    return samples, starts, end, code


def markdown(loads: Sequence[StageLoad], *, command: str, cores: int, wall: float, interval: float) -> str:
    idle = sum(s.idle_core_seconds for s in loads)
    rows = "\n".join(f"| {s.stage} | {s.seconds:.0f} | {'-' if s.busy is None else f'{100 * s.busy:.0f}%'} | "
                     f"{s.idle_core_seconds:.0f} | "
                     f"{s.longest_low_seconds:.0f} |" for s in loads)
    return (f"# CPU trace of `{command}` (benchmarks/cpu_trace.py)\n\n"
            f"{cores} cores, a sample every {interval:g} s; {wall / 60:.1f} minutes in all, {idle:.0f} idle "
            f"core-seconds ({idle / (cores * wall):.0%} of the machine).\n\n"
            "| stage | seconds | busy | idle core-seconds | longest stretch below 60% busy (s) |\n"
            "|---|---:|---:|---:|---:|\n" + rows + "\n")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--interval", type=float, default=2.0, help="seconds between CPU samples (default 2)")
    parser.add_argument("--low", type=float, default=0.6, help="busy share below which a stretch counts as waiting")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/cpu_trace_results"),
                        help="where <out>.json and <out>.md go")
    parser.add_argument("command", nargs="*", default=["dvc", "repro", "-f"], help="the run (after --)")
    args = parser.parse_args(argv)
    if not Path("/proc/stat").is_file():
        print("cpu_trace: /proc/stat is not readable here (Linux only)", file=sys.stderr)
        return 2
    if args.interval <= 0:
        print("cpu_trace: --interval must be > 0", file=sys.stderr)
        return 2
    cores = os.cpu_count() or 1
    t0 = time.monotonic()
    samples, starts, end, code = trace(args.command, interval=args.interval)
    if code != 0:
        print(f"cpu_trace: `{' '.join(args.command)}` exited with {code}; nothing written", file=sys.stderr)
        return code
    loads = stage_loads(samples, [(t0, "(start-up)"), *starts], end=end, cores=cores, low=args.low)
    summary = {"benchmark": "cpu_trace", "command": " ".join(args.command), "cores": cores, "interval_s": args.interval,
               "wall_s": round(end - t0, 1), "load_avg_1min_after": round(os.getloadavg()[0], 2),
               "stages": [asdict(s) for s in loads]}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".json").write_text(json.dumps(
        {**summary, "samples": [[round(t - t0, 2), round(b, 3)] for t, b in samples]}, indent=1) + "\n")
    args.out.with_suffix(".md").write_text(markdown(loads, command=summary["command"], cores=cores, wall=end - t0,
                                                    interval=args.interval))
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
