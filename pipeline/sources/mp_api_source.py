"""The Materials Project API through ``mp-api`` (used only when an API key is given).

The fetch stage reads ``MP_API_KEY`` from the environment and passes it here; this module
never reads the environment. The key is never logged, stored or put into an error
message: any library error text is scrubbed of it. ``mp-api`` is imported lazily; the
client factory is injectable so the boundary is tested with a fake client.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any, ClassVar

from models import sha256_bytes
from pipeline.errors import MatshiftError
from pipeline.sources.base import DftRow, Source, SourceTable
from pipeline.sources.records import truncate

FIELDS = ["material_id", "formula_pretty", "structure", "band_gap", "formation_energy_per_atom", "energy_above_hull"]

ClientFactory = Callable[[str], Any]


def _default_client(api_key: str) -> Any:
    try:
        # mp-api: an optional package, only for the Materials Project source
        from mp_api.client import MPRester
    except ImportError as exc:
        raise MatshiftError("the mp_api source needs the mp-api package: pip install mp-api") from exc
    return MPRester(api_key)


def _get(doc: Any, name: str) -> Any:
    return doc.get(name) if isinstance(doc, dict) else getattr(doc, name, None)


class MPApiSource(Source):
    """Materials Project summary documents: structure, PBE gap, formation energy, e_above_hull."""

    name: ClassVar[str] = "mp_api"

    def __init__(
        self,
        *,
        api_key: str | None,
        elements: tuple[str, ...] = (),
        max_e_above_hull: float = 0.1,
        limit: int = 1000,
        client_factory: ClientFactory | None = None,
    ) -> None:
        if not api_key:
            raise MatshiftError("the mp_api source needs a Materials Project API key: MP_API_KEY not set")
        self._api_key = api_key
        self.elements = tuple(elements)
        self.max_e_above_hull = max_e_above_hull
        self.limit = limit
        self.client_factory = client_factory or _default_client

    @classmethod
    def from_config(cls, config: Any, *, root: Path, env: Mapping[str, str], accept_changed: bool,
                    **overrides: Any) -> MPApiSource:
        query = config.mp_api
        return cls(**{"api_key": env.get("MP_API_KEY"), "elements": tuple(query.elements),
                      "max_e_above_hull": query.max_e_above_hull, "limit": query.limit, **overrides})

    def __repr__(self) -> str:  # never show the key
        return f"MPApiSource(elements={self.elements}, max_e_above_hull={self.max_e_above_hull}, limit={self.limit})"

    def _scrub(self, text: str) -> str:
        return text.replace(self._api_key, "***")

    def fingerprint(self) -> None:
        return None

    def _search(self) -> list[Any]:
        query: dict[str, Any] = {"energy_above_hull": (0.0, self.max_e_above_hull), "fields": FIELDS}
        if self.elements:
            query["elements"] = list(self.elements)
        chunk = min(self.limit, 1000)
        query.update(chunk_size=chunk, num_chunks=math.ceil(self.limit / chunk))
        try:
            client = self.client_factory(self._api_key)
            with client as mpr:
                docs = list(mpr.materials.summary.search(**query))
        except MatshiftError:
            raise
        except Exception as exc:  # noqa: BLE001 - network/auth errors of any kind become one clear message
            raise MatshiftError(
                f"Materials Project API query failed ({type(exc).__name__}: {truncate(self._scrub(str(exc)))}); "
                "check the network and MP_API_KEY"
            ) from None  # the chained exception could carry the key in its args
        return docs[: self.limit]

    def tables(self) -> Iterator[SourceTable]:
        docs = self._search()
        rows = []
        digest_parts = []
        for i, doc in enumerate(docs, start=1):
            structure = _get(doc, "structure")
            fmt = "dict" if isinstance(structure, dict) else ("object" if structure is not None else None)
            mp_id = str(_get(doc, "material_id"))
            labels = {
                "band_gap_pbe": _get(doc, "band_gap"),
                "formation_energy_per_atom": _get(doc, "formation_energy_per_atom"),
                "e_above_hull": _get(doc, "energy_above_hull"),
            }
            digest_parts.append(repr((mp_id, labels, structure.as_dict() if hasattr(structure, "as_dict") else structure)))
            rows.append(DftRow(row=i, material_id=mp_id, content=truncate(f"{mp_id} {labels}"),
                               formula=_get(doc, "formula_pretty"), structure=structure, structure_fmt=fmt,
                               labels=labels))
        yield SourceTable(
            name="mp_api", kind="dft", origin="Materials Project API (mp-api summary search)", path=None,
            sha256=sha256_bytes("\n".join(digest_parts).encode("utf-8")), rows=rows,
            notes=[f"query: elements={list(self.elements)}, e_above_hull<={self.max_e_above_hull}, limit={self.limit}"],
        )
