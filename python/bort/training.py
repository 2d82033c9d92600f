"""What every bort training loop shares: its rank, AdamW with the usual parameter groups, and a
linear warm-up then linear decay schedule."""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["adamw", "seed_everything", "step", "warmup_linear", "world"]


def world() -> tuple[int, int]:
    """(rank, world size) under torch.distributed, else (0, 1)."""
    dist = torch.distributed
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


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
