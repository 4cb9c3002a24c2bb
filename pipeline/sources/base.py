"""What every data source yields: raw rows, the rows it rejected while reading, and provenance.

The registry of concrete sources is :mod:`pipeline.sources`; this module is below it and
below every source, so the sources import their base classes from here (no import cycle).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, ClassVar, Literal

from pipeline.sources.records import Rejection


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
    """One raw measurement: a property value, or a metal (1) / non-metal (0) class for ``is_metal``."""

    row: int
    row_id: str
    formula_raw: Any
    property: Literal["band_gap", "formation_enthalpy", "is_metal"]
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

__all__ = ["DftRow", "ExpRow", "Source", "SourceTable"]
