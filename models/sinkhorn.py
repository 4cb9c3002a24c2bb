"""Import path kept for ``../shared/tools/ot_side_by_side.py`` (a tool outside this repository).

The solver lives in :mod:`models.transport.sinkhorn`; new code imports it from :mod:`models.transport`.
"""

from models.transport.sinkhorn import sparse_sinkhorn, unbalanced_objective

__all__ = ["sparse_sinkhorn", "unbalanced_objective"]
