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

import itertools
import math
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from scipy.spatial import cKDTree
from torch import Tensor, nn
from torch.nn import functional as F

from models._io import ModelFormatError, read_header, write_header, write_with
from models.transport.config import ACTIVATION_NAMES, DualConfig, NeuralAlignConfig, SolverOptions
from models.transport.problem import AlignmentError, Problem, Solution

__all__ = [
    "ACTIVATIONS",
    "ICNN",
    "CalibrationMap",
    "MapFileError",
    "NeuralTransportMap",
    "config_dict",
    "fit_calibration_map",
    "fit_dual",
    "load_map",
    "neural_formulation",
    "save_map",
]

_WEIGHTS = "map.pt"
_CONFIG = "map.json"


class MapFileError(ValueError):
    """A saved neural map that is missing, tampered with, or not convex."""


def _leaky(x: Tensor) -> Tensor:
    return F.leaky_relu(x, 0.2)


# convex and non-decreasing: composition with a convex argument keeps convexity
ACTIVATIONS = dict(zip(ACTIVATION_NAMES, (F.softplus, F.celu, _leaky), strict=True))


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
            nn.Parameter(torch.empty(w_out, w_in)) for w_in, w_out in itertools.pairwise(widths)
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
        """Return the weights that must stay non-negative for convexity in ``x``."""
        return [*self.hidden_weights, self.out_weight]

    @torch.no_grad()
    def project(self) -> None:
        """Clamp the hidden-path weights at 0 (called after every optimiser step)."""
        for w in self.convex_parameters():
            w.clamp_(min=0.0)

    def min_convex_weight(self) -> float:
        """Most negative hidden-path weight (>= 0 for a convex network)."""
        return min(float(w.detach().min()) for w in self.convex_parameters())

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
        r"""Return :math:`\nabla_x g(x \mid u)`, shape ``(n, dim)``."""
        with torch.enable_grad():
            x = x if x.requires_grad else x.detach().requires_grad_(True)
            out = self(x, cond)
            (grad,) = torch.autograd.grad(out.sum(), x, create_graph=create_graph)
        return grad

    def extra_repr(self) -> str:
        return (f"dim={self.dim}, hidden={self.init_args['hidden']}, cond_dim={self.cond_dim}, "
                f"activation={self.activation!r}, quadratic={self.quad is not None}")


@dataclass
class NeuralTransportMap:
    r"""A fitted map :math:`T(x \mid u) = \mu_t + s\,\nabla g((x - \mu_s)/s \mid u)`.

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
        """Evaluate the convex potential ``g`` at standardised ``x`` (for convexity checks)."""
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
    write_with(directory / _WEIGHTS, lambda p: torch.save(state, p))
    write_header(directory / _CONFIG, cls="NeuralTransportMap", files=[_WEIGHTS], init_args=nmap.g.init_args,
                 dtype=str(next(nmap.g.parameters()).dtype).removeprefix("torch."), scale=nmap.scale,
                 arrays=sorted(arrays or {}), extra=extra or {})
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
        meta = read_header(cfg_path, classes=("NeuralTransportMap",), required=[_WEIGHTS], what="neural map")
    except ModelFormatError as exc:
        raise MapFileError(str(exc)) from exc
    weights = directory / _WEIGHTS
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


# ----------------------------------------------------------------------------- calibration map (align)


@dataclass
class CalibrationMap:
    r"""Calibrate DFT values of any composition: :math:`t = T(v \mid u(\text{descriptors}))`.

    Why a conditional 1-d map rather than a map in the joint (descriptor, value) space: the
    calibrated target of a DFT entry is a value of the *same* composition, so the descriptors
    must not move; a joint map would transport chemistry as well and need the descriptor axes
    read back and ignored. Conditioning on the composition keeps chemistry fixed and makes the
    calibration a monotone curve per chemistry (a larger DFT gap never gets a smaller
    calibrated gap for one composition), learned from the formulas that are both computed and
    measured (each such formula one conditional OT problem, all sharing one network), and it
    extends to compositions that were never measured.

    The condition :math:`u` is the projection of the standardised descriptors on their
    leading principal components (fitted on the formulas of both domains given to the fit).
    Confidence :math:`\exp(-\tfrac12 (\delta/h)^2)` decays with the distance :math:`\delta` in
    condition space to the nearest training formula, :math:`h` the median such distance among
    the training formulas themselves (leave-one-out): 1 on measured chemistry, small far away.
    """

    nmap: NeuralTransportMap
    feat_mean: np.ndarray
    feat_scale: np.ndarray
    components: np.ndarray  # (n_features, k)
    train_cond: np.ndarray  # (n_train_formulas, k)
    bandwidth: float
    clip_min: float | None = None

    def encode(self, features: np.ndarray) -> np.ndarray:
        feats = np.asarray(features, dtype=np.float64)
        if feats.ndim != 2 or feats.shape[1] != self.feat_mean.size:
            raise ValueError(f"expected descriptors of shape (n, {self.feat_mean.size}), got {feats.shape}")
        return ((feats - self.feat_mean) / self.feat_scale) @ self.components

    def confidence(self, cond: np.ndarray) -> np.ndarray:

        dist, _ = cKDTree(self.train_cond).query(cond, k=1)
        return np.exp(-0.5 * (dist / self.bandwidth) ** 2)

    def calibrate(self, values: np.ndarray, features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Calibrated values and confidence for DFT ``values`` (n,) with ``features`` (n, d)."""
        values = np.asarray(values, dtype=np.float64)
        if values.ndim != 1 or len(values) != len(features):
            raise ValueError(f"values must be (n,) matching descriptors ({len(features)} rows); got {values.shape}")
        if not np.all(np.isfinite(values)):
            raise ValueError(f"cannot calibrate non-finite DFT values (row {int(np.argmax(~np.isfinite(values)))})")
        if len(values) == 0:
            return np.zeros(0), np.zeros(0)
        cond = self.encode(features)
        out = self.nmap(values[:, None], cond)[:, 0]
        if self.clip_min is not None:
            out = np.maximum(out, self.clip_min)  # monotone after clipping too
        return out, self.confidence(cond)

    def save(self, directory: Path | str, *, extra: dict[str, Any] | None = None) -> Path:
        arrays = {"feat_mean": self.feat_mean, "feat_scale": self.feat_scale, "components": self.components,
                  "train_cond": self.train_cond}
        meta = {"kind": "calibration", "bandwidth": self.bandwidth, "clip_min": self.clip_min, **(extra or {})}
        return save_map(self.nmap, directory, arrays=arrays, extra=meta)

    @classmethod
    def load(cls, directory: Path | str) -> tuple[CalibrationMap, dict[str, Any]]:
        nmap, arrays, extra = load_map(directory)
        if extra.get("kind") != "calibration" or set(arrays) != {"feat_mean", "feat_scale", "components", "train_cond"}:
            raise MapFileError(f"{directory} holds a neural map but not a DFT calibration map")
        if nmap.dim != 1 or nmap.g.cond_dim != arrays["components"].shape[1]:
            raise MapFileError(f"{directory}: calibration map shapes disagree (dim {nmap.dim}, "
                               f"condition {nmap.g.cond_dim} vs {arrays['components'].shape[1]} components)")
        clip = extra.get("clip_min")
        return cls(nmap=nmap, feat_mean=arrays["feat_mean"], feat_scale=arrays["feat_scale"],
                   components=arrays["components"], train_cond=arrays["train_cond"],
                   bandwidth=float(extra["bandwidth"]), clip_min=None if clip is None else float(clip)), extra


def _group_weights(keys: np.ndarray, shared: np.ndarray) -> np.ndarray:
    """Weight 1/(count of the key) on rows whose key is shared: every formula weighs the same."""
    _, inv, counts = np.unique(keys, return_inverse=True, return_counts=True)
    w = 1.0 / counts[inv]
    return np.where(np.isin(keys, shared), w, 0.0)


def fit_calibration_map(
    source_values: np.ndarray,
    source_features: np.ndarray,
    source_formulas: np.ndarray,
    target_values: np.ndarray,
    target_features: np.ndarray,
    target_formulas: np.ndarray,
    *,
    config: NeuralAlignConfig | None = None,
) -> CalibrationMap:
    """Fit :class:`CalibrationMap` from DFT entries (source) and measurements (target).

    Only formulas present on both sides train the map (a conditional OT problem per formula,
    each formula weighted equally on both sides, its entries uniformly within it); the
    descriptor encoder is fitted on the distinct formulas of both sides (unsupervised).
    """
    cfg = config or NeuralAlignConfig()
    fs, ft = np.asarray(source_formulas).astype(str), np.asarray(target_formulas).astype(str)
    shared = np.intersect1d(fs, ft)
    if shared.size < 2:
        raise ValueError(f"the neural map needs formulas both computed and measured; found {shared.size}")
    feats = np.vstack([source_features, target_features]).astype(np.float64)
    _, first = np.unique(np.r_[fs, ft], return_index=True)
    uniq = feats[first]
    mean = uniq.mean(axis=0)
    scale = uniq.std(axis=0)
    scale[~(scale > 1e-12)] = 1.0
    z = (uniq - mean) / scale
    k = min(cfg.pca_components, z.shape[1], z.shape[0] - 1)
    _, _, vt = np.linalg.svd(z - z.mean(axis=0), full_matrices=False)
    comps = vt[:k].T
    # fix the sign of each component so the encoder does not depend on the SVD's sign choice
    comps *= np.where(comps[np.argmax(np.abs(comps), axis=0), np.arange(k)] < 0, -1.0, 1.0)
    ws, wt = _group_weights(fs, shared), _group_weights(ft, shared)
    use_s, use_t = ws > 0, wt > 0
    cs = ((np.asarray(source_features, float)[use_s] - mean) / scale) @ comps
    ct = ((np.asarray(target_features, float)[use_t] - mean) / scale) @ comps
    nmap = fit_dual(np.asarray(source_values, float)[use_s, None], np.asarray(target_values, float)[use_t, None],
                    config=cfg.dual, source_cond=cs, target_cond=ct,
                    source_weights=ws[use_s], target_weights=wt[use_t])
    _, first_t = np.unique(ft[use_t], return_index=True)
    train_cond = ct[first_t]

    if len(train_cond) > 1:
        dist, _ = cKDTree(train_cond).query(train_cond, k=2)
        bandwidth = float(np.median(dist[:, 1]))
    else:
        bandwidth = 1.0
    return CalibrationMap(nmap=nmap, feat_mean=mean, feat_scale=scale, components=comps, train_cond=train_cond,
                          bandwidth=max(bandwidth, 1e-6), clip_min=cfg.clip_min)


def neural_formulation(problem: Problem, opts: SolverOptions) -> Solution:
    """Adapter for :data:`models.transport.FORMULATIONS` (``method="neural"``).

    Fits :func:`fit_calibration_map` on the problem's domains, calibrates every source entry,
    and reports as the plan the map followed by a projection on the nearest allowed
    measurement (each source row with an allowed pair sends its mass to the measurement of
    its support closest to its calibrated value), so the plan-based diagnostics stay defined.
    The min-max training runs a fixed number of steps and has no stopping criterion:
    ``converged`` means that it ended with finite losses (a diverged run raises instead).
    """
    if problem.source is None or problem.target is None:
        raise AlignmentError("the neural formulation needs the domains on the problem")
    cfg = opts.neural if opts.neural is not None else NeuralAlignConfig()
    src, tgt = problem.source, problem.target
    try:
        cal = fit_calibration_map(src.values, src.features, src.formulas, tgt.values, tgt.features, tgt.formulas,
                                  config=cfg)
    except (ValueError, FloatingPointError) as exc:  # too little overlap, or a diverged training
        raise AlignmentError(f"neural alignment: {exc}") from exc
    targets, confidence = cal.calibrate(src.values, src.features)
    rows, cols = problem.rows, problem.cols
    gap = np.abs(targets[rows] - tgt.values[cols])
    order = np.lexsort((gap, rows))  # per row, the closest allowed measurement first
    first = order[np.r_[True, rows[order][1:] != rows[order][:-1]]] if rows.size else order
    r, c = rows[first], cols[first]
    plan = problem.a[r]
    cost_lookup = problem.cost[first]
    hist = cal.nmap.history[-1] if cal.nmap.history else {}
    info = {"train_formulas": float(cal.train_cond.shape[0]), "pca_components": float(cal.components.shape[1]),
            "seconds_fit": cal.nmap.seconds, "final_loss_f": hist.get("loss_f", math.nan),
            "final_loss_g": hist.get("loss_g", math.nan), "bandwidth": cal.bandwidth,
            "mean_confidence": float(confidence.mean())}
    return Solution(r, c, plan, float(np.dot(plan, cost_lookup)), cfg.dual.iterations, True, info,
                    calibrated=targets, calibrated_confidence=confidence, artifact=cal)
