import pytest
from pymatgen.core import Lattice, Structure

from featurizers.inputs import InputProblem, ParsedInput, parse_cif, parse_formula_input


@pytest.fixture
def nacl() -> Structure:
    return Structure.from_spacegroup("Fm-3m", Lattice.cubic(5.64), ["Na", "Cl"], [[0, 0, 0], [0.5, 0.5, 0.5]])


def test_valid_cif_gives_structure_and_formula(tmp_path, nacl):
    path = tmp_path / "nacl.cif"
    nacl.to(filename=str(path))
    parsed = parse_cif(path)
    assert isinstance(parsed, ParsedInput)
    assert parsed.formula == "NaCl"
    assert len(parsed.structure) == 8


@pytest.mark.parametrize(
    ("make", "message"),
    [
        ("missing", "cannot read CIF file"),
        ("empty", "CIF file is empty"),
        ("garbage", "not a CIF file"),
        ("truncated", "malformed CIF"),
        ("disordered", "partially occupied sites"),
        ("too_big", "cell has 1000 sites, above the limit of 500"),
    ],
)
def test_bad_cifs_are_refused_with_a_reason(tmp_path, nacl, make, message):
    path = tmp_path / f"{make}.cif"
    nacl.to(filename=str(tmp_path / "ok.cif"))
    text = (tmp_path / "ok.cif").read_text()
    if make == "empty":
        path.write_text("")
    elif make == "garbage":
        path.write_text("this is not crystallography\n")
    elif make == "truncated":
        path.write_text(text[:300])
    elif make == "disordered":
        d = nacl.copy()
        d.replace_species({"Na": {"Na": 0.5, "K": 0.5}})
        d.to(filename=str(path))
    elif make == "too_big":
        (nacl * (5, 5, 5)).to(filename=str(path))
    result = parse_cif(path)
    assert isinstance(result, InputProblem)
    assert result.input == str(path)
    assert message in result.reason


@pytest.mark.parametrize(
    ("text", "reason"),
    [("Xx2", "unknown element 'Xx'"), ("", "empty formula"), ("NaCl)(", "cannot parse formula")],
)
def test_bad_formulas(text, reason):
    result = parse_formula_input(text)
    assert isinstance(result, InputProblem)
    assert reason in result.reason


def test_hydrate_formula_is_expanded():
    parsed = parse_formula_input("CuSO4·5H2O")
    assert isinstance(parsed, ParsedInput)
    assert parsed.formula == "CuH10SO9"
