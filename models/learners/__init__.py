"""Learners: everything that is fitted to measurements, and fitting a whole property.

Layer: above :mod:`models.transport` and :mod:`models.nets`, below evaluation and serving.
``config`` holds the training settings validated from ``params.yaml`` (:class:`FitConfig`);
``table``, ``losses``, ``training``, ``distributed`` train the GNNs, ``pretrained`` keeps their
DFT pretraining (the pretrain stage's); ``baselines``,
``stacked``, ``shift_field`` are the other models, ``metal`` the metal classifier, ``intervals`` the conformal prediction intervals; ``applicability`` scores inputs against the
training data; ``fit`` fits and writes everything for one property (the train stage).
Torch and scikit-learn modules are imported on first use of one of their names, so serving
the stacked model imports neither.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from models._io import lazy_exports
from models.learners import applicability, config, intervals, metal, shift_field, stacked
from models.learners.applicability import *
from models.learners.config import *
from models.learners.intervals import *
from models.learners.metal import *
from models.learners.shift_field import *
from models.learners.stacked import *

if TYPE_CHECKING:  # what the lazy names below resolve to, for type checkers and import analysis
    from models.learners.baselines import *
    from models.learners.distributed import *
    from models.learners.fit import *
    from models.learners.losses import *
    from models.learners.pretrained import *
    from models.learners.table import *
    from models.learners.training import *

# torch and scikit-learn are imported on first use: serving the stacked model needs neither
_LAZY = {
    "baselines": (
        "DescriptorForest", "LinearCalibration", "RawDFT", "load_forest", "mae", "save_forest",
    ),
    "table": (
        "EntryTable", "encode_compositions", "grouped_split",
    ),
    "losses": (
        "scaling_unbalanced_sinkhorn", "unbalanced_sinkhorn", "uot_embedding_loss",
    ),
    "training": (
        "DataParallelHook", "EnsembleResult", "EpochRecord", "Prediction", "TrainResult", "build_model",
        "determine_device", "frozen_embeddings", "predict", "predict_ensemble", "pretrain_members", "seed_everything",
        "train_ensemble", "train_model",
    ),
    "pretrained": (
        "PRETRAIN_FIELDS", "PretrainedEncoders", "load_pretrained", "pretrain_settings", "pretraining_table",
        "reuse_pretrained", "save_pretrained",
    ),
    "distributed": (
        "DataParallel", "init_from_env", "is_writer", "shutdown",
    ),
    "fit": (
        "FitResult", "fit_property", "without_calibrated_targets", "write_outputs",
    ),
}
__getattr__ = lazy_exports(__name__, {name: module for module, names in _LAZY.items() for name in names})

__all__ = [*config.__all__, *intervals.__all__, *metal.__all__, *shift_field.__all__, *stacked.__all__, *applicability.__all__, *(name for names in _LAZY.values() for name in names)]
