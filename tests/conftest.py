"""Pytest fixtures shared by several test folders (plain helpers and paths live in ``tests/data.py``).

* ``raw_dir`` (module scope): a ``data/raw`` directory with twelve Materials Project structures read
  from the mirror, one disordered copy, one entry without a structure and four measurements (one of
  an unknown element); the featurize stage and the engine tests featurize it.
"""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

from benchmarks.mirror import mp_structures
from tests.data import MIRROR


def formula_of(structure: dict) -> str:
    from pymatgen.core import Structure

    from featurizers.chemistry import reduced_formula

    return reduced_formula(Structure.from_dict(structure).composition)


@pytest.fixture(scope="module")
def raw_dir(tmp_path_factory) -> Path:
    raw = tmp_path_factory.mktemp("raw")
    structures = mp_structures(MIRROR, limit=12)
    rows = [
        {"material_id": mid, "formula": formula_of(s), "structure": json.dumps(s), "band_gap_pbe": 1.0}
        for mid, s in structures.items()
    ]
    disordered = json.loads(rows[0]["structure"])
    disordered["sites"][0]["species"] = [
        {"element": disordered["sites"][0]["species"][0]["element"], "occu": 0.5},
        {"element": "K", "occu": 0.5},
    ]
    rows.append({"material_id": "mp-disordered", "formula": rows[0]["formula"], "structure": json.dumps(disordered),
                 "band_gap_pbe": 2.0})
    rows.append({"material_id": "mp-nostruct", "formula": "GaAs", "structure": None, "band_gap_pbe": 0.5})
    pd.DataFrame(rows).to_parquet(raw / "dft.parquet", index=False)
    exp = pd.DataFrame(
        {
            "exp_id": ["zhuo:1", "zhuo:2", "zhuo:3", "ssub:1"],
            "formula_raw": ["Hg0.7Cd0.3Te", "CuBr", "CuBr", "Xx2"],
            "formula": ["Hg0.7Cd0.3Te", "CuBr", "CuBr", "Xx2"],
            "property": ["band_gap", "band_gap", "band_gap", "formation_enthalpy"],
            "value": [0.35, 3.08, 3.0, -1.0],
        }
    )
    exp.to_parquet(raw / "experiment.parquet", index=False)
    return raw
