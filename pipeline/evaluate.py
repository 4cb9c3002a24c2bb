"""``matshift evaluate --property P [--quick]``: leak-free out-of-distribution evaluation.

Reads ``data/raw/``, ``data/features/``, the align stage's measurement masses
(``data/aligned/<property>/experiment.parquet``, used only for the mass-against-error
plot), the surrogate stage's DFT surrogate (``data/surrogates/<property>/``, shared by every
fold; fitted here when absent or not this run's), with ``pretraining: train`` the pretrain
stage's encoders (``data/pretrained/<property>/``, likewise), and the ``align`` and ``train`` sections of params.yaml through the same schemas as
those stages (the alignment and every model are refitted per fold with exactly those
settings, apart from the documented cheaper per-fold training budget in
``evaluate.full``/``evaluate.quick``). :func:`models.evaluation.evaluate_property` does the
work; this stage writes:

* ``metrics/<property>.json`` (DVC metrics): per protocol MAE, RMSE and R^2 of every model
  and ablation, the mean training-to-test OT shift, the applicability-domain split, and the
  pooled out-of-distribution summary (LOCO + family-out + crystal-system-out), and (``seeds``,
  with ``stack_seeds`` > 1) the stacked models' MAE mean ± std over seeds with the OT features'
  paired interval;
* ``plots/<property>/``: ``folds.csv`` (the seeded folds), ``predictions.csv`` (parity, per
  test row and model), ``error_vs_shift.csv`` (per fold), ``mass_vs_error.csv``,
  ``seed_predictions.csv`` (the stacked models on every seed's folds), and PNGs.

Protocols (``models/evaluation/splits.py``): grouped CV by reduced formula, LOCO-CV (k-means on
standardised composition descriptors), leave-family-out, leave-crystal-system-out, and range
extrapolation (top 10% held out). Leakage rules: :mod:`models.evaluation.folds`.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
from pathlib import Path

from models import atomic_dir, write_json
from models.properties import PROPERTY_NAMES, Property, get_property
from models.tracking import TrackingError, log_evaluation_run, read_run_record
from models.transport import domains_from_tables
from pipeline import figures, readers
from pipeline.config import DEFAULT_PARAMS, flatten, load_section
from pipeline.errors import MatshiftError
from pipeline.params.align import AlignParams
from pipeline.params.evaluate import EvaluateParams
from pipeline.params.train import TrainParams
from pipeline.shared import check_correction_terms, read_pretrained, read_surrogate

log = logging.getLogger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--params", type=Path, default=DEFAULT_PARAMS, help="parameter file (default params.yaml)")
    parser.add_argument("--property", choices=PROPERTY_NAMES, required=True, help="which measured property to evaluate")
    parser.add_argument("--quick", action="store_true", help="the small evaluate.quick budget, a smoke run of about a "
                        "minute; writes metrics/quick/ and plots/quick/, never the full evaluation's files")
    parser.add_argument("--no-mlflow", action="store_true",
                        help="evaluate and write metrics/plots without logging an MLflow run")


def run(args: argparse.Namespace) -> int:
    # torch, PyG, scikit-learn, LightGBM: imported when the stage runs, not for `--help`
    from models.evaluation import evaluate_property, plot_tables, set_threads

    params = load_section(EvaluateParams, "evaluate", args.params)
    prop = get_property(args.property)
    align = load_section(AlignParams, "align", args.params).config
    train = load_section(TrainParams, "train", args.params)
    fit = train.fit
    quick = getattr(args, "quick", False)
    settings = params.quick if quick else params.full
    set_threads(params.threads)
    inputs = load_inputs(params, prop, extra=fit.extra_fidelities(prop),
                         use_graphs=settings.uses_graphs(fit.model.use_graphs),
                         surrogate_dir=train.surrogate_dir if fit.stack.enabled else None)
    # the train stage's encoders, for the folds' GNNs with pretraining: train
    gnns = any(m.startswith("gnn_") for m in settings.models)
    shared = settings.pretraining == "train" and gnns
    inputs.pretrained = read_pretrained(train.pretrained_dir / prop.name) if shared else None
    check_correction_terms(fit.stack_config(prop), inputs.descriptors, prop.name)
    try:
        result = evaluate_property(inputs, prop=prop, settings=settings, fit=fit, align=align, seed=params.seed,
                                   ad_k=params.ad_k, ad_threshold=params.ad_threshold, threads=params.threads,
                                   workers=params.workers, device=params.device, budget="quick" if quick else "full")
    except ValueError as exc:
        raise MatshiftError(f"evaluate {prop.name}: {exc}") from exc
    metrics_file, plots_dir = params.outputs(prop.name, quick=quick)
    metrics_file.parent.mkdir(parents=True, exist_ok=True)
    with atomic_dir(plots_dir) as tmp:
        for name, table in plot_tables(result).items():
            table.to_csv(tmp / f"{name}.csv", index=False, float_format=None if name == "folds" else "%.5g")
        figures.draw(tmp, result.result.predictions, result.result.folds, models=result.result.models,
                     unit=prop.unit, prop=prop.name)
    write_json(metrics_file, result.metrics, sort_keys=False)
    if not getattr(args, "no_mlflow", False):
        track(args, params, prop, result.metrics, [metrics_file, plots_dir])
    ood = result.metrics.get("pooled_ood", {})
    log.info("%s: evaluated in %.0f s; pooled OOD MAE %s; gain of %s vs best non-OT (%s): %s", prop.name,
             result.metrics["seconds"], json.dumps({k: round(v, 4) for k, v in ood.get("mae", {}).items()}),
             ood.get("ot_model"), ood.get("best_non_ot_model"), ood.get("gain_vs_best_non_ot"))
    seeds = result.metrics.get("seeds", {}).get("protocols", {}).get("pooled_ood")
    if seeds:
        parts = [f"{m} {seeds[m]['mean']:.4f} ± {seeds[m]['std']:.4f}" for m in ("stacked", "stacked_ot") if m in seeds]
        if "ot_features" in seeds:
            d = seeds["ot_features"]
            parts.append(f"OT features {d['diff']:+.4f} [{d['ci95'][0]:+.4f}, {d['ci95'][1]:+.4f}]")
        log.info("%s: pooled OOD MAE over seeds %s: %s", prop.name, result.metrics["seeds"]["seeds"], "; ".join(parts))
    return 0


def track(args: argparse.Namespace, params: EvaluateParams, prop: Property, metrics: dict, artifacts: list[Path]) -> None:
    """Log the evaluation to MLflow beside (as a child of) the train run of ``data/models/<property>``."""
    train = load_section(TrainParams, "train", args.params)
    # the one place the environment is read: MLflow's standard variable overrides params
    tracking_uri = os.environ.get("MLFLOW_TRACKING_URI", train.tracking_uri)
    try:
        log_evaluation_run(tracking_uri=tracking_uri, experiment=train.experiment, prop=prop.name,
                           params={"budget": "quick" if getattr(args, "quick", False) else "full",
                                   **flatten(params)},
                           metrics=metrics, artifacts=artifacts,
                           train_run=read_run_record(train.out_dir / prop.name))
    except TrackingError as exc:
        raise MatshiftError(f"{exc} (metrics and plots are written)") from exc


def load_inputs(params: EvaluateParams, prop: Property, *, extra: tuple[str, ...], use_graphs: bool,
                surrogate_dir: Path | None = None):
    """Read the tables :func:`models.evaluation.evaluate_property` needs, read by their contract names.

    ``surrogate_dir``: where the surrogate stage wrote its DFT surrogates (None: the stacked models fit their own).
    """
    # torch, PyG, scikit-learn: imported when the stage runs, not for `--help`
    from models.evaluation import EvaluationInputs

    try:
        source, target, _ = domains_from_tables(*readers.read_domain_tables(params.raw_dir, params.features_dir, prop),
                                                prop)
    except ValueError as exc:
        raise MatshiftError(str(exc)) from exc
    graphs = readers.read_graphs(params.features_dir, hint="set use_graphs: false") if use_graphs else None
    mass = None
    mass_path = params.aligned_dir / prop.name / "experiment.parquet"
    if mass_path.is_file():
        aligned = readers.read_table(mass_path, ["exp_id", "transported_mass"])
        # relative to the uniform marginal 1/n: 1 = fully matched, 0 = left behind (outlier)
        mass = aligned.set_index("exp_id")["transported_mass"] * len(aligned)
    return EvaluationInputs(source=source, target=target, dft=readers.read_dft(params.raw_dir, prop, extra=extra),
                            index=readers.read_index(params.features_dir),
                            descriptors=readers.read_descriptors(params.features_dir), graphs=graphs,
                            transported_mass=mass,
                            surrogate=None if surrogate_dir is None else read_surrogate(surrogate_dir / prop.name))
