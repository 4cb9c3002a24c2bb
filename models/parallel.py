"""Independent pieces of work on this machine's cores: a fork-based process pool that keeps input order.

:func:`fork_map` runs ``fn(item)`` for every item in ``workers`` forked processes and yields
the results **in the order of the items**, so a caller that loops over them (a progress bar,
a log line per fold) behaves as it would serially, and the results are identical to the
serial loop's when ``fn`` is pure and seeds its own randomness. The processes are forked
after ``fn`` and ``items`` are set, so they inherit both (models, tables, closures) instead of
receiving them pickled; only each piece's *result* travels back, pickled.

In the workers, progress bars are hidden (:func:`models.progress.hide_bars`): two processes
drawing bars on one terminal tear each other; the caller draws the bar over the results.

Fork is not safe once CUDA is initialised, and not offered on Windows: :func:`can_fork`
says when the pool is used; otherwise the items run in this process, one after the other.

>>> list(fork_map(lambda x: x * x, [3, 1, 2], workers=2))
[9, 1, 4]
"""

from __future__ import annotations

import multiprocessing
import sys
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from typing import Any, TypeVar

from models import progress

__all__ = ["WorkerDied", "can_fork", "fork_map"]

T = TypeVar("T")
R = TypeVar("R")

# (fn, items) of the running fork_map: set before the pool forks, read by the workers
_WORK: tuple[Callable[[Any], Any], Sequence[Any]] | None = None
# True in a worker: a fork_map called by a piece runs its items in that worker, one after the other
_IN_WORKER = False


class WorkerDied(RuntimeError):
    """A worker process ended without returning its piece (killed, e.g. by the out-of-memory killer)."""


def can_fork(device: Any = "cpu") -> bool:
    """Return whether :func:`fork_map` may fork here: a platform with fork and work that stays off the GPU.

    ``device``: a name (``"cpu"``, ``"cuda"``), a ``torch.device`` (its ``type``), or None (CPU).
    """
    kind = "cpu" if device is None else getattr(device, "type", device)
    return kind == "cpu" and sys.platform != "win32" and "fork" in multiprocessing.get_all_start_methods()


def _start_worker() -> None:
    global _IN_WORKER
    _IN_WORKER = True
    progress.hide_bars()
    # The processes are the parallelism: one thread each for every OpenMP and BLAS runtime loaded
    # (torch's, scikit-learn's, LightGBM's, OpenBLAS). It also keeps a worker out of an OpenMP
    # thread pool the parent started: its threads do not exist after the fork, and entering it
    # hangs the worker. LightGBM resets its thread count from n_jobs at every fit and predict, so
    # LightGBM models used in a piece need n_jobs=1 (see fork_map).
    from threadpoolctl import threadpool_limits

    threadpool_limits(limits=1)
    torch = sys.modules.get("torch")
    if torch is not None:
        torch.set_num_threads(1)


def _piece(i: int) -> Any:
    fn, items = _WORK  # type: ignore[misc]  # set by fork_map before the fork
    return fn(items[i])


def fork_map(fn: Callable[[T], R], items: Sequence[T], *, workers: int, device: Any = "cpu") -> Iterator[R]:
    """Yield ``fn(item)`` for each of ``items`` in order, computed by up to ``workers`` forked processes.

    ``workers <= 1``, a single item, a call from inside a worker, or :func:`can_fork` false
    (``device`` not the CPU): a plain loop here. In a worker every OpenMP and BLAS
    runtime runs one thread; LightGBM models that ``fn`` fits or predicts with must have
    ``n_jobs=1`` (after the parent ran LightGBM on more threads, a worker that does so hangs).
    An exception raised by ``fn`` is re-raised here, and the pieces not yet started are
    cancelled. Raises :class:`WorkerDied` when a worker dies.
    """
    global _WORK
    items = list(items)
    workers = min(workers, len(items))
    if workers <= 1 or _IN_WORKER or not can_fork(device):
        yield from map(fn, items)
        return
    if _WORK is not None:
        raise RuntimeError("fork_map runs one pool at a time per process: finish the other one first")
    _WORK = (fn, items)
    pool = ProcessPoolExecutor(max_workers=workers, mp_context=multiprocessing.get_context("fork"),
                               initializer=_start_worker)
    try:
        futures = [pool.submit(_piece, i) for i in range(len(items))]
        for future in futures:
            try:
                yield future.result()
            except BrokenProcessPool as exc:
                raise WorkerDied(f"a worker process died while running {len(items)} pieces on {workers} processes "
                                 "(out of memory?); run them in one process (workers: 1)") from exc
    finally:
        _WORK = None
        pool.shutdown(wait=True, cancel_futures=True)
