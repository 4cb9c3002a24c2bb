r"""Crystal structure -> invariant PyTorch Geometric graph.

Pipeline for one structure (each step is a ``step`` name in failure records):

1. ``parse``: lattice, fractional coordinates and atomic numbers from a pymatgen
   ``Structure``, its ``as_dict()`` or that dict as JSON. Disordered sites and elements
   outside the vocabulary are rejected.
2. ``canonicalise``: spglib standardisation to the *primitive standardised* cell
   (``spglib.standardize_cell(to_primitive=True)``, tolerances ``symprec`` Å and
   ``angle_tolerance`` degrees), then atoms sorted by (Z, wrapped fractional coordinates).
   Any description of the same crystal (rotated, translated, permuted, a supercell, a
   non-standard cell) gives the same cell, so the same graph. If spglib finds no
   symmetry dataset (it then prints "spglib: ... failed" to stderr, which is captured here),
   the input cell is kept, the space group is recorded as 0 (unknown) and the structure
   carries a note: the graph is still correct, only cell-choice invariance is lost.
3. ``neighbours``: every pair within ``cutoff`` Å under periodic boundary conditions
   (pymatgen's Cython ``find_points_in_spheres``), periodic images included, self image
   excluded.

Graph contents (``torch_geometric.data.Data``): ``x`` [n, d] float32 element embedding
(see :mod:`featurizers.elements`), ``z`` [n] long, ``edge_index`` [2, E] long (row 0 the
neighbour j, row 1 the centre i, so messages flow j -> i), ``edge_dist`` [E] float32 Å,
``edge_attr`` [E, K] float32 Gaussian expansion
:math:`\exp(-(d - \mu_k)^2 / (2\sigma^2))` with :math:`\mu_k` evenly spaced on
[0, cutoff], and graph attributes ``spacegroup`` [1] long, ``crystal_system`` [1] long
(index into :data:`CRYSTAL_SYSTEMS`), ``num_sites`` [1] long, ``volume_per_atom`` [1]
float32 Å^3.

This module never reads parameter files or global state: everything is a constructor
argument, and :meth:`CrystalGraphFeaturizer.config` / :meth:`from_config` round-trip it.
"""

from __future__ import annotations

import contextlib
import json
import math
import multiprocessing
import os
import sys
import tempfile
import warnings
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
from pymatgen.core import Element

from featurizers.elements import element_embedding, embedding_elements
from featurizers.settings import EMBEDDINGS, GraphSettings

__all__ = [
    "CONFIG_VERSION",
    "CRYSTAL_SYSTEMS",
    "CanonicalCell",
    "CrystalGraphFeaturizer",
    "GraphArrays",
    "GraphBatch",
    "GraphFailure",
    "StructureError",
    "canonicalise",
    "crystal_system",
    "gaussian_expansion",
    "load_graphs",
    "pack_graphs",
    "periodic_neighbours",
    "save_graphs",
]

CONFIG_VERSION = 1
GRAPHS_FORMAT = "matshift-graphs-v1"
CRYSTAL_SYSTEMS: tuple[str, ...] = (
    "", "triclinic", "monoclinic", "orthorhombic", "tetragonal", "trigonal", "hexagonal", "cubic",
)
Step = Literal["parse", "canonicalise", "neighbours"]


class StructureError(ValueError):
    """A structure that cannot be featurized; names the structure and the step."""

    def __init__(self, structure_id: str, step: str, reason: str) -> None:
        super().__init__(f"structure {structure_id!r}: {step} failed: {reason}")
        self.structure_id = structure_id
        self.step = step
        self.reason = reason


def crystal_system(spacegroup: int) -> int:
    """Index into :data:`CRYSTAL_SYSTEMS` of an international space-group number (0 = unknown)."""
    if not 1 <= spacegroup <= 230:
        return 0
    for code, last in enumerate((2, 15, 74, 142, 167, 194, 230), start=1):
        if spacegroup <= last:
            return code
    return 0  # unreachable


@dataclass(frozen=True)
class CanonicalCell:
    lattice: np.ndarray  # [3, 3], rows are lattice vectors, Å
    frac: np.ndarray  # [n, 3] in [0, 1)
    numbers: np.ndarray  # [n] atomic numbers
    spacegroup: int  # 0 if unknown
    note: str = ""  # why the input cell was kept, "" when standardised


@contextlib.contextmanager
def _captured_stderr() -> Iterator[list[str]]:
    """Capture what C code writes to file descriptor 2 (spglib's warnings)."""
    lines: list[str] = []
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile(mode="w+b") as tmp:
        os.dup2(tmp.fileno(), 2)
        try:
            yield lines
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            tmp.seek(0)
            lines.extend(tmp.read().decode("utf-8", "replace").splitlines())


def canonicalise(
    lattice: np.ndarray,
    frac: np.ndarray,
    numbers: np.ndarray,
    *,
    symprec: float,
    angle_tolerance: float,
) -> CanonicalCell:
    """Primitive standardised cell with atoms in canonical order (see module docstring)."""
    # spglib: only when a cell is standardised (workers import it on first use)
    import spglib
    from spglib.error import SpglibError

    cell = (np.asarray(lattice, float), np.asarray(frac, float), np.asarray(numbers, np.int64))
    note = ""
    with _captured_stderr() as err, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            dataset = spglib.get_symmetry_dataset(cell, symprec=symprec, angle_tolerance=angle_tolerance)
            error = ""
        except SpglibError as exc:  # raised instead of None once spglib drops OLD_ERROR_HANDLING
            dataset, error = None, str(exc)
    std = _primitive_standard(dataset) if dataset is not None else None
    if std is None:
        said = [line.strip() for line in err if line.strip()] + ([error] if error else [])
        detail = "; ".join(said) or "no symmetry dataset"
        note = f"spglib standardisation failed ({detail}); input cell kept"
        out_lat, out_frac, out_num, sg = cell[0], cell[1], cell[2], 0
    else:
        out_lat, out_frac, out_num = std
        sg = int(dataset.number)
    out_frac = np.mod(out_frac, 1.0)
    out_frac[out_frac > 1.0 - 1e-8] = 0.0
    key = np.round(out_frac, 6)
    order = np.lexsort((key[:, 2], key[:, 1], key[:, 0], out_num))
    return CanonicalCell(
        lattice=np.ascontiguousarray(out_lat, dtype=float),
        frac=np.ascontiguousarray(out_frac[order]),
        numbers=np.ascontiguousarray(out_num[order], dtype=np.int64),
        spacegroup=sg,
        note=note,
    )


# Centring matrices M (columns: primitive vectors in units of the conventional ones) of
# spglib's standardised primitive cells, as in spglib's standardize.c.
_CENTRING: dict[str, np.ndarray] = {
    "P": np.eye(3),
    "A": np.array([[1, 0, 0], [0, 1 / 2, -1 / 2], [0, 1 / 2, 1 / 2]]),
    "C": np.array([[1 / 2, 1 / 2, 0], [-1 / 2, 1 / 2, 0], [0, 0, 1]]),
    "I": np.array([[-1 / 2, 1 / 2, 1 / 2], [1 / 2, -1 / 2, 1 / 2], [1 / 2, 1 / 2, -1 / 2]]),
    "F": np.array([[0, 1 / 2, 1 / 2], [1 / 2, 0, 1 / 2], [1 / 2, 1 / 2, 0]]),
    "R": np.array([[2 / 3, -1 / 3, -1 / 3], [1 / 3, 1 / 3, -2 / 3], [1 / 3, 1 / 3, 1 / 3]]),
}


def _primitive_standard(dataset: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
    """Primitive standardised cell from one symmetry dataset.

    Same cell as ``spglib.standardize_cell(to_primitive=True)`` (tested), without a second
    symmetry search (spglib's search is the dominant cost): the standardised conventional
    cell is reduced by its centring matrix, keeping one atom per primitive-cell site.
    Returns None when the reduction is inconsistent (then the caller keeps the input cell).
    """
    letter = dataset.international[0]
    if letter == "R" and dataset.choice == "R":  # rhombohedral axes are already primitive
        letter = "P"
    m = _CENTRING.get(letter)
    if m is None:
        return None
    std_lat = np.asarray(dataset.std_lattice, float)
    lat = m.T @ std_lat
    pos = np.asarray(dataset.std_positions, float) @ np.linalg.inv(m).T
    mapping = np.asarray(dataset.std_mapping_to_primitive)
    _, first = np.unique(mapping, return_index=True)
    n_prim = len(first)
    if not math.isclose(abs(np.linalg.det(lat)) * len(mapping), abs(np.linalg.det(std_lat)) * n_prim, rel_tol=1e-6):
        return None
    return lat, pos[first], np.asarray(dataset.std_types, np.int64)[first]


@dataclass(frozen=True)
class GraphArrays:
    """A graph as NumPy arrays (cheap to send between processes); see :meth:`to_data`."""

    z: np.ndarray
    edge_index: np.ndarray
    edge_dist: np.ndarray
    spacegroup: int
    num_sites: int
    volume_per_atom: float
    note: str = ""

    @property
    def crystal_system(self) -> int:
        return crystal_system(self.spacegroup)


@dataclass(frozen=True)
class GraphFailure:
    id: str
    step: str
    reason: str


@dataclass
class GraphBatch:
    """Result of :meth:`CrystalGraphFeaturizer.featurize_many`: graphs by id, failures, notes."""

    graphs: dict[str, Any] = field(default_factory=dict)
    failures: list[GraphFailure] = field(default_factory=list)
    notes: dict[str, str] = field(default_factory=dict)


def _default_elements(embedding: str) -> tuple[str, ...]:
    return tuple(embedding_elements(embedding))


class CrystalGraphFeaturizer:
    r"""Crystal structure -> invariant graph (see module docstring for the definition).

    Args:
        cutoff: neighbour radius, Å.
        embedding: element embedding name (:data:`featurizers.settings.EMBEDDINGS`).
        elements: element vocabulary (symbols); default: every element the embedding covers.
        n_gaussians: number K of Gaussian basis functions for distances.
        gaussian_width: :math:`\sigma` in Å; default: the spacing ``cutoff / (K - 1)``.
        symprec: spglib distance tolerance, Å.
        angle_tolerance: spglib angle tolerance, degrees (-1 = spglib's default).
        on_error: ``"raise"`` stops :meth:`featurize_many` at the first bad structure;
            ``"record"`` collects it as a :class:`GraphFailure` and goes on.

    """

    def __init__(
        self,
        *,
        cutoff: float = GraphSettings.cutoff,
        embedding: str = GraphSettings.embedding,
        elements: Sequence[str] | None = None,
        n_gaussians: int = GraphSettings.n_gaussians,
        gaussian_width: float | None = GraphSettings.gaussian_width,
        symprec: float = GraphSettings.symprec,
        angle_tolerance: float = GraphSettings.angle_tolerance,
        on_error: Literal["raise", "record"] = "record",
    ) -> None:
        # the settings' own checks, so that the featurizer and params.yaml accept the same values
        GraphSettings(cutoff=cutoff, embedding=embedding, n_gaussians=n_gaussians, gaussian_width=gaussian_width,
                      symprec=symprec, angle_tolerance=angle_tolerance)
        if on_error not in ("raise", "record"):
            raise ValueError(f"on_error must be 'raise' or 'record', got {on_error!r}")

        available = set(embedding_elements(embedding))
        vocab = tuple(elements) if elements is not None else _default_elements(embedding)
        missing = [s for s in vocab if s not in available]
        if missing:
            raise ValueError(f"embedding {embedding!r} has no vector for {', '.join(missing)}")
        self.cutoff = float(cutoff)
        self.embedding = embedding
        self.elements = tuple(sorted(vocab, key=lambda s: Element(s).Z))
        self.n_gaussians = int(n_gaussians)
        self.gaussian_width = float(gaussian_width) if gaussian_width is not None else self.cutoff / (
            self.n_gaussians - 1
        )
        self.symprec = float(symprec)
        self.angle_tolerance = float(angle_tolerance)
        self.on_error = on_error
        self._allowed_z = frozenset(Element(s).Z for s in self.elements)
        self._centers = np.linspace(0.0, self.cutoff, self.n_gaussians)

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(cutoff={self.cutoff}, embedding={self.embedding!r}, "
            f"n_elements={len(self.elements)}, n_gaussians={self.n_gaussians}, "
            f"gaussian_width={self.gaussian_width:.4g}, symprec={self.symprec}, "
            f"angle_tolerance={self.angle_tolerance}, on_error={self.on_error!r})"
        )

    @classmethod
    def from_settings(cls, settings: GraphSettings, *, on_error: Literal["raise", "record"] = "record"
                      ) -> CrystalGraphFeaturizer:
        """Build the featurizer ``settings`` describe (the featurize stage's route from params.yaml)."""
        return cls(cutoff=settings.cutoff, embedding=settings.embedding, n_gaussians=settings.n_gaussians,
                   gaussian_width=settings.gaussian_width, symprec=settings.symprec,
                   angle_tolerance=settings.angle_tolerance, on_error=on_error)

    @property
    def node_dim(self) -> int:
        return int(element_embedding(self.embedding).shape[1])

    @property
    def edge_dim(self) -> int:
        return self.n_gaussians

    # --- configuration -------------------------------------------------------------
    def config(self) -> dict[str, Any]:
        """Plain-JSON configuration; :meth:`from_config` rebuilds an identical featurizer."""
        return {
            "version": CONFIG_VERSION,
            "cutoff": self.cutoff,
            "embedding": self.embedding,
            "embedding_reference": EMBEDDINGS[self.embedding],
            "elements": list(self.elements),
            "n_gaussians": self.n_gaussians,
            "gaussian_width": self.gaussian_width,
            "symprec": self.symprec,
            "angle_tolerance": self.angle_tolerance,
            "on_error": self.on_error,
            "node_dim": self.node_dim,
            "edge_dim": self.edge_dim,
            "crystal_systems": list(CRYSTAL_SYSTEMS),
        }

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> CrystalGraphFeaturizer:
        """Rebuild from :meth:`config` output; unknown or missing keys are errors."""
        if config.get("version") != CONFIG_VERSION:
            raise ValueError(f"graph config version {config.get('version')!r} is not {CONFIG_VERSION}")
        derived = {"version", "embedding_reference", "node_dim", "edge_dim", "crystal_systems"}
        keys = {"cutoff", "embedding", "elements", "n_gaussians", "gaussian_width", "symprec",
                "angle_tolerance", "on_error"}
        unknown = sorted(set(config) - keys - derived)
        missing = sorted(keys - set(config))
        if unknown or missing:
            raise ValueError(f"graph config: unknown keys {unknown}, missing keys {missing}")
        made = cls(**{k: config[k] for k in keys})
        for key in ("node_dim", "edge_dim"):
            if key in config and config[key] != getattr(made, key):
                raise ValueError(f"graph config: {key} {config[key]} does not match the rebuilt {getattr(made, key)}")
        return made

    # --- single structure ----------------------------------------------------------
    def _cell(self, structure: Any, structure_id: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        try:
            if isinstance(structure, str):
                structure = json.loads(structure)
            if isinstance(structure, Mapping):
                lattice, frac, numbers = _cell_from_dict(structure)
            else:
                if not structure.is_ordered:
                    raise ValueError("structure has partially occupied sites")
                lattice = np.asarray(structure.lattice.matrix, float)
                frac = np.asarray(structure.frac_coords, float)
                numbers = np.asarray(structure.atomic_numbers, np.int64)
        except (ValueError, KeyError, TypeError, AttributeError, IndexError) as exc:
            raise StructureError(structure_id, "parse", f"{type(exc).__name__}: {exc}") from exc
        if len(numbers) == 0:
            raise StructureError(structure_id, "parse", "structure has no sites")
        bad = sorted({int(z) for z in numbers} - self._allowed_z)
        if bad:

            names = ", ".join(Element.from_Z(z).symbol for z in bad)
            raise StructureError(structure_id, "parse", f"element(s) {names} not in the vocabulary")
        volume = abs(float(np.linalg.det(lattice)))
        if not (np.isfinite(lattice).all() and np.isfinite(frac).all()) or volume < 1e-6:
            raise StructureError(structure_id, "parse", f"degenerate or non-finite lattice (volume {volume:.3g} Å^3)")
        return lattice, frac, numbers

    def graph_arrays(self, structure: Any, *, structure_id: str = "<structure>") -> GraphArrays:
        """Canonical cell and neighbour list as arrays; raises :class:`StructureError`."""
        lattice, frac, numbers = self._cell(structure, structure_id)
        try:
            cell = canonicalise(
                lattice, frac, numbers, symprec=self.symprec, angle_tolerance=self.angle_tolerance
            )
        except (ValueError, TypeError, RuntimeError) as exc:
            raise StructureError(structure_id, "canonicalise", f"{type(exc).__name__}: {exc}") from exc
        try:
            edge_index, dist = periodic_neighbours(cell.lattice, cell.frac, cutoff=self.cutoff)
        except (ValueError, TypeError, MemoryError) as exc:
            raise StructureError(structure_id, "neighbours", f"{type(exc).__name__}: {exc}") from exc
        n = len(cell.numbers)
        return GraphArrays(
            z=cell.numbers,
            edge_index=edge_index,
            edge_dist=dist,
            spacegroup=cell.spacegroup,
            num_sites=n,
            volume_per_atom=abs(float(np.linalg.det(cell.lattice))) / n,
            note=cell.note,
        )

    def expand_distances(self, dist: np.ndarray) -> np.ndarray:
        """Gaussian basis ``[E, K]`` float32 of distances ``[E]`` (Å)."""
        return gaussian_expansion(dist, self._centers, self.gaussian_width)

    def to_data(self, arrays: GraphArrays):
        """PyG ``Data`` from :class:`GraphArrays`."""
        # torch / PyG: seconds to import; only the tensor path needs them
        import torch
        from torch_geometric.data import Data

        table = element_embedding(self.embedding)
        return Data(
            x=torch.from_numpy(table[arrays.z].astype(np.float32)),
            z=torch.from_numpy(np.asarray(arrays.z, np.int64)),
            edge_index=torch.from_numpy(np.asarray(arrays.edge_index, np.int64)),
            edge_attr=torch.from_numpy(self.expand_distances(arrays.edge_dist)),
            edge_dist=torch.from_numpy(np.asarray(arrays.edge_dist, np.float32)),
            spacegroup=torch.tensor([arrays.spacegroup], dtype=torch.long),
            crystal_system=torch.tensor([arrays.crystal_system], dtype=torch.long),
            num_sites=torch.tensor([arrays.num_sites], dtype=torch.long),
            volume_per_atom=torch.tensor([arrays.volume_per_atom], dtype=torch.float32),
            num_nodes=int(arrays.num_sites),
        )

    def pack_arrays(self, graphs: Mapping[str, GraphArrays]) -> dict[str, Any]:
        """Storage payload (see :func:`save_graphs`) straight from :class:`GraphArrays`.

        ``edge_attr`` is not stored: it is a fixed function of ``edge_dist`` (K = 40 floats
        per edge, ~90% of the file), so the payload keeps the Gaussian centres and width
        and :func:`load_graphs` expands them. Loading gives the same ``Data`` as
        :meth:`to_data` (tested).
        """
        # torch: seconds to import; only this path needs it (torch-free serving and CLI start-up)
        import torch

        ids = list(graphs)
        arrs = [graphs[i] for i in ids]
        table = element_embedding(self.embedding)
        z = np.concatenate([a.z for a in arrs]) if arrs else np.zeros(0, np.int64)
        dist = np.concatenate([a.edge_dist for a in arrs]) if arrs else np.zeros(0)
        n_nodes = np.array([a.num_sites for a in arrs], dtype=np.int64)
        n_edges = np.array([a.edge_index.shape[1] for a in arrs], dtype=np.int64)
        edge_index = np.concatenate([a.edge_index for a in arrs], axis=1) if arrs else np.zeros((2, 0), np.int64)
        return {
            "format": GRAPHS_FORMAT,
            "ids": ids,
            "node_ptr": torch.from_numpy(np.concatenate([[0], np.cumsum(n_nodes)]).astype(np.int64)),
            "edge_ptr": torch.from_numpy(np.concatenate([[0], np.cumsum(n_edges)]).astype(np.int64)),
            "x": torch.from_numpy(table[z].astype(np.float32)).reshape(len(z), -1),
            "z": torch.from_numpy(z.astype(np.int64)),
            "edge_index": torch.from_numpy(edge_index.astype(np.int64)),
            "gaussian_centers": torch.from_numpy(self._centers.astype(np.float32)),
            "gaussian_width": torch.tensor(self.gaussian_width, dtype=torch.float64),
            "edge_dist": torch.from_numpy(dist.astype(np.float32)),
            "spacegroup": torch.tensor([a.spacegroup for a in arrs], dtype=torch.long),
            "crystal_system": torch.tensor([a.crystal_system for a in arrs], dtype=torch.long),
            "num_sites": torch.from_numpy(n_nodes),
            "volume_per_atom": torch.tensor([a.volume_per_atom for a in arrs], dtype=torch.float32),
        }

    def featurize(self, structure: Any, *, structure_id: str = "<structure>"):
        """One structure -> ``Data``; raises :class:`StructureError` naming ``structure_id``."""
        return self.to_data(self.graph_arrays(structure, structure_id=structure_id))

    # --- many structures -----------------------------------------------------------
    def featurize_many(
        self,
        items: Iterable[tuple[str, Any]],
        *,
        n_workers: int = 1,
        chunk_size: int = 256,
        progress: bool = False,
        as_data: bool = True,
        mapper: Callable[..., Iterable[Any]] | None = None,
    ) -> GraphBatch:
        """Featurize ``(id, structure)`` pairs, in ``n_workers`` processes when > 1.

        Structures may be pymatgen ``Structure`` objects, ``as_dict()`` dicts or their JSON
        strings (JSON is parsed in the workers). With ``on_error="record"`` a failing
        structure becomes a :class:`GraphFailure`; with ``"raise"`` the first failure is
        raised. ``as_data=False`` keeps :class:`GraphArrays` (for benchmarks). ``mapper``
        (``mapper(fn, featurizers, chunks)``, e.g. ``pipeline.engine``'s ``Engine.map``) runs
        the chunks elsewhere instead of ``n_workers`` local processes; it must yield the chunk
        results in input order, which keeps the output independent of where chunks ran.
        """
        items = list(items)
        chunks = [items[i : i + chunk_size] for i in range(0, len(items), chunk_size)]
        batch = GraphBatch()
        # tqdm: only when graphs are built (keeps it out of matshift predict's start-up)
        from tqdm.auto import tqdm

        bar = tqdm(total=len(items), desc="crystal graphs", unit="structure", disable=not progress)
        executor = None
        if mapper is not None:
            results: Iterable[list[tuple[str, GraphArrays | GraphFailure]]] = mapper(
                _run_chunk, [self] * len(chunks), chunks
            )
        elif n_workers <= 1:
            results = (_run_chunk(self, chunk) for chunk in chunks)
        else:

            executor = ProcessPoolExecutor(max_workers=n_workers, mp_context=multiprocessing.get_context("fork"))
            results = executor.map(_run_chunk, [self] * len(chunks), chunks)
        try:
            for chunk_result in results:
                for sid, res in chunk_result:
                    if isinstance(res, GraphFailure):
                        if self.on_error == "raise":
                            raise StructureError(res.id, res.step, res.reason)
                        batch.failures.append(res)
                        continue
                    if res.note:
                        batch.notes[sid] = res.note
                    batch.graphs[sid] = self.to_data(res) if as_data else res
                bar.update(len(chunk_result))
        finally:
            bar.close()
            if executor is not None:
                executor.shutdown(wait=True, cancel_futures=True)
            if mapper is not None and hasattr(results, "close"):
                results.close()  # a generator from an engine: cancels what is still queued
        return batch


def _run_chunk(
    featurizer: CrystalGraphFeaturizer, chunk: list[tuple[str, Any]]
) -> list[tuple[str, GraphArrays | GraphFailure]]:
    out: list[tuple[str, GraphArrays | GraphFailure]] = []
    for sid, structure in chunk:
        try:
            out.append((sid, featurizer.graph_arrays(structure, structure_id=sid)))
        except StructureError as exc:
            out.append((sid, GraphFailure(id=sid, step=exc.step, reason=exc.reason)))
    return out


def _cell_from_dict(d: Mapping[str, Any]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Lattice, fractional coordinates and Z from ``Structure.as_dict()`` without building a Structure.

    Equivalent to ``Structure.from_dict`` for ordered structures (tested), ~20x faster.
    """
    lattice = np.asarray(d["lattice"]["matrix"], dtype=float).reshape(3, 3)
    sites = d["sites"]
    frac = np.empty((len(sites), 3))
    numbers = np.empty(len(sites), dtype=np.int64)
    for i, site in enumerate(sites):
        species = site["species"]
        if len(species) != 1 or not math.isclose(float(species[0].get("occu", 1.0)), 1.0, abs_tol=1e-6):
            raise ValueError(f"site {i} is partially occupied ({species})")
        numbers[i] = Element(species[0]["element"]).Z
        if "abc" in site:
            frac[i] = site["abc"]
        else:
            frac[i] = np.linalg.solve(lattice.T, np.asarray(site["xyz"], dtype=float))
    return lattice, frac, numbers


_PBC = np.array([1, 1, 1], dtype=np.int64)


def gaussian_expansion(dist: np.ndarray, centers: np.ndarray, width: float, *, block: int = 16384) -> np.ndarray:
    r"""Gaussian basis :math:`\exp(-(d - \mu_k)^2 / (2\sigma^2))`, ``[E, K]`` float32.

    Computed in float32, block by block into one preallocated array: the ``[E, K]`` array is
    the largest the featurizer builds (K = 40 floats per edge), and working on cache-sized
    blocks in place is 1.5-2x faster than whole-array passes (``benchmarks/featurize.py``
    counts this step against the bare neighbour search). Same values whatever ``block``.
    """
    d = np.asarray(dist, dtype=np.float32).reshape(-1)
    mu = np.asarray(centers, dtype=np.float32).reshape(1, -1)
    gamma = np.float32(-0.5 / float(width) ** 2)
    out = np.empty((len(d), mu.shape[1]), dtype=np.float32)
    for s in range(0, len(d), block):
        o = out[s : s + block]
        np.subtract(d[s : s + block, None], mu, out=o)
        np.square(o, out=o)
        o *= gamma
        np.exp(o, out=o)
    return out


def periodic_neighbours(
    lattice: np.ndarray, frac: np.ndarray, *, cutoff: float, tol: float = 1e-8
) -> tuple[np.ndarray, np.ndarray]:
    """All (neighbour j, centre i) pairs within ``cutoff`` Å, images included, self excluded.

    Returns ``edge_index`` [2, E] int64 (row 0 = j, row 1 = i) and distances [E] float64, in
    the order pymatgen reports them (deterministic for a given cell).
    """
    # pymatgen's Cython neighbour search: only when edges are built
    from pymatgen.optimization.neighbors import find_points_in_spheres

    lattice = np.ascontiguousarray(lattice, dtype=float)
    cart = np.ascontiguousarray(frac @ lattice)
    centre, neigh, _images, dist = find_points_in_spheres(
        cart, cart, r=float(cutoff), pbc=_PBC, lattice=lattice, tol=tol
    )
    keep = np.flatnonzero(dist > tol)
    # no re-sorting: for the canonical cell pymatgen's output order is already deterministic
    return np.stack([neigh.take(keep), centre.take(keep)]), dist.take(keep)


# --- storage -------------------------------------------------------------------------
_NODE_KEYS = ("x", "z")
_EDGE_KEYS = ("edge_attr", "edge_dist")
_GRAPH_KEYS = ("spacegroup", "crystal_system", "num_sites", "volume_per_atom")


def pack_graphs(graphs: Mapping[str, Any]) -> dict[str, Any]:
    """Storage payload of ``{id: Data}``: a dict of concatenated plain tensors.

    Layout: ``format``, ``ids`` (list of str), ``node_ptr`` / ``edge_ptr`` (CSR offsets,
    [G + 1]), node tensors (``x``, ``z``) and edge tensors (``edge_attr``, ``edge_dist``)
    concatenated along dim 0, ``edge_index`` [2, E] local to each graph, graph tensors [G].
    (:meth:`CrystalGraphFeaturizer.pack_arrays` stores ``gaussian_centers`` and
    ``gaussian_width`` instead of ``edge_attr``.)
    """
    # torch: seconds to import; only this path needs it (torch-free serving and CLI start-up)
    import torch

    ids = list(graphs)
    datas = [graphs[i] for i in ids]
    n_nodes = [int(g.num_nodes) for g in datas]
    n_edges = [int(g.edge_index.shape[1]) for g in datas]
    payload: dict[str, Any] = {
        "format": GRAPHS_FORMAT,
        "ids": ids,
        "node_ptr": torch.tensor(np.concatenate([[0], np.cumsum(n_nodes)]), dtype=torch.long),
        "edge_ptr": torch.tensor(np.concatenate([[0], np.cumsum(n_edges)]), dtype=torch.long),
    }
    for key in (*_NODE_KEYS, *_EDGE_KEYS, *_GRAPH_KEYS):
        payload[key] = torch.cat([getattr(g, key) for g in datas]) if datas else torch.zeros(0)
    payload["edge_index"] = (
        torch.cat([g.edge_index for g in datas], dim=1) if datas else torch.zeros((2, 0), dtype=torch.long)
    )
    return payload


def save_graphs(path: Path | str, graphs: Mapping[str, Any]) -> None:
    """Write ``{id: Data}`` (or a payload from :func:`pack_graphs` / ``pack_arrays``).

    The file holds only plain tensors, lists and strings, so ``torch.load(path,
    weights_only=True)`` reads it.
    """
    # torch: seconds to import; only this path needs it (torch-free serving and CLI start-up)
    import torch

    payload = dict(graphs) if graphs.get("format") == GRAPHS_FORMAT else pack_graphs(graphs)
    torch.save(payload, str(path))


def load_graphs(path: Path | str, ids: Iterable[str] | None = None) -> dict[str, Any]:
    """Read :func:`save_graphs` output into ``{id: Data}`` (``torch.load(weights_only=True)``).

    With ``ids``, only those graphs are built (ids not in the file are left out): a
    prediction needing a few structures skips expanding every edge of the file.
    """
    # torch / PyG: seconds to import; only the tensor path needs them
    import torch
    from torch_geometric.data import Data

    payload = torch.load(str(path), weights_only=True)
    if not isinstance(payload, dict) or payload.get("format") != GRAPHS_FORMAT:
        raise ValueError(f"{path} is not a matshift graph file ({GRAPHS_FORMAT})")
    if ids is not None:
        return _load_subset(payload, ids)
    if "edge_attr" not in payload:
        # the same function as CrystalGraphFeaturizer.expand_distances, so loading gives to_data's values
        payload["edge_attr"] = _expand_payload(payload, payload["edge_dist"])
    n_nodes = torch.diff(payload["node_ptr"]).tolist()
    n_edges = torch.diff(payload["edge_ptr"]).tolist()
    # torch.split gives views in one call per field (per-graph slicing dominated loading)
    parts = {key: torch.split(payload[key], n_nodes) for key in _NODE_KEYS}
    parts.update({key: torch.split(payload[key], n_edges) for key in _EDGE_KEYS})
    parts["edge_index"] = torch.split(payload["edge_index"], n_edges, dim=1)
    parts.update({key: torch.split(payload[key], 1) for key in _GRAPH_KEYS})
    out: dict[str, Any] = {}
    for k, sid in enumerate(payload["ids"]):
        out[sid] = Data(num_nodes=n_nodes[k], **{key: value[k] for key, value in parts.items()})
    return out


def _load_subset(payload: dict[str, Any], ids: Iterable[str]) -> dict[str, Any]:
    # torch / PyG: seconds to import; only the tensor path needs them
    from torch_geometric.data import Data

    node_ptr, edge_ptr = payload["node_ptr"].tolist(), payload["edge_ptr"].tolist()
    position = {sid: k for k, sid in enumerate(payload["ids"])}
    out: dict[str, Any] = {}
    for sid in dict.fromkeys(ids):
        k = position.get(sid)
        if k is None:
            continue
        n0, n1, e0, e1 = node_ptr[k], node_ptr[k + 1], edge_ptr[k], edge_ptr[k + 1]
        fields = {key: payload[key][n0:n1] for key in _NODE_KEYS}
        fields["edge_dist"] = payload["edge_dist"][e0:e1]
        fields["edge_attr"] = (payload["edge_attr"][e0:e1] if "edge_attr" in payload
                               else _expand_payload(payload, fields["edge_dist"]))
        fields["edge_index"] = payload["edge_index"][:, e0:e1]
        fields.update({key: payload[key][k : k + 1] for key in _GRAPH_KEYS})
        out[sid] = Data(num_nodes=n1 - n0, **fields)
    return out


def _expand_payload(payload: Mapping[str, Any], dist: Any) -> Any:
    # torch: seconds to import; only this path needs it (torch-free serving and CLI start-up)
    import torch

    return torch.from_numpy(gaussian_expansion(
        dist.numpy(), payload["gaussian_centers"].numpy(), float(payload["gaussian_width"])))
