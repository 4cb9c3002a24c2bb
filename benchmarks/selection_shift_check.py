"""Does the train stage's selection score of the stacked model with OT features read the selection measurements?

The align stage aligns every DFT entry to every measurement. Under its hard block a formula's calibrated targets
are its own measurements, so the GNNs of the train stage no longer see those of the selection formulas
(``models/learners/fit.py``). The stacked model's shift field never reads a formula's own shift, but a selection
formula's nearest aligned formulas may be other selection formulas, whose shifts come from their measurements.
This refits the stacked model with OT features on the train stage's training part twice, with the shift field
of every aligned formula (as the stage scores it and serves it) and without the selection formulas' shifts, and
prints the selection MAE of both with the paired difference (95% bootstrap interval over formulas).

``PYTHONPATH=. python -m benchmarks.selection_shift_check band_gap formation_enthalpy`` (after ``dvc repro train``:
it reads the stage inputs; about a minute per property on two cores).
"""

from __future__ import annotations

import argparse

import numpy as np
import pandas as pd

from models.evaluation import paired_by_formula
from models.learners import reuse_surrogate, without_calibrated_targets
from models.learners.fit import _fit_stacked, _split
from models.properties import PROPERTY_NAMES, get_property, reference_per_formula
from pipeline.config import DEFAULT_PARAMS, load_section
from pipeline.params.train import TrainParams
from pipeline.train import load_inputs


def check(name: str, params: TrainParams) -> dict[str, float]:
    prop = get_property(name)
    inputs = load_inputs(params, prop)
    fit, dft, desc = params.fit, inputs["dft"], inputs["descriptors"]
    config = fit.stack_config(prop)
    ref = reference_per_formula(dft)
    surrogate = reuse_surrogate(inputs["surrogate"], config, desc, ref, who=f"check {name}")
    split = _split(dft, inputs["experiment"], desc, ref, None, fit)
    errors = {}
    for label, shifts in (("every shift", dft),
                          ("without the selection's", without_calibrated_targets(dft, split.sel["formula"]))):
        frame = pd.DataFrame(index=range(len(split.sel)))
        _fit_stacked(shifts, desc, ref, split, frame, config, extra_fidelities=fit.extra_fidelities(prop),
                     ot_features=True, surrogate=surrogate)
        errors[label] = np.abs(frame["stacked_ot"].to_numpy() - split.sel["value"].to_numpy())
    diff, low, high = paired_by_formula(errors["every shift"], errors["without the selection's"],
                                        split.sel["formula"].to_numpy())
    every, without = errors["every shift"].mean(), errors["without the selection's"].mean()
    print(f"{name} ({prop.unit}): selection MAE with every shift {every:.4f}, without the selection formulas' shifts "
          f"{without:.4f}; difference {diff:+.4f} [{low:+.4f}, {high:+.4f}]", flush=True)
    return {"difference": diff, "low": low, "high": high}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("properties", nargs="+", choices=PROPERTY_NAMES)
    parser.add_argument("--params", default=DEFAULT_PARAMS, help="parameter file (default params.yaml)")
    args = parser.parse_args(argv)
    params = load_section(TrainParams, "train", args.params)
    for name in args.properties:
        check(name, params)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
