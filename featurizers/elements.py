"""Element embeddings: one fixed vector per element, used as node features.

Registry of the embeddings matminer bundles (no download needed):

- ``megnet16``: the 16-dimensional element embedding learned by MEGNet on ~60,000 Materials
  Project formation energies (Chen, Ye, Zuo, Zheng, Ong, Chem. Mater. 31, 3564 (2019),
  doi:10.1021/acs.chemmater.9b01294), via ``matminer.utils.data.MEGNetElementData``;
  H..Pu (Z = 1..94).
- ``matscholar200``: the 200-dimensional word embedding of element names from materials
  science abstracts (Tshitoyan et al., Nature 571, 95 (2019)), via
  ``matminer.utils.data.MatscholarElementData``; H..Pu with gaps.

An element without a vector in the chosen table has no embedding: featurizers treat it as
out of vocabulary (an error naming the element) instead of inventing a vector.
"""

from __future__ import annotations

import warnings
from functools import lru_cache

import numpy as np
from pymatgen.core import Element

from featurizers.settings import EMBEDDINGS

__all__ = ["EMBEDDINGS", "element_embedding", "embedding_elements"]

_MAX_Z = 118


@lru_cache(maxsize=4)
def _load(name: str) -> tuple[np.ndarray, np.ndarray]:
    # matminer: seconds to import; only when descriptors are computed
    from matminer.utils.data import MatscholarElementData, MEGNetElementData

    if name not in EMBEDDINGS:
        raise ValueError(f"unknown element embedding {name!r}; choose one of {sorted(EMBEDDINGS)}")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        # impute_nan=False: elements the table lacks stay NaN and so out of vocabulary
        source = MEGNetElementData(impute_nan=False) if name == "megnet16" else MatscholarElementData(
            impute_nan=False
        )
    props = list(source.prop_names)
    table = np.full((_MAX_Z + 1, len(props)), np.nan)
    known = np.zeros(_MAX_Z + 1, dtype=bool)
    for z in range(1, _MAX_Z + 1):
        symbol = Element.from_Z(z).symbol
        row = source.all_element_data.get(symbol)
        if row is None or any(p not in row for p in props):
            continue
        values = np.array([row[p] for p in props], dtype=float)
        if np.isfinite(values).all():
            table[z] = values
            known[z] = True
    table.flags.writeable = False
    known.flags.writeable = False
    return table, known


def element_embedding(name: str) -> np.ndarray:
    """Table ``[119, d]`` indexed by atomic number; rows of unknown elements are NaN."""
    return _load(name)[0]


def embedding_elements(name: str) -> list[str]:
    """Symbols (by atomic number) that have a vector in embedding ``name``."""
    known = _load(name)[1]
    return [Element.from_Z(int(z)).symbol for z in np.flatnonzero(known)]
