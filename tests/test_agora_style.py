"""bort's Agora (`bort.agora_style`) on a synthetic task where the shared gold data cannot teach
the control arms: both ways of finding mistakes without the selection data, the random arm's
matched counts, equal compute per arm, resumption and bad input."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file
from torch import nn

from bort.agora_style import (
    POINTS_FILE,
    STATE_FILE,
    RoundsData,
    Rows,
    agora_rounds,
    confident,
    nearest,
)
from bort.config import AgoraConfig
from bort.errors import CheckpointError, ConfigError, DataError
from bort.finetune import kd_loss

R, r = 2.0, 0.5  # the torus' ring and tube radii
EDITS, SIGMA = 16, 0.5  # Gaussian edits per point, and their scale


def ring(n: int, rng: np.random.Generator, lo: float = 0.0, hi: float = 2 * math.pi):
    """Points on a torus at ring angle θ ∈ [lo, hi), labelled by the sign of sin 4θ: the
    class alternates every eighth of the ring."""
    theta, phi = rng.uniform(lo, hi, n), rng.uniform(0, 2 * math.pi, n)
    X = np.stack([(R + r * np.cos(phi)) * np.cos(theta), (R + r * np.cos(phi)) * np.sin(theta),
                  r * np.sin(phi)], 1).astype(np.float32)
    return X, (np.sin(4 * theta) > 0).astype(np.int64)


def sparse(per_sector: int, rng: np.random.Generator):
    """``per_sector`` points in each eighth of the ring."""
    parts = [ring(per_sector, rng, k * math.pi / 4, (k + 1) * math.pi / 4) for k in range(8)]
    return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])


def mlp(seed: int) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(3, 64), nn.Tanh(), nn.Linear(64, 64), nn.Tanh(),
                         nn.Linear(64, 2))


def logits_of(net: nn.Module, X: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return net(torch.from_numpy(X)).numpy()


class Ring:
    """The RoundsProblem: an MLP trained full-batch on bort's task-distillation loss (warm
    from ``start``), a teacher fit on the whole ring, Gaussian edits; its "pooled vectors"
    are the points themselves. Counts the steps each fit takes."""

    def __init__(self, seed: int = 0):
        X, y = ring(1500, np.random.default_rng(seed + 100))
        self.teacher = self.train(mlp(seed), X, y, None, 1e-2, 400)
        self.steps: list[int] = []

    @staticmethod
    def train(net, X, gold, teacher_logits, lr, steps):
        opt = torch.optim.Adam(net.parameters(), lr=lr)
        Xt, yt = torch.from_numpy(X), torch.from_numpy(gold)
        for _ in range(steps):
            opt.zero_grad()
            out = net(Xt)
            loss = (nn.functional.cross_entropy(out, yt) if teacher_logits is None else
                    kd_loss(out, torch.from_numpy(teacher_logits), yt, 0.5, 2.0))
            loss.backward()
            opt.step()
        return net

    def rows(self, X, gold=None) -> Rows:
        gold = np.full(len(X), -1) if gold is None else gold
        return Rows(X, gold, logits_of(self.teacher, X), X)

    def fit(self, theta, start, rows, select, seed):
        torch.manual_seed(seed)
        net = mlp(0)
        net.load_state_dict(start.state_dict())
        self.steps.append(int(theta["epochs"]) * len(rows))  # full-batch: an epoch is a step
        return self.train(net, rows.X, rows.gold, rows.logits, theta["lr"], int(theta["epochs"]))

    def logits(self, model, X):
        return logits_of(model, X)

    def label(self, X):
        return self.rows(X)

    def edit(self, X, rng):
        reps = np.repeat(X, EDITS, axis=0)
        return (reps + rng.normal(0, SIGMA, reps.shape)).astype(np.float32)

    def save(self, model, directory: Path):
        directory.mkdir(parents=True, exist_ok=True)
        save_file(model.state_dict(), directory / "net.safetensors")

    def load(self, directory: Path):
        net = mlp(0)
        net.load_state_dict(load_file(directory / "net.safetensors"))
        return net


THETAS = [{"lr": lr, "epochs": 150} for lr in (1e-2, 3e-3, 1e-3)]
CONFIG = AgoraConfig(thetas=THETAS, round_rows=400, share=0.5, neighbours=32, confidence=0.6,
                     folds=3)


def world(seed: int = 0):
    """A quarter of the ring as train (gold), 2 points per eighth of the ring (per class
    sector) as the points where mistakes are sought, a pool and a selection set spanning the
    ring, and a test set."""
    rng = np.random.default_rng(seed)
    problem = Ring(seed)
    train, extra = ring(1600, rng, math.pi / 4, 3 * math.pi / 4), sparse(2, rng)
    pool, select, test = ring(3000, rng)[0], ring(300, rng), ring(2000, rng)
    start = problem.train(mlp(seed), *train, None, 1e-2, 300)
    return problem, start, train, extra, problem.rows(pool), problem.rows(*select), test


def accuracy_of(net, test) -> float:
    return float(np.mean(logits_of(net, test[0]).argmax(1) == test[1]))


def halves(seed: int, out: Path | None = None):
    """The three arms with dev halves: Agora seeks mistakes on the sparse points, the
    controls train on their gold labels instead. Returns the arms' results, the test set,
    the starting model and each arm's row-steps."""
    problem, start, train, extra, pool, select, test = world(seed)
    base, gen = problem.rows(*train), problem.rows(*extra)
    control = RoundsData(base.concat(gen), gen, pool, select)
    config, steps = CONFIG.updated({"selection": "halves"}), []
    ag = agora_rounds(problem, start, RoundsData(base, gen, pool, select), config, "agora",
                      out=out, log=None)
    steps.append(sum(problem.steps))
    problem.steps = []
    plain = agora_rounds(problem, start, control, config, "distill", log=None)
    steps.append(sum(problem.steps))
    problem.steps = []
    rand = agora_rounds(problem, start, control, config, "random", counts=ag.rounds, log=None)
    steps.append(sum(problem.steps))
    return ag, plain, rand, test, start, steps


def test_halves_agora_learns_what_the_shared_gold_data_cannot_teach(tmp_path):
    """Over 3 seeds (one seed's plain arm may learn much of the ring from 16 points): Agora
    ≥ 0.9 and ≥ plain + 0.2 on average. (The random arm, drawing the same number of teacher-
    labelled points uniformly from a pool that spans the ring, does as well here: this test
    is about targeting with clean selection, not about beating random.)"""
    runs = [halves(seed, tmp_path / str(seed)) for seed in range(3)]
    accuracy = {arm: np.mean([accuracy_of(run[k].model, run[3]) for run in runs])
                for k, arm in enumerate(("agora", "plain", "random"))}
    assert all(accuracy_of(run[4], run[3]) <= 0.7 for run in runs)  # a quarter of the ring
    assert accuracy["agora"] >= 0.9
    assert accuracy["agora"] >= accuracy["plain"] + 0.2
    for ag, plain, rand, _, _, steps in runs:
        assert len(ag.rounds) >= 2 and ag.rounds[0]["mistakes"] > 0
        assert len(rand.rounds) == len(plain.rounds) == len(THETAS)
        for arm, spent in zip((ag, plain, rand), steps):  # every fit, the same rows and steps
            assert all(e["train_rows"] == CONFIG.round_rows for e in arm.rounds)
            assert spent == sum(len(e["thetas"]) for e in arm.rounds) * 150 * CONFIG.round_rows
        for a, b in zip(ag.rounds, rand.rounds):  # random keeps as many edits and pool rows
            assert (b["edits"], b["retrieved"]) == (a["edits"], a["retrieved"])
        assert all(e["edits"] + e["retrieved"] == 0 for e in plain.rounds)
        assert all(e["retrieved"] <= 32 * e["mistakes"] and
                   e["edits"] <= EDITS * e["mistakes"] for e in ag.rounds)


def test_kfold_agora_seeks_out_of_fold_mistakes(tmp_path):
    problem, start, train, extra, pool, select, test = world(1)
    X, y = np.concatenate([train[0], extra[0]]), np.concatenate([train[1], extra[1]])
    folds = np.arange(len(y)) % 3
    gold = Rows(X, y, problem.rows(X).logits, X, folds)
    models = [problem.train(mlp(1), X[folds != j], y[folds != j], None, 1e-2, 300)
              for j in range(3)]
    data = RoundsData(gold, gold, pool, select)
    config = CONFIG.updated({"selection": "kfold"})
    ag = agora_rounds(problem, start, data, config, "agora", folds=models, log=None)
    plain = agora_rounds(problem, start, data, config, "distill", log=None)
    # the sparse points are out of fold for one model each: most are its mistakes
    assert ag.rounds[0]["mistakes"] >= 4
    assert accuracy_of(plain.model, test) <= 0.75
    assert accuracy_of(ag.model, test) >= 0.9
    assert accuracy_of(ag.model, test) >= accuracy_of(plain.model, test) + 0.2


def test_resume_skips_finished_rounds(tmp_path):
    problem, start, train, extra, pool, select, _ = world(2)
    data = RoundsData(problem.rows(*train), problem.rows(*extra), pool, select)
    whole = agora_rounds(problem, start, data, CONFIG, "agora", out=tmp_path / "whole",
                         log=None)
    agora_rounds(problem, start, data, CONFIG.updated({"max_rounds": 1}), "agora",
                 out=tmp_path / "cut", log=None)
    problem.steps = []
    resumed = agora_rounds(problem, start, data, CONFIG, "agora", out=tmp_path / "cut",
                           log=None)
    assert len(problem.steps) == sum(len(e["thetas"]) for e in whole.rounds[1:])  # not round 1
    assert resumed.rounds == whole.rounds
    assert resumed.added == whole.added and resumed.score == whole.score
    assert not list((tmp_path / "cut").glob("*.pkl"))
    state = json.loads((tmp_path / "cut" / STATE_FILE).read_text())
    assert state["added_points"] == whole.added
    kept = sorted(p.name for p in (tmp_path / "cut").glob("round-*"))
    assert kept == sorted({f"round-{len(whole.rounds)}", f"round-{whole.best_round}"})


def test_damaged_or_foreign_state_is_named(tmp_path):
    problem, start, train, extra, pool, select, _ = world(3)
    data = RoundsData(problem.rows(*train), problem.rows(*extra), pool, select)
    config = CONFIG.updated({"max_rounds": 1})
    agora_rounds(problem, start, data, config, "agora", out=tmp_path, log=None)
    with pytest.raises(CheckpointError, match="the state of the agora arm, not distill"):
        agora_rounds(problem, start, data, config, "distill", out=tmp_path, log=None)
    (tmp_path / POINTS_FILE).write_bytes(b"\x00" * 12)
    with pytest.raises(CheckpointError, match="unreadable Agora points"):
        agora_rounds(problem, start, data, config, "agora", out=tmp_path, log=None)
    (tmp_path / STATE_FILE).write_text('{"format": 1}')
    with pytest.raises(CheckpointError, match="not a bort Agora state file"):
        agora_rounds(problem, start, data, config, "agora", out=tmp_path, log=None)


def test_bad_input():
    problem, start, train, extra, pool, select, _ = world()
    data = RoundsData(problem.rows(*train), problem.rows(*extra), pool, select)
    with pytest.raises(ConfigError, match="unknown arm"):
        agora_rounds(problem, start, data, CONFIG, "best", log=None)
    with pytest.raises(ConfigError, match="counts"):
        agora_rounds(problem, start, data, CONFIG, "random", log=None)
    with pytest.raises(ConfigError, match="3 fold models"):
        agora_rounds(problem, start, data, CONFIG.updated({"selection": "kfold"}), log=None)
    empty = pool.take(np.zeros(0, np.int64))
    with pytest.raises(DataError, match="pool of unlabelled points is empty"):
        agora_rounds(problem, start, RoundsData(data.base, data.seeds, empty, select), CONFIG,
                     log=None)
    with pytest.raises(DataError, match="selection data is empty"):
        agora_rounds(problem, start, RoundsData(data.base, data.seeds, pool, empty), CONFIG,
                     log=None)
    with pytest.raises(DataError, match="seek"):
        agora_rounds(problem, start, RoundsData(data.base, pool, pool, select), CONFIG,
                     log=None)
    with pytest.raises(DataError, match="gold labels and"):
        Rows(select.X, select.gold[:3], select.logits, select.pooled)


def test_nearest_and_confident_against_brute_force():
    rng = np.random.default_rng(0)
    keys, queries = rng.normal(size=(300, 5)), rng.normal(size=(40, 5))
    exclude = rng.random(300) < 0.2
    cos = (queries / np.linalg.norm(queries, axis=1, keepdims=True)) @ (
        keys / np.linalg.norm(keys, axis=1, keepdims=True)).T
    cos[:, exclude] = -np.inf
    want = np.unique(np.argsort(-cos, axis=1)[:, :3])
    assert np.array_equal(nearest(queries, keys, 3, exclude), want)
    assert not exclude[nearest(queries, keys, 3, exclude)].any()
    assert len(nearest(queries, keys, 0)) == 0
    logits = rng.normal(size=(100, 3)) * 2
    p = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    assert np.array_equal(confident(logits, 0.7), np.flatnonzero(p.max(1) >= 0.7))
