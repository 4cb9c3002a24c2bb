"""``matshift pretrain --property P``: the train stage's DFT-only GNN pretraining, computed once as its own output.

The train stage's GNN members start from encoders pretrained on DFT labels alone
(:func:`models.learners.pretrain_members`: no measurement, no calibrated target), so they
depend on the DFT entries, their descriptors and crystal graphs and a few settings
(``train.seed``, ``train.encoders``, ``train.members``, ``train.model`` and the ``train.optim``
fields of :data:`models.learners.PRETRAIN_FIELDS`), and on nothing the align stage or the
fine-tuning settings change. Reads ``data/raw/dft.parquet`` and ``data/features/``
(``descriptors.parquet``, ``graphs.pt`` with ``train.model.use_graphs``); writes
``data/pretrained/<property>/`` (``pretrained.json``: settings, the sha256 of each state file
and a fingerprint of the DFT rows; ``encoder_<k>.pt``: plain tensors).

The train stage takes the encoders from there when their settings and fingerprint are the ones
it would pretrain with (:func:`models.learners.reuse_pretrained`), and pretrains itself
otherwise, saying why: a stale directory never changes a number. With
``train.optim.pretrain_epochs: 0`` there is nothing to pretrain and the stage writes no encoder.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from models import atomic_dir
from models.properties import PROPERTY_NAMES, get_property
from pipeline import readers
from pipeline.config import DEFAULT_PARAMS, load_section
from pipeline.errors import MatshiftError
from pipeline.params.train import TrainParams

log = logging.getLogger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--params", type=Path, default=DEFAULT_PARAMS, help="parameter file (default params.yaml)")
    parser.add_argument("--property", choices=PROPERTY_NAMES, required=True,
                        help="whose DFT labels the encoders are pretrained on")


def run(args: argparse.Namespace) -> int:
    # torch and PyG: imported when the stage runs, not for `--help`
    from models.learners import (
        PretrainedEncoders,
        determine_device,
        pretrain_settings,
        pretraining_table,
        save_pretrained,
    )
    from models.progress import showing

    params = load_section(TrainParams, "train", args.params)
    prop = get_property(args.property)
    fit = params.fit
    out = params.pretrained_dir / prop.name
    if not fit.optim.pretrain_epochs:
        with atomic_dir(out) as tmp:
            save_pretrained(PretrainedEncoders(states=[], settings=pretrain_settings(fit, prop), fingerprint=""), tmp)
        log.info("pretrain %s: train.optim.pretrain_epochs is 0, nothing to pretrain -> %s", prop.name, out)
        return 0
    graphs = (readers.read_graphs(params.features_dir, hint="set train.model.use_graphs: false")
              if fit.model.use_graphs else None)
    try:
        table = pretraining_table(readers.read_dft(params.raw_dir, prop), prop,
                                  descriptors=readers.read_descriptors(params.features_dir), graphs=graphs)
        pretrained = PretrainedEncoders.fit(table, fit, prop, device=determine_device(fit.device),
                                            workers=fit.workers, progress=showing())
    except ValueError as exc:
        raise MatshiftError(f"pretrain {prop.name}: {exc}") from exc
    with atomic_dir(out) as tmp:
        save_pretrained(pretrained, tmp)
    log.info("pretrain %s: %d encoder(s) pretrained on %d DFT entries in %.0f s -> %s", prop.name,
             len(pretrained.states), int((~table.is_experiment).sum()), pretrained.seconds, out)
    return 0
