"""The mirror's datasets from their public origins, through matminer's dataset loader.

``matminer.datasets.load_dataset(name)`` downloads (and caches) each dataset as a
DataFrame whose ``structure`` column holds pymatgen ``Structure`` objects. The loader is
injectable so the boundary can be tested offline with a fake; a download failure becomes
a :class:`MatshiftError` naming the dataset and suggesting the offline mirror.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any, ClassVar

import pandas as pd

from models import sha256_bytes
from pipeline.errors import MatshiftError
from pipeline.sources.base import DftRow, ExpRow, Source, SourceTable
from pipeline.sources.records import truncate

#: matminer dataset -> (kind, {column: contract label}), in merge order.
DATASETS: dict[str, tuple[str, dict[str, str]]] = {
    "flla": ("dft", {"formation_energy_per_atom": "formation_energy_per_atom", "e_above_hull": "e_above_hull"}),
    "dielectric_constant": ("dft", {"band_gap": "band_gap_pbe"}),
    "elastic_tensor_2015": ("dft", {}),
    "piezoelectric_tensor": ("dft", {}),
    "expt_gap_kingsbury": ("experiment", {"expt_gap": "band_gap"}),
    "expt_formation_enthalpy_kingsbury": ("experiment", {"expt_form_e": "formation_enthalpy"}),
}

Loader = Callable[[str], pd.DataFrame]


def _default_loader(name: str) -> pd.DataFrame:
    try:
        # matminer's dataset loader: only for the matminer source (needs internet)
        from matminer.datasets import load_dataset
    except ImportError as exc:
        raise MatshiftError("the matminer source needs matminer: pip install matminer") from exc
    return load_dataset(name)


def _structure_format(value: Any) -> str:
    if isinstance(value, dict):
        return "dict"
    if isinstance(value, str):
        return "cif"
    return "object"


def frame_sha256(frame: pd.DataFrame) -> str:
    """Content hash of a downloaded DataFrame (structures through their repr)."""
    return sha256_bytes(frame.astype(str).to_csv(index=False).encode("utf-8"))


class MatminerSource(Source):
    """matminer datasets ``flla``, ``dielectric_constant``, ... (needs internet)."""

    name: ClassVar[str] = "matminer"

    def __init__(self, *, loader: Loader | None = None, datasets: tuple[str, ...] = tuple(DATASETS)) -> None:
        unknown = sorted(set(datasets) - set(DATASETS))
        if unknown:
            raise MatshiftError(f"unknown matminer dataset {unknown[0]!r} (valid: {', '.join(DATASETS)})")
        self.loader = loader or _default_loader
        self.datasets = datasets

    @classmethod
    def from_config(cls, config: Any, *, root: Path, env: Mapping[str, str], accept_changed: bool,
                    **overrides: Any) -> MatminerSource:
        return cls(**overrides)

    def fingerprint(self) -> None:
        return None  # only a download can tell whether the remote data changed

    def _load(self, name: str) -> pd.DataFrame:
        try:
            frame = self.loader(name)
        except MatshiftError:
            raise
        except Exception as exc:
            raise MatshiftError(
                f"matminer dataset {name!r} could not be loaded ({type(exc).__name__}: {truncate(str(exc))}); "
                "without internet use `fetch.sources: [mirror]`"
            ) from exc
        if not isinstance(frame, pd.DataFrame):
            raise MatshiftError(f"matminer dataset {name!r}: loader returned {type(frame).__name__}, not a DataFrame")
        return frame

    def tables(self) -> Iterator[SourceTable]:
        for name in self.datasets:
            kind, labels = DATASETS[name]
            frame = self._load(name)
            needed = (["material_id", "structure"] if kind == "dft" else ["formula"]) + list(labels)
            missing = [c for c in needed if c not in frame.columns]
            if missing:
                raise MatshiftError(f"matminer dataset {name!r} lacks columns {missing} (has {list(frame.columns)})")
            table_name = f"matminer_{name}"
            rows: list = []
            for i, rec in enumerate(frame.to_dict("records"), start=1):
                content = truncate(repr({k: v for k, v in rec.items() if k != "structure"}))
                if kind == "dft":
                    structure = rec["structure"]
                    rows.append(DftRow(
                        row=i, material_id=rec["material_id"], content=content,
                        formula=rec.get("formula") if isinstance(rec.get("formula"), str) else None,
                        structure=structure, structure_fmt=_structure_format(structure),
                        labels={dst: rec[src] for src, dst in labels.items()},
                    ))
                else:
                    (src, prop), = labels.items()
                    rows.append(ExpRow(row=i, row_id=str(i), formula_raw=rec["formula"], property=prop,
                                       value=rec[src], content=content))
            yield SourceTable(name=table_name, kind=kind, origin=f"matminer.datasets.load_dataset({name!r})",
                              path=None, sha256=frame_sha256(frame), rows=rows)
