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

Until the fetch/align stages land on this branch, the DFT side is read from the mirror
directly (``mp_non_metals_band_gap.csv`` compositions; formation energies from
``megnet_e_form`` by mp-id and ``flla_2015``), Magpie descriptors come from
:mod:`benchmarks.descriptor_cache`, and the fold-wise alignment is a small POT stand-in
(:func:`fold_calibration`) for ``models.transport.align``.
"""

from __future__ import annotations

import argparse
import ast
import gzip
import hashlib
import json
import logging
import time
import warnings
import zipfile
from dataclasses import asdict, replace
from pathlib import Path

import numpy as np
import ot
import pandas as pd
import torch

from benchmarks.descriptor_cache import CACHE_DIR, magpie_descriptors
from featurizers.chemistry import FormulaError, element_fractions, reduced_formula
from models.baselines import DescriptorForest, LinearCalibration, RawDFT, mae
from models.training import (
    EntryTable,
    ModelConfig,
    TrainConfig,
    determine_device,
    predict_ensemble,
    pretrain_members,
    reference_per_formula,
    train_model,
)

log = logging.getLogger("cv_experiment")
MIRROR = Path("../shared/datasets")
PROPERTIES = ("band_gap", "formation_enthalpy")


def _formula_or_none(f: str) -> str | None:
    try:
        return reduced_formula(f)
    except FormulaError:
        return None


def load_experiment(prop: str, mirror: Path = MIRROR) -> pd.DataFrame:
    """Measurements as ``formula``, ``value`` (rows whose formula does not parse are dropped and counted)."""
    if prop == "band_gap":
        raw = pd.read_csv(mirror / "experiment/expt_gap_zhuo2018.csv").rename(columns={"composition": "formula_raw", "Eg": "value"})
    else:
        raw = pd.read_csv(mirror / "experiment/expt_formation_enthalpy_ssub.csv").rename(
            columns={"formula": "formula_raw", "dHf_eV_per_atom": "value"})
    raw["formula"] = raw["formula_raw"].map(_formula_or_none)
    bad = raw["formula"].isna() | raw["value"].isna()
    if bad.any():
        log.warning("%s: %d measurement rows with an unparsable formula or value left out", prop, int(bad.sum()))
    return raw.loc[~bad, ["formula", "value"]].reset_index(drop=True)


def load_dft(prop: str, mirror: Path = MIRROR) -> pd.DataFrame:
    """DFT entries as ``material_id``, ``formula``, ``dft_value``, ``e_form`` (for picking polymorphs)."""
    mp = pd.read_csv(mirror / "mp/mp_non_metals_band_gap.csv")
    mp["formula"] = mp["composition"].map(_formula_or_none)
    with zipfile.ZipFile(mirror / "mp/megnet_e_form.json.zip") as z:
        parts = json.load(z.open(z.namelist()[0]))
    e_form = {k: float(v) for part in parts.values() for k, v in part.items()}
    mp["e_form"] = mp["material_id"].map(e_form)
    if prop == "band_gap":
        out = mp.rename(columns={"band_gap": "dft_value"})
    else:
        with gzip.open(mirror / "mp/flla_2015.csv.gz", "rt") as fh:
            flla = pd.read_csv(fh, comment="#", usecols=["material_id", "formula", "formation_energy_per_atom"])
        flla["formula"] = flla["formula"].map(lambda s: _formula_or_none("".join(f"{k}{v}" for k, v in ast.literal_eval(s).items())))
        flla = flla.rename(columns={"formation_energy_per_atom": "e_form"})
        out = pd.concat([mp[["material_id", "formula", "e_form"]], flla[~flla["material_id"].isin(mp["material_id"])]])
        out["dft_value"] = out["e_form"]
    out = out.dropna(subset=["formula", "dft_value"])
    return out[["material_id", "formula", "dft_value", "e_form"]].reset_index(drop=True)


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
                 pretrain_epochs: int, out: Path, cache: Path, device: torch.device, rf_trees: int) -> dict:
    t0 = time.perf_counter()
    exp = load_experiment(prop)
    dft = load_dft(prop)
    ref = reference_per_formula(dft, value="dft_value", rank="e_form")
    desc = magpie_descriptors(set(exp["formula"]) | set(dft["formula"]))
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
    for e in range(n_encoders):
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
    log.info("%s: %d pretrained encoders ready in %.0f s", prop, n_encoders, pretrain_s)

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
        # fixed equal-weight blend of the two model families (nothing fitted on the test fold)
        fold_pred["gnn_ot_rf_blend"] = 0.5 * (fold_pred["gnn_ot"] + fold_pred["rf_magpie"])
        res["gnn_ot_rf_blend"] = mae(y_te, fold_pred["gnn_ot_rf_blend"].to_numpy())
        predictions.append(fold_pred)
        res["seconds"] = time.perf_counter() - tf
        log.info("%s fold %d: %s", prop, k, {m: round(v, 4) if isinstance(v, float) else v for m, v in res.items()})
        rows.append(res)
    folds = pd.DataFrame(rows)
    folds.to_csv(out / prop / "cv_results.csv", index=False)
    pd.concat(predictions).to_csv(out / prop / "cv_predictions.csv", index=False)
    models = ["raw_dft", "raw_dft_covered", "linear_dft", "rf_magpie", "gnn_no_ot", "gnn_ot", "gnn_ot_rf_blend"]
    summary = {m: float(folds[m].mean()) for m in models}
    summary.update({f"{m}_std": float(folds[m].std(ddof=1)) if len(folds) > 1 else 0.0 for m in models})
    summary.update(n_measurements=len(exp), dft_coverage=float(exp["dft_reference"].notna().mean()), n_dft=len(dft), pretrain_seconds=pretrain_s,
                   seconds=time.perf_counter() - t0)
    (out / prop / "cv_summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    return summary


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
    p.add_argument("--cache", type=Path, default=CACHE_DIR, help="where pretrained encoders are cached (outside the repo)")
    p.add_argument("--patience", type=int, default=8)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, default=Path("data/cv"))
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
                                    rf_trees=trees)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
