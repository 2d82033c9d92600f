"""Fine-tuning (bort.finetune), the token generators (bort.augment) and Agora on text, via the
CLI, on real Rotten Tomatoes sentences with all-MiniLM-L6-v2."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from bort.augment import EmbeddingNeighbours, SpanSwap, Synonyms, TokenDropout, nn_radius
from bort.cli import main
from bort.data import Task, load_task
from bort.errors import BortError, ConfigError
from bort.extract import extract, magnitude_importance, target_arch
from bort.finetune import (
    Encoded,
    FinetuneConfig,
    encode_split,
    evaluate,
    finetune,
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


def test_interrupted_training_resumes_bit_for_bit(minilm_dir, rt_dir, tmp_path):
    task = load_task(rt_dir)
    tok = load_tokenizer(minilm_dir)
    data = [encode_split(tok, s.subset(range(96)), 32) for s in (task.train, task.dev)]
    config = FinetuneConfig(lr=1e-4, epochs=2, batch_size=16, seq_len=32, evals_per_epoch=2,
                            patience=10)

    def fresh():
        torch.manual_seed(0)
        return with_head(small(minilm_dir), task)

    whole = train(fresh(), *data, config)

    def stop(msg):
        if "step 6/" in msg:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train(fresh(), *data, config, out=tmp_path, log=stop)
    resumed = train(fresh(), *data, config, out=tmp_path, resume=True)
    assert resumed.steps == whole.steps == 12
    for (k, a), b in zip(whole.model.state_dict().items(), resumed.model.state_dict().values()):
        assert torch.equal(a, b), k
    assert resumed.history["dev"] == whole.history["dev"]


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
            "--agora", "--teacher", str(teacher_dir / "model"), "--lrs", "2e-4", "1e-4",
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


def test_cli_agora_rejects_a_weak_teacher(minilm_dir, rt_dir, tmp_path, capsys):
    weak = with_head(small(minilm_dir), load_task(rt_dir))
    weak.save_pretrained(tmp_path / "weak")  # an untrained head: about chance
    small(minilm_dir).save_pretrained(tmp_path / "student")
    code = main(["finetune", str(tmp_path / "student"), "--task", str(rt_dir), "--out",
                 str(tmp_path / "o"), "--agora", "--teacher", str(tmp_path / "weak")])
    assert code == 1
    assert "teacher's dev accuracy" in capsys.readouterr().err
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
