"""Fine-tuning a `BortModel` on a labelled task: classification or regression head, AdamW with
warm-up and linear decay, early stopping on the dev split, metrics, checkpoints.

Training reads token sequences (`Encoded`), not text, so that Agora's generated points (token
sequences both models read) train the same way as the task's own examples. The model is
evaluated on dev after every epoch (``evals_per_epoch`` times per epoch when set); the best dev
score's weights are kept and returned, and training stops after ``patience`` evaluations without
improvement. The test split is scored once, at the end, on the model dev selected.

With a teacher (``finetune(..., teacher=model)``, ``bort finetune --teacher DIR``) the run is task
distillation: the student learns from `kd_loss`, the gold labels' cross-entropy and the
teacher's soft labels, over the train split plus unlabelled transfer texts that only the
teacher labels (optionally also matching the teacher's pooled vectors). The teacher's outputs
are computed once and cached (`teacher_outputs`), keyed by hashes of its weights and the data.

Runs the same under ``torchrun --nproc_per_node K`` (DistributedDataParallel, each rank reading
its share of every batch, rank 0 writing). A checkpoint goes through `bort.checkpoint` after
every evaluation and on Ctrl-C; ``resume=True`` continues from it.

Example:
    >>> task = bort.data.load_task("rotten_tomatoes")                     # doctest: +SKIP
    >>> model = with_head(BortModel.from_pretrained(source), task)         # doctest: +SKIP
    >>> result = finetune(model, task, "runs/rt")                          # doctest: +SKIP
    >>> result.test["accuracy"]                                            # doctest: +SKIP
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import json
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .checkpoint import resume as resume_checkpoint
from .checkpoint import save_checkpoint
from .config import FinetuneConfig
from .data import Split, Task
from .distributed import is_main
from .distributed import world as world_of
from .errors import BortError, CheckpointError, ConfigError
from .io import save_safetensors, write_json
from .metrics import classification_metrics, regression_metrics
from .model import BortModel
from .tokenize import load_tokenizer
from .training import (
    Progress,
    adamw,
    checkpoint_on_interrupt,
    parallel,
    seed_everything,
    warmup_linear,
)
from .training import step as optimizer_step

__all__ = ["Encoded", "FinetuneConfig", "FinetuneResult", "TeacherOutputs", "encode_split",
           "evaluate", "finetune", "kd_loss", "predict", "soft_targets", "teacher_outputs",
           "train", "with_head"]

#: Batches within which an epoch's sequences are sorted by length.
SORT_WINDOW = 50
#: Sequences per forward pass when predicting.
PREDICT_BATCH = 64
#: Folder of `bort.costs.cache_dir` holding cached teacher outputs.
TEACHER_CACHE = "teacher-outputs"
#: Version of the cached teacher outputs' layout (part of their key).
_TEACHER_FORMAT = 1
#: Hex digits of the teacher-output cache key.
_KEY_CHARS = 32
#: The label of a row without a gold label (classification; regression uses NaN).
UNLABELLED = -1


@dataclass
class Encoded:
    """Token sequences with their labels: ``ids[i]`` and ``types[i]`` are int32 arrays (special
    tokens included, no padding)."""

    ids: list[np.ndarray]
    types: list[np.ndarray]
    labels: np.ndarray

    def __len__(self) -> int:
        return len(self.ids)

    def take(self, index: Sequence[int]) -> Encoded:
        index = np.asarray(index, dtype=np.int64)
        return Encoded([self.ids[i] for i in index], [self.types[i] for i in index],
                       self.labels[index])

    def concat(self, other: Encoded) -> Encoded:
        if len(other) == 0:
            return self
        return Encoded(self.ids + other.ids, self.types + other.types,
                       np.concatenate([self.labels, other.labels.astype(self.labels.dtype)]))


def encode_split(tokenizer, split: Split, seq_len: int) -> Encoded:
    """Tokenise a split (truncated to ``seq_len`` tokens)."""
    tokenizer.no_padding()
    tokenizer.enable_truncation(seq_len)
    inputs = list(zip(split.texts, split.pairs)) if split.pairs is not None else split.texts
    out = tokenizer.encode_batch(inputs) if len(inputs) else []
    return Encoded([np.asarray(e.ids, np.int32) for e in out],
                   [np.asarray(e.type_ids, np.int32) for e in out], split.labels.copy())


def _collate(data: Encoded, index: Sequence[int], pad_id: int) -> dict[str, torch.Tensor]:
    width = max(len(data.ids[i]) for i in index)
    ids = np.full((len(index), width), pad_id, np.int64)
    types = np.zeros((len(index), width), np.int64)
    mask = np.zeros((len(index), width), np.int64)
    for row, i in enumerate(index):
        n = len(data.ids[i])
        ids[row, :n], types[row, :n], mask[row, :n] = data.ids[i], data.types[i], 1
    return {"input_ids": torch.from_numpy(ids), "attention_mask": torch.from_numpy(mask),
            "token_type_ids": torch.from_numpy(types)}


def _epoch_batches(data: Encoded, batch_size: int, seed: int, epoch: int) -> list[np.ndarray]:
    """The batches of one epoch: a seeded shuffle, sorted by length within windows of
    `SORT_WINDOW` batches (less padding, so faster steps), then the batches shuffled again."""
    rng = np.random.default_rng([seed, epoch])
    order = rng.permutation(len(data))
    window = batch_size * SORT_WINDOW
    lengths = np.asarray([len(x) for x in data.ids])
    batches = []
    for w in range(0, len(order), window):
        chunk = order[w:w + window]
        chunk = chunk[np.argsort(lengths[chunk], kind="stable")]
        batches += [chunk[i:i + batch_size] for i in range(0, len(chunk), batch_size)]
    return [batches[i] for i in rng.permutation(len(batches))]


def _pad_id(model: BortModel) -> int:
    return model.arch.pad_token_id


def with_head(model: BortModel, task: Task) -> BortModel:
    """``model`` with a fresh head for ``task`` (classification, or one output for regression);
    the encoder (and pooler, where it has one) keeps its weights. A model whose head already
    fits the task is returned as it is."""
    labels = dict(enumerate(task.labels)) if task.labels else {0: "score"}
    problem = "regression" if task.regression else "single_label_classification"
    if model.arch.num_labels == task.num_labels and model.id2label == labels:
        return model
    arch = replace(model.arch, num_labels=task.num_labels, pooler=True)
    out = BortModel(arch, id2label=labels, problem_type=problem, card=model.card)
    state = {k: v for k, v in model.state_dict().items() if not k.startswith("classifier.")}
    own = out.state_dict()
    own.update({k: v for k, v in state.items() if k in own})
    out.load_state_dict(own)
    out.source_dir = model.source_dir
    return out


@torch.no_grad()
def map_batches(model: BortModel, data: Encoded,
                read: Callable[[dict[str, torch.Tensor], Any], dict[str, np.ndarray]],
                batch_size: int = PREDICT_BATCH) -> dict[str, np.ndarray]:
    """``read(batch, output)`` of every batch of ``data`` with dropout off, each array's rows
    back in ``data``'s order; batches group similar lengths."""
    if len(data) == 0:
        raise ValueError("empty batch: nothing to predict")
    was_training = model.training
    model.eval()
    order = np.argsort([len(x) for x in data.ids], kind="stable")
    parts = []
    try:
        for start in range(0, len(order), batch_size):
            batch = _collate(data, order[start:start + batch_size], _pad_id(model))
            parts.append(read(batch, model(**batch)))
    finally:
        model.train(was_training)
    out = {}
    for name in parts[0]:
        out[name] = np.empty_like(parts[0][name], shape=(len(data), *parts[0][name].shape[1:]))
        out[name][order] = np.concatenate([p[name] for p in parts])
    return out


def _outputs(model: BortModel, data: Encoded, batch_size: int = PREDICT_BATCH, *,
             pooled: bool = False) -> tuple[np.ndarray, np.ndarray | None]:
    """Logits (N, labels) of ``data`` in its order, and (``pooled``) the pooled vectors
    (N, hidden)."""
    def read(batch, out) -> dict[str, np.ndarray]:
        got = {"logits": out.logits.float().numpy()}
        if pooled:
            got["pooled"] = out.pooler_output.float().numpy()
        return got

    arrays = map_batches(model, data, read, batch_size)
    return arrays["logits"], arrays.get("pooled")


def predict(model: BortModel, data: Encoded, batch_size: int = PREDICT_BATCH) -> np.ndarray:
    """Logits (N, labels) of ``data``, in its order; batches group similar lengths."""
    return _outputs(model, data, batch_size)[0]


def _scores(logits: np.ndarray, labels: np.ndarray, regression: bool
            ) -> tuple[dict[str, float], np.ndarray]:
    if regression:
        pred = logits[:, 0]
        return regression_metrics(pred, labels), pred
    pred = logits.argmax(1)
    return classification_metrics(pred, labels, logits.shape[1]), pred


def evaluate(model: BortModel, data: Encoded) -> tuple[dict[str, float], np.ndarray]:
    """(metrics, predictions) of ``model`` on ``data``: class ids, or scores for regression."""
    return _scores(predict(model, data), data.labels, model.problem_type == "regression")


# ---------------------------------------------------------------------- task distillation
def soft_targets(teacher_logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """The teacher's soft labels: softmax(logits / T), each row summing to 1."""
    return F.softmax(teacher_logits.float() / temperature, dim=-1)


def kd_loss(logits: torch.Tensor, teacher_logits: torch.Tensor, labels: torch.Tensor,
            alpha: float, temperature: float, regression: bool = False) -> torch.Tensor:
    """The task-distillation loss of a batch (Hinton et al. 2015).

    Classification: ``alpha``·CE(gold) + (1 − alpha)·T²·KL(softmax(t/T) ‖ softmax(s/T)), the KL
    averaged over every row, the cross-entropy over the rows that have a gold label (label
    −1 marks an unlabelled row). T² keeps the soft term's gradients at the scale of the hard
    term's whatever T. Regression (``logits`` (B, 1)): ``alpha``·MSE to the gold values (rows
    with a finite one; NaN marks unlabelled) + (1 − alpha)·MSE to the teacher's values.

    A batch without any gold label has a gold term of 0, and alpha's share is not handed to
    the teacher term: the loss is then (1 − alpha) times the soft term alone, so that the
    soft term's weight does not depend on how many gold rows a batch happens to hold.
    """
    if regression:
        pred, gold = logits[:, 0].float(), torch.isfinite(labels)
        hard_rows = (pred - labels.float().nan_to_num(0.0)) ** 2
        soft = F.mse_loss(pred, teacher_logits.reshape(len(pred), -1)[:, 0].float())
    else:
        gold = labels >= 0
        hard_rows = F.cross_entropy(logits.float(), labels.clamp(min=0).long(), reduction="none")
        log_student = F.log_softmax(logits.float() / temperature, dim=-1)
        soft = temperature ** 2 * F.kl_div(log_student, soft_targets(teacher_logits,
                                                                     temperature),
                                           reduction="batchmean")
    hard = (hard_rows * gold).sum() / gold.sum().clamp(min=1)
    return alpha * hard + (1 - alpha) * soft


@dataclass
class TeacherOutputs:
    """A teacher's outputs on the rows of an `Encoded`: ``logits`` (N, labels) and ``pooled``
    (N, teacher hidden), float32. ``key`` is their cache key, ``cached`` whether they came from
    the cache."""

    logits: np.ndarray
    pooled: np.ndarray
    key: str = ""
    cached: bool = False

    def __len__(self) -> int:
        return len(self.logits)


def _teacher_digest(teacher: BortModel) -> str:
    """SHA-256 of the teacher's architecture, labels and every weight's bytes."""
    h = hashlib.sha256(json.dumps({
        "arch": dataclasses.asdict(teacher.arch), "labels": teacher.id2label,
        "problem": teacher.problem_type}, sort_keys=True, default=str).encode())
    for name, tensor in teacher.state_dict().items():
        t = tensor.detach().cpu().contiguous()
        h.update(f"{name}:{t.dtype}:{tuple(t.shape)};".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy())
    return h.hexdigest()


def _data_digest(data: Encoded) -> str:
    """SHA-256 of the token ids and types of ``data`` (its labels do not change the outputs)."""
    h = hashlib.sha256(np.asarray([len(x) for x in data.ids], np.int64))
    for part in (data.ids, data.types):
        if part:
            h.update(np.concatenate(part).astype(np.int32))
    return h.hexdigest()


def _read_cached(path: Path, names: set[str], rows: int) -> dict[str, np.ndarray] | None:
    """The cached arrays at ``path`` when they are whole: ``names``, each with ``rows`` rows."""
    from safetensors import SafetensorError
    from safetensors.numpy import load_file

    if not path.is_file():
        return None
    try:
        arrays = load_file(str(path))
    except (OSError, SafetensorError):
        return None  # damaged: computed again and rewritten
    if set(arrays) != names or any(len(a) != rows for a in arrays.values()):
        return None
    return arrays


def cached_teacher_arrays(kind: str, teacher: BortModel, data: Encoded, names: set[str],
                          compute: Callable[[], dict[str, np.ndarray]], *, cache: bool = True
                          ) -> tuple[dict[str, np.ndarray], str, bool]:
    """``compute()``'s arrays ``names`` (one row per example of ``data``), their key and
    whether they came from the cache: with ``cache`` they are kept as safetensors under
    ``bort.costs.cache_dir() / "teacher-outputs"``, keyed by ``kind`` (what and in which
    layout), a hash of the teacher (weights, architecture, labels) and of the data (token ids
    and types), so a changed weight or text is computed afresh."""
    from .costs import cache_dir

    key = hashlib.sha256(f"{kind}:{_teacher_digest(teacher)}:{_data_digest(data)}".encode()
                         ).hexdigest()[:_KEY_CHARS]
    path = cache_dir() / TEACHER_CACHE / f"{key}.safetensors"
    arrays = _read_cached(path, names, len(data)) if cache else None
    if arrays is not None:
        return arrays, key, True
    arrays = compute()
    if cache and is_main():
        save_safetensors(arrays, path, {"rows": str(len(data)),
                                        "teacher": str(teacher.source_dir)})
    return arrays, key, False


def teacher_outputs(teacher: BortModel, data: Encoded, *, cache: bool = True) -> TeacherOutputs:
    """The teacher's logits and pooled vectors on ``data`` (dropout off), computed once and
    cached (`cached_teacher_arrays`)."""
    if teacher.classifier is None or teacher.pooler is None:
        raise ConfigError("the teacher has no classification head: fine-tune it on the task")

    def compute() -> dict[str, np.ndarray]:
        logits, pooled = _outputs(teacher, data, pooled=True)
        return {"logits": logits, "pooled": pooled}

    arrays, key, cached = cached_teacher_arrays(str(_TEACHER_FORMAT), teacher, data,
                                                {"logits", "pooled"}, compute, cache=cache)
    return TeacherOutputs(arrays["logits"], arrays["pooled"], key, cached=cached)


class _Student(nn.Module):
    """The student and, for the pooled-vector loss, its projection to the teacher's width: one
    module, so that DistributedDataParallel, the optimizer and gradient clipping see both."""

    def __init__(self, model: BortModel, projection: nn.Module | None):
        super().__init__()
        self.model, self.projection = model, projection

    def forward(self, batch: dict[str, torch.Tensor]) -> tuple[Any, torch.Tensor | None]:
        out = self.model(**batch)
        if self.projection is None:
            return out, None
        return out, self.projection(out.pooler_output)


def _projection(model: BortModel, teacher: TeacherOutputs | None,
                config: FinetuneConfig) -> nn.Module | None:
    """The map of student pooled vectors to the teacher's width (None: no pooled loss)."""
    if teacher is None or config.pooled_weight == 0:
        return None
    width = teacher.pooled.shape[1]
    return nn.Identity() if width == model.arch.hidden else nn.Linear(model.arch.hidden, width)


@dataclass
class FinetuneResult:
    """What `train` / `finetune` hand back: the dev-selected model and its scores."""

    model: BortModel
    dev: dict[str, float]
    test: dict[str, float] | None = None
    steps: int = 0
    history: dict[str, list] = field(default_factory=dict)
    #: the selected model's prediction per test item (class ids, or values for regression)
    test_predictions: np.ndarray | None = None


class _Run:
    """One fine-tuning run: the model, optimizer, schedule, history and the best dev score with
    its weights, with a method per phase of the loop."""

    def __init__(self, model: BortModel, train_data: Encoded, dev: Encoded,
                 config: FinetuneConfig, metric: str, out: str | Path | None,
                 ranks: tuple[int, int], log: Callable[[str], None] | None,
                 teacher: TeacherOutputs | None = None):
        self.model, self.train_data, self.dev, self.config = model, train_data, dev, config
        self.metric, self.log, self.teacher = metric, log, teacher
        self.rank, self.world = ranks
        self.regression = model.problem_type == "regression"
        self.checkpoints = Path(out) / "checkpoints" if out is not None else None
        seed_everything(config.seed)
        self.projection = _projection(model, teacher, config)  # trained here, never saved
        self.student = _Student(model, self.projection)
        self.net = parallel(self.student, self.world)
        self.opt = adamw(self.student, config.lr, config.weight_decay)
        self.per_epoch = -(-len(train_data) // config.batch_size)
        self.total = max(1, round(config.epochs * self.per_epoch))
        self.sched = warmup_linear(self.opt, self.total, config.warmup)
        self.eval_every = max(1, self.per_epoch // config.evals_per_epoch)
        self.history: dict[str, list] = {"train_loss": [], "dev": []}
        self.best = {"score": -np.inf, "step": 0, "metrics": {}, "stale": 0}
        self.best_state = copy.deepcopy(model.state_dict())
        self.start = self.done = 0  # done: optimizer steps taken
        self._batches: tuple[int, list[np.ndarray]] = (-1, [])

    def resume(self) -> None:
        if self.checkpoints is None:
            return
        state = resume_checkpoint(self.checkpoints, model=self.model, optimizer=self.opt,
                                  scheduler=self.sched)
        if state is not None:
            self.start = self.done = state.step
            self.history, self.best = state.extra["history"], state.extra["best"]
            self.best_state = {k: v.clone() for k, v in state.extra["best_state"].items()}
            if self.projection is not None:
                try:
                    self.projection.load_state_dict(state.extra.get("projection", {}))
                except RuntimeError as e:
                    raise CheckpointError(f"{state.path}: written without this run's pooled-"
                                          f"vector projection ({e})") from e

    def save(self, step: int) -> int:
        if self.checkpoints is not None:
            save_checkpoint(self.checkpoints, step, model=self.model, optimizer=self.opt,
                            scheduler=self.sched, keep=1,
                            extra={"history": self.history, "best": self.best,
                                   "best_state": self.best_state,
                                   "config": self.config.as_dict(),
                                   "projection": (self.projection.state_dict()
                                                  if self.projection is not None else {})})
        return step

    def batch(self, step: int) -> tuple[dict[str, torch.Tensor], torch.Tensor, np.ndarray]:
        """This rank's share of the step's batch, its labels and its rows."""
        epoch, k = divmod(step, self.per_epoch)
        if self._batches[0] != epoch:
            self._batches = (epoch, _epoch_batches(self.train_data, self.config.batch_size,
                                                   self.config.seed, epoch))
        index = self._batches[1][k]
        share = -(-len(index) // self.world)
        index = index[self.rank * share:(self.rank + 1) * share]
        return (_collate(self.train_data, index, _pad_id(self.model)),
                torch.from_numpy(self.train_data.labels[index]), index)

    def loss(self, out: Any, projected: torch.Tensor | None, batch: dict[str, torch.Tensor],
             labels: torch.Tensor, index: np.ndarray) -> torch.Tensor:
        """The batch's loss from the model's output ``out``: on the gold labels alone, or with
        a teacher `kd_loss` plus the pooled vectors' weighted MSE."""
        config, logits = self.config, out.logits.float()
        if self.teacher is None:
            return (F.mse_loss(logits[:, 0], labels.float()) if self.regression
                    else F.cross_entropy(logits, labels.long()))
        loss = kd_loss(logits, torch.from_numpy(self.teacher.logits[index]), labels,
                       config.alpha, config.temperature, self.regression)
        if projected is not None:
            target = torch.from_numpy(self.teacher.pooled[index])
            loss = loss + config.pooled_weight * F.mse_loss(projected.float(), target)
        return loss

    def train_step(self, step: int) -> float:
        """One optimizer step; the loss of the whole batch."""
        batch, labels, index = self.batch(step)
        with torch.autocast("cpu", torch.bfloat16, enabled=self.config.bf16):
            out, projected = self.net(batch)
        loss = self.loss(out, projected, batch, labels, index)
        value = optimizer_step(loss, self.student, self.opt, self.sched, self.config.clip,
                               self.world)
        self.done = step + 1
        self.history["train_loss"].append((step + 1, value))
        return value

    def evaluate(self, step: int) -> bool:
        """Score dev after ``step`` steps, keep the best weights and checkpoint; True when
        ``patience`` evaluations in a row brought no better score (time to stop)."""
        metrics = self.score()
        score, best = metrics[self.metric], self.best
        self.history["dev"].append((step, metrics))
        if score > best["score"]:
            best = self.best = {"score": score, "step": step, "metrics": metrics, "stale": 0}
            self.best_state = copy.deepcopy(self.model.state_dict())
        else:
            best["stale"] += 1
        if self.log:
            self.log(f"step {step}/{self.total}: dev {self.metric} {score:.4f} "
                     f"(best {best['score']:.4f} at {best['step']})")
        self.save(step)
        stop = best["stale"] >= self.config.patience
        if stop and self.log:
            self.log(f"early stop at step {step}: no better dev score in "
                     f"{self.config.patience} evaluations")
        return stop

    def score(self) -> dict[str, float]:
        """The model's metrics on dev."""
        return evaluate(self.model, self.dev)[0]

    def run(self, progress: bool) -> None:
        """Train from the step reached until the last step or an early stop."""
        self.model.train()
        with (Progress(progress, self.total, self.start, "fine-tune") as bar,
              checkpoint_on_interrupt(lambda: self.save(self.done), self.log)):
            for step in range(self.start + 1, self.total + 1):  # step: steps done after it
                bar.step(self.train_step(step - 1))
                if (step % self.eval_every == 0 or step == self.total) and self.evaluate(step):
                    break


@contextmanager
def frozen_word_embeddings(model: BortModel, freeze: bool) -> Iterator[None]:
    """With ``freeze``, the word embeddings take no gradient (nor optimizer state) inside."""
    weight = model.embeddings.word_embeddings.weight
    trainable = weight.requires_grad
    weight.requires_grad_(trainable and not freeze)
    try:
        yield
    finally:
        weight.requires_grad_(trainable)


def _check_rows(model: BortModel, train_data: Encoded, dev: Encoded,
                teacher: TeacherOutputs | None) -> None:
    """The inputs of `train` fit together (ConfigError or BortError otherwise)."""
    if model.classifier is None:
        raise ConfigError("the model has no classification head: use with_head(model, task)")
    if len(train_data) == 0 or len(dev) == 0:
        raise BortError(f"empty split: train has {len(train_data)} examples, dev {len(dev)}")
    labels = np.asarray(train_data.labels)
    unlabelled = np.isnan(labels).any() if labels.dtype.kind == "f" else (labels < 0).any()
    if teacher is None and unlabelled:
        raise ConfigError("unlabelled training rows (label -1, or NaN for regression) need "
                          "a teacher's outputs to learn from")
    if teacher is not None and (len(teacher) != len(train_data)
                                or teacher.logits.shape[1] != model.arch.num_labels):
        raise ConfigError(f"teacher outputs of shape {teacher.logits.shape} do not fit "
                          f"{len(train_data)} training rows of {model.arch.num_labels} labels")


def train(model: BortModel, train_data: Encoded, dev: Encoded, config: FinetuneConfig, *,
          metric: str = "accuracy", out: str | Path | None = None, resume: bool = False,
          log: Callable[[str], None] | None = None, progress: bool = False,
          distributed: bool = True, teacher: TeacherOutputs | None = None) -> FinetuneResult:
    """Train ``model`` in place on token sequences; return the best-on-dev weights' model.

    ``out`` (optional) receives checkpoints after each evaluation and on Ctrl-C. ``teacher``
    (rows aligned with ``train_data``) makes it task distillation: `kd_loss` with the config's
    alpha and temperature, plus ``pooled_weight`` times the MSE between the (projected)
    student's and the teacher's pooled vectors; rows without a gold label (label −1, NaN for
    regression) learn from the teacher alone. Early stopping and selection use dev's gold labels.
    """
    _check_rows(model, train_data, dev, teacher)
    rank, world = world_of() if distributed else (0, 1)
    if config.batch_size % world:
        raise ConfigError(f"batch_size {config.batch_size} is not divisible by {world} ranks")
    with frozen_word_embeddings(model, config.freeze_word_embeddings):
        run = _Run(model, train_data, dev, config, metric, out, (rank, world),
                   log if rank == 0 else None, teacher)
        if resume:
            run.resume()
        run.run(progress and rank == 0)
    model.load_state_dict(run.best_state)
    model.eval()
    return FinetuneResult(model, dict(run.best["metrics"]), None, run.done, run.history)


def _check_teacher(teacher: BortModel, model: BortModel, config: FinetuneConfig) -> None:
    """The teacher can label the task for ``model`` (ConfigError otherwise)."""
    if teacher.classifier is None:
        raise ConfigError("the teacher has no classification head: fine-tune it on the task "
                          "first (bort finetune SOURCE --task ...)")
    if (teacher.arch.num_labels, teacher.id2label, teacher.problem_type == "regression") != (
            model.arch.num_labels, model.id2label, model.problem_type == "regression"):
        raise ConfigError(f"the teacher's head ({teacher.problem_type}, labels "
                          f"{teacher.id2label}) does not fit the task ({model.problem_type}, "
                          f"labels {model.id2label})")
    if teacher.arch.vocab_size != model.arch.vocab_size:
        raise ConfigError("teacher and student must read the same tokens (vocabularies of "
                          f"{teacher.arch.vocab_size} and {model.arch.vocab_size})")
    if teacher.arch.max_tokens < config.seq_len:
        raise ConfigError(f"the teacher reads at most {teacher.arch.max_tokens} tokens, "
                          f"seq_len is {config.seq_len}")


def _transfer_sample(texts: Sequence[str], limit: int, seed: int) -> list[str]:
    """At most ``limit`` of the non-empty ``texts``: a seeded sample, in their order."""
    texts = [t for t in texts if t.strip()]
    if len(texts) <= limit:
        return texts
    keep = np.sort(np.random.default_rng(seed).permutation(len(texts))[:limit])
    return [texts[i] for i in keep]


def _augmented(teacher: BortModel, tokenizer, train: Encoded, copies: int, seed: int
               ) -> Encoded:
    """``copies`` new sequences per training sequence (fewer where an edit changed nothing),
    each from one of `bort.augment`'s token-space generators drawn at random: embedding
    neighbours in the teacher's table (producing only tokens of the train split), token
    dropout, span swap. TinyBERT's task distillation labels such copies with the teacher."""
    if copies == 0:
        return Encoded([], [], np.zeros(0, np.int64))
    from .augment import EmbeddingNeighbours, Mix, SpanSwap, TokenDropout, marked_tokens

    special = marked_tokens(tokenizer)
    vocabulary = np.unique(np.concatenate(train.ids)) if len(train) else None
    generator = Mix([EmbeddingNeighbours.of(teacher, tokenizer, vocabulary),
                     TokenDropout(special), SpanSwap(special)], per_point=copies)
    return generator(train, np.random.default_rng(seed))


def _distillation_set(teacher: BortModel, task: Task, tokenizer, data: dict[str, Encoded],
                      transfer: Sequence[str] | None, config: FinetuneConfig,
                      log: Callable[[str], None] | None) -> tuple[TeacherOutputs, dict]:
    """Append the augmented copies of the train split and the unlabelled transfer texts to
    ``data["train"]``; the teacher's outputs on it and what metrics.json records of the
    distillation (with the teacher's own scores)."""
    texts = _transfer_sample(transfer or [], config.transfer_limit, config.seed)
    if texts and task.pair:
        raise ConfigError(f"{task.name} is a sentence-pair task: transfer texts (single "
                          "sentences) cannot be read as its inputs")

    def unlabelled(n: int) -> np.ndarray:
        return (np.full(n, np.nan, np.float32) if task.regression
                else np.full(n, UNLABELLED, np.int64))

    copies = _augmented(teacher, tokenizer, data["train"], config.augment_copies, config.seed)
    data["train"] = data["train"].concat(Encoded(copies.ids, copies.types,
                                                 unlabelled(len(copies)))).concat(
        encode_split(tokenizer, Split(texts, unlabelled(len(texts))), config.seq_len))
    soft = teacher_outputs(teacher, data["train"])
    if log:
        log(f"task distillation from {teacher.source_dir}: {len(copies)} augmented copies, "
            f"{len(texts)} transfer texts, {len(soft)} rows, teacher outputs "
            f"{'cached' if soft.cached else 'computed'}")
    scores = {k: _scores(teacher_outputs(teacher, data[k]).logits, data[k].labels,
                         task.regression)[0] for k in ("dev", "test")}
    return soft, {"distilled_from": str(teacher.source_dir) if teacher.source_dir else None,
                  "transfer": len(texts), "augmented": len(copies), "train_rows": len(soft),
                  "teacher_outputs": {"key": soft.key, "cached": soft.cached},
                  "teacher": scores}


def finetune(model: BortModel, task: Task, out: str | Path,
             config: FinetuneConfig | None = None, *, teacher: BortModel | None = None,
             transfer: Sequence[str] | None = None, resume: bool = False,
             log: Callable[[str], None] | None = print, progress: bool = True) -> FinetuneResult:
    """Fine-tune ``model`` (given a head for ``task`` here if it lacks one) on the task's train
    split, select on dev, score test once. Writes under ``out``: ``model/`` (the selected
    model, with tokenizer), ``metrics.json``, ``split.json`` and checkpoints.

    With a ``teacher`` (a model fine-tuned on the task, with the same labels) it is task
    distillation: the training set is the train split plus the ``transfer`` texts (unlabelled;
    a seeded sample of at most ``config.transfer_limit``, tokenised as the task is), all
    labelled by the teacher's soft outputs (`train`); metrics.json then records
    ``distilled_from``, the ``transfer`` count, the teacher-output cache and the teacher's scores.
    """
    config = config or FinetuneConfig()
    if model.source_dir is None:
        raise BortError("the model has no tokenizer: load it with BortModel.from_pretrained")
    if transfer and teacher is None:
        raise ConfigError("transfer texts are unlabelled: they need a teacher to label them")
    out = Path(out)
    torch.manual_seed(config.seed)  # a new head's initialisation is part of the run's seed
    model = with_head(model, task)
    if teacher is not None:
        _check_teacher(teacher, model, config)
    tokenizer = load_tokenizer(model.source_dir, config.seq_len)
    data = {k: encode_split(tokenizer, getattr(task, k), config.seq_len)
            for k in ("train", "dev", "test")}
    soft, record = (_distillation_set(teacher, task, tokenizer, data, transfer, config, log)
                    if teacher is not None else (None, {}))
    result = train(model, data["train"], data["dev"], config, metric=task.metric, out=out,
                   resume=resume, log=log, progress=progress, teacher=soft)
    result.test, result.test_predictions = evaluate(result.model, data["test"])
    if is_main():
        _write_results(out, task, config, result, record)
    return result


def _write_results(out: Path, task: Task, config: FinetuneConfig, result: FinetuneResult,
                   record: dict) -> None:
    """The selected model, split.json and metrics.json (with the distillation ``record``)."""
    task.write_split(out)
    how = (f"distilled on {task.name} from {record['distilled_from']}" if record
           else f"fine-tuned on {task.name}")
    result.model.save_pretrained(out / "model", card={
        "data": how, "metrics": {"dev": result.dev, "test": result.test}})
    write_json(out / "metrics.json", {
        "task": task.name, "metric": task.metric, "dev": result.dev, "test": result.test,
        "steps": result.steps, "config": config.as_dict(), **record,
        "history": result.history})
