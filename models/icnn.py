r"""Neural optimal-transport maps: input-convex networks trained on the Kantorovich dual.

A map that extends to points never seen in training is the gradient of a convex potential
(Brenier 1991): for the squared Euclidean cost the optimal map from :math:`P` to :math:`Q` is
:math:`T = \nabla \varphi` with :math:`\varphi` convex. Following Makkuva, Taghvaei, Oh & Lee
(2020, ICML, "Optimal transport mapping via input convex neural networks") both the potential
:math:`f` and its convex conjugate's stand-in :math:`g` are input-convex neural networks (ICNN,
Amos, Xu & Kolter 2017) and solve the min-max problem

.. math::

    \min_{f \text{ convex}} \max_{g \text{ convex}}\;
    \mathbb{E}_{Y\sim Q}[f(Y)] + \mathbb{E}_{X\sim P}\big[\langle X, \nabla g(X)\rangle - f(\nabla g(X))\big].

For a fixed :math:`f` the inner maximum is reached at :math:`\nabla g = \nabla f^*`, so the
outer problem is the semi-dual :math:`\min_f \mathbb{E}_Q f + \mathbb{E}_P f^*` of
:math:`W_2^2(P, Q)` and :math:`T = \nabla g` pushes the source :math:`P` onto the target
:math:`Q`. Being the gradient of a convex function, :math:`T` is monotone:
:math:`\langle T(x) - T(y), x - y\rangle \ge 0`.

Convexity in :math:`x` holds by construction (:class:`ICNN`): the hidden-to-hidden and output
weights are non-negative (projected after every step, checked on load), the activations are
convex and non-decreasing, the input enters every layer through unconstrained affine
*passthrough* layers, and a convex quadratic :math:`\tfrac12\|Lx\|^2` (as in OTT-JAX's ICNN)
lets the network represent the affine maps between Gaussians exactly, starting from the
identity. A *condition* :math:`u` (e.g. a composition descriptor) enters a separate,
unconstrained path whose outputs shift the biases, gate the passthroughs and add a linear term
in :math:`x` (a partially input-convex network, Amos et al. 2017): the potential is convex in
:math:`x` for every fixed :math:`u`, so :math:`T(\cdot \mid u)` is a monotone map per condition.

Training works in standardised coordinates: the source and target are centred by their own
(weighted) means and divided by one common scale. The quadratic-cost OT map commutes with
translations and isotropic scalings, so :math:`T(x) = \mu_t + s\,\nabla g((x-\mu_s)/s)` is still
the OT map in the original units.

Library code: no files read unless given, no params, no device choice (float32/float64 on the
CPU unless the caller moves nothing; the maps are small).
"""

from __future__ import annotations

import hashlib
import json
import math
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn
from torch.nn import functional as F

from pipeline.io import write_text, write_with

__all__ = [
    "ACTIVATIONS",
    "ICNN",
    "DualConfig",
    "MapFileError",
    "NeuralTransportMap",
    "fit_dual",
    "load_map",
    "save_map",
]

MAP_FORMAT_VERSION = 1
_WEIGHTS = "map.pt"
_CONFIG = "map.json"


class MapFileError(ValueError):
    """A saved neural map that is missing, tampered with, or not convex."""


def _leaky(x: Tensor) -> Tensor:
    return F.leaky_relu(x, 0.2)


# convex and non-decreasing: composition with a convex argument keeps convexity
ACTIVATIONS = {"softplus": F.softplus, "celu": F.celu, "leaky_relu": _leaky}


class ICNN(nn.Module):
    r"""Input-convex network :math:`g(x \mid u)`, convex in ``x`` for every condition ``u``.

    Layers (``K = len(hidden)``, :math:`\sigma` convex non-decreasing):

    .. math::

        z_1 &= \sigma(A_0 x \odot \gamma_0(u) + \beta_0(u)),\\
        z_{k+1} &= \sigma(W_k z_k + A_k x \odot \gamma_k(u) + \beta_k(u)),\quad W_k \ge 0,\\
        g &= w^\top z_K + \alpha(u)^\top x + \tfrac12 \|L x\|^2,\quad w \ge 0,

    with :math:`\gamma_k, \beta_k, \alpha` affine in the condition features :math:`v(u)` of an
    unconstrained MLP (constants when ``cond_dim = 0``, :math:`\gamma \equiv 1`).

    Args:
        dim: input dimension ``d`` (``x`` is ``(n, d)``).
        hidden: widths of the convex layers (default ``(64, 64)``).
        cond_dim: condition dimension (0 = plain ICNN; ``u`` is ``(n, cond_dim)``).
        cond_hidden: width of the condition path (default 32).
        activation: ``softplus`` (default, smooth map), ``celu`` or ``leaky_relu``.
        quadratic: add :math:`\tfrac12\|Lx\|^2` with ``L`` initialised to the identity.
    """

    def __init__(
        self,
        dim: int,
        *,
        hidden: Sequence[int] = (64, 64),
        cond_dim: int = 0,
        cond_hidden: int = 32,
        activation: str = "softplus",
        quadratic: bool = True,
    ) -> None:
        super().__init__()
        if dim < 1 or cond_dim < 0 or not hidden or min(hidden) < 1 or cond_hidden < 1:
            raise ValueError(f"ICNN needs dim >= 1, cond_dim >= 0 and positive widths; got dim={dim}, "
                             f"hidden={tuple(hidden)}, cond_dim={cond_dim}, cond_hidden={cond_hidden}")
        if activation not in ACTIVATIONS:
            raise ValueError(f"unknown activation {activation!r}; valid: {', '.join(sorted(ACTIVATIONS))}")
        self.init_args = {"dim": dim, "hidden": list(hidden), "cond_dim": cond_dim, "cond_hidden": cond_hidden,
                          "activation": activation, "quadratic": quadratic}
        self.dim, self.cond_dim, self.activation = dim, cond_dim, activation
        self._act = ACTIVATIONS[activation]
        widths = list(hidden)
        self.passthrough = nn.ModuleList(nn.Linear(dim, w, bias=False) for w in widths)
        self.hidden_weights = nn.ParameterList(
            nn.Parameter(torch.empty(w_out, w_in)) for w_in, w_out in zip(widths[:-1], widths[1:], strict=True)
        )
        self.out_weight = nn.Parameter(torch.empty(widths[-1]))
        if cond_dim:
            self.cond_net = nn.Sequential(nn.Linear(cond_dim, cond_hidden), nn.SiLU(),
                                          nn.Linear(cond_hidden, cond_hidden), nn.SiLU())
            self.bias = nn.ModuleList(nn.Linear(cond_hidden, w) for w in widths)
            self.gate = nn.ModuleList(nn.Linear(cond_hidden, w) for w in widths)
            self.linear = nn.Linear(cond_hidden, dim)
        else:
            self.bias = nn.ParameterList(nn.Parameter(torch.empty(w)) for w in widths)
            self.linear = nn.Parameter(torch.empty(dim))
        self.quad = nn.Parameter(torch.empty(dim, dim)) if quadratic else None
        self.reset_parameters()

    def reset_parameters(self) -> None:
        for lin in self.passthrough:
            nn.init.normal_(lin.weight, std=1.0 / math.sqrt(self.dim))
        for w in self.hidden_weights:
            # small non-negative start: the convex path begins close to a sum of ridge functions
            nn.init.uniform_(w, 0.0, 1.0 / w.shape[1])
        nn.init.uniform_(self.out_weight, 0.0, 1.0 / self.out_weight.numel())
        if self.cond_dim:
            for mod in self.cond_net:
                if isinstance(mod, nn.Linear):
                    mod.reset_parameters()
            for lin in self.bias:
                lin.reset_parameters()
            for lin in self.gate:  # gamma(u) starts at 1: the condition first acts through biases
                nn.init.zeros_(lin.weight)
                nn.init.ones_(lin.bias)
            nn.init.zeros_(self.linear.weight)
            nn.init.zeros_(self.linear.bias)
        else:
            for b in self.bias:
                nn.init.uniform_(b, -1.0, 1.0)
            nn.init.zeros_(self.linear)
        if self.quad is not None:
            with torch.no_grad():
                self.quad.copy_(torch.eye(self.dim))

    def convex_parameters(self) -> list[Tensor]:
        """The weights that must stay non-negative for convexity in ``x``."""
        return [*self.hidden_weights, self.out_weight]

    @torch.no_grad()
    def project(self) -> None:
        """Clamp the hidden-path weights at 0 (called after every optimiser step)."""
        for w in self.convex_parameters():
            w.clamp_(min=0.0)

    def min_convex_weight(self) -> float:
        """Most negative hidden-path weight (>= 0 for a convex network)."""
        return min(float(w.min()) for w in self.convex_parameters())

    def forward(self, x: Tensor, cond: Tensor | None = None) -> Tensor:
        """Potential values, shape ``(n,)`` for ``x`` of shape ``(n, dim)``."""
        if self.cond_dim:
            if cond is None or cond.shape != (x.shape[0], self.cond_dim):
                raise ValueError(f"ICNN with cond_dim={self.cond_dim} needs cond of shape "
                                 f"({x.shape[0]}, {self.cond_dim}), got {None if cond is None else tuple(cond.shape)}")
            v = self.cond_net(cond)
            betas = [lin(v) for lin in self.bias]
            gammas = [lin(v) for lin in self.gate]
            alpha = self.linear(v)
        else:
            betas = list(self.bias)
            gammas = [None] * len(betas)
            alpha = self.linear
        z = None
        for k, (pas, beta, gamma) in enumerate(zip(self.passthrough, betas, gammas, strict=True)):
            pre = pas(x)
            if gamma is not None:
                pre = pre * gamma
            pre = pre + beta
            if k > 0:
                pre = pre + z @ self.hidden_weights[k - 1].T
            z = self._act(pre)
        out = z @ self.out_weight + (x * alpha).sum(dim=-1)
        if self.quad is not None:
            out = out + 0.5 * (x @ self.quad.T).pow(2).sum(dim=-1)
        return out

    def transport(self, x: Tensor, cond: Tensor | None = None, *, create_graph: bool = False) -> Tensor:
        """:math:`\\nabla_x g(x \\mid u)`, shape ``(n, dim)``."""
        with torch.enable_grad():
            x = x if x.requires_grad else x.detach().requires_grad_(True)
            out = self(x, cond)
            (grad,) = torch.autograd.grad(out.sum(), x, create_graph=create_graph)
        return grad

    def extra_repr(self) -> str:
        return (f"dim={self.dim}, hidden={self.init_args['hidden']}, cond_dim={self.cond_dim}, "
                f"activation={self.activation!r}, quadratic={self.quad is not None}")


@dataclass(frozen=True)
class DualConfig:
    """Min-max training of the pair ``(f, g)``; defaults documented beside each field."""

    hidden: tuple[int, ...] = (64, 64)  # convex-layer widths of f and g
    cond_hidden: int = 32  # condition-path width (conditioned maps)
    activation: str = "softplus"
    quadratic: bool = True
    iterations: int = 1000  # outer (f) steps
    inner_steps: int = 5  # g steps per f step (the inner maximisation)
    batch_size: int = 256
    lr: float = 1e-3
    seed: int = 0
    dtype: str = "float32"  # float32 or float64

    def __post_init__(self) -> None:
        if self.iterations < 1 or self.inner_steps < 1 or self.batch_size < 2:
            raise ValueError("iterations and inner_steps must be >= 1 and batch_size >= 2")
        if not self.lr > 0:
            raise ValueError(f"lr must be > 0, got {self.lr}")
        if self.activation not in ACTIVATIONS:
            raise ValueError(f"unknown activation {self.activation!r}; valid: {', '.join(sorted(ACTIVATIONS))}")
        if self.dtype not in ("float32", "float64"):
            raise ValueError(f"dtype must be float32 or float64, got {self.dtype!r}")


@dataclass
class NeuralTransportMap:
    """A fitted map :math:`T(x \\mid u) = \\mu_t + s\\,\\nabla g((x - \\mu_s)/s \\mid u)`.

    ``g`` is the trained :class:`ICNN`; ``mu_s``, ``mu_t`` (d,) and ``scale`` the
    standardisation; conditions are passed already encoded (see the caller's encoder).
    ``history`` holds the dual objective per logged step.
    """

    g: ICNN
    mu_s: np.ndarray
    mu_t: np.ndarray
    scale: float
    history: list[dict[str, float]] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def dim(self) -> int:
        return self.g.dim

    def __call__(self, x: np.ndarray, cond: np.ndarray | None = None, *, batch: int = 8192) -> np.ndarray:
        """Transport ``x`` (n, d) (with conditions ``cond`` (n, k)); returns (n, d) float64."""
        x = np.asarray(x, dtype=np.float64)
        if x.ndim != 2 or x.shape[1] != self.dim:
            raise ValueError(f"expected points of shape (n, {self.dim}), got {x.shape}")
        if not np.all(np.isfinite(x)) or (cond is not None and not np.all(np.isfinite(cond))):
            raise ValueError("cannot transport non-finite points or conditions")
        dtype = next(self.g.parameters()).dtype
        out = np.empty_like(x)
        for lo in range(0, x.shape[0], batch):
            xb = torch.as_tensor((x[lo:lo + batch] - self.mu_s) / self.scale, dtype=dtype)
            cb = None if cond is None else torch.as_tensor(cond[lo:lo + batch], dtype=dtype)
            out[lo:lo + batch] = self.g.transport(xb, cb).detach().double().numpy()
        return self.mu_t + self.scale * out

    def potential(self, x: np.ndarray, cond: np.ndarray | None = None) -> np.ndarray:
        """The convex potential ``g`` at the standardised points (for convexity checks)."""
        dtype = next(self.g.parameters()).dtype
        xb = torch.as_tensor((np.asarray(x, float) - self.mu_s) / self.scale, dtype=dtype)
        cb = None if cond is None else torch.as_tensor(cond, dtype=dtype)
        with torch.no_grad():
            return self.g(xb, cb).double().numpy()


def _weighted_moments(x: np.ndarray, w: np.ndarray) -> tuple[np.ndarray, float]:
    mu = w @ x
    var = float(w @ ((x - mu) ** 2).sum(axis=1))
    return mu, var


def _weights(w: np.ndarray | None, n: int, name: str) -> np.ndarray:
    if w is None:
        return np.full(n, 1.0 / n)
    w = np.asarray(w, dtype=np.float64)
    if w.shape != (n,) or not np.all(np.isfinite(w)) or np.any(w < 0) or w.sum() <= 0:
        raise ValueError(f"{name} must be {n} finite non-negative weights with a positive sum")
    return w / w.sum()


def fit_dual(
    source: np.ndarray,
    target: np.ndarray,
    *,
    config: DualConfig | None = None,
    source_cond: np.ndarray | None = None,
    target_cond: np.ndarray | None = None,
    source_weights: np.ndarray | None = None,
    target_weights: np.ndarray | None = None,
) -> NeuralTransportMap:
    """Train ``(f, g)`` on the min-max dual (module docstring) and return the map ``grad g``.

    ``source`` (n, d) and ``target`` (m, d) are samples (rows weighted by the optional
    weights, minibatches are drawn in proportion to them); with conditions, ``source_cond``
    (n, k) and ``target_cond`` (m, k) are the condition of each row, and the map learned is the
    conditional one (the dual objective pairs each target sample with its own condition in
    ``f`` and each source sample with its own in ``g`` and ``f``).
    """
    cfg = config or DualConfig()
    xs = np.asarray(source, dtype=np.float64)
    xt = np.asarray(target, dtype=np.float64)
    if xs.ndim != 2 or xt.ndim != 2 or xs.shape[1] != xt.shape[1] or len(xs) < 2 or len(xt) < 2:
        raise ValueError(f"source and target must be (n, d) and (m, d) with n, m >= 2; got {xs.shape}, {xt.shape}")
    if not (np.all(np.isfinite(xs)) and np.all(np.isfinite(xt))):
        raise ValueError("source and target samples must be finite")
    conditioned = source_cond is not None or target_cond is not None
    if conditioned:
        if source_cond is None or target_cond is None:
            raise ValueError("give conditions for both source and target, or for neither")
        cs = np.asarray(source_cond, dtype=np.float64)
        ct = np.asarray(target_cond, dtype=np.float64)
        if cs.shape[0] != len(xs) or ct.shape[0] != len(xt) or cs.ndim != 2 or cs.shape[1] != ct.shape[1]:
            raise ValueError(f"conditions must be (n, k) and (m, k) matching the samples; got {cs.shape}, {ct.shape}")
        if not (np.all(np.isfinite(cs)) and np.all(np.isfinite(ct))):
            raise ValueError("conditions must be finite")
    ws = _weights(source_weights, len(xs), "source_weights")
    wt = _weights(target_weights, len(xt), "target_weights")
    mu_s, var_s = _weighted_moments(xs, ws)
    mu_t, var_t = _weighted_moments(xt, wt)
    d = xs.shape[1]
    scale = math.sqrt(max(0.5 * (var_s + var_t) / d, 1e-24))
    dtype = torch.float64 if cfg.dtype == "float64" else torch.float32
    t0 = time.perf_counter()
    gen = torch.Generator().manual_seed(cfg.seed)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.seed)
        k = cs.shape[1] if conditioned else 0
        kw = {"hidden": cfg.hidden, "cond_dim": k, "cond_hidden": cfg.cond_hidden,
              "activation": cfg.activation, "quadratic": cfg.quadratic}
        f = ICNN(d, **kw).to(dtype)
        g = ICNN(d, **kw).to(dtype)
    Xs = torch.as_tensor((xs - mu_s) / scale, dtype=dtype)
    Xt = torch.as_tensor((xt - mu_t) / scale, dtype=dtype)
    Cs = torch.as_tensor(cs, dtype=dtype) if conditioned else None
    Ct = torch.as_tensor(ct, dtype=dtype) if conditioned else None
    Ws = torch.as_tensor(ws)
    Wt = torch.as_tensor(wt)
    # Adam with beta1 = 0.5 as in Makkuva et al.: momentum destabilises min-max games
    opt_f = torch.optim.Adam(f.parameters(), lr=cfg.lr, betas=(0.5, 0.9))
    opt_g = torch.optim.Adam(g.parameters(), lr=cfg.lr, betas=(0.5, 0.9))
    history: list[dict[str, float]] = []
    bs = cfg.batch_size

    def draw(w: Tensor) -> Tensor:
        return torch.multinomial(w, bs, replacement=True, generator=gen)

    log_every = max(cfg.iterations // 20, 1)
    for it in range(cfg.iterations):
        for _ in range(cfg.inner_steps):
            i = draw(Ws)
            x = Xs[i].requires_grad_(True)
            c = Cs[i] if conditioned else None
            tx = g.transport(x, c, create_graph=True)
            # maximise <x, grad g(x)> - f(grad g(x)) over g
            loss_g = (f(tx, c) - (x * tx).sum(dim=1)).mean()
            opt_g.zero_grad(set_to_none=True)
            loss_g.backward()
            opt_g.step()
            g.project()
        i, j = draw(Ws), draw(Wt)
        c = Cs[i] if conditioned else None
        tx = g.transport(Xs[i], c).detach()
        loss_f = f(Xt[j], Ct[j] if conditioned else None).mean() - f(tx, c).mean()
        opt_f.zero_grad(set_to_none=True)
        loss_f.backward()
        opt_f.step()
        f.project()
        lf, lg = float(loss_f.detach()), float(loss_g.detach())
        if not (math.isfinite(lf) and math.isfinite(lg)):
            raise FloatingPointError(f"neural OT training diverged at iteration {it} (try a lower lr)")
        if it % log_every == 0 or it == cfg.iterations - 1:
            history.append({"iteration": float(it), "loss_f": lf, "loss_g": lg})
    g.eval()
    return NeuralTransportMap(g=g, mu_s=mu_s, mu_t=mu_t, scale=scale, history=history,
                              seconds=time.perf_counter() - t0)


# ----------------------------------------------------------------------------- save / load


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def save_map(
    nmap: NeuralTransportMap,
    directory: Path | str,
    *,
    arrays: dict[str, np.ndarray] | None = None,
    extra: dict[str, Any] | None = None,
) -> Path:
    """Write ``map.json`` (init args, standardisation, sha256, ``extra``) and ``map.pt``.

    ``arrays`` are further named float arrays (e.g. a condition encoder) stored beside the
    weights in the same hashed tensor file.
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    state = {f"g.{k}": v.detach().cpu() for k, v in nmap.g.state_dict().items()}
    state["mu_s"] = torch.as_tensor(nmap.mu_s, dtype=torch.float64)
    state["mu_t"] = torch.as_tensor(nmap.mu_t, dtype=torch.float64)
    for name, arr in (arrays or {}).items():
        state[f"array.{name}"] = torch.as_tensor(np.asarray(arr, dtype=np.float64))
    weights = directory / _WEIGHTS
    write_with(weights, lambda p: torch.save(state, p))
    meta = {
        "format_version": MAP_FORMAT_VERSION,
        "class": "NeuralTransportMap",
        "init_args": nmap.g.init_args,
        "dtype": str(next(nmap.g.parameters()).dtype).removeprefix("torch."),
        "scale": nmap.scale,
        "arrays": sorted(arrays or {}),
        "weights": _WEIGHTS,
        "sha256": _sha256(weights),
        "extra": extra or {},
    }
    write_text(directory / _CONFIG, json.dumps(meta, indent=2, sort_keys=True) + "\n")
    return directory


def load_map(directory: Path | str) -> tuple[NeuralTransportMap, dict[str, np.ndarray], dict[str, Any]]:
    """Rebuild a map saved by :func:`save_map`: ``(map, arrays, extra)``.

    The weights' sha256 must match ``map.json``; they are read with
    ``torch.load(weights_only=True)``, loaded strictly, and the hidden-path weights must be
    non-negative (a non-convex potential would not be a transport map).
    """
    directory = Path(directory)
    cfg_path = directory / _CONFIG
    try:
        meta = json.loads(cfg_path.read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise MapFileError(f"no neural map config at {cfg_path}") from exc
    except json.JSONDecodeError as exc:
        raise MapFileError(f"neural map config {cfg_path} is not valid JSON: {exc}") from exc
    if meta.get("format_version") != MAP_FORMAT_VERSION or meta.get("class") != "NeuralTransportMap":
        raise MapFileError(f"{cfg_path}: not a neural map of format {MAP_FORMAT_VERSION} "
                           f"(format {meta.get('format_version')!r}, class {meta.get('class')!r})")
    weights = directory / str(meta.get("weights", _WEIGHTS))
    if not weights.is_file():
        raise MapFileError(f"neural map weights {weights} are missing")
    if _sha256(weights) != meta.get("sha256"):
        raise MapFileError(f"neural map weights {weights} do not match the sha256 recorded in {cfg_path}")
    state = torch.load(weights, map_location="cpu", weights_only=True)
    try:
        g = ICNN(**meta["init_args"])
        dtype = torch.float64 if meta.get("dtype") == "float64" else torch.float32
        g = g.to(dtype)
        g.load_state_dict({k[2:]: v for k, v in state.items() if k.startswith("g.")}, strict=True)
        mu_s, mu_t = state["mu_s"].numpy(), state["mu_t"].numpy()
        arrays = {name: state[f"array.{name}"].numpy() for name in meta.get("arrays", [])}
    except (RuntimeError, KeyError, TypeError, ValueError) as exc:
        raise MapFileError(f"neural map weights {weights} do not fit {cfg_path}: {exc!r}") from exc
    if g.min_convex_weight() < 0:
        raise MapFileError(f"neural map {weights} has negative hidden-path weights: the potential is not convex")
    g.eval()
    return NeuralTransportMap(g=g, mu_s=mu_s, mu_t=mu_t, scale=float(meta["scale"])), arrays, meta.get("extra", {})


def config_dict(cfg: DualConfig) -> dict[str, Any]:
    return {k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(cfg).items()}
