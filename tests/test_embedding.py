"""Embedding students (bort.embedding): the scores against brute force, the teacher's vectors
against transformers + sentence-transformers' pooling, the loop, the cache, bad input."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from bort.data import load_task
from bort.distill import Corpus
from bort.embedding import (
    distill_embeddings,
    embed,
    embedding_scores,
    embedding_texts,
    neighbour_recall,
    teacher_vectors,
)
from bort.errors import ConfigError
from bort.extract import extract, magnitude_importance, target_arch
from bort.finetune import FinetuneConfig, encode_split
from bort.model import BortModel
from bort.tokenize import load_tokenizer

CONFIG = FinetuneConfig(lr=1e-3, epochs=2, batch_size=16, seq_len=48, evals_per_epoch=1,
                        patience=2)


def unit(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def brute_recall(student: np.ndarray, teacher: np.ndarray, k: int) -> np.ndarray:
    out = []
    for i in range(len(teacher)):
        near = [set(list(j for j in np.argsort(-(v @ v[i]), kind="stable") if j != i)[:k])
                for v in (student, teacher)]
        out.append(len(near[0] & near[1]) / k)
    return np.asarray(out)


def test_scores_against_brute_force():
    rng = np.random.default_rng(0)
    teacher = unit(rng.normal(size=(60, 16)))
    noisy = unit(teacher + 0.4 * rng.normal(size=teacher.shape))
    assert neighbour_recall(teacher, teacher, 10) == pytest.approx(np.ones(60))
    assert neighbour_recall(noisy, teacher, 10) == pytest.approx(brute_recall(noisy, teacher, 10))
    means, per = embedding_scores(noisy, teacher)
    assert per["cosine"] == pytest.approx(np.sum(noisy * teacher, 1))
    assert 0 < means["recall@10"] < 1 and means["cosine"] == pytest.approx(per["cosine"].mean())
    with pytest.raises(ValueError, match="differ in shape"):
        embedding_scores(noisy[:, :8], teacher)
    with pytest.raises(ValueError, match="more than 10"):
        neighbour_recall(teacher[:10], teacher[:10])


def test_teacher_vectors_are_sentence_transformers_vectors(minilm_dir):
    from transformers import AutoTokenizer, BertModel

    texts = ["a gripping, beautifully acted film", "dull.", "the plot never quite comes "
             "together, but the cast is wonderful"]
    tok = AutoTokenizer.from_pretrained(minilm_dir)
    batch = tok(texts, padding=True, return_tensors="pt")
    with torch.no_grad():
        hidden = BertModel.from_pretrained(minilm_dir).eval()(**batch).last_hidden_state
    mask = batch["attention_mask"][..., None].float()
    ref = torch.nn.functional.normalize((hidden * mask).sum(1) / mask.sum(1), dim=-1)
    model = BortModel.from_pretrained(minilm_dir)
    data = encode_split(load_tokenizer(minilm_dir, 64), _split(texts), 64)
    assert embed(model, data) == pytest.approx(ref.numpy(), abs=1e-5)


def _split(texts):
    from bort.data import Split

    return Split(list(texts), np.full(len(texts), -1, np.int64))


def _student(minilm_dir) -> BortModel:
    source = BortModel.from_pretrained(minilm_dir)
    torch.manual_seed(0)
    student = extract(source, target_arch(source.arch, 1, 12, 384, 256),
                      importance=magnitude_importance(source))
    student.source_dir = minilm_dir
    return student


@pytest.fixture(scope="module")
def passages():
    task = load_task("rotten_tomatoes", seed=0)
    return task.train.texts[:320], task.dev.texts[:48], task.test.texts[:48]


def test_distillation_moves_the_student_towards_the_teacher(minilm_dir, passages, tmp_path,
                                                            monkeypatch):
    monkeypatch.setenv("BORT_CACHE_DIR", str(tmp_path / "cache"))
    train, dev, test = passages
    teacher, student = BortModel.from_pretrained(minilm_dir), _student(minilm_dir)
    data = encode_split(load_tokenizer(minilm_dir, CONFIG.seq_len), _split(dev), CONFIG.seq_len)
    target, _, cached = teacher_vectors(teacher, data)
    assert not cached and teacher_vectors(teacher, data)[2]  # the second time from the cache
    before, _ = embedding_scores(embed(student, data), target)
    result = distill_embeddings(student, teacher, train, dev, test, tmp_path / "run", CONFIG,
                                log=None, progress=False)
    assert result.dev["cosine"] > before["cosine"] + 0.05
    assert result.dev["recall@10"] >= before["recall@10"]
    assert set(result.test) == {"cosine", "recall@10"} and result.steps == 40
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["test"] == result.test and metrics["passages"]["train"] == 320

    from bort.runtime import Encoder

    saved = Encoder.from_pretrained(tmp_path / "run" / "model", max_length=CONFIG.seq_len)
    assert saved.encode(dev, pooling="mean", normalize=True) == pytest.approx(
        embed(result.model, data), abs=1e-4)  # what the user serves is what was scored


def test_embedding_texts_hold_out_what_distillation_never_reads(tmp_path):
    path = tmp_path / "corpus.txt"
    path.write_text("".join(f"passage number {i} of the corpus\n" for i in range(400)))
    corpus = Corpus([path], held_out=0.25)
    train, dev, test = embedding_texts(corpus, limit=100, seed=0)
    assert len(train) == 100 and len(dev) == len(test) == 50
    assert set(dev) | set(test) == set(corpus.eval) and not set(dev) & set(test)
    assert not (set(dev) | set(test)) & set(corpus.head(corpus.n_train))
    assert embedding_texts(corpus, limit=100, seed=0) == (train, dev, test)
    with pytest.raises(ConfigError, match="held_out share"):
        embedding_texts(Corpus([path], held_out=0.01), limit=100, seed=0)


def test_bad_input_says_what_is_wrong(minilm_dir, passages, tmp_path):
    train, dev, test = passages
    teacher = BortModel.from_pretrained(minilm_dir)
    narrow = extract(teacher, target_arch(teacher.arch, 1, 8, 256, 256))
    narrow.source_dir = minilm_dir
    with pytest.raises(ConfigError, match="keeps the source's hidden size"):
        distill_embeddings(narrow, teacher, train, dev, test, tmp_path, CONFIG, log=None)
    with pytest.raises(ConfigError, match="recall@10 needs more than 10"):
        distill_embeddings(_student(minilm_dir), teacher, train, dev[:10], test, tmp_path,
                           CONFIG, log=None)
    with pytest.raises(ConfigError, match="no training passages"):
        distill_embeddings(_student(minilm_dir), teacher, [], dev, test, tmp_path, CONFIG,
                           log=None)
    with pytest.raises(ConfigError, match="not a labelled dataset"):
        load_task("embedding")
