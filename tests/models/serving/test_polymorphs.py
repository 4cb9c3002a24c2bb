"""Polymorphs: a user's structure matched to its DFT polymorph, and the window of polymorphs of a formula."""

import json

import numpy as np
import pandas as pd
import pytest
from pymatgen.core import Lattice, Structure

from models.properties import STABILITY, get_property
from models.serving.polymorphs import Polymorphs, fingerprint


def diamond() -> Structure:
    return Structure.from_spacegroup("Fd-3m", Lattice.cubic(3.567), ["C"], [[0, 0, 0]])


def graphite(a: float = 2.464, c: float = 6.711) -> Structure:
    return Structure.from_spacegroup("P6_3/mmc", Lattice.hexagonal(a, c), ["C", "C"],
                                     [[0, 0, 0.25], [1 / 3, 2 / 3, 0.25]])


def lonsdaleite() -> Structure:
    return Structure.from_spacegroup("P6_3/mmc", Lattice.hexagonal(2.52, 4.12), ["C"], [[1 / 3, 2 / 3, 0.0625]])


def carbon_dft() -> tuple[pd.DataFrame, pd.Series]:
    """DFT entries as ``read_dft`` returns them (band gaps), and the structures by material_id."""
    dft = pd.DataFrame({
        "material_id": ["mp-g", "mp-l", "mp-x", "mp-n", "mp-si"],
        "formula": ["C", "C", "C", "C", "Si"],
        "band_gap_pbe": [0.0, 3.3, 1.0, 2.0, 0.6],
        "formation_energy_per_atom": [0.0, 0.16, 0.5, np.nan, 0.0],
        "band_gap_hse": [0.0, 4.5, np.nan, np.nan, 1.2],
    })
    dft[STABILITY] = dft["formation_energy_per_atom"]
    structures = pd.Series({"mp-g": json.dumps(graphite().as_dict()), "mp-l": json.dumps(lonsdaleite().as_dict()),
                            "mp-si": json.dumps(Structure(Lattice.cubic(5.43), ["Si"], [[0, 0, 0]]).as_dict())})
    return dft, structures


def test_fingerprint_tells_sp3_from_sp2_carbon():
    vpa, cn = fingerprint(diamond())
    assert vpa == pytest.approx(3.567 ** 3 / 8) and cn == 4.0
    vpa_g, cn_g = fingerprint(graphite())
    assert cn_g == 3.0 and vpa_g > 1.5 * vpa  # graphite: three neighbours, half again the volume per atom
    assert fingerprint(lonsdaleite())[1] == 4.0


def test_structure_matched_exactly_or_to_the_nearest_polymorph():
    dft, structures = carbon_dft()
    poly = Polymorphs.from_dft(dft, get_property("band_gap"), extra=("band_gap_hse",), structures=structures)
    assert "C" in poly and "Si" not in poly  # one polymorph: nothing to choose
    strained = graphite(a=2.464 * 1.03, c=6.711 * 0.97)
    exact = poly.match(strained, "C")
    assert exact.exact and exact.material_id == "mp-g" and exact.row["dft_value"] == 0.0
    # no diamond among the entries: the 4-coordinated polymorph of the same density, not the most stable graphite
    near = poly.match(diamond(), "C")
    assert not near.exact and near.material_id == "mp-l" and near.distance < 0.5
    assert near.row["dft_value"] == 3.3 and near.row["band_gap_hse"] == 4.5  # its own other fidelities come along
    assert "nearest" in near.describe() and "mp-l" in near.describe()
    assert poly.match(diamond(), "BN") is None  # a formula without polymorphs


def test_window_ranks_by_formation_energy():
    dft, structures = carbon_dft()
    poly = Polymorphs.from_dft(dft, get_property("band_gap"), structures=structures)
    assert poly.window("C", 0.2)["material_id"].tolist() == ["mp-g", "mp-l"]  # mp-x too high, mp-n unranked
    assert poly.window("C", 0.1)["material_id"].tolist() == ["mp-g"]
    assert poly.window("C", 0.0).empty and poly.window("GaAs", 1.0).empty
    assert poly.window("C", 1.0)["material_id"].tolist() == ["mp-g", "mp-l", "mp-x"]


def test_structures_read_only_for_a_match_and_a_broken_one_skipped(tmp_path):
    dft, structures = carbon_dft()
    structures["mp-l"] = "{not json"
    asked = []

    def read(ids):
        asked.append(sorted(ids))
        return structures

    poly = Polymorphs.from_dft(dft, get_property("band_gap"), structures=read)
    poly.window("C", 0.2)
    assert asked == []  # the spread needs no structure
    near = poly.match(diamond(), "C")
    assert near.material_id == "mp-g" and not near.exact  # the unreadable lonsdaleite is left out
    poly.match(diamond(), "C")
    assert asked == [["mp-g", "mp-l", "mp-n", "mp-x"]]  # read once, for that formula's entries


def test_save_and_load_keep_values_and_structures(tmp_path):
    dft, structures = carbon_dft()
    poly = Polymorphs.from_dft(dft, get_property("band_gap"), extra=("band_gap_hse",), structures=structures)
    poly.save(tmp_path / "polymorphs.parquet")
    back = Polymorphs.load(tmp_path / "polymorphs.parquet")
    assert back.extra == ("band_gap_hse",)
    assert back.match(diamond(), "C").material_id == "mp-l"
    assert back.window("C", 0.2)["dft_value"].tolist() == [0.0, 3.3]
