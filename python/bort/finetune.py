"""Fine-tuning a `BortModel` on a labelled task: classification or regression head, AdamW with
warm-up and linear decay, early stopping on the dev split, metrics, checkpoints.

Training reads token sequences (`Encoded`), not text, so that Agora's generated points (token
sequences both models read) train the same way as the task's own examples. The model is
evaluated on dev after every epoch (``evals_per_epoch`` times per epoch when set); the best dev
score's weights are kept and returned, and training stops after ``patience`` evaluations without
improvement. The test split is scored once, at the end, on the model dev selected.

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
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from .checkpoint import resume as resume_checkpoint
from .checkpoint import save_checkpoint
from .config import FinetuneConfig
from .data import Split, Task
from .distributed import is_main
from .distributed import world as world_of
from .errors import BortError, ConfigError
from .io import write_json
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

__all__ = ["Encoded", "FinetuneConfig", "FinetuneResult", "encode_split", "evaluate",
           "finetune", "predict", "train", "with_head"]

#: Batches within which an epoch's sequences are sorted by length.
SORT_WINDOW = 50
#: Sequences per forward pass when predicting.
PREDICT_BATCH = 64


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
def predict(model: BortModel, data: Encoded, batch_size: int = PREDICT_BATCH) -> np.ndarray:
    """Logits (N, labels) of ``data``, in its order; batches group similar lengths."""
    if len(data) == 0:
        raise ValueError("empty batch: nothing to predict")
    was_training = model.training
    model.eval()
    order = np.argsort([len(x) for x in data.ids], kind="stable")
    out = np.zeros((len(data), model.arch.num_labels), np.float32)
    for start in range(0, len(order), batch_size):
        index = order[start:start + batch_size]
        batch = _collate(data, index, _pad_id(model))
        out[index] = model(**batch).logits.float().numpy()
    model.train(was_training)
    return out


def evaluate(model: BortModel, data: Encoded) -> tuple[dict[str, float], np.ndarray]:
    """(metrics, predictions) of ``model`` on ``data``: class ids, or scores for regression."""
    logits = predict(model, data)
    if model.problem_type == "regression":
        pred = logits[:, 0]
        return regression_metrics(pred, data.labels), pred
    pred = logits.argmax(1)
    return classification_metrics(pred, data.labels, model.arch.num_labels), pred


@dataclass
class FinetuneResult:
    """What `train` / `finetune` hand back: the dev-selected model and its scores."""

    model: BortModel
    dev: dict[str, float]
    test: dict[str, float] | None = None
    steps: int = 0
    history: dict[str, list] = field(default_factory=dict)


class _Run:
    """One fine-tuning run: the model, optimizer, schedule, history and the best dev score with
    its weights, with a method per phase of the loop."""

    def __init__(self, model: BortModel, train_data: Encoded, dev: Encoded,
                 config: FinetuneConfig, metric: str, out: str | Path | None,
                 ranks: tuple[int, int], log: Callable[[str], None] | None):
        self.model, self.train_data, self.dev, self.config = model, train_data, dev, config
        self.metric, self.log = metric, log
        self.rank, self.world = ranks
        self.regression = model.problem_type == "regression"
        self.checkpoints = Path(out) / "checkpoints" if out is not None else None
        seed_everything(config.seed)
        self.net = parallel(model, self.world)
        self.opt = adamw(model, config.lr, config.weight_decay)
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

    def save(self, step: int) -> int:
        if self.checkpoints is not None:
            save_checkpoint(self.checkpoints, step, model=self.model, optimizer=self.opt,
                            scheduler=self.sched, keep=1,
                            extra={"history": self.history, "best": self.best,
                                   "best_state": self.best_state,
                                   "config": self.config.as_dict()})
        return step

    def batch(self, step: int) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        """This rank's share of the step's batch, and its labels."""
        epoch, k = divmod(step, self.per_epoch)
        if self._batches[0] != epoch:
            self._batches = (epoch, _epoch_batches(self.train_data, self.config.batch_size,
                                                   self.config.seed, epoch))
        index = self._batches[1][k]
        share = -(-len(index) // self.world)
        index = index[self.rank * share:(self.rank + 1) * share]
        return (_collate(self.train_data, index, _pad_id(self.model)),
                torch.from_numpy(self.train_data.labels[index]))

    def train_step(self, step: int) -> float:
        """One optimizer step; the loss of the whole batch."""
        batch, labels = self.batch(step)
        with torch.autocast("cpu", torch.bfloat16, enabled=self.config.bf16):
            logits = self.net(**batch).logits.float()
        loss = (F.mse_loss(logits[:, 0], labels.float()) if self.regression
                else F.cross_entropy(logits, labels.long()))
        value = optimizer_step(loss, self.model, self.opt, self.sched, self.config.clip,
                               self.world)
        self.done = step + 1
        self.history["train_loss"].append((step + 1, value))
        return value

    def evaluate(self, step: int) -> bool:
        """Score dev after ``step`` steps, keep the best weights and checkpoint; True when
        ``patience`` evaluations in a row brought no better score (time to stop)."""
        metrics, _ = evaluate(self.model, self.dev)
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

    def run(self, progress: bool) -> None:
        """Train from the step reached until the last step or an early stop."""
        self.model.train()
        with (Progress(progress, self.total, self.start, "fine-tune") as bar,
              checkpoint_on_interrupt(lambda: self.save(self.done), self.log)):
            for step in range(self.start + 1, self.total + 1):  # step: steps done after it
                bar.step(self.train_step(step - 1))
                if (step % self.eval_every == 0 or step == self.total) and self.evaluate(step):
                    break


def train(model: BortModel, train_data: Encoded, dev: Encoded, config: FinetuneConfig, *,
          metric: str = "accuracy", out: str | Path | None = None, resume: bool = False,
          log: Callable[[str], None] | None = None, progress: bool = False,
          distributed: bool = True) -> FinetuneResult:
    """Train ``model`` in place on token sequences; return the best-on-dev weights' model.

    ``out`` (optional) receives checkpoints after each evaluation and on Ctrl-C.
    """
    if model.classifier is None:
        raise ConfigError("the model has no classification head: use with_head(model, task)")
    if len(train_data) == 0 or len(dev) == 0:
        raise BortError(f"empty split: train has {len(train_data)} examples, dev {len(dev)}")
    rank, world = world_of() if distributed else (0, 1)
    if config.batch_size % world:
        raise ConfigError(f"batch_size {config.batch_size} is not divisible by {world} ranks")
    run = _Run(model, train_data, dev, config, metric, out, (rank, world),
               log if rank == 0 else None)
    if resume:
        run.resume()
    run.run(progress and rank == 0)
    model.load_state_dict(run.best_state)
    model.eval()
    return FinetuneResult(model, dict(run.best["metrics"]), None, run.done, run.history)


def finetune(model: BortModel, task: Task, out: str | Path,
             config: FinetuneConfig | None = None, *, resume: bool = False,
             log: Callable[[str], None] | None = print, progress: bool = True) -> FinetuneResult:
    """Fine-tune ``model`` (given a head for ``task`` here if it lacks one) on the task's train
    split, select on dev, score test once. Writes under ``out``: ``model/`` (the selected
    model, with tokenizer), ``metrics.json``, ``split.json`` and checkpoints.
    """
    config = config or FinetuneConfig()
    if model.source_dir is None:
        raise BortError("the model has no tokenizer: load it with BortModel.from_pretrained")
    out = Path(out)
    torch.manual_seed(config.seed)  # a new head's initialisation is part of the run's seed
    model = with_head(model, task)
    tokenizer = load_tokenizer(model.source_dir, config.seq_len)
    data = {k: encode_split(tokenizer, getattr(task, k), config.seq_len)
            for k in ("train", "dev", "test")}
    result = train(model, data["train"], data["dev"], config, metric=task.metric, out=out,
                   resume=resume, log=log, progress=progress)
    result.test, _ = evaluate(result.model, data["test"])
    if is_main():
        task.write_split(out)
        result.model.save_pretrained(out / "model", card={
            "data": f"fine-tuned on {task.name}",
            "metrics": {"dev": result.dev, "test": result.test}})
        write_json(out / "metrics.json", {
            "task": task.name, "metric": task.metric, "dev": result.dev, "test": result.test,
            "steps": result.steps, "config": config.as_dict(), "history": result.history})
    return result
