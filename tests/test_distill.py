"""Distillation: the loss falls, a killed run resumes to the same weights, 2 ranks = 1 rank."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch
from conftest import HELD_OUT, SAMPLE, run_bort_one_and_two_ranks

from bort import ConfigError
from bort.distill import Corpus, DistillConfig, distill
from bort.extract import extract, target_arch
from bort.model import BortModel

CONFIG = DistillConfig(steps=6, batch_size=4, seq_len=24, eval_every=3, checkpoint_every=3,
                       eval_sequences=8, lr=5e-4)


@pytest.fixture(scope="module")
def teacher(minilm_dir) -> BortModel:
    return BortModel.from_pretrained(minilm_dir)


@pytest.fixture()
def corpus(tmp_path) -> Corpus:
    path = tmp_path / "corpus.txt"
    path.write_text("\n".join(SAMPLE * 2 + HELD_OUT))
    return Corpus([path], held_out=0.25)


def student_of(teacher: BortModel) -> BortModel:
    return extract(teacher, target_arch(teacher.arch, 2, 12, 384, 768))


def weights(model: BortModel) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in model.state_dict().items()}


def test_distillation_lowers_the_held_out_loss(teacher, corpus, tmp_path) -> None:
    config = replace(CONFIG, steps=12, eval_every=12, checkpoint_every=12)
    result = distill(teacher, student_of(teacher), corpus, tmp_path / "run", config,
                     progress=False, log=None)
    (_, before), (_, after) = result["eval_loss"][0], result["eval_loss"][-1]
    print(f"held-out distillation loss {before:.4f} -> {after:.4f}")
    assert after < 0.8 * before
    saved = BortModel.from_pretrained(tmp_path / "run" / "student")
    assert saved.arch.describe() == "⟨D=2, A=12, H=384, I=768⟩"


def test_a_killed_run_resumes_to_the_same_weights(teacher, corpus, tmp_path, monkeypatch) -> None:
    straight = student_of(teacher)
    distill(teacher, straight, corpus, tmp_path / "a", CONFIG, progress=False, log=None)

    interrupted = student_of(teacher)
    real_batch = Corpus.batch

    def dies_at_step_4(self, step, size, seed):
        if step == 4:
            raise KeyboardInterrupt
        return real_batch(self, step, size, seed)

    monkeypatch.setattr(Corpus, "batch", dies_at_step_4)
    with pytest.raises(KeyboardInterrupt):
        distill(teacher, interrupted, corpus, tmp_path / "b", CONFIG, progress=False, log=None)
    monkeypatch.setattr(Corpus, "batch", real_batch)
    assert (tmp_path / "b" / "checkpoints" / "step-00000004").is_dir()

    torch.manual_seed(99)  # a new process: other RNG state, a freshly built student
    resumed = student_of(teacher)
    distill(teacher, resumed, corpus, tmp_path / "b", CONFIG, resume=True, progress=False,
            log=None)
    for (name, a), b in zip(weights(straight).items(), weights(resumed).values()):
        assert torch.equal(a, b), name


def test_two_ranks_match_one(minilm_dir, teacher, tmp_path) -> None:
    """torchrun with 2 CPU processes (gloo) against 1 process: the same losses (dropout off)."""
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("\n".join(SAMPLE * 2 + HELD_OUT))
    student = student_of(teacher)
    student = extract(teacher, replace(student.arch, dropout=0.0, attention_dropout=0.0))
    student.save_pretrained(tmp_path / "student")
    common = ["distill", "--teacher", str(minilm_dir), "--student", str(tmp_path / "student"),
              "--corpus", str(corpus), "--steps", "4", "--batch-size", "4", "--seq-len", "24",
              "--eval-every", "4", "--checkpoint-every", "4"]
    one, two = run_bort_one_and_two_ranks(common, tmp_path / "one", tmp_path / "two", 29517)
    # Adam turns float-rounding differences of near-zero gradients into whole lr-sized steps,
    # so the weights differ by up to ~steps × lr; the losses agree closely.
    a = BortModel.from_pretrained(tmp_path / "one" / "student").state_dict()
    b = BortModel.from_pretrained(tmp_path / "two" / "student").state_dict()
    worst = max((a[k] - b[k]).abs().max().item() for k in a)
    loss = lambda out: float(out.split("-> ")[1].split(" ")[0])  # noqa: E731
    print(f"1 vs 2 ranks: held-out loss {loss(one.stdout):.5f} vs {loss(two.stdout):.5f}, "
          f"max weight difference {worst:.1e}")
    assert loss(one.stdout) == pytest.approx(loss(two.stdout), rel=1e-3)
    assert worst <= 4 * 1e-4 * 1.5


def test_bad_input(teacher, tmp_path) -> None:
    with pytest.raises(FileNotFoundError, match="corpus file not found"):
        Corpus([tmp_path / "missing.txt"])
    (tmp_path / "empty.txt").write_text("\n\n")
    with pytest.raises(ConfigError, match="non-empty lines"):
        Corpus([tmp_path / "empty.txt"])
    with pytest.raises(ConfigError, match="no corpus files"):
        Corpus([])
    (tmp_path / "c.txt").write_text("\n".join(SAMPLE))
    other = BortModel(replace(student_of(teacher).arch, vocab_size=50265))
    with pytest.raises(ConfigError, match="vocab_size"):
        distill(teacher, other, Corpus([tmp_path / "c.txt"]), tmp_path / "run", CONFIG,
                progress=False, log=None)
    with pytest.raises(ConfigError, match="steps must be"):
        DistillConfig(steps=0)
    assert np.isfinite(CONFIG.lr)


def test_default_corpus_is_built_from_the_installed_packages(tmp_path) -> None:
    from bort.data import default_corpus

    files = default_corpus(tmp_path)
    assert [f.name for f in files] == ["imdb.txt", "wikipedia.txt", "shakespeare.txt"]
    words = {f.name: len(f.read_text().split()) for f in files}
    assert words["imdb.txt"] > 5_000_000 and words["wikipedia.txt"] > 500_000
    assert words["shakespeare.txt"] > 500_000
    assert "<br" not in files[0].read_text()[:100_000]
    corpus = Corpus(files)
    assert len(corpus.eval) > 100 and corpus.n_train > 80_000
    assert len(corpus.batch(3, 16, seed=0)) == 16 and corpus.head(2)[0]
    assert default_corpus(tmp_path) == files  # built once, then reused


def test_held_out_lines_are_drawn_from_every_file_and_never_trained_on(tmp_path) -> None:
    files = []
    for name in ("a", "b", "c"):
        files.append(tmp_path / f"{name}.txt")
        files[-1].write_text("".join(f"{name} line {i}\n" for i in range(100)))
    corpus = Corpus(files, held_out=0.1)
    train = corpus.head(corpus.n_train)
    assert len(corpus.eval) == 30 and corpus.n_train == 270
    assert {t.split()[0] for t in corpus.eval} == {"a", "b", "c"}  # not the last file's tail
    assert not set(train) & set(corpus.eval) and len(set(train) | set(corpus.eval)) == 300
    assert train == sorted(train, key=lambda t: (t[0], int(t.split()[-1])))  # file order kept
    assert Corpus(files, held_out=0.1).eval == corpus.eval  # the same draw every time


def test_surrogate_error_is_deterministic_and_ranks_sizes(teacher, corpus) -> None:
    from bort.distill import surrogate_error

    small = target_arch(teacher.arch, 1, 12, 384, 384)
    large = target_arch(teacher.arch, 4, 12, 384, 1536)
    e_small = surrogate_error(small, teacher, corpus, steps=4, batch_size=4, seq_len=24)
    assert e_small == surrogate_error(small, teacher, corpus, steps=4, batch_size=4, seq_len=24)
    e_large = surrogate_error(large, teacher, corpus, steps=4, batch_size=4, seq_len=24)
    print(f"surrogate error: 1-layer {e_small:.4f}, 4-layer {e_large:.4f}")
    assert e_large < e_small


def test_every_candidate_surrogate_has_the_same_terms(teacher, corpus) -> None:
    """Candidates that keep the teacher's head count, have fewer heads, or drop attention all
    pay the same loss terms (the attention KL exists only for matching layers, so it is off)."""
    from bort import Arch
    from bort.distill import loss_terms, surrogate_run

    full = target_arch(teacher.arch, 2, 12, 384, 768)
    fewer = Arch(hidden=384, layers=[(4, 32, 768)] * 6)
    none = Arch(hidden=384, layers=[(0, 0, 768), (2, 32, 0)] + [(0, 0, 0)] * 4)
    terms = [surrogate_run(replace(a, **{f: getattr(teacher.arch, f) for f in (
        "vocab_size", "max_positions", "type_vocab_size", "pad_token_id", "layer_norm_eps",
        "pooler")}), teacher, corpus, 2, batch_size=4, seq_len=24)["terms"]
        for a in (full, fewer, none)]
    assert terms == [["hidden"]] * 3
    with_attention = DistillConfig(attention_weight=1.0, mlm_weight=0.5)
    assert list(loss_terms(with_attention, mlm=True)) == ["hidden", "attention", "mlm", "logits"]
    assert list(loss_terms(with_attention, mlm=False)) == ["hidden", "attention"]
    with pytest.raises(ConfigError, match="every loss weight is 0"):
        loss_terms(DistillConfig(hidden_weight=0, attention_weight=0), mlm=False)


def test_masked_lm_terms_with_an_mlm_teacher(minilm_dir, corpus, tmp_path) -> None:
    """A teacher with an MLM head (random, MiniLM's vocabulary and tokenizer) teaches a student
    extracted with its head: the MLM terms join the loss, and the training loss falls (a random
    teacher on 24 lines cannot lower a held-out masked-LM loss)."""
    import shutil

    from conftest import hf_config
    from transformers import BertForMaskedLM

    config = hf_config(vocab_size=30522, hidden_size=64, num_attention_heads=4,
                       intermediate_size=128, num_hidden_layers=2, max_position_embeddings=64)
    BertForMaskedLM(config).save_pretrained(tmp_path / "teacher")
    shutil.copy(minilm_dir / "tokenizer.json", tmp_path / "teacher")
    teacher = BortModel.from_pretrained(tmp_path / "teacher")
    assert teacher.arch.mlm_head
    student = extract(teacher, target_arch(teacher.arch, 1, 4, 64, 64))
    assert student.arch.mlm_head
    with_mlm = distill(teacher, student, corpus, tmp_path / "a", replace(CONFIG, steps=20,
                       lr=3e-3), progress=False, log=None)
    without = distill(teacher, extract(teacher, student.arch), corpus, tmp_path / "b",
                      replace(CONFIG, steps=1, mlm_weight=0.0, logit_weight=0.0),
                      progress=False, log=None)
    train = [loss for _, loss in with_mlm["train_loss"]]
    print(f"MLM teacher: held-out loss at step 0 {with_mlm['eval_loss'][0][1]:.3f} with the MLM "
          f"terms, {without['eval_loss'][0][1]:.3f} without; training loss "
          f"{np.mean(train[:4]):.3f} -> {np.mean(train[-4:]):.3f}")
    assert with_mlm["eval_loss"][0][1] > without["eval_loss"][0][1] + 0.5  # 0.1 · ln(30522) ≈ 1
    assert np.mean(train[-4:]) < np.mean(train[:4])


def test_bf16_autocast_runs(teacher, corpus, tmp_path) -> None:
    result = distill(teacher, student_of(teacher), corpus, tmp_path / "run",
                     replace(CONFIG, steps=2, bf16=True), progress=False, log=None)
    assert all(np.isfinite(loss) for _, loss in result["train_loss"])
