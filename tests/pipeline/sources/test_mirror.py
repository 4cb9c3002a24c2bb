"""The mirror reader on the real files of ../shared/datasets, read in place."""

import csv
import gzip
import json
import shutil
import warnings

import pytest
import yaml

from models import sha256_file
from pipeline.cli import main
from pipeline.errors import MatshiftError, SourceChangedError
from pipeline.sources import get_source
from pipeline.sources.merge import merge_tables
from pipeline.sources.mirror import ORIGINS, PINS_PATH, MirrorSource, read_matminer_csv
from pipeline.sources.records import parse_structure
from tests.data import MIRROR

pytestmark = pytest.mark.skipif(not MIRROR.is_dir(), reason="offline mirror ../shared/datasets not present")


@pytest.fixture(scope="module")
def tables():
    return {t.name: t for t in MirrorSource(root=MIRROR).tables()}


def test_registry_resolves_names_and_lists_valid_ones():
    assert get_source("mirror") is MirrorSource
    with pytest.raises(MatshiftError, match=r"unknown source 'mirrror' \(valid sources: matminer, mirror, mp_api\)"):
        get_source("mirrror")


def test_pins_cover_every_documented_file_and_match_the_mirror():
    pins = json.loads(PINS_PATH.read_text())
    assert set(pins) == set(ORIGINS)
    assert MirrorSource(root=MIRROR).fingerprint() == pins


def test_every_file_is_read_with_its_documented_row_count(tables):
    read = {name: t.rows_read for name, t in tables.items()}
    assert read == {
        "flla_2015": 3938, "dielectric_constant": 1056, "elastic_tensor": 1181, "piezoelectric_tensor": 941,
        "megnet_gappbe": 69239, "megnet_e_form": 69239,
        "multifidelity_band_gaps": 52348 + 6030 + 2290 + 472 + 2703 + 278,
        "mp_non_metals_band_gap": 43921, "expt_gap_zhuo2018": 3344, "expt_formation_enthalpy_ssub": 1778,
        "expt_is_metal": 3612,
    }


def test_flla_row_has_dict_literal_formula_and_structure(tables):
    row = tables["flla_2015"].rows[0]
    assert row.material_id == "mp-10" and row.formula == "As1" and row.structure_fmt == "dict_literal"
    assert float(row.labels["e_above_hull"]) == pytest.approx(0.10740506)
    merged = merge_tables([_sub(tables["flla_2015"], 3)], workers=1)
    as_ = merged.dft.set_index("material_id").loc["mp-10"]
    assert (as_["formula"], as_["nsites"], as_["partial_occupancy"]) == ("As", 2, False)
    assert as_["formation_energy_per_atom"] == pytest.approx(0.10740506)


def test_dielectric_and_piezo_rows_drop_the_leading_index_field(tables):
    diel = tables["dielectric_constant"].rows[0]
    assert diel.material_id == "mp-441" and diel.labels == {"band_gap_pbe": "1.88"}
    assert (diel.structure_fmt, diel.fallback_fmt) == ("poscar", "cif")
    piezo = tables["piezoelectric_tensor"].rows[0]
    assert piezo.material_id == "mp-22925" and piezo.formula == "AgI" and piezo.fallback_fmt == "cif"
    merged = merge_tables([_sub(tables["dielectric_constant"], 2), _sub(tables["piezoelectric_tensor"], 2)], workers=1)
    dft = merged.dft.set_index("material_id")
    assert dft.loc["mp-441", "formula"] == "Rb2Te" and dft.loc["mp-441", "band_gap_pbe"] == pytest.approx(1.88)
    assert dft.loc["mp-22925", "formula"] == "AgI" and dft.loc["mp-22925", "nsites"] == 2
    assert len(merged.rejected) == 0


def test_malformed_piezo_rows_are_rejected_with_reasons(tmp_path):
    with gzip.open(MIRROR / "mp/piezoelectric_tensor.csv.gz", "rt", newline="") as fh:
        ref = fh.readline()
        reader = csv.reader(fh)
        header, good, second, third = next(reader), next(reader), next(reader), next(reader)
    shifted = ["7", *second[1:]]  # leading field no longer equals idx
    short = third[:-1]  # one field missing: the header's field count
    bad_meta = list(good)
    bad_meta[-1] = "mp-999999"  # material_id column disagrees with the meta literal
    path = tmp_path / "piezo.csv.gz"
    with gzip.open(path, "wt", newline="") as fh:
        fh.write(ref)
        w = csv.writer(fh)
        for row in (header, good, shifted, short, bad_meta):
            w.writerow(row)
    _, kept, rejected = read_matminer_csv(path, source="piezo")
    assert [r[0] for r in kept] == [1]
    assert kept[0][1]["material_id"] == "mp-22925" and kept[0][1]["formula"] == "AgI"
    reasons = {r.row: r.reason for r in rejected}
    # the header's width is wrong here: its fields would land in the wrong columns
    assert reasons[3] == "13 fields, expected 14 (header has 13)"
    assert reasons[2] == "extra leading field '7' differs from idx '1'"
    assert reasons[4] == "meta material_id 'mp-22925' differs from column 'mp-999999' (shifted fields?)"


def test_megnet_values_are_strings_and_multifidelity_experiment_is_rejected(tables):
    mg = tables["megnet_gappbe"].rows[2]
    assert (mg.material_id, mg.labels) == ("mp-1000", {"band_gap_pbe": "1.5930000000000002"})
    mf = tables["multifidelity_band_gaps"]
    assert len(mf.rejected) == 2703 + 278
    assert all("ICSD id" in r.reason for r in mf.rejected)
    assert any("ordered_exp (2703 entries) not used" in n for n in mf.notes)


def test_composition_only_and_experiment_rows(tables):
    nm = tables["mp_non_metals_band_gap"].rows[0]
    assert (nm.material_id, nm.formula, nm.labels) == ("mp-11107", "Ac2O3", {"band_gap_pbe": "3.5226"})
    merged = merge_tables([_sub(tables["mp_non_metals_band_gap"], 1),
                           _sub(tables["expt_gap_zhuo2018"], 4), _sub(tables["expt_formation_enthalpy_ssub"], 3)],
                          workers=1)
    row = merged.dft.iloc[0]
    assert row["structure"] is None and row["formula"] == "Ac2O3" and row["band_gap_pbe"] == pytest.approx(3.5226)
    exp = merged.experiment.set_index("exp_id")
    assert exp.loc["expt_gap_zhuo2018:1", "formula_raw"] == "Hg0.7Cd0.3Te"
    assert exp.loc["expt_gap_zhuo2018:1", "value"] == pytest.approx(0.35)
    assert exp.loc["expt_formation_enthalpy_ssub:1", "formula"] == "KAlSi2O6"
    assert exp.loc["expt_formation_enthalpy_ssub:1", "unit"] == "eV/atom"
    assert exp.loc["expt_formation_enthalpy_ssub:3", "value"] == pytest.approx(-2.56607665396)


def test_changed_file_names_file_and_both_hashes(tmp_path, capsys):
    root = tmp_path / "mirror"
    for rel in ORIGINS:
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(MIRROR / rel, root / rel)
    target = root / "experiment/expt_gap_zhuo2018.csv"
    target.chmod(0o644)
    text = target.read_text()
    assert text.splitlines()[4] == "4,Cu3SbSe4,0.4"
    target.write_text(text.replace("1,Hg0.7Cd0.3Te,0.35", "1,Hg0.7Cd0.3Te,0.36", 1).replace("4,Cu3SbSe4,", "4,Cu3SbXq4,", 1))
    new = sha256_file(target)
    old = json.loads(PINS_PATH.read_text())["experiment/expt_gap_zhuo2018.csv"]
    with pytest.raises(SourceChangedError, match=rf"expt_gap_zhuo2018.csv changed: pinned sha256 {old}, found {new}.*--accept-changed"):
        MirrorSource(root=root).fingerprint()

    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump({"fetch": {"mirror": str(root), "out_dir": str(tmp_path / "raw")}}))
    assert main(["fetch", "--params", str(params)]) == 1
    err = capsys.readouterr().err
    assert "expt_gap_zhuo2018.csv changed" in err and old in err and new in err
    assert not (tmp_path / "raw").exists()

    pins = tmp_path / "pins.json"
    shutil.copy(PINS_PATH, pins)
    source = MirrorSource(root=root, pins_path=pins, accept_changed=True)
    assert source.fingerprint()["experiment/expt_gap_zhuo2018.csv"] == new
    assert json.loads(pins.read_text())["experiment/expt_gap_zhuo2018.csv"] == new  # re-pinned
    MirrorSource(root=root, pins_path=pins).fingerprint()  # now accepted without the flag

    # the altered real rows: a changed value is read as is, an unparsable formula is rejected
    zhuo = next(t for t in source.tables() if t.name == "expt_gap_zhuo2018")
    result = merge_tables([zhuo], workers=1)
    exp = result.experiment.set_index("exp_id")
    assert exp.loc["expt_gap_zhuo2018:1", "value"] == pytest.approx(0.36)
    bad = result.rejected.set_index("row").loc[4]
    assert bad["id"] == "4" and bad["reason"].startswith("unparsable formula: ")
    assert "Cu3SbXq4" in bad["reason"] and bad["content"] == "4,Cu3SbXq4,0.4"
    assert result.counts["expt_gap_zhuo2018"].read == 3344


def test_missing_mirror_is_a_clear_error(tmp_path):
    with pytest.raises(MatshiftError, match=r"mirror directory .*nowhere does not exist"):
        MirrorSource(root=tmp_path / "nowhere").fingerprint()


def _sub(table, n):
    from dataclasses import replace

    return replace(table, rows=table.rows[:n], rejected=[])


@pytest.mark.parametrize("name", ["dielectric_constant", "elastic_tensor", "piezoelectric_tensor"])
def test_poscar_gives_the_same_structure_as_the_cif_reference(tables, name):
    from pymatgen.analysis.structure_matcher import StructureMatcher
    from pymatgen.core import Structure

    matcher = StructureMatcher(primitive_cell=False, scale=False, attempt_supercell=False,
                               ltol=1e-3, stol=1e-3, angle_tol=0.01)
    rows = tables[name].rows[::97]  # a spread of real rows
    assert len(rows) >= 9
    for row in rows:
        ours = Structure.from_dict(json.loads(parse_structure(row.structure, row.structure_fmt).json))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # pymatgen's CIF reader warns about stored rounding
            reference = Structure.from_str(row.fallback, fmt="cif")
        assert matcher.fit(ours, reference), row.material_id
