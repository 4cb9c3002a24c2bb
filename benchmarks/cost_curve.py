"""Cost curve of the pipeline: time and peak memory per stage at 1x, 3x and 10x the mirror.

``python -m benchmarks.cost_curve [--scales 1 3 10] [--work DIR] [--keep]``; writes
``benchmarks/cost_curve_results.{json,md}`` and prints the table. Each stage runs as the user
runs it (``matshift <stage> --params P``, a subprocess) on inputs scaled from the mirror:

- **1x** is ``matshift fetch`` of the mirror itself (timed: the fetch stage's real cost).
- **k x** keeps every real row of ``data/raw`` and adds ``(k - 1)`` times as many DFT entries:
  the crystal side gets real perovskite structures (``scale/perov5_heat_ref.json.zip``, read
  in place; beyond its 18,928 cells the same cells again under an isotropic strain of 1%,
  2%, ..., so that every added structure is a distinct cell), the composition side synthetic
  entries drawn around real ones (a real entry's formula with one element's amount raised by
  one, or the same formula as a new polymorph, and its DFT values plus 5% of the column's
  spread). The measurements stay as they are: a larger DFT database does not bring more
  experiments. The scaled tables are written under ``--work`` (outside the repository); the
  fetch stage is not rerun on them (it reads only the mirror's files), so its cost above 1x
  is not measured here.
- Stages timed per scale (``--stages``): ``featurize``, then for the band gap ``align``,
  ``surrogate``, ``pretrain`` and ``train`` (``dvc repro``'s order; each reads the one before's
  output), optionally ``metal`` and ``evaluate``, all with params.yaml's settings;
  ``--budget small`` trains under :data:`TRAIN_BUDGET` instead (fewer GNN members, encoders
  and epochs: the budget of the first cost curve, when the train stage still pretrained and
  fitted the surrogate itself). The evaluate stage subsamples the DFT side to
  ``evaluate.full.max_dft`` entries per fold, so only its start grows with the DFT table.

Peak memory is the largest sum of resident memory over the stage's process tree (the stage
and its worker processes), sampled every 0.2 s with psutil: pages a forked worker shares
with its parent count once per process, so for the stages with worker processes (train,
featurize) it is an upper bound. The growth exponent of a stage
is the least-squares slope of log(seconds) against log(DFT entries) over the scales; the
projection to the Materials Project's size (:data:`MP_ENTRIES` entries,
:data:`MP_STRUCTURES` structures) extends each stage's curve from its largest measured
point with that exponent (structures for featurize, entries otherwise). The machine is
shared: the load average is recorded before every stage.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import yaml

from benchmarks.mirror import perovskites
from featurizers.chemistry import no_pauling_warning

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "cost_curve_results"
MP_ENTRIES = 400_000  # "several hundred thousand DFT entries" from the MP API (issue 20)
MP_STRUCTURES = 150_000
# the benchmark's train budget (params.yaml's `train` keys it overrides): 2 GNN members, 1 encoder,
# 1 pretraining and at most 10 fine-tuning epochs, 2 bags of boosters
TRAIN_BUDGET = {"members": 2, "encoders": 1, "optim": {"pretrain_epochs": 1, "epochs": 10, "patience": 4},
                "stack": {"bags": 2}}
#: the stages after fetch, in ``dvc repro``'s order (band gap only but featurize)
STAGES = ("featurize", "align", "surrogate", "pretrain", "train", "metal", "evaluate")
NUMERIC = ("band_gap_pbe", "formation_energy_per_atom", "e_above_hull")


#: the directories a scale's stages write (removed after the scale unless ``--keep``)
SCALE_DIRS = ("raw", "features", "aligned", "surrogates", "pretrained", "models", "metal", "metrics", "plots")


def stage_params(work: Path, scale: int, *, budget: str = "full") -> Path:
    """params.yaml with every path under ``work`` (inputs of ``scale``); ``budget`` small: :data:`TRAIN_BUDGET` applied."""
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    d = {name: str(work / f"{name}_{scale}") for name in SCALE_DIRS}
    params["properties"] = ["band_gap"]
    # paths in a params file are relative to its folder: the mirror's too
    params["fetch"] |= {"out_dir": str(work / "raw_1"), "mirror": str((ROOT / params["fetch"]["mirror"]).resolve())}
    params["featurize"] |= {"raw_dir": d["raw"], "out_dir": d["features"]}
    params["align"] |= {"raw_dir": d["raw"], "features_dir": d["features"], "out_dir": d["aligned"]}
    tracking = {"tracking_uri": f"sqlite:///{work / 'mlflow.db'}", "register": False}
    train = params["train"]
    train |= {"raw_dir": d["raw"], "features_dir": d["features"], "aligned_dir": d["aligned"], "out_dir": d["models"],
              "surrogate_dir": d["surrogates"], "pretrained_dir": d["pretrained"], **tracking}
    if budget == "small":
        train |= {"members": TRAIN_BUDGET["members"], "encoders": TRAIN_BUDGET["encoders"]}
        train["optim"] |= TRAIN_BUDGET["optim"]
        train["stack"] |= TRAIN_BUDGET["stack"]
    params["metal"] |= {"raw_dir": d["raw"], "features_dir": d["features"], "out_dir": d["metal"],
                        "metrics_dir": d["metrics"], "plots_dir": d["plots"], **tracking}
    params["evaluate"] |= {"raw_dir": d["raw"], "features_dir": d["features"], "aligned_dir": d["aligned"],
                           "metrics_dir": d["metrics"], "plots_dir": d["plots"]}
    path = work / f"params_{scale}.yaml"
    path.write_text(yaml.safe_dump(params, sort_keys=False))
    return path


def _strained(cell: dict[str, Any], factor: float) -> dict[str, Any]:
    matrix = (np.asarray(cell["lattice"]["matrix"], float) * factor).tolist()
    return {"lattice": {"matrix": matrix}, "sites": cell["sites"]}


def _raised(formula: str, rng: np.random.Generator) -> str:
    from pymatgen.core import Composition  # deferred: pymatgen only when a scaled table is built

    comp = Composition(formula)
    el = list(comp)[int(rng.integers(len(comp)))]
    amounts = comp.get_el_amt_dict() | {el.symbol: comp[el] + 1}
    return Composition(amounts).reduced_formula


def scaled_raw(raw_1: Path, out: Path, scale: int, *, seed: int = 0) -> dict[str, int]:
    """Write ``out`` = the fetch output ``raw_1`` with ``(scale - 1)`` x its DFT entries added; return the counts."""
    from pymatgen.core import Composition  # deferred: as above

    dft = pd.read_parquet(raw_1 / "dft.parquet")
    rng = np.random.default_rng(seed + scale)
    n_add = (scale - 1) * len(dft)
    n_struct_add = (scale - 1) * int(dft["structure"].notna().sum())
    cells = perovskites()
    ids = list(cells)
    spread = {c: float(np.nanstd(dft[c])) for c in NUMERIC}
    donors = dft.iloc[rng.integers(len(dft), size=n_add)].reset_index(drop=True)
    added = pd.DataFrame({"material_id": [f"syn-{scale}-{i}" for i in range(n_add)]})
    formulas, structures, nsites = [], [], []
    with no_pauling_warning():  # pymatgen's reduced formula asks noble gases for an electronegativity
        for i in range(n_add):
            if i < n_struct_add:
                key = ids[i % len(ids)]
                cell = _strained(cells[key], 1.0 + 0.01 * (i // len(ids)))
                species = [s["species"][0]["element"] for s in cell["sites"]]
                formulas.append(Composition(dict(pd.Series(species).value_counts())).reduced_formula)
                structures.append(json.dumps(cell))
                nsites.append(len(species))
            else:
                f = donors.at[i, "formula"]
                formulas.append(_raised(f, rng) if rng.random() < 0.5 else f)
                structures.append(None)
                nsites.append(0)
    added["formula"] = formulas
    added["structure"] = structures
    for c in dft.columns:
        if c in NUMERIC:
            v = donors[c].to_numpy(float) + rng.normal(0, 0.05 * spread[c], n_add)
            added[c] = np.clip(v, 0, None) if c != "formation_energy_per_atom" else v
        elif c.startswith("band_gap_"):
            added[c] = np.nan
    added["nsites"] = nsites
    added["partial_occupancy"] = False
    added["source"] = "synthetic"
    out.mkdir(parents=True, exist_ok=True)
    for f in raw_1.iterdir():
        if f.name != "dft.parquet":
            shutil.copy2(f, out / f.name)
    pd.concat([dft, added[dft.columns]], ignore_index=True).to_parquet(out / "dft.parquet", index=False)
    return {"dft_entries": len(dft) + n_add, "structures": int(dft["structure"].notna().sum()) + n_struct_add}


def run_stage(args: list[str], log: Path) -> dict[str, float]:
    """Run ``matshift *args``; return its wall seconds and the peak resident memory of its process tree."""
    import psutil  # deferred: only the benchmark samples memory

    load = os.getloadavg()[0]
    t0 = time.perf_counter()
    with log.open("w") as fh:
        proc = subprocess.Popen([str(Path(sys.executable).with_name("matshift")), "-q", *args], cwd=ROOT, stdout=fh,
                                stderr=subprocess.STDOUT)
        root = psutil.Process(proc.pid)
        peak = 0
        while proc.poll() is None:
            try:
                tree = [root, *root.children(recursive=True)]
                peak = max(peak, sum(p.memory_info().rss for p in tree if p.is_running()))
            except psutil.Error:
                pass
            time.sleep(0.2)
    seconds = time.perf_counter() - t0
    if proc.returncode != 0:
        raise RuntimeError(f"matshift {' '.join(args)} failed ({proc.returncode}); see {log}")
    return {"seconds": round(seconds, 1), "peak_mib": round(peak / 2**20), "load_before": round(load, 2)}


def exponent(sizes: list[int], seconds: list[float]) -> float:
    """Least-squares slope of log(seconds) on log(size)."""
    if len(sizes) < 2:
        return math.nan
    return float(np.polyfit(np.log(sizes), np.log(seconds), 1)[0])


def _counts(raw: Path) -> dict[str, int]:
    """DFT entries and structures of a fetch output (or a scaled copy of one)."""
    structure = pd.read_parquet(raw / "dft.parquet", columns=["structure"])["structure"]
    return {"dft_entries": len(structure), "structures": int(structure.notna().sum())}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--scales", type=int, nargs="+", default=[1, 3, 10])
    ap.add_argument("--work", type=Path, default=Path("/tmp/matshift-cost-curve"))
    ap.add_argument("--keep", action="store_true", help="keep the scaled inputs and outputs under --work")
    ap.add_argument("--stages", nargs="+", choices=STAGES, default=list(STAGES[:5]),
                    help="stages after fetch, run in this order at every scale (default: featurize to train)")
    ap.add_argument("--budget", choices=["full", "small"], default="full",
                    help="train with params.yaml's settings (full) or under TRAIN_BUDGET (small)")
    ap.add_argument("--reuse", action="store_true",
                    help="the scales' inputs and earlier stages' outputs are under --work already (a --keep run): "
                         "fetch and the scaling are skipped, and the rows are added to the results file's, replacing "
                         "those of the same stage and scale")
    a = ap.parse_args(argv)
    stages = [st for st in STAGES if st in a.stages]
    a.work.mkdir(parents=True, exist_ok=True)
    rows = []
    if not a.reuse:
        fetch = run_stage(["fetch", "--params", str(stage_params(a.work, 1, budget=a.budget))], a.work / "fetch.log")
        rows.append({"stage": "fetch", "scale": 1, **fetch})
        print(json.dumps(rows[-1]), flush=True)
    for scale in a.scales:
        raw = a.work / f"raw_{scale}"
        if a.reuse and not raw.is_dir():
            raise SystemExit(f"cost_curve --reuse: {raw} is missing (run the earlier stages with --keep first)")
        counts = _counts(raw) if a.reuse or scale == 1 else scaled_raw(a.work / "raw_1", raw, scale)
        params = str(stage_params(a.work, scale, budget=a.budget))
        for stage in stages:
            extra = [] if stage in ("featurize", "metal") else ["--property", "band_gap"]
            extra += ["--no-mlflow"] if stage in ("metal", "evaluate") else []
            r = run_stage([stage, "--params", params, *extra], a.work / f"{stage}_{scale}.log")
            rows.append({"stage": stage, "scale": scale, **counts, **r})
            print(json.dumps(rows[-1]), flush=True)
        if not a.keep and scale > 1:
            for d in SCALE_DIRS:
                shutil.rmtree(a.work / f"{d}_{scale}", ignore_errors=True)
    if a.reuse and RESULTS.with_suffix(".json").is_file():
        new = {(r["stage"], r["scale"]) for r in rows}
        old = json.loads(RESULTS.with_suffix(".json").read_text())["rows"]
        rows = [r for r in old if (r["stage"], r["scale"]) not in new] + rows
    summary = summarise(rows)
    RESULTS.with_suffix(".json").write_text(json.dumps({"rows": rows, "summary": summary, "budget": a.budget,
                                                        "train_budget": TRAIN_BUDGET if a.budget == "small" else None},
                                                       indent=1) + "\n")
    RESULTS.with_suffix(".md").write_text(markdown(rows, summary))
    print(markdown(rows, summary))
    return 0


def summarise(rows: list[dict]) -> dict[str, dict[str, float]]:
    """Per stage: the growth exponent and the projection to the Materials Project's size."""
    out = {}
    for stage in STAGES:
        r = sorted((x for x in rows if x["stage"] == stage), key=lambda x: x["scale"])
        if not r:
            continue
        size_key, target = ("structures", MP_STRUCTURES) if stage == "featurize" else ("dft_entries", MP_ENTRIES)
        sizes, secs = [x[size_key] for x in r], [x["seconds"] for x in r]
        b = exponent(sizes, secs)
        last = r[-1]
        projected = last["seconds"] * (target / last[size_key]) ** b if math.isfinite(b) else math.nan
        out[stage] = {"exponent": round(b, 2), "size": size_key, "mp_size": target,
                      "projected_minutes_at_mp": round(projected / 60, 1)}
    return out


def markdown(rows: list[dict], summary: dict) -> str:
    scales = sorted({x["scale"] for x in rows if x["stage"] != "fetch"})
    lines = ["| stage | " + " | ".join(f"{s}x: s / peak MiB" for s in scales) + " | exponent | at MP size |",
             "|---|" + "---:|" * (len(scales) + 2)]
    for stage in ("fetch", *STAGES):
        if not any(x["stage"] == stage for x in rows):
            continue
        cells = []
        for s in scales:
            r = [x for x in rows if x["stage"] == stage and x["scale"] == s]
            cells.append(f"{r[0]['seconds']:.0f} / {r[0]['peak_mib']}" if r else "")
        sm = summary.get(stage, {})
        mp = f"{sm['projected_minutes_at_mp']} min ({sm['mp_size']:,} {sm['size'].replace('_', ' ')})" if sm else ""
        lines.append(f"| {stage} | " + " | ".join(cells) + f" | {sm.get('exponent', '')} | {mp} |")
    sizes = {x["scale"]: (x["dft_entries"], x["structures"]) for x in rows if "dft_entries" in x}
    lines += ["", "Inputs: " + "; ".join(f"{s}x = {e:,} DFT entries, {n:,} structures" for s, (e, n) in
                                          sorted(sizes.items())) + "."]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    raise SystemExit(main())
