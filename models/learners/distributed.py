"""Data-parallel training (``torch.distributed``): gloo on CPU, NCCL on GPU, launched by ``torchrun``.

:func:`models.learners.train_model` takes an optional ``parallel`` hook; this module provides
it. Every rank builds the same tables, draws the same minibatch indices from the same seeded
generator, and keeps **its share** of each minibatch (:meth:`DataParallel.shard`: rows
``rank::world`` of the DFT and of the experimental part). After ``backward`` the gradients
are averaged over ranks (:meth:`DataParallel.sync_gradients`, one all-reduce of a flat
buffer), so every rank takes the same optimiser step, and validation, early stopping and
model selection (computed on every rank from identical weights) agree without extra
communication. With equal shards the averaged gradient is the gradient of the global
minibatch loss: 2 processes train the model that 1 process trains with the same global
batch, up to float32 summation order (tests/models/learners/test_distributed.py bounds the difference).

Where the shards are unequal (a minibatch not divisible by the world size) the average of
per-rank means weights rows slightly differently from the global mean; a minibatch smaller
than the world size is computed whole on every rank (its average is then exact). The
minibatch UOT alignment term is computed per shard (it is not a sum over rows), which is the
usual data-parallel approximation; its weight is small (``w_ot``).

Only rank 0 writes outputs (:func:`is_writer`); checkpoints are per rank. This module never
reads params; :func:`init_from_env` reads the variables ``torchrun`` sets (``RANK``,
``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR``, ``MASTER_PORT``) because that is the
launcher's contract, and is called only by entry points.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import timedelta

import numpy as np
import torch
import torch.distributed as dist

__all__ = ["DataParallel", "init_from_env", "is_writer", "shutdown"]


@dataclass(frozen=True)
class DataParallel:
    """The ``parallel`` hook of :func:`models.learners.train_model` for one rank of ``world``."""

    rank: int
    world: int

    def __post_init__(self) -> None:
        if self.world < 1 or not 0 <= self.rank < self.world:
            raise ValueError(f"rank must be in [0, world), got rank {self.rank}, world {self.world}")

    def shard_rows(self, idx: np.ndarray) -> np.ndarray:
        """Keep rows ``idx[rank::world]`` of one part of a minibatch (all of a part smaller than world)."""
        if len(idx) < self.world:
            return idx
        return idx[self.rank :: self.world]

    def shard(self, d_idx: np.ndarray, e_idx: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Keep this rank's share of a (DFT rows, experimental rows) minibatch.

        Never empty when the minibatch is not: a part smaller than the world stays whole.
        """
        return self.shard_rows(d_idx), self.shard_rows(e_idx)

    def sync_gradients(self, model: torch.nn.Module) -> None:
        """Average the gradients of ``model`` over ranks (one all-reduce).

        A parameter without a gradient on every rank keeps ``grad = None`` (the optimiser
        then skips it, as in one process); one with a gradient on some rank gets the average
        with zeros for the others.
        """
        if self.world == 1:
            return
        params = [p for p in model.parameters() if p.requires_grad]
        if not params:
            return
        device = params[0].device
        flags = torch.tensor([p.grad is not None for p in params], dtype=torch.float32, device=device)
        flat = torch.cat([
            (p.grad if p.grad is not None else torch.zeros_like(p)).reshape(-1).to(torch.float32) for p in params
        ])
        dist.all_reduce(flags)
        dist.all_reduce(flat)
        flat /= self.world
        offset = 0
        for p, has in zip(params, flags.tolist(), strict=True):
            n = p.numel()
            if has > 0:
                p.grad = flat[offset : offset + n].view_as(p).to(p.dtype).clone()
            offset += n


def init_from_env(*, backend: str | None = None, timeout_s: float = 300.0) -> tuple[DataParallel, torch.device]:
    """Join the process group ``torchrun`` describes; returns the hook and this rank's device.

    ``backend`` defaults to NCCL when CUDA is available (one GPU per local rank) and gloo
    otherwise. Without ``torchrun`` variables (a plain ``python`` run) it returns a world of
    one and the default device, without a process group.
    """
    if "WORLD_SIZE" not in os.environ:
        device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        return DataParallel(rank=0, world=1), device
    try:
        rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
        local = int(os.environ.get("LOCAL_RANK", "0"))
    except (KeyError, ValueError) as exc:
        raise RuntimeError(f"torchrun environment incomplete or malformed: {exc}") from exc
    use_cuda = torch.cuda.is_available() if backend is None else backend == "nccl"
    backend = backend or ("nccl" if use_cuda else "gloo")
    if use_cuda:
        torch.cuda.set_device(local)
        device = torch.device("cuda", local)
    else:
        device = torch.device("cpu")
    if not dist.is_initialized():
        dist.init_process_group(backend=backend, rank=rank, world_size=world, timeout=timedelta(seconds=timeout_s))
    return DataParallel(rank=rank, world=world), device


def is_writer(parallel: DataParallel | None) -> bool:
    """Whether this process writes outputs (rank 0, or a run without a process group)."""
    return parallel is None or parallel.rank == 0


def shutdown() -> None:
    """Leave the process group if one was joined (idempotent)."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
