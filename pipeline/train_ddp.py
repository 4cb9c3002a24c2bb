r"""``torchrun ... -m pipeline.train_ddp --property P``: the train stage, data-parallel.

Runs what ``matshift train`` runs (same params section, same inputs, same outputs and
MLflow run) with every GNN's minibatches shared among the ranks ``torchrun`` starts and
their gradients averaged (models/distributed.py): gloo on CPU, NCCL with one GPU per rank.
Rank 0 alone writes ``data/models/<property>/`` and logs to MLflow; the other ranks train
and exit. Without ``torchrun`` it is a world of one (the ordinary single-process stage).

One node, two processes::

    torchrun --standalone --nproc_per_node=2 -m pipeline.train_ddp --property band_gap

Two nodes with 4 GPUs each (run on both, with the first node's address)::

    torchrun --nnodes=2 --nproc_per_node=4 --rdzv_backend=c10d --rdzv_endpoint=node0:29500 \\
        --rdzv_id=matshift -m pipeline.train_ddp --property band_gap

The baselines (random forest, linear calibration) are fitted on every rank (cheap, seeded,
identical); only the GNN training is divided.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from collections.abc import Sequence

from pipeline.config import ConfigError, load_section, to_dict
from pipeline.errors import MatshiftError

log = logging.getLogger(__name__)


def train_ddp(args: argparse.Namespace) -> int:
    from models import atomic_dir
    from models.learners import fit_property, init_from_env, is_writer, shutdown, write_outputs
    from pipeline.train import CLAMP_MIN, TrainParams, _train_config, load_inputs

    cfg = load_section(TrainParams, "train", args.params)
    prop = args.property
    parallel, device = init_from_env(backend=args.backend)
    try:
        writer = is_writer(parallel)
        inputs = load_inputs(cfg, prop)
        t0 = time.perf_counter()
        result = fit_property(
            dft=inputs["dft"], experiment=inputs["experiment"], descriptors=inputs["descriptors"],
            graphs=inputs["graphs"], train_config=_train_config(cfg, prop), members=cfg.members,
            encoders=cfg.encoders, pretrain_epochs=cfg.optim.pretrain_epochs,
            pretrain_batch_size=cfg.optim.pretrain_batch_size, selection_fraction=cfg.selection_fraction,
            rf_trees=cfg.rf_trees, seed=cfg.seed, device=str(device), parallel=parallel,
        )
        if not writer:
            return 0
        out = cfg.out_dir / prop
        with atomic_dir(out) as tmp:
            write_outputs(result, tmp, descriptors=inputs["descriptors"], property_name=prop,
                              clamp_min=CLAMP_MIN[prop], config={**to_dict(cfg), "ddp_world_size": parallel.world})
        log.info("%s: trained on %d rank(s) in %.0f s; selection MAE %s", prop, parallel.world,
                 time.perf_counter() - t0, json.dumps({k: round(v, 4) for k, v in result.metrics.items()}))
        if not args.no_mlflow:
            from models.serving import log_run
            from pipeline.config import flatten

            tracking_uri = os.environ.get("MLFLOW_TRACKING_URI", cfg.tracking_uri)
            log_run(
                tracking_uri=tracking_uri, experiment=cfg.experiment, run_name=f"train-{prop}-ddp{parallel.world}",
                params={"property": prop, "ddp_world_size": parallel.world, **flatten(cfg)}, result=result,
                model_dir=out, registered_name=f"matshift-{prop}" if cfg.register else None,
                example=inputs["experiment"][["formula"]].head(5).assign(
                    dft_value=lambda f: f["formula"].map(result.dft_reference).astype(float)),
            )
        return 0
    finally:
        shutdown()


def main(argv: Sequence[str] | None = None) -> int:
    from pipeline.train import add_arguments

    parser = argparse.ArgumentParser(prog="torchrun ... -m pipeline.train_ddp", description=__doc__.splitlines()[0])
    add_arguments(parser)
    parser.add_argument("--backend", choices=["gloo", "nccl"], default=None,
                        help="process-group backend (default: nccl when CUDA is available, else gloo)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        return train_ddp(args)
    except (ConfigError, MatshiftError, RuntimeError) as exc:
        print(f"matshift train (ddp): {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    raise SystemExit(main())
