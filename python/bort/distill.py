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
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .checkpoint import resume as resume_checkpoint
from .checkpoint import save_checkpoint
from .errors import BortError, ConfigError
from .model import BortModel
from .tokenize import encode, load_tokenizer
from .training import adamw, seed_everything, warmup_linear
from .training import step as optimizer_step
from .training import world as world_of

__all__ = ["Corpus", "DistillConfig", "distill", "surrogate_error"]


@dataclass
class DistillConfig:
    steps: int = 1000
    batch_size: int = 32  # sequences per step, over all ranks
    seq_len: int = 128
    lr: float = 1e-4
    warmup: float = 0.01  # fraction of the steps
    weight_decay: float = 0.01
    clip: float = 1.0
    mask_rate: float = 0.15
    hidden_weight: float = 1.0
    attention_weight: float = 1.0
    mlm_weight: float = 0.1  # Bort's release: 0.1 · cross-entropy
    logit_weight: float = 0.5  # ... + 0.5 · T² · KL at temperature T
    temperature: float = 2.0
    eval_every: int = 100
    eval_sequences: int = 64
    checkpoint_every: int = 200
    seed: int = 0
    bf16: bool = False

    def __post_init__(self) -> None:
        for name in ("steps", "batch_size", "seq_len", "eval_every", "checkpoint_every"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be >= 1, got {getattr(self, name)}")
        if not 0 <= self.mask_rate < 1:
            raise ConfigError(f"mask_rate must be in [0, 1), got {self.mask_rate}")


class Corpus:
    """Plain-text files, one document per line, read lazily: one pass indexes where each
    non-empty line starts, and a step reads only its own lines. The last ``held_out`` share of
    the lines (at least one) is kept aside for evaluation.

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
        self._lines = np.concatenate(where)  # (lines, 2): file index, byte offset
        self._handles: dict = {}
        if len(self._lines) < 2:
            raise ConfigError(f"the corpus ({', '.join(map(str, files))}) has "
                              f"{len(self._lines)} non-empty lines; distillation needs text")
        n_eval = max(1, int(len(self._lines) * held_out))
        self.n_train = len(self._lines) - n_eval
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
            kl = a_t * (torch.log(a_t.clamp_min(1e-12)) - torch.log(a_s.clamp_min(1e-12)))
            attention = attention + kl[rows].sum() / mask.sum() / a_t.shape[1]
            matched += 1
        if matched:
            attention = attention / matched
        parts = {"hidden": hidden, "attention": attention}
        if self.mlm:
            masked = batch["labels"] >= 0
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
    for f in ("vocab_size", "type_vocab_size", "position_style", "pad_token_id"):
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
    tokenizer = load_tokenizer(teacher.source_dir, config.seq_len)
    mask_id = tokenizer.token_to_id("[MASK]") or tokenizer.token_to_id("<mask>")
    if mask_id is None:
        raise BortError("the teacher's tokenizer has no [MASK] / <mask> token")
    special = {tokenizer.token_to_id(t)
               for t in ("[CLS]", "[SEP]", "<s>", "</s>", "[PAD]", "<pad>")}

    seed_everything(config.seed)
    teacher.eval().requires_grad_(False)
    for head in (student.pooler, student.classifier):  # no loss reaches them here
        if head is not None:
            head.requires_grad_(False)
    module = _Distiller(student, teacher, config.temperature)
    model: nn.Module = module
    if world > 1:
        model = nn.parallel.DistributedDataParallel(module)
    opt = adamw(module, config.lr, config.weight_decay)
    sched = warmup_linear(opt, config.steps, config.warmup)
    history = {"train_loss": [], "eval_loss": []}
    start = 0
    if resume:
        state = resume_checkpoint(out / "checkpoints", model=module, optimizer=opt, scheduler=sched)
        if state is not None:
            start = state.step
            history = state.extra.get("history", history)

    def tensors(texts: list[str], gen: torch.Generator) -> dict[str, torch.Tensor]:
        batch = {k: torch.from_numpy(v) for k, v in encode(tokenizer, texts).items()}
        ids = batch["input_ids"]
        keep = torch.tensor(sorted(special - {None}))
        maskable = batch["attention_mask"].bool() & ~torch.isin(ids, keep)
        hit = (torch.rand(ids.shape, generator=gen) < config.mask_rate) & maskable
        batch["input_ids"] = torch.where(hit, torch.full_like(ids, mask_id), ids)
        batch["labels"] = torch.where(hit, ids, torch.full_like(ids, -100))
        return batch

    def loss_of(batch: dict[str, torch.Tensor]) -> torch.Tensor:
        with torch.no_grad():
            target = teacher(batch["input_ids"], batch["attention_mask"], batch["token_type_ids"],
                             output_hidden_states=True, output_attentions=True,
                             output_mlm=module.mlm)
        with torch.autocast("cpu", torch.bfloat16, enabled=config.bf16):
            parts = model(batch, target)
        loss = config.hidden_weight * parts["hidden"] + config.attention_weight * parts["attention"]
        if module.mlm:
            loss = loss + config.mlm_weight * parts["mlm"] + config.logit_weight * parts["logits"]
        return loss

    def evaluate() -> float:
        gen = torch.Generator().manual_seed(config.seed + 1)
        repeat = math.ceil(config.eval_sequences / len(corpus.eval))
        texts = (corpus.eval * repeat)[:config.eval_sequences]
        module.eval()
        with torch.no_grad():
            losses = [loss_of(tensors(texts[i:i + 16], gen)).item()
                      for i in range(0, len(texts), 16)]
        module.train()
        return float(np.mean(losses))

    bar = None
    if progress and rank == 0:
        from tqdm.auto import tqdm

        bar = tqdm(total=config.steps, initial=start, desc="distill", unit="step")
    module.train()
    step = done = start  # done: optimizer steps taken (a Ctrl-C may come after opt.step)
    try:
        if start == 0:
            history["eval_loss"].append((0, evaluate()))
        for step in range(start, config.steps):
            gen = torch.Generator().manual_seed(config.seed * 1_000_003 + step)
            texts = corpus.batch(step, config.batch_size, config.seed)
            share = config.batch_size // world
            batch = tensors(texts, gen)
            batch = {k: v[rank * share:(rank + 1) * share] for k, v in batch.items()}
            loss = loss_of(batch)
            value = optimizer_step(loss, module, opt, sched, config.clip, world)
            done = step + 1
            history["train_loss"].append((step + 1, value))
            if bar is not None:
                bar.update(1)
                bar.set_postfix(loss=f"{value:.4f}")
            if (step + 1) % config.eval_every == 0 or step + 1 == config.steps:
                history["eval_loss"].append((step + 1, evaluate()))
                if log and rank == 0:
                    log(f"step {step + 1}: held-out loss {history['eval_loss'][-1][1]:.4f}")
            if (step + 1) % config.checkpoint_every == 0:
                save_checkpoint(out / "checkpoints", step + 1, model=module, optimizer=opt,
                                scheduler=sched, extra={"history": history,
                                                        "config": asdict(config)})
        step = config.steps
    except KeyboardInterrupt:
        save_checkpoint(out / "checkpoints", done, model=module, optimizer=opt, scheduler=sched,
                        extra={"history": history, "config": asdict(config)})
        if log and rank == 0:
            log(f"interrupted at step {done}: checkpoint written; rerun with resume to go on")
        raise
    finally:
        if bar is not None:
            bar.close()
    if rank == 0:
        student.save_pretrained(out / "student", card={"data": "distilled on a text corpus"})
    return {"step": step, **history}


def surrogate_error(arch, teacher: BortModel, corpus: Corpus, steps: int, seed: int = 0, *,
                    importance=None, batch_size: int = 16, seq_len: int = 64,
                    lr: float = 5e-4) -> float:
    """The search's error surrogate for one candidate: extract ``arch`` from ``teacher``, distil
    it for ``steps`` steps, and return the held-out distillation loss (the paper's short training
    run against the maximum point). Deterministic for a given seed."""
    import tempfile

    from .extract import extract

    student = extract(teacher, arch, importance=importance)
    config = DistillConfig(steps=steps, batch_size=batch_size, seq_len=seq_len, lr=lr,
                           eval_every=steps, checkpoint_every=steps + 1, seed=seed)
    with tempfile.TemporaryDirectory() as run:
        result = distill(teacher, student, corpus, run, config, log=None, progress=False,
                         distributed=False)
    return float(result["eval_loss"][-1][1])
