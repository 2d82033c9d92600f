"""bort.model against transformers: parity, Hugging Face weights in and out, layer-wise models."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest
import torch
from conftest import hf_config, randomize

from bort import Arch, WeightsError
from bort.model import BortModel

TOL = 1e-5


def batch_with_padding(vocab: int, lengths: list[int], pad: int = 0, seed: int = 0):
    """input_ids / attention_mask / token_type_ids for sequences of the given lengths, padded."""
    g = torch.Generator().manual_seed(seed)
    s = max(lengths)
    ids = torch.randint(3, vocab, (len(lengths), s), generator=g)
    mask = torch.zeros(len(lengths), s, dtype=torch.long)
    types = torch.zeros_like(ids)
    for i, n in enumerate(lengths):
        mask[i, :n] = 1
        ids[i, n:] = pad
        types[i, n // 2:n] = 1
    return ids, mask, types


def max_diff_on_tokens(a: torch.Tensor, b: torch.Tensor, mask: torch.Tensor) -> float:
    """Max |a - b| over real (non-padding) positions."""
    return (a - b).abs()[mask.bool()].max().item()


# ---------------------------------------------------------------------- parity
def test_minilm_matches_transformers(minilm_dir) -> None:
    from transformers import BertModel

    ref = BertModel.from_pretrained(minilm_dir).eval()
    ours = BortModel.from_pretrained(minilm_dir).eval()
    ids, mask, types = batch_with_padding(30522, [17, 5, 64, 1])
    with torch.no_grad():
        expected = ref(input_ids=ids, attention_mask=mask, token_type_ids=types)
        got = ours(ids, mask, types)
    diff = max_diff_on_tokens(got.last_hidden_state, expected.last_hidden_state, mask)
    print(f"all-MiniLM-L6-v2 max abs diff {diff:.2e}")
    assert diff <= TOL
    assert (got.pooler_output - expected.pooler_output).abs().max().item() <= TOL


@pytest.mark.parametrize("family,overrides", [
    ("bert", dict(num_attention_heads=5, hidden_size=320, intermediate_size=77)),  # 5 heads × 64
    ("bert", dict(num_attention_heads=3, hidden_size=63, hidden_act="gelu_new",
                  num_hidden_layers=3)),
    ("bert", dict(num_attention_heads=2, hidden_size=34, hidden_act="relu", layer_norm_eps=1e-5)),
    ("roberta", dict(num_attention_heads=4, hidden_size=64)),
])
def test_random_configs_match_transformers(family, overrides) -> None:
    from transformers import AutoModel

    config = hf_config(family, **overrides)
    ref = AutoModel.from_config(config).eval()
    randomize(ref, seed=1)
    ours = BortModel(Arch.from_config(config.to_dict())).eval()
    ours.load_checked({k: v for k, v in ref.state_dict().items()
                       if not k.endswith("position_ids")})
    pad = config.pad_token_id
    ids, mask, types = batch_with_padding(config.vocab_size, [9, 3, 12], pad=pad, seed=2)
    if family == "roberta":
        types = torch.zeros_like(ids)
    with torch.no_grad():
        expected = ref(input_ids=ids, attention_mask=mask, token_type_ids=types)
        got = ours(ids, mask, types)
        got_eager = ours(ids, mask, types, output_attentions=True)
    diff = max_diff_on_tokens(got.last_hidden_state, expected.last_hidden_state, mask)
    print(f"{family} {overrides} max abs diff {diff:.2e}")
    assert diff <= TOL
    assert max_diff_on_tokens(got_eager.last_hidden_state, got.last_hidden_state, mask) <= TOL


def test_attention_probabilities_match_transformers(tmp_path) -> None:
    from transformers import BertModel

    config = hf_config(attn_implementation="eager")
    ref = BertModel(config).eval()
    randomize(ref, seed=3)
    ref.save_pretrained(tmp_path)
    ours = BortModel.from_pretrained(tmp_path)
    ids, mask, _ = batch_with_padding(config.vocab_size, [6, 4])
    with torch.no_grad():
        expected = ref(input_ids=ids, attention_mask=mask, output_attentions=True,
                       output_hidden_states=True)
        got = ours.eval()(ids, mask, output_attentions=True, output_hidden_states=True)
    for a, b in zip(got.attentions, expected.attentions):
        assert (a - b).abs().max().item() <= TOL
    assert len(got.hidden_states) == len(expected.hidden_states) == config.num_hidden_layers + 1


# ---------------------------------------------------------------------- saving for transformers
@pytest.mark.parametrize("family", ["bert", "roberta"])
def test_saved_classifier_loads_unchanged_in_transformers(family, tmp_path) -> None:
    from transformers import AutoModelForSequenceClassification

    arch = replace(Arch.from_config(hf_config(family).to_dict()), num_labels=3)
    ours = BortModel(arch, id2label={0: "neg", 1: "neutral", 2: "pos"}).eval()
    randomize(ours, seed=4)
    ours.save_pretrained(tmp_path, card={"source": "random", "license": "apache-2.0"})
    ref = AutoModelForSequenceClassification.from_pretrained(tmp_path).eval()
    assert ref.config.id2label == {0: "neg", 1: "neutral", 2: "pos"}
    ids, mask, _ = batch_with_padding(arch.vocab_size, [7, 2, 5], pad=arch.pad_token_id)
    with torch.no_grad():
        diff = (ours(ids, mask).logits - ref(input_ids=ids, attention_mask=mask).logits).abs().max()
    assert diff.item() <= TOL
    back = BortModel.from_pretrained(tmp_path)  # and bort reads what transformers would write
    assert all(torch.equal(a, b) for a, b in zip(back.state_dict().values(),
                                                  ours.state_dict().values()))
    card = (tmp_path / "README.md").read_text()
    assert "apache-2.0" in card and "Source:** random" in card and "neg, neutral, pos" in card


def test_transformers_classifier_loads_in_bort(tmp_path) -> None:
    from transformers import BertForSequenceClassification

    config = hf_config(num_labels=1, problem_type="regression")
    ref = BertForSequenceClassification(config).eval()
    randomize(ref, seed=5)
    ref.save_pretrained(tmp_path)
    ours = BortModel.from_pretrained(tmp_path).eval()
    assert ours.arch.num_labels == 1 and ours.problem_type == "regression"
    ids, mask, types = batch_with_padding(config.vocab_size, [8, 3])
    with torch.no_grad():
        diff = (ours(ids, mask, types).logits - ref(input_ids=ids, attention_mask=mask,
                                                    token_type_ids=types).logits).abs().max()
    assert diff.item() <= TOL


@pytest.mark.parametrize("family", ["bert", "roberta"])
def test_masked_lm_head_matches_transformers(family, tmp_path) -> None:
    from transformers import AutoModelForMaskedLM

    config = hf_config(family)
    ref = AutoModelForMaskedLM.from_config(config).eval()
    randomize(ref, seed=7)
    ref.save_pretrained(tmp_path / "ref")
    ours = BortModel.from_pretrained(tmp_path / "ref").eval()
    assert ours.arch.mlm_head
    assert ours.arch.params().total == sum(p.numel() for p in ref.parameters())
    ids, mask, _ = batch_with_padding(config.vocab_size, [9, 4], pad=config.pad_token_id)
    with torch.no_grad():
        expected = ref(input_ids=ids, attention_mask=mask).logits
        assert max_diff_on_tokens(ours(ids, mask, output_mlm=True).mlm_logits, expected,
                                  mask) <= TOL
        ours.save_pretrained(tmp_path / "ours")  # and transformers reads bort's file back
        again = AutoModelForMaskedLM.from_pretrained(tmp_path / "ours").eval()
        assert max_diff_on_tokens(again(input_ids=ids, attention_mask=mask).logits, expected,
                                  mask) <= TOL


def test_pytorch_model_bin_loads_through_weights_only(tmp_path) -> None:
    from transformers import BertModel

    config = hf_config()
    ref = BertModel(config)
    config.save_pretrained(tmp_path)
    torch.save(ref.state_dict(), tmp_path / "pytorch_model.bin")
    ours = BortModel.from_pretrained(tmp_path)
    word = ours.embeddings.word_embeddings.weight
    assert torch.equal(word, ref.embeddings.word_embeddings.weight)

    class Evil:
        def __reduce__(self):
            return (print, ("pickle code ran",))

    torch.save({"x": Evil()}, tmp_path / "pytorch_model.bin")
    with pytest.raises(WeightsError, match="weights_only=True"):
        BortModel.from_pretrained(tmp_path)


# ---------------------------------------------------------------------- layer-wise models
LAYERWISE = Arch(hidden=48, layers=[(3, 16, 64), (0, 0, 80), (5, 8, 0), (2, 24, 96)],
                 vocab_size=120, max_positions=24, num_labels=2, dropout=0.1)


def test_layerwise_forward_backward_and_bit_exact_round_trip(tmp_path) -> None:
    torch.manual_seed(0)
    model = BortModel(LAYERWISE)
    assert sum(p.numel() for p in model.parameters()) == LAYERWISE.params().total
    assert model.encoder.layer[1].attention is None and model.encoder.layer[2].output is None
    ids, mask, _ = batch_with_padding(120, [10, 4, 7])
    out = model.train()(ids, mask)
    loss = torch.nn.functional.cross_entropy(out.logits, torch.tensor([0, 1, 1]))
    loss.backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum()]
    assert not missing, f"no gradient reached {missing}"

    model.save_pretrained(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["model_type"] == "bort" and len(config["layers"]) == 4
    back = BortModel.from_pretrained(tmp_path)
    assert back.arch == LAYERWISE
    for (name, a), b in zip(model.state_dict().items(), back.state_dict().values()):
        assert torch.equal(a, b), name
    with torch.no_grad():
        assert torch.equal(model.eval()(ids, mask).logits, back.eval()(ids, mask).logits)


def _rename(name: str, prefixes: dict[str, str]) -> str:
    for old, new in prefixes.items():
        if name.startswith(old):
            return new + name[len(old):]
    return name


def test_removed_sublayer_is_the_identity() -> None:
    """Dropping a layer (heads = ffn = 0) or a sublayer changes nothing else in the network."""
    arch = Arch(hidden=32, layers=[(2, 16, 40), (4, 8, 64)], vocab_size=50, max_positions=16,
                dropout=0.0, attention_dropout=0.0)
    model = BortModel(arch).eval()
    randomize(model, seed=6)
    ids, mask, _ = batch_with_padding(50, [5, 8])
    with torch.no_grad():
        expected = model(ids, mask).last_hidden_state
        for extra in [(0, 0, 0)]:
            padded = BortModel(arch.with_layers([arch.layers[0], extra, arch.layers[1]])).eval()
            padded.load_checked({k.replace("encoder.layer.1.", "encoder.layer.2."): v
                                 for k, v in model.state_dict().items()})
            assert torch.equal(padded(ids, mask).last_hidden_state, expected)
        # attention only in layer 0 + FFN only in layer 1 == the full layer 0 alone + FFN of 1
        split = BortModel(arch.with_layers([(2, 16, 0), (0, 0, 40)])).eval()
        moved = {"encoder.layer.0.intermediate": "encoder.layer.1.intermediate",
                 "encoder.layer.0.output": "encoder.layer.1.output"}
        split.load_checked({_rename(k, moved): v
                            for k, v in model.state_dict().items() if "layer.1." not in k})
        single = BortModel(arch.with_layers([arch.layers[0]])).eval()
        single.load_checked({k: v for k, v in model.state_dict().items() if "layer.1." not in k})
        assert torch.equal(split(ids, mask).last_hidden_state, single(ids, mask).last_hidden_state)


# ---------------------------------------------------------------------- bad input
def test_shape_mismatch_names_the_tensor(tmp_path) -> None:
    from transformers import BertModel

    BertModel(hf_config()).save_pretrained(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps(config | {"intermediate_size": 128}))
    with pytest.raises(WeightsError, match=r"'encoder.layer.0.intermediate.dense.weight' has "
                                           r"shape \(96, 64\), the architecture needs \(128, 64\)"):
        BortModel.from_pretrained(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps(config | {"num_hidden_layers": 3}))
    with pytest.raises(WeightsError, match="missing tensor 'encoder.layer.2"):
        BortModel.from_pretrained(tmp_path)


def test_missing_and_corrupt_files(tmp_path) -> None:
    with pytest.raises(FileNotFoundError, match="model directory not found"):
        BortModel.from_pretrained(tmp_path / "absent")
    (tmp_path / "config.json").write_text(json.dumps(hf_config().to_dict()))
    with pytest.raises(FileNotFoundError, match="no weights in"):
        BortModel.from_pretrained(tmp_path)
    (tmp_path / "model.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{garbage")
    with pytest.raises(WeightsError, match="unreadable safetensors"):
        BortModel.from_pretrained(tmp_path)


def test_bad_inputs_raise_clear_errors() -> None:
    model = BortModel(Arch.uniform(1, 2, 16, 16, vocab_size=30, max_positions=8)).eval()
    ok = torch.tensor([[1, 2, 3]])
    cases = [
        (dict(input_ids=torch.tensor([[1, 30]])), r"out of range \[0, 30\)"),
        (dict(input_ids=torch.tensor([[-1, 2]])), "out of range"),
        (dict(input_ids=torch.zeros(0, 3, dtype=torch.long)), "empty batch"),
        (dict(input_ids=torch.ones(1, 9, dtype=torch.long)), "exceeds the model's 8 positions"),
        (dict(input_ids=torch.tensor([1.0, 2.0])), "2-D tensor"),
        (dict(input_ids=ok.float()), "integer token ids"),
        (dict(input_ids=ok, attention_mask=torch.ones(1, 2)), "attention_mask has shape"),
        (dict(input_ids=ok, token_type_ids=torch.full((1, 3), 2)), r"token_type_ids values"),
    ]
    for kwargs, match in cases:
        with pytest.raises(ValueError, match=match):
            model(**kwargs)
