"""Paths and small synthetic inputs shared by the test modules (a plain module: ``from tests.data import ...``).

* ``ROOT`` (the repository) and ``MIRROR`` (the offline data mirror ``../shared/datasets``, read in
  place), ``FIXTURES`` (hand-written payloads in ``tests/fixtures``);
* ``FORMULAS``: well-known compositions; each test takes the slice or subset it was written for;
* ``align_inputs``/``align_params``: raw + features tables built from the mirror's measurements and
  an ``align`` section (the align stage tests, the engine, fault and neural-map tests, the tiny pipeline);
* ``train_inputs``/``train_params``: tiny raw, features and aligned tables and a ``train`` section
  (the train stage, predict and fault tests);
* ``synthetic_table``: an ``EntryTable`` with a known DFT -> measurement relation (training tests).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd

from featurizers.chemistry import reduced_formula

ROOT = Path(__file__).resolve().parents[1]
MIRROR = ROOT.parent / "shared" / "datasets"
FIXTURES = ROOT / "tests" / "fixtures"

FORMULAS = ("NaCl", "KCl", "LiF", "MgO", "CaO", "ZnO", "ZnS", "GaAs", "GaN", "Si", "SiO2", "Al2O3", "TiO2",
            "SnO2", "CdTe", "CdS", "InP", "AlN", "BN", "C", "Fe2O3", "Cu2O", "NiO", "CuBr",
            "NaF", "KBr", "LiCl", "CaS", "MgS", "ZnSe")
# the evaluate tests' compounds: FORMULAS less the elements (Si, C) and the Fe, Cu and Ni compounds
EVALUATE_FORMULAS = tuple(f for f in FORMULAS if f not in {"Si", "C", "Fe2O3", "Cu2O", "NiO", "CuBr"})


# ----------------------------------------------------------------------------- align stage inputs


def align_inputs(root: Path, n_formulas: int = 60, seed: int = 0) -> None:
    rng = np.random.default_rng(seed)
    enth = pd.read_csv(MIRROR / "experiment" / "expt_formation_enthalpy_ssub.csv").head(n_formulas)
    gap = pd.read_csv(MIRROR / "experiment" / "expt_gap_zhuo2018.csv")
    gap = gap[gap["Eg"] > 0].head(n_formulas)
    exp = pd.concat([
        pd.DataFrame({"exp_id": [f"ssub:{i}" for i in enth.index], "formula_raw": enth["formula"],
                      "property": "formation_enthalpy", "value": enth["dHf_eV_per_atom"],
                      "unit": "eV/atom", "source": "ssub"}),
        pd.DataFrame({"exp_id": [f"zhuo:{i}" for i in gap["material_id"]], "formula_raw": gap["composition"],
                      "property": "band_gap", "value": gap["Eg"], "unit": "eV", "source": "zhuo"}),
    ], ignore_index=True)
    exp["formula"] = [reduced_formula(f) for f in exp["formula_raw"]]
    # DFT: 1-2 polymorphs for most formulas; PBE gap ~ 0.6 * measured, enthalpy shifted by +0.1
    rows = []
    for k, (formula, group) in enumerate(exp.groupby("formula", sort=True)):
        if k % 5 == 4:
            continue  # measured compositions without DFT counterpart
        for p in range(1 + k % 2):
            v = group["value"].mean()
            gapv = 0.6 * v + rng.normal(scale=0.05) if group["property"].iloc[0] == "band_gap" else np.nan
            ef = v + 0.1 + rng.normal(scale=0.02) if group["property"].iloc[0] == "formation_enthalpy" else np.nan
            rows.append({"material_id": f"mp-{k}{p}", "formula": formula, "structure": None,
                         "band_gap_pbe": gapv, "formation_energy_per_atom": ef})
    rows.append({"material_id": "mp-extra", "formula": "NaCl", "structure": None, "band_gap_pbe": 5.0,
                 "formation_energy_per_atom": -2.1})
    dft = pd.DataFrame(rows)
    formulas = sorted(set(dft["formula"]) | set(exp["formula"]))
    desc = pd.DataFrame(rng.normal(size=(len(formulas), 6)), columns=[f"d{i}" for i in range(6)])
    desc.insert(0, "formula", formulas)
    index = pd.concat([
        pd.DataFrame({"id": dft["material_id"], "domain": "dft", "formula": dft["formula"], "has_graph": False,
                      "spacegroup": 225, "crystal_system": "cubic"}),
        pd.DataFrame({"id": exp["exp_id"], "domain": "experiment", "formula": exp["formula"],
                      "has_graph": False, "spacegroup": 0, "crystal_system": ""}),
    ])
    (root / "raw").mkdir(parents=True)
    (root / "features").mkdir(parents=True)
    dft.to_parquet(root / "raw" / "dft.parquet")
    exp.to_parquet(root / "raw" / "experiment.parquet")
    desc.to_parquet(root / "features" / "descriptors.parquet")
    index.to_parquet(root / "features" / "index.parquet")


def align_params(root: Path, **extra) -> Path:
    import yaml

    sec = {"raw_dir": str(root / "raw"), "features_dir": str(root / "features"),
           "out_dir": str(root / "aligned"), "reg": 0.02, "reg_m": 1.0, **extra}
    path = root / "params.yaml"
    path.write_text(yaml.safe_dump({"align": sec}))
    return path


# ----------------------------------------------------------------------------- train stage inputs

TRAIN_FORMULAS = list(FORMULAS[:20])


def train_inputs(root):
    rng = np.random.default_rng(0)
    gaps = {f: float(rng.uniform(0.2, 6)) for f in TRAIN_FORMULAS}
    dft = pd.DataFrame({
        "material_id": [f"mp-{i}" for i in range(len(TRAIN_FORMULAS))], "formula": TRAIN_FORMULAS,
        "structure": None, "band_gap_pbe": [gaps[f] for f in TRAIN_FORMULAS],
        "formation_energy_per_atom": rng.uniform(-3, 0, len(TRAIN_FORMULAS)), "e_above_hull": 0.0,
    })
    exp_f = [f for f in TRAIN_FORMULAS for _ in range(2)]
    exp = pd.DataFrame({
        "exp_id": [f"x:{i}" for i in range(len(exp_f))], "formula_raw": exp_f, "formula": exp_f,
        "property": "band_gap", "value": [1.2 * gaps[f] + 0.4 for f in exp_f], "unit": "eV", "source": "x",
    })
    desc = pd.DataFrame({"formula": TRAIN_FORMULAS, "d0": rng.normal(size=len(TRAIN_FORMULAS)), "d1": rng.normal(size=len(TRAIN_FORMULAS))})
    aligned = dft[["material_id", "formula"]].assign(
        dft_value=dft["band_gap_pbe"], transported_mass=1.0,
        calibrated_target=1.2 * dft["band_gap_pbe"] + 0.4, confidence=0.9)
    (root / "raw").mkdir()
    (root / "features").mkdir()
    (root / "aligned/band_gap").mkdir(parents=True)
    dft.to_parquet(root / "raw/dft.parquet")
    exp.to_parquet(root / "raw/experiment.parquet")
    desc.to_parquet(root / "features/descriptors.parquet")
    aligned.to_parquet(root / "aligned/band_gap/dft.parquet")
    (root / "aligned/band_gap/align.json").write_text(json.dumps({"converged": True, "params": {}}))


def train_params(root, **extra):
    lines = [
        "train:",
        f"  raw_dir: {root}/raw", f"  features_dir: {root}/features", f"  aligned_dir: {root}/aligned",
        f"  out_dir: {root}/models", f"  surrogate_dir: {root}/surrogates", f"  pretrained_dir: {root}/pretrained",
        f"  tracking_uri: sqlite:///{root}/mlflow.db",
        "  members: 2", "  encoders: 1", "  rf_trees: 10",
        "  model: {comp_hidden: 8, comp_layers: 1, emb_dim: 8, head_hidden: 8, use_graphs: false}",
        "  optim: {epochs: 2, pretrain_epochs: 1, batch_size: 8, dft_batch_size: 8}",
        "  stack: {surrogate_trees: 20, trees: 20, n_jobs: 1, blend_weight: 0.5}",
    ]
    lines += [f"  {k}: {v}" for k, v in extra.items()]
    path = root / "params.yaml"
    path.write_text("\n".join(lines) + "\n")
    return path


# ----------------------------------------------------------------------------- learner inputs


def synthetic_table(seed: int = 0):
    """Measurements = DFT value * 1.3 + 0.5 plus a per-formula term; DFT known for every formula (24 formulas)."""
    from models.learners import (
        EntryTable,  # deferred: torch is loaded only by the tests that train, not by every user of tests.data
    )

    formulas = list(FORMULAS[:24])
    rng = np.random.default_rng(seed)
    dft_val = {f: float(rng.uniform(0, 4)) for f in formulas}
    dft = pd.DataFrame({"formula": formulas * 2, "dft_value": [dft_val[f] + rng.normal(0, 0.05) for f in formulas * 2]})
    exp_f = [f for f in formulas for _ in range(3)]
    exp = pd.DataFrame({"formula": exp_f, "value": [1.3 * dft_val[f] + 0.5 for f in exp_f]})
    dft["calibrated_target"] = 1.3 * dft["dft_value"] + 0.5
    dft["confidence"] = 0.8
    desc = pd.DataFrame({"formula": formulas, "d0": rng.normal(size=len(formulas)), "d1": rng.normal(size=len(formulas))})
    return EntryTable.build(dft=dft, experiment=exp, descriptors=desc, dft_reference=pd.Series(dft_val))
