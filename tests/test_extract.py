"""Extraction from the source weights, on the real all-MiniLM-L6-v2."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import HELD_OUT, SAMPLE

from bort import Arch, ConfigError
from bort.extract import extract, magnitude_importance, target_arch
from bort.model import BortModel
from bort.tokenize import encode, load_tokenizer


@pytest.fixture(scope="module")
def source(minilm_dir) -> BortModel:
    return BortModel.from_pretrained(minilm_dir).eval()


def embed(model: BortModel, texts: list[str], minilm_dir) -> torch.Tensor:
    """Mean-pooled sentence embeddings, as sentence-transformers computes them."""
    batch = {k: torch.from_numpy(v) for k, v in encode(load_tokenizer(minilm_dir), texts).items()}
    with torch.no_grad():
        hidden = model.eval()(**batch).last_hidden_state
    mask = batch["attention_mask"][..., None].float()
    return (hidden * mask).sum(1) / mask.sum(1)


def test_extracting_the_source_arch_reproduces_it(source, minilm_dir) -> None:
    same = extract(source, source.arch, SAMPLE)
    for (name, a), b in zip(source.state_dict().items(), same.state_dict().values()):
        assert torch.equal(a, b), name
    assert torch.equal(embed(same, HELD_OUT, minilm_dir), embed(source, HELD_OUT, minilm_dir))


def test_importance_guided_extraction_beats_truncation(source, minilm_dir) -> None:
    """3 of 6 layers, half of each FFN: held-out embedding cosine to the teacher."""
    target = target_arch(source.arch, 3, 12, 384, 768)
    ref = embed(source, HELD_OUT, minilm_dir)

    def cosine(model: BortModel) -> float:
        vectors = embed(model, HELD_OUT, minilm_dir)
        return torch.nn.functional.cosine_similarity(vectors, ref).mean().item()

    guided = cosine(extract(source, target, SAMPLE))
    naive = BortModel(target)  # the first 3 layers, the first half of each FFN
    state = source.state_dict()
    truncated_state = {}
    for name in naive.state_dict():
        value = state[name]
        if "intermediate.dense" in name:
            value = value[:768]
        elif name.endswith("output.dense.weight") and "attention" not in name:
            value = value[:, :768]
        truncated_state[name] = value.clone()
    naive.load_checked(truncated_state)
    truncated = cosine(naive)
    torch.manual_seed(0)
    floor = cosine(BortModel(target))
    print(f"held-out cosine to the teacher: importance-guided {guided:.3f}, "
          f"truncation {truncated:.3f}, random init {floor:.3f}")
    assert guided > truncated + 0.1 and truncated > floor


def test_layerwise_extraction_keeps_the_chosen_units(source) -> None:
    imp = magnitude_importance(source)
    layers = [(12, 32, 1536), (4, 32, 0), (0, 0, 512), (0, 0, 0), (6, 16, 64), (12, 32, 1536)]
    target = Arch(**{**source.arch.__dict__, "hidden": 256, "layers": tuple(layers)})
    model = extract(source, target, importance=imp)
    assert model.arch == target
    c = np.sort(np.argsort(-imp.channels, kind="stable")[:256])
    heads = np.sort(np.argsort(-imp.heads[1], kind="stable")[:4])
    q_src = source.encoder.layer[1].attention.self.query.weight.detach()
    rows = (heads[:, None] * 32 + np.arange(32)).reshape(-1)
    assert torch.equal(model.encoder.layer[1].attention.self.query.weight, q_src[rows][:, c])
    assert model.encoder.layer[3].attention is None and model.encoder.layer[3].intermediate is None
    ids = torch.randint(1000, 2000, (2, 9))
    assert model(ids).last_hidden_state.shape == (2, 9, 256)


def test_extraction_refuses_what_the_source_does_not_have(source) -> None:
    with pytest.raises(ConfigError, match="exceeds the source's 384"):
        extract(source, target_arch(source.arch, 3, 12, 768, 768))
    with pytest.raises(ConfigError, match="not a part of source layer"):
        extract(source, target_arch(source.arch, 3, 12, 384, 2048))
    with pytest.raises(ConfigError, match="not a part of source layer"):
        extract(source, target_arch(source.arch, 3, 6, 384, 768))  # heads of 64 > 32
    with pytest.raises(ConfigError, match="cannot be read as a part"):
        extract(source, target_arch(source.arch, 8, 12, 384, 768))
    with pytest.raises(ConfigError, match="vocab_size"):
        extract(source, Arch.uniform(2, 12, 384, 768, vocab_size=50265))


def test_extract_command(minilm_dir, tmp_path) -> None:
    from transformers import BertModel

    texts = tmp_path / "texts.txt"
    texts.write_text("\n".join(SAMPLE))
    bort = str(Path(sys.executable).with_name("bort"))
    out = subprocess.run([bort, "extract", str(minilm_dir), "--arch", "3,12,384,768",
                          "--texts", str(texts), "--out", str(tmp_path / "student")],
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert "⟨D=3, A=12, H=384, I=768⟩" in out.stdout
    student = BertModel.from_pretrained(tmp_path / "student")  # uniform: transformers loads it
    assert student.config.num_hidden_layers == 3
    assert (tmp_path / "student" / "tokenizer.json").is_file()
    spec = tmp_path / "arch.json"
    spec.write_text(json.dumps({"hidden": 320, "layers": [[6, 32, 512]] * 3 + [[0, 0, 256]] * 3}))
    out = subprocess.run([bort, "extract", str(minilm_dir), "--arch-json", str(spec),
                          "--out", str(tmp_path / "lw")], capture_output=True, text=True,
                         timeout=300)
    assert out.returncode == 0, out.stderr
    assert BortModel.from_pretrained(tmp_path / "lw").arch.hidden == 320
    out = subprocess.run([bort, "extract", str(minilm_dir), "--arch", "3,12", "--out",
                          str(tmp_path / "x")], capture_output=True, text=True, timeout=300)
    assert out.returncode == 1 and "four integers" in out.stderr
