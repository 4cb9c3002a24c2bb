"""Neural networks (TODO doc)."""

from __future__ import annotations

from models.nets.gnn import (
    MODEL_FORMAT_VERSION,
    CompositionEncoder,
    CrystalGraphEncoder,
    ModelFileError,
    MultiFidelityNet,
    NetOutput,
    load_model,
    save_model,
)

__all__ = [
    "MODEL_FORMAT_VERSION",
    "CompositionEncoder",
    "CrystalGraphEncoder",
    "ModelFileError",
    "MultiFidelityNet",
    "NetOutput",
    "load_model",
    "save_model",
]
