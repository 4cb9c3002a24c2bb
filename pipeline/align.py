"""The ``align`` stage: optimal transport from DFT entries to measurements, per property.

Reads ``data/raw/{dft,experiment}.parquet`` and ``data/features/{descriptors,index}.parquet``,
aligns the DFT entries that have a value for the property (source) onto the measurements of
that property (target) with :func:`models.transport.align`, and writes
``data/aligned/<property>/`` as documented in docs/ARCHITECTURE.md. The stage fits the
descriptor scaler on exactly what it aligns; evaluation calls the library per fold instead.
A plan that did not converge is an error unless ``align.allow_unconverged`` is true; either
way ``align.json`` carries the ``converged`` flag for downstream stages to check.
"""

from __future__ import annotations

import argparse
import functools
import logging
import math
import os
import time
from contextlib import ExitStack
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Literal

import numpy as np
import pandas as pd
import scipy.sparse as sp

from models import atomic_dir, json_default
from pipeline.config import DEFAULT_PARAMS, check_engine, load_section, to_dict
from pipeline.errors import MatshiftError, MissingInputError

log = logging.getLogger(__name__)

PROPERTY_COLUMN = {"band_gap": "band_gap_pbe", "formation_enthalpy": "formation_energy_per_atom"}


@dataclass(frozen=True)
class CostParams:
    descriptor: float = 1.0
    value: float = 1.0
    mass: float = 1.0
    symmetry: float = 0.25
    hard_block: bool = True
    # "linear": the value term compares measurements with robustly calibrated DFT values
    # (fitted on the same-formula pairs being aligned); "none": raw DFT values (the old cost)
    value_calibration: Literal["none", "linear"] = "linear"


@dataclass(frozen=True)
class NeuralParams:
    """Method ``neural`` (models/icnn.py): conditional input-convex map, min-max dual training."""

    pca_components: int = 8  # descriptor principal components forming the condition
    hidden: list[int] = field(default_factory=lambda: [32, 32])  # convex-layer widths
    cond_hidden: int = 32  # condition-path width
    activation: Literal["softplus", "celu", "leaky_relu"] = "softplus"
    iterations: int = 1500  # outer (f) steps
    inner_steps: int = 4  # g steps per f step
    batch_size: int = 256
    lr: float = 1e-3
    dtype: Literal["float32", "float64"] = "float32"

    def __post_init__(self) -> None:
        if self.pca_components < 1 or not self.hidden or min(self.hidden) < 1 or self.cond_hidden < 1:
            raise ValueError("neural.pca_components, neural.hidden and neural.cond_hidden must be >= 1")
        if self.iterations < 1 or self.inner_steps < 1 or self.batch_size < 2:
            raise ValueError("neural.iterations and neural.inner_steps must be >= 1, neural.batch_size >= 2")
        if not self.lr > 0:
            raise ValueError(f"neural.lr must be > 0, got {self.lr}")


@dataclass(frozen=True)
class AlignConfig:
    method: Literal["balanced", "unbalanced", "partial", "aot", "mixture", "neural"] = "unbalanced"
    reg: float = 0.05
    reg_m: float = 1.0
    tol: float = 1e-8
    max_iter: int = 20000
    cost: CostParams = field(default_factory=CostParams)
    neural: NeuralParams = field(default_factory=NeuralParams)
    energy_additivity: bool = True  # used for formation_enthalpy only (not with method neural)
    additivity_iters: int = 5
    additivity_ridge: float = 1e-4
    partial_mass: float = 0.5
    aot_price: float = 0.5
    n_components: int = 8
    knn: int = 64
    dense_limit: int = 4_000_000
    min_pair_mass: float = 1e-12  # pairs below this fraction of the moved mass are not listed
    allow_unconverged: bool = False
    raw_dir: Path = Path("data/raw")
    features_dir: Path = Path("data/features")
    out_dir: Path = Path("data/aligned")
    seed: int = 0
    # Scale-out (pipeline/engine.py, models/blocks.py): split_blocks solves each connected block
    # of the support as its own problem, on `engine` with n_workers processes (0 = all cores;
    # a given dask scheduler brings its own workers). The default (false, local) is one solve.
    split_blocks: bool = False
    engine: Literal["local", "dask"] = "local"
    scheduler_address: str | None = None
    n_workers: int = 0

    def __post_init__(self) -> None:
        if not self.reg > 0:
            raise ValueError(f"reg must be > 0, got {self.reg}")
        if not self.reg_m > 0:
            raise ValueError(f"reg_m must be > 0, got {self.reg_m}")
        if not 0 < self.tol < 1:
            raise ValueError(f"tol must be in (0, 1), got {self.tol}")
        if self.max_iter < 1 or self.additivity_iters < 1 or self.knn < 1:
            raise ValueError("max_iter, additivity_iters and knn must be >= 1")
        if not 0 <= self.min_pair_mass < 1:
            raise ValueError(f"min_pair_mass must be in [0, 1), got {self.min_pair_mass}")
        check_engine(self.engine, self.scheduler_address)
        if self.n_workers < 0:
            raise ValueError(f"n_workers must be >= 0, got {self.n_workers}")
        if self.engine != "local" and not self.split_blocks:
            raise ValueError(f"engine {self.engine!r} distributes blocks: set split_blocks: true")
        if self.split_blocks and self.method not in ("unbalanced",):
            raise ValueError(f"split_blocks solves the 'unbalanced' method only, got method {self.method!r}")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--params", type=Path, default=DEFAULT_PARAMS, help="parameter file (default params.yaml)")
    parser.add_argument("--property", required=True, choices=sorted(PROPERTY_COLUMN), help="property to align")
    parser.add_argument("--show-outliers", type=int, default=0, metavar="N",
                        help="after aligning, print the N least-transported measurements (also in outliers.csv)")


def run(args: argparse.Namespace) -> int:
    n_show = getattr(args, "show_outliers", 0)
    if n_show < 0:
        raise MatshiftError(f"--show-outliers must be >= 0, got {n_show}")
    cfg = load_section(AlignConfig, "align", args.params)
    prop = args.property
    out = cfg.out_dir / prop
    report = align_property(cfg, prop, out)
    log.info("aligned %s: %d DFT x %d experiment entries, mass moved %.3f, OT distance %.4g -> %.4g, %s",
             prop, report["n_source"], report["n_target"], report["mass_moved"],
             report["ot_distance_before"], report["ot_distance_after"],
             "converged" if report["converged"] else "NOT converged")
    if n_show > 0:
        table = pd.read_csv(out / "outliers.csv").head(n_show)
        with pd.option_context("display.width", 200, "display.max_columns", 20):
            print(table.to_string(index=False, float_format=lambda v: f"{v:.3f}"))
    return 0


def _read(path: Path, columns: list[str]) -> pd.DataFrame:
    try:
        frame = pd.read_parquet(path)
    except (OSError, ValueError) as exc:  # missing, or truncated/corrupt (pyarrow's ArrowInvalid is a ValueError)
        raise MissingInputError(f"cannot read {path}: {exc}; run the upstream stage first (dvc repro)") from exc
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise MatshiftError(f"{path} lacks column(s) {', '.join(missing)} (see docs/ARCHITECTURE.md)")
    return frame


def load_domains(cfg: AlignConfig, prop: str):
    """Source and target :class:`models.penalties.Domain` for ``prop``, plus bookkeeping counts."""
    from models.transport import Domain, fraction_matrix

    dft = _read(cfg.raw_dir / "dft.parquet", ["material_id", "formula", PROPERTY_COLUMN[prop]])
    exp = _read(cfg.raw_dir / "experiment.parquet", ["exp_id", "formula", "property", "value"])
    desc = _read(cfg.features_dir / "descriptors.parquet", ["formula"])
    index = _read(cfg.features_dir / "index.parquet", ["id", "domain", "crystal_system"])
    if desc["formula"].duplicated().any():
        raise MatshiftError(f"{cfg.features_dir / 'descriptors.parquet'} repeats formula "
                            f"{desc.loc[desc['formula'].duplicated(), 'formula'].iloc[0]!r}")
    desc_cols = [c for c in desc.columns if c != "formula"]
    bad = ~np.isfinite(desc[desc_cols].to_numpy(np.float64)).all(axis=1)
    if bad.any():  # the featurize contract: no NaN; a descriptor NaN would silently poison every cost
        raise MatshiftError(f"{cfg.features_dir / 'descriptors.parquet'} holds non-finite descriptors for "
                            f"{int(bad.sum())} formula(s), e.g. {desc.loc[bad, 'formula'].iloc[0]!r}; "
                            "rerun the featurize stage (dvc repro)")
    counts: dict[str, int] = {}
    dft = dft.assign(dft_value=pd.to_numeric(dft[PROPERTY_COLUMN[prop]], errors="coerce"))
    counts["dft_without_value"] = int(dft["dft_value"].isna().sum())
    counts["dft_non_finite"] = int(np.isinf(dft["dft_value"]).sum())
    dft = dft[np.isfinite(dft["dft_value"])]
    exp = exp[exp["property"] == prop]
    counts["experiment_non_finite"] = int((~np.isfinite(exp["value"].astype(float))).sum())
    exp = exp[np.isfinite(exp["value"].astype(float))]
    known = set(desc["formula"])
    counts["dft_without_descriptors"] = int((~dft["formula"].isin(known)).sum())
    counts["experiment_without_descriptors"] = int((~exp["formula"].isin(known)).sum())
    dft = dft[dft["formula"].isin(known)].reset_index(drop=True)
    exp = exp[exp["formula"].isin(known)].reset_index(drop=True)
    if dft.empty or exp.empty:
        raise MatshiftError(f"nothing to align for {prop}: {len(dft)} DFT and {len(exp)} experimental entries "
                            "with a value and descriptors")
    feats = desc.set_index("formula")[desc_cols].astype(np.float64)
    cs = index.drop_duplicates("id").set_index("id")["crystal_system"].fillna("").astype(str)
    fr_s, elements = fraction_matrix(list(dft["formula"]) + list(exp["formula"]))
    fr_t = fr_s[len(dft):]
    fr_s = fr_s[: len(dft)]
    source = Domain(
        features=feats.loc[dft["formula"]].to_numpy(), values=dft["dft_value"].to_numpy(float),
        formulas=dft["formula"].to_numpy(), ids=dft["material_id"].astype(str).to_numpy(),
        fractions=fr_s, elements=elements,
        crystal_system=cs.reindex(dft["material_id"].astype(str)).fillna("").to_numpy(),
    )
    target = Domain(
        features=feats.loc[exp["formula"]].to_numpy(), values=exp["value"].to_numpy(float),
        formulas=exp["formula"].to_numpy(), ids=exp["exp_id"].astype(str).to_numpy(),
        fractions=fr_t, elements=elements,
        crystal_system=cs.reindex(exp["exp_id"].astype(str)).fillna("").to_numpy(),
    )
    return source, target, counts


def align_property(cfg: AlignConfig, prop: str, out: Path) -> dict:
    """Run the alignment for ``prop`` and write ``out`` atomically; returns the diagnostics."""
    from models.transport import AlignmentError, CostWeights, SolverOptions, align, transport_distance

    t0 = time.perf_counter()
    source, target, counts = load_domains(cfg, prop)
    weights = CostWeights(**to_dict(cfg.cost))
    options = SolverOptions(reg=cfg.reg, reg_m=cfg.reg_m, tol=cfg.tol, max_iter=cfg.max_iter,
                            emd_limit=cfg.dense_limit, partial_mass=cfg.partial_mass,
                            aot_price=cfg.aot_price, n_components=cfg.n_components, seed=cfg.seed,
                            neural=_neural_options(cfg, prop) if cfg.method == "neural" else None)
    # the neural map is conditioned on composition: it learns per-chemistry shifts itself
    additivity = cfg.energy_additivity and prop == "formation_enthalpy" and cfg.method != "neural"
    with ExitStack() as stack:
        solve, distance = align, transport_distance
        if cfg.split_blocks:
            from models.transport import align_blocks, transport_distance_blocks
            from pipeline.engine import open_engine

            engine = stack.enter_context(open_engine(cfg.engine, n_workers=cfg.n_workers or os.cpu_count() or 1,
                                                     scheduler_address=cfg.scheduler_address))
            # a few pieces per worker evens out blocks of unequal size
            split = {"mapper": engine.map, "n_pieces": 4 * engine.n_workers}
            solve = functools.partial(align_blocks, **split)
            distance = functools.partial(transport_distance_blocks, **split)
        try:
            res = solve(source, target, method=cfg.method, weights=weights, options=options,
                        energy_additivity=additivity, additivity_iters=cfg.additivity_iters,
                        additivity_ridge=cfg.additivity_ridge, dense_limit=cfg.dense_limit, knn=cfg.knn)
        except AlignmentError as exc:
            raise MatshiftError(f"align {prop}: {exc}") from exc
        if not res.converged and not cfg.allow_unconverged:
            raise MatshiftError(
                f"align {prop}: method {cfg.method!r} did not converge in {res.n_iter} iterations "
                f"(info {res.info}); raise align.max_iter or align.reg, or set align.allow_unconverged: true"
            )
        before, after = _distances(distance, res, cfg, source, target, weights)
    corrected = source.values + res.source_offset
    targets, confidence = res.calibrated_targets(target.values, fallback=corrected)

    plan = res.plan
    moved = res.mass_moved
    listed = plan.data >= cfg.min_pair_mass * moved
    pairs = pd.DataFrame({
        "exp_id": target.ids[plan.col[listed]],
        "material_id": source.ids[plan.row[listed]],
        "mass": plan.data[listed],
        "cost": res.pair_cost[listed],
    }).sort_values(["exp_id", "mass"], ascending=[True, False], kind="stable")
    dft_out = pd.DataFrame({
        "material_id": source.ids, "formula": source.formulas, "dft_value": source.values,
        "transported_mass": res.source_mass, "calibrated_target": targets, "confidence": confidence,
    })
    exp_out = pd.DataFrame({
        "exp_id": target.ids, "formula": target.formulas, "value": target.values,
        "transported_mass": res.target_mass,
    })
    outliers = outlier_table(res, source, target)
    diag = {
        "property": prop,
        "method": cfg.method,
        "n_source": source.size,
        "n_target": target.size,
        "support_size": res.support_size,
        "plan_entries": int(plan.nnz),
        "pairs_listed": int(listed.sum()),
        "mass_moved": moved,
        "mass_moved_fraction_source": moved / float(res.a.sum()),
        "mass_moved_fraction_target": moved / float(res.b.sum()),
        "objective": res.objective,
        "linear_cost": res.linear_cost,
        "ot_distance_definition": (
            "unbalanced entropic OT objective (same reg, reg_m, cost weights and support rule) between "
            "DFT entries and measurements in the joint descriptor+property space; 'after' replaces each "
            "DFT value by its calibrated target"),
        "ot_distance_before": before,
        "ot_distance_after": after,
        "penalty_residuals": res.cost_terms,
        "value_calibration": res.value_calibration.as_dict() if res.value_calibration else None,
        "energy_additivity": additivity,
        "additivity_residual_rmse": res.corrections.residual_rmse if res.corrections else None,
        "additivity_shift_rmse_before": res.corrections.shift_rmse_before if res.corrections else None,
        "iterations": res.n_iter,
        "converged": res.converged,
        "solver_info": {k: float(v) for k, v in res.info.items() if math.isfinite(float(v))},
        "seconds": time.perf_counter() - t0,
        "seconds_solve": res.seconds,
        "dropped": counts,
        "params": to_dict(cfg),
    }
    corrections = {"property": prop, "used": additivity,
                   "corrections_ev_per_atom": res.corrections.as_dict() if res.corrections else {}}
    with atomic_dir(out) as tmp:
        pairs.to_parquet(tmp / "pairs.parquet", index=False)
        sp.save_npz(tmp / "plan.npz", sp.coo_matrix(plan))
        dft_out.to_parquet(tmp / "dft.parquet", index=False)
        exp_out.to_parquet(tmp / "experiment.parquet", index=False)
        _write_json(tmp / "corrections.json", corrections)
        _write_json(tmp / "align.json", diag)
        outliers.to_csv(tmp / "outliers.csv", index=False, float_format="%.6g")
        _plots(tmp, res, source, target, prop)
        if res.artifact is not None:
            # the fitted map calibrates DFT entries that were never aligned (matshift predict)
            res.artifact.save(tmp / NEURAL_MAP_DIR, extra={
                "property": prop, "unit": "eV" if prop == "band_gap" else "eV/atom",
                "descriptor_columns": _descriptor_columns(cfg), "params": to_dict(cfg.neural)})
    return diag


def outlier_table(res, source, target) -> pd.DataFrame:
    """Every measurement, least transported first: the outlier list a person can judge.

    Columns: ``exp_id``, ``formula``, ``value`` (measured), ``score`` (``mass_fraction`` /
    ``expected_fraction``: 1 for a measurement its formula's DFT entries match perfectly,
    near 0 for an outlier; the sort key), ``mass_fraction`` (transported mass / marginal),
    ``expected_fraction`` (``sqrt(A / B)``, A and B the DFT and measured mass of the formula:
    the fraction a zero-cost formula would get under the KL-relaxed marginals), ``n_dft``
    (same-formula DFT entries), ``dft_value`` (the
    DFT entry that took most of the measurement's mass, else the median of its formula's DFT
    values), ``calibrated_dft`` (that value plus the alignment's offset: value calibration and
    energy-additivity corrections), ``residual`` = value - calibrated_dft, and
    ``no_counterpart`` (no same-formula DFT entry and no mass: such rows are listed last).
    """
    from models.transport import block_support

    plan = res.plan.tocsc()
    m = target.size
    partner = np.full(m, -1, dtype=np.int64)
    for j in range(m):
        lo, hi = plan.indptr[j], plan.indptr[j + 1]
        if hi > lo:
            partner[j] = plan.indices[lo + int(np.argmax(plan.data[lo:hi]))]
    r, c = block_support(np.asarray(source.formulas), np.asarray(target.formulas))
    n_dft = np.bincount(c, minlength=m)
    calibrated_all = source.values + res.source_offset
    dft_value = np.full(m, np.nan)
    calibrated = np.full(m, np.nan)
    has = partner >= 0
    dft_value[has] = source.values[partner[has]]
    calibrated[has] = calibrated_all[partner[has]]
    if r.size:
        frame = pd.DataFrame({"c": c, "v": source.values[r], "cv": calibrated_all[r]})
        med = frame.groupby("c")[["v", "cv"]].median()
        fill = ~has & (n_dft > 0)
        idx = np.flatnonzero(fill)
        dft_value[idx] = med.loc[idx, "v"].to_numpy()
        calibrated[idx] = med.loc[idx, "cv"].to_numpy()
    # What a perfectly matched formula would give: with zero cost, the KL-relaxed marginals
    # move sqrt(A B) between a formula's DFT mass A and measured mass B, i.e. a fraction
    # sqrt(A / B) of each measurement's mass. Repeated measurements of one formula share a
    # single DFT entry's mass, so the raw fraction alone would flag them for being many.
    src_mass = pd.Series(res.a).groupby(np.asarray(source.formulas)).sum()
    tgt_mass = pd.Series(res.b).groupby(np.asarray(target.formulas)).sum()
    a_f = src_mass.reindex(target.formulas).fillna(0.0).to_numpy()
    b_f = tgt_mass.reindex(target.formulas).to_numpy()
    expected = np.sqrt(a_f / b_f)
    fraction = res.target_mass / res.b
    score = np.where(expected > 0, fraction / np.where(expected > 0, expected, 1.0), fraction)
    table = pd.DataFrame({
        "exp_id": target.ids, "formula": target.formulas, "value": target.values,
        "score": score, "mass_fraction": fraction, "expected_fraction": expected, "n_dft": n_dft,
        "dft_value": dft_value, "calibrated_dft": calibrated, "residual": target.values - calibrated,
    })
    # a measurement with no DFT counterpart at all receives no mass by construction, which
    # says nothing about the measurement: those are listed last
    table["no_counterpart"] = (n_dft == 0) & (res.target_mass == 0)
    return table.sort_values(["no_counterpart", "score", "exp_id"], kind="stable").reset_index(drop=True)


def _distances(distance, res, cfg: AlignConfig, source, target, weights) -> tuple[float, float]:
    """OT distance before/after: unbalanced objective in the joint space with the same weights.

    On raw values (no value calibration inside the distance: it measures the shift that is left).
    """
    from models.transport import Domain, SolverOptions

    targets, _ = res.calibrated_targets(target.values, fallback=source.values + res.source_offset)
    dist_opts = SolverOptions(reg=cfg.reg, reg_m=cfg.reg_m, tol=cfg.tol, max_iter=cfg.max_iter)
    weights = replace(weights, value_calibration="none")
    before = distance(source, target, weights=weights, options=dist_opts, dense_limit=cfg.dense_limit, knn=cfg.knn)
    after_src = Domain(features=source.features, values=targets, formulas=source.formulas, ids=source.ids,
                       fractions=source.fractions, elements=source.elements,
                       crystal_system=source.crystal_system)
    after = distance(after_src, target, weights=weights, options=dist_opts, dense_limit=cfg.dense_limit, knn=cfg.knn)
    return before, after


NEURAL_MAP_DIR = "neural_map"


def _neural_options(cfg: AlignConfig, prop: str):
    from models.transport import DualConfig, NeuralAlignConfig

    n = cfg.neural
    dual = DualConfig(hidden=tuple(n.hidden), cond_hidden=n.cond_hidden, activation=n.activation,
                      iterations=n.iterations, inner_steps=n.inner_steps, batch_size=n.batch_size, lr=n.lr,
                      seed=cfg.seed, dtype=n.dtype)
    # a band gap is >= 0; formation enthalpies have no bound
    return NeuralAlignConfig(pca_components=n.pca_components, clip_min=0.0 if prop == "band_gap" else None,
                             dual=dual)


def _descriptor_columns(cfg: AlignConfig) -> list[str]:
    import pyarrow.parquet as pq

    return [c for c in pq.read_schema(cfg.features_dir / "descriptors.parquet").names if c != "formula"]


def _write_json(path: Path, obj) -> None:
    import json


    text = json.dumps(_finite(obj), indent=2, sort_keys=True, allow_nan=False, default=json_default)
    path.write_text(text + "\n", encoding="utf-8")


def _finite(obj):
    """JSON has no NaN: undefined numbers (e.g. a residual without transported mass) become null."""
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_finite(v) for v in obj]
    if isinstance(obj, (float, np.floating)) and not math.isfinite(float(obj)):
        return None
    return obj


def _plots(out: Path, res, source, target, prop: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    unit = "eV" if prop == "band_gap" else "eV/atom"
    plan = res.plan
    fig, ax = plt.subplots(figsize=(5, 4.2))
    lo = min(source.values.min(), target.values.min())
    hi = max(source.values.max(), target.values.max())
    bins = np.linspace(lo, hi, 41)
    h, xe, ye = np.histogram2d(source.values[plan.row], target.values[plan.col], bins=[bins, bins],
                               weights=plan.data)
    im = ax.imshow(np.log10(h.T + 1e-12 * max(h.max(), 1e-300)), origin="lower", aspect="auto",
                   extent=[xe[0], xe[-1], ye[0], ye[-1]], cmap="viridis")
    ax.plot([lo, hi], [lo, hi], "w--", lw=0.8)
    ax.set_xlabel(f"DFT value ({unit})")
    ax.set_ylabel(f"measured value ({unit})")
    ax.set_title(f"{prop}: transport plan mass (log10)")
    fig.colorbar(im, ax=ax)
    fig.tight_layout()
    fig.savefig(out / "plan_heatmap.png", dpi=110)
    plt.close(fig)

    fig, axes = plt.subplots(1, 2, figsize=(8, 3.2))
    for ax, mass, marg, name in ((axes[0], res.source_mass, res.a, "DFT entries"),
                                 (axes[1], res.target_mass, res.b, "measurements")):
        ax.hist(mass / marg, bins=40, color="tab:blue")
        ax.set_xlabel("transported mass / marginal")
        ax.set_ylabel("entries")
        ax.set_title(name)
    fig.tight_layout()
    fig.savefig(out / "mass_hist.png", dpi=110)
    plt.close(fig)
