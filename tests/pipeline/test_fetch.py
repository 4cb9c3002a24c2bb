"""The fetch stage end to end on the real mirror (one shared run) and its CLI."""

import json
import logging
from pathlib import Path

import pandas as pd
import pytest
import yaml

from pipeline.cli import main
from pipeline.config import ConfigError, load_section
from pipeline.params.fetch import FetchParams
from pipeline.sources.mirror import ORIGINS
from tests.data import MIRROR

pytestmark = pytest.mark.skipif(not MIRROR.is_dir(), reason="offline mirror ../shared/datasets not present")

DFT_COLUMNS = [
    "material_id", "formula", "structure", "band_gap_pbe", "band_gap_hse", "band_gap_gllb_sc", "band_gap_scan",
    "formation_energy_per_atom", "e_above_hull", "nsites", "partial_occupancy", "source",
]


@pytest.fixture(scope="session")
def fetched(tmp_path_factory):
    """One full fetch of the mirror through the CLI (the slow part, shared)."""
    root = tmp_path_factory.mktemp("fetch")
    params = root / "params.yaml"
    params.write_text(yaml.safe_dump({"fetch": {"mirror": str(MIRROR), "out_dir": str(root / "raw"), "workers": 2}}))
    assert main(["fetch", "--params", str(params)]) == 0
    out = root / "raw"
    return {
        "params": params,
        "out": out,
        "dft": pd.read_parquet(out / "dft.parquet"),
        "experiment": pd.read_parquet(out / "experiment.parquet"),
        "metal_class": pd.read_parquet(out / "metal_class.parquet"),
        "rejected": pd.read_parquet(out / "rejected.parquet"),
        "manifest": json.loads((out / "manifest.json").read_text()),
    }


def test_dft_table_contract_and_counts(fetched):
    dft = fetched["dft"]
    assert list(dft.columns) == DFT_COLUMNS
    assert dft["material_id"].is_unique
    assert dft["material_id"].str.fullmatch(r"(mp|mvc)-\d+").all()
    with_structure = dft[dft["structure"].notna()]
    assert len(with_structure) == 6317  # the four matminer files' distinct mp-ids (mirror README)
    assert with_structure["band_gap_pbe"].notna().sum() >= 6200
    assert with_structure["formation_energy_per_atom"].notna().sum() >= 6200
    assert (with_structure["nsites"] > 0).all() and (dft.loc[dft["structure"].isna(), "nsites"] == 0).all()
    assert dft["formula"].notna().all()
    assert (dft["band_gap_pbe"].dropna() >= 0).all()
    nacl = dft.set_index("material_id").loc["mp-22862"]
    assert nacl["formula"] == "NaCl" and nacl["structure"] is not None
    assert json.loads(nacl["structure"])["@class"] == "Structure"


def test_composition_only_mp_ids_are_kept(fetched):
    dft = fetched["dft"].set_index("material_id")
    row = dft.loc["mp-11107"]  # from mp_non_metals only
    assert row["structure"] is None and row["formula"] == "Ac2O3"
    # megnet_gappbe (3.5224) comes before mp_non_metals (3.5226) in merge order; within tolerance
    assert row["band_gap_pbe"] == pytest.approx(3.5224)
    assert row["source"] == "megnet_gappbe,megnet_e_form,multifidelity_band_gaps,mp_non_metals_band_gap"


def test_experiment_table(fetched):
    exp = fetched["experiment"]
    assert list(exp.columns) == ["exp_id", "formula_raw", "formula", "property", "value", "unit", "source"]
    assert exp["exp_id"].is_unique
    counts = exp["property"].value_counts().to_dict()
    man = fetched["manifest"]["sources"]
    assert counts == {"band_gap": man["expt_gap_zhuo2018"]["rows_kept"],
                      "formation_enthalpy": man["expt_formation_enthalpy_ssub"]["rows_kept"]}
    assert 3000 < counts["band_gap"] <= 3344 and 1600 < counts["formation_enthalpy"] <= 1778
    assert set(zip(exp["property"], exp["unit"], strict=True)) == {("band_gap", "eV"), ("formation_enthalpy", "eV/atom")}
    alloy = exp[exp["formula_raw"] == "Hg0.7Cd0.3Te"]
    # two measurements of one alloy stay two rows
    assert list(alloy["formula"]) == ["Cd0.3Hg0.7Te"] * 2
    assert list(alloy["value"]) == [0.35, 0.27]


def test_metal_class_table_and_its_conflicts(fetched):
    metal = fetched["metal_class"]
    assert list(metal.columns) == ["exp_id", "formula_raw", "formula", "is_metal", "source"]
    assert len(metal) == 3612 and metal["exp_id"].is_unique
    assert metal["is_metal"].value_counts().to_dict() == {1: 2081, 0: 1531}  # the datasets README's file
    assert set(metal["source"]) == {"expt_is_metal"}
    assert "is_metal" not in set(fetched["experiment"]["property"])  # classes are not measurements
    summary = fetched["manifest"]["metal_class"]
    assert summary["rows"] == 3612 and summary["metals"] == 2081
    # labelled metal, but a 1.2 eV gap was measured for it: reported, never silently trusted
    assert summary["conflicts"]["labelled_metal_with_measured_gap"] == 1
    assert list(summary["conflicts"]["largest"]) == ["CoPbO3"]


def test_every_row_is_kept_or_rejected_per_source(fetched):
    man = fetched["manifest"]
    rejected = fetched["rejected"]
    assert list(rejected.columns) == ["source", "row", "id", "reason", "content"]
    assert set(man["sources"]) == {Path(rel).name.split(".")[0] for rel in ORIGINS}
    by_source = rejected["source"].value_counts().to_dict()
    for name, entry in man["sources"].items():
        assert entry["rows_read"] == entry["rows_kept"] + entry["rows_rejected"], name
        assert by_source.get(name, 0) == entry["rows_rejected"], name
        assert len(entry["sha256"]) == 64
        assert sum(entry["rejected_reasons"].values()) == entry["rows_rejected"]
    assert man["sources"]["flla_2015"]["rows_read"] == 3938
    assert man["sources"]["piezoelectric_tensor"]["rows_read"] == 941
    # (source, row) identifies a rejected row: nothing is rejected twice
    assert not rejected.duplicated(["source", "row"]).any()


def test_manifest_records_conflicts_and_unused_parts(fetched):
    man = fetched["manifest"]
    conflicts = man["dft"]["conflicts"]["label_conflicts"]
    assert conflicts["formation_energy_per_atom: flla_2015 vs megnet_e_form"]["count"] > 0
    assert any("ordered_exp" in n for n in man["sources"]["multifidelity_band_gaps"]["notes"])
    assert man["experiment"]["conflicts"]["band_gap"]["formulas_with_spread_above_tolerance"] > 0


def test_rerun_is_a_no_op(fetched, caplog):
    out = fetched["out"]
    before = {p.name: (p.stat().st_mtime_ns, p.read_bytes()) for p in out.iterdir()}
    with caplog.at_level(logging.INFO, logger="pipeline.fetch"):
        assert main(["fetch", "--params", str(fetched["params"])]) == 0
    assert "up to date" in caplog.text
    after = {p.name: (p.stat().st_mtime_ns, p.read_bytes()) for p in out.iterdir()}
    assert after == before


def test_changed_params_invalidate_the_cache(fetched, tmp_path):
    from pipeline.fetch import is_up_to_date, params_digest

    config = load_section(FetchParams, "fetch", fetched["params"])
    prints = fetched["manifest"]["input_fingerprints"]
    assert is_up_to_date(fetched["out"], prints, params_digest(config))
    other = FetchParams(mirror=config.mirror, out_dir=config.out_dir, workers=2, gap_conflict_tol=0.5)
    assert not is_up_to_date(fetched["out"], prints, params_digest(other))


def test_config_validation_names_the_key(tmp_path):
    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump({"fetch": {"workers": 0}}))
    with pytest.raises(ConfigError, match="fetch: workers must be >= 1"):
        load_section(FetchParams, "fetch", params)
    params.write_text(yaml.safe_dump({"fetch": {"sources": ["mirror", "nope"], "out_dir": str(tmp_path / "o")}}))
    assert main(["fetch", "--params", str(params)]) == 1
