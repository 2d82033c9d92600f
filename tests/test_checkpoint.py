"""The checkpoint helper: resume is bit for bit, writes are atomic, bad checkpoints are named."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch

from bort import Arch, CheckpointError
from bort.checkpoint import latest_checkpoint, resume, save_checkpoint
from bort.model import BortModel

ARCH = Arch(hidden=32, layers=[(2, 16, 48), (0, 0, 40)], vocab_size=60, max_positions=16,
            num_labels=2, dropout=0.2, attention_dropout=0.1)


def make_run():
    model = BortModel(ARCH)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda step: 1.0 / (1 + step))
    return model, opt, sched


def train_steps(model, opt, sched, start: int, stop: int) -> list[float]:
    """A loop whose every step draws from python, numpy and torch RNGs (data, noise, dropout)."""
    losses = []
    model.train()
    for _ in range(start, stop):
        n = random.randint(3, 10)
        shift = int(np.random.randint(0, 5))
        ids = torch.randint(1, 57, (4, n)) + shift % 3
        loss = torch.nn.functional.cross_entropy(model(ids).logits, torch.randint(0, 2, (4,)))
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
        losses.append(loss.item())
    return losses


def seed_all(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def test_resume_is_bit_for_bit(tmp_path) -> None:
    seed_all(0)
    model, opt, sched = make_run()
    straight = train_steps(model, opt, sched, 0, 6)
    expected = {k: v.clone() for k, v in model.state_dict().items()}

    seed_all(0)
    model, opt, sched = make_run()
    first = train_steps(model, opt, sched, 0, 3)
    save_checkpoint(tmp_path, 3, model=model, optimizer=opt, scheduler=sched,
                    data={"epoch": 0, "batch": 3})
    train_steps(model, opt, sched, 3, 5)  # diverge, as if the process went on and then died

    seed_all(123)  # a new process starts from other RNG states
    model, opt, sched = make_run()
    state = resume(tmp_path, model=model, optimizer=opt, scheduler=sched)
    assert state.step == 3 and state.data == {"epoch": 0, "batch": 3}
    rest = train_steps(model, opt, sched, state.step, 6)
    assert first + rest == straight
    for name, value in model.state_dict().items():
        assert torch.equal(value, expected[name]), name


def test_checkpoint_is_a_loadable_model(tmp_path) -> None:
    model, opt, sched = make_run()
    path = save_checkpoint(tmp_path, 7, model=model, optimizer=opt)
    back = BortModel.from_pretrained(path)
    assert all(torch.equal(a, b) for a, b in zip(back.state_dict().values(),
                                                  model.state_dict().values()))


def test_crash_mid_write_keeps_the_previous_checkpoint(tmp_path, monkeypatch) -> None:
    model, opt, sched = make_run()
    good = save_checkpoint(tmp_path, 1, model=model, optimizer=opt, scheduler=sched)

    def crash(*args, **kwargs):
        raise KeyboardInterrupt  # Ctrl-C in the middle of writing the trainer state

    monkeypatch.setattr(torch, "save", crash)
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint(tmp_path, 2, model=model, optimizer=opt, scheduler=sched)
    monkeypatch.undo()
    assert latest_checkpoint(tmp_path) == good
    assert sorted(p.name for p in tmp_path.iterdir()) == ["step-00000001"]
    assert resume(tmp_path, model=model, optimizer=opt, scheduler=sched).step == 1


def test_keeps_the_newest(tmp_path) -> None:
    model, opt, _ = make_run()
    for step in (5, 10, 15, 20):
        save_checkpoint(tmp_path, step, model=model, optimizer=opt, keep=2)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["step-00000015", "step-00000020"]
    save_checkpoint(tmp_path, 20, model=model, optimizer=opt, keep=2)  # same step again
    assert latest_checkpoint(tmp_path).name == "step-00000020"


def test_bad_checkpoints(tmp_path) -> None:
    model, opt, sched = make_run()
    assert resume(tmp_path / "none-yet", model=model) is None
    path = save_checkpoint(tmp_path, 1, model=model)
    with pytest.raises(CheckpointError, match="without optimizer state"):
        resume(tmp_path, model=model, optimizer=opt)
    other = BortModel(Arch.uniform(1, 2, 32, 16, vocab_size=60, max_positions=16))
    with pytest.raises(CheckpointError, match="does not fit"):
        resume(tmp_path, model=other)
    (path / "trainer.pt").write_bytes(b"truncated")
    with pytest.raises(CheckpointError, match="unreadable checkpoint"):
        resume(tmp_path, model=model)
    with pytest.raises(ValueError, match="keep must be"):
        save_checkpoint(tmp_path, 2, model=model, keep=0)
