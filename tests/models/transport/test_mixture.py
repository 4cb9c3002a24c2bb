"""Compositions as mass-conserving mixtures of DFT compounds: the lower hull by LP, checked against pymatgen."""

import numpy as np
import pandas as pd
import pytest

from models.transport import hull_mixtures


def _reference():
    return pd.DataFrame({"formula": ["Li2O", "LiO", "Fe2O3"], "energy": [-2.0, -1.7, -1.7],
                         "gap": [5.0, 2.0, 2.0]})


def test_mixture_is_the_lower_hull_with_the_formula_left_out():
    out = hull_mixtures(_reference(), ["Li3O2", "Li2O", "LiO2", "CsBr", "Xx"], value_columns=["gap"])
    # Li3O2 (40% O) = 0.6 Li2O + 0.4 LiO by atoms
    assert out.loc["Li3O2", "hull_energy"] == pytest.approx(0.6 * -2.0 + 0.4 * -1.7)
    assert out.loc["Li3O2", "mixture_gap"] == pytest.approx(0.6 * 5.0 + 0.4 * 2.0)
    assert out.loc["Li3O2", "n_components"] == 2 and not out.loc["Li3O2", "elements_only"]
    # Li2O's own entry is left out: Li metal (no entry: E = 0, gap 0) + LiO
    assert out.loc["Li2O", "hull_energy"] == pytest.approx(2 / 3 * -1.7)
    assert out.loc["Li2O", "mixture_gap"] == pytest.approx(2 / 3 * 2.0)
    # oxygen without an entry is not a metal: no gap for a mixture that holds it; its energy is still known
    assert out.loc["LiO2", "hull_energy"] == pytest.approx(2 / 3 * -1.7) and np.isnan(out.loc["LiO2", "mixture_gap"])
    # nothing of the chemical system: the pure elements
    assert out.loc["CsBr", "hull_energy"] == 0.0 and out.loc["CsBr", "elements_only"]
    assert np.isnan(out.loc["Xx", "hull_energy"])


def test_hull_energy_matches_pymatgen_phase_diagram():
    from pymatgen.analysis.phase_diagram import PDEntry, PhaseDiagram
    from pymatgen.core import Composition

    rng = np.random.default_rng(3)
    formulas = ["LiFeO2", "Li5FeO4", "LiFe5O8", "Fe3O4", "FeO", "Fe2O3", "Li2O", "Li2O2", "Li2FeO3", "LiFe2O4"]
    reference = pd.DataFrame({"formula": formulas, "energy": rng.uniform(-2.5, -0.5, len(formulas))})
    targets = ["Li3Fe2O5", "LiFeO2", "Li2Fe3O6", "Fe5O6", "Li7Fe3O9"]
    out = hull_mixtures(reference, targets)
    for target in targets:
        others = reference[reference["formula"] != Composition(target).reduced_formula]
        entries = [PDEntry(Composition(f), e * Composition(f).num_atoms) for f, e in zip(others["formula"], others["energy"], strict=True)]
        entries += [PDEntry(Composition(el), 0.0) for el in ("Li", "Fe", "O")]
        expected = PhaseDiagram(entries).get_hull_energy_per_atom(Composition(target))
        assert out.loc[target, "hull_energy"] == pytest.approx(expected, abs=1e-7), target
