"""The featurize stage on a small real input built from mirror rows."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from featurizers.composition import matminer_descriptors
from featurizers.crystal_graph import CrystalGraphFeaturizer, load_graphs
from pipeline import cli
from pipeline.config import ConfigError, load_section
from pipeline.params.featurize import FeaturizeParams
from tests.data import ROOT


@pytest.fixture(scope="module")
def features(raw_dir, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("features") / "features"
    params = tmp_path_factory.mktemp("params") / "params.yaml"
    params.write_text("featurize:\n  cutoff: 4.5\n  n_gaussians: 20\n  n_workers: 2\n  chunk_size: 4\n")
    code = cli.main(["featurize", "--params", str(params), "--raw-dir", str(raw_dir), "--out-dir", str(out)])
    assert code == 0
    return out


def test_outputs_exist(features):
    assert sorted(p.name for p in features.iterdir()) == [
        "descriptors.parquet", "failures.parquet", "graph_config.json", "graphs.pt", "index.parquet",
    ]


def test_graphs_match_direct_featurization(features, raw_dir):
    graphs = load_graphs(features / "graphs.pt")
    dft = pd.read_parquet(raw_dir / "dft.parquet")
    good = dft["material_id"].iloc[:12].tolist()
    assert sorted(graphs) == sorted(good)
    config = json.loads((features / "graph_config.json").read_text())
    assert config["cutoff"] == 4.5 and config["n_gaussians"] == 20
    rebuilt = CrystalGraphFeaturizer.from_config(config)
    for mid in good[:4]:
        s = dft.set_index("material_id").loc[mid, "structure"]
        direct = rebuilt.featurize(s, structure_id=mid)
        assert torch.equal(direct.edge_index, graphs[mid].edge_index)
        assert torch.allclose(direct.edge_attr, graphs[mid].edge_attr)
        assert graphs[mid].edge_attr.shape[1] == 20


def test_index_rows_and_columns(features, raw_dir):
    index = pd.read_parquet(features / "index.parquet")
    assert list(index.columns) == ["id", "domain", "formula", "has_graph", "spacegroup", "crystal_system"]
    assert len(index) == 14 + 4
    assert index["domain"].value_counts().to_dict() == {"dft": 14, "experiment": 4}
    by_id = index.set_index("id")
    assert not by_id.loc["mp-nostruct", "has_graph"] and by_id.loc["mp-nostruct", "spacegroup"] == 0
    assert not by_id.loc["mp-disordered", "has_graph"]
    assert int(index["has_graph"].sum()) == 12
    assert (index.loc[index["has_graph"], "spacegroup"] > 0).all()
    assert (index.loc[index["domain"] == "experiment", "crystal_system"] == "").all()
    assert index["spacegroup"].dtype == np.int64


def test_descriptors_one_row_per_formula_no_nan(features, raw_dir):
    desc = pd.read_parquet(features / "descriptors.parquet")
    dft = pd.read_parquet(raw_dir / "dft.parquet")
    expected = set(dft["formula"]) | {"Hg0.7Cd0.3Te", "CuBr"}
    assert set(desc["formula"]) == expected
    assert desc["formula"].is_unique
    assert np.isfinite(desc.drop(columns="formula").to_numpy()).all()
    ref = matminer_descriptors(desc["formula"].tolist()[:5])
    np.testing.assert_allclose(desc.iloc[:5, 1:].to_numpy(), ref.iloc[:, 1:].to_numpy(), rtol=1e-8, atol=1e-8)


def test_failures_recorded(features):
    failures = pd.read_parquet(features / "failures.parquet")
    assert list(failures.columns) == ["id", "formula", "step", "reason"]
    by_id = failures.set_index("id")
    assert by_id.loc["mp-disordered", "step"] == "parse"
    assert "partially occupied" in by_id.loc["mp-disordered", "reason"]
    assert by_id.loc["ssub:1", "step"] == "descriptor"
    assert by_id.loc["ssub:1", "formula"] == "Xx2"


def test_missing_input_is_a_clear_error(tmp_path, capsys):
    code = cli.main(["featurize", "--raw-dir", str(tmp_path), "--out-dir", str(tmp_path / "out")])
    assert code == 1
    assert "dft.parquet does not exist; run `matshift fetch` first" in capsys.readouterr().err


def test_config_validation(tmp_path):
    params = tmp_path / "params.yaml"
    params.write_text("featurize:\n  cutoff: -1\n")
    with pytest.raises(ConfigError, match="cutoff must be in"):
        load_section(FeaturizeParams, "featurize", params)
    params.write_text("featurize:\n  cutof: 5\n")
    with pytest.raises(ConfigError, match=r"featurize\.cutof: unknown key"):
        load_section(FeaturizeParams, "featurize", params)
    assert load_section(FeaturizeParams, "featurize", ROOT / "params.yaml").graph.cutoff == 5.0


def test_stage_and_library_share_one_list_of_choices():
    from featurizers import composition, elements, settings
    from pipeline.params import featurize as params

    # one source: the featurizers and the params schema read the same objects
    assert composition.DESCRIPTOR_SETS is settings.DESCRIPTOR_SETS is params.DESCRIPTOR_SETS
    assert elements.EMBEDDINGS is settings.EMBEDDINGS
