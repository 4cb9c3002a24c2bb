"""Learners: everything that is fitted to measurements, and fitting a whole property.

Layer: above :mod:`models.transport` and :mod:`models.nets`, below evaluation and serving.
``config`` holds the training settings validated from ``params.yaml`` (:class:`FitConfig`);
``table``, ``losses``, ``training``, ``distributed`` train the GNNs; ``baselines``,
``stacked``, ``shift_field`` are the other models; ``applicability`` scores inputs against the
training data; ``fit`` fits and writes everything for one property (the train stage).
Torch and scikit-learn modules are imported on first use of one of their names, so serving
the stacked model imports neither.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from models._io import lazy_exports
from models.learners.applicability import (
    ApplicabilityDomain,
)
from models.learners.config import (
    FitConfig,
    ModelConfig,
    StackConfig,
    StackSettings,
    TrainConfig,
)
from models.learners.shift_field import (
    ShiftField,
)
from models.learners.stacked import (
    DFTSurrogate,
    StackedModel,
    descriptor_matrix,
    load_stacked,
    save_stacked,
)

if TYPE_CHECKING:  # what the lazy names below resolve to, for type checkers and import analysis
    from models.learners.baselines import (
        DescriptorForest,
        LinearCalibration,
        RawDFT,
        load_forest,
        mae,
        save_forest,
    )
    from models.learners.distributed import (
        DataParallel,
        init_from_env,
        is_writer,
        shutdown,
    )
    from models.learners.fit import (
        FitResult,
        fit_property,
        write_outputs,
    )
    from models.learners.losses import (
        unbalanced_sinkhorn,
        uot_embedding_loss,
    )
    from models.learners.table import (
        EntryTable,
        encode_compositions,
        grouped_split,
    )
    from models.learners.training import (
        DataParallelHook,
        EnsembleResult,
        EpochRecord,
        Prediction,
        TrainResult,
        build_model,
        determine_device,
        predict,
        predict_ensemble,
        pretrain_members,
        seed_everything,
        train_ensemble,
        train_model,
    )

# torch and scikit-learn are imported on first use: serving the stacked model needs neither
_LAZY = {
    "DataParallel": "distributed",
    "DataParallelHook": "training",
    "DescriptorForest": "baselines",
    "EnsembleResult": "training",
    "EntryTable": "table",
    "EpochRecord": "training",
    "FitResult": "fit",
    "LinearCalibration": "baselines",
    "Prediction": "training",
    "RawDFT": "baselines",
    "TrainResult": "training",
    "build_model": "training",
    "determine_device": "training",
    "encode_compositions": "table",
    "fit_property": "fit",
    "grouped_split": "table",
    "init_from_env": "distributed",
    "is_writer": "distributed",
    "load_forest": "baselines",
    "mae": "baselines",
    "predict": "training",
    "predict_ensemble": "training",
    "pretrain_members": "training",
    "save_forest": "baselines",
    "seed_everything": "training",
    "shutdown": "distributed",
    "train_ensemble": "training",
    "train_model": "training",
    "unbalanced_sinkhorn": "losses",
    "uot_embedding_loss": "losses",
    "write_outputs": "fit",
}
__getattr__ = lazy_exports(__name__, _LAZY)

__all__ = [
    "ApplicabilityDomain",
    "DFTSurrogate",
    "DataParallel",
    "DataParallelHook",
    "DescriptorForest",
    "EnsembleResult",
    "EntryTable",
    "EpochRecord",
    "FitConfig",
    "FitResult",
    "LinearCalibration",
    "ModelConfig",
    "Prediction",
    "RawDFT",
    "ShiftField",
    "StackConfig",
    "StackSettings",
    "StackedModel",
    "TrainConfig",
    "TrainResult",
    "build_model",
    "descriptor_matrix",
    "determine_device",
    "encode_compositions",
    "fit_property",
    "grouped_split",
    "init_from_env",
    "is_writer",
    "load_forest",
    "load_stacked",
    "mae",
    "predict",
    "predict_ensemble",
    "pretrain_members",
    "save_forest",
    "save_stacked",
    "seed_everything",
    "shutdown",
    "train_ensemble",
    "train_model",
    "unbalanced_sinkhorn",
    "uot_embedding_loss",
    "write_outputs",
]
