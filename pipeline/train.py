"""``matshift train --property P``: train the GNN ensemble and the baselines, log to MLflow.

Reads ``data/raw/`` (DFT and experiment tables), ``data/features/descriptors.parquet`` and
``data/aligned/<property>/dft.parquet`` (OT-calibrated targets with confidence); writes
``data/models/<property>/`` (ensemble members as init-args JSON + weights with sha256,
``ensemble.json``, baselines, ``metrics.json``, ``history.csv``, ``learning_curves.png``).

The measured entries are split once, grouped by reduced formula, into a training part and a
selection part (``train.selection_fraction``); every model (GNN with and without OT, raw DFT,
linear calibration, Magpie random forest) is fitted on the training part and scored on the
selection part, so the numbers in ``metrics.json`` compare models on the same unseen
formulas. Caveat: the align stage's calibrated targets were fitted on *all* measurements,
selection rows included, so ``mae_gnn_ot`` there is optimistic; leak-free numbers come from
``benchmarks/cv_experiment.py`` and the evaluate stage (alignment refitted per fold).

MLflow: parameters (the flattened config), per-epoch metrics of every member, artifacts,
and the ensemble as a ``pyfunc`` model with a signature, registered as
``matshift-<property>``. Tracking URI: ``MLFLOW_TRACKING_URI`` when set, otherwise
``train.tracking_uri`` (a local SQLite file by default).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from models import atomic_dir
from pipeline.config import flatten, load_section, to_dict
from pipeline.errors import MatshiftError, MissingInputError

log = logging.getLogger(__name__)

PROPERTIES = ("band_gap", "formation_enthalpy")
DFT_COLUMN = {"band_gap": "band_gap_pbe", "formation_enthalpy": "formation_energy_per_atom"}
CLAMP_MIN = {"band_gap": 0.0, "formation_enthalpy": None}


@dataclass(frozen=True)
class ModelParams:
    comp_hidden: int = 64
    comp_layers: int = 2
    comp_heads: int = 1
    emb_dim: int = 64
    head_hidden: int = 64
    head_depth: int = 2
    dropout: float = 0.0
    use_descriptors: bool = True
    # crystal-graph encoder for entries with a structure (data/features/graphs.pt)
    use_graphs: bool = True
    graph_hidden: int = 64
    graph_layers: int = 3


@dataclass(frozen=True)
class OptimParams:
    epochs: int = 40
    pretrain_epochs: int = 4
    freeze_encoder: bool = True
    batch_size: int = 128
    dft_batch_size: int = 128
    pretrain_batch_size: int = 256
    lr: float = 0.002
    weight_decay: float = 1e-5
    patience: int = 8
    val_fraction: float = 0.15
    w_dft: float = 0.5
    w_exp: float = 1.0
    w_calibrated: float = 0.3
    w_ot: float = 0.05
    ot_reg: float = 0.1
    ot_reg_m: float = 1.0
    ot_iters: int = 30
    loss: str = "l1"


@dataclass(frozen=True)
class StackParams:
    """The multi-fidelity stacked model (``models.stacked``) and its weight in the served blend.

    ``blend_weight`` is fixed from the CV benchmark (benchmarks/cv_experiment_results.md), not
    fitted here: the served prediction is ``w * stacked + (1 - w) * gnn_ot``.
    """

    enabled: bool = True
    blend_weight: float = 1.0
    # the served stacked model takes the align stage's calibration shifts (models/shift_field.py)
    ot_features: bool = True
    ot_neighbours: int = 5
    ot_in_correction: bool = False
    # other DFT fidelities in data/raw/dft.parquet, given to the stacked model where known
    extra_fidelities: tuple[str, ...] = ("band_gap_hse", "band_gap_gllb_sc", "band_gap_scan")
    bags: int = 5
    surrogate_trees: int = 300
    surrogate_leaves: int = 63
    trees: int = 800
    leaves: int = 31
    lr: float = 0.03
    min_child_samples: int = 10
    objective: str = "regression"
    n_jobs: int = 2

    def __post_init__(self) -> None:
        if not 0.0 <= self.blend_weight <= 1.0:
            raise ValueError(f"stack.blend_weight must be in [0, 1], got {self.blend_weight}")
        if self.blend_weight > 0 and not self.enabled:
            raise ValueError("stack.blend_weight > 0 needs stack.enabled: true")


@dataclass(frozen=True)
class TrainParams:
    """The ``train`` section of params.yaml."""

    seed: int = 0
    members: int = 4
    encoders: int = 2
    selection_fraction: float = 0.2
    rf_trees: int = 300
    raw_dir: Path = Path("data/raw")
    features_dir: Path = Path("data/features")
    aligned_dir: Path = Path("data/aligned")
    out_dir: Path = Path("data/models")
    tracking_uri: str = "sqlite:///mlflow.db"
    experiment: str = "matshift"
    register: bool = True
    device: str = "auto"
    model: ModelParams = field(default_factory=ModelParams)
    optim: OptimParams = field(default_factory=OptimParams)
    stack: StackParams = field(default_factory=StackParams)

    def __post_init__(self) -> None:
        if self.members < 1:
            raise ValueError(f"members must be >= 1, got {self.members}")
        if not 1 <= self.encoders <= self.members:
            raise ValueError(f"encoders must be in 1..members, got {self.encoders}")
        if not 0.0 < self.selection_fraction < 0.5:
            raise ValueError(f"selection_fraction must be in (0, 0.5), got {self.selection_fraction}")
        if self.rf_trees < 1:
            raise ValueError(f"rf_trees must be >= 1, got {self.rf_trees}")
        if self.optim.loss not in ("l1", "huber"):
            raise ValueError(f"optim.loss must be 'l1' or 'huber', got {self.optim.loss!r}")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--params", type=Path, default=Path("params.yaml"), help="parameter file (default params.yaml)")
    parser.add_argument("--property", choices=PROPERTIES, required=True, help="which measured property to train for")
    parser.add_argument("--no-mlflow", action="store_true", help="train and write outputs without MLflow logging")


def _read(path: Path, columns: list[str]) -> pd.DataFrame:
    try:
        frame = pd.read_parquet(path)
    except (OSError, ValueError) as exc:  # missing, or truncated/corrupt (pyarrow's ArrowInvalid is a ValueError)
        raise MissingInputError(f"cannot read {path}: {exc}; run the upstream stage first (dvc repro)") from exc
    missing = [c for c in columns if c not in frame]
    if missing:
        raise MissingInputError(f"{path} lacks column(s) {', '.join(missing)} (see docs/ARCHITECTURE.md)")
    return frame


def _refuse_non_finite(frame: pd.DataFrame, columns: list[str], path: Path, *, allow_nan: bool = False) -> None:
    """Upstream stages never write NaN/inf where a number is required: such a file is not used silently."""
    import numpy as np

    for col in columns:
        values = pd.to_numeric(frame[col], errors="coerce").to_numpy(dtype=float)
        bad = np.isinf(values) if allow_nan else ~np.isfinite(values)
        if bad.any():
            row = frame.loc[bad].iloc[0]
            key = row.get("formula", row.name)
            raise MatshiftError(f"{path}: column {col!r} holds {int(bad.sum())} non-finite value(s) (e.g. {key!r}: "
                                f"{values[bad][0]}); rerun the upstream stage (dvc repro)")


def check_alignment(aligned_dir: Path) -> dict[str, Any]:
    """Read ``align.json``; an alignment that did not converge is refused unless align allowed it.

    The align stage itself refuses to write an unconverged plan unless ``align.allow_unconverged``
    is true, and records that choice in ``align.json`` (``params.allow_unconverged``); train
    checks again so that a hand-made or stale alignment is never used silently.
    """
    path = aligned_dir / "align.json"
    try:
        diag = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise MissingInputError(f"{path} is missing; run `matshift align` (dvc repro) first") from exc
    except (OSError, ValueError) as exc:
        raise MissingInputError(f"cannot read {path}: {exc}; rerun `matshift align` (dvc repro)") from exc
    if not isinstance(diag, dict) or not isinstance(diag.get("converged"), bool):
        raise MissingInputError(f"{path} has no 'converged' flag; rerun `matshift align` (dvc repro)")
    if not diag["converged"]:
        if (diag.get("params") or {}).get("allow_unconverged") is not True:
            raise MatshiftError(f"{path}: the alignment did not converge ({diag.get('iterations')} iterations) and "
                                "align.allow_unconverged is not set; fix the alignment (align.max_iter, align.reg) "
                                "rather than training on it")
        log.warning("%s: training on an alignment that did NOT converge (align.allow_unconverged: true)", path)
    return diag


def load_inputs(cfg: TrainParams, prop: str) -> dict[str, Any]:
    """Read the stage's inputs by their contract names (docs/ARCHITECTURE.md)."""
    columns = list(dict.fromkeys(["material_id", "formula", DFT_COLUMN[prop], "formation_energy_per_atom"]))
    dft = _read(cfg.raw_dir / "dft.parquet", columns)
    # Polymorphs of one formula are ranked by formation energy per atom: for a fixed
    # composition it orders them exactly as energy above hull does, and unlike e_above_hull
    # (known only for the flla rows of the mirror) it is known for nearly every entry.
    dft["stability"] = dft["formation_energy_per_atom"]
    exp = _read(cfg.raw_dir / "experiment.parquet", ["exp_id", "formula", "property", "value"])
    desc = _read(cfg.features_dir / "descriptors.parquet", ["formula"])
    aligned = _read(cfg.aligned_dir / prop / "dft.parquet", ["material_id", "calibrated_target", "confidence"])
    check_alignment(cfg.aligned_dir / prop)
    exp = exp[exp["property"] == prop].reset_index(drop=True)
    _refuse_non_finite(exp, ["value"], cfg.raw_dir / "experiment.parquet")
    _refuse_non_finite(dft, [DFT_COLUMN[prop]], cfg.raw_dir / "dft.parquet", allow_nan=True)  # NaN = unknown
    _refuse_non_finite(desc, [c for c in desc.columns if c != "formula"], cfg.features_dir / "descriptors.parquet")
    _refuse_non_finite(aligned, ["calibrated_target", "confidence"], cfg.aligned_dir / prop / "dft.parquet",
                       allow_nan=True)  # NaN = no calibrated target for that entry
    graphs = None
    if cfg.model.use_graphs:
        path = cfg.features_dir / "graphs.pt"
        try:
            from featurizers.crystal_graph import load_graphs
        except ImportError as exc:
            raise MissingInputError("model.use_graphs needs featurizers.crystal_graph (the featurize stage)") from exc
        if not path.exists():
            raise MissingInputError(f"{path} is missing; run the featurize stage or set train.model.use_graphs: false")
        try:
            graphs = load_graphs(path)
        except Exception as exc:  # torch raises many types for a truncated/corrupt file (re-raised, chained)
            raise MissingInputError(f"cannot read {path} ({type(exc).__name__}: {str(exc)[:200]}); rerun the "
                                    "featurize stage (dvc repro) or set train.model.use_graphs: false") from exc
    if exp.empty:
        raise MissingInputError(f"{cfg.raw_dir / 'experiment.parquet'} holds no {prop} measurements")
    dft = dft.rename(columns={DFT_COLUMN[prop]: "dft_value"}).dropna(subset=["dft_value"])
    dft = dft.merge(aligned[["material_id", "calibrated_target", "confidence"]], on="material_id", how="left")
    if graphs is not None:
        # a measurement uses the structure of its composition's lowest-energy DFT polymorph with a graph
        with_graph = dft[dft["material_id"].isin(graphs)].sort_values(["stability", "material_id"])
        exp["material_id"] = exp["formula"].map(with_graph.drop_duplicates("formula").set_index("formula")["material_id"])
    return {"dft": dft.reset_index(drop=True), "experiment": exp, "descriptors": desc, "graphs": graphs}


def run(args: argparse.Namespace) -> int:
    cfg = load_section(TrainParams, "train", args.params)
    prop = args.property
    # the one place the environment is read: MLflow's standard variable overrides params
    tracking_uri = os.environ.get("MLFLOW_TRACKING_URI", cfg.tracking_uri)
    inputs = load_inputs(cfg, prop)
    if not args.no_mlflow:  # fail in seconds, before minutes of training, when the store is unusable
        from models.serving import TrackingError, ensure_store

        try:
            ensure_store(tracking_uri)
        except TrackingError as exc:
            raise MatshiftError(str(exc)) from exc
    from models.learners import fit_property, write_outputs

    t0 = time.perf_counter()
    result = fit_property(
        dft=inputs["dft"], experiment=inputs["experiment"], descriptors=inputs["descriptors"], graphs=inputs["graphs"],
        train_config=_train_config(cfg, prop), members=cfg.members, encoders=cfg.encoders,
        pretrain_epochs=cfg.optim.pretrain_epochs, pretrain_batch_size=cfg.optim.pretrain_batch_size,
        selection_fraction=cfg.selection_fraction, rf_trees=cfg.rf_trees, seed=cfg.seed, device=cfg.device,
        stack_config=_stack_config(cfg), blend_weight=cfg.stack.blend_weight,
        extra_fidelities=tuple(c for c in cfg.stack.extra_fidelities if c != DFT_COLUMN[prop]),
        ot_features=cfg.stack.ot_features,
    )
    out = cfg.out_dir / prop
    with atomic_dir(out) as tmp:
        write_outputs(result, tmp, descriptors=inputs["descriptors"], property_name=prop,
                          clamp_min=CLAMP_MIN[prop], config=to_dict(cfg))
    log.info("%s: trained in %.0f s; selection MAE %s", prop, time.perf_counter() - t0,
             json.dumps({k: round(v, 4) for k, v in result.metrics.items()}))
    if not args.no_mlflow:
        from models.serving import log_run

        log_run(
            tracking_uri=tracking_uri, experiment=cfg.experiment, run_name=f"train-{prop}",
            params={"property": prop, **flatten(cfg)}, result=result, model_dir=out,
            registered_name=f"matshift-{prop}" if cfg.register else None,
            example=inputs["experiment"][["formula"]].head(5).assign(
                dft_value=lambda f: f["formula"].map(result.dft_reference).astype(float)),
        )
    return 0


def _stack_config(cfg: TrainParams):
    if not cfg.stack.enabled:
        return None
    from models.learners import StackConfig

    st = cfg.stack
    return StackConfig(bags=st.bags, surrogate_trees=st.surrogate_trees, surrogate_leaves=st.surrogate_leaves, trees=st.trees,
                       leaves=st.leaves, lr=st.lr, min_child_samples=st.min_child_samples, objective=st.objective,
                       n_jobs=st.n_jobs, seed=cfg.seed, ot_neighbours=st.ot_neighbours,
                       ot_in_correction=st.ot_in_correction)


def _train_config(cfg: TrainParams, prop: str):
    from models.learners import ModelConfig, TrainConfig

    o = cfg.optim
    return TrainConfig(
        epochs=o.epochs, pretrain_epochs=0, batch_size=o.batch_size, dft_batch_size=o.dft_batch_size, lr=o.lr,
        weight_decay=o.weight_decay, patience=o.patience, val_fraction=o.val_fraction, w_dft=o.w_dft, w_exp=o.w_exp,
        w_calibrated=o.w_calibrated, w_ot=o.w_ot, use_ot=True, ot_reg=o.ot_reg, ot_reg_m=o.ot_reg_m,
        ot_iters=o.ot_iters, loss=o.loss, clamp_min=CLAMP_MIN[prop], freeze_encoder=o.freeze_encoder, model=ModelConfig(**to_dict(cfg.model)),
    )


__all__ = ["StackParams", "TrainParams", "add_arguments", "check_alignment", "load_inputs", "run"]
