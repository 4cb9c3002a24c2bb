import json

import numpy as np
import pandas as pd
import pytest
import torch
from torch_geometric.data import Batch, Data
from torch_geometric.nn import CGConv, global_mean_pool

from models.learners import EntryTable
from models.nets import (
    CompositionEncoder,
    CrystalGraphEncoder,
    ModelFileError,
    MultiFidelityNet,
    cgconv_factored,
    load_model,
    save_model,
)


def _flat(z_rows, w_rows):
    z = torch.tensor([v for r in z_rows for v in r])
    w = torch.tensor([v for r in w_rows for v in r], dtype=torch.float32)
    b = torch.tensor([i for i, r in enumerate(z_rows) for _ in r])
    return z, w, b


def test_composition_encoder_is_invariant_to_element_order():
    torch.manual_seed(0)
    enc = CompositionEncoder(hidden=16, num_layers=2, out_dim=8).eval()
    # Fe2O3 written two ways plus NaCl, in one batch
    z1, w1, b1 = _flat([[26, 8], [11, 17]], [[0.4, 0.6], [0.5, 0.5]])
    z2, w2, b2 = _flat([[8, 26], [17, 11]], [[0.6, 0.4], [0.5, 0.5]])
    out1, out2 = enc(z1, w1, b1), enc(z2, w2, b2)
    assert out1.shape == (2, 8)
    assert torch.allclose(out1, out2, atol=1e-6)
    # and it is not blind to the fractions
    z3, w3, b3 = _flat([[26, 8]], [[0.5, 0.5]])
    assert not torch.allclose(enc(z3, w3, b3)[0], out1[0], atol=1e-4)


def test_composition_encoder_rejects_unknown_elements():
    enc = CompositionEncoder(hidden=8, num_layers=1, out_dim=4)
    z, w, b = _flat([[0, 8]], [[0.5, 0.5]])
    with pytest.raises(ValueError, match=r"atomic numbers must lie in 1\.\.103"):
        enc(z, w, b)


def _graphs(n_graphs: int) -> Batch:
    g = torch.Generator().manual_seed(1)
    data = []
    for k in range(n_graphs):
        n = 2 + k
        ei = torch.tensor([[i, j] for i in range(n) for j in range(n) if i != j]).T
        data.append(Data(x=torch.randn(n, 5, generator=g), edge_index=ei, edge_attr=torch.rand(ei.shape[1], 7, generator=g)))
    return Batch.from_data_list(data)


def test_factored_cgconv_is_pyg_cgconv():
    # PyG's CGConv is the reference: same output and gradients, also for an atom without incoming edges
    torch.manual_seed(0)
    conv = CGConv(6, dim=7, aggr="mean")
    graphs = _graphs(3)
    keep = graphs.edge_index[1] != 0  # atom 0 receives nothing: its mean message is 0
    ei, ea = graphs.edge_index[:, keep], graphs.edge_attr[keep]
    x = torch.randn(graphs.num_nodes, 6, requires_grad=True)
    ref, ours = conv(x, ei, ea), cgconv_factored(conv, x, ei, ea)
    assert torch.allclose(ours, ref, atol=1e-5)
    assert torch.allclose(ours[0], x[0])
    params = [x, conv.lin_f.weight, conv.lin_s.weight, conv.lin_f.bias]
    for a, b in zip(torch.autograd.grad(ref.square().sum(), params), torch.autograd.grad(ours.square().sum(), params),
                    strict=True):
        assert torch.allclose(a, b, atol=1e-4)
    with pytest.raises(ValueError, match="only CGConv"):
        cgconv_factored(CGConv(6, dim=7, aggr="add"), x, ei, ea)


def test_crystal_graph_encoder_keeps_the_cgconv_layers():
    torch.manual_seed(0)
    enc = CrystalGraphEncoder(node_dim=5, edge_dim=7, hidden=8, num_layers=2, out_dim=4)
    graphs = _graphs(3)
    h = enc.embed(graphs.x)
    for conv, norm in zip(enc.convs, enc.norms, strict=True):
        h = h + conv(norm(h), graphs.edge_index, graphs.edge_attr)
    ref = enc.out(global_mean_pool(h, graphs.batch, size=3))
    assert torch.allclose(enc(graphs.x, graphs.edge_index, graphs.edge_attr, graphs.batch, num_graphs=3), ref, atol=1e-5)
    assert all(isinstance(c, CGConv) for c in enc.convs)  # saved models keep PyG's parameter names


def test_multifidelity_net_shapes_and_reference():
    torch.manual_seed(0)
    net = MultiFidelityNet(comp_hidden=16, comp_layers=1, emb_dim=8, graph_node_dim=5, graph_edge_dim=7,
                           graph_hidden=8, graph_layers=2, descriptor_dim=3, head_hidden=8)
    z, w, b = _flat([[26, 8], [11, 17], [14]], [[0.4, 0.6], [0.5, 0.5], [1.0]])
    graphs = _graphs(2)
    dft_value = torch.tensor([1.5, float("nan"), 0.6])
    out = net(z=z, weight=w, batch=b, num_entries=3, dft_value=dft_value, descriptors=torch.randn(3, 3),
              graph=graphs, graph_rows=torch.tensor([0, 2]))
    assert out.embedding.shape == (3, net.embedding_dim) == (3, 16)
    assert out.dft.shape == out.experiment.shape == out.reference.shape == (3,)
    # known DFT values are the reference, the unknown one falls back to the DFT head
    assert out.reference[0].item() == pytest.approx(1.5)
    assert out.reference[1].item() == pytest.approx(out.dft[1].item())
    assert "CompositionEncoder(hidden=16" in repr(net) and "CrystalGraphEncoder(node_dim=5" in repr(net)
    with pytest.raises(ValueError, match="descriptors of width 3"):
        net(z=z, weight=w, batch=b, num_entries=3)


def test_reset_parameters_reinitialises():
    net = MultiFidelityNet(comp_hidden=8, comp_layers=1, emb_dim=4, head_hidden=4)
    before = [p.detach().clone() for p in net.parameters()]
    net.reset_parameters()
    changed = sum(not torch.equal(a, p) for a, p in zip(before, net.parameters(), strict=True))
    assert changed >= len(before) - 2  # LayerNorm weights/biases reset to the same constants


def test_save_load_round_trip_and_tamper_check(tmp_path):
    torch.manual_seed(0)
    net = MultiFidelityNet(comp_hidden=8, comp_layers=1, emb_dim=4, head_hidden=4, descriptor_dim=2).eval()
    net.set_descriptor_scaler(torch.tensor([1.0, 2.0]), torch.tensor([3.0, 4.0]))
    table = EntryTable.build(
        experiment=pd.DataFrame({"formula": ["NaCl", "Fe2O3"], "value": [8.5, 2.2]}),
        descriptors=pd.DataFrame({"formula": ["NaCl", "Fe2O3"], "a": [0.1, 0.2], "b": [1.0, 3.0]}),
    )
    batch = table.batch(np.arange(2), torch.device("cpu"))
    save_model(net, tmp_path / "m", extra={"property": "band_gap"})
    loaded, extra = load_model(tmp_path / "m")
    assert extra == {"property": "band_gap"}
    assert torch.equal(loaded(**batch).experiment, net(**batch).experiment)
    meta = json.loads((tmp_path / "m" / "model.json").read_text())
    assert meta["init_args"]["descriptor_dim"] == 2 and len(meta["files"]["weights.pt"]) == 64
    weights = tmp_path / "m" / "weights.pt"
    raw = bytearray(weights.read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    weights.write_bytes(bytes(raw))
    with pytest.raises(ModelFileError, match="does not match the sha256"):
        load_model(tmp_path / "m")
    with pytest.raises(ModelFileError, match="no model config"):
        load_model(tmp_path / "missing")
