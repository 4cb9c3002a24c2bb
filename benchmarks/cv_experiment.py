"""5-fold CV grouped by reduced formula on the mirror's measured band gaps and enthalpies.

Every model is scored on the same seeded folds (saved to ``<out>/<property>/folds.csv``):
raw DFT, linear calibration of DFT, a Magpie random forest, the GNN without OT terms and the
OT-aligned GNN. Leak-free: in each fold, the calibrated targets (OT between DFT entries and
the fold's *training* measurements), descriptor scaling, validation split, early stopping
and model selection see the fold's training part only. The DFT pretraining of the
composition encoder uses DFT labels only (no measurement), so it is done once per member
and shared by the folds.

Run: ``PYTHONPATH=. python -m benchmarks.cv_experiment [--quick] [--property band_gap]``.
Last stdout line: one JSON object with the mean MAE per model and property and the seconds.

Inputs are the pipeline's own outputs, so the numbers are on the deduplicated data the train
stage sees: ``data/raw/experiment.parquet`` and ``data/raw/dft.parquet`` (fetch) and
``data/features/descriptors.parquet`` (featurize); run ``dvc repro`` (or copy a data
snapshot into ``data/``) first. The fold-wise alignment is a small POT stand-in
(:func:`fold_calibration`) for ``models.transport.align``, refitted on each fold's training
measurements (the align stage's own output was fitted on all measurements, so it cannot be
used inside CV).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import time
import warnings
from dataclasses import asdict, replace
from pathlib import Path

import numpy as np
import ot
import pandas as pd
import torch

from featurizers.chemistry import element_fractions
from models.learners import (
    DescriptorForest,
    DFTSurrogate,
    EntryTable,
    LinearCalibration,
    ModelConfig,
    RawDFT,
    StackConfig,
    StackedModel,
    TrainConfig,
    determine_device,
    mae,
    predict_ensemble,
    pretrain_members,
    train_model,
)
from models.properties import reference_per_formula

log = logging.getLogger("cv_experiment")
DATA = Path("data")
PROPERTIES = ("band_gap", "formation_enthalpy")


DFT_COLUMN = {"band_gap": "band_gap_pbe", "formation_enthalpy": "formation_energy_per_atom"}
# other DFT fidelities the stacked model takes where known (as the train stage's stack.extra_fidelities)
EXTRA_FIDELITIES = ("band_gap_hse", "band_gap_gllb_sc", "band_gap_scan")


def load_experiment(prop: str, data: Path = DATA) -> pd.DataFrame:
    """The pipeline's deduplicated measurements of ``prop`` (``data/raw/experiment.parquet``) as ``formula``, ``value``."""
    try:
        exp = pd.read_parquet(data / "raw/experiment.parquet", columns=["formula", "property", "value"])
    except (FileNotFoundError, OSError) as exc:
        raise SystemExit(f"cannot read {data / 'raw/experiment.parquet'}: {exc}; run dvc repro (or copy the data snapshot) first") from exc
    exp = exp[exp["property"] == prop].dropna(subset=["formula", "value"])
    return exp[["formula", "value"]].reset_index(drop=True)


def load_dft(prop: str, data: Path = DATA) -> pd.DataFrame:
    """The pipeline's DFT entries (``data/raw/dft.parquet``) as ``material_id``, ``formula``, ``dft_value``, ``e_form``.

    ``e_form`` (formation energy per atom) ranks polymorphs, as in the train stage.
    """
    col = DFT_COLUMN[prop]
    cols = list(dict.fromkeys(["material_id", "formula", col, "formation_energy_per_atom", *EXTRA_FIDELITIES]))
    dft = pd.read_parquet(data / "raw/dft.parquet", columns=cols)
    dft["dft_value"] = dft[col]
    dft["e_form"] = dft["formation_energy_per_atom"]
    dft = dft.dropna(subset=["formula", "dft_value"])
    extra = [c for c in EXTRA_FIDELITIES if c != col]
    return dft[["material_id", "formula", "dft_value", "e_form", *extra]].reset_index(drop=True)


def load_descriptors(data: Path = DATA) -> pd.DataFrame:
    """The featurize stage's descriptors (``data/features/descriptors.parquet``), one row per formula."""
    return pd.read_parquet(data / "features/descriptors.parquet").drop_duplicates("formula").reset_index(drop=True)


def make_folds(formulas: pd.Series, *, n_folds: int, seed: int) -> np.ndarray:
    """Fold index per row; all rows of one reduced formula share a fold (seeded shuffle of formulas)."""
    uniq = np.array(sorted(set(formulas)))
    perm = np.random.default_rng(seed).permutation(len(uniq))
    fold_of = {uniq[p]: i % n_folds for i, p in enumerate(perm)}
    return formulas.map(fold_of).to_numpy()


def fold_calibration(dft: pd.DataFrame, exp_train: pd.DataFrame, *, reg: float = 0.05, reg_m: float = 1.0) -> pd.DataFrame:
    """Stand-in for the align stage on one fold: calibrated targets for DFT entries.

    Unbalanced OT (POT, KL-relaxed) per chemical system (stoichiometry block: an entry is
    transported only onto measurements made of the same elements), with the L1 distance
    between element fractions as cost. The calibrated target is the barycentric projection
    of the training measurements, the confidence the transported mass relative to the entry's
    own mass (clipped to 1). Entries of systems with no training measurement get none.
    """
    def system(f: str) -> str:
        return "-".join(sorted(element_fractions(f)))

    d = dft.copy()
    d["system"] = d["formula"].map(system)
    e = exp_train.copy()
    e["system"] = e["formula"].map(system)
    d["calibrated_target"] = np.nan
    d["confidence"] = np.nan
    by_sys = {k: g for k, g in e.groupby("system")}
    for sysname, dg in d.groupby("system"):
        eg = by_sys.get(sysname)
        if eg is None:
            continue
        fd = [element_fractions(f) for f in dg["formula"]]
        fe = [element_fractions(f) for f in eg["formula"]]
        els = sorted({k for x in fd + fe for k in x})
        xd = np.array([[x.get(k, 0.0) for k in els] for x in fd])
        xe = np.array([[x.get(k, 0.0) for k in els] for x in fe])
        cost = np.abs(xd[:, None, :] - xe[None, :, :]).sum(-1)
        a = np.full(len(dg), 1.0 / len(dg))
        b = np.full(len(eg), 1.0 / len(eg))
        with warnings.catch_warnings():
            # small blocks converge; POT warns about its iteration cap on a few degenerate ones
            warnings.simplefilter("ignore")
            plan = ot.unbalanced.sinkhorn_unbalanced(a, b, cost, reg, reg_m, method="sinkhorn_stabilized", numItermax=2000)
        mass = plan.sum(1)
        ok = mass > 1e-12
        tgt = np.full(len(dg), np.nan)
        tgt[ok] = (plan[ok] @ eg["value"].to_numpy()) / mass[ok]
        d.loc[dg.index, "calibrated_target"] = tgt
        d.loc[dg.index, "confidence"] = np.where(ok, np.minimum(mass / a, 1.0), np.nan)
    return d


def run_property(prop: str, *, n_folds: int, n_members: int, n_encoders: int, seed: int, train_cfg: TrainConfig,
                 pretrain_epochs: int, out: Path, cache: Path, device: torch.device, rf_trees: int,
                 stack_cfg: StackConfig | None = None, gnn_from: Path | None = None, skip_gnn: bool = False) -> dict:
    t0 = time.perf_counter()
    exp = load_experiment(prop)
    dft = load_dft(prop)
    ref = reference_per_formula(dft, value="dft_value", rank="e_form")
    desc = load_descriptors()
    exp["fold"] = make_folds(exp["formula"], n_folds=n_folds, seed=seed)
    exp["dft_reference"] = exp["formula"].map(ref)
    (out / prop).mkdir(parents=True, exist_ok=True)
    exp.to_csv(out / prop / "folds.csv", index=False)
    clamp = 0.0 if prop == "band_gap" else None
    cfg = replace(train_cfg, clamp_min=clamp)
    log.info("%s: %d measurements (%d formulas, %.0f%% with a DFT value), %d DFT entries", prop, len(exp),
             exp["formula"].nunique(), 100 * exp["dft_reference"].notna().mean(), len(dft))

    # DFT-only pretraining of the encoders (no measurement involved), shared by all folds
    t_pre = time.perf_counter()
    dft_table = EntryTable.build(dft=dft, descriptors=desc, dft_reference=ref)
    pre_states = []
    for e in range(0 if (skip_gnn or gnn_from is not None) else n_encoders):
        key = hashlib.sha256(json.dumps([prop, seed + e, pretrain_epochs, asdict(cfg.model), len(dft)]).encode()).hexdigest()[:16]
        path = cache / f"pretrained_{prop}_{key}.pt"
        if path.exists():
            pre_states.append(torch.load(path, weights_only=True))
            continue
        state = pretrain_members(dft_table, cfg, n_members=1, epochs=pretrain_epochs, seed=seed + e, device=device)[0]
        cache.mkdir(parents=True, exist_ok=True)
        torch.save(state, path)
        pre_states.append(state)
    pretrain_s = time.perf_counter() - t_pre
    log.info("%s: %d pretrained encoders ready in %.0f s", prop, len(pre_states), pretrain_s)

    # DFT surrogate of the stacked model: DFT labels only, shared by all folds like the pretraining
    t_sur = time.perf_counter()
    stack_cfg = replace(stack_cfg or StackConfig(), clamp_min=clamp, seed=seed)
    surrogate = DFTSurrogate(stack_cfg).fit(desc, ref)
    extra_refs = {c: reference_per_formula(dft, value=c, rank="e_form") for c in EXTRA_FIDELITIES if c in dft}
    surrogate_s = time.perf_counter() - t_sur
    log.info("%s: DFT surrogate out-of-fold MAE %.4f on %d formulas (%.0f s)", prop, surrogate.mae_, len(ref), surrogate_s)
    ot_problem = _ot_problem(prop, exp)
    reused = None
    if gnn_from is not None:
        reused = pd.read_csv(gnn_from / prop / "cv_predictions.csv")
        if not (reused.sort_values(["fold", "formula", "value"])[["formula", "fold"]].to_numpy()
                == exp.sort_values(["fold", "formula", "value"])[["formula", "fold"]].to_numpy()).all():
            raise SystemExit(f"{gnn_from}: folds differ from this run's; rerun without --gnn-from")

    rows = []
    predictions = []
    for k in range(n_folds):
        tf = time.perf_counter()
        tr, te = exp[exp["fold"] != k], exp[exp["fold"] == k]
        y_te = te["value"].to_numpy()
        res = {"fold": k, "n_test": len(te)}
        res["raw_dft"] = mae(y_te, RawDFT().fit(tr["dft_reference"], tr["value"]).predict(te["dft_reference"]))
        covered = te["dft_reference"].notna().to_numpy()
        res["raw_dft_covered"] = mae(y_te[covered], te["dft_reference"].to_numpy()[covered]) if covered.any() else np.nan
        res["linear_dft"] = mae(y_te, LinearCalibration(clamp_min=clamp).fit(tr["dft_reference"], tr["value"]).predict(te["dft_reference"]))
        rf = DescriptorForest(n_estimators=rf_trees, seed=seed).fit(desc, tr["formula"].tolist(), tr["value"].to_numpy())
        fold_pred = te[["formula", "value", "fold", "dft_reference"]].copy()
        fold_pred["rf_magpie"] = rf.predict(desc, te["formula"].tolist())
        res["rf_magpie"] = mae(y_te, fold_pred["rf_magpie"].to_numpy())
        stacked = StackedModel(stack_cfg, dft_reference=ref, surrogate=surrogate, extra_reference=extra_refs).fit(desc, tr["formula"], tr["value"].to_numpy())
        fold_pred["stacked"] = stacked.predict(desc, te["formula"])
        res["stacked"] = mae(y_te, fold_pred["stacked"].to_numpy())
        # the OT-aligned stacked model: the align stage's alignment refitted on this fold's training
        # measurements, its calibration shifts extended to every composition by nearest neighbours
        t_ot = time.perf_counter()
        field = _fold_shift_field(ot_problem, np.flatnonzero(exp["fold"].to_numpy() != k), desc, stack_cfg.ot_neighbours)
        stacked_ot = StackedModel(stack_cfg, dft_reference=ref, surrogate=surrogate, extra_reference=extra_refs,
                                  shift_field=field).fit(desc, tr["formula"], tr["value"].to_numpy())
        fold_pred["stacked_ot"] = stacked_ot.predict(desc, te["formula"])
        res["stacked_ot"] = mae(y_te, fold_pred["stacked_ot"].to_numpy())
        covered = te["dft_reference"].notna().to_numpy()
        if covered.any():  # calibration of a held-out formula's own DFT value by its neighbours' OT shift
            fold_pred["ot_knn_calibrated"] = np.nan
            fold_pred.loc[covered, "ot_knn_calibrated"] = (te["dft_reference"].to_numpy()[covered]
                                                           + field.predict(desc, te["formula"][covered]))
            res["ot_knn_covered"] = mae(y_te[covered], fold_pred.loc[covered, "ot_knn_calibrated"].to_numpy())
        res["stacked_ot_seconds"] = time.perf_counter() - t_ot
        if reused is not None or skip_gnn:
            if reused is not None:
                _reuse_gnn(reused[reused["fold"] == k], fold_pred, res, y_te)
            else:
                for name in ("gnn_no_ot", "gnn_ot", "gnn_no_ot_std", "gnn_ot_std"):
                    fold_pred[name] = np.nan
                    res[name] = np.nan
            _blends(fold_pred, res, y_te)
            predictions.append(fold_pred)
            res["seconds"] = time.perf_counter() - tf
            log.info("%s fold %d: %s", prop, k, {m: round(v, 4) if isinstance(v, float) else v for m, v in res.items()})
            rows.append(res)
            continue
        cal = fold_calibration(dft, tr)
        table = EntryTable.build(dft=cal, experiment=pd.concat([tr, te])[["formula", "value"]], descriptors=desc, dft_reference=ref)
        n_dft = len(cal)
        train_rows = np.arange(n_dft + len(tr))
        test_rows = np.arange(n_dft + len(tr), len(table))
        for name, use_ot in (("gnn_no_ot", False), ("gnn_ot", True)):
            members = [train_model(table, replace(cfg, use_ot=use_ot), seed=seed + 10 * k + m, train_rows=train_rows,
                                   device=device, init_state=pre_states[m % n_encoders]) for m in range(n_members)]
            pred = predict_ensemble([r.model for r in members], table, test_rows, device=device, clamp_min=clamp)
            res[name] = mae(y_te, pred.experiment)
            fold_pred[name] = pred.experiment
            fold_pred[f"{name}_std"] = pred.experiment_std
            res[f"{name}_best_epochs"] = [r.best_epoch for r in members]
        _blends(fold_pred, res, y_te)
        predictions.append(fold_pred)
        res["seconds"] = time.perf_counter() - tf
        log.info("%s fold %d: %s", prop, k, {m: round(v, 4) if isinstance(v, float) else v for m, v in res.items()})
        rows.append(res)
    folds = pd.DataFrame(rows)
    folds.to_csv(out / prop / "cv_results.csv", index=False)
    pd.concat(predictions).to_csv(out / prop / "cv_predictions.csv", index=False)
    models = ["raw_dft", "raw_dft_covered", "linear_dft", "rf_magpie", "gnn_no_ot", "gnn_ot", "gnn_ot_rf_blend", "stacked",
              "stacked_ot", "stacked_gnn_ot_blend", "stacked_gnn_no_ot_blend"]
    summary = {m: float(folds[m].mean()) for m in models}
    summary.update({f"{m}_std": float(folds[m].std(ddof=1)) if len(folds) > 1 else 0.0 for m in models})
    summary.update(n_measurements=len(exp), dft_coverage=float(exp["dft_reference"].notna().mean()), n_dft=len(dft), pretrain_seconds=pretrain_s,
                   surrogate_seconds=surrogate_s, surrogate_mae=surrogate.mae_,
                   seconds=time.perf_counter() - t0)
    (out / prop / "cv_summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    return summary


def _ot_problem(prop: str, exp: pd.DataFrame) -> dict:
    """The align stage's domains and settings (params.yaml ``align``) with rows matching ``exp``."""
    from models.properties import get_property
    from pipeline.align import domains
    from pipeline.config import load_section
    from pipeline.params.align import AlignParams

    p = get_property(prop)
    cfg = load_section(AlignParams, "align", Path("params.yaml")).config.for_property(p)
    source, target, _ = domains(DATA / "raw", DATA / "features", p)
    if not (np.array_equal(target.formulas, exp["formula"].to_numpy()) and np.allclose(target.values, exp["value"])):
        raise SystemExit("the align stage's measurements differ from data/raw/experiment.parquet's; rerun dvc repro")
    return {"source": source, "target": target, "settings": cfg}


def _fold_shift_field(problem: dict, train_rows: np.ndarray, desc: pd.DataFrame, k: int):
    from models.evaluation import calibrated_targets
    from models.learners import ShiftField

    src = problem["source"]
    cal, conf, _ = calibrated_targets(src, problem["target"], train_rows, problem["settings"])
    return ShiftField.fit(src.formulas, src.values, cal, conf, desc, k=k)


def _blends(fold_pred: pd.DataFrame, res: dict, y_te: np.ndarray) -> None:
    """Fixed equal-weight blends of model families (weights set beforehand: nothing fitted on the test fold)."""
    for name, (a, b) in {"gnn_ot_rf_blend": ("gnn_ot", "rf_magpie"), "stacked_gnn_ot_blend": ("stacked", "gnn_ot"),
                         "stacked_gnn_no_ot_blend": ("stacked", "gnn_no_ot")}.items():
        fold_pred[name] = 0.5 * (fold_pred[a] + fold_pred[b])
        res[name] = mae(y_te, fold_pred[name].to_numpy()) if fold_pred[name].notna().all() else np.nan


def _reuse_gnn(previous: pd.DataFrame, fold_pred: pd.DataFrame, res: dict, y_te: np.ndarray) -> None:
    """Copy one fold's GNN predictions from an earlier run on the same folds (``--gnn-from``)."""
    prev = previous.sort_values(["formula", "value"])
    order = fold_pred.sort_values(["formula", "value"]).index
    for name in ("gnn_no_ot", "gnn_ot"):
        for col in (name, f"{name}_std"):
            fold_pred.loc[order, col] = prev[col].to_numpy()
        res[name] = mae(y_te, fold_pred[name].to_numpy())


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--property", choices=PROPERTIES, action="append")
    p.add_argument("--quick", action="store_true", help="2 folds, 1 member, few epochs (smoke run)")
    p.add_argument("--folds", type=int, default=5)
    p.add_argument("--members", type=int, default=4, help="ensemble members per model")
    p.add_argument("--encoders", type=int, default=2, help="pretrained encoders shared round-robin by members")
    p.add_argument("--epochs", type=int, default=40)
    p.add_argument("--pretrain-epochs", type=int, default=4)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--cache", type=Path, default=Path("/tmp/matshift-cache"), help="where pretrained encoders are cached (outside the repo)")
    p.add_argument("--patience", type=int, default=8)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, default=Path("data/cv"))
    p.add_argument("--skip-gnn", action="store_true", help="baselines and stacked model only (GNN rows left empty)")
    p.add_argument("--gnn-from", type=Path, default=None,
                   help="reuse the GNN predictions of an earlier run's --out on the same folds (skips GNN training)")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    torch.set_num_threads(args.threads)
    device = determine_device()
    cfg = TrainConfig(epochs=args.epochs, patience=args.patience, dft_batch_size=128, freeze_encoder=True,
                      model=ModelConfig(comp_hidden=64, comp_layers=2))
    folds, members, encoders, pre, trees = args.folds, args.members, args.encoders, args.pretrain_epochs, 300
    if args.quick:
        folds, members, encoders, pre, trees = 2, 1, 1, 1, 50
        cfg = replace(cfg, epochs=3)
    result = {}
    for prop in args.property or PROPERTIES:
        result[prop] = run_property(prop, n_folds=folds, n_members=members, n_encoders=encoders, seed=args.seed,
                                    train_cfg=cfg, pretrain_epochs=pre, out=args.out, cache=args.cache, device=device,
                                    rf_trees=trees, gnn_from=args.gnn_from, skip_gnn=args.skip_gnn)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
