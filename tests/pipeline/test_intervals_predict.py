"""Issue 18's pin: `matshift predict GaN MgF2 Ne` on a small model trained on a sample of the mirror.

No row gets a zero-width error bar, and the wide-gap outliers (MgF2, Ne: far from the sampled
training compositions) get wider intervals than GaN.
"""

import argparse
import json

import numpy as np
import pandas as pd
import pytest
import yaml

from featurizers.chemistry import FormulaError, reduced_formula
from featurizers.composition import composition_descriptors
from featurizers.settings import DESCRIPTOR_SETS
from pipeline import train as train_stage
from pipeline.cli import main
from tests.data import MIRROR

pytestmark = pytest.mark.skipif(not MIRROR.is_dir(), reason="offline mirror ../shared/datasets not present")

PINNED = ("GaN", "MgF2", "Ne")


def _reduced(text: str) -> str | None:
    try:
        return reduced_formula(text)
    except FormulaError:
        return None


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    root = tmp_path_factory.mktemp("intervals")
    rng = np.random.default_rng(0)
    gaps = pd.read_csv(MIRROR / "experiment/expt_gap_zhuo2018.csv").assign(
        formula=lambda f: f["composition"].map(_reduced)).dropna()
    gaps = gaps[~gaps["formula"].isin(PINNED)]
    keep = rng.permutation(gaps["formula"].unique())[:300]
    gaps = gaps[gaps["formula"].isin(set(keep))]
    dft = pd.read_csv(MIRROR / "mp/mp_non_metals_band_gap.csv").assign(
        formula=lambda f: f["composition"].map(_reduced)).dropna()
    dft = pd.concat([dft[dft["formula"].isin(set(keep) | set(PINNED))], dft.iloc[rng.permutation(len(dft))[:300]]])
    dft = dft.drop_duplicates("material_id")
    for d in ("raw", "features", "aligned/band_gap"):
        (root / d).mkdir(parents=True)
    pd.DataFrame({"material_id": dft["material_id"], "formula": dft["formula"], "structure": None,
                  "band_gap_pbe": dft["band_gap"], "formation_energy_per_atom": -1.0,
                  "e_above_hull": 0.0}).to_parquet(root / "raw/dft.parquet")
    pd.DataFrame({"exp_id": [f"g:{i}" for i in range(len(gaps))], "formula_raw": gaps["formula"],
                  "formula": gaps["formula"], "property": "band_gap", "value": gaps["Eg"], "unit": "eV",
                  "source": "zhuo"}).to_parquet(root / "raw/experiment.parquet")
    formulas = sorted(set(gaps["formula"]) | set(dft["formula"]))
    composition_descriptors(formulas, sets=DESCRIPTOR_SETS).frame.to_parquet(root / "features/descriptors.parquet")
    pd.DataFrame({"material_id": dft["material_id"], "calibrated_target": dft["band_gap"] + 1.0,
                  "confidence": 1.0}).to_parquet(root / "aligned/band_gap/dft.parquet")
    (root / "aligned/band_gap/align.json").write_text(json.dumps({"converged": True, "params": {}}))
    params = {"train": {
        "raw_dir": str(root / "raw"), "features_dir": str(root / "features"), "aligned_dir": str(root / "aligned"),
        "out_dir": str(root / "models"), "members": 1, "encoders": 1, "rf_trees": 10,
        "model": {"comp_hidden": 8, "comp_layers": 1, "emb_dim": 8, "head_hidden": 8, "use_graphs": False},
        "optim": {"epochs": 1, "pretrain_epochs": 1, "batch_size": 32, "dft_batch_size": 64},
        "stack": {"surrogate_trees": 40, "trees": 150, "bags": 2, "n_jobs": 1, "ot_features": False},
        "intervals": {"folds": 4}},
        "metal": {"out_dir": str(root / "no-metal-model")}}
    (root / "params.yaml").write_text(yaml.safe_dump(params))
    args = argparse.Namespace(params=root / "params.yaml", property="band_gap", no_mlflow=True)
    assert train_stage.run(args) == 0
    return root


def test_wide_gap_outliers_get_wider_intervals_and_none_is_zero(workdir, monkeypatch):
    monkeypatch.chdir(workdir)
    assert main(["predict", *PINNED, "--params", "params.yaml", "--output", "out.json"]) == 0
    rows = {r["input"]: r for r in json.loads((workdir / "out.json").read_text())}
    width = {f: rows[f]["upper"] - rows[f]["lower"] for f in PINNED}
    for f in PINNED:
        r = rows[f]
        assert r["coverage"] == 0.9 and r["lower"] <= r["prediction"] <= r["upper"]
        assert width[f] > 0.1, f  # never a zero-width "± 0.00"
        assert r["bag_spread"] >= 0  # the booster spread stays available under its own name
    assert width["MgF2"] > width["GaN"] and width["Ne"] > width["GaN"]
    metrics = json.loads((workdir / "models/band_gap/metrics.json").read_text())
    assert 0.6 <= metrics["interval_coverage_selection"] <= 1.0  # 60 held-out formulas: a loose check


def test_coverage_flag_changes_the_width(workdir, monkeypatch):
    monkeypatch.chdir(workdir)
    widths = {}
    for cov in ("0.5", "0.95"):
        assert main(["predict", "GaN", "--params", "params.yaml", "--coverage", cov, "--output", f"c{cov}.json"]) == 0
        (row,) = json.loads((workdir / f"c{cov}.json").read_text())
        widths[cov] = row["upper"] - row["lower"]
        assert row["coverage"] == float(cov)
    assert widths["0.95"] > widths["0.5"] > 0
    assert main(["predict", "GaN", "--params", "params.yaml", "--coverage", "1.5"]) == 1


def test_a_formula_that_cannot_be_featurized_is_an_error_row_not_a_failed_batch(workdir, monkeypatch, capsys):
    """Og parses but has no Magpie data: its row says so, and the other rows are predicted as they are alone."""
    monkeypatch.chdir(workdir)
    assert main(["predict", "GaN", "Og2", "LiSrO3", "--params", "params.yaml", "--output", "mixed.json"]) == 1
    assert "'Og2': no descriptors" in capsys.readouterr().err
    rows = json.loads((workdir / "mixed.json").read_text())
    assert [r["input"] for r in rows] == ["GaN", "Og2", "LiSrO3"]
    assert rows[1]["prediction"] is None and "Og" in rows[1]["error"] and "Magpie" in rows[1]["error"]
    assert main(["predict", "GaN", "LiSrO3", "--params", "params.yaml", "--output", "alone.json"]) == 0
    alone = json.loads((workdir / "alone.json").read_text())
    assert [rows[0]["prediction"], rows[2]["prediction"]] == [r["prediction"] for r in alone]
    assert rows[0]["error"] is None and rows[2]["error"] is None


def test_concurrent_requests_with_new_formulas_all_get_answers(workdir, monkeypatch):
    """A model server predicts from several threads; each extends the descriptor table with its new formulas."""
    import threading

    from featurizers.inputs import parse_formula_input
    from models.serving import predict_items
    from pipeline.predict import load_predictor

    monkeypatch.chdir(workdir)
    predictor = load_predictor(None, property="band_gap", params=workdir / "params.yaml")
    # a table the size of the pipeline's (about 50,000 formulas): extending it takes long enough for requests to overlap
    table = predictor.ensemble.descriptors
    padding = table.iloc[np.arange(50_000) % len(table)].assign(formula=[f"pad{k}" for k in range(50_000)])
    predictor.ensemble.descriptors = pd.concat([table, padding], ignore_index=True)
    cations, anions = ["Li", "Na", "K", "Rb", "Mg", "Ca", "Sr", "Ba"], ["F", "Cl", "Br", "I", "S", "Se"]
    new = [f"{a}{n}{b}{m}{x}" for a in cations for b in cations if a < b for x in anions for n, m in ((1, 2), (3, 1))]
    batches = [new[k::8] for k in range(8)]
    failures, answers = [], {}

    def request(k):
        try:
            answers[k] = predict_items([parse_formula_input(f) for f in batches[k]], predictor, unit="eV")
        except Exception as exc:  # noqa: BLE001 - collected and shown by the assertion
            failures.append(repr(exc))

    threads = [threading.Thread(target=request, args=(k,)) for k in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert failures == []
    assert all(answers[k]["prediction"].notna().all() and answers[k]["error"].isna().all() for k in range(8))
    table = predictor.ensemble.descriptors
    assert not table["formula"].duplicated().any()
    # the same answers as one request at a time
    alone = predict_items([parse_formula_input(f) for f in batches[3]], predictor, unit="eV")
    assert alone["prediction"].tolist() == answers[3]["prediction"].tolist()
