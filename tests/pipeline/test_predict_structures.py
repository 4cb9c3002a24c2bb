"""Predict serves what training saw: structures of DFT polymorphs and user CIFs go through the graph encoder.

A tiny end-to-end run with real crystal structures: the featurize stage builds graphs, the
train stage trains a model with the crystal-graph encoder, and the predictions that
``matshift predict`` serves for measured formulas must equal the ones the train stage made
for the same rows (where training fed each measurement the graph of its most stable DFT
polymorph with a structure).
"""

import argparse
import json

import numpy as np
import pandas as pd
import pytest
from pymatgen.core import Lattice, Structure

from featurizers.inputs import ParsedInput
from featurizers.settings import GraphSettings
from models.properties import get_property
from models.serving import Predictor
from pipeline import readers
from pipeline import train as train_stage
from pipeline.featurize import featurize
from pipeline.params.featurize import FeaturizeParams


def _structures() -> dict[str, list[tuple[Structure, float]]]:
    """Formula -> [(structure, formation energy per atom)]; NaCl has a less stable CsCl-type polymorph."""
    rocksalt = lambda a, x, y: Structure.from_spacegroup("Fm-3m", Lattice.cubic(a), [x, y], [[0, 0, 0], [0.5, 0.5, 0.5]])  # noqa: E731
    zincblende = lambda a, x, y: Structure.from_spacegroup("F-43m", Lattice.cubic(a), [x, y], [[0, 0, 0], [0.25, 0.25, 0.25]])  # noqa: E731
    cscl = Structure(Lattice.cubic(3.3), ["Na", "Cl"], [[0, 0, 0], [0.5, 0.5, 0.5]])
    return {
        "NaCl": [(cscl, -1.9), (rocksalt(5.64, "Na", "Cl"), -2.1)],
        "KCl": [(rocksalt(6.29, "K", "Cl"), -2.2)],
        "MgO": [(rocksalt(4.21, "Mg", "O"), -3.0)],
        "CaO": [(rocksalt(4.81, "Ca", "O"), -3.2)],
        "LiF": [(rocksalt(4.03, "Li", "F"), -3.1)],
        "GaAs": [(zincblende(5.65, "Ga", "As"), -0.4)],
        "ZnS": [(zincblende(5.41, "Zn", "S"), -1.0)],
        "InP": [(zincblende(5.87, "In", "P"), -0.3)],
        "AlN": [(zincblende(4.38, "Al", "N"), -1.6)],
        "CdTe": [(zincblende(6.48, "Cd", "Te"), -0.5)],
    }


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("predict_structures")
    rng = np.random.default_rng(0)
    rows = []
    for formula, polys in _structures().items():
        gap = float(rng.uniform(0.5, 6))
        for s, ef in polys:
            rows.append({"material_id": f"mp-{len(rows)}", "formula": formula, "structure": json.dumps(s.as_dict()),
                         "band_gap_pbe": gap + 0.1 * len(rows), "formation_energy_per_atom": ef})
    for formula in ("SiO2", "TiO2", "ZnO", "GaN", "CdS", "SnO2"):  # DFT values without a structure
        rows.append({"material_id": f"mp-{len(rows)}", "formula": formula, "structure": None,
                     "band_gap_pbe": float(rng.uniform(0.5, 6)), "formation_energy_per_atom": -1.0})
    dft = pd.DataFrame(rows).assign(band_gap_hse=np.nan, band_gap_gllb_sc=np.nan, band_gap_scan=np.nan,
                                    e_above_hull=np.nan, nsites=0, partial_occupancy=False, source="test")
    formulas = dft["formula"].drop_duplicates().tolist()
    exp_f = [f for f in formulas for _ in range(2)]
    by_formula = dft.drop_duplicates("formula").set_index("formula")["band_gap_pbe"]
    exp = pd.DataFrame({
        "exp_id": [f"x:{i}" for i in range(len(exp_f))], "formula_raw": exp_f, "formula": exp_f,
        "property": "band_gap", "value": [1.2 * by_formula[f] + 0.4 for f in exp_f], "unit": "eV", "source": "x",
    })
    (root / "data/raw").mkdir(parents=True)
    dft.to_parquet(root / "data/raw/dft.parquet")
    exp.to_parquet(root / "data/raw/experiment.parquet")
    featurize(FeaturizeParams(raw_dir=root / "data/raw", out_dir=root / "data/features", n_workers=1,
                              graph=GraphSettings(n_gaussians=10)), progress=False)
    aligned = dft[["material_id", "formula"]].assign(dft_value=dft["band_gap_pbe"], transported_mass=1.0,
                                                     calibrated_target=np.nan, confidence=np.nan)
    (root / "data/aligned/band_gap").mkdir(parents=True)
    aligned.to_parquet(root / "data/aligned/band_gap/dft.parquet")
    (root / "data/aligned/band_gap/align.json").write_text(json.dumps({"converged": True, "params": {}}))
    d = root / "data"
    params = root / "params.yaml"
    params.write_text("\n".join([
        "train:",
        f"  raw_dir: {d}/raw", f"  features_dir: {d}/features", f"  aligned_dir: {d}/aligned",
        f"  out_dir: {d}/models", f"  tracking_uri: sqlite:///{root}/mlflow.db",
        "  members: 2", "  encoders: 1", "  rf_trees: 10", "  selection_fraction: 0.3",
        "  model: {comp_hidden: 8, comp_layers: 1, emb_dim: 8, head_hidden: 8, use_graphs: true, graph_hidden: 8, graph_layers: 1}",
        "  optim: {epochs: 3, pretrain_epochs: 1, batch_size: 4, dft_batch_size: 4}",
        # half GNN, half stacked model: the served value exercises both paths (no alignment here: no OT features)
        "  stack: {blend_weight: 0.5, bags: 1, surrogate_trees: 20, trees: 20, ot_features: false}",
    ]) + "\n")
    assert train_stage.run(argparse.Namespace(params=params, property="band_gap", no_mlflow=True)) == 0
    prop = get_property("band_gap")
    predictor = Predictor.load(d / "models/band_gap", prop=prop, dft=readers.read_dft(d / "raw", prop),
                               index=readers.read_index(d / "features"), features_dir=d / "features")
    return root, predictor


def test_served_predictions_equal_the_train_stage_ones(trained):
    root, predictor = trained
    assert predictor.ensemble.uses_graphs
    sel = pd.read_csv(root / "data/models/band_gap/selection_predictions.csv").drop_duplicates("formula")
    items = [ParsedInput(f, "formula", f) for f in sel["formula"]]
    out = predictor.predict(items)
    np.testing.assert_allclose(out["prediction"].to_numpy(), sel["served"].to_numpy(), rtol=1e-5, atol=1e-6)
    assert not np.allclose(sel["served"], sel["gnn_ot"])  # the blend is not the GNN alone
    with_structure = sel["formula"].isin(list(_structures())).to_numpy()
    assert with_structure.any()
    assert (out["view"].to_numpy()[with_structure] == "structure+DFT").all()
    assert (out["view"].to_numpy()[~with_structure] == "composition+DFT").all()


def test_most_stable_polymorph_structure_is_used(trained):
    _, predictor = trained
    out = predictor.predict([ParsedInput("NaCl", "formula", "NaCl"), ParsedInput("GaN", "formula", "GaN")])
    assert out.loc[0, "structure_used"] == "mp-1 (most stable polymorph)"  # rock salt (-2.1), not CsCl (-1.9)
    assert out.loc[0, "view"] == "structure+DFT"
    assert out.loc[1, "view"] == "composition+DFT" and "no structure" in out.loc[1, "structure_used"]


def test_a_cif_is_featurized_and_changes_the_prediction(trained):
    _, predictor = trained
    cscl = _structures()["NaCl"][0][0]
    rocksalt = _structures()["NaCl"][1][0]
    items = [ParsedInput("a.cif", "cif", "NaCl", cscl), ParsedInput("b.cif", "cif", "NaCl", rocksalt),
             ParsedInput("NaCl", "formula", "NaCl")]
    out = predictor.predict(items)
    assert list(out["view"]) == ["structure+DFT"] * 3
    assert out.loc[0, "structure_used"] == "user CIF (a.cif)"
    # the rock-salt CIF is the training polymorph: same graph, same prediction as the formula
    assert out.loc[1, "prediction"] == pytest.approx(out.loc[2, "prediction"], rel=1e-6)
    assert out.loc[0, "prediction"] != pytest.approx(out.loc[1, "prediction"], rel=1e-6)


def test_applicability_domain_reference_is_the_training_measurements(trained):
    root, predictor = trained
    measured = json.loads((root / "data/models/band_gap/measured_formulas.json").read_text())
    sel = set(pd.read_csv(root / "data/models/band_gap/selection_predictions.csv")["formula"])
    assert measured and not set(measured) & sel  # the selection part is not a training measurement
    assert predictor.ad_reference == "training measurements"
    assert len(predictor.ad.points_) == len(measured)
