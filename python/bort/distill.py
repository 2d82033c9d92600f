"""Knowledge-distillation pre-training of a student from a teacher on plain text.

Losses (summed with weights):
- hidden: MSE between each student layer's output and the output of the teacher layer it stands
  for (layers matched evenly, embeddings to embeddings), through a learned linear projection
  when the widths differ (TinyBERT's recipe);
- attention: KL(teacher ‖ student) of the attention distributions of matched layers whose head
  counts agree, over real tokens;
- masked LM, when teacher and student both have an MLM head (as in Bort's release):
  cross-entropy against the original tokens plus T²·KL(teacher ‖ student) of the logits at
  temperature 2, on the masked positions only.
15% of the tokens are masked in the input both models read. AdamW with warm-up and linear decay,
no weight decay on LayerNorm or bias, gradient clipping, optional bf16 autocast.

Runs the same under ``torchrun --nproc_per_node K``: DistributedDataParallel (gloo on CPU, nccl on
GPU), each rank reading its share of every batch, rank 0 writing. Checkpoints go through
`bort.checkpoint` every ``checkpoint_every`` steps and on Ctrl-C; a rerun resumes bit for bit.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .checkpoint import resume as resume_checkpoint
from .checkpoint import save_checkpoint
from .config import DistillConfig
from .distributed import world as world_of
from .errors import BortError, ConfigError
from .model import BortModel
from .tokenize import encode, load_tokenizer
from .training import (
    Progress,
    adamw,
    checkpoint_on_interrupt,
    parallel,
    seed_everything,
    warmup_linear,
)
from .training import step as optimizer_step

__all__ = ["SURROGATE", "Corpus", "DistillConfig", "distill", "loss_terms", "surrogate_error",
           "surrogate_run"]

#: Architecture fields a student shares with its teacher: both read the same tokens.
_SHARED = ("vocab_size", "type_vocab_size", "position_style", "pad_token_id")
#: Mask tokens of BERT's and RoBERTa's vocabularies, and the special tokens never masked.
_MASK_TOKENS = ("[MASK]", "<mask>")
_SPECIAL_TOKENS = ("[CLS]", "[SEP]", "<s>", "</s>", "[PAD]", "<pad>")
#: Label of the positions left unmasked (``F.cross_entropy``'s ``ignore_index``).
_UNMASKED = -100
#: Sequences per forward pass of a held-out evaluation.
EVAL_BATCH = 16
#: A step's masks come from a generator seeded ``seed * _STEP_SEEDS + step`` (a prime, so runs
#: of different seeds do not share masks), the held-out set's from ``seed + 1``.
_STEP_SEEDS = 1_000_003
#: Seed of the corpus' held-out draw (the same lines in every run).
_HELD_OUT_SEED = 0
#: Probabilities are clamped to this before their log (a softmax may underflow to 0).
_PROB_FLOOR = 1e-12


class Corpus:
    """Plain-text files, one document per line, read lazily: one pass indexes where each
    non-empty line starts, and a step reads only its own lines. A ``held_out`` share of the
    lines (at least one), drawn at random over every file (always the same draw), is kept aside
    for evaluation.

    Example:
        >>> corpus = Corpus(["wiki.txt", "books.txt"])            # doctest: +SKIP
        >>> corpus.batch(step=0, size=32, seed=0)[:1]              # doctest: +SKIP
    """

    def __init__(self, files: Sequence[str | Path], held_out: float = 0.01):
        if not files:
            raise ConfigError("no corpus files given")
        self.files = [Path(f) for f in files]
        where: list[np.ndarray] = []
        for n, f in enumerate(self.files):
            if not f.is_file():
                raise FileNotFoundError(f"corpus file not found: {f}")
            starts, offset = [], 0
            with open(f, "rb") as fh:
                for line in fh:
                    if line.strip():
                        starts.append(offset)
                    offset += len(line)
            where.append(np.stack([np.full(len(starts), n), np.array(starts, dtype=np.int64)], 1)
                         if starts else np.zeros((0, 2), dtype=np.int64))
        lines = np.concatenate(where)  # (lines, 2): file index, byte offset
        self._handles: dict = {}
        if len(lines) < 2:
            raise ConfigError(f"the corpus ({', '.join(map(str, files))}) has "
                              f"{len(lines)} non-empty lines; distillation needs text")
        n_eval = max(1, int(len(lines) * held_out))
        # a fixed draw over every file (not the last file's tail); training lines keep their order
        held = np.zeros(len(lines), bool)
        held[np.random.default_rng(_HELD_OUT_SEED).permutation(len(lines))[:n_eval]] = True
        self._lines = np.concatenate([lines[~held], lines[held]])
        self.n_train = len(lines) - n_eval
        self.eval = [self._read(i) for i in range(self.n_train, len(self._lines))]
        self._perm: tuple[tuple[int, int], np.ndarray] | None = None

    def _read(self, i: int) -> str:
        n, offset = self._lines[i]
        fh = self._handles.get(int(n))
        if fh is None:  # kept open: a step reads many lines
            fh = self._handles[int(n)] = open(self.files[n], "rb")  # noqa: SIM115
        fh.seek(int(offset))
        return fh.readline().decode("utf-8", errors="replace").strip()

    def __del__(self) -> None:
        for fh in getattr(self, "_handles", {}).values():
            fh.close()

    def head(self, n: int) -> list[str]:
        """The first ``n`` training lines (e.g. sample text for importance)."""
        return [self._read(i) for i in range(min(n, self.n_train))]

    def batch(self, step: int, size: int, seed: int) -> list[str]:
        """The texts of one step: epochs of a seeded permutation, so any step can be rebuilt."""
        out = []
        for k in range(step * size, (step + 1) * size):
            epoch, i = divmod(k, self.n_train)
            if self._perm is None or self._perm[0] != (seed, epoch):
                order = np.random.default_rng([seed, epoch]).permutation(self.n_train)
                self._perm = ((seed, epoch), order)
            out.append(self._read(int(self._perm[1][i])))
        return out


def _layer_pairs(student: BortModel, teacher: BortModel) -> list[tuple[int, int]]:
    """(student layer, teacher layer) pairs, evenly spaced; layer -1 is the embeddings."""
    s, t = len(student.arch.layers), len(teacher.arch.layers)
    return [(-1, -1)] + [(k, round((k + 1) * t / s) - 1) for k in range(s)]


class _Distiller(nn.Module):
    """The student plus the projections the losses train with it (not part of the student)."""

    def __init__(self, student: BortModel, teacher: BortModel, temperature: float):
        super().__init__()
        self.student = student
        self.mlm = student.arch.mlm_head and teacher.arch.mlm_head
        self.temperature = temperature
        hs, ht = student.arch.hidden, teacher.arch.hidden
        self.pairs = _layer_pairs(student, teacher)
        self.project = nn.ModuleList(nn.Linear(hs, ht) if hs != ht else nn.Identity()
                                     for _ in self.pairs)

    def forward(self, batch: dict[str, torch.Tensor], target) -> dict[str, torch.Tensor]:
        out = self.student(batch["input_ids"], batch["attention_mask"], batch["token_type_ids"],
                           output_hidden_states=True, output_attentions=True, output_mlm=self.mlm)
        mask = batch["attention_mask"].bool()
        hidden = sum(F.mse_loss(proj(out.hidden_states[s + 1])[mask],
                                target.hidden_states[t + 1][mask])
                     for proj, (s, t) in zip(self.project, self.pairs)) / len(self.pairs)
        attention = torch.zeros(())
        matched = 0
        for s, t in self.pairs[1:]:
            a_s, a_t = out.attentions[s], target.attentions[t]
            if a_s is None or a_t is None or a_s.shape != a_t.shape:
                continue
            rows = mask[:, None, :, None].expand_as(a_t) & mask[:, None, None, :].expand_as(a_t)
            kl = a_t * (torch.log(a_t.clamp_min(_PROB_FLOOR))
                        - torch.log(a_s.clamp_min(_PROB_FLOOR)))
            attention = attention + kl[rows].sum() / mask.sum() / a_t.shape[1]
            matched += 1
        if matched:
            attention = attention / matched
        parts = {"hidden": hidden, "attention": attention}
        if self.mlm:
            masked = batch["labels"] != _UNMASKED
            if masked.any():
                s_logits, t_logits = out.mlm_logits[masked], target.mlm_logits[masked]
                t = self.temperature
                parts["mlm"] = F.cross_entropy(s_logits, batch["labels"][masked])
                parts["logits"] = t * t * F.kl_div(
                    F.log_softmax(s_logits / t, -1), F.log_softmax(t_logits / t, -1),
                    log_target=True, reduction="batchmean")
            else:  # nothing masked in this batch: zero, still on the graph (DDP needs it)
                parts["mlm"] = parts["logits"] = out.mlm_logits.sum() * 0
        return parts


class _Masker:
    """Tokenises a batch of texts and masks ``rate`` of its tokens (never special ones), as
    BERT's pre-training does; ``labels`` hold the original ids at masked positions, else
    `_UNMASKED`."""

    def __init__(self, tokenizer, rate: float):
        self.tokenizer, self.rate = tokenizer, rate
        bert, roberta = _MASK_TOKENS
        self.mask_id = tokenizer.token_to_id(bert) or tokenizer.token_to_id(roberta)
        if self.mask_id is None:
            raise BortError("the teacher's tokenizer has no [MASK] / <mask> token")
        special = {tokenizer.token_to_id(t) for t in _SPECIAL_TOKENS}
        self.keep = torch.tensor(sorted(special - {None}))

    def __call__(self, texts: list[str], gen: torch.Generator) -> dict[str, torch.Tensor]:
        batch = {k: torch.from_numpy(v) for k, v in encode(self.tokenizer, texts).items()}
        ids = batch["input_ids"]
        maskable = batch["attention_mask"].bool() & ~torch.isin(ids, self.keep)
        hit = (torch.rand(ids.shape, generator=gen) < self.rate) & maskable
        batch["input_ids"] = torch.where(hit, torch.full_like(ids, self.mask_id), ids)
        batch["labels"] = torch.where(hit, ids, torch.full_like(ids, _UNMASKED))
        return batch


def loss_terms(config: DistillConfig, mlm: bool) -> dict[str, float]:
    """The terms of the distillation loss and their weights, in the order they are summed: every
    term whose weight is > 0 (the MLM terms only when both models have an MLM head)."""
    weights = {"hidden": config.hidden_weight, "attention": config.attention_weight}
    if mlm:
        weights.update(mlm=config.mlm_weight, logits=config.logit_weight)
    terms = {name: w for name, w in weights.items() if w > 0}
    if not terms:
        raise ConfigError("distillation: every loss weight is 0")
    return terms


class _Run:
    """One distillation run: the student with its projections, optimizer, schedule, history and
    the steps taken, with a method per phase of the loop."""

    def __init__(self, teacher: BortModel, student: BortModel, corpus: Corpus, out: Path,
                 config: DistillConfig, ranks: tuple[int, int], masker: _Masker):
        self.teacher, self.corpus, self.config = teacher, corpus, config
        self.rank, self.world = ranks
        self.masker = masker
        self.checkpoints = out / "checkpoints"
        seed_everything(config.seed)
        teacher.eval().requires_grad_(False)
        for head in (student.pooler, student.classifier):  # no loss reaches them here
            if head is not None:
                head.requires_grad_(False)
        self.module = _Distiller(student, teacher, config.temperature)
        self.model = parallel(self.module, self.world)
        self.opt = adamw(self.module, config.lr, config.weight_decay)
        self.sched = warmup_linear(self.opt, config.steps, config.warmup)
        self.history: dict[str, list] = {"train_loss": [], "eval_loss": []}
        self.start = self.done = 0  # done: optimizer steps taken (Ctrl-C may follow a step)

    def resume(self) -> None:
        state = resume_checkpoint(self.checkpoints, model=self.module, optimizer=self.opt,
                                  scheduler=self.sched)
        if state is not None:
            self.start = self.done = state.step
            self.history = state.extra.get("history", self.history)

    def save(self, step: int) -> int:
        save_checkpoint(self.checkpoints, step, model=self.module, optimizer=self.opt,
                        scheduler=self.sched, extra={"history": self.history,
                                                     "config": self.config.as_dict()})
        return step

    def loss(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """The weighted distillation loss of one (masked) batch."""
        config = self.config
        with torch.no_grad():
            target = self.teacher(batch["input_ids"], batch["attention_mask"],
                                  batch["token_type_ids"], output_hidden_states=True,
                                  output_attentions=True, output_mlm=self.module.mlm)
        with torch.autocast("cpu", torch.bfloat16, enabled=config.bf16):
            parts = self.model(batch, target)
        terms = iter(loss_terms(config, self.module.mlm).items())
        name, weight = next(terms)
        loss = weight * parts[name]
        for name, weight in terms:
            loss = loss + weight * parts[name]
        return loss

    def evaluate(self) -> float:
        """The mean loss over ``eval_sequences`` held-out lines (repeated when there are fewer),
        with the same masks every time."""
        config, held_out = self.config, self.corpus.eval
        gen = torch.Generator().manual_seed(config.seed + 1)
        repeat = math.ceil(config.eval_sequences / len(held_out))
        texts = (held_out * repeat)[:config.eval_sequences]
        self.module.eval()
        with torch.no_grad():
            losses = [self.loss(self.masker(texts[i:i + EVAL_BATCH], gen)).item()
                      for i in range(0, len(texts), EVAL_BATCH)]
        self.module.train()
        return float(np.mean(losses))

    def train_step(self, step: int) -> float:
        """One optimizer step on this rank's share of the step's batch; the batch's loss."""
        config = self.config
        gen = torch.Generator().manual_seed(config.seed * _STEP_SEEDS + step)
        texts = self.corpus.batch(step, config.batch_size, config.seed)
        share = config.batch_size // self.world
        batch = self.masker(texts, gen)
        batch = {k: v[self.rank * share:(self.rank + 1) * share] for k, v in batch.items()}
        value = optimizer_step(self.loss(batch), self.module, self.opt, self.sched, config.clip,
                               self.world)
        self.done = step + 1
        self.history["train_loss"].append((step + 1, value))
        return value

    def run(self, log: Callable[[str], None] | None, progress: bool) -> None:
        """Train from the step reached to the last, evaluating and checkpointing on schedule."""
        config, history = self.config, self.history
        self.module.train()
        with (Progress(progress, config.steps, self.start, "distill") as bar,
              checkpoint_on_interrupt(lambda: self.save(self.done), log)):
            if self.start == 0:
                history["eval_loss"].append((0, self.evaluate()))
            for step in range(self.start + 1, config.steps + 1):  # step: steps done after it
                bar.step(self.train_step(step - 1))
                if step % config.eval_every == 0 or step == config.steps:
                    history["eval_loss"].append((step, self.evaluate()))
                    if log:
                        log(f"step {step}: held-out loss {history['eval_loss'][-1][1]:.4f}")
                if step % config.checkpoint_every == 0:
                    self.save(step)


def distill(teacher: BortModel, student: BortModel, corpus: Corpus, out: str | Path,
            config: DistillConfig | None = None, *, resume: bool = False,
            log: Callable[[str], None] | None = print, progress: bool = True,
            distributed: bool = True) -> dict:
    """Train ``student`` towards ``teacher`` on ``corpus``; checkpoints and the final student go
    under ``out``. Returns {"step", "train_loss", "eval_loss": [(step, loss), ...]}.

    ``distributed=False`` trains in this process alone even under torchrun (the search runs one
    candidate per rank). Raises ConfigError when the two models do not read the same tokens.
    """
    config = config or DistillConfig()
    for f in _SHARED:
        if getattr(student.arch, f) != getattr(teacher.arch, f):
            raise ConfigError(f"student {f} {getattr(student.arch, f)!r} differs from the "
                              f"teacher's {getattr(teacher.arch, f)!r}: both must read the same "
                              "tokens")
    if teacher.source_dir is None:
        raise BortError("the teacher has no tokenizer: load it with BortModel.from_pretrained")
    out = Path(out)
    rank, world = world_of() if distributed else (0, 1)
    if config.batch_size % world:
        raise ConfigError(f"batch_size {config.batch_size} is not divisible by {world} ranks")
    masker = _Masker(load_tokenizer(teacher.source_dir, config.seq_len), config.mask_rate)
    run = _Run(teacher, student, corpus, out, config, (rank, world), masker)
    if resume:
        run.resume()
    run.run(log if rank == 0 else None, progress and rank == 0)
    if rank == 0:
        student.save_pretrained(out / "student", card={"data": "distilled on a text corpus"})
    return {"step": config.steps, "terms": list(loss_terms(config, run.module.mlm)),
            **run.history}


#: The surrogate's distillation: short, a high learning rate, and no attention term, which only
#: layers whose head count matches the teacher's could pay (every candidate gets the same loss).
SURROGATE = {"batch_size": 16, "seq_len": 64, "lr": 5e-4, "attention_weight": 0.0}


def surrogate_run(arch, teacher: BortModel, corpus: Corpus, steps: int, seed: int = 0, *,
                  importance=None, **settings) -> dict:
    """`distill`'s result for the search's short run on one candidate: ``arch`` extracted from
    ``teacher`` and distilled for ``steps`` steps with the `SURROGATE` settings (``settings``,
    DistillConfig fields, override them)."""
    import tempfile

    from .extract import extract

    student = extract(teacher, arch, importance=importance)
    config = DistillConfig(**{"steps": steps, "eval_every": steps, "checkpoint_every": steps + 1,
                              "seed": seed, **SURROGATE, **settings})
    with tempfile.TemporaryDirectory() as run:
        return distill(teacher, student, corpus, run, config, log=None, progress=False,
                       distributed=False)


def surrogate_error(arch, teacher: BortModel, corpus: Corpus, steps: int, seed: int = 0, *,
                    importance=None, **settings) -> float:
    """The search's error surrogate for one candidate: the held-out distillation loss after
    `surrogate_run` (the paper's short training run against the maximum point). Deterministic
    for a given seed."""
    result = surrogate_run(arch, teacher, corpus, steps, seed, importance=importance, **settings)
    return float(result["eval_loss"][-1][1])
