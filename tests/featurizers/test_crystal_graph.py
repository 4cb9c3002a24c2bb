"""Crystal graphs: hand-checkable neighbours, invariances, config round-trip, failures, storage."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import spglib
import torch
from pymatgen.core import Lattice, Structure
from pymatgen.core.operations import SymmOp

from featurizers.crystal_graph import (
    CRYSTAL_SYSTEMS,
    CrystalGraphFeaturizer,
    StructureError,
    canonicalise,
    crystal_system,
    gaussian_expansion,
    load_graphs,
    pack_graphs,
    save_graphs,
)
from featurizers.elements import element_embedding


def nacl() -> Structure:
    return Structure.from_spacegroup("Fm-3m", Lattice.cubic(5.64), ["Na", "Cl"], [[0, 0, 0], [0.5, 0.5, 0.5]])


def silicon() -> Structure:
    return Structure.from_spacegroup("Fd-3m", Lattice.cubic(5.431), ["Si"], [[0, 0, 0]])


def batio3() -> Structure:
    # tetragonal P4mm room-temperature phase (displacements along c)
    return Structure.from_spacegroup(
        "P4mm",
        Lattice.tetragonal(3.992, 4.036),
        ["Ba", "Ti", "O", "O"],
        [[0, 0, 0], [0.5, 0.5, 0.515], [0.5, 0.5, -0.025], [0.5, 0, 0.486]],
    )


def lifepo4() -> Structure:
    # olivine, Pnma, Wyckoff positions from Streltsov et al. (1993)
    return Structure.from_spacegroup(
        "Pnma",
        Lattice.orthorhombic(10.332, 6.010, 4.692),
        ["Li", "Fe", "P", "O", "O", "O"],
        [
            [0.0, 0.0, 0.0],
            [0.2822, 0.25, 0.9747],
            [0.0950, 0.25, 0.4182],
            [0.0972, 0.25, 0.7428],
            [0.4573, 0.25, 0.2060],
            [0.1661, 0.0464, 0.2847],
        ],
    )


CRYSTALS = {"NaCl": nacl, "Si": silicon, "BaTiO3": batio3, "LiFePO4": lifepo4}
EXPECTED = {  # (space group, primitive sites)
    "NaCl": (225, 2),
    "Si": (227, 2),
    "BaTiO3": (99, 5),
    "LiFePO4": (62, 28),
}


@pytest.fixture(scope="module")
def featurizer() -> CrystalGraphFeaturizer:
    return CrystalGraphFeaturizer(cutoff=5.0, on_error="raise")


def signature(g) -> tuple[list[int], np.ndarray, list[tuple[int, int, float]]]:
    """Node multiset, sorted edge distances, sorted (Z_j, Z_i, d) triples."""
    z = g.z.tolist()
    d = g.edge_dist.numpy().astype(float)
    src, dst = g.edge_index.numpy()
    triples = sorted((z[s], z[t], round(float(x), 5)) for s, t, x in zip(src, dst, d, strict=True))
    return sorted(z), np.sort(d), triples


def assert_same_graph(a, b) -> None:
    za, da, ta = signature(a)
    zb, db, tb = signature(b)
    assert za == zb
    assert len(da) == len(db)
    np.testing.assert_allclose(da, db, atol=1e-6, rtol=0)
    assert ta == tb
    assert a.spacegroup.item() == b.spacegroup.item()
    assert a.volume_per_atom.item() == pytest.approx(b.volume_per_atom.item(), rel=1e-6)


def rotated(s: Structure) -> Structure:
    op = SymmOp.from_axis_angle_and_translation([1, 2, 3], 37.0)
    out = s.copy()
    out.apply_operation(op)
    return out


def translated(s: Structure) -> Structure:
    out = s.copy()
    out.translate_sites(list(range(len(out))), [0.137, -0.21, 0.33], frac_coords=True)
    return out


def permuted(s: Structure) -> Structure:
    order = np.random.default_rng(0).permutation(len(s))
    return Structure.from_sites([s[i] for i in order])


def supercell(s: Structure) -> Structure:
    out = s.copy()
    out.make_supercell([2, 2, 1])
    return out


def nonstandard(s: Structure) -> Structure:
    out = s.copy()
    out.make_supercell([[1, 1, 0], [0, 1, 0], [0, 0, 1]])  # sheared cell, same lattice
    return out


@pytest.mark.parametrize("name", list(CRYSTALS))
@pytest.mark.parametrize("transform", [rotated, translated, permuted, supercell, nonstandard])
def test_graph_is_invariant(featurizer, name, transform):
    s = CRYSTALS[name]()
    base = featurizer.featurize(s, structure_id=name)
    other = featurizer.featurize(transform(s), structure_id=f"{name}-{transform.__name__}")
    assert_same_graph(base, other)
    assert other.num_sites.item() == EXPECTED[name][1]


@pytest.mark.parametrize("name", list(CRYSTALS))
def test_space_group_and_primitive_cell(featurizer, name):
    g = featurizer.featurize(CRYSTALS[name]())
    sg, n = EXPECTED[name]
    assert g.spacegroup.item() == sg
    assert g.num_nodes == n
    assert CRYSTAL_SYSTEMS[g.crystal_system.item()] in {225: "cubic", 227: "cubic", 99: "tetragonal", 62: "orthorhombic"}[sg]


@pytest.mark.parametrize("name", list(CRYSTALS))
def test_canonical_cell_equals_spglib_standardize_cell(name):
    s = CRYSTALS[name]()
    cell = canonicalise(s.lattice.matrix, s.frac_coords, np.array(s.atomic_numbers), symprec=0.01, angle_tolerance=5.0)
    ref_lat, _ref_pos, ref_num = spglib.standardize_cell(
        (s.lattice.matrix, s.frac_coords, s.atomic_numbers), to_primitive=True, symprec=0.01, angle_tolerance=5.0
    )
    np.testing.assert_allclose(cell.lattice, ref_lat, atol=1e-10)
    assert sorted(cell.numbers.tolist()) == sorted(ref_num.tolist())
    assert cell.note == ""


def test_rock_salt_has_six_chlorides_at_half_a(featurizer):
    a = 5.64
    g = featurizer.featurize(nacl())
    na = int((g.z == 11).nonzero()[0])
    into_na = g.edge_index[1] == na
    d = g.edge_dist[into_na]
    nearest = d < a / 2 + 0.01
    assert int(nearest.sum()) == 6
    assert d[nearest].numpy() == pytest.approx(np.full(6, a / 2), abs=1e-5)
    assert set(g.z[g.edge_index[0][into_na][nearest]].tolist()) == {17}
    # second shell: 12 Na at a/sqrt(2)
    second = (d > a / 2 + 0.01) & (d < a / math.sqrt(2) + 0.01)
    assert int(second.sum()) == 12
    assert set(g.z[g.edge_index[0][into_na][second]].tolist()) == {11}


def test_diamond_silicon_has_four_neighbours_at_a_sqrt3_over_4(featurizer):
    a = 5.431
    g = featurizer.featurize(silicon())
    for atom in range(g.num_nodes):
        d = g.edge_dist[g.edge_index[1] == atom]
        nearest = d < 2.5
        assert int(nearest.sum()) == 4
        assert d[nearest].numpy() == pytest.approx(np.full(4, a * math.sqrt(3) / 4), abs=1e-5)


def test_data_fields_and_features(featurizer):
    g = featurizer.featurize(batio3())
    table = element_embedding("megnet16")
    assert g.x.dtype == torch.float32 and g.x.shape == (5, 16)
    np.testing.assert_allclose(g.x.numpy(), table[g.z.numpy()].astype(np.float32))
    assert g.edge_attr.shape == (g.edge_index.shape[1], featurizer.n_gaussians)
    mu = np.linspace(0, 5.0, 40)
    d0 = float(g.edge_dist[0])
    expected = np.exp(-((d0 - mu) ** 2) / (2 * featurizer.gaussian_width**2))
    np.testing.assert_allclose(g.edge_attr[0].numpy(), expected, rtol=1e-5, atol=1e-7)
    assert float(g.edge_dist.max()) <= 5.0
    assert g.volume_per_atom.item() == pytest.approx(3.992**2 * 4.036 / 5, rel=1e-6)


def test_crystal_system_codes():
    assert [crystal_system(n) for n in (1, 2, 3, 15, 16, 74, 75, 142, 143, 167, 168, 194, 195, 230)] == [
        1, 1, 2, 2, 3, 3, 4, 4, 5, 5, 6, 6, 7, 7,
    ]
    assert crystal_system(0) == 0 and CRYSTAL_SYSTEMS[0] == ""


def test_config_round_trip(tmp_path):
    made = CrystalGraphFeaturizer(cutoff=4.0, n_gaussians=16, symprec=0.05, elements=["O", "Na", "Cl"])
    path = tmp_path / "graph_config.json"
    path.write_text(json.dumps(made.config()))
    rebuilt = CrystalGraphFeaturizer.from_config(json.loads(path.read_text()))
    assert rebuilt.config() == made.config()
    assert rebuilt.elements == ("O", "Na", "Cl")  # sorted by Z
    s = nacl()
    assert_same_graph(made.featurize(s), rebuilt.featurize(s))
    with pytest.raises(ValueError, match="unknown keys \\['colour'\\]"):
        CrystalGraphFeaturizer.from_config({**made.config(), "colour": "red"})
    with pytest.raises(ValueError, match="version"):
        CrystalGraphFeaturizer.from_config({**made.config(), "version": 99})


def test_constructor_is_keyword_only_and_validates():
    with pytest.raises(TypeError):
        CrystalGraphFeaturizer(5.0)  # type: ignore[misc]
    with pytest.raises(ValueError, match="cutoff"):
        CrystalGraphFeaturizer(cutoff=-1.0)
    with pytest.raises(ValueError, match="unknown embedding"):
        CrystalGraphFeaturizer(embedding="word2vec")
    with pytest.raises(ValueError, match="no vector for Og"):
        CrystalGraphFeaturizer(elements=["Og"])


def test_bad_structures_raise_with_id_or_are_recorded():
    strict = CrystalGraphFeaturizer(on_error="raise", elements=["Na", "Cl"])
    disordered = nacl().as_dict()
    disordered["sites"][0]["species"] = [{"element": "Na", "occu": 0.5}, {"element": "K", "occu": 0.5}]
    with pytest.raises(StructureError, match=r"structure 'mp-bad': parse failed: .*partially occupied"):
        strict.featurize(disordered, structure_id="mp-bad")
    with pytest.raises(StructureError, match=r"'mp-si'.*Si not in the vocabulary"):
        strict.featurize(silicon(), structure_id="mp-si")
    flat = nacl().as_dict()
    flat["lattice"]["matrix"][2] = [0.0, 0.0, 0.0]
    items = [("ok", nacl().as_dict()), ("bad", disordered), ("flat", flat), ("junk", "{not json")]
    with pytest.raises(StructureError, match="'bad'"):
        strict.featurize_many(items)
    lenient = CrystalGraphFeaturizer(on_error="record", elements=["Na", "Cl"])
    batch = lenient.featurize_many(items)
    assert list(batch.graphs) == ["ok"]
    assert [(f.id, f.step) for f in batch.failures] == [("bad", "parse"), ("flat", "parse"), ("junk", "parse")]
    assert "volume" in batch.failures[1].reason


def test_spglib_failure_falls_back_to_input_cell_with_note(featurizer):
    # two atoms 0.001 Å apart: spglib finds no dataset at this symprec
    lattice = np.eye(3) * 4.0
    frac = np.array([[0.0, 0.0, 0.0], [0.00025, 0.0, 0.0]])
    cell = canonicalise(lattice, frac, np.array([11, 11]), symprec=0.01, angle_tolerance=5.0)
    assert cell.spacegroup == 0
    assert "input cell kept" in cell.note
    assert len(cell.numbers) == 2


def test_dict_json_and_structure_inputs_agree(featurizer):
    s = lifepo4()
    a = featurizer.featurize(s)
    b = featurizer.featurize(s.as_dict())
    c = featurizer.featurize(json.dumps(s.as_dict()))
    for other in (b, c):
        assert torch.equal(a.z, other.z) and torch.equal(a.edge_index, other.edge_index)
        assert torch.equal(a.edge_dist, other.edge_dist)


def test_parallel_equals_serial_and_storage_round_trip(tmp_path, featurizer):
    items = [(name, make().as_dict()) for name, make in CRYSTALS.items()] * 2
    items = [(f"{sid}-{i}", s) for i, (sid, s) in enumerate(items)]
    serial = featurizer.featurize_many(items, n_workers=1)
    parallel = featurizer.featurize_many(items, n_workers=2, chunk_size=3)
    assert list(serial.graphs) == list(parallel.graphs)
    path = tmp_path / "graphs.pt"
    save_graphs(path, parallel.graphs)
    raw = torch.load(path, weights_only=True)
    assert raw["ids"] == [sid for sid, _ in items]
    loaded = load_graphs(path)
    assert list(loaded) == list(serial.graphs)
    for sid, g in serial.graphs.items():
        h = loaded[sid]
        for key in ("x", "z", "edge_index", "edge_attr", "edge_dist", "spacegroup", "crystal_system", "num_sites",
                    "volume_per_atom"):
            assert torch.equal(getattr(g, key), getattr(h, key)), (sid, key)
        assert h.num_nodes == g.num_nodes


def test_empty_graph_file_round_trips(tmp_path):
    save_graphs(tmp_path / "g.pt", {})
    assert load_graphs(tmp_path / "g.pt") == {}


def test_pack_arrays_equals_packing_data(tmp_path, featurizer):
    items = [(name, make()) for name, make in CRYSTALS.items()]
    arrays = featurizer.featurize_many(items, as_data=False).graphs
    datas = {sid: featurizer.to_data(a) for sid, a in arrays.items()}
    fast = featurizer.pack_arrays(arrays)
    slow = pack_graphs(datas)
    assert fast["ids"] == slow["ids"] == list(CRYSTALS)
    assert "edge_attr" not in fast  # expanded at load time
    for key, value in slow.items():
        if isinstance(value, torch.Tensor) and key != "edge_attr":
            assert value.dtype == fast[key].dtype, key
            assert torch.allclose(value.float(), fast[key].float(), atol=1e-7), key
    save_graphs(tmp_path / "g.pt", fast)
    loaded = load_graphs(tmp_path / "g.pt")
    for sid, g in datas.items():
        assert loaded[sid].edge_attr.dtype == torch.float32
        assert torch.equal(loaded[sid].edge_attr, g.edge_attr), sid  # one function expands both
    # a subset (unknown ids skipped) gives the same graphs as the full load
    first, *_, last = list(datas)
    some = load_graphs(tmp_path / "g.pt", ids=[last, "no-such-id", first])
    assert list(some) == [last, first]
    for sid, g in some.items():
        for key in loaded[sid].keys():  # noqa: SIM118 - iterating a Data yields (key, value) pairs
            a, b = g[key], loaded[sid][key]
            assert torch.equal(a, b) if isinstance(a, torch.Tensor) else a == b, (sid, key)


def test_gaussian_expansion_blocks_and_formula():
    rng = np.random.default_rng(3)
    d = rng.uniform(0.0, 5.0, 1001)
    mu = np.linspace(0.0, 5.0, 40)
    whole = gaussian_expansion(d, mu, 0.13, block=10**6)
    assert whole.dtype == np.float32 and whole.shape == (1001, 40)
    # the block size is a speed knob only: bit-identical results for ragged and tiny blocks
    for block in (1, 7, 256):
        assert np.array_equal(gaussian_expansion(d, mu, 0.13, block=block), whole)
    exact = np.exp(-((d[:, None] - mu[None, :]) ** 2) / (2 * 0.13**2))
    np.testing.assert_allclose(whole, exact, rtol=1e-4, atol=1e-6)  # float32 exponent
    assert gaussian_expansion(np.zeros(0), mu, 0.13).shape == (0, 40)


def test_fallback_note_reaches_the_batch():
    # two Na 0.001 Å apart: no symmetry dataset at symprec 0.01, graph built on the input cell
    s = Structure(Lattice.cubic(4.0), ["Na", "Na"], [[0, 0, 0], [0.00025, 0, 0]])
    batch = CrystalGraphFeaturizer(on_error="record").featurize_many([("odd", s), ("nacl", nacl())])
    assert sorted(batch.graphs) == ["nacl", "odd"]
    assert list(batch.notes) == ["odd"] and "input cell kept" in batch.notes["odd"]
    assert batch.graphs["odd"].spacegroup.item() == 0 and batch.graphs["odd"].crystal_system.item() == 0


def test_mirror_structures_parse_like_pymatgen():
    from pymatgen.io.vasp import Poscar

    from benchmarks.mirror import mp_structures, perovskites

    featurizer = CrystalGraphFeaturizer(on_error="raise")
    mp = list(mp_structures(limit=5).items())
    pv = list(perovskites(limit=5).items())
    for sid, d in mp + pv:
        lattice, frac, numbers = featurizer._cell(d, sid)
        ref = Structure.from_dict(d)
        np.testing.assert_allclose(lattice, ref.lattice.matrix)
        np.testing.assert_allclose(frac, ref.frac_coords)
        assert numbers.tolist() == list(ref.atomic_numbers)
    import io
    import zipfile

    from benchmarks.mirror import MIRROR

    with zipfile.ZipFile(MIRROR / "scale" / "perov5_heat_ref.json.zip") as zf:
        data = json.load(io.TextIOWrapper(zf.open(zf.namelist()[0]), encoding="utf-8"))
    split = sorted(data)[0]
    key, text = next(iter(data[split].items()))
    ref = Poscar.from_str(text.replace("\\n", "\n")).structure
    mine = Structure.from_dict(dict(pv)[f"perov-{key}"])
    np.testing.assert_allclose(mine.lattice.matrix, ref.lattice.matrix)
    np.testing.assert_allclose(mine.frac_coords, ref.frac_coords)
    assert list(mine.atomic_numbers) == list(ref.atomic_numbers)
