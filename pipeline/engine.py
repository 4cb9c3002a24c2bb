"""Where a stage's parallel work runs: ``local`` (this machine's processes) or ``dask``.

A stage that has independent pieces of work (featurize: chunks of structures; align: the
connected blocks of a hard-block transport problem) hands them to an :class:`Engine` as
``engine.map(fn, items)`` and gets the results back **in the order of ``items``**, whatever
the number of workers or the order in which they finish. That ordering, and work functions
that are pure (the same piece gives the same result on any worker), is what makes a stage's
outputs identical for every engine; the tests compare them.

``local``
    ``n_workers <= 1``: a plain loop in this process; otherwise forked processes that inherit
    the pieces (:func:`models.parallel.fork_map`, the pool the evaluate, metal and train
    stages use for their folds and members).
``dask``
    a ``dask.distributed`` client: on a fresh ``LocalCluster`` (``n_workers`` processes, one
    thread each: the work holds the GIL) when no scheduler address is given, on the running
    scheduler at ``scheduler_address`` otherwise (``tcp://host:8786``; its workers need
    matshift importable, e.g. ``pip install -e .`` in the same environment).

The engine never reads params or environment variables; the stage passes its settings.
Dask is imported only when the ``dask`` engine is opened, so the local path needs no Dask.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Protocol

from models.parallel import fork_map
from pipeline.config import ENGINES, check_engine
from pipeline.errors import MatshiftError


class EngineError(MatshiftError):
    """The engine could not start, reach its scheduler, or run a piece of work."""


class Engine(Protocol):
    name: str
    n_workers: int

    def map(self, fn: Callable[..., Any], *iterables: Sequence[Any]) -> Iterator[Any]:
        """``fn`` applied to the zipped items, yielded in input order."""
        ...


@dataclass
class LocalEngine:
    """In-process loop (``n_workers <= 1``) or a fork-based process pool."""

    n_workers: int = 1
    name: str = "local"

    def map(self, fn: Callable[..., Any], *iterables: Sequence[Any]) -> Iterator[Any]:
        yield from fork_map(lambda args: fn(*args), list(zip(*iterables, strict=False)), workers=self.n_workers)


@dataclass
class DaskEngine:
    """A connected ``dask.distributed.Client``; results are gathered in submission order."""

    client: Any
    n_workers: int
    name: str = "dask"

    def map(self, fn: Callable[..., Any], *iterables: Sequence[Any]) -> Iterator[Any]:
        # The pieces go to the workers as data (scatter), not inside the task graph: a graph
        # carrying every structure grows with the data set (Dask warns above a few MiB).
        # hash=False: hashing structure JSON costs more than sending it; equal arguments
        # (the featurizer repeated per chunk) are scattered once.
        args = []
        for it in iterables:
            items = list(it)
            if items and all(x is items[0] for x in items):
                args.append([self.client.scatter(items[0], broadcast=True, hash=False)] * len(items))
            else:
                args.append(self.client.scatter(items, hash=False))
        futures = self.client.map(fn, *args, pure=False)
        try:
            for i, fut in enumerate(futures):
                try:
                    yield fut.result()
                except Exception as exc:  # a worker's exception, re-raised here by Dask
                    raise EngineError(f"dask: piece {i} of {len(futures)} failed: {type(exc).__name__}: {exc}") from exc
        finally:
            self.client.cancel(futures)


@contextmanager
def open_engine(
    engine: str = "local",
    *,
    n_workers: int = 1,
    scheduler_address: str | None = None,
    timeout_s: float = 60.0,
) -> Iterator[Engine]:
    """Open the engine named ``engine`` for the duration of a ``with`` block.

    ``n_workers`` is the pool size of the local engine and the number of worker processes of
    the ``LocalCluster`` the dask engine starts when ``scheduler_address`` is None (a given
    scheduler brings its own workers; ``n_workers`` is then ignored). Everything started
    here is shut down on exit, also after an error.
    """
    check_engine(engine, scheduler_address)
    if n_workers < 1:
        raise ValueError(f"n_workers must be >= 1, got {n_workers}")
    if engine == "local":
        yield LocalEngine(n_workers=n_workers)
        return
    try:
        # Dask: only for the dask engine
        from dask.distributed import Client, LocalCluster
    except ImportError as exc:
        raise EngineError("engine 'dask' needs dask and distributed: pip install 'dask[distributed]'") from exc
    cluster = None
    try:
        if scheduler_address is None:
            # no dashboard: a fixed port (8787) collides between concurrent runs on one host
            cluster = LocalCluster(n_workers=n_workers, threads_per_worker=1, processes=True,
                                   dashboard_address=None, silence_logs=40)
            client = Client(cluster, timeout=timeout_s)
        else:
            client = Client(scheduler_address, timeout=timeout_s)
    except (OSError, TimeoutError, RuntimeError) as exc:  # RuntimeError: a nanny failed to start a worker
        if cluster is not None:
            cluster.close()
        where = scheduler_address or "a LocalCluster"
        raise EngineError(f"dask: cannot connect to {where}: {exc}") from exc
    try:
        workers = len(client.scheduler_info().get("workers", {})) or n_workers
        yield DaskEngine(client=client, n_workers=workers)
    finally:
        client.close()
        if cluster is not None:
            cluster.close()


__all__ = ["ENGINES", "DaskEngine", "Engine", "EngineError", "LocalEngine", "check_engine", "open_engine"]
