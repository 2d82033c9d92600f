"""bort.runtime (the fused C++ encoder) against transformers and bort.model."""

from __future__ import annotations

import functools
import json
import os
import subprocess
import sys
import threading
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import hf_config, randomize
from hypothesis import given, settings
from hypothesis import strategies as st

from bort import Arch, BortError, WeightsError, _core
from bort.model import BortModel
from bort.runtime import DTYPES, Classifier, Encoder

TOL = 1e-4


def random_batch(vocab: int, lengths: list[int], pad: int = 0, seed: int = 0, types: int = 2):
    rng = np.random.default_rng(seed)
    s = max(lengths)
    ids = rng.integers(3, vocab, (len(lengths), s))
    mask = np.zeros_like(ids)
    tt = np.zeros_like(ids)
    for i, n in enumerate(lengths):
        mask[i, :n] = 1
        ids[i, n:] = pad
        if types > 1:
            tt[i, n // 2:n] = 1
    return ids, mask, tt


def runtime_of(model: BortModel, threads: int = 2) -> Encoder:
    return Encoder(model.arch, {k: v.numpy() for k, v in model.state_dict().items()},
                   num_threads=threads)


def compare(ours: np.ndarray, ref: torch.Tensor, mask: np.ndarray) -> float:
    return float(np.abs(ours - ref.numpy())[mask.astype(bool)].max())


# ---------------------------------------------------------------------- parity
def test_minilm_matches_transformers(minilm_dir) -> None:
    from transformers import BertModel

    ref = BertModel.from_pretrained(minilm_dir).eval()
    enc = Encoder.from_pretrained(minilm_dir, num_threads=2)
    ids, mask, types = random_batch(30522, [1, 37, 128, 9])
    with torch.no_grad():
        expected = ref(input_ids=torch.from_numpy(ids), attention_mask=torch.from_numpy(mask),
                       token_type_ids=torch.from_numpy(types))
    got = enc.forward(ids, mask, types)
    diff = compare(got["last_hidden_state"], expected.last_hidden_state, mask)
    print(f"all-MiniLM-L6-v2 fused encoder max abs diff {diff:.2e} ({_core.encoder_isa()})")
    assert diff <= TOL
    assert np.abs(got["pooler_output"] - expected.pooler_output.numpy()).max() <= TOL
    assert np.all(got["last_hidden_state"][~mask.astype(bool)] == 0)


@pytest.mark.parametrize("family,overrides,lengths", [
    ("bert", dict(num_attention_heads=5, hidden_size=320, intermediate_size=77), [1, 13, 7]),
    ("bert", dict(num_attention_heads=3, hidden_size=63, hidden_act="gelu_new",
                  num_hidden_layers=3, intermediate_size=130), [40, 2]),
    ("bert", dict(num_attention_heads=2, hidden_size=34, hidden_act="relu"), [1]),
    ("bert", dict(max_position_embeddings=512), [512, 100]),
    ("roberta", dict(num_attention_heads=4, hidden_size=64), [9, 3, 12]),
])
def test_random_configs_match_transformers(family, overrides, lengths) -> None:
    from transformers import AutoModel

    config = hf_config(family, **overrides)
    ref = AutoModel.from_config(config).eval()
    randomize(ref, seed=1)
    state = {k: v.numpy() for k, v in ref.state_dict().items()}
    enc = Encoder(Arch.from_config(config.to_dict()), state, num_threads=2)
    ids, mask, types = random_batch(config.vocab_size, lengths, pad=config.pad_token_id,
                                    types=config.type_vocab_size)
    with torch.no_grad():
        expected = ref(input_ids=torch.from_numpy(ids), attention_mask=torch.from_numpy(mask),
                       token_type_ids=torch.from_numpy(types)).last_hidden_state
    diff = compare(enc(ids, mask, types), expected, mask)
    print(f"{family} {overrides} {lengths}: max abs diff {diff:.2e}")
    assert diff <= TOL


def test_layerwise_matches_bort_model() -> None:
    """Layers without attention or FFN, heads × head_dim ≠ hidden, a classification head."""
    arch = Arch(hidden=48, layers=[(3, 16, 64), (0, 0, 80), (5, 8, 0), (0, 0, 0), (2, 24, 50)],
                vocab_size=120, max_positions=64, num_labels=3, dropout=0.0,
                attention_dropout=0.0)
    model = BortModel(arch).eval()
    randomize(model, seed=2)
    enc = runtime_of(model, threads=3)
    ids, mask, types = random_batch(120, [5, 17, 1, 64])
    with torch.no_grad():
        expected = model(torch.from_numpy(ids), torch.from_numpy(mask), torch.from_numpy(types))
    got = enc.forward(ids, mask, types)
    assert compare(got["last_hidden_state"], expected.last_hidden_state, mask) <= TOL
    assert np.abs(got["logits"] - expected.logits.numpy()).max() <= TOL


def min_token_cosine(a: np.ndarray, b: np.ndarray, mask: np.ndarray) -> float:
    a, b = a[mask.astype(bool)], b[mask.astype(bool)]
    return float(((a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)).min())


@pytest.mark.parametrize("dtype,bound", [("bf16", 0.999), ("int8", 0.99)])
def test_low_precision_matches_fp32(minilm_dir, dtype, bound) -> None:
    """bf16 and int8 GEMMs: every token's vector points where transformers' does."""
    from transformers import BertModel

    ids, mask, types = random_batch(30522, [1, 37, 128, 9], seed=4)
    with torch.no_grad():
        ref = BertModel.from_pretrained(minilm_dir).eval()(
            input_ids=torch.from_numpy(ids), attention_mask=torch.from_numpy(mask),
            token_type_ids=torch.from_numpy(types)).last_hidden_state.numpy()
    enc = Encoder.from_pretrained(minilm_dir, dtype=dtype, num_threads=2)
    cos = min_token_cosine(enc(ids, mask, types), ref, mask)
    print(f"{dtype}: min per-token cosine {cos:.5f}")
    assert cos >= bound


@pytest.mark.parametrize("env", [{"BORT_ISA": "avx2"}, {"BORT_GEMM": "mkl"}],
                         ids=["avx2", "mkl"])
def test_forced_backends_pass_parity(minilm_dir, env) -> None:
    """The forced backends give the same answers in every dtype: the AVX2 kernels (with MKL's
    AVX2 code and 7-bit int8 weights for bf16 and int8), and MKL's GEMMs instead of bort's.
    Each runs in its own process (the backend is chosen once per process)."""
    code = f"""
import sys, numpy as np, torch
sys.path.insert(0, {str(Path(__file__).parent)!r})
from test_runtime import random_batch
from bort import _core
from bort.runtime import Encoder
from transformers import BertModel
from test_runtime import min_token_cosine
desc = _core.backend()["description"]
assert {env!r} != {{"BORT_ISA": "avx2"}} or desc.startswith("avx2"), desc
assert {env!r} != {{"BORT_GEMM": "mkl"}} or "own" not in desc, desc
ids, mask, types = random_batch(30522, [3, 70, 128])
ref = BertModel.from_pretrained({str(minilm_dir)!r}).eval()
with torch.no_grad():
    r = ref(input_ids=torch.from_numpy(ids), attention_mask=torch.from_numpy(mask),
            token_type_ids=torch.from_numpy(types)).last_hidden_state.numpy()
enc = Encoder.from_pretrained({str(minilm_dir)!r}, num_threads=2)
diff = np.abs(enc(ids, mask, types) - r)[mask.astype(bool)].max()
assert diff <= {TOL}, diff
for dtype, bound in (("bf16", 0.999), ("int8", 0.99)):
    enc = Encoder.from_pretrained({str(minilm_dir)!r}, num_threads=2, dtype=dtype)
    cos = min_token_cosine(enc(ids, mask, types), r, mask)
    assert cos >= bound, (dtype, cos)
"""
    out = subprocess.run([sys.executable, "-c", code],
                         env={**os.environ, **env, "HF_HUB_OFFLINE": "1"},
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]


# ---------------------------------------------------------------------- the Python API
def test_encode_and_classify(minilm_dir, tmp_path) -> None:
    from transformers import AutoTokenizer, BertModel

    texts = ["a gripping, beautiful film", "dull and far too long", "the cat sat on the mat"]
    enc = Encoder.from_pretrained(minilm_dir)
    vectors = enc.encode(texts, pooling="mean", normalize=True)
    tok = AutoTokenizer.from_pretrained(minilm_dir)
    batch = tok(texts, padding=True, return_tensors="pt")
    with torch.no_grad():
        h = BertModel.from_pretrained(minilm_dir).eval()(**batch).last_hidden_state
    m = batch["attention_mask"][..., None].float()
    ref = ((h * m).sum(1) / m.sum(1))
    ref = torch.nn.functional.normalize(ref, dim=1).numpy()
    assert np.abs(vectors - ref).max() <= TOL

    model = BortModel.from_pretrained(minilm_dir)
    clf_model = BortModel(replace(model.arch, num_labels=2), id2label={0: "neg", 1: "pos"})
    clf_model.load_checked({**model.state_dict(), **{k: v for k, v in clf_model.state_dict().items()
                                                      if k.startswith("classifier.")}})
    clf_model.source_dir = minilm_dir
    clf_model.save_pretrained(tmp_path)
    clf = Classifier.from_pretrained(tmp_path, num_threads=1)
    pred = clf.predict(texts)
    with torch.no_grad():
        logits = clf_model.eval()(**{k: v for k, v in batch.items()}).logits
    probs = torch.softmax(logits, -1).numpy()
    assert np.abs(pred.probabilities - probs).max() <= TOL
    assert pred.labels == [["neg", "pos"][i] for i in probs.argmax(1)]
    with pytest.raises(BortError, match="no classification head"):
        Classifier.from_pretrained(minilm_dir)


def test_concurrent_calls_are_identical(minilm_dir) -> None:
    enc = Encoder.from_pretrained(minilm_dir, num_threads=2)
    batches = [random_batch(30522, [int(n) for n in np.random.default_rng(i).integers(1, 100, 4)],
                            seed=i) for i in range(6)]
    expected = [enc(*b) for b in batches]
    results: dict[int, list] = {}

    def worker(k: int) -> None:
        results[k] = [enc(*batches[(k + j) % 6]) for j in range(6)]

    threads = [threading.Thread(target=worker, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for k, outs in results.items():
        for j, out in enumerate(outs):
            assert np.array_equal(out, expected[(k + j) % 6])


@pytest.mark.parametrize("dtype", DTYPES)
def test_rows_do_not_depend_on_batch_mates_or_threads(minilm_dir, dtype) -> None:
    """Each sequence's output is bit-identical alone, among batch mates of other lengths, and on
    1 or 2 threads: activations are converted per token and every tile of bort's kernels sums K
    in one order, so neither the batch (the M of every GEMM) nor the work split changes a row's
    arithmetic. (MKL, where it runs, picks kernels by M: there the rows agree to rounding.)"""
    from bort import _core

    same = (np.array_equal if _core.backend()["gemm"][dtype].startswith("own")
            else lambda a, b: np.abs(a - b).max() <= 1e-4)
    ids, mask, types = random_batch(30522, [37, 128, 5, 90], seed=7)
    together = {t: Encoder.from_pretrained(minilm_dir, dtype=dtype, num_threads=t)(ids, mask, types)
                for t in (1, 2)}
    assert same(together[1], together[2])
    alone = Encoder.from_pretrained(minilm_dir, dtype=dtype, num_threads=2)
    for b in range(len(ids)):
        n = int(mask[b].sum())
        out = alone(ids[b:b + 1, :n], mask[b:b + 1, :n], types[b:b + 1, :n])
        assert same(out[0], together[2][b, :n]), b


def test_idle_encoder_burns_no_cpu(minilm_dir) -> None:
    enc = Encoder.from_pretrained(minilm_dir, num_threads=2)
    ids, mask, _ = random_batch(30522, [64])
    enc(ids, mask)
    time.sleep(0.05)
    before = time.process_time()
    time.sleep(0.5)
    assert time.process_time() - before < 0.05


def test_runtime_leaves_torch_out() -> None:
    code = "import sys, bort.runtime; sys.exit('torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0


def test_sublayer_timing(minilm_dir) -> None:
    enc = Encoder.from_pretrained(minilm_dir, num_threads=1)
    ms = enc.sublayer_ms(*random_batch(30522, [32])[:2])
    assert len(ms) == 1 + 2 * 6 + 1 and all(t >= 0 for t in ms)


# ---------------------------------------------------------------------- bad input
def test_bad_inputs(minilm_dir) -> None:
    enc = Encoder.from_pretrained(minilm_dir, num_threads=1)
    ok = np.array([[101, 2000, 102]])
    cases = [
        (dict(input_ids=np.array([[101, 30522]])), r"out of range \[0, 30522\)"),
        (dict(input_ids=np.array([[-1, 5]])), "out of range"),
        (dict(input_ids=np.zeros((0, 3), dtype=np.int64)), "empty batch"),
        (dict(input_ids=np.zeros((2, 0), dtype=np.int64)), "empty batch"),
        (dict(input_ids=np.ones((1, 513), dtype=np.int64)), "beyond the model's 512 positions"),
        (dict(input_ids=ok.astype(np.float32)), "must hold integers"),
        (dict(input_ids=ok[0]), "must be 2-D"),
        (dict(input_ids=ok, attention_mask=np.ones((1, 2), dtype=np.int64)),
         "attention_mask has shape"),
        (dict(input_ids=ok, attention_mask=np.array([[1, 2, 1]])), "must be 0 or 1"),
        (dict(input_ids=ok, attention_mask=np.zeros((1, 3), dtype=np.int64)), "has no tokens"),
        (dict(input_ids=ok, token_type_ids=np.array([[0, 2, 0]])), "token_type_ids out of range"),
        (dict(input_ids="hello"), "integers"),
    ]
    for kwargs, match in cases:
        with pytest.raises(ValueError, match=match):
            enc(**kwargs)
    wide = np.array([[101, 2000, 102, 0]] * 2)[:, ::2]  # non-contiguous: works, same result
    assert np.array_equal(enc(wide), enc(np.ascontiguousarray(wide)))
    with pytest.raises(ValueError, match="num_threads"):
        Encoder.from_pretrained(minilm_dir, num_threads=0)
    with pytest.raises(BortError, match="dtype 'fp8'"):
        Encoder.from_pretrained(minilm_dir, dtype="fp8")


def test_bad_model_files(minilm_dir, tmp_path) -> None:
    for name in ("config.json", "tokenizer.json"):
        (tmp_path / name).write_bytes((minilm_dir / name).read_bytes())
    with pytest.raises(FileNotFoundError, match="no weights"):
        Encoder.from_pretrained(tmp_path)
    data = (minilm_dir / "model.safetensors").read_bytes()
    (tmp_path / "model.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(WeightsError, match="unreadable safetensors"):
        Encoder.from_pretrained(tmp_path)
    config = json.loads((minilm_dir / "config.json").read_text())
    (tmp_path / "model.safetensors").write_bytes(data)
    (tmp_path / "config.json").write_text(json.dumps(config | {"intermediate_size": 1024}))
    with pytest.raises(WeightsError, match=r"'encoder.layer.0.intermediate.dense.weight' has shape "
                                           r"\(1536, 384\), the architecture needs \(1024, 384\)"):
        Encoder.from_pretrained(tmp_path)
    with pytest.raises(FileNotFoundError, match="model directory not found"):
        Encoder.from_pretrained(tmp_path / "nope")


@functools.cache
def tiny_encoder() -> Encoder:
    arch = Arch(hidden=16, layers=[(2, 8, 24)], vocab_size=50, max_positions=16, type_vocab_size=2)
    return runtime_of(BortModel(arch), threads=2)


@settings(max_examples=60, deadline=None)
@given(b=st.integers(0, 3), s=st.integers(0, 20), lo=st.integers(-5, 60), hi=st.integers(0, 80),
       mask_lo=st.integers(-1, 1), mask_hi=st.integers(0, 2), type_hi=st.integers(0, 3),
       dtype=st.sampled_from([np.int64, np.int32, np.uint8, np.float64]))
def test_binding_checks_never_crash(b, s, lo, hi, mask_lo, mask_hi, type_hi, dtype) -> None:
    """Random shapes, ranges and dtypes: either a correct result or a ValueError, never a crash."""
    rng = np.random.default_rng(b * 1000 + s)
    ids = rng.integers(min(lo, hi), max(lo, hi) + 1, (b, s)).astype(dtype)
    mask = rng.integers(min(mask_lo, mask_hi), max(mask_lo, mask_hi) + 1, (b, s))
    types = rng.integers(0, type_hi + 1, (b, s))
    try:
        out = tiny_encoder()(ids, mask, types)
    except ValueError:
        return
    assert out.shape == (b, s, 16) and np.all(np.isfinite(out))


def test_dtypes_are_the_cores() -> None:
    """The runtime's dtypes are the C++ encoder's one table, which also parses them."""
    from bort.runtime import DTYPES

    assert DTYPES == tuple(_core.DTYPES) == ("fp32", "bf16", "int8")
    arch = Arch(hidden=16, layers=[(2, 8, 24)], vocab_size=50, max_positions=16)
    with pytest.raises(ValueError, match="dtype 'fp8' is not available; choose from fp32, bf16"):
        _core.Encoder(arch._to_core(), {}, 1, "fp8")
