"""Embedding students: distil a sentence encoder's pooled, normalised vector over text.

For sources whose job is sentence embeddings (the default all-MiniLM-L6-v2: the mean of the
last layer's token vectors, scaled to unit length). The student learns to point where the
teacher points, loss 1 − cos(student, teacher) averaged over passages, and is scored on
passages it never trained on by

- ``cosine``: the mean cosine between the student's and the teacher's vector of a passage;
- ``recall@10``: of each passage's 10 nearest passages by the teacher's vectors (itself left
  out), the share that are also among its 10 nearest by the student's — what an index built on
  the student keeps of the teacher's neighbours.

The teacher's vectors are computed once and cached, keyed by the teacher's weights and the
token ids (as `bort.finetune.teacher_outputs`). The training loop is fine-tuning's: AdamW,
warm-up, early stopping and selection on dev's cosine, checkpoints and resume, torchrun.

Example:
    >>> train, dev, test = embedding_texts(Corpus(files, held_out=0.025), limit=20000,
    ...                                    seed=0)                         # doctest: +SKIP
    >>> result = distill_embeddings(student, source, train, dev, test,
    ...                             "runs/emb")                            # doctest: +SKIP
    >>> result.test["recall@10"]                                            # doctest: +SKIP
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from .config import FinetuneConfig
from .data import EMBEDDING_TASK, Split
from .distill import Corpus
from .distributed import is_main
from .distributed import world as world_of
from .errors import BortError, ConfigError
from .finetune import (
    PREDICT_BATCH,
    UNLABELLED,
    Encoded,
    FinetuneResult,
    _Run,
    cached_teacher_arrays,
    encode_split,
    frozen_word_embeddings,
    map_batches,
)
from .io import write_json
from .model import BortModel
from .tokenize import load_tokenizer

__all__ = ["EMBEDDING_TASK", "NEIGHBOURS", "distill_embeddings", "embed", "embedding_scores",
           "embedding_texts", "neighbour_recall"]

#: Neighbours per passage in the recall score.
NEIGHBOURS = 10
#: The metric dev selects on.
SELECT_ON = "cosine"
#: Version of the cached vectors' layout (part of their key).
_FORMAT = 1


def mean_pooled(hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Unit-length mean of the real tokens' vectors: (B, S, H), (B, S) -> (B, H)."""
    mask = mask.to(hidden.dtype).unsqueeze(-1)
    return F.normalize((hidden * mask).sum(1) / mask.sum(1).clamp(min=1.0), dim=-1)


def embed(model: BortModel, data: Encoded, batch_size: int = PREDICT_BATCH) -> np.ndarray:
    """The unit-length mean-pooled vectors (N, hidden) of ``data``, in its order."""
    def read(batch, out) -> dict[str, np.ndarray]:
        hidden = out.last_hidden_state.float()
        return {"vectors": mean_pooled(hidden, batch["attention_mask"]).numpy()}

    return map_batches(model, data, read, batch_size)["vectors"]


def _nearest(vectors: np.ndarray, k: int) -> np.ndarray:
    """Each row's ``k`` nearest other rows by cosine (unit vectors): (N, k) indices."""
    sims = vectors @ vectors.T
    np.fill_diagonal(sims, -np.inf)
    return np.argpartition(-sims, k - 1, axis=1)[:, :k]


def neighbour_recall(student: np.ndarray, teacher: np.ndarray, k: int = NEIGHBOURS
                     ) -> np.ndarray:
    """Per passage, the share of its ``k`` nearest passages by ``teacher`` (unit vectors,
    (N, H)) that are also among its ``k`` nearest by ``student`` ((N, H'))."""
    if len(student) != len(teacher):
        raise ValueError(f"{len(student)} student and {len(teacher)} teacher vectors")
    if len(teacher) <= k:
        raise ValueError(f"recall@{k} needs more than {k} passages, got {len(teacher)}")
    a, b = _nearest(student, k), _nearest(teacher, k)
    return np.asarray([len(np.intersect1d(x, y)) / k for x, y in zip(a, b)])


def embedding_scores(student: np.ndarray, teacher: np.ndarray, k: int = NEIGHBOURS
                     ) -> tuple[dict[str, float], dict[str, np.ndarray]]:
    """({"cosine", "recall@k"} means, the same per passage) of ``student`` against
    ``teacher`` vectors of the same passages (both unit length, the same width)."""
    if student.shape != teacher.shape:
        raise ValueError(f"student vectors {student.shape} and teacher vectors "
                         f"{teacher.shape} differ in shape")
    per = {"cosine": np.sum(student * teacher, axis=1),
           f"recall@{k}": neighbour_recall(student, teacher, k)}
    return {name: float(v.mean()) for name, v in per.items()}, per


def teacher_vectors(teacher: BortModel, data: Encoded, *, cache: bool = True
                    ) -> tuple[np.ndarray, str, bool]:
    """The teacher's `embed` vectors of ``data``, their cache key and whether they came from
    the cache (`bort.finetune.cached_teacher_arrays`: a changed weight or text is computed
    afresh)."""
    arrays, key, cached = cached_teacher_arrays(
        f"embedding:{_FORMAT}", teacher, data, {"vectors"},
        lambda: {"vectors": embed(teacher, data)}, cache=cache)
    return arrays["vectors"], key, cached


def embedding_texts(corpus: Corpus, *, limit: int, seed: int
                    ) -> tuple[list[str], list[str], list[str]]:
    """(train, dev, test) passages of a `bort.distill.Corpus`: a seeded draw of at most
    ``limit`` of its training lines (in order), and its held-out lines (which distillation
    never trains on) halved at random into dev and test, repeats of a training line removed."""
    train_lines = corpus.head(corpus.n_train)
    seen = set(train_lines)
    held = list(dict.fromkeys(t for t in corpus.eval if t not in seen))
    if len(held) < 2 * (NEIGHBOURS + 1):
        raise ConfigError(f"the corpus holds out {len(held)} distinct passages: recall@"
                          f"{NEIGHBOURS} on dev and test needs at least {2 * (NEIGHBOURS + 1)} "
                          "(a larger held_out share)")
    rng = np.random.default_rng(seed)
    train = np.sort(rng.permutation(len(train_lines))[:limit])
    order = rng.permutation(len(held))
    half = len(held) // 2
    return ([train_lines[i] for i in train], [held[i] for i in np.sort(order[:half])],
            [held[i] for i in np.sort(order[half:])])


class _EmbeddingRun(_Run):
    """Fine-tuning's loop with the embedding loss and scores."""

    def __init__(self, model: BortModel, train_data: Encoded, dev: Encoded,
                 targets: np.ndarray, dev_targets: np.ndarray, config: FinetuneConfig,
                 out: Path, ranks: tuple[int, int], log: Callable[[str], None] | None):
        self.targets, self.dev_targets = torch.from_numpy(targets), dev_targets
        super().__init__(model, train_data, dev, config, SELECT_ON, out, ranks, log)

    def loss(self, out: Any, projected: torch.Tensor | None, batch: dict[str, torch.Tensor],
             labels: torch.Tensor, index: np.ndarray) -> torch.Tensor:
        vectors = mean_pooled(out.last_hidden_state.float(), batch["attention_mask"])
        return 1.0 - (vectors * self.targets[index]).sum(-1).mean()

    def score(self) -> dict[str, float]:
        return embedding_scores(embed(self.model, self.dev), self.dev_targets)[0]


def _check(student: BortModel, teacher: BortModel, config: FinetuneConfig,
           texts: Sequence[str], dev: Sequence[str], test: Sequence[str]) -> None:
    if student.source_dir is None:
        raise BortError("the student has no tokenizer: load it with BortModel.from_pretrained")
    if student.arch.hidden != teacher.arch.hidden:
        raise ConfigError(f"the student's vectors ({student.arch.hidden} wide) cannot be "
                          f"compared with the teacher's ({teacher.arch.hidden}): embedding "
                          "distillation needs a space that keeps the source's hidden size")
    if student.arch.vocab_size != teacher.arch.vocab_size:
        raise ConfigError("teacher and student must read the same tokens (vocabularies of "
                          f"{teacher.arch.vocab_size} and {student.arch.vocab_size})")
    if not texts:
        raise ConfigError("no training passages for embedding distillation")
    for name, split in (("dev", dev), ("test", test)):
        if len(split) <= NEIGHBOURS:
            raise ConfigError(f"{name} has {len(split)} passages: recall@{NEIGHBOURS} needs "
                              f"more than {NEIGHBOURS}")
    if teacher.arch.max_tokens < config.seq_len:
        raise ConfigError(f"the teacher reads at most {teacher.arch.max_tokens} tokens, "
                          f"seq_len is {config.seq_len}")


def distill_embeddings(student: BortModel, teacher: BortModel, texts: Sequence[str],
                       dev: Sequence[str], test: Sequence[str], out: str | Path,
                       config: FinetuneConfig | None = None, *, resume: bool = False,
                       log: Callable[[str], None] | None = print,
                       progress: bool = True) -> FinetuneResult:
    """Train ``student`` (in place) to give ``teacher``'s mean-pooled unit vectors on the
    ``texts`` passages; select on ``dev``'s mean cosine, score ``test`` once. Settings from
    ``config``: batch size, seq_len, lr, epochs, warm-up, patience, evaluations per epoch,
    seed, freeze_word_embeddings (the task-distillation terms alpha, T and pooled_weight do not
    apply).

    Writes under ``out``: ``model/`` (the selected student, with tokenizer and no head: pool
    it as the teacher is pooled, e.g. ``Encoder.encode(texts, pooling="mean",
    normalize=True)``), ``metrics.json`` (dev and test cosine and recall@10) and checkpoints.
    """
    config = config or FinetuneConfig()
    _check(student, teacher, config, texts, dev, test)
    out = Path(out)
    tokenizer = load_tokenizer(student.source_dir, config.seq_len)
    data = {name: encode_split(tokenizer, Split(list(part), np.full(len(part), UNLABELLED,
                                                                    np.int64)), config.seq_len)
            for name, part in (("train", texts), ("dev", dev), ("test", test))}
    vectors = {name: teacher_vectors(teacher, d) for name, d in data.items()}
    if log:
        log(f"embedding distillation: {len(texts)} passages, teacher vectors "
            f"{'cached' if vectors['train'][2] else 'computed'}")
    rank, world = world_of()
    if config.batch_size % world:
        raise ConfigError(f"batch_size {config.batch_size} is not divisible by {world} ranks")
    with frozen_word_embeddings(student, config.freeze_word_embeddings):
        run = _EmbeddingRun(student, data["train"], data["dev"], vectors["train"][0],
                            vectors["dev"][0], config, out, (rank, world),
                            log if rank == 0 else None)
        if resume:
            run.resume()
        run.run(progress and rank == 0)
    student.load_state_dict(run.best_state)
    student.eval()
    test_scores, _ = embedding_scores(embed(student, data["test"]), vectors["test"][0])
    result = FinetuneResult(student, dict(run.best["metrics"]), test_scores, run.done,
                            run.history)
    if is_main():
        student.save_pretrained(out / "model", card={
            "data": f"embedding-distilled from {teacher.source_dir} (mean pooling, unit length)",
            "metrics": {"dev": result.dev, "test": test_scores}})
        write_json(out / "metrics.json", {
            "task": EMBEDDING_TASK, "metric": SELECT_ON, "dev": result.dev, "test": test_scores,
            "teacher": str(teacher.source_dir), "pooling": "mean, unit length",
            "passages": {k: len(v) for k, v in data.items()},
            "teacher_vectors": vectors["train"][1], "steps": run.done,
            "config": config.as_dict(), "history": run.history})
    return result
