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
import json
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .checkpoint import resume as resume_checkpoint
from .checkpoint import save_checkpoint
from .data import Split, Task
from .errors import BortError, ConfigError
from .metrics import classification_metrics, regression_metrics
from .model import BortModel, _write_text_atomic
from .tokenize import load_tokenizer
from .training import adamw, seed_everything, warmup_linear
from .training import step as optimizer_step
from .training import world as world_of

__all__ = ["Encoded", "FinetuneConfig", "FinetuneResult", "encode_split", "evaluate",
           "finetune", "predict", "train", "with_head"]


@dataclass
class FinetuneConfig:
    lr: float = 5e-5
    epochs: float = 3.0
    batch_size: int = 32  # sequences per step, over all ranks
    seq_len: int = 128
    warmup: float = 0.1  # fraction of the steps
    weight_decay: float = 0.01
    clip: float = 1.0
    patience: int = 2  # evaluations without a better dev score before stopping
    evals_per_epoch: int = 1
    seed: int = 0
    bf16: bool = False

    def __post_init__(self) -> None:
        for name in ("batch_size", "seq_len", "evals_per_epoch", "patience"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be >= 1, got {getattr(self, name)}")
        if not self.epochs > 0 or not self.lr > 0:
            raise ConfigError(f"epochs and lr must be > 0, got {self.epochs}, {self.lr}")

    def updated(self, overrides: Mapping[str, Any]) -> FinetuneConfig:
        """A copy with ``overrides`` applied; unknown names raise ConfigError."""
        known = {f.name for f in fields(self)}
        unknown = sorted(set(overrides) - known)
        if unknown:
            raise ConfigError(f"unknown fine-tuning settings {unknown} (known: {sorted(known)})")
        return replace(self, **overrides)


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
    """The batches of one epoch: a seeded shuffle, sorted by length within windows of 50
    batches (less padding, so faster steps), then the batches shuffled again."""
    rng = np.random.default_rng([seed, epoch])
    order = rng.permutation(len(data))
    window = batch_size * 50
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
    from dataclasses import replace as dc_replace

    labels = dict(enumerate(task.labels)) if task.labels else {0: "score"}
    problem = "regression" if task.regression else "single_label_classification"
    if model.arch.num_labels == task.num_labels and model.id2label == labels:
        return model
    arch = dc_replace(model.arch, num_labels=task.num_labels, pooler=True)
    out = BortModel(arch, id2label=labels, problem_type=problem, card=model.card)
    state = {k: v for k, v in model.state_dict().items() if not k.startswith("classifier.")}
    own = out.state_dict()
    own.update({k: v for k, v in state.items() if k in own})
    out.load_state_dict(own)
    out.source_dir = model.source_dir
    return out


@torch.no_grad()
def predict(model: BortModel, data: Encoded, batch_size: int = 64) -> np.ndarray:
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
    regression = model.problem_type == "regression"
    rank, world = world_of() if distributed else (0, 1)
    if config.batch_size % world:
        raise ConfigError(f"batch_size {config.batch_size} is not divisible by {world} ranks")
    seed_everything(config.seed)
    net: nn.Module = model
    if world > 1:
        net = nn.parallel.DistributedDataParallel(model)
    opt = adamw(model, config.lr, config.weight_decay)
    per_epoch = -(-len(train_data) // config.batch_size)
    total = max(1, round(config.epochs * per_epoch))
    sched = warmup_linear(opt, total, config.warmup)
    eval_every = max(1, per_epoch // config.evals_per_epoch)
    history: dict[str, list] = {"train_loss": [], "dev": []}
    best = {"score": -np.inf, "step": 0, "metrics": {}, "stale": 0}
    best_state = copy.deepcopy(model.state_dict())
    start = 0
    ckpt_dir = Path(out) / "checkpoints" if out is not None else None
    if resume and ckpt_dir is not None:
        state = resume_checkpoint(ckpt_dir, model=model, optimizer=opt, scheduler=sched)
        if state is not None:
            start, history, best = state.step, state.extra["history"], state.extra["best"]
            best_state = {k: v.clone() for k, v in state.extra["best_state"].items()}

    def checkpoint(step: int) -> None:
        if ckpt_dir is not None:
            save_checkpoint(ckpt_dir, step, model=model, optimizer=opt, scheduler=sched,
                            keep=1, extra={"history": history, "best": best,
                                           "best_state": best_state, "config": asdict(config)})

    bar = None
    if progress and rank == 0:
        from tqdm.auto import tqdm

        bar = tqdm(total=total, initial=start, desc="fine-tune", unit="step")
    model.train()
    done = start  # optimizer steps taken
    batches: tuple[int, list[np.ndarray]] = (-1, [])
    try:
        for step in range(start, total):
            epoch, k = divmod(step, per_epoch)
            if batches[0] != epoch:
                batches = (epoch, _epoch_batches(train_data, config.batch_size, config.seed,
                                                 epoch))
            index = batches[1][k]
            share = -(-len(index) // world)
            index = index[rank * share:(rank + 1) * share]
            batch = _collate(train_data, index, _pad_id(model))
            labels = torch.from_numpy(train_data.labels[index])
            with torch.autocast("cpu", torch.bfloat16, enabled=config.bf16):
                logits = net(**batch).logits.float()
            loss = (F.mse_loss(logits[:, 0], labels.float()) if regression
                    else F.cross_entropy(logits, labels.long()))
            value = optimizer_step(loss, model, opt, sched, config.clip, world)
            done = step + 1
            history["train_loss"].append((step + 1, value))
            if bar is not None:
                bar.update(1)
                bar.set_postfix(loss=f"{value:.4f}")
            if (step + 1) % eval_every == 0 or step + 1 == total:
                metrics, _ = evaluate(model, dev)
                history["dev"].append((step + 1, metrics))
                if metrics[metric] > best["score"]:
                    best = {"score": metrics[metric], "step": step + 1, "metrics": metrics,
                            "stale": 0}
                    best_state = copy.deepcopy(model.state_dict())
                else:
                    best["stale"] += 1
                if log and rank == 0:
                    log(f"step {step + 1}/{total}: dev {metric} {metrics[metric]:.4f} "
                        f"(best {best['score']:.4f} at {best['step']})")
                checkpoint(step + 1)
                if best["stale"] >= config.patience:
                    if log and rank == 0:
                        log(f"early stop at step {step + 1}: no better dev score in "
                            f"{config.patience} evaluations")
                    break
    except KeyboardInterrupt:
        checkpoint(done)
        if log and rank == 0:
            log(f"interrupted at step {done}: checkpoint written; rerun with resume to go on")
        raise
    finally:
        if bar is not None:
            bar.close()
    model.load_state_dict(best_state)
    model.eval()
    return FinetuneResult(model, dict(best["metrics"]), None, done, history)


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
    if world_of()[0] == 0:
        task.write_split(out)
        result.model.save_pretrained(out / "model", card={
            "data": f"fine-tuned on {task.name}",
            "metrics": {"dev": result.dev, "test": result.test}})
        _write_text_atomic(out / "metrics.json", json.dumps({
            "task": task.name, "metric": task.metric, "dev": result.dev, "test": result.test,
            "steps": result.steps, "config": asdict(config),
            "history": result.history}, indent=1) + "\n")
    return result
