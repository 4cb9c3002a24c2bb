"""Magpie descriptors for formulas, cached outside the repository.

Stand-in for ``data/features/descriptors.parquet`` (the featurize stage) so the CV benchmark can
run on the mirror alone: the same matminer ``ElementProperty.from_preset("magpie")`` features,
keyed by :func:`featurizers.chemistry.reduced_formula`, cached as a parquet file under
``/tmp/matshift-cache`` (never inside the repository).
"""

from __future__ import annotations

import warnings
from collections.abc import Iterable
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
import pandas as pd

from featurizers.chemistry import parse_formula

CACHE_DIR = Path("/tmp/matshift-cache")


def _featurize_chunk(formulas: list[str]) -> np.ndarray:
    from matminer.featurizers.composition import ElementProperty

    ep = ElementProperty.from_preset("magpie", impute_nan=True)
    out = np.full((len(formulas), len(ep.feature_labels())), np.nan)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for i, f in enumerate(formulas):
            out[i] = ep.featurize(parse_formula(f))
    return out


def magpie_descriptors(formulas: Iterable[str], *, cache: Path | None = None, workers: int = 2) -> pd.DataFrame:
    """Frame with ``formula`` + Magpie columns for every distinct formula (reduced formulas)."""
    from matminer.featurizers.composition import ElementProperty

    labels = ElementProperty.from_preset("magpie", impute_nan=True).feature_labels()
    cache = cache or CACHE_DIR / "magpie.parquet"
    wanted = sorted(set(formulas))
    have = pd.read_parquet(cache) if cache.exists() else pd.DataFrame(columns=["formula", *labels])
    missing = sorted(set(wanted) - set(have["formula"]))
    if missing:
        chunks = [missing[i::workers * 4] for i in range(workers * 4)]
        chunks = [c for c in chunks if c]
        with ProcessPoolExecutor(max_workers=workers) as pool:
            arrays = list(pool.map(_featurize_chunk, chunks))
        new = pd.concat(
            [pd.DataFrame(a, columns=labels).assign(formula=c) for a, c in zip(arrays, chunks, strict=True)]
        )[["formula", *labels]]
        have = pd.concat([have, new], ignore_index=True) if len(have) else new
        cache.parent.mkdir(parents=True, exist_ok=True)
        tmp = cache.with_suffix(".tmp")
        have.to_parquet(tmp, index=False)
        tmp.replace(cache)
    out = have.set_index("formula").loc[wanted].reset_index()
    return out.astype({c: float for c in labels})
