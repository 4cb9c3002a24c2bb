r"""``matshift train --property P``: fit the served model, the GNNs and the baselines; log to MLflow.

Reads ``data/raw/`` (DFT and experiment tables), ``data/features/descriptors.parquet`` (and
``graphs.pt`` with ``train.model.use_graphs``), ``data/aligned/<property>/`` (OT-calibrated
targets with confidence; ``align.json`` must say converged), the surrogate stage's
``data/surrogates/<property>/`` (the stacked model's DFT surrogate) and the pretrain stage's
``data/pretrained/<property>/`` (the GNNs' DFT-pretrained encoders), each computed here instead
when absent or not this run's; fits everything :func:`models.learners.fit_property` fits with
the ``train`` section's :class:`~models.learners.FitConfig`; writes ``data/models/<property>/``
(docs/ARCHITECTURE.md) and an MLflow run with the model registered as ``matshift-<property>``.
Tracking URI: ``MLFLOW_TRACKING_URI`` when set, otherwise ``train.tracking_uri`` (a local
SQLite file).

The measured formulas are split once (grouped) into a training and a selection part; every
model is scored on the selection part. The GNNs never see a selection formula's calibrated
targets, but the align stage fitted its calibration line (and, for formation enthalpies, its
per-element corrections) on *all* measurements, so the selection scores of the models with OT
may still be optimistic; leak-free numbers come from the evaluate stage (alignment refitted per
fold).

``--distributed`` shares every GNN minibatch among the ranks ``torchrun`` starts and averages
their gradients (:mod:`models.learners.distributed`: gloo on CPU, NCCL with one GPU per rank);
the same code path otherwise, so the same served model. Rank 0 alone writes and logs::

    torchrun --standalone --nproc_per_node=2 -m pipeline.cli train --property band_gap --distributed
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

from models import atomic_dir
from models.properties import PROPERTY_NAMES, Property, choose_polymorphs, get_property
from pipeline import readers
from pipeline.config import DEFAULT_PARAMS, flatten, load_section, to_dict
from pipeline.engine import open_engine
from pipeline.errors import MatshiftError
from pipeline.params.metal import MetalParams
from pipeline.params.train import TrainParams
from pipeline.shared import check_correction_terms, read_pretrained, read_surrogate

log = logging.getLogger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--params", type=Path, default=DEFAULT_PARAMS, help="parameter file (default params.yaml)")
    parser.add_argument("--property", choices=PROPERTY_NAMES, required=True, help="which measured property to train for")
    parser.add_argument("--no-mlflow", action="store_true", help="train and write outputs without MLflow logging")
    parser.add_argument("--distributed", action="store_true",
                        help="data-parallel GNN training over the processes torchrun started (see the module help)")
    parser.add_argument("--backend", choices=["gloo", "nccl"], default=None,
                        help="--distributed process-group backend (default: nccl when CUDA is available, else gloo)")


def load_inputs(params: TrainParams, prop: Property) -> dict[str, Any]:
    """Read the stage's inputs by their contract names (docs/ARCHITECTURE.md)."""
    stack = params.fit.stack
    dft = readers.read_dft(params.raw_dir, prop, extra=params.fit.extra_fidelities(prop) if stack.enabled else ())
    exp = readers.read_measurements(params.raw_dir, prop)
    desc = readers.read_descriptors(params.features_dir)
    aligned_path = params.aligned_dir / prop.name / "dft.parquet"
    aligned = readers.read_table(aligned_path, ["material_id", "calibrated_target", "confidence"])
    readers.read_alignment(params.aligned_dir / prop.name)
    # NaN = no calibrated target for that entry
    readers.refuse_non_finite(aligned, ["calibrated_target", "confidence"], aligned_path, allow_nan=True)
    graphs = (readers.read_graphs(params.features_dir, hint="set train.model.use_graphs: false")
              if params.fit.model.use_graphs else None)
    dft = dft.rename(columns={prop.dft_column: "dft_value"}).dropna(subset=["dft_value"])
    dft = dft.merge(aligned[["material_id", "calibrated_target", "confidence"]], on="material_id", how="left")
    if graphs is not None:
        # a measurement uses the crystal graph of its formula's polymorph among those with a graph
        exp["material_id"] = exp["formula"].map(
            choose_polymorphs(dft, eligible=dft["material_id"].isin(graphs))["material_id"])
    surrogate = read_surrogate(params.surrogate_dir / prop.name) if stack.enabled else None
    pretrained = read_pretrained(params.pretrained_dir / prop.name) if params.fit.optim.pretrain_epochs else None
    return {"dft": dft.reset_index(drop=True), "experiment": exp, "descriptors": desc, "graphs": graphs,
            "surrogate": surrogate, "pretrained": pretrained}


def bundle_inputs(params: TrainParams, prop: Property, args: argparse.Namespace) -> dict[str, Any]:
    """Return what the registered predictor packages beside the model, read as ``matshift predict`` reads it."""
    metal = load_section(MetalParams, "metal", args.params).out_dir
    return {"dft": readers.read_dft(params.raw_dir, prop, extra=params.fit.extra_fidelities(prop)),
            "structures": lambda ids: readers.read_structures(params.raw_dir, ids),
            "index": readers.read_index(params.features_dir) if (params.features_dir / "index.parquet").is_file() else None,
            "features_dir": params.features_dir, "neural_map": params.aligned_dir / prop.name / "neural_map",
            "metal_dir": metal}


def run(args: argparse.Namespace) -> int:
    # torch, PyG, scikit-learn, LightGBM, MLflow: imported when the stage runs, not for `--help`
    from models.learners import fit_property, init_from_env, is_writer, shutdown, write_outputs
    from models.serving import TrackingError, ensure_store, log_run
    from models.tracking import write_run_record

    params = load_section(TrainParams, "train", args.params)
    prop = get_property(args.property)
    # the one place the environment is read: MLflow's standard variable overrides params
    tracking_uri = os.environ.get("MLFLOW_TRACKING_URI", params.tracking_uri)
    inputs = load_inputs(params, prop)
    check_correction_terms(params.fit.stack_config(prop), inputs["descriptors"], prop.name)
    parallel, fit = None, params.fit
    if getattr(args, "distributed", False):
        parallel, device = init_from_env(backend=getattr(args, "backend", None))
        fit = replace(fit, device=str(device))
    try:
        log_mlflow = is_writer(parallel) and not args.no_mlflow
        if log_mlflow:  # fail in seconds, before minutes of training, when the store is unusable
            try:
                ensure_store(tracking_uri)
            except TrackingError as exc:
                raise MatshiftError(str(exc)) from exc
        t0 = time.perf_counter()
        with open_engine(params.engine, n_workers=fit.workers, scheduler_address=params.scheduler_address) as engine:
            result = fit_property(dft=inputs["dft"], experiment=inputs["experiment"], descriptors=inputs["descriptors"],
                                  graphs=inputs["graphs"], config=fit, prop=prop, parallel=parallel,
                                  dask_client=getattr(engine, "client", None), surrogate=inputs["surrogate"],
                                  pretrained=inputs["pretrained"])
        if not is_writer(parallel):
            return 0
        world = {} if parallel is None else {"ddp_world_size": parallel.world}
        out = params.out_dir / prop.name
        with atomic_dir(out) as tmp:
            write_outputs(result, tmp, descriptors=inputs["descriptors"], prop=prop, config={**to_dict(params), **world})
        log.info("%s: trained%s in %.0f s; selection MAE %s", prop.name,
                 f" on {parallel.world} rank(s)" if parallel else "", time.perf_counter() - t0,
                 json.dumps({k: round(v, 4) for k, v in result.metrics.items()}))
        if log_mlflow:
            run_id, version = log_run(
                tracking_uri=tracking_uri, experiment=params.experiment,
                run_name=f"train-{prop.name}" + (f"-ddp{parallel.world}" if parallel else ""),
                params={"property": prop.name, **world, **flatten(params)}, result=result, model_dir=out,
                registered_name=f"matshift-{prop.name}" if params.register else None,
                example=inputs["experiment"][["formula"]].head(5), bundle=bundle_inputs(params, prop, args),
            )
            write_run_record(out, run_id=run_id, tracking_uri=tracking_uri, experiment=params.experiment,
                             registered=f"matshift-{prop.name}" if params.register else None, version=version)
        return 0
    finally:
        if parallel is not None:
            shutdown()
