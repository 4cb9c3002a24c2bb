"""Read the data mirror's structures in place for benchmarks and tests (never copied).

Structures are returned as ``Structure.as_dict()``-shaped dicts (``lattice.matrix`` and
``sites[].species/abc``), the form ``data/raw/dft.parquet`` stores as JSON, so benchmarks
exercise the same parsing path as the featurize stage.
"""

from __future__ import annotations

import ast
import csv
import gzip
import io
import json
import sys
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

MIRROR = Path(__file__).resolve().parents[1].parent / "shared" / "datasets"
MP_FILES = ("flla_2015", "dielectric_constant", "elastic_tensor", "piezoelectric_tensor")


def _rows(path: Path) -> Iterator[dict[str, str]]:
    csv.field_size_limit(sys.maxsize)
    with gzip.open(path, "rt", encoding="utf-8") as fh:
        first = fh.readline()
        if not first.startswith("# ref:"):
            fh.seek(0)
        reader = csv.reader(fh)
        header = next(reader)
        for row in reader:
            # piezoelectric_tensor rows carry an extra leading index field
            offset = len(row) - len(header)
            yield dict(zip(header, row[offset:], strict=True))


def poscar_to_dict(text: str) -> dict[str, Any]:
    """Minimal VASP5 POSCAR reader (species line present, positive scale, direct or Cartesian)."""
    lines = [ln.strip() for ln in text.replace("\\n", "\n").splitlines()]
    scale = float(lines[1])
    if scale <= 0:
        raise ValueError("POSCAR with a volume scale is not supported here")
    lattice = [[float(v) * scale for v in lines[i].split()[:3]] for i in (2, 3, 4)]
    species = lines[5].split()
    counts = [int(v) for v in lines[6].split()]
    mode = lines[7].lower()
    start = 8
    if mode.startswith("s"):  # selective dynamics
        mode, start = lines[8].lower(), 9
    symbols = [s for s, c in zip(species, counts, strict=True) for _ in range(c)]
    coords = [[float(v) for v in lines[start + i].split()[:3]] for i in range(len(symbols))]
    if mode[0] in "ck":
        import numpy as np

        frac = np.linalg.solve(np.array(lattice).T, np.array(coords).T * scale).T
        coords = frac.tolist()
    return {
        "lattice": {"matrix": lattice},
        "sites": [{"species": [{"element": s, "occu": 1}], "abc": c} for s, c in zip(symbols, coords, strict=True)],
    }


def mp_structures(mirror: Path = MIRROR, limit: int | None = None) -> dict[str, dict[str, Any]]:
    """Distinct mp-id -> structure dict from the four matminer files (first file wins)."""
    out: dict[str, dict[str, Any]] = {}
    for name in MP_FILES:
        for row in _rows(mirror / "mp" / f"{name}.csv.gz"):
            mid = row["material_id"]
            if mid in out:
                continue
            if name == "flla_2015":
                out[mid] = ast.literal_eval(row["structure"])
            else:
                out[mid] = poscar_to_dict(row["poscar"])
            if limit is not None and len(out) >= limit:
                return out
    return out


def perovskites(mirror: Path = MIRROR, limit: int | None = None) -> dict[str, dict[str, Any]]:
    """The 18,928 perovskites of ``scale/perov5_heat_ref.json.zip`` (all splits) as dicts."""
    with zipfile.ZipFile(mirror / "scale" / "perov5_heat_ref.json.zip") as zf:
        name = zf.namelist()[0]
        data = json.load(io.TextIOWrapper(zf.open(name), encoding="utf-8"))
    out: dict[str, dict[str, Any]] = {}
    for split in sorted(data):
        for key, text in data[split].items():
            out[f"perov-{key}"] = poscar_to_dict(text)
            if limit is not None and len(out) >= limit:
                return out
    return out
