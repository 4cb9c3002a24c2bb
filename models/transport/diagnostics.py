"""What an alignment reports: its tables, its diagnostics, the outlier list and the OT distances.

:func:`alignment_outputs` turns an :class:`~models.transport.AlignmentResult` into the
contents of ``data/aligned/<property>/`` (docs/ARCHITECTURE.md): the listed pairs, the DFT
entries with their calibrated targets, the measurements with their transported mass, the
outlier table and ``align.json``'s diagnostics. :func:`distances_before_after` measures the
shift the alignment removed. No I/O: the align stage writes what it gets.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import pandas as pd

from models.transport.alignment import AlignmentResult, transport_distance
from models.transport.config import AlignConfig, SolverOptions
from models.transport.penalties import Domain
from models.transport.sinkhorn import Certificate
from models.transport.support import block_support

OT_DISTANCE_DEFINITION = (
    "unbalanced entropic OT objective (same reg, reg_m, cost weights and support rule) between "
    "DFT entries and measurements in the joint descriptor+property space; 'after' replaces each "
    "DFT value by its calibrated target")


@dataclass
class AlignmentOutputs:
    """The tables and diagnostics of one alignment (the files of ``data/aligned/<property>/``)."""

    pairs: pd.DataFrame
    dft: pd.DataFrame
    experiment: pd.DataFrame
    outliers: pd.DataFrame
    diagnostics: dict[str, Any]
    corrections: dict[str, float]


def alignment_outputs(res: AlignmentResult, source: Domain, target: Domain, config: AlignConfig, *,
                      before: float, after: float, min_pair_mass: float) -> AlignmentOutputs:
    """Tables and diagnostics of ``res``; pairs below ``min_pair_mass`` of the moved mass are not listed."""
    targets, confidence = res.calibrated_targets(target.values, fallback=source.values + res.source_offset)
    plan = res.plan
    moved = res.mass_moved
    listed = plan.data >= min_pair_mass * moved
    pairs = pd.DataFrame({
        "exp_id": target.ids[plan.col[listed]],
        "material_id": source.ids[plan.row[listed]],
        "mass": plan.data[listed],
        "cost": res.pair_cost[listed],
    }).sort_values(["exp_id", "mass"], ascending=[True, False], kind="stable")
    dft_out = pd.DataFrame({
        "material_id": source.ids, "formula": source.formulas, "dft_value": source.values,
        "transported_mass": res.source_mass, "calibrated_target": targets, "confidence": confidence,
    })
    exp_out = pd.DataFrame({
        "exp_id": target.ids, "formula": target.formulas, "value": target.values,
        "transported_mass": res.target_mass,
    })
    corrections = res.corrections
    diag = {
        "method": config.method,
        "n_source": source.size,
        "n_target": target.size,
        "support_size": res.support_size,
        "plan_entries": int(plan.nnz),
        "pairs_listed": int(listed.sum()),
        "mass_moved": moved,
        "mass_moved_fraction_source": moved / float(res.a.sum()),
        "mass_moved_fraction_target": moved / float(res.b.sum()),
        "objective": res.objective,
        "linear_cost": res.linear_cost,
        "ot_distance_definition": OT_DISTANCE_DEFINITION,
        "ot_distance_before": before,
        "ot_distance_after": after,
        "penalty_residuals": res.cost_terms,
        "value_calibration": res.value_calibration.as_dict() if res.value_calibration else None,
        "energy_additivity": config.energy_additivity,
        "additivity_residual_rmse": corrections.residual_rmse if corrections else None,
        "additivity_shift_rmse_before": corrections.shift_rmse_before if corrections else None,
        "iterations": res.n_iter,
        "converged": res.converged,
        "certificate": cert.as_dict() if (cert := Certificate.from_info(res.info)) is not None else None,
        "solver_info": {k: float(v) for k, v in res.info.items()
                        if math.isfinite(float(v)) and not k.startswith("cert_")},
        "seconds_solve": res.seconds,
    }
    return AlignmentOutputs(pairs=pairs, dft=dft_out, experiment=exp_out, outliers=outlier_table(res, source, target),
                            diagnostics=diag, corrections=corrections.as_dict() if corrections else {})


def distances_before_after(res: AlignmentResult, source: Domain, target: Domain, config: AlignConfig, *,
                           distance: Callable[..., float] = transport_distance) -> tuple[float, float]:
    """OT distance before/after: unbalanced objective in the joint space with the same weights.

    On raw values (no value calibration inside the distance: it measures the shift that is
    left). ``distance`` is :func:`transport_distance` or its block-wise twin.
    """
    targets, _ = res.calibrated_targets(target.values, fallback=source.values + res.source_offset)
    o = config.options
    options = SolverOptions(reg=o.reg, reg_m=o.reg_m, tol=o.tol, max_iter=o.max_iter)
    weights = replace(config.cost, value_calibration="none")
    before = distance(source, target, weights=weights, options=options, dense_limit=config.dense_limit, knn=config.knn)
    after_src = Domain(features=source.features, values=targets, formulas=source.formulas, ids=source.ids,
                       fractions=source.fractions, elements=source.elements,
                       crystal_system=source.crystal_system)
    after = distance(after_src, target, weights=weights, options=options, dense_limit=config.dense_limit,
                     knn=config.knn)
    return before, after


def outlier_table(res: AlignmentResult, source: Domain, target: Domain) -> pd.DataFrame:
    """Every measurement, least transported first: the outlier list a person can judge.

    Columns: ``exp_id``, ``formula``, ``value`` (measured), ``score`` (``mass_fraction`` /
    ``expected_fraction``: 1 for a measurement its formula's DFT entries match perfectly,
    near 0 for an outlier; the sort key), ``mass_fraction`` (transported mass / marginal),
    ``expected_fraction`` (``sqrt(A / B)``, A and B the DFT and measured mass of the formula:
    the fraction a zero-cost formula would get under the KL-relaxed marginals), ``n_dft``
    (same-formula DFT entries), ``dft_value`` (the
    DFT entry that took most of the measurement's mass, else the median of its formula's DFT
    values), ``calibrated_dft`` (that value plus the alignment's offset: value calibration and
    energy-additivity corrections), ``residual`` = value - calibrated_dft, and
    ``no_counterpart`` (no same-formula DFT entry and no mass: such rows are listed last).
    """
    plan = res.plan.tocsc()
    m = target.size
    partner = np.full(m, -1, dtype=np.int64)
    for j in range(m):
        lo, hi = plan.indptr[j], plan.indptr[j + 1]
        if hi > lo:
            partner[j] = plan.indices[lo + int(np.argmax(plan.data[lo:hi]))]
    r, c = block_support(np.asarray(source.formulas), np.asarray(target.formulas))
    n_dft = np.bincount(c, minlength=m)
    calibrated_all = source.values + res.source_offset
    dft_value = np.full(m, np.nan)
    calibrated = np.full(m, np.nan)
    has = partner >= 0
    dft_value[has] = source.values[partner[has]]
    calibrated[has] = calibrated_all[partner[has]]
    if r.size:
        frame = pd.DataFrame({"c": c, "v": source.values[r], "cv": calibrated_all[r]})
        med = frame.groupby("c")[["v", "cv"]].median()
        fill = ~has & (n_dft > 0)
        idx = np.flatnonzero(fill)
        dft_value[idx] = med.loc[idx, "v"].to_numpy()
        calibrated[idx] = med.loc[idx, "cv"].to_numpy()
    # What a perfectly matched formula would give: with zero cost, the KL-relaxed marginals
    # move sqrt(A B) between a formula's DFT mass A and measured mass B, i.e. a fraction
    # sqrt(A / B) of each measurement's mass. Repeated measurements of one formula share a
    # single DFT entry's mass, so the raw fraction alone would flag them for being many.
    src_mass = pd.Series(res.a).groupby(np.asarray(source.formulas)).sum()
    tgt_mass = pd.Series(res.b).groupby(np.asarray(target.formulas)).sum()
    a_f = src_mass.reindex(target.formulas).fillna(0.0).to_numpy()
    b_f = tgt_mass.reindex(target.formulas).to_numpy()
    expected = np.sqrt(a_f / b_f)
    fraction = res.target_mass / res.b
    score = np.where(expected > 0, fraction / np.where(expected > 0, expected, 1.0), fraction)
    table = pd.DataFrame({
        "exp_id": target.ids, "formula": target.formulas, "value": target.values,
        "score": score, "mass_fraction": fraction, "expected_fraction": expected, "n_dft": n_dft,
        "dft_value": dft_value, "calibrated_dft": calibrated, "residual": target.values - calibrated,
    })
    # a measurement with no DFT counterpart at all receives no mass by construction, which
    # says nothing about the measurement: those are listed last
    table["no_counterpart"] = (n_dft == 0) & (res.target_mass == 0)
    return table.sort_values(["no_counterpart", "score", "exp_id"], kind="stable").reset_index(drop=True)


__all__ = ["OT_DISTANCE_DEFINITION", "AlignmentOutputs", "alignment_outputs", "distances_before_after", "outlier_table"]
