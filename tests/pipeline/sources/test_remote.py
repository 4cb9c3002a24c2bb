"""matminer and Materials Project API sources, tested at their boundary with fakes.

The payloads in tests/fixtures are a few rows written by hand in the shape the libraries
return (matminer: DataFrames with Structure objects; mp-api: summary documents).
"""

import json
import sys

import pandas as pd
import pytest
from pymatgen.core import Lattice, Structure

from pipeline.errors import MatshiftError
from pipeline.fetch import fetch
from pipeline.params.fetch import FetchParams
from pipeline.sources.matminer_source import MatminerSource
from pipeline.sources.merge import merge_tables
from pipeline.sources.mp_api_source import MPApiSource
from tests.data import FIXTURES

KEY = "abcdefSECRETKEY1234567890"
STRUCTURES = {
    "SI": Structure(Lattice.cubic(5.468), ["Si"] * 8, Structure.from_spacegroup(
        "Fd-3m", Lattice.cubic(5.468), ["Si"], [[0, 0, 0]]).frac_coords),
    "NACL": Structure.from_spacegroup("Fm-3m", Lattice.cubic(5.64), ["Na", "Cl"], [[0, 0, 0], [0.5, 0.5, 0.5]]),
}


def fake_matminer_loader(name: str) -> pd.DataFrame:
    rows = json.loads((FIXTURES / "matminer_payloads.json").read_text())[name]
    frame = pd.DataFrame(rows)
    if "structure" in frame:
        frame["structure"] = [STRUCTURES[s].copy() for s in frame["structure"]]
    return frame


def test_matminer_source_yields_tables_that_merge():
    tables = list(MatminerSource(loader=fake_matminer_loader).tables())
    assert [t.name for t in tables] == [
        "matminer_flla", "matminer_dielectric_constant", "matminer_elastic_tensor_2015",
        "matminer_piezoelectric_tensor", "matminer_expt_gap_kingsbury", "matminer_expt_formation_enthalpy_kingsbury",
    ]
    assert all(len(t.sha256) == 64 for t in tables)
    result = merge_tables(tables, workers=1)
    dft = result.dft.set_index("material_id")
    assert dft.loc["mp-149", "formula"] == "Si" and dft.loc["mp-149", "nsites"] == 8
    assert dft.loc["mp-149", "band_gap_pbe"] == pytest.approx(0.61)
    assert dft.loc["mp-149", "e_above_hull"] == 0.0
    assert dft.loc["mp-22862", "source"] == "matminer_dielectric_constant,matminer_elastic_tensor_2015"
    # the piezo row states KCl for a NaCl structure: rejected, not merged
    (reason,) = result.rejected["reason"]
    assert reason == "stated formula KCl disagrees with structure NaCl"
    exp = result.experiment.set_index("exp_id")
    assert exp.loc["matminer_expt_gap_kingsbury:2", "value"] == 8.5
    assert exp.loc["matminer_expt_formation_enthalpy_kingsbury:1", "unit"] == "eV/atom"


def test_matminer_network_failure_is_a_clear_error():
    def offline(name):
        raise OSError("[Errno -3] Temporary failure in name resolution")

    with pytest.raises(MatshiftError, match=r"matminer dataset 'flla' could not be loaded \(OSError: .*name resolution\).*sources: \[mirror\]"):
        list(MatminerSource(loader=offline).tables())


class FakeSummary:
    def __init__(self, docs, calls):
        self.docs, self.calls = docs, calls

    def search(self, **query):
        self.calls.append(query)
        return iter(self.docs)


class FakeClient:
    def __init__(self, api_key, docs, calls):
        self.api_key = api_key
        self.materials = type("M", (), {"summary": FakeSummary(docs, calls)})()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def _docs():
    return json.loads((FIXTURES / "mp_api_summary.json").read_text())


def test_mp_api_source_passes_key_and_filters_and_parses_documents():
    calls, keys = [], []

    def factory(key):
        keys.append(key)
        return FakeClient(key, _docs(), calls)

    source = MPApiSource(api_key=KEY, elements=("Si", "Na"), max_e_above_hull=0.05, limit=2, client_factory=factory)
    (table,) = list(source.tables())
    assert keys == [KEY]
    assert calls[0]["elements"] == ["Si", "Na"] and calls[0]["energy_above_hull"] == (0.0, 0.05)
    assert "structure" in calls[0]["fields"]
    assert [r.material_id for r in table.rows] == ["mp-149", "mp-22862"]  # limit applied
    assert KEY not in repr(source)
    result = merge_tables([table], workers=1)
    dft = result.dft.set_index("material_id")
    assert dft.loc["mp-22862", "formula"] == "NaCl" and dft.loc["mp-22862", "band_gap_pbe"] == pytest.approx(5.003)
    assert dft.loc["mp-149", "nsites"] == 2


def test_mp_api_errors_name_the_problem_and_never_the_key(monkeypatch):
    with pytest.raises(MatshiftError, match="MP_API_KEY not set"):
        MPApiSource(api_key=None)

    def leaky(key):
        raise ConnectionError(f"401 Unauthorized for key {key}")

    with pytest.raises(MatshiftError, match="query failed") as exc:
        list(MPApiSource(api_key=KEY, client_factory=leaky).tables())
    assert KEY not in str(exc.value) and "***" in str(exc.value)
    assert exc.value.__cause__ is None

    monkeypatch.setitem(sys.modules, "mp_api", None)  # makes `import mp_api...` fail
    monkeypatch.setitem(sys.modules, "mp_api.client", None)
    with pytest.raises(MatshiftError, match="pip install mp-api"):
        list(MPApiSource(api_key=KEY).tables())


def test_fetch_stage_with_mp_api_keeps_the_key_out_of_outputs(tmp_path):
    config = FetchParams(sources=["mp_api"], out_dir=tmp_path / "raw", workers=1)
    injected = {"mp_api": {"client_factory": lambda key: FakeClient(key, _docs(), [])}}
    result = fetch(config, root=tmp_path, env={"MP_API_KEY": KEY}, injected=injected)
    assert sorted(result.dft["material_id"]) == ["mp-149", "mp-22862"]
    for path in (tmp_path / "raw").iterdir():
        assert KEY.encode() not in path.read_bytes(), path
    manifest = json.loads((tmp_path / "raw" / "manifest.json").read_text())
    assert manifest["sources"]["mp_api"]["rows_read"] == 3
    assert manifest["sources"]["mp_api"]["rows_rejected"] == 1  # mp-0000: negative gap
    assert manifest["input_fingerprints"] is None  # cannot be checked without a query
    with pytest.raises(MatshiftError, match="MP_API_KEY not set"):
        fetch(config, root=tmp_path, env={}, injected=injected)
