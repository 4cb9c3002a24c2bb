"""Neural networks: the crystal-graph and composition encoders and the multi-fidelity heads (torch, PyG).

Layer: beside :mod:`models.transport`, below the learners that train these networks. Models
are saved as init arguments + weights with their sha256 (:func:`save_model`,
:func:`load_model`: strict, ``weights_only``).
"""

from __future__ import annotations

from models.nets import gnn
from models.nets.gnn import *

__all__ = [*gnn.__all__]
