"""The GNNs' minibatch UOT loss: log-domain and scaling-domain Sinkhorn beside POT's, in one process.

:func:`models.learners.uot_embedding_loss` runs ``train.optim.ot_iters`` (30) unbalanced Sinkhorn
steps on every training batch (128 measured x 128 DFT embeddings, float64) and differentiates
through them. Here, for random embedding batches of the train stage's width, forward + backward
is timed three ways, in alternating order, one torch thread (as each pipeline worker):

* ``log``: :func:`models.learners.unbalanced_sinkhorn` (log-sum-exp over the whole matrix per step);
* ``scaling``: :func:`models.learners.scaling_unbalanced_sinkhorn` (two matrix-vector products per step),
  what the loss uses where its kernel cannot underflow;
* ``pot``: POT's ``ot.unbalanced.sinkhorn_unbalanced`` on torch tensors (the library reference,
  ``method="sinkhorn"``, the same number of steps; POT stops early only below ``stopThr``, set to 0).

The table gives the median milliseconds per batch, the ratios, and the largest relative
difference of the loss and of the gradient against the log domain. The embeddings are float32, as
the networks': the loss runs in float64 and its gradient returns to float32, where differences of
float64 rounding mostly vanish.

    PYTHONPATH=. python -m benchmarks.uot_loss --load "idle" --out benchmarks/uot_loss_results
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

import numpy as np
import ot
import torch

from models.learners import scaling_unbalanced_sinkhorn, unbalanced_sinkhorn


def _cost(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """The loss's cost: squared distances over their (gradient-stopped) mean, float64."""
    cost = torch.cdist(x.double(), y.double()).pow(2)
    return cost / cost.detach().mean().clamp_min(1e-12)


def _loss(kind: str, x: torch.Tensor, y: torch.Tensor, *, reg: float, reg_m: float, n_iter: int) -> torch.Tensor:
    cost = _cost(x, y)
    a = torch.full((x.shape[0],), 1.0 / x.shape[0], dtype=torch.float64)
    b = torch.full((y.shape[0],), 1.0 / y.shape[0], dtype=torch.float64)
    if kind == "log":
        plan = unbalanced_sinkhorn(cost, a, b, reg=reg, reg_m=reg_m, n_iter=n_iter)
    elif kind == "scaling":
        plan = scaling_unbalanced_sinkhorn(cost, a, b, reg=reg, reg_m=reg_m, n_iter=n_iter)
    else:
        plan = ot.unbalanced.sinkhorn_unbalanced(a, b, cost, reg, reg_m, method="sinkhorn", numItermax=n_iter,
                                                 stopThr=0.0, reg_type="kl")
    return (plan * cost).sum()


def _step(kind: str, x: torch.Tensor, y: torch.Tensor, **kw) -> tuple[float, float, torch.Tensor]:
    x = x.detach().requires_grad_(True)
    t0 = time.perf_counter()
    loss = _loss(kind, x, y, **kw)
    loss.backward()
    return time.perf_counter() - t0, float(loss.detach()), x.grad.detach().clone()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batches", type=int, default=300)
    parser.add_argument("--rows", type=int, default=128, help="embeddings per side (train.optim.batch_size)")
    parser.add_argument("--dim", type=int, default=64, help="embedding width (train.model.emb_dim)")
    parser.add_argument("--iters", type=int, default=30, help="Sinkhorn steps (train.optim.ot_iters)")
    parser.add_argument("--reg", type=float, default=0.1)
    parser.add_argument("--reg-m", type=float, default=1.0)
    parser.add_argument("--load", default="", help="what else ran on the machine (reported)")
    parser.add_argument("--out", type=Path, default=None, help="write OUT.json and OUT.md")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    gen = torch.Generator().manual_seed(0)
    kinds = ("log", "scaling", "pot")
    times: dict[str, list[float]] = {k: [] for k in kinds}
    loss_gap = {k: 0.0 for k in kinds}
    grad_gap = {k: 0.0 for k in kinds}
    kw = {"reg": args.reg, "reg_m": args.reg_m, "n_iter": args.iters}
    for i in range(args.batches):
        # embeddings of a trained encoder: clustered, one side shifted (the DFT-experiment gap)
        centres = torch.randn(8, args.dim, generator=gen)
        x = centres[torch.randint(0, 8, (args.rows,), generator=gen)] + 0.5 * torch.randn(args.rows, args.dim, generator=gen)
        y = centres[torch.randint(0, 8, (args.rows,), generator=gen)] + 0.5 * torch.randn(args.rows, args.dim, generator=gen) + 0.3
        order = kinds if i % 2 == 0 else kinds[::-1]
        got = {k: _step(k, x, y, **kw) for k in order}
        _, ref_loss, ref_grad = got["log"]
        for k, (dt, loss, grad) in got.items():
            if i >= 5:  # warm-up
                times[k].append(dt)
            loss_gap[k] = max(loss_gap[k], abs(loss - ref_loss) / abs(ref_loss))
            grad_gap[k] = max(grad_gap[k], float((grad - ref_grad).abs().max() / ref_grad.abs().max()))
    med = {k: float(np.median(v)) * 1e3 for k, v in times.items()}
    result = {"batches": args.batches - 5, "rows": args.rows, "dim": args.dim, "iters": args.iters, "reg": args.reg,
              "reg_m": args.reg_m, "median_ms": med, "speedup_vs_log": {k: med["log"] / v for k, v in med.items()},
              "max_rel_loss_diff_vs_log": loss_gap, "max_rel_grad_diff_vs_log": grad_gap, "load": args.load,
              "machine": f"{platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}, POT {ot.__version__}"}
    lines = [
        "# The minibatch UOT loss: log domain, scaling domain and POT (`benchmarks/uot_loss.py`)",
        "",
        f"{result['batches']} batches of {args.rows} x {args.rows} embeddings ({args.dim} wide), {args.iters} Sinkhorn "
        f"steps, reg {args.reg}, reg_m {args.reg_m}; forward + backward, one torch thread; {result['machine']}; "
        f"load: {args.load or 'not given'}.",
        "",
        "| solver | median ms per batch | speed-up vs log domain | max rel. loss difference | max rel. gradient difference |",
        "|---|---:|---:|---:|---:|",
        *(f"| {k} | {med[k]:.2f} | {result['speedup_vs_log'][k]:.2f}x | {loss_gap[k]:.1e} | {grad_gap[k]:.1e} |"
          for k in kinds),
    ]
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out is not None:
        args.out.with_suffix(".json").write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
        args.out.with_suffix(".md").write_text(text, encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
