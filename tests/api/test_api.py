"""The Python API (``import matshift``): inputs of every kind, featurizers, and the model it loads."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from pymatgen.core import Composition, Lattice, Structure

import matshift
from featurizers.inputs import InputProblem, ParsedInput
from matshift.api import to_inputs


def test_inputs_of_every_kind_are_validated_one_by_one():
    rock_salt = Structure.from_spacegroup("Fm-3m", Lattice.cubic(5.64), ["Na", "Cl"], [[0, 0, 0], [0.5, 0.5, 0.5]])
    items = to_inputs(["GaAs", Composition("Fe2O3"), rock_salt, "Xx2", 3.5, None])
    assert [type(i) for i in items] == [ParsedInput] * 3 + [InputProblem] * 3
    assert [i.formula for i in items[:3]] == ["GaAs", "Fe2O3", "NaCl"]
    assert items[2].structure is rock_salt and items[2].kind == "structure"
    assert "Xx" in items[3].reason and "float" in items[4].reason
    frame = pd.DataFrame({"formula": ["GaN", None, ""], "composition": [None, Composition("MgO"), None]})
    got = to_inputs(frame)
    assert [getattr(i, "formula", None) for i in got] == ["GaN", "MgO", None]
    assert isinstance(got[2], InputProblem) and "empty row" in got[2].reason


def test_a_frame_s_dft_value_column_is_read_as_the_input_csv_s():
    """The user's own DFT value in a DataFrame: used where given, the mirror's where missing, refused when not a number."""
    frame = pd.DataFrame({"formula": ["GaN", "GaN", "GaN", "GaN", "GaN", "Xx2"],
                          "dft_value": pd.Series([0.5, "2.5", np.nan, None, "abc", 1.0], dtype=object)})
    got = to_inputs(frame)
    assert [getattr(i, "dft_value", "problem") for i in got[:5]] == [0.5, 2.5, None, None, "problem"]
    assert "dft_value 'abc' is not a number" in got[4].reason
    assert "Xx" in got[5].reason  # the formula's own problem comes first
    assert to_inputs(pd.DataFrame({"formula": ["GaN"], "dft_value": [np.inf]}))[0].reason.endswith("not a finite number")


def test_featurize_matches_the_matminer_featurizer_and_names_bad_rows():
    table = matshift.featurize(["GaAs", "NaCl", "Xx2"])
    f = matshift.CompositionDescriptors()
    assert list(table.columns[2:-1]) == f.feature_labels()
    np.testing.assert_array_equal(table.iloc[0, 2:-1].to_numpy(float), f.featurize(Composition("GaAs")))
    assert table["error"].isna().tolist() == [True, True, False] and "Xx" in table.loc[2, "error"]
    with pytest.raises(ValueError, match="Xx"):
        f.featurize("Xx2")
    assert f.citations() and f.implementors()
    frame = f.featurize_dataframe(pd.DataFrame({"composition": [Composition("GaAs")]}), "composition")
    assert frame.shape == (1, 1 + len(f.feature_labels()))


def test_crystal_graph_featurizer_gives_the_pipeline_graph():
    rock_salt = Structure.from_spacegroup("Fm-3m", Lattice.cubic(5.64), ["Na", "Cl"], [[0, 0, 0], [0.5, 0.5, 0.5]])
    (graph,) = matshift.CrystalGraph().featurize(rock_salt)
    assert graph.num_nodes == 2 and graph.edge_index.shape[1] > 0
    assert matshift.featurize([rock_salt, "NaCl"], kind="graph")[1] is None


def test_load_model_names_a_missing_model(tmp_path):
    with pytest.raises(matshift.ModelNotFoundError, match="no model at"):
        matshift.load_model(str(tmp_path / "nothing"))
