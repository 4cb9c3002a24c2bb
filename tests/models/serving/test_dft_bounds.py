"""A user's DFT value the property cannot take in its unit is refused, with the bounds and a unit hint."""

from types import SimpleNamespace

import pytest

from models.serving import Predictor


def _why(prop: str, value: float | None) -> str | None:
    return Predictor.bad_dft_value(SimpleNamespace(property=prop), SimpleNamespace(dft_value=value))


@pytest.mark.parametrize(("prop", "value", "message"), [
    ("band_gap", -0.2, "dft_value -0.2 is below 0, the lowest possible band gap"),
    ("band_gap", 8500.0, "dft_value 8500 is outside 0 to 40 eV, the range a DFT band gap can take: is it in another unit?"),
    # NaCl's formation enthalpy in kJ/mol per formula unit (it is -2.1 eV/atom)
    ("formation_enthalpy", -411.0, "dft_value -411 is outside -10 to 10 eV/atom"),
    ("formation_enthalpy", 10.5, "outside -10 to 10 eV/atom"),
])
def test_impossible_dft_values_are_refused_with_the_range(prop, value, message):
    assert message in _why(prop, value)


# the mirror's extremes (PBE gap 17.8 eV, HSE06 20.3; formation energies -4.52 to +2.34 eV/atom) are possible values
@pytest.mark.parametrize(("prop", "value"), [("band_gap", 0.0), ("band_gap", 17.8), ("band_gap", 20.3), ("band_gap", 40.0),
                                             ("formation_enthalpy", -4.52), ("formation_enthalpy", 2.34),
                                             ("formation_enthalpy", 0.0), ("band_gap", None)])
def test_possible_dft_values_pass(prop, value):
    assert _why(prop, value) is None

