"""Training checkpoints that every bort training loop uses: atomic, complete, resumable bit for bit.

A checkpoint is a directory ``<run>/step-00000100/`` holding the model (``model.safetensors``, and
for a `BortModel` its config.json, so each checkpoint is also a loadable model), and
``trainer.pt``: optimizer, scheduler, every RNG (python, numpy, torch, CUDA), the step and the
loop's data position. It is written under a temporary name and renamed into place, so a crash or
Ctrl-C mid-write leaves the previous checkpoint as it was and never a half-written one.

Example (inside a training loop)::

    state = resume(run_dir, model=model, optimizer=opt, scheduler=sched)  # None on a fresh run
    start = state.step if state else 0
    for step in range(start, total):
        ...
        if step % every == 0:
            save_checkpoint(run_dir, step, model=model, optimizer=opt, scheduler=sched,
                            data={"epoch": epoch, "batch": i})
"""

from __future__ import annotations

import io
import os
import random
import re
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from .distributed import is_main
from .errors import CheckpointError
from .io import fsync_dir, save_safetensors, write_bytes
from .model import BortModel, load_weights
from .weights import to_bort_names

__all__ = ["TrainState", "latest_checkpoint", "resume", "save_checkpoint"]

_STEP_DIR = re.compile(r"^step-(\d{8,})$")
_TRAINER_FILE = "trainer.pt"
_FORMAT = 1


@dataclass
class TrainState:
    """What `resume` hands back to the loop: the step reached, the loop's data position and any
    extra values it saved (metrics, best score, ...)."""

    step: int
    data: dict[str, Any] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)
    path: Path | None = None


def _unwrap(model: nn.Module) -> nn.Module:
    return model.module if hasattr(model, "module") else model  # DistributedDataParallel


def _rng_state() -> dict[str, Any]:
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    state = {
        "python": random.getstate(),
        "numpy": [kind, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, gauss],
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    kind, keys, pos, has_gauss, gauss = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, gauss))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_checkpoint(directory: str | Path, step: int, *, model: nn.Module,
                    optimizer: torch.optim.Optimizer | None = None,
                    scheduler: Any = None, data: dict[str, Any] | None = None,
                    extra: dict[str, Any] | None = None, keep: int = 3) -> Path:
    """Write checkpoint ``step`` under ``directory`` atomically; keep the newest ``keep``.

    Returns the checkpoint's path. Under torch.distributed only rank 0 writes.
    """
    if keep < 1:
        raise ValueError(f"keep must be >= 1, got {keep}")
    directory = Path(directory)
    final = directory / f"step-{step:08d}"
    if not is_main():
        return final
    directory.mkdir(parents=True, exist_ok=True)
    for stale in directory.glob(".tmp-step-*"):  # left by a crash mid-write
        shutil.rmtree(stale, ignore_errors=True)
    tmp = Path(tempfile.mkdtemp(dir=directory, prefix=f".tmp-{final.name}-"))
    try:
        model = _unwrap(model)
        if isinstance(model, BortModel):
            model.save_pretrained(tmp)
        else:
            save_safetensors(model.state_dict(), tmp / "model.safetensors")
        trainer = io.BytesIO()
        torch.save({
            "format": _FORMAT,
            "step": step,
            "data": dict(data or {}),
            "extra": dict(extra or {}),
            "optimizer": optimizer.state_dict() if optimizer is not None else None,
            "scheduler": scheduler.state_dict() if scheduler is not None else None,
            "rng": _rng_state(),
        }, trainer)
        write_bytes(tmp / _TRAINER_FILE, trainer.getvalue())
        if final.exists():  # the same step saved again (e.g. interrupted right after a resume)
            old = directory / f".tmp-{final.name}-old"
            os.replace(final, old)
            os.replace(tmp, final)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, final)
        fsync_dir(directory)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    for old in _checkpoints(directory)[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def _checkpoints(directory: Path) -> list[Path]:
    """Complete checkpoints under ``directory``, oldest first."""
    if not directory.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in directory.iterdir()
             if p.is_dir() and (m := _STEP_DIR.match(p.name))]
    return [p for _, p in sorted(found)]


def latest_checkpoint(directory: str | Path) -> Path | None:
    """The newest complete checkpoint under ``directory``, or None."""
    found = _checkpoints(Path(directory))
    return found[-1] if found else None


def resume(directory: str | Path, *, model: nn.Module,
           optimizer: torch.optim.Optimizer | None = None, scheduler: Any = None,
           restore_rng: bool = True) -> TrainState | None:
    """Restore model, optimizer, scheduler and RNGs from the newest checkpoint under ``directory``
    (or from ``directory`` itself when it is one). Returns None when there is none yet.

    Raises CheckpointError when the checkpoint is unreadable or does not fit the model.
    """
    directory = Path(directory)
    path = directory if (directory / _TRAINER_FILE).is_file() else latest_checkpoint(directory)
    if path is None:
        return None
    trainer = _read_trainer(path / _TRAINER_FILE)
    try:
        _restore(path, trainer, _unwrap(model), optimizer, scheduler)
    except (RuntimeError, ValueError, KeyError) as e:
        raise CheckpointError(f"{path}: does not fit this model/optimizer ({e})") from e
    if restore_rng:
        _set_rng_state(trainer["rng"])
    return TrainState(step=trainer["step"], data=trainer["data"], extra=trainer["extra"],
                      path=path)


def _read_trainer(path: Path) -> dict[str, Any]:
    """The loop state in ``trainer.pt``, read with ``weights_only=True`` and its format checked."""
    try:
        trainer = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # refused, corrupt and unreadable files raise many types
        raise CheckpointError(f"{path}: unreadable checkpoint ({e})") from None
    if not isinstance(trainer, dict) or trainer.get("format") != _FORMAT:
        raise CheckpointError(f"{path}: not a bort checkpoint (format "
                              f"{trainer.get('format') if isinstance(trainer, dict) else '?'})")
    return trainer


def _restore(path: Path, trainer: dict[str, Any], model: nn.Module,
             optimizer: torch.optim.Optimizer | None, scheduler: Any) -> None:
    """Load the checkpoint at ``path`` into the model, and the saved states into the optimizer
    and scheduler that are given (each must have been saved)."""
    if isinstance(model, BortModel):
        model.load_checked(to_bort_names(load_weights(path)), source=str(path))
    else:
        model.load_state_dict(load_weights(path), strict=True)
    for name, target in (("optimizer", optimizer), ("scheduler", scheduler)):
        if target is None:
            continue
        if trainer[name] is None:
            raise CheckpointError(f"{path}: saved without {name} state")
        target.load_state_dict(trainer[name])
