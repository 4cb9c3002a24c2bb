r"""Log-domain unbalanced Sinkhorn with online reductions: no n x m matrix in memory (the GPU path).

:func:`online_sinkhorn` solves the problem of :func:`models.transport.cloud_sinkhorn` for
``C_ij = |x_i - y_j|^2 / scale`` in the log domain, with torch: each half-step is a
log-sum-exp over one side, computed block by block from the points (``|x|^2 + |y|^2 - 2 x y^T``
for a block of rows, reduced at once), in the spirit of KeOps' online reductions. Memory is
O((n + m) d + block * max(n, m)); work per iteration is O(n m d), which a GPU does at its
matrix-product rate. Epsilon-scaling and the closed-form translation step of
:mod:`models.transport.sinkhorn` are used the same way (all pairs allowed: one block).

The CPU solvers are the reference: the tests run this path on the CPU in float64 and compare.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

import numpy as np

from models.transport.sinkhorn import Certificate, _gkl, _marginal_certificate


@dataclass(frozen=True)
class OnlineResult:
    """Potentials (numpy, float64), objective, masses and certificate of :func:`online_sinkhorn`."""

    f: np.ndarray
    g: np.ndarray
    objective: float
    linear_cost: float
    mass: float
    n_iter: int
    converged: bool
    error: float
    seconds: float
    device: str
    certificate: Certificate


# One function on purpose: the closures share the device tensors; the loop mirrors sinkhorn._solve.
def online_sinkhorn(  # noqa: C901, PLR0913
    x: np.ndarray,
    y: np.ndarray,
    a: np.ndarray,
    b: np.ndarray,
    *,
    reg: float,
    reg_m: float = math.inf,
    scale: float = 1.0,
    tol: float = 1e-9,
    max_iter: int = 20000,
    eps_start: float | None = None,
    eps_decay: float = 0.5,
    iter_per_eps: int = 20,
    translation_invariant: bool = True,
    device: str | None = None,
    dtype: str = "float64",
    block: int = 8192,
) -> OnlineResult:
    """Unbalanced (``reg_m`` finite) or balanced entropic OT between point clouds, never storing C.

    ``device``: a torch device (default: ``cuda`` when available, else ``cpu``); ``dtype``:
    ``"float64"`` (default; the reference accuracy) or ``"float32"``. Stops when the largest
    potential change in one iteration, over eps, is below ``tol`` at the target eps.
    """
    # torch: seconds to import; only this path needs it
    import torch

    t0 = time.perf_counter()
    if reg <= 0 or not math.isfinite(reg):
        raise ValueError(f"reg must be a positive finite number, got {reg}")
    dev = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    dt = {"float64": torch.float64, "float32": torch.float32}[dtype]
    X = torch.as_tensor(np.asarray(x, dtype=np.float64), device=dev).to(dt)
    Y = torch.as_tensor(np.asarray(y, dtype=np.float64), device=dev).to(dt)
    A = torch.as_tensor(np.asarray(a, dtype=np.float64), device=dev).to(dt)
    B = torch.as_tensor(np.asarray(b, dtype=np.float64), device=dev).to(dt)
    la, lb = A.log(), B.log()
    x2, y2 = (X * X).sum(1), (Y * Y).sum(1)
    fi = 1.0 if math.isinf(reg_m) else reg_m / (reg_m + reg)

    def cost(i0, i1, rows_of_x: bool):
        if rows_of_x:
            c = x2[i0:i1, None] + y2[None, :] - 2.0 * (X[i0:i1] @ Y.T)
        else:
            c = y2[i0:i1, None] + x2[None, :] - 2.0 * (Y[i0:i1] @ X.T)
        return c.clamp_(min=0.0).div_(scale)

    def half_step(h, log_w, n_out, rows_of_x, eps):
        """-fi eps LSE_j(log w_j + (h_j - C_ij) / eps) for every i on the other side."""
        out = torch.empty(n_out, dtype=dt, device=dev)
        bias = log_w + h / eps
        for s in range(0, n_out, block):
            e = min(s + block, n_out)
            out[s:e] = torch.logsumexp(bias[None, :] - cost(s, e, rows_of_x) / eps, dim=1)
        return -fi * eps * out

    def translate(f, g):
        if math.isinf(reg_m) or not translation_invariant:
            return f, g
        t = 0.5 * reg_m * (torch.logsumexp(la - f / reg_m, 0) - torch.logsumexp(lb - g / reg_m, 0))
        return f + t, g - t

    eps_list, e = [], float(eps_start) if eps_start is not None else float(cost(0, min(block, X.shape[0]), True).max())
    e = max(e, reg)
    while e > reg:
        eps_list.append(e)
        e *= eps_decay
    eps_list.append(float(reg))
    f = torch.zeros(X.shape[0], dtype=dt, device=dev)
    g = torch.zeros(Y.shape[0], dtype=dt, device=dev)
    n_iter, err, converged = 0, math.inf, False
    for k, eps in enumerate(eps_list):
        last = k == len(eps_list) - 1
        for _ in range(max_iter - n_iter if last else iter_per_eps):
            n_iter += 1
            f_new = half_step(g, lb, X.shape[0], True, eps)
            g_new = half_step(f_new, la, Y.shape[0], False, eps)
            f_new, g_new = translate(f_new, g_new)
            err = float(torch.maximum((f_new - f).abs().max(), (g_new - g).abs().max())) / eps
            f, g = f_new, g_new
            if last and err < tol:
                converged = True
                break
    # plan statistics, block by block: P_ij = a_i b_j exp((f_i + g_j - C_ij) / eps)
    eps = float(reg)
    r = torch.zeros(X.shape[0], dtype=torch.float64, device=dev)
    c = torch.zeros(Y.shape[0], dtype=torch.float64, device=dev)
    linear = ent = 0.0
    for s in range(0, X.shape[0], block):
        e_ = min(s + block, X.shape[0])
        C = cost(s, e_, True)
        z = (f[s:e_, None] + g[None, :] - C) / eps
        P = torch.exp(la[s:e_, None] + lb[None, :] + z).double()
        r[s:e_] = P.sum(1)
        c += P.sum(0)
        linear += float((P * C.double()).sum())
        ent += float((P * z.double()).sum())
    total = float(r.sum())
    a64, b64 = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    rn, cn = r.cpu().numpy(), c.cpu().numpy()
    ent += -total + float(a64.sum() * b64.sum())
    objective = linear + eps * ent
    if math.isfinite(reg_m):
        objective += reg_m * (_gkl(rn, a64) + _gkl(cn, b64))
    fn, gn = f.double().cpu().numpy(), g.double().cpu().numpy()
    cert = _marginal_certificate(rn, cn, a64, b64, fn, gn, reg_m, total=total, pruned=0.0, readmitted=0)
    return OnlineResult(fn, gn, objective, linear, total, n_iter, bool(converged and cert.holds), err,
                        time.perf_counter() - t0, str(dev), cert)


__all__ = ["OnlineResult", "online_sinkhorn"]
