"""What every bort training loop shares: seeding, AdamW with the usual parameter groups, a linear
warm-up then linear decay schedule, the optimizer step, DistributedDataParallel, a progress bar
and the checkpoint on Ctrl-C (the rank itself comes from `bort.distributed`)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager

import torch
from torch import nn

__all__ = ["Progress", "adamw", "checkpoint_on_interrupt", "parallel", "seed_everything", "step",
           "warmup_linear"]


def seed_everything(seed: int) -> None:
    """Seed python's, numpy's and torch's global generators."""
    import random

    import numpy as np

    torch.manual_seed(seed)
    random.seed(seed)
    np.random.seed(seed)


def adamw(module: nn.Module, lr: float, weight_decay: float) -> torch.optim.AdamW:
    """AdamW over ``module``'s trainable parameters, with no weight decay on LayerNorm weights
    and biases (BERT's recipe)."""
    named = [(n, p) for n, p in module.named_parameters() if p.requires_grad]
    decay = [p for n, p in named if p.ndim >= 2 and "LayerNorm" not in n]
    rest = [p for n, p in named if not (p.ndim >= 2 and "LayerNorm" not in n)]
    return torch.optim.AdamW([{"params": decay, "weight_decay": weight_decay},
                              {"params": rest, "weight_decay": 0.0}], lr=lr)


def warmup_linear(optimizer: torch.optim.Optimizer, total: int,
                  warmup: float) -> torch.optim.lr_scheduler.LambdaLR:
    """Linear warm-up over the first ``warmup`` share of ``total`` steps, then linear decay to 0."""
    warm = max(1, round(warmup * total))

    def factor(step: int) -> float:
        return min((step + 1) / warm, max(0.0, (total - step) / max(1, total - warm)))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def step(loss: torch.Tensor, module: nn.Module, optimizer: torch.optim.Optimizer,
         scheduler: torch.optim.lr_scheduler.LRScheduler, clip: float, ranks: int) -> float:
    """One optimizer step on ``loss`` (gradients clipped to ``clip``); returns the loss of the
    whole batch, averaged over ``ranks`` when each rank saw its share."""
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    nn.utils.clip_grad_norm_(module.parameters(), clip)
    optimizer.step()
    scheduler.step()
    value = loss.detach()
    if ranks > 1:
        torch.distributed.all_reduce(value)
        value /= ranks
    return value.item()


def parallel(module: nn.Module, ranks: int) -> nn.Module:
    """``module`` wrapped in DistributedDataParallel when ``ranks`` > 1 (its gradients then
    average over the ranks), else ``module`` itself."""
    return nn.parallel.DistributedDataParallel(module) if ranks > 1 else module


class Progress:
    """A tqdm bar of optimizer steps, shown only when ``enabled`` (rank 0 asked for one).

    Example::

        with Progress(True, total=100, initial=0, desc="distill") as bar:
            bar.step(loss)
    """

    def __init__(self, enabled: bool, total: int, initial: int, desc: str):
        self.bar = None
        if enabled:
            from tqdm.auto import tqdm

            self.bar = tqdm(total=total, initial=initial, desc=desc, unit="step")

    def step(self, loss: float) -> None:
        """One step done, its loss shown."""
        if self.bar is not None:
            self.bar.update(1)
            self.bar.set_postfix(loss=f"{loss:.4f}")

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc: object) -> None:
        if self.bar is not None:
            self.bar.close()


@contextmanager
def checkpoint_on_interrupt(save: Callable[[], int],
                            log: Callable[[str], None] | None) -> Iterator[None]:
    """Run the block; on Ctrl-C, call ``save()`` (which writes a checkpoint and returns its
    step), say so through ``log`` and re-raise."""
    try:
        yield
    except KeyboardInterrupt:
        done = save()
        if log:
            log(f"interrupted at step {done}: checkpoint written; rerun with resume to go on")
        raise
