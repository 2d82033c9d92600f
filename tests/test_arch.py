"""Arch: exact sizes against real models and closed forms, the C++ mirror, config.json, errors."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch
from conftest import hf_config
from hypothesis import given, settings
from hypothesis import strategies as st

from bort import Arch, ConfigError, Layer, _core


def numel_by_part(model: torch.nn.Module) -> dict[str, int]:
    """numel() of a transformers (or bort) model, grouped the way Arch.params() reports."""
    parts = {"embeddings": 0, "encoder": 0, "pooler": 0, "head": 0}
    for name, p in model.named_parameters():
        name = name.removeprefix("bert.").removeprefix("roberta.")
        head = name.startswith(("classifier.", "cls.", "lm_head."))
        part = "head" if head else name.split(".")[0]
        parts[part] += p.numel()
    parts["total"] = sum(parts.values())
    return parts


# ---------------------------------------------------------------------- exact counts
def test_bort_paper_counts() -> None:
    """⟨4, 8, 768, 1024⟩ with RoBERTa's vocabulary, the numbers the Bort paper's shape gives."""
    arch = Arch.uniform(4, 8, 768, 1024, vocab_size=50265, max_positions=514, type_vocab_size=1,
                        position_style="roberta", pad_token_id=1, layer_norm_eps=1e-5)
    p = arch.params()
    assert p.embeddings + p.encoder == 54_760_960
    assert p.total == 55_351_552
    assert arch.with_layers(arch.layers).params() == p


def test_bert_large_counts() -> None:
    assert Arch.uniform(24, 16, 1024, 4096).params().total == 335_141_888


def test_layer_closed_form() -> None:
    """A full BERT layer has 4H² + 2HI + 9H + I parameters (BORT_NOTES §1)."""
    for h, i in [(768, 3072), (384, 1536), (1024, 768)]:
        assert Layer(16, h // 16, i).params(h) == 4 * h * h + 2 * h * i + 9 * h + i


def test_params_match_real_minilm(minilm_dir) -> None:
    from transformers import BertModel

    model = BertModel.from_pretrained(minilm_dir)
    assert Arch.from_pretrained(minilm_dir).params().as_dict() == numel_by_part(model)


@pytest.mark.parametrize("family", ["bert", "roberta"])
@pytest.mark.parametrize("seed", range(4))
def test_params_match_random_transformers_models(family: str, seed: int) -> None:
    from transformers import AutoModel, AutoModelForMaskedLM, AutoModelForSequenceClassification

    g = torch.Generator().manual_seed(seed)
    r = lambda lo, hi: int(torch.randint(lo, hi, (1,), generator=g))  # noqa: E731
    heads = r(1, 7)
    config = hf_config(family, num_attention_heads=heads, hidden_size=heads * r(2, 12),
                       num_hidden_layers=r(0, 4), intermediate_size=r(1, 130),
                       vocab_size=r(50, 300), num_labels=r(1, 5))
    for cls in (AutoModel, AutoModelForSequenceClassification, AutoModelForMaskedLM):
        model = cls.from_config(config)
        arch = Arch.from_config(config.to_dict() | {"architectures": [type(model).__name__]})
        if family == "roberta" and cls is AutoModelForSequenceClassification:
            # RoBERTa's head (dense + tanh, out_proj) has the shapes of BERT's pooler + classifier
            assert arch.params().total == numel_by_part(model)["total"]
        else:
            assert arch.params().as_dict() == numel_by_part(model)


# ---------------------------------------------------------------------- FLOPs
def count_flops(model: torch.nn.Module, batch: int, seq_len: int, **kwargs) -> int:
    """torch's own FLOP count of one forward pass. It does not see CPU SDPA kernels, so the
    models run their explicit-matmul attention."""
    from torch.utils.flop_counter import FlopCounterMode

    ids = torch.randint(5, 50, (batch, seq_len))
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(input_ids=ids, **kwargs)
    return counter.get_total_flops()


@pytest.mark.parametrize("batch,seq_len", [(1, 16), (3, 7)])
def test_flops_match_torch_flop_counter_on_transformers(batch: int, seq_len: int) -> None:
    from transformers import BertForSequenceClassification

    config = hf_config(num_attention_heads=5, hidden_size=5 * 12, num_labels=3,
                       attn_implementation="eager")
    model = BertForSequenceClassification(config).eval()
    arch = Arch.from_config(config.to_dict() | {"architectures": ["BertForSequenceClassification"]})
    assert arch.flops(batch, seq_len) == count_flops(model, batch, seq_len)


def test_flops_match_torch_flop_counter_on_layerwise_model() -> None:
    from bort.model import BortModel

    arch = Arch(hidden=48, layers=[(3, 16, 64), (0, 0, 80), (2, 8, 0), (0, 0, 0), (4, 12, 32)],
                vocab_size=100, max_positions=32)
    model = BortModel(arch).eval()
    assert arch.flops(2, 9) == count_flops(model, 2, 9, output_attentions=True)


def test_bort_released_flops_anchor() -> None:
    """⟨4, 16, 1024, 768⟩ (Bort as released) at 1 × 128: 6.18 GFLOP, as PERF_ANCHORS states."""
    assert round(Arch.uniform(4, 16, 1024, 768).flops(1, 128) / 1e9, 2) == 6.18


# ---------------------------------------------------------------------- the C++ mirror
layers = st.lists(st.tuples(st.integers(0, 9), st.integers(1, 80), st.integers(0, 500)),
                  max_size=6)


@settings(max_examples=200, deadline=None)
@given(hidden=st.integers(1, 700), layers=layers, vocab=st.integers(2, 60000),
       positions=st.integers(3, 1024), types=st.integers(1, 4), pooler=st.booleans(),
       labels=st.integers(0, 5), mlm=st.booleans(), batch=st.integers(1, 16),
       seq_len=st.integers(1, 600))
def test_cpp_struct_agrees(hidden, layers, vocab, positions, types, pooler, labels, mlm, batch,
                           seq_len) -> None:
    arch = Arch(hidden=hidden, layers=layers, vocab_size=vocab, max_positions=positions,
                type_vocab_size=types, pooler=pooler or labels > 0, num_labels=labels,
                mlm_head=mlm, position_style="roberta", pad_token_id=1)
    core = arch._to_core()
    p, cp = arch.params(), core.params()
    assert (p.embeddings, p.encoder, p.pooler, p.head, p.total) == (
        cp.embeddings, cp.encoder, cp.pooler, cp.head, cp.total)
    assert arch.flops(batch, seq_len) == core.flops(batch, seq_len)
    for layer, core_layer in zip(arch.layers, core.layers):
        assert layer.params(hidden) == core_layer.params(hidden)


def test_cpp_struct_validates() -> None:
    with pytest.raises(ValueError, match="head_dim"):
        _core.Arch(hidden=8, layers=[_core.Layer(2, 0, 4)], vocab_size=10, max_positions=8,
                   type_vocab_size=1, activation=_core.Activation.relu, layer_norm_eps=1e-5,
                   position_style=_core.PositionStyle.absolute, pad_token_id=0, pooler=True,
                   num_labels=0)
    with pytest.raises(ValueError, match="positive"):
        Arch.uniform(2, 2, 8, 8)._to_core().flops(0, 8)


# ---------------------------------------------------------------------- removed sublayers
def test_removed_sublayers_cost_nothing() -> None:
    full = Arch(hidden=64, layers=[(4, 16, 128)])
    ffn_only = Arch(hidden=64, layers=[(0, 0, 128)])
    attention_only = Arch(hidden=64, layers=[(4, 16, 0)])
    assert ffn_only.params().encoder == Layer(4, 16, 128).ffn_params(64)
    assert attention_only.params().encoder == Layer(4, 16, 0).attention_params(64)
    dropped = full.with_layers([(4, 16, 128), (0, 0, 0)])
    assert dropped.params() == full.params() and dropped.flops() == full.flops()
    assert dropped.depth == 1 and not dropped.is_uniform
    assert Layer(0, 64, 10) == Layer(0, 0, 10)  # head_dim means nothing without heads


# ---------------------------------------------------------------------- config.json
def test_hf_config_round_trip(minilm_dir) -> None:
    from transformers import BertConfig, BertModel

    arch = Arch.from_pretrained(minilm_dir)
    assert arch.describe() == "⟨D=6, A=12, H=384, I=1536⟩"
    config = arch.to_hf_config()
    assert Arch.from_config(config) == arch
    model = BertModel(BertConfig(**config))
    assert numel_by_part(model) == arch.params().as_dict()


def test_layerwise_config_round_trip(tmp_path) -> None:
    arch = Arch(hidden=32, layers=[(2, 16, 64), (0, 0, 48), (3, 8, 0)], activation="gelu_new",
                num_labels=3)
    (tmp_path / "config.json").write_text(json.dumps(arch.to_config()))
    assert Arch.from_pretrained(tmp_path) == arch
    with pytest.raises(ConfigError, match="transformers cannot express"):
        arch.to_hf_config()


def test_roberta_config_is_read(tmp_path) -> None:
    config = hf_config("roberta").to_dict()
    arch = Arch.from_config(config)
    assert (arch.position_style, arch.pad_token_id, arch.family) == ("roberta", 1, "roberta")
    assert Arch.from_config(arch.to_hf_config()) == arch


# ---------------------------------------------------------------------- validation
@pytest.mark.parametrize("kwargs,match", [
    (dict(hidden=-4, layers=[]), "hidden must be >= 1"),
    (dict(hidden=8, layers=[(2, 4, -1)]), "ffn must be >= 0"),
    (dict(hidden=8, layers=[(2, 0, 8)]), "needs head_dim > 0"),
    (dict(hidden=8, layers=[], activation="swishy"), "unknown activation 'swishy'"),
    (dict(hidden=8, layers=[], position_style="rotary"), "unknown position_style"),
    (dict(hidden=8, layers=[], pad_token_id=99, vocab_size=10), "outside the vocabulary"),
    (dict(hidden=8, layers=[], pooler=False, num_labels=2), "needs pooler=True"),
    (dict(hidden=8, layers=[(1.5, 2, 3)]), "must be an integer"),
    (dict(hidden=8, layers=[(1, 2)]), "triple"),
    (dict(hidden=8, layers=[], dropout=1.5), "dropout must be in"),
])
def test_invalid_archs(kwargs, match) -> None:
    with pytest.raises(ConfigError, match=match):
        Arch(**kwargs)


def test_uniform_needs_divisible_heads() -> None:
    with pytest.raises(ValueError, match="384 is not divisible by heads 5"):
        Arch.uniform(6, 5, 384, 1536)


def test_inconsistent_hf_config(tmp_path) -> None:
    config = hf_config().to_dict() | {"num_attention_heads": 5, "hidden_size": 64}
    with pytest.raises(ConfigError, match="hidden_size 64 != num_attention_heads 5"):
        Arch.from_config(config)
    config = hf_config().to_dict() | {"num_attention_heads": 3, "head_dim": 16, "hidden_size": 64}
    with pytest.raises(ConfigError, match="× head_dim 16"):
        Arch.from_config(config)


def test_non_bert_configs_are_refused(tmp_path) -> None:
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "gpt2", "n_embd": 768}))
    with pytest.raises(ConfigError, match="'gpt2' is not a BERT-family encoder"):
        Arch.from_pretrained(tmp_path)
    config = hf_config().to_dict() | {"position_embedding_type": "relative_key"}
    with pytest.raises(ConfigError, match="relative_key"):
        Arch.from_config(config)
    with pytest.raises(ConfigError, match="decoder"):
        Arch.from_config(hf_config().to_dict() | {"is_decoder": True})
    with pytest.raises(ConfigError, match="missing 'hidden_size'"):
        Arch.from_config({"model_type": "bert"})


def test_missing_and_broken_directories(tmp_path) -> None:
    with pytest.raises(FileNotFoundError, match="model directory not found"):
        Arch.from_pretrained(tmp_path / "nope")
    with pytest.raises(FileNotFoundError, match="no config.json"):
        Arch.from_pretrained(tmp_path)
    (tmp_path / "config.json").write_text("{not json")
    with pytest.raises(ConfigError, match="not valid JSON"):
        Arch.from_pretrained(tmp_path)


# ---------------------------------------------------------------------- torch-free
@pytest.mark.parametrize("module", ["bort", "bort.arch", "bort.cli"])
def test_import_leaves_torch_out(module: str) -> None:
    code = f"import sys, {module}; sys.exit('torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0


def test_max_tokens_and_the_pooler_rule() -> None:
    """Arch owns both rules the model, the runtime and the exporter apply."""
    from dataclasses import replace

    bert = Arch.uniform(1, 2, 8, 8, max_positions=16)
    roberta = replace(bert, position_style="roberta", pad_token_id=1)
    assert (bert.max_tokens, roberta.max_tokens) == (16, 14)  # RoBERTa: pad + 1 positions off
    names = ["embeddings.word_embeddings.weight"]
    assert bert.fit_to_weights(names).pooler is False  # a sentence-embedding export
    assert bert.fit_to_weights([*names, "bert.pooler.dense.weight"]) is bert
    assert replace(bert, pooler=False).fit_to_weights(["pooler.dense.weight"]).pooler
    classifier = replace(bert, num_labels=2)
    assert classifier.fit_to_weights(names) is classifier  # its head reads the pooler
