r"""``matshift metal``: the metal / non-metal classifier, cross-validated, served beside the band-gap model.

Reads ``data/raw/metal_class.parquet`` (measured classes), the band-gap measurements and the
DFT entries of ``data/raw/``, ``data/features/`` (descriptors; crystal systems for the
crystal-system-out protocol) and the surrogate stage's band-gap DFT surrogate
(``data/surrogates/band_gap/``: the classifier's PBE-gap column and the regressor's surrogate,
fitted once for train, evaluate and this stage; fitted here when absent or not this run's). The
band-gap regressor of the cross-validation is the train stage's stacked model without OT
(``train.stack``, read through the train stage's schema) with ``metal.regressor_bags`` boosters.
:mod:`models.evaluation.metal` says what a fold does and which formulas are labelled. Writes:

* ``data/models/metal/``: the classifier fitted on every labelled formula
  (:func:`models.learners.save_metal`; its header holds the threshold and the model card),
  ``oof.parquet`` (grouped-CV out-of-fold probabilities, first seed) and ``card.md``;
* ``metrics/metal.json`` (DVC metrics): per protocol ROC-AUC, balanced accuracy, F1,
  precision, recall, all-compositions and non-metal band-gap MAE (with and without the
  classifier, the paired difference and its 95% bootstrap interval); grouped CV as mean and
  standard deviation over ``metal.cv_seeds``;
* ``plots/metal/``: ``predictions.csv`` (out of fold, every protocol), ``roc.png`` and
  ``threshold.png`` (:func:`pipeline.figures.draw_metal`);
* an MLflow run, the classifier registered as ``matshift-metal``.

The served threshold is chosen on the grouped-CV out-of-fold probabilities of the first seed
(training folds only; no held-back data exist): :func:`models.evaluation.served_threshold`.
"""

from __future__ import annotations

import argparse
import logging
import os
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import pandas as pd

from models import atomic_dir, write_json, write_parquet, write_text
from models.properties import get_property
from pipeline import figures, readers
from pipeline.config import DEFAULT_PARAMS, flatten, load_section, to_dict
from pipeline.errors import MatshiftError
from pipeline.params.metal import MetalParams
from pipeline.params.train import TrainParams
from pipeline.shared import check_correction_terms, read_surrogate

log = logging.getLogger(__name__)

RERUN = "run `matshift fetch` and `matshift featurize` first"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--params", type=Path, default=DEFAULT_PARAMS, help="parameter file (default params.yaml)")
    parser.add_argument("--no-mlflow", action="store_true", help="fit and write outputs without MLflow logging")


def load_inputs(params: MetalParams, train: TrainParams) -> dict[str, Any]:
    """Read the stage's inputs by their contract names (docs/ARCHITECTURE.md)."""
    prop = get_property("band_gap")
    dft = readers.read_dft(params.raw_dir, prop, extra=train.fit.extra_fidelities(prop))
    return {"dft": dft.rename(columns={prop.dft_column: "dft_value"}),
            "classes": readers.read_table(params.raw_dir / "metal_class.parquet", ["formula", "is_metal"], rerun=RERUN),
            "gaps": readers.read_measurements(params.raw_dir, prop),
            "descriptors": readers.read_descriptors(params.features_dir),
            "crystal_system": readers.read_index(params.features_dir)["crystal_system"]}


def run(args: argparse.Namespace) -> int:
    # LightGBM, scikit-learn, MLflow: imported when the stage runs, not for `--help`
    from models.evaluation import (
        metal_card,
        metal_cv_groups,
        metal_summary,
        operating_points,
        prepare_metal,
        served_threshold,
    )
    from models.learners import save_metal
    from models.serving import TrackingError, ensure_store, log_metal_run

    params = load_section(MetalParams, "metal", args.params)
    train = load_section(TrainParams, "train", args.params)
    tracking_uri = os.environ.get("MLFLOW_TRACKING_URI", params.tracking_uri)
    log_mlflow = not args.no_mlflow
    if log_mlflow:  # fail in seconds, before minutes of fitting, when the store is unusable
        try:
            ensure_store(tracking_uri)
        except TrackingError as exc:
            raise MatshiftError(str(exc)) from exc
    prop = get_property("band_gap")
    stack = train.fit.stack_config(prop)
    if stack is None:
        raise MatshiftError("metal: the band-gap regressor is the stacked model; set train.stack.enabled: true")
    t0 = time.perf_counter()
    inputs = load_inputs(params, train)
    check_correction_terms(stack, inputs["descriptors"], prop.name)
    # folds in worker processes: one LightGBM thread everywhere until they are done (models/parallel.py)
    n_jobs = params.classifier.n_jobs if params.cv.workers <= 1 else 1
    plan = prepare_metal(**inputs, config=replace(params.classifier, n_jobs=n_jobs),
                         stack=replace(stack, bags=params.cv.regressor_bags, n_jobs=n_jobs),
                         cv=params.cv, extra_columns=train.fit.extra_fidelities(prop),
                         gap_surrogate=read_surrogate(train.surrogate_dir / prop.name))
    if plan.counts["without_descriptors"]:
        log.warning("metal: %d labelled formulas have no descriptors and are left out (rerun `matshift featurize`)",
                    plan.counts["without_descriptors"])
    results = metal_cv_groups(plan.data, plan.folds, inner_folds=params.cv.inner_folds, seed=params.classifier.seed,
                              workers=params.cv.workers, inner=params.cv.inner_config(plan.data.classifier.config),
                              on_fold=lambda k, n, msg: log.info("metal: fold %d/%d %s", k + 1, n, msg))
    metrics = metal_summary(results)
    first = next(iter(results.values()))
    served = served_threshold(*first)
    points = operating_points(*first)  # the same rows: other thresholds a user may take (predict --metal-threshold)
    final = plan.data.classifier_for_fold(params.classifier).fit(plan.data.descriptors, list(plan.data.labels.index),
                                                plan.data.labels.to_numpy())
    counts = {k: v for k, v in plan.counts.items() if k != "left_out_formulas"}
    metrics |= {"served": served, "operating_points": points, "data": counts,
                "seconds": round(time.perf_counter() - t0, 1)}
    with atomic_dir(params.out_dir) as tmp:
        save_metal(final, tmp, threshold=served["threshold"], card=served, counts=plan.counts,
                   grouped_cv=metrics["grouped_cv"], config=to_dict(params))
        write_parquet(tmp / "oof.parquet", first[0])
        write_text(tmp / "card.md", metal_card(metrics, served, plan.counts, points))
    write_json(params.metrics_dir / "metal.json", metrics)
    with atomic_dir(params.plots_dir / "metal") as tmp:
        pd.concat([pf.merge(pr.groupby("formula")[["measured", "regressor"]].mean().reset_index(), on="formula",
                            how="left") for pf, pr in results.values()], ignore_index=True
                  ).to_csv(tmp / "predictions.csv", index=False)
        figures.draw_metal(tmp, results, threshold=served["threshold"])
    g = metrics["grouped_cv"]
    log.info("metal: grouped CV ROC-AUC %.4f ± %.4f, all-compositions MAE %.3f ± %.3f eV (regressor alone %.3f), "
             "non-metal MAE %.3f vs %.3f; served threshold %.2f (precision %.3f, recall %.3f) in %.0f s",
             g["roc_auc"]["mean"], g["roc_auc"]["std"], g["mae_all"]["mean"], g["mae_all"]["std"],
             g["mae_all_regressor_only"]["mean"], g["mae_nonmetal"]["mean"], g["mae_nonmetal_regressor_only"]["mean"],
             served["threshold"], served["precision"], served["recall"], metrics["seconds"])
    if log_mlflow:
        log_metal_run(tracking_uri=tracking_uri, experiment=train.experiment, params=flatten(params), metrics=metrics,
                      model_dir=params.out_dir, registered_name="matshift-metal" if params.register else None,
                      example=pd.DataFrame({"formula": list(plan.data.labels.index[:5])}))
    return 0
