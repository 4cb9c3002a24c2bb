"""Composition descriptors (vectorised) against matminer, and composition graphs."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from featurizers.chemistry import reduced_formula
from featurizers.composition import (
    composition_descriptors,
    composition_graph,
    descriptor_labels,
    matminer_descriptors,
)
from featurizers.elements import element_embedding
from tests.data import MIRROR


@pytest.fixture(scope="module")
def real_formulas() -> list[str]:
    mp = pd.read_csv(MIRROR / "mp" / "mp_non_metals_band_gap.csv")
    exp = pd.read_csv(MIRROR / "experiment" / "expt_gap_zhuo2018.csv")
    rng = np.random.default_rng(0)
    picked = list(mp["composition"].iloc[rng.choice(len(mp), 250, replace=False)])
    picked += list(exp["composition"].iloc[rng.choice(len(exp), 100, replace=False)])
    # edge cases: one element, noble gas, actinides, fractional alloys, ties for the mode
    picked += ["Si", "He", "XeF2", "UO2", "PuO2", "Hg0.7Cd0.3Te", "NaCl", "Ga0.5In0.5As", "LiFePO4"]
    return list(dict.fromkeys(reduced_formula(f) for f in picked))


def test_vectorised_equals_matminer(real_formulas):
    ours = composition_descriptors(real_formulas)
    assert ours.failures == []
    ref = matminer_descriptors(real_formulas)
    assert list(ours.frame.columns) == list(ref.columns)
    assert ours.frame["formula"].tolist() == real_formulas
    np.testing.assert_allclose(ours.frame.iloc[:, 1:].to_numpy(), ref.iloc[:, 1:].to_numpy(), rtol=1e-8, atol=1e-8)


def test_no_nan_and_expected_width(real_formulas):
    frame = composition_descriptors(real_formulas).frame
    assert frame.shape[1] == 1 + 132 + 6 + 8
    assert np.isfinite(frame.iloc[:, 1:].to_numpy()).all()


def test_hand_checked_values():
    frame = composition_descriptors(["NaCl", "Fe2O3"]).frame.set_index("formula")
    # Z: Na 11, Cl 17 -> mean 14, avg_dev 3, range 6; Fe 26 (0.4), O 8 (0.6) -> mean 15.2
    assert frame.loc["NaCl", "MagpieData mean Number"] == pytest.approx(14.0)
    assert frame.loc["NaCl", "MagpieData avg_dev Number"] == pytest.approx(3.0)
    assert frame.loc["NaCl", "MagpieData range Number"] == pytest.approx(6.0)
    assert frame.loc["NaCl", "MagpieData mode Number"] == pytest.approx(11.0)  # tie -> smaller value
    assert frame.loc["Fe2O3", "MagpieData mean Number"] == pytest.approx(0.4 * 26 + 0.6 * 8)
    assert frame.loc["Fe2O3", "MagpieData mode Number"] == pytest.approx(8.0)
    assert frame.loc["Fe2O3", "0-norm"] == 2
    assert frame.loc["Fe2O3", "2-norm"] == pytest.approx(np.sqrt(0.4**2 + 0.6**2))


def test_duplicates_once_and_failures_named():
    res = composition_descriptors(["NaCl", "NaCl", "Xx2", "Fe2O3", "", "Og2"])
    assert res.frame["formula"].tolist() == ["NaCl", "Fe2O3"]
    reasons = {f.formula: f.reason for f in res.failures}
    assert set(reasons) == {"Xx2", "", "Og2"}
    assert "cannot parse formula" in reasons["Xx2"]
    assert "no Magpie data for Og" in reasons["Og2"]


def test_descriptor_sets_select_columns():
    res = composition_descriptors(["NaCl"], sets=["stoichiometry"])
    assert list(res.frame.columns) == ["formula", *descriptor_labels(["stoichiometry"])]
    with pytest.raises(ValueError, match="descriptor sets"):
        composition_descriptors(["NaCl"], sets=["colour"])


def test_composition_graph():
    g = composition_graph("LiFePO4")
    assert g.z.tolist() == [3, 8, 15, 26]
    assert g.weight.tolist() == pytest.approx([1 / 7, 4 / 7, 1 / 7, 1 / 7])
    assert g.edge_index.shape == (2, 12)
    assert not bool((g.edge_index[0] == g.edge_index[1]).any())
    pairs = {tuple(p) for p in g.edge_index.t().tolist()}
    assert pairs == {(i, j) for i in range(4) for j in range(4) if i != j}
    table = element_embedding("megnet16")
    assert torch.allclose(g.x, torch.from_numpy(table[[3, 8, 15, 26]].astype(np.float32)))
    single = composition_graph("Si")
    assert single.edge_index.shape == (2, 0) and single.weight.tolist() == [1.0]
