"""Agora's loop on a synthetic task it must solve, its Θ rule, resumption (state files in JSON
and safetensors, token sequences included) and bad input."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file
from torch import nn

from bort.agora import POINTS_FILE, STATE_FILE, AgoraConfig, agora, prune
from bort.errors import CheckpointError, ConfigError, DataError
from bort.finetune import Encoded

R, r = 2.0, 0.5  # the torus' ring and tube radii


def ring(n: int, rng: np.random.Generator, lo: float = 0.0, hi: float = 2 * math.pi):
    """Points on a torus at ring angle θ ∈ [lo, hi), labelled by the sign of sin 2θ."""
    theta, phi = rng.uniform(lo, hi, n), rng.uniform(0, 2 * math.pi, n)
    X = np.stack([(R + r * np.cos(phi)) * np.cos(theta), (R + r * np.cos(phi)) * np.sin(theta),
                  r * np.sin(phi)], 1).astype(np.float32)
    return X, (np.sin(2 * theta) > 0).astype(np.int64)


def mlp() -> nn.Module:
    return nn.Sequential(nn.Linear(3, 64), nn.Tanh(), nn.Linear(64, 64), nn.Tanh(),
                         nn.Linear(64, 2))


def mlp_fit(X: np.ndarray, y: np.ndarray, lr: float, steps: int, seed: int) -> nn.Module:
    torch.manual_seed(seed)
    net = mlp()
    opt = torch.optim.Adam(net.parameters(), lr=lr)
    Xt, yt = torch.from_numpy(X), torch.from_numpy(y)
    for _ in range(steps):
        opt.zero_grad()
        nn.functional.cross_entropy(net(Xt), yt).backward()
        opt.step()
    return net


def mlp_predict(net: nn.Module, X: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return net(torch.from_numpy(X)).argmax(1).numpy()


class Torus:
    """The Problem: an MLP per θ, a teacher fit on the whole ring, Gaussian noise around
    mistakes."""

    def __init__(self, seed: int = 0, teacher_steps: int = 400):
        X, y = ring(1500, np.random.default_rng(seed + 100))
        self.net = mlp_fit(X, y, 1e-2, teacher_steps, seed)
        self.fits = 0

    def fit(self, theta, X, y, seed):
        self.fits += 1
        return mlp_fit(X, y, theta["lr"], theta["steps"], seed)

    def predict(self, model, X):
        return mlp_predict(model, X)

    def generate(self, X, y, rng):
        reps = np.repeat(X, 10, axis=0)
        return (reps + rng.normal(0, 0.3, reps.shape)).astype(np.float32)

    def teacher(self, X):
        return mlp_predict(self.net, X)

    def save(self, model, directory: Path):
        directory.mkdir(parents=True, exist_ok=True)
        save_file(model.state_dict(), directory / "net.safetensors")

    def load(self, directory: Path):
        net = mlp()
        net.load_state_dict(load_file(directory / "net.safetensors"))
        return net


THETAS = [{"lr": 1e-2, "steps": 300}, {"lr": 3e-3, "steps": 300}, {"lr": 1e-3, "steps": 300}]


def splits(seed: int = 0):
    rng = np.random.default_rng(seed)
    train = ring(400, rng, math.pi / 4, 3 * math.pi / 4)  # a quarter of the ring, both classes
    return train, ring(300, rng), ring(2000, rng)


def test_torus_agora_recovers_what_plain_training_cannot(tmp_path):
    train, dev, test = splits()
    problem = Torus()
    assert np.mean(problem.teacher(test[0]) == test[1]) > 0.95
    plain = agora(problem, THETAS, train, dev, test, AgoraConfig(augment=False), log=None)
    fits_plain = problem.fits
    problem.fits = 0
    full = agora(problem, THETAS, train, dev, test, AgoraConfig(), out=tmp_path, log=None)
    assert plain.test <= 0.65  # a quarter of the ring says nothing about the rest
    assert full.test >= 0.9
    assert problem.fits == sum(len(e["thetas"]) for e in full.rounds)
    assert fits_plain == sum(len(e["thetas"]) for e in plain.rounds)
    assert len(full.rounds) >= 2 and full.rounds[1]["train_size"] > full.rounds[0]["train_size"]
    assert all(e["points_added"] == 10 * e["mistakes"] for e in full.rounds[:-1])
    assert all(e["points_added"] == 0 for e in plain.rounds)


def test_resume_skips_finished_rounds(tmp_path):
    train, dev, test = splits(1)
    problem = Torus(1)
    agora(problem, THETAS, train, dev, test, AgoraConfig(max_rounds=2), out=tmp_path, log=None)
    assert problem.fits == 5
    problem.fits = 0
    resumed = agora(problem, THETAS, train, dev, test, AgoraConfig(max_rounds=3), out=tmp_path,
                    log=None)
    assert problem.fits == 1  # only round 3 ran
    assert [e["round"] for e in resumed.rounds] == [1, 2, 3]
    again = agora(problem, THETAS, train, dev, test, AgoraConfig(max_rounds=3), out=tmp_path,
                  log=None)
    assert problem.fits == 1 and again.test == resumed.test


def test_prune_drops_the_worst_run():
    assert prune([0, 1, 2, 3], [0.8, 0.6, 0.9, 0.7]) == [2, 0, 3]
    assert prune([0, 1, 2, 3], [0.6, 0.6, 0.9, 0.7]) == [2, 3]
    assert prune([0, 1, 2], [0.5, 0.5, 0.5]) == [0]
    assert prune([0, 1], [0.6, 0.5]) == [0]
    assert prune([4], [0.1]) == []


def test_bad_input(tmp_path):
    train, dev, test = splits()
    problem = Torus(teacher_steps=1)
    weak = problem.teacher(dev[0])
    assert np.mean(weak == dev[1]) <= 2 / 3  # one step leaves the teacher near chance
    with pytest.raises(ConfigError, match="teacher's dev accuracy"):
        agora(problem, THETAS, train, dev, log=None)
    with pytest.raises(DataError, match="dev split is empty"):
        agora(problem, THETAS, train, (dev[0][:0], dev[1][:0]), log=None)
    with pytest.raises(ConfigError, match="at least one"):
        agora(problem, [], train, dev, log=None)
    with pytest.raises(DataError, match="points but"):
        agora(problem, THETAS, train, (dev[0], dev[1][:5]), log=None)
    (tmp_path / STATE_FILE).write_bytes(b"not json")
    with pytest.raises(CheckpointError, match="unreadable Agora state"):
        agora(Torus(), THETAS, train, dev, out=tmp_path, log=None)


class Tokens:
    """A Problem on ragged token sequences (`Encoded`): the label says whether token 7 occurs;
    a model memorises its training sequences and answers its θ's default for the others;
    new points drop or replace a token of a mistake. Records what each fit was given."""

    def __init__(self):
        self.given: list[tuple[dict, Encoded, np.ndarray]] = []

    @staticmethod
    def label(X: Encoded) -> np.ndarray:
        return np.asarray([int(7 in ids) for ids in X.ids], np.int64)

    def fit(self, theta, X, y, seed):
        self.given.append((theta, X, y))
        return {"default": theta["default"],
                "memo": {tuple(map(int, ids)): int(v) for ids, v in zip(X.ids, y)}}

    def predict(self, model, X):
        return np.asarray([model["memo"].get(tuple(map(int, ids)), model["default"])
                           for ids in X.ids], np.int64)

    def generate(self, X, y, rng):
        ids, types = [], []
        for seq, seg in zip(X.ids, X.types):
            for _ in range(3):
                keep = np.ones(len(seq), bool)
                keep[rng.integers(len(seq))] = False
                new = seq[keep].copy()
                new[rng.integers(len(new))] = rng.integers(1, 12)
                ids.append(new.astype(np.int32))
                types.append(seg[keep].astype(np.int32))
        return Encoded(ids, types, np.full(len(ids), -1, np.int64))

    def teacher(self, X):
        return self.label(X)

    def save(self, model, directory: Path):
        directory.mkdir(parents=True, exist_ok=True)
        memo = [[list(k), v] for k, v in model["memo"].items()]
        (directory / "model.json").write_text(json.dumps({"default": model["default"],
                                                          "memo": memo}))

    def load(self, directory: Path):
        data = json.loads((directory / "model.json").read_text())
        return {"default": data["default"], "memo": {tuple(k): v for k, v in data["memo"]}}


def token_split(n: int, seed: int) -> tuple[Encoded, np.ndarray]:
    rng = np.random.default_rng(seed)
    ids = [rng.integers(1, 12, int(rng.integers(3, 9))).astype(np.int32) for _ in range(n)]
    types = [(np.arange(len(a)) >= len(a) // 2).astype(np.int32) for a in ids]
    X = Encoded(ids, types, np.zeros(n, np.int64))
    return X, Tokens.label(X)


TOKEN_THETAS = [{"default": 0}, {"default": 1}, {"default": 0, "other": 1}]


def test_resume_restores_token_sequences_exactly(tmp_path):
    """Round 3 of a run stopped after round 2 and resumed trains on exactly the sequences,
    token types and labels that round 3 of an uninterrupted run trains on."""
    train, dev = token_split(30, 0), token_split(40, 1)
    whole = Tokens()
    agora(whole, TOKEN_THETAS, train, dev, config=AgoraConfig(max_rounds=3),
          out=tmp_path / "whole", log=None)
    agora(Tokens(), TOKEN_THETAS, train, dev, config=AgoraConfig(max_rounds=2),
          out=tmp_path / "cut", log=None)
    state = json.loads((tmp_path / "cut" / STATE_FILE).read_text())
    assert state["round"] == 2 and state["added_points"] > 0
    assert (tmp_path / "cut" / POINTS_FILE).is_file()
    assert not list((tmp_path / "cut").glob("*.pkl"))
    resumed = Tokens()
    agora(resumed, TOKEN_THETAS, train, dev, config=AgoraConfig(max_rounds=3),
          out=tmp_path / "cut", log=None)
    assert len(whole.given) == 3 + 2 + 1 and len(resumed.given) == 1  # Θ shrinks by one a round
    (_, a, ya), (_, b, yb) = whole.given[-1], resumed.given[0]
    assert len(b) == len(a) > len(train[0])
    assert all(x.dtype == y.dtype == np.int32 and np.array_equal(x, y)
               for x, y in zip(a.ids + a.types, b.ids + b.types))
    assert [len(x) for x in a.ids] == [len(x) for x in b.ids]
    assert ya.dtype == yb.dtype and np.array_equal(ya, yb)
    assert np.array_equal(a.labels, b.labels)


def test_damaged_or_foreign_state_files_are_named(tmp_path):
    train, dev = token_split(30, 0), token_split(40, 1)
    agora(Tokens(), TOKEN_THETAS, train, dev, config=AgoraConfig(max_rounds=1), out=tmp_path,
          log=None)
    state, points = tmp_path / STATE_FILE, tmp_path / POINTS_FILE
    good_points = points.read_bytes()
    points.write_bytes(b"\x00" * 12)
    with pytest.raises(CheckpointError, match=f"{POINTS_FILE}: unreadable Agora points"):
        agora(Tokens(), TOKEN_THETAS, train, dev, out=tmp_path, log=None)
    points.write_bytes(good_points)
    record = json.loads(state.read_text())
    state.write_text(json.dumps({**record, "added_points": record["added_points"] + 1}))
    with pytest.raises(CheckpointError, match=f"{POINTS_FILE}: holds .* counts"):
        agora(Tokens(), TOKEN_THETAS, train, dev, out=tmp_path, log=None)
    for foreign in ([1, 2], {"format": 1}, {**record, "format": 3}):
        state.write_text(json.dumps(foreign))
        with pytest.raises(CheckpointError, match=f"{STATE_FILE}: not an Agora state file"):
            agora(Tokens(), TOKEN_THETAS, train, dev, out=tmp_path, log=None)
    state.unlink()
    (tmp_path / "agora-state.pkl").write_bytes(b"old")
    with pytest.raises(CheckpointError, match="agora-state.pkl: an Agora state of an earlier"):
        agora(Tokens(), TOKEN_THETAS, train, dev, out=tmp_path, log=None)
