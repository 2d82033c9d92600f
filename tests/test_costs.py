"""Measured costs: importance on the real source model, the latency table, the cost kinds."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import SAMPLE

from bort import Arch
from bort.config import SearchConfig
from bort.costs import (
    COSTS,
    CostKind,
    Importance,
    cost,
    decompose,
    error_proxy,
    importance,
    measure_latency,
)
from bort.metrics import spearman
from bort.model import BortModel
from bort.search import LayerwiseSpace, UniformSpace, frontier
from bort.tokenize import encode, load_tokenizer

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

    monkeypatch.setattr("bort.timing.median_ms", no_timing)
    monkeypatch.setattr("bort.runtime.Encoder.sublayer_ms", no_timing)
    again = measure_latency(src, hiddens=(32,), heads=(1, 2), ffns=(64,), batch=1, seq_len=16,
                            backend=backend)
    assert again.attention == table.attention and cached.is_file()

    arch = Arch(hidden=32, layers=[(2, 16, 32), (0, 0, 64)], vocab_size=100, max_positions=32)
    assert cost(arch, "latency", table=again) == pytest.approx(
        table.base[32] + table.attention[(32, 2, 16)] + table.ffn[(32, 32)] + table.ffn[(32, 64)])
    space = LayerwiseSpace.from_source(src, ffn_step=32, hiddens=(16, 32))
    imp = Importance(src, [np.ones(2)] * 2, [np.ones(64)] * 2, np.ones(32))
    front = frontier(space, 0.05, "latency", imp, table=again)
    assert front[-1].error_proxy == 0  # the source itself
    assert front[0].cost <= 1.05 * min(table.base.values())  # covers the cheapest empty network


def test_latency_front_over_a_uniform_space(tmp_path, monkeypatch) -> None:
    """The latency kind's prepare times every sublayer a uniform space uses (each hidden size,
    head_dim = hidden / heads) and the source's, so the front of the space builds."""
    monkeypatch.setenv("BORT_CACHE_DIR", str(tmp_path))
    src = Arch.uniform(2, 2, 32, 64, vocab_size=100, max_positions=32)
    space = UniformSpace.around(src)
    options = COSTS["latency"].prepare(src, space, seq_len=16)
    table = options["table"]
    attention, ffn, hiddens = space.sublayers()
    assert hiddens == {16, 24, 32} and (24, 2, 12) in attention
    assert attention <= set(table.attention) and ffn <= set(table.ffn)
    assert hiddens == set(table.base) and table.seq_len == 16
    imp = Importance(src, [np.ones(2)] * 2, [np.ones(64)] * 2, np.ones(32))
    front = frontier(space, 0.05, "latency", imp, **options)
    assert front[-1].error_proxy == 0 and all(x.cost > 0 for x in front)
    assert cost(src, "latency", **options) == pytest.approx(table.base[32] + 2 * (
        table.attention[(32, 2, 16)] + table.ffn[(32, 64)]))
    assert COSTS["latency"].prepare(src, space, table=table) == {"table": table}


class WeightBytes(CostKind):
    """The README's toy cost kind ("Extending bort"): bytes of fp32 weights."""

    unit = "bytes"

    def layer(self, layer, hidden, **options):
        return 4.0 * layer.params(hidden)

    def base(self, arch, **options):
        p = arch.params()
        return 4.0 * (p.embeddings + p.pooler + p.head)


@pytest.fixture
def weight_bytes():
    COSTS.register("bytes", WeightBytes())
    yield
    COSTS.unregister("bytes")


def test_a_cost_kind_registered_from_outside(weight_bytes) -> None:
    src = Arch.uniform(2, 2, 16, 32, vocab_size=50, max_positions=16)
    assert SearchConfig(cost="bytes").cost == "bytes"
    base, layers = decompose(src, "bytes")
    assert base + sum(layers) == cost(src, "bytes") == 4 * src.params().total
    space = LayerwiseSpace.from_source(src, ffn_step=16, hiddens=(8, 16))
    assert COSTS["bytes"].prepare(src, space, batch=2) == {"batch": 2}
    imp = Importance(src, [np.array([1.0, 2.0])] * 2, [np.arange(32.0)] * 2, np.ones(16))
    points = {(cost(a, "bytes"), error_proxy(a, imp)) for a in space.enumerate()}
    pareto = {p for p in points if not any(q != p and q[0] <= p[0] and q[1] <= p[1]
                                           for q in points)}
    assert {(x.cost, x.error_proxy) for x in frontier(space, 0, "bytes", imp)} == pareto
