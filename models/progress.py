"""Progress of the long steps: tqdm bars with an ETA, and one log line per finished step.

Both follow the logging level that ``matshift`` sets: at INFO (the default) the bars are
drawn on stderr and every finished :class:`Steps` step logs a line with its time; with
``matshift -q`` (WARNING) there are neither. Library callers see nothing unless they turn
INFO logging on. The CLI routes log lines through ``tqdm.write`` while a stage runs, so a
line does not tear a bar.

>>> import logging
>>> steps = Steps("train band_gap", ["GNN members", "stacked model"], logging.getLogger("demo"))
>>> with steps("GNN members"):
...     pass
>>> steps.done
1
"""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from typing import TYPE_CHECKING, TypeVar

if TYPE_CHECKING:
    from tqdm import tqdm

__all__ = ["Steps", "bar", "hide_bars", "showing"]

T = TypeVar("T")

# set in a worker process (models/parallel.py): its bars would tear the parent's on a shared stderr
_bars_hidden = False


def hide_bars() -> None:
    """Draw no bar in this process from now on (log lines still appear); for worker processes."""
    global _bars_hidden
    _bars_hidden = True


def showing() -> bool:
    """Return whether progress is shown: the root logger passes INFO (``matshift`` without ``-q``)."""
    return logging.getLogger().isEnabledFor(logging.INFO)


def bar(iterable: Iterable[T] | None = None, *, desc: str, total: int | None = None, unit: str = "step",
        leave: bool = False, show: bool = True) -> tqdm:
    """Return a tqdm bar over ``iterable`` (or a manual one of ``total``), drawn when ``show`` and :func:`showing`."""
    from tqdm.auto import tqdm  # imported on first use: keeps it out of `matshift predict`'s start-up

    # into a log file (dvc repro > log): one line position, no cursor movement, a refresh every 10 s
    terminal = sys.stderr.isatty()
    return tqdm(iterable, desc=desc, total=total, unit=unit, leave=leave, disable=_bars_hidden or not (show and showing()),
                mininterval=0.5 if terminal else 10.0, position=None if terminal else 0, dynamic_ncols=True)


class Steps:
    """A named plan of steps: a bar over them (ETA from the steps done) and a log line when each ends."""

    def __init__(self, desc: str, names: Sequence[str], log: logging.Logger) -> None:
        self.desc, self.names, self.log = desc, list(names), log
        self.done = 0
        self._bar = bar(desc=desc, total=len(self.names), leave=False)

    @contextmanager
    def __call__(self, name: str) -> Iterator[None]:
        """Run one step of the plan (``name`` must be in it); on success, advance the bar and log its time."""
        if name not in self.names:
            raise ValueError(f"{self.desc}: step {name!r} is not in the plan {self.names}")
        self._bar.set_postfix_str(name)
        t0 = time.perf_counter()
        yield
        self.done += 1
        self._bar.update(1)
        self.log.info("%s: [%d/%d] %s in %.0f s", self.desc, self.done, len(self.names), name,
                      time.perf_counter() - t0)
        if self.done == len(self.names):
            self._bar.close()
