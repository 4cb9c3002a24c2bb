"""Train the multi-fidelity GNN on the CPU and on an accelerator, same data and seed, and compare.

``python -m benchmarks.device_check [--entries N] [--epochs E]``; the last stdout line is one
JSON object. Checks that the device is chosen once at the entry point
(:func:`models.learners.determine_device`) and that nothing in the training loop assumes the
CPU: every member trains on each device, predictions agree within a tolerance (GPU scatter
sums are not bit-reproducible), and the seconds per epoch are reported side by side. Data are
synthetic crystal graphs and compositions (the check is about devices, not accuracy), so it
runs where the mirror is absent. Without CUDA it reports that and exits 0.
"""

from __future__ import annotations

import argparse
import json
import sys
import time

import numpy as np
import torch
from torch_geometric.data import Data

from models.learners import EntryTable, ModelConfig, TrainConfig, determine_device, predict, train_model

FORMULAS = ["NaCl", "KCl", "LiF", "MgO", "CaO", "ZnO", "ZnS", "GaAs", "GaN", "Si", "SiO2", "Al2O3", "TiO2",
            "SnO2", "CdTe", "CdS", "InP", "AlN", "BN", "C"]


def synthetic_table(n: int, seed: int = 0) -> EntryTable:
    rng = np.random.default_rng(seed)
    formulas = [FORMULAS[i % len(FORMULAS)] for i in range(n)]
    graphs = []
    for _ in range(n):
        atoms = int(rng.integers(2, 9))
        edges = atoms * 8
        graphs.append(Data(
            x=torch.from_numpy(rng.normal(size=(atoms, 16)).astype(np.float32)),
            edge_index=torch.from_numpy(rng.integers(0, atoms, size=(2, edges))),
            edge_attr=torch.from_numpy(rng.random((edges, 40)).astype(np.float32)),
            num_nodes=atoms,
        ))
    y = rng.uniform(0, 5, n)
    is_exp = rng.random(n) < 0.3
    return EntryTable(
        formulas=formulas, is_experiment=is_exp, y_dft=np.where(is_exp, np.nan, y),
        y_exp=np.where(is_exp, 1.2 * y + 0.3, np.nan),
        calibrated=np.where(is_exp, np.nan, 1.2 * y + 0.3), confidence=np.where(is_exp, np.nan, 0.8),
        dft_input=y, descriptors=rng.normal(size=(n, 24)).astype(np.float32), graphs=graphs,
    )


def run_on(device: torch.device, table: EntryTable, cfg: TrainConfig) -> dict:
    t0 = time.perf_counter()
    res = train_model(table, cfg, seed=0, device=device)
    if device.type == "cuda":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - t0
    pred = predict(res.model, table, device=device)
    return {"seconds": seconds, "epochs": len(res.history), "best_val_mae": res.best_val_mae,
            "experiment": pred.experiment, "dft": pred.dft}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--entries", type=int, default=4000)
    p.add_argument("--epochs", type=int, default=5)
    args = p.parse_args(argv)
    out: dict = {"torch": torch.__version__, "cuda_available": torch.cuda.is_available()}
    accel = determine_device("auto")
    if accel.type == "cpu":
        out["note"] = "no accelerator: nothing to compare"
        print(json.dumps(out))
        return 0
    out["device_name"] = torch.cuda.get_device_name(0)
    table = synthetic_table(args.entries)
    cfg = TrainConfig(epochs=args.epochs, patience=args.epochs, batch_size=64, dft_batch_size=128,
                      model=ModelConfig(comp_hidden=32, comp_layers=2, emb_dim=32, head_hidden=32))
    cpu = run_on(torch.device("cpu"), table, cfg)
    gpu = run_on(accel, table, cfg)
    diff = np.abs(cpu["experiment"] - gpu["experiment"])
    out.update(
        entries=args.entries, epochs=args.epochs,
        cpu_seconds=round(cpu["seconds"], 2), gpu_seconds=round(gpu["seconds"], 2),
        cpu_best_val_mae=cpu["best_val_mae"], gpu_best_val_mae=gpu["best_val_mae"],
        max_abs_prediction_difference=float(diff.max()), median_abs_prediction_difference=float(np.median(diff)),
        gpu_finite=bool(np.isfinite(gpu["experiment"]).all() and np.isfinite(gpu["dft"]).all()),
    )
    print(json.dumps(out))
    return 0 if out["gpu_finite"] else 1


if __name__ == "__main__":
    sys.exit(main())
