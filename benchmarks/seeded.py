"""The command line, result files and fold loop shared by the seeded model benchmarks.

Each (extrapolation, mixture, rearrangement, stack_options) runs per property over seeds on the
evaluate stage's folds and writes ``<out>.json`` (everything) and ``<out>.md`` (the table),
printing the table too. :func:`fold_errors` fits the stacked model on every fold's training part.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import NamedTuple

import numpy as np
import pandas as pd

from models.evaluation.config import OOD_PROTOCOLS, EvalSettings
from models.evaluation.folds import StackInputs
from models.evaluation.run import EvaluationInputs, _problem, stack_inputs
from models.learners import StackConfig, StackedModel
from models.properties import PROPERTY_NAMES, Property, get_property
from pipeline.config import DEFAULT_PARAMS, load_section
from pipeline.evaluate import load_inputs
from pipeline.params.evaluate import EvaluateParams
from pipeline.params.train import TrainParams

__all__ = ["EvaluateProblem", "evaluate_problem", "fold_errors", "parser", "run", "took", "with_pooled_ood"]


def parser(doc: str, out: Path, *, bags_help: str | None = None) -> argparse.ArgumentParser:
    """``--params --property --seeds --bags --load --out``; the caller adds its own options."""
    p = argparse.ArgumentParser(description=doc.split("\n")[0])
    p.add_argument("--params", type=Path, default=DEFAULT_PARAMS)
    p.add_argument("--property", choices=PROPERTY_NAMES, nargs="+", default=list(PROPERTY_NAMES))
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--bags", type=int, default=2, help=bags_help)
    p.add_argument("--load", default="", help="what else ran on the machine meanwhile (written into the results)")
    p.add_argument("--out", type=Path, default=out)
    return p


def run(args: argparse.Namespace, per_property: Callable[[str, EvaluateParams, TrainParams], dict],
        markdown: Callable[[dict], str], **settings) -> int:
    """Run ``per_property`` for each of ``args.property``; write and print the results (``settings`` recorded in them)."""
    params = load_section(EvaluateParams, "evaluate", args.params)
    train = load_section(TrainParams, "train", args.params)
    t0 = time.perf_counter()
    results: dict = {"properties": args.property, "seeds": args.seeds, "bags": args.bags, **settings, "load": args.load,
                     "machine": f"{platform.machine()}, {os.cpu_count()} cores"}
    for name in args.property:
        results[name] = per_property(name, params, train)
    results["seconds"] = time.perf_counter() - t0
    args.out.write_text(json.dumps(results, indent=1), encoding="utf-8")
    text = markdown(results).rstrip("\n")
    args.out.with_suffix(".md").write_text(text + "\n", encoding="utf-8")
    print(text)
    return 0



def took(results: dict) -> str:
    """``results``' run time and, when recorded, what else ran meanwhile, as the tables' headers print them."""
    return f"{results['seconds']:.0f} s" + (f"; {results['load']}" if results.get("load") else "")

class EvaluateProblem(NamedTuple):
    """One property's measurements as the evaluate stage sees them, and the stacked models' shared inputs."""

    prop: Property
    settings: EvalSettings
    inputs: EvaluationInputs
    experiment: pd.DataFrame
    formulas: list[str]
    y: np.ndarray
    stack: StackInputs


def evaluate_problem(name: str, params: EvaluateParams, train: TrainParams, *, bags: int,
                     settings: EvalSettings | None = None, threads: int = 1) -> EvaluateProblem:
    """Read ``name``'s tables as the evaluate stage does (without crystal graphs); the stacked models on ``bags`` boosters.

    ``settings``: the evaluate settings (default ``params.full``).
    """
    prop = get_property(name)
    settings = params.full if settings is None else settings
    inputs = load_inputs(params, prop, extra=train.fit.extra_fidelities(prop), use_graphs=False)
    exp = _problem(inputs, settings, seed=params.seed)["experiment"]
    stack = stack_inputs(inputs.dft, inputs.descriptors, replace(settings, stack_bags=bags), train.fit, prop,
                         threads=threads)
    return EvaluateProblem(prop, settings, inputs, exp, exp["formula"].tolist(), exp["value"].to_numpy(float), stack)


def fold_errors(config: StackConfig, stack, descriptors: pd.DataFrame, formulas: list[str], y: np.ndarray, folds: list,
                *, extra_reference: dict[str, pd.Series] | None = None, model: type[StackedModel] = StackedModel,
                shift_fields: list | None = None) -> pd.DataFrame:
    """Fit the stacked model on each fold's training part; per test row: protocol, fold, row, formula, absolute error.

    ``stack``: the evaluate stage's shared inputs (:func:`models.evaluation.run.stack_inputs`: DFT
    references and surrogate); ``extra_reference`` replaces its extra references when given;
    ``model``: a subclass of :class:`StackedModel` to fit instead (a variant under test);
    ``shift_fields``: one :class:`models.learners.ShiftField` per fold (its own alignment's): the
    model with OT features, as served; None: without.
    """
    extra = stack.extra_reference if extra_reference is None else extra_reference
    if shift_fields is not None and len(shift_fields) != len(folds):
        raise ValueError(f"fold_errors: {len(folds)} folds but {len(shift_fields)} shift fields")
    rows = []
    for k, f in enumerate(folds):
        fitted = model(config, dft_reference=stack.dft_reference, surrogate=stack.surrogate, extra_reference=extra,
                       shift_field=None if shift_fields is None else shift_fields[k])
        fitted.fit(descriptors, [formulas[i] for i in f.train], y[f.train])
        pred = fitted.predict(descriptors, [formulas[i] for i in f.test])
        rows.append(pd.DataFrame({"protocol": f.protocol, "fold": f.name, "row": f.test,
                                  "formula": [formulas[i] for i in f.test], "error": np.abs(pred - y[f.test])}))
    return pd.concat(rows, ignore_index=True)


def with_pooled_ood(table: pd.DataFrame) -> pd.DataFrame:
    """``table`` plus its OOD protocols' rows again as protocol ``pooled_ood``."""
    return pd.concat([table, table[table["protocol"].isin(OOD_PROTOCOLS)].assign(protocol="pooled_ood")])
