"""benchmarks/cost_curve.py: the scaled inputs keep the real rows and add what the docstring says."""

import json

import numpy as np
import pandas as pd
import pytest
from pymatgen.core import Composition

from benchmarks.cost_curve import exponent, scaled_raw


def test_exponent_recovers_a_power_law():
    sizes = [1000, 3000, 10000]
    assert exponent(sizes, [2.0 * (n / 1000) ** 1.3 for n in sizes]) == pytest.approx(1.3)


def test_scaled_inputs_keep_every_real_row_and_add_structures_and_compositions(tmp_path):
    raw = tmp_path / "raw_1"
    raw.mkdir()
    dft = pd.DataFrame({"material_id": ["mp-1", "mp-2", "mp-3", "mp-4"], "formula": ["NaCl", "GaAs", "Fe2O3", "Si"],
                        "structure": [None, "{}", None, None], "band_gap_pbe": [5.0, 0.5, 2.0, 0.6],
                        "band_gap_hse": [6.0, np.nan, np.nan, 1.1], "formation_energy_per_atom": [-2.0, -0.4, -1.7, 0.0],
                        "e_above_hull": [0.0, 0.0, 0.0, 0.0], "nsites": [0, 2, 0, 0], "partial_occupancy": False,
                        "source": "mirror"})
    dft.to_parquet(raw / "dft.parquet", index=False)
    (raw / "manifest.json").write_text("{}")
    counts = scaled_raw(raw, tmp_path / "raw_3", 3)
    out = pd.read_parquet(tmp_path / "raw_3/dft.parquet")
    assert counts == {"dft_entries": 12, "structures": 3} and len(out) == 12
    pd.testing.assert_frame_equal(out.iloc[:4], dft)  # the real rows, unchanged and first
    added = out.iloc[4:]
    assert added["material_id"].is_unique and added["material_id"].str.startswith("syn-3-").all()
    cells = added.dropna(subset=["structure"])
    assert len(cells) == 2 and (cells["nsites"] == 5).all()  # two perovskites (5-atom cells)
    for _, row in cells.iterrows():
        cell = json.loads(row["structure"])
        species = [s["species"][0]["element"] for s in cell["sites"]]
        assert Composition(dict(pd.Series(species).value_counts())).reduced_formula == row["formula"]
    assert added["band_gap_hse"].isna().all() and (added["band_gap_pbe"] >= 0).all()
    assert (tmp_path / "raw_3/manifest.json").is_file()


def _paths(section: dict) -> dict[str, str]:
    return {k: v for k, v in section.items() if k.endswith("_dir") or k == "tracking_uri"}


@pytest.mark.parametrize("budget", ["full", "small"])
def test_stage_params_keep_every_stage_under_the_work_folder(tmp_path, budget):
    import yaml

    from benchmarks.cost_curve import ROOT, TRAIN_BUDGET, stage_params

    base = yaml.safe_load((ROOT / "params.yaml").read_text())
    params = yaml.safe_load(stage_params(tmp_path, 3, budget=budget).read_text())
    for name in ("featurize", "align", "train", "metal", "evaluate"):
        paths = _paths(params[name])
        assert paths and all(str(tmp_path) in v for v in paths.values()), (name, paths)  # nothing in the repo's data/
    assert params["train"]["register"] is False and params["metal"]["register"] is False
    assert params["train"]["surrogate_dir"].endswith("surrogates_3")
    assert params["train"]["pretrained_dir"].endswith("pretrained_3")
    if budget == "full":  # params.yaml's own training
        assert params["train"]["members"] == base["train"]["members"]
        assert params["train"]["optim"] == base["train"]["optim"]
    else:
        assert params["train"]["members"] == TRAIN_BUDGET["members"]
        assert params["train"]["optim"]["pretrain_epochs"] == TRAIN_BUDGET["optim"]["pretrain_epochs"]
