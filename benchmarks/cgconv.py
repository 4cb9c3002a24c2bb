"""The crystal-graph encoder's layers: PyG's ``CGConv`` beside :func:`models.nets.cgconv_factored`, in one process.

Batches of the mirror's own crystal graphs (``data/features/graphs.pt``, the featurize stage's
output), drawn as the train stage draws them: ``--rows`` random rows of the DFT table, of which
those with a structure bring their graph. For each batch the encoder (the train stage's widths)
runs forward and backward once with PyG's layers and once with the factored ones, in alternating
order; the table gives the median milliseconds, their ratio and the largest difference of outputs
and gradients. One torch thread (as each train-stage worker).

    PYTHONPATH=. python -m benchmarks.cgconv --load "idle" --out benchmarks/cgconv_results
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

import numpy as np
import torch
from torch_geometric.data import Batch
from torch_geometric.nn import global_mean_pool

from models.nets import CrystalGraphEncoder
from pipeline.readers import read_graphs


def _pyg_forward(enc: CrystalGraphEncoder, g: Batch) -> torch.Tensor:
    """The encoder with PyG's ``CGConv.forward`` for every layer (what ``CrystalGraphEncoder`` computed before)."""
    h = enc.embed(g.x)
    for conv, norm in zip(enc.convs, enc.norms, strict=True):
        h = h + conv(norm(h), g.edge_index, g.edge_attr)
    return enc.out(global_mean_pool(h, g.batch, size=g.num_graphs))


def _step(forward, enc: CrystalGraphEncoder, g: Batch) -> tuple[float, torch.Tensor, list[torch.Tensor]]:
    enc.zero_grad(set_to_none=True)
    t = time.perf_counter()
    out = forward(g)
    out.square().mean().backward()
    return time.perf_counter() - t, out.detach(), [p.grad.clone() for p in enc.parameters()]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--features", type=Path, default=Path("data/features"))
    p.add_argument("--rows", type=int, default=256, help="DFT rows per batch (train.optim.pretrain_batch_size)")
    p.add_argument("--dft-rows", type=int, default=47899, help="rows the batch is drawn from (the mirror's DFT table)")
    p.add_argument("--batches", type=int, default=60)
    p.add_argument("--load", default="", help="what else ran on the machine meanwhile (written into the results)")
    p.add_argument("--out", type=Path, default=Path("benchmarks/cgconv_results"))
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    graphs = list(read_graphs(args.features, hint="run `dvc repro featurize` first").values())
    rng = np.random.default_rng(0)
    torch.manual_seed(0)
    g0 = graphs[0]
    enc = CrystalGraphEncoder(node_dim=int(g0.x.shape[1]), edge_dim=int(g0.edge_attr.shape[1]))
    times: dict[str, list[float]] = {"pyg": [], "factored": []}
    out_diff, grad_diff, sizes = 0.0, 0.0, []
    for k in range(args.batches):
        picked = rng.choice(args.dft_rows, size=args.rows, replace=False)
        g = Batch.from_data_list([graphs[i] for i in picked if i < len(graphs)])
        sizes.append((g.num_graphs, g.num_nodes, int(g.edge_index.shape[1])))
        order = [("pyg", lambda b: _pyg_forward(enc, b)),
                 ("factored", lambda b: enc(b.x, b.edge_index, b.edge_attr, b.batch, num_graphs=b.num_graphs))]
        res = {}
        for name, fwd in order if k % 2 == 0 else order[::-1]:
            res[name] = _step(fwd, enc, g)
            times[name].append(res[name][0])
        out_diff = max(out_diff, float((res["pyg"][1] - res["factored"][1]).abs().max()))
        grad_diff = max(grad_diff, max(float((a - b).abs().max()) for a, b in zip(res["pyg"][2], res["factored"][2],
                                                                                   strict=True)))
    med = {k: 1000 * float(np.median(v[1:])) for k, v in times.items()}  # the first batch warms up
    size = np.median(np.array(sizes), axis=0)
    results = {"machine": f"{platform.machine()}, {os.cpu_count()} cores", "load": args.load, "torch_threads": 1,
               "rows": args.rows, "batches": args.batches, "median_graphs_nodes_edges": size.tolist(),
               "median_ms": med, "speed_up": med["pyg"] / med["factored"], "max_abs_output_diff": out_diff,
               "max_abs_grad_diff": grad_diff}
    args.out.with_suffix(".json").write_text(json.dumps(results, indent=1), encoding="utf-8")
    text = (f"| encoder forward + backward ({int(size[0])} graphs, {int(size[1])} atoms, {int(size[2])} edges per batch, "
            f"median of {args.batches - 1}) | ms |\n|---|---|\n"
            f"| PyG `CGConv` layers | {med['pyg']:.2f} |\n| `cgconv_factored` | {med['factored']:.2f} |\n"
            f"| speed-up | {results['speed_up']:.2f}x |\n"
            f"| largest difference: embedding / gradient | {out_diff:.1e} / {grad_diff:.1e} |\n\n"
            f"Machine: {results['machine']}, one torch thread; load: {args.load or 'not stated'}.\n")
    args.out.with_suffix(".md").write_text(text, encoding="utf-8")
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
