"""Fine-tuning (bort.finetune), the token generators (bort.augment) and Agora on text, via the
CLI, on real Rotten Tomatoes sentences with all-MiniLM-L6-v2."""

from __future__ import annotations

import json
import re
from dataclasses import replace

import numpy as np
import pytest
import torch

from bort.augment import EmbeddingNeighbours, SpanSwap, Synonyms, TokenDropout, nn_radius
from bort.cli import main
from bort.config import AgoraConfig
from bort.data import Task, load_task
from bort.errors import BortError, ConfigError
from bort.extract import extract, magnitude_importance, target_arch
from bort.finetune import (
    Encoded,
    FinetuneConfig,
    TeacherOutputs,
    encode_split,
    evaluate,
    finetune,
    kd_loss,
    soft_targets,
    teacher_outputs,
    train,
    with_head,
)
from bort.model import BortModel
from bort.tokenize import load_tokenizer


@pytest.fixture(scope="module")
def rt_dir(tmp_path_factory):
    """A small Rotten Tomatoes task as train/dev/test CSV files."""
    task = load_task("rotten_tomatoes", seed=0)
    d = tmp_path_factory.mktemp("rt")
    for name, split, n in (("train", task.train, 320), ("dev", task.dev, 120),
                           ("test", task.test, 120)):
        part = split.subset(np.random.default_rng(0).permutation(len(split))[:n])
        rows = ["text,label"] + ['"{}",{}'.format(t.replace('"', '""'), task.labels[y])
                                 for t, y in zip(part.texts, part.labels)]
        (d / f"{name}.csv").write_text("\n".join(rows) + "\n")
    return d


@pytest.fixture(scope="module")
def teacher_dir(minilm_dir, rt_dir, tmp_path_factory):
    """all-MiniLM-L6-v2 fine-tuned on the small task: the Agora teacher."""
    out = tmp_path_factory.mktemp("teacher")
    finetune(BortModel.from_pretrained(minilm_dir), load_task(rt_dir), out,
             FinetuneConfig(lr=2e-4, epochs=4, batch_size=16, seq_len=64, patience=4), log=None,
             progress=False)
    return out


def small(minilm_dir, layers: int = 1) -> BortModel:
    source = BortModel.from_pretrained(minilm_dir)
    model = extract(source, target_arch(source.arch, layers, 12, 384, 768),
                    importance=magnitude_importance(source))
    model.source_dir = minilm_dir
    return model


def test_finetune_teacher_learns_and_writes_everything(teacher_dir, rt_dir):
    metrics = json.loads((teacher_dir / "metrics.json").read_text())
    assert metrics["test"]["accuracy"] > 0.7  # 320 sentences; chance is 0.5
    assert set(metrics["test"]) == {"accuracy", "f1", "mcc"}
    assert json.loads((teacher_dir / "split.json").read_text())["sizes"]["test"] == 120
    from bort.runtime import Classifier

    clf = Classifier.from_pretrained(teacher_dir / "model")
    task = load_task(rt_dir)
    pred = clf.predict(task.test.texts)
    acc = np.mean([task.labels.index(p) == g for p, g in zip(pred.labels, task.test.labels)])
    assert acc == pytest.approx(metrics["test"]["accuracy"], abs=0.02)  # fp32 runtime vs torch


@pytest.mark.parametrize("distil", [False, True], ids=["plain", "distil"])
def test_interrupted_training_resumes_bit_for_bit(minilm_dir, rt_dir, tmp_path, distil):
    task = load_task(rt_dir)
    tok = load_tokenizer(minilm_dir)
    data = [encode_split(tok, s.subset(range(96)), 32) for s in (task.train, task.dev)]
    config = FinetuneConfig(lr=1e-4, epochs=2, batch_size=16, seq_len=32, evals_per_epoch=2,
                            patience=10, pooled_weight=0.5)
    teacher = None
    if distil:  # a third of the rows unlabelled; a teacher of another width: a projection
        data[0].labels[::3] = -1
        rng = np.random.default_rng(0)
        teacher = TeacherOutputs(rng.normal(size=(96, 2)).astype(np.float32),
                                 rng.normal(size=(96, 24)).astype(np.float32))

    def fresh():
        torch.manual_seed(0)
        return with_head(small(minilm_dir), task)

    whole = train(fresh(), *data, config, teacher=teacher)

    def stop(msg):
        if "step 6/" in msg:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train(fresh(), *data, config, out=tmp_path, log=stop, teacher=teacher)
    resumed = train(fresh(), *data, config, out=tmp_path, resume=True, teacher=teacher)
    assert resumed.steps == whole.steps == 12
    for (k, a), b in zip(whole.model.state_dict().items(), resumed.model.state_dict().values()):
        assert torch.equal(a, b), k
    assert resumed.history["dev"] == whole.history["dev"]
    assert resumed.history["train_loss"] == whole.history["train_loss"]


# ---------------------------------------------------------------------- task distillation
def _log_softmax(x):
    x = x - x.max(1, keepdims=True)
    return x - np.log(np.exp(x).sum(1, keepdims=True))


def test_kd_loss_against_closed_forms():
    rng = np.random.default_rng(0)
    s, t = rng.normal(size=(6, 3)) * 2, rng.normal(size=(6, 3)) * 2
    labels = np.array([0, 2, -1, 1, -1, 2])
    gold = labels >= 0
    ce = -np.mean(_log_softmax(s)[gold, labels[gold]])

    def loss(alpha, temperature, student=s, y=labels):
        return kd_loss(torch.tensor(student), torch.tensor(t), torch.tensor(y), alpha,
                       temperature).item()

    assert loss(1.0, 2.0) == pytest.approx(ce, rel=1e-6)  # alpha = 1: the gold CE alone
    for temperature in (1.0, 2.0, 4.0):
        p = np.exp(_log_softmax(t / temperature))
        assert soft_targets(torch.tensor(t), temperature).sum(1).numpy() == pytest.approx(1)
        kl = np.mean((p * (np.log(p) - _log_softmax(s / temperature))).sum(1))
        assert loss(0.0, temperature) == pytest.approx(temperature ** 2 * kl, rel=1e-6)
        assert loss(0.3, temperature) == pytest.approx(0.3 * ce + 0.7 * temperature ** 2 * kl,
                                                       rel=1e-6)
    assert loss(0.0, 1.0, student=t) == pytest.approx(0, abs=1e-9)  # the teacher itself
    moved = s.copy()
    moved[~gold] += rng.normal(size=moved[~gold].shape) * 5  # unlabelled rows: no CE
    assert loss(1.0, 2.0, student=moved) == pytest.approx(ce, rel=1e-6)
    none = np.full(6, -1)  # no gold label at all: the CE term is 0, not renormalised
    p = np.exp(_log_softmax(t / 2))
    kl = np.mean((p * (np.log(p) - _log_softmax(s / 2))).sum(1))
    assert loss(0.5, 2.0, y=none) == pytest.approx(0.5 * 4 * kl, rel=1e-6)


def test_kd_loss_for_regression():
    s, t = np.array([[0.5], [1.0], [2.0], [-1.0]]), np.array([[0.0], [1.5], [2.0], [0.0]])
    y = np.array([1.0, np.nan, 3.0, np.nan], np.float32)
    gold = np.mean((s[[0, 2], 0] - y[[0, 2]]) ** 2)
    soft = np.mean((s[:, 0] - t[:, 0]) ** 2)
    got = kd_loss(torch.tensor(s), torch.tensor(t), torch.tensor(y), 0.25, 2.0, regression=True)
    assert got.item() == pytest.approx(0.25 * gold + 0.75 * soft, rel=1e-6)


def test_teacher_outputs_are_cached_by_teacher_and_data(minilm_dir, rt_dir, tmp_path,
                                                        monkeypatch):
    monkeypatch.setenv("BORT_CACHE_DIR", str(tmp_path))
    task = load_task(rt_dir)
    torch.manual_seed(0)
    teacher = with_head(small(minilm_dir), task)
    data = encode_split(load_tokenizer(minilm_dir), task.dev.subset(range(20)), 32)
    calls = []
    forward = teacher.forward
    monkeypatch.setattr(teacher, "forward", lambda *a, **k: calls.append(1) or forward(*a, **k))

    first = teacher_outputs(teacher, data)
    n = len(calls)
    assert n > 0 and not first.cached and first.logits.shape == (20, 2)
    assert first.pooled.shape == (20, 384) and first.logits.dtype == np.float32
    teacher.eval()  # dropout off, as for the outputs
    assert first.logits == pytest.approx(teacher(**_batch(data)).logits.detach().numpy(),
                                         abs=1e-5)
    calls.clear()
    again = teacher_outputs(teacher, data)
    assert not calls and again.cached and again.key == first.key
    assert np.array_equal(again.logits, first.logits) and np.array_equal(again.pooled,
                                                                         first.pooled)
    assert len(list((tmp_path / "teacher-outputs").glob("*.safetensors"))) == 1
    other = data.take(range(19))  # other data
    assert not teacher_outputs(teacher, other).cached and calls
    changed = Encoded([x.copy() for x in data.ids], data.types, data.labels)
    changed.ids[3][1] += 1  # one token of one text
    assert not teacher_outputs(teacher, changed).cached
    with torch.no_grad():
        teacher.classifier.bias[0] += 0.5  # one teacher weight
    moved = teacher_outputs(teacher, data)
    assert not moved.cached and moved.key != first.key
    assert not np.allclose(moved.logits, first.logits)
    assert teacher_outputs(teacher, data).cached
    assert not teacher_outputs(teacher, data, cache=False).cached


def _batch(data):
    from bort.finetune import _collate

    return _collate(data, range(len(data)), 0)


def test_training_rows_must_fit_the_teacher(minilm_dir, rt_dir):
    task = load_task(rt_dir)
    model = with_head(small(minilm_dir), task)
    ids = [np.array([101, 2204, 102], np.int32)] * 4
    data = Encoded(ids, [np.zeros(3, np.int32)] * 4, np.array([0, 1, -1, 1]))
    with pytest.raises(ConfigError, match="need a teacher"):
        train(model, data, data.take([0, 1]), FinetuneConfig())
    wrong = TeacherOutputs(np.zeros((3, 2), np.float32), np.zeros((3, 384), np.float32))
    with pytest.raises(ConfigError, match="do not fit 4 training rows"):
        train(model, data, data.take([0, 1]), FinetuneConfig(), teacher=wrong)
    other = with_head(small(minilm_dir), task)
    other.id2label = {0: "bad", 1: "good"}
    with pytest.raises(ConfigError, match="does not fit the task"):
        finetune(model, task, "unused", teacher=other, log=None)
    with pytest.raises(ConfigError, match="no classification head"):
        finetune(model, task, "unused", teacher=small(minilm_dir), log=None)
    with pytest.raises(ConfigError, match="need a teacher to label"):
        finetune(model, task, "unused", transfer=["a text"], log=None)


def test_frozen_word_embeddings_stay_put_and_everything_else_learns(minilm_dir, rt_dir):
    task = load_task(rt_dir)
    torch.manual_seed(0)
    model = with_head(small(minilm_dir), task)
    data = encode_split(load_tokenizer(minilm_dir), task.train.subset(range(64)), 32)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    config = FinetuneConfig(lr=1e-3, epochs=1, batch_size=16, freeze_word_embeddings=True)
    train(model, data, data.take(range(16)), config)
    after = model.state_dict()
    frozen = "embeddings.word_embeddings.weight"
    assert torch.equal(after[frozen], before[frozen])
    moved = [k for k in before if not torch.equal(after[k], before[k])]
    assert "classifier.weight" in moved and any(k.startswith("encoder.") for k in moved)
    assert model.embeddings.word_embeddings.weight.requires_grad  # trainable again after
    train(model, data, data.take(range(16)), replace(config, freeze_word_embeddings=False))
    assert not torch.equal(model.state_dict()[frozen], before[frozen])


def test_regression_head(minilm_dir, tmp_path):
    rng = np.random.default_rng(0)
    words = ["good", "bad", "fine", "great", "awful"]
    rows = ["text,label"]
    for _ in range(80):
        k = rng.integers(1, 5)
        rows.append(f"{' '.join(['great'] * k + list(rng.choice(words, 3)))},{k / 2:.1f}")
    (tmp_path / "reg.csv").write_text("\n".join(rows) + "\n")
    task = load_task(tmp_path / "reg.csv", regression=True)
    result = finetune(small(minilm_dir), task, tmp_path / "out",
                      FinetuneConfig(lr=3e-4, epochs=8, batch_size=16, seq_len=32, patience=8),
                      log=None, progress=False)
    assert result.model.problem_type == "regression" and result.model.arch.num_labels == 1
    assert result.dev["pearson"] > 0.5  # the count of "great" is learnable
    saved = json.loads((tmp_path / "out" / "model" / "config.json").read_text())
    assert saved["problem_type"] == "regression"


def test_finetune_bad_input(minilm_dir, rt_dir):
    task = load_task(rt_dir)
    model = small(minilm_dir)
    data = Encoded([np.array([101, 102], np.int32)], [np.zeros(2, np.int32)], np.zeros(1, int))
    with pytest.raises(ConfigError, match="no classification head"):
        train(model, data, data, FinetuneConfig())
    empty = Encoded([], [], np.zeros(0, int))
    with pytest.raises(BortError, match="empty split"):
        train(with_head(model, task), data, empty, FinetuneConfig())
    with pytest.raises(ConfigError, match="unknown setting 'learning_rate'"):
        FinetuneConfig().updated({"learning_rate": 1})
    model.source_dir = None
    with pytest.raises(BortError, match="no tokenizer"):
        finetune(model, task, "unused", log=None)


# ---------------------------------------------------------------------- generators
def test_embedding_neighbours_stay_in_the_ball():
    rng = np.random.default_rng(0)
    table = rng.normal(size=(300, 8)).astype(np.float32)
    d = np.sqrt(((table[:, None] - table[None]) ** 2).sum(-1))
    np.fill_diagonal(d, np.inf)
    assert nn_radius(table, 0.5, np.arange(300), sample=300) == pytest.approx(
        np.quantile(d.min(1), 0.5), rel=1e-5)
    gen = EmbeddingNeighbours(table, special=[0, 1], quantile=0.9, rate=0.5, per_point=20)
    ids = np.array([0, 5, 9, 17, 42, 1], np.int32)
    new = gen(Encoded([ids], [np.zeros(6, np.int32)], np.zeros(1, int)), rng)
    assert len(new) > 10 and (new.labels == -1).all()
    for out in new.ids:
        assert out[0] == 0 and out[-1] == 1 and len(out) == len(ids)
        for a, b in zip(ids, out):
            assert a == b or (d[a, b] <= gen.radius + 1e-5 and b not in (0, 1))


def test_text_space_generators_keep_specials_and_segments():
    rng = np.random.default_rng(1)
    ids = np.array([101, 7, 8, 9, 10, 102, 20, 21, 22, 102], np.int32)
    types = np.array([0, 0, 0, 0, 0, 0, 1, 1, 1, 1], np.int32)
    point = Encoded([ids], [types], np.zeros(1, int))
    for out, t in zip(*(lambda e: (e.ids, e.types))(TokenDropout([101, 102], 0.3)(point, rng))):
        assert list(out[[0]]) == [101] and (out == 102).sum() == 2 and len(out) < len(ids)
        assert set(out[t == 0]) - {101, 102} and set(out[t == 1]) - {102}  # no segment emptied
    for out, t in zip(*(lambda e: (e.ids, e.types))(SpanSwap([101, 102])(point, rng))):
        assert sorted(out) == sorted(ids) and list(t) == list(types)
        assert sorted(out[types == 0]) == sorted(ids[types == 0])  # swaps stay in a segment


def test_synonyms_without_wordnet_say_what_is_missing(minilm_dir):
    pytest.importorskip("tokenizers")
    try:
        from nltk.corpus import wordnet

        wordnet.ensure_loaded()
        pytest.skip("WordNet is installed here")
    except (ImportError, LookupError):
        pass
    with pytest.raises(BortError, match="WordNet synonyms need nltk"):
        Synonyms(load_tokenizer(minilm_dir), [101, 102])


# ---------------------------------------------------------------------- Agora on text
@pytest.mark.slow
def test_cli_agora_on_text(minilm_dir, rt_dir, teacher_dir, tmp_path, capsys):
    student = tmp_path / "student"
    small(minilm_dir, 2).save_pretrained(student)
    args = ["finetune", str(student), "--task", str(rt_dir), "--out", str(tmp_path / "agora"),
            "--agora", "paper", "--teacher", str(teacher_dir / "model"), "--lrs", "2e-4", "1e-4",
            "--epochs", "1", "--seq-len", "48", "--per-point", "2",
            "--generators", "embedding", "dropout"]
    assert main(args) == 0
    printed = capsys.readouterr().out
    metrics = json.loads((tmp_path / "agora" / "metrics.json").read_text())
    rounds = metrics["rounds"]
    assert len(rounds) == 2 and [len(r["thetas"]) for r in rounds] == [2, 1]
    assert rounds[0]["points_added"] > 0 and rounds[1]["train_size"] == 320 + rounds[0][
        "points_added"]
    assert "test" in rounds[0] and metrics["train_steps"] > 0
    assert "best: round" in printed and (tmp_path / "agora" / "model" / "config.json").is_file()
    # a rerun resumes: nothing is trained again
    assert main(args) == 0
    assert json.loads((tmp_path / "agora" / "metrics.json").read_text())["rounds"] == rounds


@pytest.mark.slow
@pytest.mark.parametrize("selection", ["halves", "kfold"])
def test_bort_agora_on_text(minilm_dir, rt_dir, teacher_dir, tmp_path, selection):
    """bort's Agora end to end on a small task: every arm from one task-distilled student,
    test scored once per arm, the arm best on the selection data shipped, random matching
    Agora's counts, and a rerun that trains nothing."""
    from bort.agora_style import finetune_rounds

    task = load_task(rt_dir)
    transfer = load_task("rotten_tomatoes", seed=0).train.texts[-300:]
    config = FinetuneConfig(lr=2e-4, epochs=1, batch_size=16, seq_len=48)
    agora = AgoraConfig(thetas=[{"lr": 1e-4}, {"lr": 5e-5}], round_rows=128, per_point=2,
                        neighbours=3, confidence=0.5, generators=["embedding", "dropout"],
                        selection=selection, folds=2)
    teacher = BortModel.from_pretrained(teacher_dir / "model")
    record = finetune_rounds(small(minilm_dir), teacher, task, tmp_path, config, agora,
                             transfer=transfer, log=None)
    arms = record["arms"]
    assert set(arms) == {"distilled", "agora", "random", "distill"}
    assert record["shipped"] == max(arms, key=lambda a: arms[a]["selection"])
    assert all(len(a["test_correct"]) == 120 for a in arms.values())
    assert all(abs(a["test"]["accuracy"] - a["test_correct"].count("1") / 120) < 1e-9
               for a in arms.values())
    assert record["pool"] == 300 and record["teacher_selection"] > 2 / 3
    if selection == "halves":
        assert (record["generation"], record["selection_rows"]) == (60, 60)
    else:
        assert (tmp_path / "folds" / "fold-1" / "model" / "config.json").is_file()
        assert all(e["mistakes"] <= 320 for e in arms["agora"]["rounds"])
    for a, b in zip(arms["agora"]["rounds"], arms["random"]["rounds"]):
        assert (b["edits"], b["retrieved"]) == (a["edits"], a["retrieved"])
    assert arms["agora"]["added"] == sum(e["edits"] + e["retrieved"]
                                         for e in arms["agora"]["rounds"])
    assert all(e["train_rows"] == 128 for a in ("agora", "random", "distill")
               for e in arms[a]["rounds"])
    assert (tmp_path / "model" / "config.json").is_file()
    again = finetune_rounds(small(minilm_dir), teacher, task, tmp_path, config, agora,
                            transfer=transfer, log=None)
    assert all(again["arms"][a]["train_steps"] == 0 for a in ("agora", "random", "distill"))
    assert {a: v["test"] for a, v in again["arms"].items()} == {
        a: v["test"] for a, v in arms.items()}


def test_augmented_copies_join_the_distillation_set(minilm_dir, rt_dir, teacher_dir, tmp_path,
                                                   monkeypatch):
    """`augment_copies` adds that many edited copies of each training sentence, unlabelled, to
    the rows the teacher labels: [CLS] ... [SEP] kept, none equal to a training sentence, the
    same copies for the same seed."""
    from bort.finetune import _augmented

    monkeypatch.setenv("BORT_CACHE_DIR", str(tmp_path / "cache"))
    task, teacher = load_task(rt_dir), BortModel.from_pretrained(teacher_dir / "model")
    tokenizer = load_tokenizer(minilm_dir, 32)
    data = encode_split(tokenizer, task.train, 32)
    copies = _augmented(teacher, tokenizer, data, 2, seed=0)
    assert 0.9 * 2 * len(data) <= len(copies) <= 2 * len(data)
    cls, sep = tokenizer.token_to_id("[CLS]"), tokenizer.token_to_id("[SEP]")
    assert all(c[0] == cls and c[-1] == sep and len(c) <= 32 for c in copies.ids)
    assert not {tuple(c) for c in copies.ids} & {tuple(c) for c in data.ids}
    again = _augmented(teacher, tokenizer, data, 2, seed=0)
    assert all(np.array_equal(a, b) for a, b in zip(copies.ids, again.ids))
    assert len(_augmented(teacher, tokenizer, data, 0, seed=0)) == 0
    config = FinetuneConfig(epochs=1, seq_len=32, batch_size=32, augment_copies=2)
    finetune(small(minilm_dir), task, tmp_path / "a", config, teacher=teacher, log=None,
             progress=False)
    metrics = json.loads((tmp_path / "a" / "metrics.json").read_text())
    assert metrics["augmented"] == len(copies) and metrics["transfer"] == 0
    assert metrics["train_rows"] == len(data) + len(copies)
    with pytest.raises(ConfigError, match="augment_copies must be >= 0"):
        FinetuneConfig(augment_copies=-1)


def test_cli_task_distillation_with_transfer_hits_the_teacher_cache(minilm_dir, rt_dir,
                                                                     teacher_dir, tmp_path,
                                                                     monkeypatch, capsys):
    import re

    monkeypatch.setenv("BORT_CACHE_DIR", str(tmp_path / "cache"))
    small(minilm_dir).save_pretrained(tmp_path / "student")
    task = load_task(rt_dir)
    seen = set(task.train.texts + task.dev.texts + task.test.texts)

    def one(texts):  # texts of one sentence (the transfer file's lines are cut into sentences)
        return [t for t in texts if not re.search(r"[.!?]\s", t) and 6 <= len(t.split()) <= 40]

    fresh = [t for t in one(load_task("rotten_tomatoes").train.texts) if t not in seen][:40]
    copies = one(task.test.texts)[:3] + [t.upper() for t in one(task.dev.texts)[:1]]
    (tmp_path / "transfer.txt").write_text("\n".join(fresh + copies) + "\n")
    args = ["finetune", str(tmp_path / "student"), "--task", str(rt_dir), "--teacher",
            str(teacher_dir / "model"), "--transfer", str(tmp_path / "transfer.txt"),
            "--epochs", "1", "--seq-len", "32", "--batch-size", "16", "--lr", "2e-4",
            "--pooled-weight", "0.1"]
    assert main([*args, "--out", str(tmp_path / "a")]) == 0
    assert "3 copies and 1 near copies of dev/test removed" in capsys.readouterr().out
    first = json.loads((tmp_path / "a" / "metrics.json").read_text())
    assert first["distilled_from"] == str(teacher_dir / "model")
    assert 36 <= first["transfer"] <= 40 and first["train_rows"] == 320 + first["transfer"]
    assert first["teacher_outputs"]["cached"] is False and first["config"]["alpha"] == 0.5
    assert first["teacher"]["test"]["accuracy"] > 0.7
    assert len(list((tmp_path / "cache" / "teacher-outputs").iterdir())) == 3  # train, dev, test
    assert main([*args, "--out", str(tmp_path / "b")]) == 0
    second = json.loads((tmp_path / "b" / "metrics.json").read_text())
    assert second["teacher_outputs"] == {**first["teacher_outputs"], "cached": True}
    assert second["test"] == first["test"] and second["history"] == first["history"]
    card = json.loads((tmp_path / "b" / "model" / "config.json").read_text())["bort"]
    assert card["data"].startswith("distilled on ")
    assert main(["finetune", str(tmp_path / "student"), "--task", str(rt_dir), "--out",
                 str(tmp_path / "c"), "--transfer", str(tmp_path / "transfer.txt")]) == 1
    assert "--transfer needs --teacher" in capsys.readouterr().err


@pytest.mark.parametrize("variant, message", [
    ([], "the teacher scores .* on the selection data"), (["paper"], "teacher's dev accuracy")])
def test_cli_agora_rejects_a_weak_teacher_or_no_pool(minilm_dir, rt_dir, teacher_dir,
                                                     tmp_path, capsys, variant, message):
    weak = with_head(small(minilm_dir), load_task(rt_dir))
    weak.save_pretrained(tmp_path / "weak")  # an untrained head: about chance
    small(minilm_dir).save_pretrained(tmp_path / "student")
    code = main(["finetune", str(tmp_path / "student"), "--task", str(rt_dir), "--out",
                 str(tmp_path / "o"), "--agora", *variant, "--teacher", str(tmp_path / "weak")])
    assert code == 1
    assert re.search(message, capsys.readouterr().err)
    assert not (tmp_path / "o" / "distilled").exists()  # nothing trained before the check
    if not variant:  # bort's Agora retrieves from the transfer pool: none given
        code = main(["finetune", str(tmp_path / "student"), "--task", str(rt_dir), "--out",
                     str(tmp_path / "o"), "--agora", "--teacher", str(teacher_dir / "model")])
        assert code == 1 and "transfer pool, which is empty" in capsys.readouterr().err
        assert not (tmp_path / "o" / "distilled").exists()
    assert main(["finetune", str(tmp_path / "student"), "--task", str(rt_dir), "--out",
                 str(tmp_path / "o"), "--agora"]) == 1
    assert "--agora needs --teacher" in capsys.readouterr().err


def test_task_type_is_exported():
    assert Task.__name__ == "Task" and evaluate.__name__ == "evaluate"


@pytest.mark.slow
def test_torchrun_two_ranks_match_one_process(minilm_dir, rt_dir, tmp_path):
    """`bort finetune` under torchrun (2 CPU processes, gloo) against 1 process, dropout off:
    each rank trains on its half of every batch, so the models agree to float noise."""
    from dataclasses import replace

    from conftest import run_bort_one_and_two_ranks

    task = tmp_path / "task"
    task.mkdir()
    for name, n in (("train", 32), ("dev", 16), ("test", 16)):
        lines = (rt_dir / f"{name}.csv").read_text().splitlines()
        (task / f"{name}.csv").write_text("\n".join(lines[:n + 1]) + "\n")
    model = small(minilm_dir)
    plain = BortModel(replace(model.arch, dropout=0.0, attention_dropout=0.0))
    plain.load_state_dict(model.state_dict())
    plain.source_dir = minilm_dir
    plain.save_pretrained(tmp_path / "student")
    common = ["finetune", str(tmp_path / "student"), "--task", str(task), "--epochs", "1",
              "--batch-size", "8", "--seq-len", "24", "--lr", "1e-4", "--patience", "5"]
    run_bort_one_and_two_ranks(common, tmp_path / "one", tmp_path / "two", 29519)
    m1 = json.loads((tmp_path / "one" / "metrics.json").read_text())
    m2 = json.loads((tmp_path / "two" / "metrics.json").read_text())
    assert m1["steps"] == m2["steps"] == 4
    losses = [[v for _, v in m["history"]["train_loss"]] for m in (m1, m2)]
    assert losses[0] == pytest.approx(losses[1], rel=1e-3)  # whole-batch losses, all ranks
    a = BortModel.from_pretrained(tmp_path / "one" / "model").state_dict()
    b = BortModel.from_pretrained(tmp_path / "two" / "model").state_dict()
    assert max((a[k] - b[k]).abs().max().item() for k in a) <= 4 * 1e-4 * 1.5
