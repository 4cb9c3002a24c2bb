"""Row-level validation: formulas, values, structures (partial occupancy, dummy species)."""

import json
import math

import pytest
from pymatgen.core import Lattice, Structure

from pipeline.sources import DftRow, ExpRow, SourceTable
from pipeline.sources.merge import LABEL_ONLY_REASON, merge_tables
from pipeline.sources.records import RowError, check_label, parse_float, parse_structure


def _nacl() -> Structure:
    return Structure.from_spacegroup("Fm-3m", Lattice.cubic(5.64), ["Na", "Cl"], [[0, 0, 0], [0.5, 0.5, 0.5]])


def test_parse_float_accepts_numeric_strings_and_rejects_junk():
    assert parse_float("1.5930000000000002", name="g") == pytest.approx(1.593)
    with pytest.raises(RowError, match="not a number"):
        parse_float("abc", name="g")
    with pytest.raises(RowError, match="non-finite"):
        parse_float("nan", name="g")


def test_negative_band_gap_and_impossible_energy_are_rejected():
    with pytest.raises(RowError, match="negative band gap"):
        check_label("band_gap_pbe", -0.1)
    with pytest.raises(RowError, match="outside"):
        check_label("formation_energy_per_atom", -42.0)
    assert check_label("band_gap_hse", 21.0) == 21.0  # solid neon's gap is ~21.7 eV


def test_ordered_structure_round_trips_through_json():
    parsed = parse_structure(_nacl().as_dict(), "dict")
    assert parsed.formula == "NaCl"
    assert parsed.nsites == 8
    assert parsed.partial_occupancy is False
    again = Structure.from_dict(json.loads(parsed.json))
    assert again.composition.reduced_formula == "NaCl"


def test_partial_occupancy_is_kept_with_flag():
    s = Structure(Lattice.cubic(4.0), [{"Fe": 0.5, "Co": 0.5}, "O"], [[0, 0, 0], [0.5, 0.5, 0.5]])
    parsed = parse_structure(s, "object")
    assert parsed.partial_occupancy is True
    assert parsed.formula == "Fe0.5Co0.5O"  # canonical key keeps fractional amounts


def test_dummy_species_and_garbage_are_rejected_and_poscar_fallback_is_used():
    s = Structure(Lattice.cubic(4.0), ["X0+", "O"], [[0, 0, 0], [0.5, 0.5, 0.5]])
    with pytest.raises(RowError, match=r"non-element|unparsable"):
        parse_structure(s.as_dict(), "dict")
    with pytest.raises(RowError, match="unparsable structure"):
        parse_structure("not a cif", "cif")
    poscar = "NaCl\n1.0\n5.64 0 0\n0 5.64 0\n0 0 5.64\nNa Cl\n1 1\ndirect\n0 0 0\n0.5 0.5 0.5\n"
    parsed = parse_structure("data_broken\n_cell_length_a x\n", "cif", poscar, "poscar")
    assert parsed.used_fallback is True
    assert parsed.formula == "NaCl"


def _table(name, kind, rows):
    return SourceTable(name=name, kind=kind, origin="test", path=None, sha256="0" * 64, rows=rows)


def test_merge_rules_priority_conflicts_and_label_only_rejection():
    nacl = _nacl().as_dict()
    first = _table("first", "dft", [
        DftRow(row=1, material_id="mp-22862", content="a", structure=nacl, structure_fmt="dict",
               labels={"band_gap_pbe": 5.0, "formation_energy_per_atom": -2.1}),
        DftRow(row=2, material_id="mp-1", content="b", formula="Xx2", labels={"band_gap_pbe": 1.0}),
    ])
    second = _table("second", "dft", [
        DftRow(row=1, material_id="mp-22862", content="c", labels={"band_gap_pbe": "4.0"}),   # conflict
        DftRow(row=2, material_id="mp-2", content="d", labels={"band_gap_pbe": "1.0"}),       # labels only
        DftRow(row=3, material_id="mp-3", content="e", formula="GaAs", labels={"band_gap_pbe": "0.2"}),
        DftRow(row=4, material_id="mp-4", content="f", labels={"band_gap_pbe": "-1"}),
        DftRow(row=5, material_id="mvc-7", content="g", formula="ZnO", labels={"band_gap_pbe": "0.7"}),
        DftRow(row=6, material_id="icsd-7", content="h", formula="ZnO", labels={"band_gap_pbe": "3.4"}),
        DftRow(row=7, material_id="mp-3", content="i", formula="GaP"),  # disagrees with row 3: counted
    ])
    result = merge_tables([first, second], workers=1, gap_tol=0.01)
    dft = result.dft.set_index("material_id")
    assert list(dft.index) == ["mp-3", "mp-22862", "mvc-7"]
    assert dft.loc["mp-22862", "band_gap_pbe"] == 5.0  # the file with the structure wins
    assert dft.loc["mp-22862", "source"] == "first,second"
    assert dft.loc["mp-3", "structure"] is None and dft.loc["mp-3", "nsites"] == 0
    assert dft.loc["mp-3", "formula"] == "GaAs"
    assert math.isnan(dft.loc["mp-3", "formation_energy_per_atom"])
    assert result.dft_conflicts["formula_conflicts"] == 1
    conflict = result.dft_conflicts["label_conflicts"]["band_gap_pbe: first vs second"]
    assert conflict == {"count": 1, "max_abs_diff": 1.0}
    reasons = dict(zip(zip(result.rejected["source"], result.rejected["row"], strict=True), result.rejected["reason"], strict=True))
    assert reasons[("first", 2)].startswith("unparsable formula")
    assert reasons[("second", 2)] == LABEL_ONLY_REASON
    assert "negative band gap" in reasons[("second", 4)]
    assert reasons[("second", 6)] == "material_id 'icsd-7' is not a Materials Project id (mp-N or mvc-N)"
    for name in ("first", "second"):
        c = result.counts[name]
        assert c.read == c.kept + c.rejected
    assert (result.counts["first"].kept, result.counts["second"].kept) == (1, 4)


def test_experiment_duplicates_exact_rejected_conflicting_kept():
    rows = [
        ExpRow(row=1, row_id="1", formula_raw="Hg0.7Cd0.3Te", property="band_gap", value="0.35", content=""),
        ExpRow(row=2, row_id="2", formula_raw="GaAs", property="band_gap", value="1.42", content=""),
        ExpRow(row=3, row_id="3", formula_raw="GaAs", property="band_gap", value="1.42", content=""),
        ExpRow(row=4, row_id="4", formula_raw="As1Ga1", property="band_gap", value="2.0", content=""),
        ExpRow(row=5, row_id="5", formula_raw="Qq3", property="band_gap", value="1.0", content=""),
    ]
    result = merge_tables([_table("ex", "experiment", rows)], workers=1)
    exp = result.experiment
    assert list(exp["exp_id"]) == ["ex:1", "ex:2", "ex:4"]
    assert list(exp["formula"]) == ["Cd0.3Hg0.7Te", "GaAs", "GaAs"]
    assert set(exp["unit"]) == {"eV"}
    assert sorted(result.rejected["row"]) == [3, 5]
    assert result.experiment_conflicts["band_gap"]["largest"] == {"GaAs": pytest.approx(0.58)}


def test_metal_classes_are_validated_split_out_and_checked_against_measured_gaps():
    gaps = [
        ExpRow(row=1, row_id="1", formula_raw="GaAs", property="band_gap", value="1.42", content=""),
        ExpRow(row=2, row_id="2", formula_raw="CoPbO3", property="band_gap", value="1.2", content=""),
    ]
    classes = [
        ExpRow(row=1, row_id="1", formula_raw="Cu3Au", property="is_metal", value="1", content=""),
        ExpRow(row=2, row_id="2", formula_raw="GaAs", property="is_metal", value="0", content=""),
        ExpRow(row=3, row_id="3", formula_raw="CoPbO3", property="is_metal", value="1", content=""),
        ExpRow(row=4, row_id="4", formula_raw="Fe", property="is_metal", value="2", content=""),
        ExpRow(row=5, row_id="5", formula_raw="Al", property="is_metal", value="yes", content=""),
        ExpRow(row=6, row_id="6", formula_raw="Cu3Au", property="is_metal", value="1.0", content=""),
        ExpRow(row=7, row_id="7", formula_raw="Ni", property="is_metal", value="1", content=""),
        ExpRow(row=8, row_id="8", formula_raw="Ni1", property="is_metal", value="0", content=""),
    ]
    result = merge_tables([_table("gap", "experiment", gaps), _table("cls", "experiment", classes)], workers=1,
                          metal_gap_tol=0.1)
    assert set(result.experiment["property"]) == {"band_gap"}  # classes never mix with measurements
    metal = result.metal_class
    assert list(metal.columns) == ["exp_id", "formula_raw", "formula", "is_metal", "source"]
    assert list(metal["exp_id"]) == ["cls:1", "cls:2", "cls:3", "cls:7", "cls:8"]
    assert metal["is_metal"].dtype == "int64" and list(metal["is_metal"]) == [1, 0, 1, 1, 0]
    reasons = result.rejected.set_index(["source", "row"])["reason"]
    assert reasons["cls", 4] == "is_metal: class must be 0 or 1, got 2"
    assert "not a number" in reasons["cls", 5]
    assert reasons["cls", 6].startswith("exact duplicate of row 1")
    assert result.metal_conflicts["both_classes"] == ["Ni"]
    assert result.metal_conflicts["largest"] == {"CoPbO3": 1.2}
    assert result.counts["cls"].read == result.counts["cls"].kept + result.counts["cls"].rejected == 8
