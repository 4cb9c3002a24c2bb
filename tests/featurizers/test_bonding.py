"""Bonding descriptors: element-class fractions, valence electrons per atom, odd electron count."""

import math

import numpy as np
import pytest

from featurizers import bonding
from featurizers.bonding import (
    BONDING_COLUMNS,
    IONIC_COLUMNS,
    bonding_descriptors,
    class_fractions,
    ionic_descriptors,
)
from featurizers.chemistry import FormulaError


def test_values_of_known_formulas():
    table = bonding_descriptors(["NaCl", "Al2O3", "Cu3Au", "LaB6", "KTi2F7"])
    assert list(table.columns) == list(BONDING_COLUMNS)
    assert list(table.index) == ["NaCl", "Al2O3", "Cu3Au", "LaB6", "KTi2F7"]
    nacl = table.loc["NaCl"]
    assert (nacl["metal_fraction"], nacl["halogen_fraction"], nacl["anion_former_fraction"]) == (0.5, 0.5, 0.5)
    assert nacl["valence_electrons_per_atom"] == 4.0  # (1 + 7) / 2
    assert nacl["odd_electron_count"] == 0.0
    alo = table.loc["Al2O3"]
    assert alo["chalcogen_fraction"] == pytest.approx(0.6)
    assert alo["valence_electrons_per_atom"] == pytest.approx((2 * 3 + 3 * 6) / 5)
    cu3au = table.loc["Cu3Au"]
    assert (cu3au["metal_fraction"], cu3au["transition_metal_fraction"], cu3au["anion_former_fraction"]) == (1.0, 1.0, 0.0)
    assert cu3au["valence_electrons_per_atom"] == 11.0
    lab6 = table.loc["LaB6"]  # 3 + 6 * 3 = 21 electrons: odd; La counts as f block, not as a transition metal
    assert lab6["odd_electron_count"] == 1.0
    assert (lab6["f_block_fraction"], lab6["transition_metal_fraction"]) == (pytest.approx(1 / 7), 0.0)
    assert table.loc["KTi2F7", "odd_electron_count"] == 0.0  # 1 + 2 * 4 + 7 * 7 = 58


def test_parity_uses_the_reduced_formula_and_is_undefined_for_fractional_amounts():
    table = bonding_descriptors(["Na2Cl2", "Fe0.5Ni0.5", "NO"])
    assert table.loc["Na2Cl2", "odd_electron_count"] == 0.0
    assert math.isnan(table.loc["Fe0.5Ni0.5", "odd_electron_count"])
    assert table.loc["Fe0.5Ni0.5", "metal_fraction"] == 1.0
    assert table.loc["NO", "odd_electron_count"] == 1.0  # 5 + 6


def test_fractions_are_bounded_and_noble_gases_are_quiet(recwarn):
    bonding._formula_row.cache_clear()  # computed here, not remembered from an earlier test
    table = bonding_descriptors(["He", "XeF2", "Ar"])
    fractions = table.drop(columns=["valence_electrons_per_atom", "odd_electron_count"]).to_numpy()
    assert ((fractions >= 0) & (fractions <= 1)).all()
    assert table.loc["He", "valence_electrons_per_atom"] == 2.0
    assert not [w for w in recwarn if "Pauling" in str(w.message)]


def test_bad_formula_is_named():
    with pytest.raises(FormulaError, match="Xx2"):
        bonding_descriptors(["NaCl", "Xx2"])
    assert bonding_descriptors([]).shape == (0, len(BONDING_COLUMNS))
    assert np.isfinite(bonding_descriptors(["NaCl"]).to_numpy()).all()


def test_ionic_descriptors_tell_charge_balanced_salts_from_intermetallics(recwarn):
    bonding._ionic_row.cache_clear()
    table = ionic_descriptors(["Al2O3", "NaCl", "GaAs", "Cu3Au", "Fe", "Fe3O4", "Hg0.7Cd0.3Te", "XeF2"])
    assert list(table.columns) == list(IONIC_COLUMNS)
    assert table["charge_balanced"].to_dict() == {
        "Al2O3": 1.0, "NaCl": 1.0, "GaAs": 1.0, "Cu3Au": 0.0,  # no common anion state of Au
        "Fe": 1.0,  # an element is neutral by itself
        "Fe3O4": 0.0,  # mixed valence: one oxidation state per element cannot balance it
        "Hg0.7Cd0.3Te": 1.0, "XeF2": 1.0}
    # ionic character 1 - exp(-(dX)^2 / 4) of the most different pair: NaCl (dX = 2.23) above GaAs (0.37)
    assert table.loc["NaCl", "max_ionic_char"] == pytest.approx(1 - math.exp(-0.25 * (3.16 - 0.93) ** 2), abs=1e-3)
    assert table.loc["GaAs", "max_ionic_char"] < 0.05 < table.loc["Al2O3", "max_ionic_char"]
    assert table.loc["Fe", "max_ionic_char"] == table.loc["Fe", "avg_ionic_char"] == 0.0
    assert not [w for w in recwarn if "Pauling" in str(w.message)]
    with pytest.raises(FormulaError, match="Qq"):
        ionic_descriptors(["NaCl", "Qq"])


def test_class_fractions_count_the_atoms_of_each_named_class():
    got = class_fractions(["Al2O3", "NaCl", "NH4Cl", "GaAs", "CaF2"], ["diatomic_gas", "halogen"])
    np.testing.assert_allclose(got, [[0.6, 0.0], [0.5, 0.5], [1.0, 1 / 6], [0.0, 0.0], [2 / 3, 2 / 3]])
    assert class_fractions([], ["chalcogen"]).shape == (0, 1)
    with pytest.raises(KeyError, match=r"no element class 'gas'.*diatomic_gas"):
        class_fractions(["NaCl"], ["gas"])
    with pytest.raises(FormulaError, match="Xx2O"):
        class_fractions(["Xx2O"], ["chalcogen"])
