"""Registry of data sources for the fetch stage, all behind one :class:`Source` interface.

A source yields :class:`SourceTable` objects: one per input file or dataset, each holding
raw rows (not yet validated) plus the rows it already had to reject while reading (a CSV
line with the wrong number of fields, say), and the provenance that goes to the manifest
(origin, path, sha256, retrieval time). Validation, structure parsing and the merge by
mp-id happen once for every source in :mod:`pipeline.sources.merge`, so the three kinds
of source are treated identically from there on.

Sources:

* ``mirror`` -- the offline mirror ``../shared/datasets`` (files read in place, checksums
  pinned in ``mirror_sha256.json``);
* ``matminer`` -- the same datasets from their public origins via
  ``matminer.datasets.load_dataset`` (needs internet);
* ``mp_api`` -- the Materials Project API through ``mp-api`` (needs ``MP_API_KEY``).

A source never reads params.yaml or the environment: the fetch stage passes everything.
"""

from __future__ import annotations

from pipeline.errors import MatshiftError
from pipeline.sources.base import DftRow, ExpRow, Source, SourceTable
from pipeline.sources.matminer_source import MatminerSource
from pipeline.sources.mirror import MirrorSource
from pipeline.sources.mp_api_source import MPApiSource
from pipeline.sources.records import Rejection


def get_source(name: str) -> type[Source]:
    """Return the source class registered as ``name``; an unknown name lists the valid ones."""
    try:
        return SOURCES[name]
    except KeyError:
        raise MatshiftError(
            f"unknown source {name!r} (valid sources: {', '.join(sorted(SOURCES))})"
        ) from None

#: Source name (as written in ``fetch.sources``) -> class.
SOURCES: dict[str, type[Source]] = {cls.name: cls for cls in (MirrorSource, MatminerSource, MPApiSource)}


__all__ = [
    "SOURCES",
    "DftRow",
    "ExpRow",
    "MPApiSource",
    "MatminerSource",
    "MirrorSource",
    "Rejection",
    "Source",
    "SourceTable",
    "get_source",
]
