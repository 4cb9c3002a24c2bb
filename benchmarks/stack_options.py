"""Two settings of the stacked model, paired on the evaluate stage's folds: does an option change any MAE?

For each property, the stacked model as the evaluate stage builds it (``train.stack`` for that
property, shared DFT surrogate, without OT features, ``--bags`` boosters) is fitted on every
fold of ``evaluate.full``'s protocols twice, with ``--before`` and with ``--after`` applied to
its :class:`models.learners.StackConfig` (JSON overrides, e.g. ``'{"bonding": true}'`` or
``'{"element_value": null}'``; a setting with ``surrogate_*`` keys gets its own DFT surrogate,
fitted on the DFT labels alone), for each of ``--seeds`` (the fold and booster seed). Per
protocol and for the pooled OOD protocols: MAE mean ± std over seeds, and the paired
difference after - before with a 95% bootstrap interval over formulas (one draw for all
seeds). Also the MAE of the pure elements and of the compounds apart.

``--ot``: the stacked model *with* OT features, as served and as the evaluate stage's ``stacked_ot``:
each fold's own unbalanced alignment (params.yaml's ``align`` section) on its training part only, its
calibration shifts extended by :class:`models.learners.ShiftField`. A setting can pass without them
and still move the served model (benchmarks/colsample_results.md), so a setting for the served model is
checked with them too. With ``--ot``, the override ``"ot_features": false`` (no StackConfig key: read
here) drops them from one setting, so ``--nested --ot --before '{}' --after '{"ot_features": false}'`` compares
the served model with and without OT features on the nested folds.

``--nested``: the same on folds inside the *training* parts of the evaluate stage's folds,
so that no test row of the evaluate stage is seen (where a setting is chosen): each grouped-CV
training part split in 3 grouped folds and, with descriptors, in 3 k-means clusters of its
formulas left out one at a time (LOCO inside it: a setting that trades family out against LOCO
shows it before the evaluate folds do), and :func:`benchmarks.extrapolation.nested_folds` (the
range fold's own top 10%; halide, oxide and pnictide held out inside the halide and oxide
family-out training parts).

Run after ``dvc repro align``: ``PYTHONPATH=. python -m benchmarks.stack_options --property
formation_enthalpy --before '{"element_value": null}' --after '{}' --out benchmarks/elements_results.json``.
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd

from benchmarks import seeded
from benchmarks.extrapolation import nested_folds
from benchmarks.metal_features import paired_by_formula
from featurizers.chemistry import element_mask
from models.evaluation.folds import fold_shift_field
from models.evaluation.run import _problem, stack_inputs
from models.evaluation.splits import Fold, grouped_kfold, loco_descriptors, loco_folds, make_folds
from models.learners import DFTSurrogate
from models.properties import get_property
from models.transport import AlignConfig
from pipeline.config import load_section
from pipeline.evaluate import load_inputs
from pipeline.params.align import AlignParams
from pipeline.params.evaluate import EvaluateParams
from pipeline.params.train import TrainParams

HERE = Path(__file__).resolve().parent


def inner_folds(folds: list[Fold], values: np.ndarray, formulas: list[str], *, seed: int,
                descriptors: np.ndarray | None = None, clusters: int = 3) -> list[Fold]:
    """Folds inside the training parts of ``folds`` (see the module docstring).

    ``descriptors``: one row per measurement (the evaluate stage's LOCO inputs); with them, each
    grouped-CV training part also gets ``clusters`` LOCO folds of its own.
    """
    out = nested_folds(folds, values, formulas)
    for f in folds:
        if f.protocol == "grouped_cv":
            inside = [formulas[i] for i in f.train]
            out += [Fold("grouped_cv", f"in-{f.name}/{g.name}", f.train[g.train], f.train[g.test])
                    for g in grouped_kfold(inside, n_folds=3, seed=seed)]
            if descriptors is not None:
                out += [Fold("loco", f"in-{f.name}/{g.name}", f.train[g.train], f.train[g.test])
                        for g in loco_folds(inside, descriptors[f.train], n_clusters=clusters, seed=seed)]
    return out


def split_setting(overrides: dict) -> tuple[dict, bool]:
    """Split a setting into its StackConfig overrides and whether it gets the OT features (``"ot_features"``, default true)."""
    rest = dict(overrides)
    with_ot = rest.pop("ot_features", True)
    if not isinstance(with_ot, bool):
        raise ValueError(f'"ot_features" must be true or false, got {with_ot!r}')
    return rest, with_ot


def run_property(name: str, params: EvaluateParams, train: TrainParams, settings: dict[str, dict], seeds: list[int],
                 bags: int, threads: int, nested: bool = False, align: AlignConfig | None = None,
                 with_ot: dict[str, bool] | None = None) -> dict:
    """``settings``: StackConfig overrides per setting (:func:`split_setting`'s first part).

    ``align``: params.yaml's ``align`` section, for the model with OT features (``--ot``); None: the
    model without. ``with_ot``: per setting, whether it gets those features (all, when None).
    """
    with_ot = with_ot or {}
    prop = get_property(name)
    full = params.full
    # the evaluate stage's alignment of each fold: the align section applied to the property
    align = None if align is None else align.for_property(prop)
    inputs = load_inputs(params, prop, extra=train.fit.extra_fidelities(prop), use_graphs=False)
    problem = _problem(inputs, full, seed=params.seed)
    exp = problem["experiment"]
    formulas, y = exp["formula"].tolist(), exp["value"].to_numpy(float)
    element = element_mask(formulas)
    x_rows = loco_descriptors(inputs.descriptors, formulas) if nested else None  # the nested LOCO folds' inputs
    stack = stack_inputs(inputs.dft, inputs.descriptors, replace(full, stack_bags=bags), train.fit, prop, threads=threads)
    # a setting that changes the DFT surrogate (``surrogate_*`` keys) gets its own, fitted on the DFT labels alone
    own = {setting: replace(stack, surrogate=DFTSurrogate(replace(stack.config, **overrides)).fit(inputs.descriptors,
                                                                                                   stack.dft_reference))
           for setting, overrides in settings.items() if any(k.startswith("surrogate_") for k in overrides)}
    for setting, inp in own.items():
        print(f"{name} {setting}: DFT surrogate out-of-fold MAE {inp.surrogate.mae_:.4f} "
              f"(shared: {stack.surrogate.mae_:.4f})", flush=True)
    errors: dict[tuple[str, str], list[pd.DataFrame]] = {}
    for seed in seeds:
        folds = make_folds(full, formulas, y, exp["crystal_system"].tolist(), inputs.descriptors, seed=seed)
        if nested:
            folds = inner_folds(folds, y, formulas, seed=seed, descriptors=x_rows, clusters=full.loco_clusters)
        fields = None if align is None else [
            fold_shift_field(problem["source"], problem["target"], inputs.descriptors, f, align,
                             k=stack.config.ot_neighbours) for f in folds]
        for setting, overrides in settings.items():
            tab = seeded.fold_errors(replace(stack.config, seed=seed, **overrides), own.get(setting, stack),
                                     inputs.descriptors, formulas, y, folds,
                                     shift_fields=fields if with_ot.get(setting, True) else None)
            tab["element"] = element[tab["row"].to_numpy()]
            tab = seeded.with_pooled_ood(tab)  # nested: family out and LOCO inside the training parts
            for protocol, part in tab.groupby("protocol"):
                errors.setdefault((protocol, setting), []).append(part.reset_index(drop=True))
            print(f"{name} seed {seed} {setting:6s} " + " ".join(f"{p} {g['error'].mean():.4f}"
                                                              for p, g in tab.groupby("protocol")), flush=True)
    out = {}
    for protocol in sorted({p for p, _ in errors}):
        before, after = errors[(protocol, "before")], errors[(protocol, "after")]
        diff, lo, hi = paired_by_formula(before, after)
        out[protocol] = {"rows": len(before[0]), "elements": int(before[0]["element"].sum()), "diff": {"mean": diff,
                         "ci95": [lo, hi]}}
        for s, parts in (("before", before), ("after", after)):
            out[protocol][s] = {"all": spread_over_seeds([p["error"] for p in parts]),
                                "compounds": spread_over_seeds([p.loc[~p["element"], "error"] for p in parts]),
                                "elements": spread_over_seeds([p.loc[p["element"], "error"] for p in parts])}
    return {"unit": prop.unit, "folds": "nested" if nested else "outer", "protocols": out,
            "families": {} if nested else by_family(errors)}


def by_family(errors: dict[tuple[str, str], list[pd.DataFrame]]) -> dict[str, dict]:
    """Per held-out family of the family-out protocol (the same folds on every seed): rows, MAE before and after, paired difference."""
    before, after = errors.get(("family_out", "before")), errors.get(("family_out", "after"))
    if before is None:
        return {}
    out = {}
    for family in sorted(set(before[0]["fold"])):
        b = [part[part["fold"] == family].reset_index(drop=True) for part in before]
        a = [part[part["fold"] == family].reset_index(drop=True) for part in after]
        diff, lo, hi = paired_by_formula(b, a)
        out[str(family)] = {"rows": len(b[0]), "before": spread_over_seeds([p["error"] for p in b]),
                            "after": spread_over_seeds([p["error"] for p in a]), "diff": {"mean": diff, "ci95": [lo, hi]}}
    return out


def spread_over_seeds(errors: list[pd.Series]) -> dict[str, float]:
    """Mean and std over seeds of the MAE of each seed's ``errors`` (NaN for empty ones)."""
    maes = [e.mean() for e in errors]
    return {"mean": float(np.mean(maes)), "std": float(np.std(maes))}


def _cell(d: dict) -> str:
    return "-" if np.isnan(d["mean"]) else f"{d['mean']:.4f} ± {d['std']:.4f}"


def _diff_cell(d: dict) -> str:
    return f"{d['mean']:+.4f} [{d['ci95'][0]:+.4f}, {d['ci95'][1]:+.4f}]"


def markdown(results: dict) -> str:
    lines = ["# Two settings of the stacked model (benchmarks/stack_options.py)", "",
             f"{results['machine']}; seeds {results['seeds']}, {results['bags']} boosters, stacked model "
             f"{'with OT features (each fold its own alignment)' if results.get('ot') else 'without OT'}; "
             f"before = `{json.dumps(results['before'])}`, after = `{json.dumps(results['after'])}` (StackConfig overrides "
             f"of params.yaml's settings); {seeded.took(results)}.",
             "MAE mean ± std over seeds; difference after - before with a 95% bootstrap interval over formulas.", ""]
    for name in results["properties"]:
        r = results[name]
        lines += [f"## {name} ({r['unit']}), {r.get('folds', 'outer')} folds", "", "| protocol | rows (elements) | before | after | diff [95% CI] | "
                  "compounds before | compounds after | elements before | elements after |", "|---|---|---|---|---|---|---|---|---|"]
        for p, s in r["protocols"].items():
            lines.append(f"| {p} | {s['rows']} ({s['elements']}) | {_cell(s['before']['all'])} | {_cell(s['after']['all'])} | "
                         f"{_diff_cell(s['diff'])} | {_cell(s['before']['compounds'])} | "
                         f"{_cell(s['after']['compounds'])} | {_cell(s['before']['elements'])} | {_cell(s['after']['elements'])} |")
        lines.append("")
        if r.get("families"):
            lines += ["Family out, per held-out family:", "", "| family | rows | before | after | diff [95% CI] |",
                      "|---|---|---|---|---|"]
            for family, s in r["families"].items():
                lines.append(f"| {family} | {s['rows']} | {_cell(s['before'])} | {_cell(s['after'])} | {_diff_cell(s['diff'])} |")
            lines.append("")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = seeded.parser(__doc__, HERE / "stack_options_results.json")
    parser.add_argument("--before", type=json.loads, default={}, help="JSON overrides of the property's StackConfig")
    parser.add_argument("--after", type=json.loads, default={}, help="JSON overrides of the property's StackConfig")
    parser.add_argument("--threads", type=int, default=1, help="LightGBM threads")
    parser.add_argument("--nested", action="store_true", help="folds inside the evaluate folds' training parts")
    parser.add_argument("--ot", action="store_true", help="the stacked model with OT features (each fold's own "
                        "alignment on its training part), as served")
    args = parser.parse_args(argv)
    # each setting split once: its StackConfig overrides, and whether it gets the OT features (``"ot_features"``)
    settings, with_ot = {}, {}
    for name, setting in {"before": args.before, "after": args.after}.items():
        try:
            settings[name], with_ot[name] = split_setting(setting)
        except ValueError as exc:
            parser.error(f"--{name}: {exc}")
        if not with_ot[name] and not args.ot:
            parser.error(f'--{name}: "ot_features": false drops the OT features that only --ot gives')
    align = load_section(AlignParams, "align", args.params).config if args.ot else None
    return seeded.run(args, lambda name, params, train: run_property(name, params, train, settings, args.seeds,
                                                                     args.bags, args.threads, args.nested, align,
                                                                     with_ot),
                      markdown, before=args.before, after=args.after, nested=args.nested, ot=args.ot)


if __name__ == "__main__":
    raise SystemExit(main())
