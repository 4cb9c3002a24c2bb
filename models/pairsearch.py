"""Import path kept for ``../shared/tools/ot_side_by_side.py`` (a tool outside this repository).

The pair search lives in :mod:`models.transport.pairsearch`; new code imports it from :mod:`models.transport`.
"""

from models.transport.pairsearch import radius_pairs

__all__ = ["radius_pairs"]
