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

import hashlib
from abc import ABC, abstractmethod
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, ClassVar, Literal

from pipeline.errors import MatshiftError
from pipeline.sources.records import Rejection

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
    "sha256_bytes",
    "sha256_file",
]


@dataclass
class DftRow:
    """One raw DFT row: an mp-id with an optional structure/composition and raw labels.

    ``structure_fmt`` is one of ``dict_literal``, ``dict``, ``cif``, ``poscar``,
    ``object``; ``fallback`` is a second representation of the same structure (POSCAR
    beside a CIF) tried when the first does not parse. ``formula`` is the composition the
    file states (checked against the structure when both exist).
    """

    row: int
    material_id: Any
    content: str
    labels: dict[str, Any] = field(default_factory=dict)
    formula: str | None = None
    structure: Any = None
    structure_fmt: str | None = None
    fallback: Any = None
    fallback_fmt: str | None = None


@dataclass
class ExpRow:
    """One raw measurement."""

    row: int
    row_id: str
    formula_raw: Any
    property: Literal["band_gap", "formation_enthalpy"]
    value: Any
    content: str


@dataclass
class SourceTable:
    """The rows of one input file or dataset plus its provenance."""

    name: str
    kind: Literal["dft", "experiment"]
    origin: str
    path: str | None
    sha256: str
    rows: list[DftRow] | list[ExpRow]
    rejected: list[Rejection] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    retrieved_at: str = field(default_factory=lambda: datetime.now(UTC).isoformat(timespec="seconds"))

    @property
    def rows_read(self) -> int:
        return len(self.rows) + len(self.rejected)


class Source(ABC):
    """A provider of raw tables. Subclasses register themselves in :data:`SOURCES`."""

    name: ClassVar[str]

    @classmethod
    @abstractmethod
    def from_config(cls, config: Any, *, root: Path, env: Mapping[str, str], accept_changed: bool,
                    **overrides: Any) -> Source:
        """Build the source from the stage's ``FetchConfig``.

        ``root`` resolves relative paths, ``env`` holds the environment variables the stage
        chose to pass (``MP_API_KEY``), ``overrides`` replace constructor arguments (tests
        inject fake clients this way).
        """

    @abstractmethod
    def fingerprint(self) -> dict[str, str] | None:
        """sha256 of every input, without parsing, or None when only a fetch can tell."""

    @abstractmethod
    def tables(self) -> Iterator[SourceTable]:
        """Read every table of this source (raises MatshiftError with a clear reason)."""


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def get_source(name: str) -> type[Source]:
    """Return the source class registered as ``name``; an unknown name lists the valid ones."""
    try:
        return SOURCES[name]
    except KeyError:
        raise MatshiftError(
            f"unknown source {name!r} (valid sources: {', '.join(sorted(SOURCES))})"
        ) from None


# The concrete sources import the classes above, so they are registered at the end.
from pipeline.sources.matminer_source import MatminerSource  # noqa: E402
from pipeline.sources.mirror import MirrorSource  # noqa: E402
from pipeline.sources.mp_api_source import MPApiSource  # noqa: E402

#: Source name (as written in ``fetch.sources``) -> class.
SOURCES: dict[str, type[Source]] = {cls.name: cls for cls in (MirrorSource, MatminerSource, MPApiSource)}
