"""Graph neural networks for DFT and experimental properties (multi-fidelity).

Two encoders map an entry to an embedding in one shared space:

* :class:`CrystalGraphEncoder`: continuous-filter (CGCNN-style, :class:`torch_geometric.nn.CGConv`)
  convolutions over a crystal graph (``x``, ``edge_index``, ``edge_attr`` as written by the
  featurize stage), mean-pooled over atoms.
* :class:`CompositionEncoder`: Roost-like weighted soft-attention message passing over the
  elements of a formula (nodes = elements, node weight = atomic fraction), pooled by
  fraction-weighted attention. It needs no structure, so it covers measured compositions.

:class:`MultiFidelityNet` adds two heads on the embedding: a DFT head predicting the DFT
value, and an experimental head that predicts the *correction* from a DFT reference to the
measurement. The reference is the known DFT value of the entry's composition when there is
one (with a known-flag as input) and the DFT head's own prediction otherwise.

Models here never choose a device, read files they were not given, or read global state;
:func:`save_model` / :func:`load_model` write and read init-args JSON + ``state_dict``
(loaded strictly with ``weights_only=True`` after a sha256 check).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn import functional as F
from torch_geometric.nn import CGConv, global_mean_pool
from torch_geometric.utils import scatter, to_dense_batch

from models._io import read_header, write_header, write_with

__all__ = [
    "CompositionEncoder",
    "CrystalGraphEncoder",
    "ModelFileError",
    "MultiFidelityNet",
    "NetOutput",
    "cgconv_factored",
    "load_model",
    "save_model",
]

MAX_Z = 103  # element vocabulary: H (1) .. Lr (103); index 0 is padding


class ModelFileError(ValueError):
    """A saved model that is missing, tampered with, or does not match its config."""


def _mlp(d_in: int, d_hidden: int, d_out: int, depth: int, dropout: float) -> nn.Sequential:
    layers: list[nn.Module] = []
    d = d_in
    for _ in range(depth - 1):
        layers += [nn.Linear(d, d_hidden), nn.SiLU()]
        if dropout > 0:
            layers.append(nn.Dropout(dropout))
        d = d_hidden
    layers.append(nn.Linear(d, d_out))
    return nn.Sequential(*layers)


def _reset(module: nn.Module) -> None:
    for m in module.modules():
        if m is not module and hasattr(m, "reset_parameters"):
            m.reset_parameters()


class CrystalGraphEncoder(nn.Module):
    r"""CGCNN-style encoder of a crystal graph.

    Each layer is :class:`~torch_geometric.nn.CGConv` with a residual connection,
    :math:`h_i \leftarrow h_i + \sum_j \sigma(W_f z_{ij} + b_f) \odot g(W_s z_{ij} + b_s)`,
    :math:`z_{ij} = [h_i, h_j, e_{ij}]`; graphs are mean-pooled over atoms. The layers keep
    PyG's ``CGConv`` parameters and state-dict keys, and are evaluated by :func:`cgconv_factored`
    (the same function with (2C + D) / D = 4.2x fewer multiply-adds per edge at the default widths;
    tests hold it to ``CGConv.forward``).

    Args:
        node_dim: width of ``x`` (node features from the featurizer).
        edge_dim: width of ``edge_attr`` (expanded distances).
        hidden: width of the node states (default 64).
        num_layers: number of convolutions (default 3).
        out_dim: embedding width (default 64).
    Shapes: ``x`` [n_atoms, node_dim], ``edge_index`` [2, n_edges], ``edge_attr``
    [n_edges, edge_dim], ``batch`` [n_atoms] -> [n_graphs, out_dim].

    """

    def __init__(self, *, node_dim: int, edge_dim: int, hidden: int = 64, num_layers: int = 3, out_dim: int = 64):
        super().__init__()
        if min(node_dim, edge_dim, hidden, num_layers, out_dim) < 1:
            raise ValueError("CrystalGraphEncoder: all sizes must be >= 1")
        self.node_dim, self.edge_dim, self.hidden = node_dim, edge_dim, hidden
        self.num_layers, self.out_dim = num_layers, out_dim
        self.embed = nn.Linear(node_dim, hidden)
        self.convs = nn.ModuleList(CGConv(hidden, dim=edge_dim, aggr="mean") for _ in range(num_layers))
        self.norms = nn.ModuleList(nn.LayerNorm(hidden) for _ in range(num_layers))
        self.out = nn.Linear(hidden, out_dim)

    def reset_parameters(self) -> None:
        _reset(self)

    def forward(self, x: Tensor, edge_index: Tensor, edge_attr: Tensor, batch: Tensor, num_graphs: int | None = None) -> Tensor:
        h = self.embed(x)
        for conv, norm in zip(self.convs, self.norms, strict=True):
            h = h + cgconv_factored(conv, norm(h), edge_index, edge_attr)
        return self.out(global_mean_pool(h, batch, size=num_graphs))

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(node_dim={self.node_dim}, edge_dim={self.edge_dim}, "
            f"hidden={self.hidden}, num_layers={self.num_layers}, out_dim={self.out_dim})"
        )


def cgconv_factored(conv: CGConv, x: Tensor, edge_index: Tensor, edge_attr: Tensor) -> Tensor:
    r"""``conv(x, edge_index, edge_attr)`` for a ``CGConv`` with ``aggr="mean"``, no batch norm, one node set.

    ``CGConv`` applies its two linear layers to every edge's :math:`z_{ij} = [x_i, x_j, e_{ij}]`
    (width :math:`2C + D`). They are linear, so :math:`W z_{ij} = W_a x_i + W_b x_j + W_e e_{ij}`:
    here the node parts are computed once per node and gathered, and only the :math:`D`-wide edge
    part is multiplied per edge (on the mirror's crystal graphs, about 30 edges per atom, that is most of the
    work of the layer and of its backward pass). Same parameters, same result up to float rounding.
    """
    if conv.bn is not None or conv.aggr != "mean" or conv.flow != "source_to_target":
        raise ValueError("cgconv_factored: only CGConv(aggr='mean', batch_norm=False) with the default flow")
    c = x.shape[1]
    w = torch.cat([conv.lin_f.weight, conv.lin_s.weight])  # [2C, 2C + D]: rows f then s, columns x_i, x_j, e
    b = None if conv.lin_f.bias is None else torch.cat([conv.lin_f.bias, conv.lin_s.bias])
    src, dst = edge_index[0], edge_index[1]  # x_j = x[src] sends to x_i = x[dst]
    nodes = F.linear(x, torch.cat([w[:, :c], w[:, c : 2 * c]]))  # [N, 4C]: the x_i part, then the x_j part
    z = F.linear(edge_attr, w[:, 2 * c :], b) + nodes[:, : 2 * c].index_select(0, dst)
    z += nodes[:, 2 * c :].index_select(0, src)
    msg = z[:, :c].sigmoid() * F.softplus(z[:, c:])
    return scatter(msg, dst, dim=0, dim_size=x.shape[0], reduce="mean") + x


class _WeightedAttention(nn.Module):
    r"""One Roost message-passing layer over the elements of each formula.

    For element :math:`i` with state :math:`h_i` and the elements :math:`j` of the same formula
    (itself included, so single-element formulas still update) with fractions :math:`w_j`,
    head :math:`k` computes the pair features
    :math:`q^k_{ij} = \mathrm{SiLU}(A^k h_i + B^k h_j + c^k)` (split into gate and message parts),
    :math:`a^k_{ij} = w_j e^{g^k \cdot q^k_{ij}} / \sum_l w_l e^{g^k \cdot q^k_{il}}` and
    :math:`h_i \leftarrow h_i + \frac1K \sum_k M^k \sum_j a^k_{ij} q^k_{ij} + m^k`.
    The pair MLP's first layer acts on the nodes (:math:`A h_i + B h_j` is the linear layer on
    :math:`[h_i, h_j]`) and its last layer after the attention sum (it is linear and the
    weights sum to one), so the per-pair work is one addition and one SiLU.
    """

    def __init__(self, hidden: int, heads: int):
        super().__init__()
        self.hidden, self.heads = hidden, heads
        self.self_proj = nn.Linear(hidden, heads * 2 * hidden)
        self.other_proj = nn.Linear(hidden, heads * 2 * hidden, bias=False)
        self.gate_w = nn.Parameter(torch.empty(heads, hidden))
        self.gate_b = nn.Parameter(torch.empty(heads))
        self.msg_w = nn.Parameter(torch.empty(heads, hidden, hidden))
        self.msg_b = nn.Parameter(torch.empty(heads, hidden))
        self.norm = nn.LayerNorm(hidden)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        self.self_proj.reset_parameters()
        self.other_proj.reset_parameters()
        self.norm.reset_parameters()
        bound = 1.0 / math.sqrt(self.hidden)
        for p in (self.gate_w, self.gate_b, self.msg_w, self.msg_b):
            nn.init.uniform_(p, -bound, bound)

    def forward(self, h: Tensor, log_w: Tensor, mask: Tensor) -> Tensor:
        # h [B, M, H], log_w [B, M] (-inf at padding), mask [B, M]
        b, m, hd = h.shape
        hn = self.norm(h)
        pre = self.self_proj(hn).unsqueeze(2) + self.other_proj(hn).unsqueeze(1)  # [B, M, M, K*2H]
        pre = nn.functional.silu(pre).view(b, m, m, self.heads, 2, hd)
        gate, msg = pre[..., 0, :], pre[..., 1, :]  # [B, M(i), M(j), K, H]
        logits = torch.einsum("bijkh,kh->bijk", gate, self.gate_w) + self.gate_b + log_w[:, None, :, None]
        att = torch.softmax(logits, dim=2)
        agg = torch.einsum("bijk,bijkh->bikh", att, msg)
        update = (torch.einsum("bikh,khd->bid", agg, self.msg_w) + self.msg_b.sum(0)) / self.heads
        return h + update * mask.unsqueeze(-1)


class CompositionEncoder(nn.Module):
    """Roost-like encoder of a composition: elements as nodes weighted by atomic fraction.

    Input is PyG-style flat: ``z`` (atomic numbers, long [n_nodes]), ``weight`` (atomic
    fractions, float [n_nodes], summing to 1 per formula) and ``batch`` ([n_nodes], formula
    index). Output [n_formulas, out_dim]. The result does not depend on the order of the
    elements within a formula (attention and pooling are sums over elements).

    Args:
        hidden: element-state width (default 64).
        num_layers: message-passing layers (default 3).
        heads: attention heads per layer (default 1).
        out_dim: embedding width (default 64).
        max_z: largest atomic number in the vocabulary (default 103).

    """

    def __init__(self, *, hidden: int = 64, num_layers: int = 3, heads: int = 1, out_dim: int = 64, max_z: int = MAX_Z):
        super().__init__()
        if min(hidden, num_layers, heads, out_dim, max_z) < 1:
            raise ValueError("CompositionEncoder: all sizes must be >= 1")
        self.hidden, self.num_layers, self.heads, self.out_dim, self.max_z = hidden, num_layers, heads, out_dim, max_z
        self.element = nn.Embedding(max_z + 1, hidden, padding_idx=0)
        # fraction enters the node state too, so the embedding knows "how much" not only "which"
        self.fraction = nn.Linear(1, hidden)
        self.layers = nn.ModuleList(_WeightedAttention(hidden, heads) for _ in range(num_layers))
        self.pool_gate = _mlp(hidden, hidden, 1, 2, 0.0)
        self.pool_value = _mlp(hidden, hidden, out_dim, 2, 0.0)

    def reset_parameters(self) -> None:
        _reset(self)

    def forward(self, z: Tensor, weight: Tensor, batch: Tensor, num_graphs: int | None = None) -> Tensor:
        if z.numel() and (int(z.min()) < 1 or int(z.max()) > self.max_z):
            raise ValueError(f"atomic numbers must lie in 1..{self.max_z}, got {int(z.min())}..{int(z.max())}")
        zd, mask = to_dense_batch(z, batch, fill_value=0, batch_size=num_graphs)
        wd, _ = to_dense_batch(weight, batch, fill_value=0.0, batch_size=num_graphs)
        log_w = torch.where(mask, torch.log(wd.clamp_min(1e-12)), torch.full_like(wd, -math.inf))
        h = self.element(zd) + self.fraction(wd.unsqueeze(-1))
        for layer in self.layers:
            h = layer(h, log_w, mask)
        att = torch.softmax(self.pool_gate(h).squeeze(-1) + log_w, dim=-1)
        return (att.unsqueeze(-1) * self.pool_value(h)).sum(dim=1)

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(hidden={self.hidden}, num_layers={self.num_layers}, "
            f"heads={self.heads}, out_dim={self.out_dim}, max_z={self.max_z})"
        )


@dataclass(frozen=True)
class NetOutput:
    """What :class:`MultiFidelityNet` returns for a batch of B entries.

    ``embedding`` [B, emb_dim]; ``dft`` [B] DFT-head prediction; ``experiment`` [B]
    experimental-head prediction (DFT reference + learned correction); ``reference`` [B] the
    DFT reference used (the known DFT value, or the DFT head's prediction where unknown).
    """

    embedding: Tensor
    dft: Tensor
    experiment: Tensor
    reference: Tensor


class MultiFidelityNet(nn.Module):
    r"""Composition (and optionally crystal-graph) encoder with a DFT and an experimental head.

    Embedding: :math:`e = f_{comp}(c) + [\text{has graph}]\, f_{graph}(G) \,\|\, \phi(d)`
    (``d`` optional descriptors, e.g. Magpie, standardised by the caller).
    Heads: :math:`\hat y_{dft} = h_{dft}(e)`;
    :math:`r = y_{dft}` if known else :math:`\hat y_{dft}` (gradient stopped);
    :math:`\hat y_{exp} = r + h_{exp}(e, r, [\text{known}])`.

    Args:
        comp_hidden, comp_layers, comp_heads: composition encoder sizes (64, 3, 1).
        emb_dim: embedding width shared by both encoders (default 64).
        graph_node_dim, graph_edge_dim: crystal-graph feature widths; 0 (default) disables
            the crystal encoder.
        graph_hidden, graph_layers: crystal encoder sizes (64, 3).
        descriptor_dim: width of the descriptor vector concatenated to the embedding; 0
            (default) disables it.
        head_hidden: hidden width of both heads (default 64).
        head_depth: layers per head (default 2).
        dropout: dropout in the heads (default 0.0).

    """

    def __init__(
        self,
        *,
        comp_hidden: int = 64,
        comp_layers: int = 3,
        comp_heads: int = 1,
        emb_dim: int = 64,
        graph_node_dim: int = 0,
        graph_edge_dim: int = 0,
        graph_hidden: int = 64,
        graph_layers: int = 3,
        descriptor_dim: int = 0,
        head_hidden: int = 64,
        head_depth: int = 2,
        dropout: float = 0.0,
    ):
        super().__init__()
        if descriptor_dim < 0 or graph_node_dim < 0 or graph_edge_dim < 0:
            raise ValueError("MultiFidelityNet: feature widths must be >= 0")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"MultiFidelityNet: dropout must be in [0, 1), got {dropout}")
        self.init_args: dict[str, Any] = {
            "comp_hidden": comp_hidden, "comp_layers": comp_layers, "comp_heads": comp_heads,
            "emb_dim": emb_dim, "graph_node_dim": graph_node_dim, "graph_edge_dim": graph_edge_dim,
            "graph_hidden": graph_hidden, "graph_layers": graph_layers,
            "descriptor_dim": descriptor_dim, "head_hidden": head_hidden, "head_depth": head_depth,
            "dropout": dropout,
        }
        self.composition = CompositionEncoder(hidden=comp_hidden, num_layers=comp_layers, heads=comp_heads, out_dim=emb_dim)
        self.crystal: CrystalGraphEncoder | None = None
        if graph_node_dim and graph_edge_dim:
            self.crystal = CrystalGraphEncoder(
                node_dim=graph_node_dim, edge_dim=graph_edge_dim, hidden=graph_hidden, num_layers=graph_layers, out_dim=emb_dim
            )
        self.descriptor: nn.Module | None = None
        d_emb = emb_dim
        if descriptor_dim:
            self.descriptor = _mlp(descriptor_dim, head_hidden, emb_dim, 2, dropout)
            # standardisation constants fitted by the trainer on training rows, saved with the weights
            self.register_buffer("desc_mean", torch.zeros(descriptor_dim))
            self.register_buffer("desc_std", torch.ones(descriptor_dim))
            d_emb = 2 * emb_dim
        self.embedding_dim = d_emb
        self.dft_head = _mlp(d_emb, head_hidden, 1, head_depth, dropout)
        self.exp_head = _mlp(d_emb + 2, head_hidden, 1, head_depth, dropout)

    def reset_parameters(self) -> None:
        _reset(self)

    def set_descriptor_scaler(self, mean: Tensor, std: Tensor) -> None:
        """Set the descriptor standardisation ``(d - mean) / std`` (fitted on training rows)."""
        if self.descriptor is None:
            raise ValueError("the model has no descriptor input")
        if mean.shape != self.desc_mean.shape or std.shape != self.desc_std.shape or bool((std <= 0).any()):
            raise ValueError("descriptor scaler: wrong shape or non-positive std")
        self.desc_mean.copy_(mean)
        self.desc_std.copy_(std)

    def embed(
        self,
        *,
        z: Tensor,
        weight: Tensor,
        batch: Tensor,
        num_entries: int,
        descriptors: Tensor | None = None,
        graph: Any | None = None,
        graph_rows: Tensor | None = None,
        composition_embedding: Tensor | None = None,
    ) -> Tensor:
        """Embedding [num_entries, embedding_dim].

        ``graph`` is a PyG ``Batch`` of crystal graphs for the entries at positions
        ``graph_rows`` (long [n_graphs]); the other entries use their composition only.
        ``composition_embedding`` [num_entries, emb_dim] replaces the composition encoder's
        output (cached when the encoder is frozen; with a frozen crystal-graph encoder too, it
        holds that encoder's output as well, and ``graph`` is not given).
        """
        if composition_embedding is not None:
            e = composition_embedding
        else:
            e = self.composition(z, weight, batch, num_graphs=num_entries)
        if graph is not None:
            if self.crystal is None:
                raise ValueError("crystal graphs given but the model was built without a crystal encoder")
            if graph_rows is None or graph_rows.numel() != graph.num_graphs:
                raise ValueError("graph_rows must give one entry position per crystal graph")
            g = self.crystal(graph.x, graph.edge_index, graph.edge_attr, graph.batch, num_graphs=graph.num_graphs)
            e = e.index_add(0, graph_rows, g)
        if self.descriptor is not None:
            if descriptors is None:
                raise ValueError(f"the model expects descriptors of width {self.init_args['descriptor_dim']}")
            e = torch.cat([e, self.descriptor((descriptors - self.desc_mean) / self.desc_std)], dim=-1)
        return e

    def heads(self, embedding: Tensor, dft_value: Tensor | None = None) -> NetOutput:
        """Apply both heads; ``dft_value`` [B] holds the known DFT value or NaN."""
        dft = self.dft_head(embedding).squeeze(-1)
        if dft_value is None:
            dft_value = torch.full_like(dft, math.nan)
        known = ~torch.isnan(dft_value)
        reference = torch.where(known, dft_value, dft.detach())
        inputs = torch.cat([embedding, reference.unsqueeze(-1), known.to(embedding.dtype).unsqueeze(-1)], dim=-1)
        experiment = reference + self.exp_head(inputs).squeeze(-1)
        return NetOutput(embedding=embedding, dft=dft, experiment=experiment, reference=reference)

    def forward(
        self,
        *,
        z: Tensor,
        weight: Tensor,
        batch: Tensor,
        num_entries: int,
        dft_value: Tensor | None = None,
        descriptors: Tensor | None = None,
        graph: Any | None = None,
        graph_rows: Tensor | None = None,
        composition_embedding: Tensor | None = None,
    ) -> NetOutput:
        e = self.embed(
            z=z, weight=weight, batch=batch, num_entries=num_entries, descriptors=descriptors, graph=graph,
            graph_rows=graph_rows, composition_embedding=composition_embedding,
        )
        return self.heads(e, dft_value)

    def __repr__(self) -> str:
        n = sum(p.numel() for p in self.parameters())
        return (
            f"{type(self).__name__}(composition={self.composition!r}, crystal={self.crystal!r}, "
            f"descriptor_dim={self.init_args['descriptor_dim']}, embedding_dim={self.embedding_dim}, "
            f"head_hidden={self.init_args['head_hidden']}, parameters={n})"
        )


_MODELS: dict[str, type[nn.Module]] = {"MultiFidelityNet": MultiFidelityNet}
_WEIGHTS = "weights.pt"
_CONFIG = "model.json"


def save_model(model: nn.Module, directory: Path | str, *, extra: dict[str, Any] | None = None) -> Path:
    """Write ``model.json`` (class, init args, sha256 of the weights, ``extra``) and ``weights.pt``."""
    directory = Path(directory)
    name = type(model).__name__
    if name not in _MODELS or not hasattr(model, "init_args"):
        raise TypeError(f"cannot save {name}: not a registered model with init_args")
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    write_with(directory / _WEIGHTS, lambda p: torch.save(state, p))
    write_header(directory / _CONFIG, cls=name, files=[_WEIGHTS], init_args=model.init_args, extra=extra or {})
    return directory


def load_model(directory: Path | str) -> tuple[nn.Module, dict[str, Any]]:
    """Rebuild a model saved by :func:`save_model`; returns ``(model, extra)``.

    The weights' sha256 must match the one recorded in ``model.json``; they are read with
    ``torch.load(weights_only=True)`` and loaded strictly.
    """
    directory = Path(directory)
    cfg_path = directory / _CONFIG
    meta = read_header(cfg_path, classes=tuple(_MODELS), required=[_WEIGHTS], error=ModelFileError)
    weights = directory / _WEIGHTS
    cls = _MODELS[meta["class"]]
    model = cls(**meta["init_args"])
    try:  # weights_only: a file that needs to run code to load is refused, never executed
        state = torch.load(weights, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises UnpicklingError, RuntimeError, EOFError...; re-raised, chained
        raise ModelFileError(f"model weights {weights} are not a plain tensor file: {str(exc).splitlines()[0][:200]}") from exc
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise ModelFileError(f"model weights {weights} do not fit {meta['class']}: {exc}") from exc
    model.eval()
    return model, meta.get("extra", {})
