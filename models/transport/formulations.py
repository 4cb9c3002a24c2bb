r"""The formulations: one solver per alignment method, all on the same sparse :class:`Problem`.

``balanced``
    :math:`\min_{P 1 = a, P^\top 1 = b} \langle C, P\rangle` — exact LP (POT ``ot.emd``) up
    to ``emd_limit`` plan entries, entropic log-stabilised Sinkhorn otherwise. Under a hard
    block the target masses are rescaled per connected block so that each block balances.
``unbalanced``
    :math:`\min_P \langle C,P\rangle + \varepsilon KL(P|ab^\top) + \rho KL(P1|a) + \rho KL(P^\top 1|b)`
    (Chizat et al. 2018), solved by :func:`models.transport.sparse_sinkhorn` (float64,
    absorbed log-domain, epsilon-scaling, translation-invariant updates); POT's
    ``ot.unbalanced.sinkhorn_unbalanced`` is the reference in the tests.
``partial``
    exact partial OT with a fixed transported mass ``m = partial_mass * min(|a|, |b|)``
    (POT ``ot.partial.partial_wasserstein``; Chapel et al. 2020).
``aot`` (adaptive mass)
    :math:`\min_{P\ge 0,\ P1 \le a,\ P^\top 1 \le b} \langle C - \lambda, P\rangle`: costs may
    be negative, the inequality marginals let the problem itself decide how much mass moves —
    a pair is worth matching only where :math:`C_{ij} < \lambda`. This is the Lagrangian form
    of optimal partial transport (Caffarelli & McCann 2010, Ann. Math. 171; Figalli 2010,
    ARMA 195), ``lambda`` the price of a unit of matched mass. It is solved exactly as a
    balanced LP with one dummy point on each side (Chapel, Alaya & Gasso 2020, NeurIPS):
    the dummy source holds ``|b|``, the dummy target ``|a|``, all dummy costs are 0.
``neural``
    a conditional monotone map DFT value -> measured value, the gradient of an input-convex
    network trained on the Kantorovich dual (Makkuva et al. 2020), conditioned on the
    composition descriptors (:mod:`models.transport`); it calibrates every source entry, also those
    with no counterpart, and the fitted map is kept on the result to calibrate new entries.
``mixture``
    OT between Gaussian mixtures fitted to each domain in the joint (descriptor, value)
    space (Delon & Desolneux 2020, POT ``ot.gmm.gmm_ot_plan``); the component plan is
    lifted to points by responsibilities, ``P_ij = sum_kl a_i r_ik / pi_k  W_kl  b_j s_jl / pi'_l``,
    evaluated on the support only (so it scales with the number of allowed pairs).

:data:`FORMULATIONS` maps a method name to its solver; :func:`resolve` looks one up and lists
the valid names on error.
"""

from __future__ import annotations

import math

import numpy as np

from models.transport.config import SolverOptions
from models.transport.problem import AlignmentError, Formulation, Problem, Solution
from models.transport.sinkhorn import sparse_sinkhorn, truncation_bound
from models.transport.support import component_labels


def _balanced(problem: Problem, opts: SolverOptions) -> Solution:
    a, b = problem.a, problem.b.copy()
    n, m = problem.shape
    # per connected block of the support, rescale b so that the block balances
    n_comp, label = component_labels(problem.rows, problem.cols, n, m)
    la, lb = label[:n], label[n:]
    sa = np.bincount(la, weights=a, minlength=n_comp)
    sb = np.bincount(lb, weights=b, minlength=n_comp)
    active_a = np.bincount(problem.rows, minlength=n) > 0
    active_b = np.bincount(problem.cols, minlength=m) > 0
    b = np.where(active_b, b * sa[lb] / np.where(sb[lb] > 0, sb[lb], 1.0), b)
    if problem.rows.size <= opts.emd_limit and n * m <= opts.emd_limit * 4:
        # POT: only for the exact LP methods and distances
        import ot

        rows_out, cols_out, vals = [], [], []
        converged = True
        order = np.argsort(label[:n][problem.rows], kind="stable")
        r_all, c_all = problem.rows[order], problem.cols[order]
        comp_of_pair = la[r_all]
        bounds = np.flatnonzero(np.diff(comp_of_pair)) + 1
        for lo, hi in zip(np.r_[0, bounds], np.r_[bounds, r_all.size], strict=True):
            rr, cc = r_all[lo:hi], c_all[lo:hi]
            ui, ri = np.unique(rr, return_inverse=True)
            uj, cj = np.unique(cc, return_inverse=True)
            M = np.full((ui.size, uj.size), np.inf)
            M[ri, cj] = problem.cost[order][lo:hi]
            big = float(np.max(M[np.isfinite(M)])) * 10 + 1.0
            M[~np.isfinite(M)] = big  # LP only: a large finite cost is exact, unlike in exp-domain Sinkhorn
            G, log = ot.emd(a[ui], b[uj], M, log=True)
            converged &= log["warning"] is None
            nz = np.nonzero(G > 0)
            rows_out.append(ui[nz[0]])
            cols_out.append(uj[nz[1]])
            vals.append(G[nz])
        rows_o = np.concatenate(rows_out) if rows_out else np.zeros(0, dtype=np.int64)
        cols_o = np.concatenate(cols_out) if cols_out else np.zeros(0, dtype=np.int64)
        plan = np.concatenate(vals) if vals else np.zeros(0)
        allowed = set(zip(problem.rows.tolist(), problem.cols.tolist(), strict=True))
        leak = sum(v for r, c, v in zip(rows_o, cols_o, plan, strict=True) if (r, c) not in allowed)
        cost_lookup = _lookup_costs(problem, rows_o, cols_o)
        obj = float(np.dot(plan, cost_lookup))
        return Solution(rows_o, cols_o, plan, obj, 1, converged,
                        {"solver": 0.0, "forbidden_mass": float(leak),
                         "inactive_source": float((~active_a).sum()), "inactive_target": float((~active_b).sum())})
    res = sparse_sinkhorn(np.where(active_a, a, 1.0), np.where(active_b, b, 1.0), problem.rows, problem.cols,
                          problem.cost, reg=opts.reg, reg_m=math.inf, tol=opts.tol, max_iter=opts.max_iter)
    return Solution(res.rows, res.cols, res.plan, res.linear_cost, res.n_iter, res.converged,
                    {"solver": 1.0, "error": res.error, **res.certificate.as_info()})


def _unbalanced(problem: Problem, opts: SolverOptions) -> Solution:
    res = sparse_sinkhorn(problem.a, problem.b, problem.rows, problem.cols, problem.cost,
                          reg=opts.reg, reg_m=opts.reg_m, tol=opts.tol, max_iter=opts.max_iter)
    info = {"error": res.error, "dual_f_max": float(np.max(res.f[np.isfinite(res.f)], initial=0.0))}
    cert = res.certificate
    if problem.kth_cost is not None:  # a kNN support: pairs never offered to the solver, bounded
        cert = cert.with_truncation(truncation_bound(res, problem.a, problem.b, problem.kth_cost, opts.reg,
                                                     problem.kth_cost_target))
    info.update(cert.as_info())
    return Solution(res.rows, res.cols, res.plan, res.objective, res.n_iter, bool(res.converged and cert.holds), info)


def _need_dense(problem: Problem, opts: SolverOptions, method: str) -> None:
    n, m = problem.shape
    if n * m > opts.emd_limit:
        raise AlignmentError(
            f"method {method!r} solves a dense LP and is limited to emd_limit={opts.emd_limit} plan entries; "
            f"this problem has {n} x {m} = {n * m}. Use 'unbalanced' or 'mixture' at this size."
        )


def _partial(problem: Problem, opts: SolverOptions) -> Solution:
    # POT: only for the exact LP methods and distances
    import ot

    _need_dense(problem, opts, "partial")
    a, b = problem.a, problem.b
    cap = min(a.sum(), b.sum())
    if problem.hard_block:
        # at most min(|a_B|, |b_B|) can move inside each block B
        n = a.size
        n_comp, label = component_labels(problem.rows, problem.cols, n, b.size)
        sa = np.bincount(label[:n], weights=a, minlength=n_comp)
        sb = np.bincount(label[n:], weights=b, minlength=n_comp)
        singleton_a = np.bincount(problem.rows, minlength=n) == 0
        singleton_b = np.bincount(problem.cols, minlength=b.size) == 0
        sa -= np.bincount(label[:n][singleton_a], weights=a[singleton_a], minlength=n_comp)
        sb -= np.bincount(label[n:][singleton_b], weights=b[singleton_b], minlength=n_comp)
        cap = min(cap, float(np.minimum(sa, sb).sum()))
    mass = opts.partial_mass * cap
    M = problem.dense_cost(fill=np.nan)
    big = float(np.nanmax(M)) * 10 + 1.0 if problem.cost.size else 1.0
    M = np.where(np.isnan(M), big, M)
    G = ot.partial.partial_wasserstein(a, b, M, m=mass)
    mask = np.zeros(problem.shape, dtype=bool)
    mask[problem.rows, problem.cols] = True
    leak = float(G[~mask].sum())
    r, c = np.nonzero((G > 0) & mask)
    plan = G[r, c]
    return Solution(r, c, plan, float(np.dot(plan, M[r, c])), 1, leak <= 1e-9 * max(mass, 1e-300),
                    {"target_mass": mass, "forbidden_mass": leak})


def _aot(problem: Problem, opts: SolverOptions) -> Solution:
    # POT: only for the exact LP methods and distances
    import ot

    _need_dense(problem, opts, "aot")
    a, b = problem.a, problem.b
    n, m = problem.shape
    lam = opts.aot_price
    M = np.zeros((n + 1, m + 1))
    # forbidden pairs get a positive reduced cost: the zero-cost dummy route always beats them
    M[:n, :m] = 1.0 + abs(lam)
    M[problem.rows, problem.cols] = problem.cost - lam
    aa = np.r_[a, b.sum()]
    bb = np.r_[b, a.sum()]
    G, log = ot.emd(aa, bb, M, log=True)
    core = G[:n, :m]
    mask = np.zeros((n, m), dtype=bool)
    mask[problem.rows, problem.cols] = True
    r, c = np.nonzero((core > 0) & mask)
    plan = core[r, c]
    return Solution(r, c, plan, float(np.dot(plan, M[r, c])), 1, log["warning"] is None,
                    {"price": lam, "forbidden_mass": float(core[~mask].sum())})


def _mixture(problem: Problem, opts: SolverOptions) -> Solution:
    # scikit-learn: about a second to import; only this method needs it
    import ot
    from sklearn.mixture import GaussianMixture

    fits = []
    for pts in (problem.xs, problem.xt):
        k = max(1, min(opts.n_components, pts.shape[0] // 2))
        gm = GaussianMixture(n_components=k, covariance_type="full", reg_covar=1e-4, random_state=opts.seed)
        gm.fit(pts)
        fits.append(gm)
    gs, gt = fits
    W = ot.gmm.gmm_ot_plan(gs.means_, gt.means_, gs.covariances_, gt.covariances_, gs.weights_, gt.weights_)
    R = gs.predict_proba(problem.xs) * problem.a[:, None]
    S = gt.predict_proba(problem.xt) * problem.b[:, None]
    R /= np.maximum(R.sum(axis=0), 1e-300)
    S /= np.maximum(S.sum(axis=0), 1e-300)
    RW = R @ W * min(problem.a.sum(), problem.b.sum())
    plan = np.einsum("ij,ij->i", RW[problem.rows], S[problem.cols])
    keep = plan > 0
    rows, cols, plan = problem.rows[keep], problem.cols[keep], plan[keep]
    obj = float(np.dot(plan, problem.cost[keep]))
    mixture_cost = float(np.sum(W * ot.gmm.dist_bures_squared(gs.means_, gt.means_, gs.covariances_, gt.covariances_)))
    return Solution(rows, cols, plan, obj, int(gs.n_iter_ + gt.n_iter_), bool(gs.converged_ and gt.converged_),
                    {"mixture_w2": mixture_cost, "components_source": float(gs.n_components),
                     "components_target": float(gt.n_components),
                     "support_mass_fraction": float(plan.sum() / max(min(problem.a.sum(), problem.b.sum()), 1e-300))})


def _neural(problem: Problem, opts: SolverOptions) -> Solution:
    # torch: only the neural formulation needs it (align start-up without torch)
    from models.transport.neural import neural_formulation

    return neural_formulation(problem, opts)

FORMULATIONS: dict[str, Formulation] = {
    "balanced": _balanced,
    "unbalanced": _unbalanced,
    "partial": _partial,
    "aot": _aot,
    "mixture": _mixture,
    "neural": _neural,
}


def resolve(method: str) -> Formulation:
    try:
        return FORMULATIONS[method]
    except KeyError:
        raise AlignmentError(
            f"unknown alignment method {method!r}; valid methods: {', '.join(sorted(FORMULATIONS))}"
        ) from None


def _lookup_costs(problem: Problem, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
    m = problem.b.size
    key = problem.rows * m + problem.cols
    order = np.argsort(key)
    q = rows * m + cols
    pos = np.clip(np.searchsorted(key[order], q), 0, max(key.size - 1, 0))
    found = key[order][pos] == q
    return np.where(found, problem.cost[order][pos], np.nan)


__all__ = ["FORMULATIONS", "resolve"]
