"""The hybrid functional's correction as a term of the band-gap correction: HSE06 - PBE for every formula.

PBE's error against experiment grows with the gap and with the bonding's ionicity; HSE06 removes
part of it, and the mirror holds an HSE06 gap for 2,570 DFT formulas. The difference HSE06 - PBE
is therefore a DFT-side estimate of how wrong PBE is for a composition, known for halides and
oxides even when no halide or oxide was measured: as a linear term of the stacked model's ridge
correction (like ``train.stack.correction_terms``, z-scored on the training rows, clipped to
their range) it could carry the halides' larger correction to a held-out family. The difference
is learnt for every formula by a cross-fitted :class:`models.learners.DFTSurrogate` on the DFT
labels alone (400 trees of 31 leaves, with the bonding columns; no measurement seen), its
out-of-fold value for formulas it was fitted on.

Variants (``--variant``): ``add`` the term beside the served terms; ``replace`` it instead of
them; ``known`` as ``add`` with a formula's own HSE06 - PBE where computed; ``feature`` the surrogate's HSE06 - PBE as one more
column of the boosters (beside the known HSE06, GLLB-SC and SCAN gaps), not in the ridge correction (``--fidelity``
names the columns learnt: DFT fidelities; ``metal_likeness``, a score learnt from the measured metals; ``encoder``, the
leading principal components of the pretrain stage's DFT-only crystal-graph and composition encoder, frozen as the
GNN members use it, ``--components`` of them); ``pseudo``
the DFT formulas that have the first ``--fidelity``'s gap and no measurement as more training rows of the served model,
labelled with that gap (pseudo-measurements from the higher fidelity; no surrogate). Each is paired with
the served band-gap model (OT features: each fold's own alignment and shift field) on the
evaluate stage's folds (``--nested``: folds inside their training parts), 2 boosters on one thread each as
there (two threads beside other work stall in OpenMP's spinning), per
protocol and for the halide and oxide family-out folds: MAE before and after, the paired
difference with a 95% bootstrap interval over formulas.

    PYTHONPATH=. python -m benchmarks.hse_term --variant add --seeds 0
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from benchmarks import seeded
from benchmarks.metal_features import paired_by_formula
from benchmarks.stack_options import inner_folds
from models.evaluation.folds import fold_shift_field
from models.evaluation.run import _problem, _train_pretraining, stack_inputs
from models.evaluation.splits import loco_descriptors, make_folds
from models.learners import DFTSurrogate, StackedModel, frozen_embeddings
from models.properties import get_property, reference_per_formula
from pipeline.config import DEFAULT_PARAMS, load_section
from pipeline.evaluate import load_inputs
from pipeline.params.align import AlignParams
from pipeline.params.evaluate import EvaluateParams
from pipeline.params.train import TrainParams
from pipeline.shared import read_pretrained

HERE = Path(__file__).resolve().parent


def _cross_fitted(descriptors: pd.DataFrame, config, label: pd.Series, formulas: list[str]
                  ) -> tuple[dict[str, float], DFTSurrogate]:
    """A cross-fitted :class:`DFTSurrogate` of ``label`` (400 trees of 31 leaves, bonding columns) and its value per formula."""
    surrogate = DFTSurrogate(replace(config, surrogate_trees=400, surrogate_leaves=31, surrogate_lr=0.05,
                                     surrogate_bonding=True)).fit(descriptors, label)
    unique = sorted(set(formulas))
    return dict(zip(unique, surrogate.predict(descriptors, unique), strict=True)), surrogate


def hse_minus_pbe(dft: pd.DataFrame, descriptors: pd.DataFrame, config, formulas: list[str], *,
                  known: bool, fidelity: str = "band_gap_hse") -> tuple[dict[str, float], dict]:
    """HSE06 - PBE per formula of ``formulas`` (surrogate; with ``known`` the formula's own where computed).

    ``fidelity``: the DFT table's column of the higher fidelity (HSE06 by default; ``band_gap_gllb_sc`` for GLLB-SC).
    """
    pbe = reference_per_formula(dft.assign(dft_value=dft["band_gap_pbe"]))
    hse = reference_per_formula(dft, value=fidelity)
    delta = (hse - pbe.reindex(hse.index)).dropna()
    t0 = time.perf_counter()
    values, surrogate = _cross_fitted(descriptors, config, delta, formulas)
    if known:
        values.update({f: float(v) for f, v in delta.items() if f in values})
    info = {"formulas_with_hse": len(delta), "mean_difference": float(delta.mean()),
            "surrogate_out_of_fold_mae": surrogate.mae_, "std": float(delta.std()),
            "seconds": round(time.perf_counter() - t0, 1)}
    return values, info


def metal_likeness(dft: pd.DataFrame, descriptors: pd.DataFrame, config, formulas: list[str], raw_dir: Path
                   ) -> tuple[dict[str, float], dict]:
    """A score of how metal-like a composition is, per formula of ``formulas`` (``--fidelity metal_likeness``).

    A cross-fitted surrogate (as :func:`hse_minus_pbe`'s) of 1 for the measured metals of ``expt_is_metal``
    (those without a measured gap: every one but a conflict) against 0 for the DFT formulas with a PBE gap above
    0.5 eV: measured information the band-gap model does not see otherwise, on no measured gap.
    """
    classes = pd.read_parquet(raw_dir / "metal_class.parquet")
    have = set(descriptors["formula"])
    metals = sorted((set(classes.loc[classes["is_metal"] == 1, "formula"]) - set(formulas)) & have)
    pbe = dft.groupby("formula")["band_gap_pbe"].min()
    clear = sorted((set(pbe[pbe > 0.5].index) - set(metals)) & have)
    label = pd.concat([pd.Series(1.0, index=metals), pd.Series(0.0, index=clear)])
    t0 = time.perf_counter()
    values, surrogate = _cross_fitted(descriptors, config, label, formulas)
    return values, {"formulas_with_hse": len(label), "metals": len(metals), "mean_difference": float(label.mean()),
                    "surrogate_out_of_fold_mae": surrogate.mae_, "seconds": round(time.perf_counter() - t0, 1)}


def encoder_columns(inputs, problem, fit, prop, components: int) -> tuple[dict[str, dict[str, float]], dict]:
    """The pretrain stage's frozen encoder output per measured formula, as ``components`` principal components.

    The encoder learnt the DFT labels of every DFT entry (no measurement): its output is a chemistry representation
    the stacked model's descriptors may lack. The components are fitted on the problem's DFT rows (z-scored output);
    a formula's value is the mean over its measurement rows (their crystal graphs as the GNN members see them).
    """
    t0 = time.perf_counter()
    states = _train_pretraining(inputs, fit, prop, device=torch.device("cpu"), workers=1)
    table = problem["table"]
    out = frozen_embeddings(table, fit.train_config(prop), states[0]).numpy()
    measured = np.asarray(table.is_experiment, bool)
    dft = out[~measured]
    mean, std = dft.mean(axis=0), dft.std(axis=0) + 1e-9
    z = (dft - mean) / std
    centre = z.mean(axis=0)
    _, s, vt = np.linalg.svd(z - centre, full_matrices=False)
    comps = ((out[measured] - mean) / std - centre) @ vt[:components].T
    per_formula = pd.DataFrame(comps, index=np.asarray(table.formulas, dtype=object)[measured]).groupby(level=0).mean()
    values = {f"encoder_pc{j}": per_formula[j].to_dict() for j in range(components)}
    explained = float((s[:components] ** 2).sum() / (s ** 2).sum())
    return values, {"width": out.shape[1], "components": components, "explained_variance": round(explained, 3),
                    "seconds": round(time.perf_counter() - t0, 1)}


def with_term(values: dict[str, float]) -> type[StackedModel]:
    """A :class:`StackedModel` whose ridge correction also takes ``values[formula]`` (z-scored, clipped)."""

    class HSETerm(StackedModel):
        def _term(self, formulas: list[str]) -> np.ndarray:
            return np.array([values[f] for f in formulas], float)

        def _fit_correction(self, formulas, x, y):
            v = self._term(formulas)
            self._hse = (v.mean(), v.std() or 1.0, v.min(), v.max())
            return super()._fit_correction(formulas, x, y)

        def _fractions(self, formulas, x):
            out = super()._fractions(formulas, x)
            center, scale, low, high = self._hse
            return np.column_stack([out, (np.clip(self._term(formulas), low, high) - center) / scale])

    return HSETerm


def with_rows(dft: pd.DataFrame, descriptors: pd.DataFrame, measured: list[str], fidelity: str
              ) -> tuple[type[StackedModel], dict]:
    """A :class:`StackedModel` fitted on its training rows plus every unmeasured DFT formula labelled with its ``fidelity`` gap."""
    value = reference_per_formula(dft, value=fidelity).dropna()
    rows = sorted((set(value.index) - set(measured)) & set(descriptors["formula"]))
    labels = value.reindex(rows).to_numpy(float)

    class PseudoRows(StackedModel):
        def fit(self, descriptors, formulas, y, **kw):
            return super().fit(descriptors, [*formulas, *rows], np.concatenate([np.asarray(y, float), labels]), **kw)

    return PseudoRows, {"pseudo_rows": len(rows), "mean_label": float(labels.mean())}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--params", type=Path, default=DEFAULT_PARAMS)
    parser.add_argument("--variant", choices=["add", "replace", "known", "feature", "pseudo"], default="add")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--fidelity", nargs="+", default=["band_gap_hse"],
                        help="higher fidelities (DFT table columns) whose difference to PBE is learnt, metal_likeness, or "
                             "encoder (with --variant feature); feature takes each")
    parser.add_argument("--components", type=int, default=8, help="with --fidelity encoder: principal components kept")
    parser.add_argument("--nested", action="store_true")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args(argv)
    params = load_section(EvaluateParams, "evaluate", args.params)
    train = load_section(TrainParams, "train", args.params)
    prop = get_property("band_gap")
    align = load_section(AlignParams, "align", args.params).config.for_property(prop)
    full = params.full
    graphs = "encoder" in args.fidelity  # the encoder reads the measurements' crystal graphs
    inputs = load_inputs(params, prop, extra=train.fit.extra_fidelities(prop), use_graphs=graphs)
    if graphs:
        inputs.pretrained = read_pretrained(train.pretrained_dir / prop.name)
    problem = _problem(inputs, full, seed=params.seed, use_graphs=graphs)
    exp = problem["experiment"]
    formulas, y = exp["formula"].tolist(), exp["value"].to_numpy(float)
    stack = stack_inputs(inputs.dft, inputs.descriptors, replace(full, stack_bags=2), train.fit, prop, threads=1)
    learnt: dict[str, tuple[dict[str, float], dict]] = {}
    if args.variant == "pseudo":
        variant, info = with_rows(inputs.dft, inputs.descriptors, formulas, args.fidelity[0])
        print(f"{info['pseudo_rows']} pseudo-measurements ({args.fidelity[0]}, mean {info['mean_label']:.3f})", flush=True)
    else:
        for name in args.fidelity:
            if name == "encoder" and args.variant != "feature":
                parser.error("--fidelity encoder goes with --variant feature")
            learnt[name] = (metal_likeness(inputs.dft, inputs.descriptors, stack.config, formulas, params.raw_dir)
                            if name == "metal_likeness" else
                            encoder_columns(inputs, problem, train.fit, prop, args.components) if name == "encoder" else
                            hse_minus_pbe(inputs.dft, inputs.descriptors, stack.config, formulas,
                                          known=args.variant == "known", fidelity=name))
            print(f"{name}: {learnt[name][1]}", flush=True)
        values, info = learnt[args.fidelity[0]]
        variant = StackedModel if args.variant == "feature" else with_term(values)
    after = {"correction_terms": ()} if args.variant == "replace" else {}
    extra_after = None
    if args.variant == "feature":
        extra_after = dict(stack.extra_reference)
        for name, (v, _) in learnt.items():
            extra_after.update({k: pd.Series(c) for k, c in v.items()} if name == "encoder"
                               else {f"{name}_surrogate": pd.Series(v)})
    errors: dict[tuple[str, str], list[pd.DataFrame]] = {}
    for seed in args.seeds:
        folds = make_folds(full, formulas, y, exp["crystal_system"].tolist(), inputs.descriptors, seed=seed)
        if args.nested:
            folds = inner_folds(folds, y, formulas, seed=seed, descriptors=loco_descriptors(inputs.descriptors, formulas),
                                clusters=full.loco_clusters)
        fields = [fold_shift_field(problem["source"], problem["target"], inputs.descriptors, f, align,
                                   k=stack.config.ot_neighbours) for f in folds]
        for name, model, over, extra in (("before", StackedModel, {}, None), ("after", variant, after, extra_after)):
            tab = seeded.fold_errors(replace(stack.config, seed=seed, **over), stack, inputs.descriptors, formulas, y,
                                     folds, model=model, shift_fields=fields, extra_reference=extra)
            tab = seeded.with_pooled_ood(tab)
            parts = dict(list(tab.groupby("protocol")))
            if not args.nested:
                for family in ("halide", "oxide"):
                    parts[f"family_out: {family}"] = tab[(tab["protocol"] == "family_out") & (tab["fold"] == family)]
            for protocol, part in parts.items():
                errors.setdefault((protocol, name), []).append(part.reset_index(drop=True))
    table = {}
    for protocol in sorted({p for p, _ in errors}):
        before, after_ = errors[(protocol, "before")], errors[(protocol, "after")]
        diff, lo, hi = paired_by_formula(before, after_)
        table[protocol] = {"before": float(np.mean([p["error"].mean() for p in before])),
                           "after": float(np.mean([p["error"].mean() for p in after_])), "diff": diff, "ci95": [lo, hi]}
        print(f"{protocol:24s} {table[protocol]['before']:.4f} -> {table[protocol]['after']:.4f}  {diff:+.4f} "
              f"[{lo:+.4f}, {hi:+.4f}]", flush=True)
    if args.out:
        args.out.write_text(json.dumps({"variant": args.variant, "fidelity": args.fidelity, "seeds": args.seeds, "nested": args.nested,
                                        "difference": info, "protocols": table}, indent=1) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
