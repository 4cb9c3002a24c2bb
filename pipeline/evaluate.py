"""``matshift evaluate --property P [--quick]``: leak-free out-of-distribution evaluation.

Reads ``data/raw/``, ``data/features/`` and the align stage's measurement masses
(``data/aligned/<property>/experiment.parquet``, used only for the mass-against-error
plot), the ``align`` and ``train`` sections of params.yaml (the alignment and the GNN are
refitted per fold with exactly those settings, apart from the documented cheaper per-fold
training budget in ``evaluate.full``/``evaluate.quick``), and writes:

* ``metrics/<property>.json`` (DVC metrics): per protocol MAE, RMSE and R^2 of every model
  and ablation, the mean training-to-test OT shift, the applicability-domain split, and the
  pooled out-of-distribution summary (LOCO + family-out + crystal-system-out);
* ``plots/<property>/``: ``folds.csv`` (the seeded folds), ``predictions.csv`` (parity, per
  test row and model), ``error_vs_shift.csv`` (per fold), ``mass_vs_error.csv``, and PNGs.

Protocols (``models/splits.py``): grouped CV by reduced formula, LOCO-CV (k-means on
standardised composition descriptors), leave-family-out, leave-crystal-system-out
(measurements whose formula has a DFT polymorph with a known crystal system: the system of
the most stable such polymorph), and range extrapolation (top 10% held out).

Leakage rules and what is shared between folds: see :mod:`models.evaluation`.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import pandas as pd

from models import atomic_dir, json_default, write_text
from pipeline.config import DEFAULT_PARAMS, load_section, to_dict
from pipeline.errors import MatshiftError, MissingInputError

log = logging.getLogger(__name__)

PROPERTIES = ("band_gap", "formation_enthalpy")
PROTOCOLS = ("grouped_cv", "loco", "family_out", "crystal_system_out", "range_extrapolation")
OOD_PROTOCOLS = ("loco", "family_out", "crystal_system_out")
UNITS = {"band_gap": "eV", "formation_enthalpy": "eV/atom"}


@dataclass(frozen=True)
class EvalSettings:
    """One evaluation budget (``evaluate.full`` or ``evaluate.quick``).

    The per-fold GNN is the train stage's model and optimiser (``train.model``,
    ``train.optim``) with a smaller budget: ``members`` members per model sharing
    ``encoders`` DFT-pretrained composition encoders (``pretrain_epochs``), fine-tuned for at
    most ``epochs`` with early-stopping ``patience``, and optionally without the crystal-graph
    branch (``use_graphs``), because five GNN variants x ~23 folds x 2 properties must fit in
    45 minutes on two cores.
    """

    protocols: list[str] = field(default_factory=lambda: list(PROTOCOLS))
    models: list[str] = field(default_factory=lambda: ["stacked", "stacked_ot", "gnn_no_ot", "gnn_ot", "gnn_ot_balanced",
                                                       "gnn_ot_no_penalties", "gnn_ot_no_calibrated"])
    n_folds: int = 5
    loco_clusters: int = 5
    top_fraction: float = 0.1
    max_measurements: int = 0  # 0 = all; otherwise a seeded subsample of whole formulas
    max_dft: int = 0  # 0 = all; otherwise the measured formulas' entries plus a seeded sample
    members: int = 1
    encoders: int = 1
    pretrain_epochs: int = 2
    epochs: int = 15
    patience: int = 5
    use_graphs: bool = False
    rf_trees: int = 100
    shift_sample: int = 500
    stack_bags: int = 0  # boosters per stacked model and fold; 0 = train.stack.bags
    neural_iterations: int = 0  # outer steps of the per-fold neural OT map (calib_neural); 0 = not fitted

    def __post_init__(self) -> None:
        bad = [p for p in self.protocols if p not in PROTOCOLS]
        if bad:
            raise ValueError(f"unknown protocol {bad[0]!r} (valid: {', '.join(PROTOCOLS)})")
        from models.evaluation import GNN_VARIANTS, STACKED_MODELS

        bad = [m for m in self.models if m not in GNN_VARIANTS and m not in STACKED_MODELS]
        if bad:
            raise ValueError(f"unknown model {bad[0]!r} (valid: {', '.join([*STACKED_MODELS, *GNN_VARIANTS])})")
        if self.stack_bags < 0 or self.neural_iterations < 0:
            raise ValueError("stack_bags and neural_iterations must be >= 0")
        if min(self.n_folds, self.loco_clusters) < 2:
            raise ValueError("n_folds and loco_clusters must be >= 2")
        if not 0 < self.top_fraction < 1:
            raise ValueError(f"top_fraction must be in (0, 1), got {self.top_fraction}")
        if min(self.members, self.encoders, self.epochs, self.patience, self.rf_trees, self.shift_sample) < 1:
            raise ValueError("members, encoders, epochs, patience, rf_trees and shift_sample must be >= 1")
        if self.max_measurements < 0 or self.max_dft < 0 or self.pretrain_epochs < 0:
            raise ValueError("max_measurements, max_dft and pretrain_epochs must be >= 0")


@dataclass(frozen=True)
class EvaluateParams:
    """The ``evaluate`` section of params.yaml."""

    seed: int = 0
    raw_dir: Path = Path("data/raw")
    features_dir: Path = Path("data/features")
    aligned_dir: Path = Path("data/aligned")
    metrics_dir: Path = Path("metrics")
    plots_dir: Path = Path("plots")
    ad_k: int = 5
    ad_threshold: float = 95.0
    threads: int = 2
    device: str = "auto"
    full: EvalSettings = field(default_factory=EvalSettings)
    quick: EvalSettings = field(default_factory=lambda: EvalSettings(
        protocols=["grouped_cv", "family_out"], n_folds=2, max_measurements=300, max_dft=3000, epochs=3,
        patience=2, pretrain_epochs=1, rf_trees=20, shift_sample=100))

    def __post_init__(self) -> None:
        if not 0 < self.ad_threshold < 100:
            raise ValueError(f"ad_threshold must be in (0, 100), got {self.ad_threshold}")
        if self.ad_k < 1 or self.threads < 1:
            raise ValueError("ad_k and threads must be >= 1")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--params", type=Path, default=DEFAULT_PARAMS, help="parameter file (default params.yaml)")
    parser.add_argument("--property", choices=PROPERTIES, required=True, help="which measured property to evaluate")
    parser.add_argument("--quick", action="store_true", help="the small evaluate.quick budget (tests, smoke runs)")


def run(args: argparse.Namespace) -> int:
    import torch

    from pipeline.align import AlignConfig
    from pipeline.train import TrainParams

    cfg = load_section(EvaluateParams, "evaluate", args.params)
    align_cfg = load_section(AlignConfig, "align", args.params)
    train_cfg = load_section(TrainParams, "train", args.params)
    torch.set_num_threads(cfg.threads)
    metrics = evaluate_property(cfg, align_cfg, train_cfg, args.property, quick=args.quick)
    ood = metrics.get("pooled_ood", {})
    log.info("%s: evaluated in %.0f s; pooled OOD MAE %s; gain of %s vs best non-OT (%s): %s", args.property,
             metrics["seconds"], json.dumps({k: round(v, 4) for k, v in ood.get("mae", {}).items()}),
             ood.get("ot_model"), ood.get("best_non_ot_model"), ood.get("gain_vs_best_non_ot"))
    return 0


def load_problem(cfg: EvaluateParams, align_cfg, settings: EvalSettings, prop: str) -> dict:
    """Domains, entry table, descriptors and per-measurement attributes for ``prop``."""
    from models.evaluation import subset_domain
    from models.learners import EntryTable
    from models.properties import reference_per_formula
    from pipeline.align import load_domains

    acfg = replace(align_cfg, raw_dir=cfg.raw_dir, features_dir=cfg.features_dir)
    source, target, dropped = load_domains(acfg, prop)
    rng = np.random.default_rng(cfg.seed)
    if settings.max_measurements and target.size > settings.max_measurements:
        uniq = rng.permutation(np.unique(target.formulas))
        counts = pd.Series(target.formulas).value_counts()
        keep, n = [], 0
        for f in uniq:
            if n >= settings.max_measurements:
                break
            keep.append(f)
            n += int(counts[f])
        target = subset_domain(target, np.flatnonzero(np.isin(target.formulas, keep)))
    if settings.max_dft and source.size > settings.max_dft:
        measured = np.isin(source.formulas, target.formulas)
        others = np.flatnonzero(~measured)
        extra = rng.choice(others, size=max(0, min(len(others), settings.max_dft - int(measured.sum()))), replace=False)
        source = subset_domain(source, np.sort(np.concatenate([np.flatnonzero(measured), extra])))
    raw = pd.read_parquet(cfg.raw_dir / "dft.parquet", columns=["material_id", "formation_energy_per_atom"])
    stability = raw.drop_duplicates("material_id").set_index("material_id")["formation_energy_per_atom"]
    dft = pd.DataFrame({"material_id": source.ids, "formula": source.formulas, "dft_value": source.values})
    dft["stability"] = dft["material_id"].map(stability).astype(float)
    ref = reference_per_formula(dft, value="dft_value", rank="stability")
    index = pd.read_parquet(cfg.features_dir / "index.parquet", columns=["id", "crystal_system", "has_graph"])
    index = index.drop_duplicates("id").set_index("id")
    known = dft.assign(cs=dft["material_id"].map(index["crystal_system"]).fillna("").astype(str))
    known = known[known["cs"] != ""].sort_values(["stability", "material_id"], na_position="last")
    system_of = known.drop_duplicates("formula").set_index("formula")["cs"]
    exp = pd.DataFrame({"exp_id": target.ids, "formula": target.formulas, "value": target.values})
    exp["crystal_system"] = exp["formula"].map(system_of).fillna("").astype(str)
    graphs = None
    if settings.use_graphs:
        from featurizers.crystal_graph import load_graphs

        path = cfg.features_dir / "graphs.pt"
        if not path.exists():
            raise MissingInputError(f"{path} is missing; run the featurize stage or set use_graphs: false")
        graphs = load_graphs(path)
        with_graph = dft[dft["material_id"].isin(graphs)].sort_values(["stability", "material_id"])
        exp["material_id"] = exp["formula"].map(with_graph.drop_duplicates("formula").set_index("formula")["material_id"])
    desc = pd.read_parquet(cfg.features_dir / "descriptors.parquet")
    table = EntryTable.build(dft=dft[["material_id", "formula", "dft_value"]],
                             experiment=exp[["formula", "value", *(["material_id"] if graphs else [])]],
                             descriptors=desc, dft_reference=ref, graphs=graphs)
    mass_path = cfg.aligned_dir / prop / "experiment.parquet"
    mass = None
    if mass_path.is_file():
        aligned = pd.read_parquet(mass_path, columns=["exp_id", "transported_mass"])
        # relative to the uniform marginal 1/n: 1 = fully matched, 0 = left behind (outlier)
        rel = aligned.set_index("exp_id")["transported_mass"] * len(aligned)
        mass = exp["exp_id"].map(rel).to_numpy(float)
    return {"source": source, "target": target, "dft": dft, "experiment": exp, "descriptors": desc, "table": table,
            "reference": ref, "transported_mass": mass, "dropped": dropped}


def make_folds(settings: EvalSettings, exp: pd.DataFrame, descriptors: pd.DataFrame, seed: int) -> list:
    """Build the seeded folds of every protocol in ``settings.protocols`` (row positions into ``exp``)."""
    from models.evaluation import splits

    formulas = exp["formula"].tolist()
    folds = []
    for proto in settings.protocols:
        if proto == "grouped_cv":
            folds += splits.grouped_kfold(formulas, n_folds=settings.n_folds, seed=seed)
        elif proto == "loco":
            desc = descriptors.drop_duplicates("formula").set_index("formula").select_dtypes(include="number")
            folds += splits.loco_folds(formulas, desc.loc[formulas].to_numpy(float), n_clusters=settings.loco_clusters,
                                       seed=seed)
        elif proto == "family_out":
            folds += splits.family_folds(formulas)
        elif proto == "crystal_system_out":
            folds += splits.crystal_system_folds(formulas, exp["crystal_system"].tolist())
        elif proto == "range_extrapolation":
            folds.append(splits.range_extrapolation(exp["value"].to_numpy(), formulas, top_fraction=settings.top_fraction))
    if not folds:
        raise MatshiftError("no fold could be made: check evaluate.*.protocols and the data")
    return folds


def make_align_settings(align_cfg, prop: str):
    """Return the align stage's parameters (an ``AlignConfig``) as ``AlignSettings`` for ``prop``."""
    from models.evaluation import AlignSettings
    from models.transport import CostWeights, SolverOptions

    return AlignSettings(
        method=align_cfg.method, weights=CostWeights(**to_dict(align_cfg.cost)),
        options=SolverOptions(reg=align_cfg.reg, reg_m=align_cfg.reg_m, tol=align_cfg.tol, max_iter=align_cfg.max_iter,
                              emd_limit=align_cfg.dense_limit, partial_mass=align_cfg.partial_mass,
                              aot_price=align_cfg.aot_price, n_components=align_cfg.n_components, seed=align_cfg.seed),
        energy_additivity=align_cfg.energy_additivity and prop == "formation_enthalpy",
        additivity_iters=align_cfg.additivity_iters, additivity_ridge=align_cfg.additivity_ridge,
        dense_limit=align_cfg.dense_limit, knn=align_cfg.knn)


def stack_inputs(cfg: EvaluateParams, train_cfg, prop: str, descriptors: pd.DataFrame, *, bags: int = 0):
    """Build the stacked models' shared inputs: per-formula DFT references of *all* DFT entries, the surrogate.

    Both come from DFT labels only (no measurement), so every fold may share them; the stack
    configuration is the train stage's (``train.stack``), with ``bags`` boosters when > 0 and
    ``evaluate.threads`` LightGBM threads.
    """
    from models.evaluation import StackInputs
    from models.learners import DFTSurrogate
    from models.properties import reference_per_formula
    from pipeline.train import CLAMP_MIN, DFT_COLUMN, _stack_config

    col = DFT_COLUMN[prop]
    extra_cols = [c for c in train_cfg.stack.extra_fidelities if c != col]
    path = cfg.raw_dir / "dft.parquet"
    import pyarrow.parquet as pq

    have = set(pq.read_schema(path).names)
    columns = ["material_id", "formula", col, "formation_energy_per_atom", *[c for c in extra_cols if c in have]]
    dft = pd.read_parquet(path, columns=list(dict.fromkeys(columns)))
    # polymorphs ranked by formation energy per atom (for enthalpies: the property itself), as load_problem does
    dft = dft.assign(stability=dft["formation_energy_per_atom"])
    dft = dft[dft["formula"].isin(set(descriptors["formula"]))]
    ref = reference_per_formula(dft.assign(dft_value=dft[col]).dropna(subset=["dft_value"]), value="dft_value",
                                rank="stability")
    extra = {c: reference_per_formula(dft, value=c, rank="stability") for c in extra_cols if c in dft}
    # LightGBM gets the stage's thread budget: two properties evaluated side by side with the train
    # stage's 2 threads each oversubscribe 2 cores, and OpenMP's spinning then stalls both for minutes
    config = replace(_stack_config(train_cfg), clamp_min=CLAMP_MIN[prop], n_jobs=cfg.threads)
    if bags:
        config = replace(config, bags=bags)
    return StackInputs(config=config, dft_reference=ref, surrogate=DFTSurrogate(config).fit(descriptors, ref),
                       extra_reference=extra)


def evaluate_property(cfg: EvaluateParams, align_cfg, train_cfg, prop: str, *, quick: bool = False) -> dict:
    """Run every protocol for ``prop`` and write ``metrics/<prop>.json`` and ``plots/<prop>/``."""
    from models.evaluation import evaluate_folds, summarise
    from models.learners import determine_device, pretrain_members
    from pipeline.train import CLAMP_MIN, _train_config

    t0 = time.perf_counter()
    settings = cfg.quick if quick else cfg.full
    problem = load_problem(cfg, align_cfg, settings, prop)
    exp = problem["experiment"]
    log.info("%s: %d measurements (%d formulas), %d DFT entries; %s budget", prop, len(exp), exp["formula"].nunique(),
             problem["source"].size, "quick" if quick else "full")
    tp = replace(train_cfg, members=settings.members, encoders=settings.encoders,
                 model=replace(train_cfg.model, use_graphs=settings.use_graphs),
                 optim=replace(train_cfg.optim, epochs=settings.epochs, patience=settings.patience,
                               pretrain_epochs=settings.pretrain_epochs))
    tcfg = _train_config(tp, prop)
    device = determine_device(cfg.device)
    folds = make_folds(settings, exp, problem["descriptors"], cfg.seed)
    log.info("%s: %d folds over %s", prop, len(folds), ", ".join(dict.fromkeys(f.protocol for f in folds)))

    tp0 = time.perf_counter()
    # DFT-only pretraining (no measurement): computed once, shared by every fold
    gnn_models = [m for m in settings.models if m.startswith("gnn_")]
    pretrained = pretrain_members(problem["table"], tcfg, n_members=settings.encoders,
                                  epochs=max(settings.pretrain_epochs, 1), batch_size=tp.optim.pretrain_batch_size,
                                  seed=cfg.seed, device=device) if gnn_models else []
    pretrain_s = time.perf_counter() - tp0
    log.info("%s: %d DFT-pretrained encoder(s) in %.0f s", prop, len(pretrained), pretrain_s)
    stack = None
    if any(m.startswith("stacked") for m in settings.models):
        if not train_cfg.stack.enabled:
            raise MatshiftError("evaluate.*.models lists a stacked model but train.stack.enabled is false")
        t_sur = time.perf_counter()
        stack = stack_inputs(cfg, train_cfg, prop, problem["descriptors"], bags=settings.stack_bags)
        log.info("%s: DFT surrogate of the stacked models (DFT labels only; out-of-fold MAE %.4f on %d formulas) in %.0f s",
                 prop, stack.surrogate.mae_, len(stack.dft_reference), time.perf_counter() - t_sur)
    neural = None
    if settings.neural_iterations:
        from pipeline.align import _neural_options

        neural = _neural_options(align_cfg, prop)
        neural = replace(neural, dual=replace(neural.dual, iterations=settings.neural_iterations))
    align_settings = make_align_settings(align_cfg, prop)

    def progress(k: int, n: int, row: dict) -> None:
        parts = {k.replace("_seconds", "").replace("seconds_", ""): round(v, 1) for k, v in row.items()
                 if "seconds" in k and k != "seconds"}
        log.info("%s fold %d/%d %s/%s (%d test rows, shift %.3f) in %.0f s %s: MAE gnn_ot %.4f, gnn_no_ot %s, rf %.4f",
                 prop, k + 1, n, row["protocol"], row["fold"], row["n_test"], row["shift_ot"], row["seconds"], parts,
                 row.get("mae_gnn_ot", math.nan), round(row.get("mae_gnn_no_ot", math.nan), 4),
                 row["mae_rf_descriptors"])

    result = evaluate_folds(
        source=problem["source"], target=problem["target"], table=problem["table"],
        descriptors=problem["descriptors"], dft_reference=exp["formula"].map(problem["reference"]).to_numpy(float),
        folds=folds, train_config=tcfg, align_settings=align_settings, pretrained=pretrained,
        variants=settings.models, members=settings.members, rf_trees=settings.rf_trees,
        shift_sample=settings.shift_sample, ad_k=cfg.ad_k, ad_threshold=cfg.ad_threshold, seed=cfg.seed,
        device=device, transported_mass=problem["transported_mass"], on_fold=progress, stack=stack, neural=neural,
    )
    summary = summarise(result, ood_protocols=[p for p in OOD_PROTOCOLS if p in settings.protocols])
    metrics = {
        "property": prop, "unit": UNITS[prop], "budget": "quick" if quick else "full",
        "n_measurements": len(exp), "n_formulas": int(exp["formula"].nunique()), "n_dft": problem["source"].size,
        "dft_coverage": float(exp["formula"].isin(problem["reference"].index).mean()),
        **summary,
        "ad_threshold": cfg.ad_threshold,
        "pretrain_seconds": pretrain_s, "seconds": time.perf_counter() - t0,
    }
    _write(cfg, prop, metrics, result, folds, exp, clamp=CLAMP_MIN[prop])
    return metrics


def _write(cfg: EvaluateParams, prop: str, metrics: dict, result, folds, exp: pd.DataFrame, clamp) -> None:
    from pipeline.align import _finite

    cfg.metrics_dir.mkdir(parents=True, exist_ok=True)
    metrics_path = cfg.metrics_dir / f"{prop}.json"
    with atomic_dir(cfg.plots_dir / prop) as tmp:
        fold_rows = [{"protocol": f.protocol, "fold": f.name, "exp_id": exp["exp_id"].iloc[i],
                      "formula": exp["formula"].iloc[i]} for f in folds for i in f.test]
        pd.DataFrame(fold_rows).to_csv(tmp / "folds.csv", index=False)
        preds = result.predictions
        preds.to_csv(tmp / "predictions.csv", index=False, float_format="%.5g")
        result.folds.to_csv(tmp / "error_vs_shift.csv", index=False, float_format="%.5g")
        mass = preds[["protocol", "fold", "exp_id", "formula", "transported_mass"]].copy()
        for m in ("stacked_ot", "stacked", "gnn_ot", "gnn_no_ot"):
            if m in preds:
                mass[f"abs_error_{m}"] = (preds[m] - preds["value"]).abs()
        mass.dropna(subset=["transported_mass"]).to_csv(tmp / "mass_vs_error.csv", index=False, float_format="%.5g")
        from pipeline import plots

        plots.draw(tmp, preds, result.folds, models=result.models, unit=UNITS[prop], prop=prop)
    write_text(metrics_path, json.dumps(_finite(metrics), indent=2, allow_nan=False, default=json_default) + "\n")


__all__ = ["EvalSettings", "EvaluateParams", "add_arguments", "evaluate_property", "load_problem", "make_align_settings",
           "make_folds", "run", "stack_inputs"]
