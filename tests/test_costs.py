"""Measured costs: importance on the real source model, and the latency table."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from bort import Arch
from bort.costs import cost, importance, measure_latency
from bort.model import BortModel
from bort.search import LayerwiseSpace, frontier
from bort.tokenize import encode, load_tokenizer
from conftest import SAMPLE

TEXTS = SAMPLE[:8]


@pytest.fixture(scope="module")
def minilm(minilm_dir):
    return BortModel.from_pretrained(minilm_dir).eval()


@pytest.fixture(scope="module")
def minilm_importance(minilm):
    return importance(minilm, TEXTS)


def output_change(model, texts, heads_off=None, neurons_off=None) -> float:
    """Mean squared change of last_hidden_state when heads / FFN neurons are zeroed."""
    batch = {k: torch.from_numpy(v) for k, v in
             encode(load_tokenizer(model.source_dir), texts).items()}
    with torch.no_grad():
        ref = model(**batch).last_hidden_state
        saved = {k: v.clone() for k, v in model.state_dict().items()}
        for l, off in (heads_off or {}).items():  # a head's context columns into the output dense
            d = model.arch.layers[l].head_dim
            w = model.encoder.layer[l].attention.output.dense.weight
            for h in off:
                w[:, h * d:(h + 1) * d] = 0
        for l, off in (neurons_off or {}).items():
            model.encoder.layer[l].output.dense.weight[:, list(off)] = 0
        out = model(**batch).last_hidden_state
        model.load_state_dict(saved)
    mask = batch["attention_mask"].bool()
    return ((out - ref)[mask] ** 2).mean().item()


def spearman(a, b) -> float:
    rank = lambda x: np.argsort(np.argsort(x))  # noqa: E731
    return float(np.corrcoef(rank(np.asarray(a)), rank(np.asarray(b)))[0, 1])


def test_importance_predicts_what_removing_a_unit_does(minilm, minilm_importance) -> None:
    """On the real model, each unit's importance ranks like the output change measured by
    removing that unit alone (heads: all 72; FFN neurons: 60 drawn from three layers)."""
    imp = minilm_importance
    assert [h.shape for h in imp.heads] == [(12,)] * 6 and imp.channels.shape == (384,)
    heads = [(l, h) for l in range(6) for h in range(12)]
    effect = [output_change(minilm, TEXTS, heads_off={l: [h]}) for l, h in heads]
    rho = spearman(effect, [imp.heads[l][h] for l, h in heads])
    print(f"heads: Spearman {rho:.3f}")
    assert rho > 0.8
    rng = np.random.default_rng(0)
    neurons = [(l, int(j)) for l in (0, 3, 5) for j in rng.choice(1536, 20, replace=False)]
    effect = [output_change(minilm, TEXTS, neurons_off={l: [j]}) for l, j in neurons]
    rho = spearman(effect, [imp.neurons[l][j] for l, j in neurons])
    print(f"neurons: Spearman {rho:.3f}")
    assert rho > 0.7


def test_importance_is_seeded_and_checked(minilm, minilm_importance) -> None:
    again = importance(minilm, TEXTS)
    assert all(np.array_equal(a, b) for a, b in zip(again.heads, minilm_importance.heads))
    with pytest.raises(ValueError, match="needs sample text"):
        importance(minilm, [])
    with pytest.raises(TypeError, match="BortModel"):
        importance(torch.nn.Linear(2, 2), TEXTS)


def test_minilm_frontier(minilm, minilm_importance) -> None:
    space = LayerwiseSpace.from_source(minilm.arch, head_step=1, ffn_step=64, hiddens=(256, 384))
    front = frontier(space, 0.01, "flops", minilm_importance)
    assert front[-1].error_proxy == 0 and front[-1].arch.layers == minilm.arch.layers
    assert front[0].cost == cost(front[0].arch, "flops")
    assert len(front) > 20


@pytest.mark.parametrize("backend", ["bort", "torch"])
def test_latency_table_is_measured_once_and_cached(tmp_path, monkeypatch, backend) -> None:
    monkeypatch.setenv("BORT_CACHE_DIR", str(tmp_path))
    src = Arch.uniform(2, 2, 32, 64, vocab_size=100, max_positions=32)
    table = measure_latency(src, hiddens=(16, 32), heads=(0, 1, 2), ffns=(0, 32, 64),
                            batch=1, seq_len=16, backend=backend)
    assert table.backend.startswith(backend)
    assert set(table.attention) == {(h, k, 16) for h in (16, 32) for k in (1, 2)}
    assert set(table.ffn) == {(h, f) for h in (16, 32) for f in (32, 64)}
    assert all(v > 0 for v in [*table.attention.values(), *table.ffn.values(),
                               *table.base.values()])
    [cached] = (tmp_path / "latency").glob("*.json")

    def no_timing(*args, **kwargs):
        raise AssertionError("re-measured an entry that is in the cache")

    monkeypatch.setattr("bort.costs._time_ms", no_timing)
    monkeypatch.setattr("bort.runtime.Encoder.sublayer_ms", no_timing)
    again = measure_latency(src, hiddens=(32,), heads=(1, 2), ffns=(64,), batch=1, seq_len=16,
                            backend=backend)
    assert again.attention == table.attention and cached.is_file()

    arch = Arch(hidden=32, layers=[(2, 16, 32), (0, 0, 64)], vocab_size=100, max_positions=32)
    assert cost(arch, "latency", table=again) == pytest.approx(
        table.base[32] + table.attention[(32, 2, 16)] + table.ffn[(32, 32)] + table.ffn[(32, 64)])
    space = LayerwiseSpace.from_source(src, ffn_step=32, hiddens=(16, 32))
    from bort.costs import Importance

    imp = Importance(src, [np.ones(2)] * 2, [np.ones(64)] * 2, np.ones(32))
    front = frontier(space, 0.05, "latency", imp, table=again)
    assert front[-1].error_proxy == 0  # the source itself
    assert front[0].cost <= 1.05 * min(table.base.values())  # covers the cheapest empty network
