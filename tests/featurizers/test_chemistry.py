import numpy as np
import pytest

from featurizers.chemistry import (
    FormulaError,
    element_fractions,
    element_mask,
    is_element,
    parse_formula,
    reduced_formula,
)


@pytest.mark.parametrize(
    ("formula", "expected"),
    [
        ("NaCl", "NaCl"),
        ("Na10Cl10", "NaCl"),
        ("Fe4O6", "Fe2O3"),
        ("O3Fe2", "Fe2O3"),
        ("AlKO6Si2", "KAlSi2O6"),
        ("KAl(SiO3)2", "KAlSi2O6"),
        ("Hg0.7Cd0.3Te", "Cd0.3Hg0.7Te"),
        ("XeF2", "XeF2"),
    ],
)
def test_reduced_formula_is_canonical(formula, expected):
    assert reduced_formula(formula) == expected


@pytest.mark.parametrize(
    ("formula", "message"),
    [
        ("", "empty formula"),
        ("Xx2", "unknown element .Xx."),
        ("NaCl)(", "cannot parse formula"),
        ("H-1", "contains characters"),
        ("Na1Cl0", "amount 0"),
        ("Na" * 200, "longer than"),
    ],
)
def test_invalid_formulas_name_the_input(formula, message):
    with pytest.raises(FormulaError, match=message):
        reduced_formula(formula)


def test_fractions_sum_to_one():
    fr = element_fractions("Fe2O3")
    assert fr == pytest.approx({"Fe": 0.4, "O": 0.6})


def test_remembered_fractions_are_a_new_dict_each_call():
    first = element_fractions("Hg0.7Cd0.3Te")
    first["Te"] = 99.0  # a caller editing its copy does not change what the next caller gets
    again = element_fractions("Hg0.7Cd0.3Te")
    assert again == pytest.approx({"Hg": 0.35, "Cd": 0.15, "Te": 0.5})
    assert again == element_fractions(parse_formula("Hg0.7Cd0.3Te"))  # a Composition is not remembered
    with pytest.raises(FormulaError):
        element_fractions("Xx2O")


def test_is_element_means_one_element_whatever_the_amount():
    assert is_element("Fe") and is_element("O2") and is_element("C60")
    assert not is_element("NaCl") and not is_element("Fe0.5Ni0.5")
    mask = element_mask(np.array(["Fe", "NaCl", "O2"], dtype=object))
    assert mask.dtype == bool and mask.tolist() == [True, False, True]
