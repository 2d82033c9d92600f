"""Where this process stands under torch.distributed, and joining the group `torchrun` set up.

Torch is imported only when a process group may exist, so torch-free code can ask too.

Example::

    with torchrun():                  # joins the group when launched by torchrun, else nothing
        rank, world_size = world()
        ...
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager

__all__ = ["is_main", "launched_by_torchrun", "torchrun", "world"]


def world() -> tuple[int, int]:
    """(rank, world size) of this process under torch.distributed, else (0, 1)."""
    if "torch" not in sys.modules:  # no torch loaded: no process group either
        return 0, 1
    dist = sys.modules["torch"].distributed
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def is_main() -> bool:
    """True on rank 0 (and outside torch.distributed): the process that writes and prints."""
    return world()[0] == 0


def launched_by_torchrun() -> bool:
    """True when ``torchrun`` started this process as one of several (``WORLD_SIZE`` > 1)."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


@contextmanager
def torchrun() -> Iterator[tuple[int, int]]:
    """Join the process group that torchrun set up (nccl on a GPU, gloo on the CPU) for the
    duration of the block and yield (rank, world size); outside torchrun, yield (0, 1)."""
    if not launched_by_torchrun():
        yield 0, 1
        return
    import torch

    torch.distributed.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    try:
        yield world()
    finally:
        torch.distributed.destroy_process_group()
