"""The search: the frontier table of cost against error proxy over a space of sub-architectures.

`frontier` returns an ε-approximate Pareto front of (cost, error proxy): for every architecture x
of the space, some returned candidate y has ``cost(y) ≤ (1 + ε)·cost(x)`` and
``error_proxy(y) ≤ error_proxy(x)``. Layer-wise spaces (exponentially many architectures) go
through the C++ dynamic program of csrc/frontier/frontier.hpp, one run per hidden size, merged and
thinned; uniform spaces are small enough to list. `cost` and `error_proxy` give each value for one
architecture, so any point can be checked by brute force.

Example:
    >>> from bort import Arch
    >>> from bort.search import LayerwiseSpace, frontier
    >>> from bort.costs import Importance
    >>> import numpy as np
    >>> src = Arch.uniform(4, 4, 64, 128)
    >>> imp = Importance(src, [np.ones(4)] * 4, [np.ones(128)] * 4, np.ones(64))
    >>> front = frontier(LayerwiseSpace.from_source(src, ffn_step=32), 0.05, "flops", imp)
    >>> front[0].error_proxy, front[-1].error_proxy  # the empty network ... the source
    (528.0, 0.0)
"""

from __future__ import annotations

import json
import math
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from . import _core
from . import costs as _costs
from .arch import Arch
from .config import SearchConfig
from .costs import COSTS, Importance, base_cost, cost, error_proxy, layer_cost
from .distributed import world
from .errors import ConfigError
from .io import append_line, write_json
from .space import LayerwiseSpace, UniformSpace

__all__ = ["Candidate", "Evaluated", "LayerwiseSpace", "SearchResult", "UniformSpace", "cost",
           "error_proxy", "frontier", "optimal_subarchitecture", "plot_front", "representatives",
           "w_coefficient"]

#: The most states the table keeps after any layer (and the largest exact front, ε = 0).
MAX_STATES = 2_000_000


@dataclass(frozen=True)
class Candidate:
    """A point of the front: its architecture, parameters, cost (FLOPs, ms or parameters, as
    asked) and error proxy."""

    arch: Arch
    params: int
    cost: float
    error_proxy: float


def _pareto(cost: np.ndarray, error: np.ndarray) -> np.ndarray:
    """Indices of the Pareto set (cost ascending, error strictly descending)."""
    order = np.lexsort((error, cost))
    kept, best = [], math.inf
    for i in order:
        if error[i] < best:
            kept.append(i)
            best = error[i]
    return np.asarray(kept, dtype=np.int64)


def frontier(space: LayerwiseSpace | UniformSpace, epsilon: float = 0.01, cost: str = "flops",
             importance: Importance | None = None, *, max_states: int = MAX_STATES,
             **cost_options: Any) -> list[Candidate]:
    """The ε-approximate front of ``cost`` against the error proxy over ``space``.

    Args:
        space: a `LayerwiseSpace` (dynamic program) or a `UniformSpace` (listed).
        epsilon: ≥ 0; 0 gives the exact Pareto set (failing past ``max_states`` points).
        cost: a kind in `bort.costs.COSTS`: "flops", "latency" or "params" (see
            `bort.costs.decompose`; options such as ``batch``, ``seq_len``, ``effective`` and
            ``table`` pass through).
        importance: the source's `bort.costs.Importance`.

    Returns the candidates by increasing cost (and so decreasing error proxy).
    """
    if not (isinstance(epsilon, (int, float)) and math.isfinite(epsilon) and epsilon >= 0):
        raise ValueError(f"epsilon must be a finite number >= 0, got {epsilon!r}")
    COSTS[cost]  # an unknown kind raises ConfigError, naming the known ones
    if importance is None:
        raise ValueError("the frontier trades cost against the error proxy: pass the source's "
                         "importance (bort.costs.importance)")
    if isinstance(space, LayerwiseSpace):
        if not importance.matches(space.source):
            raise ConfigError(f"the importance table was measured on {importance.source.describe()}"
                              f", not on this space's source {space.source.describe()}")
        archs, costs, errors = _layerwise(space, epsilon, cost, importance, max_states,
                                          cost_options)
    elif isinstance(space, UniformSpace):
        archs = space.enumerate()
        costs = np.array([_costs.cost(a, cost, **cost_options) for a in archs])
        errors = np.array([error_proxy(a, importance) for a in archs])
    else:
        raise TypeError(f"space must be a LayerwiseSpace or a UniformSpace, got {type(space)}")
    if not archs:
        raise ConfigError("the space is empty")
    keep = _pareto(costs, errors)
    if epsilon > 0:
        ratio = math.sqrt(1 + epsilon) if isinstance(space, LayerwiseSpace) else 1 + epsilon
        keep = keep[_core.frontier_thin(costs[keep], errors[keep], ratio)]
    return [Candidate(archs[i], archs[i].params().total, float(costs[i]), float(errors[i]))
            for i in keep]


def _layerwise(space: LayerwiseSpace, epsilon: float, kind: str, importance: Importance,
               max_states: int, options: dict[str, Any]):
    """One DP per hidden size (each √(1+ε)-approximate before thinning); the caller merges."""
    choices = [space.choices(l) for l in range(space.num_layers)]
    errors_per_layer = [np.array([importance.layer_error(l, c) for c in cs])
                        for l, cs in enumerate(choices)]
    archs: list[Arch] = []
    costs: list[float] = []
    errors: list[float] = []
    for hidden in space.hiddens:
        per_layer_costs = [np.array([layer_cost(c, hidden, kind, **options) for c in cs])
                           for cs in choices]
        base = base_cost(space.arch(hidden, ()), kind, **options)
        c, e, pick = _core.frontier_solve(list(zip(per_layer_costs, errors_per_layer)), base,
                                          importance.hidden_error(hidden), float(epsilon),
                                          max_states, False)
        for row, cc, ee in zip(pick, c, e):
            archs.append(space.arch(hidden, [choices[l][k] for l, k in enumerate(row)]))
            costs.append(cc)
            errors.append(ee)
    return archs, np.array(costs), np.array(errors)


# ---------------------------------------------------------------------- the driver
@dataclass(frozen=True)
class Evaluated:
    """A representative after its short distillation run: ``error`` is the surrogate (held-out
    distillation loss), ``w`` its W-coefficient, ``steps`` the length of the run that gave the
    error (successive halving trains the better candidates longer)."""

    arch: Arch
    params: int
    cost: float
    error_proxy: float
    error: float
    w: float
    steps: int = 0


@dataclass
class SearchResult:
    """The evaluated representatives by increasing (params, cost), the optimum (picked by the
    config's ``choose`` rule among those that meet the constraints), the maximum point T and the
    candidates the table returned. ``by_w`` is the paper's pick (largest W), reported beside the
    optimum; ``measured_speedup`` the optimum's speed-up over the source timed end to end with
    bort's encoder, ``calibration`` measured over predicted speed-up near the bound (cost
    "latency" with ``min_speedup`` only)."""

    evaluated: list[Evaluated]
    optimum: Evaluated | None
    maximum: Candidate
    candidates: list[Candidate] = field(default_factory=list)
    predicted_seconds: float = 0.0  # the evaluation phase, as predicted before it started
    evaluation_seconds: float = 0.0  # ... and as it took
    seconds: float = 0.0  # the whole call
    by_w: Evaluated | None = None
    rule: str = "w"
    measured_speedup: float | None = None
    calibration: float | None = None

    def to_json(self) -> dict[str, Any]:
        def row(x):
            return {**{k: v for k, v in asdict(x).items() if k != "arch"},
                    "arch": x.arch.to_config(), "describe": x.arch.describe()}

        return {"maximum": row(self.maximum),
                "optimum": row(self.optimum) if self.optimum else None,
                "by_w": row(self.by_w) if self.by_w else None, "rule": self.rule,
                "measured_speedup": self.measured_speedup, "calibration": self.calibration,
                "evaluated": [row(x) for x in self.evaluated],
                "candidates": [row(x) for x in self.candidates],
                "predicted_seconds": self.predicted_seconds,
                "evaluation_seconds": self.evaluation_seconds, "seconds": self.seconds}


def w_coefficient(params: float, cost: float, error: float, max_params: float,
                  max_cost: float) -> float:
    """W = ((p(T) − p)/p(T)) · ((i(T) − i)/i(T)) / e: the share of parameters and of inference cost
    saved, per unit of error (BORT_NOTES §1; our reading of the paper)."""
    if error <= 0:
        raise ValueError(f"the surrogate error must be positive, got {error}")
    return (max_params - params) / max_params * (max_cost - cost) / max_cost / error


def choose(evaluated: Sequence[Evaluated], rule: str = "w",
           within: float = 0.0) -> list[Evaluated]:
    """The evaluated candidates, best first under ``rule``: "w" (largest W-coefficient),
    "accurate" (lowest surrogate error; ties: the cheaper), or "fastest" (the cheapest of those
    whose error is at most (1 + ``within``) × the lowest; then the rest by error).

    Example:
        >>> a, b = (Evaluated(None, p, c, 0.0, e, w) for p, c, e, w in ((1, 1.0, 0.30, 1.0),
        ...                                                             (2, 2.0, 0.29, 0.5)))
        >>> [x.params for x in choose([a, b], "w")], [x.params for x in choose([a, b], "accurate")]
        ([1, 2], [2, 1])
        >>> [x.params for x in choose([a, b], "fastest", within=0.05)]
        [1, 2]
    """
    if rule == "w":
        return sorted(evaluated, key=lambda x: -x.w)
    # errors are comparable within a rung: the longest-trained candidates (successive halving's
    # survivors) come first, each rung ordered by error
    by_error = sorted(evaluated, key=lambda x: (-x.steps, x.error, x.cost))
    if rule == "accurate":
        return by_error
    if rule == "fastest":
        top = by_error[0] if by_error else None
        close = sorted((x for x in by_error if x.steps == top.steps
                        and x.error <= top.error * (1 + within)), key=lambda x: x.cost)
        return close + [x for x in by_error if x not in close]
    raise ConfigError(f"unknown rule {rule!r} (choose from: w, accurate, fastest)")


def random_encoder(arch: Arch, *, threads: int, dtype: str = "fp32") -> Any:
    """bort's encoder for ``arch`` with random weights: what speed is measured on."""
    from .model import BortModel
    from .runtime import Encoder

    weights = {k: v.numpy() for k, v in BortModel(arch).state_dict().items()}
    return Encoder(arch, weights, num_threads=threads, dtype=dtype)


class SpeedupTimer:
    """Times candidates against the source end to end, each in one interleaved run with bort's
    encoder on random weights, at the latency table's shape, threads and dtype (the source's
    encoder is built once)."""

    def __init__(self, source: Arch, table: Any):
        self.threads = table.threads
        self.dtype = table.backend.split("-")[1] if table.backend.startswith("bort-") else "fp32"
        self.ids = np.random.default_rng(0).integers(0, source.vocab_size,
                                                     (table.batch, table.seq_len))
        self.source = random_encoder(source, threads=self.threads, dtype=self.dtype)

    def __call__(self, arch: Arch) -> float:
        """Latency of the source over that of ``arch``."""
        from .timing import interleaved_ms

        candidate = random_encoder(arch, threads=self.threads, dtype=self.dtype)
        ms = interleaved_ms({"source": lambda: self.source(self.ids),
                             "candidate": lambda: candidate(self.ids)}, rounds=MEASURE_ROUNDS)
        return ms["source"] / ms["candidate"]


def measured_speedup(source: Arch, arch: Arch, table: Any) -> float:
    """Latency of ``source`` over that of ``arch``, timed end to end (`SpeedupTimer`)."""
    return SpeedupTimer(source, table)(arch)


def representatives(candidates: Sequence[Candidate], count: int) -> list[Candidate]:
    """Order the candidates by (params, cost), cut them into ``count`` intervals of equal size and
    take the middle one of each (the paper's intervals of the ordered space)."""
    if count < 1:
        raise ValueError(f"representatives must be >= 1, got {count}")
    ordered = sorted(candidates, key=lambda c: (c.params, c.cost))
    if len(ordered) <= count:
        return ordered
    bounds = [round(k * len(ordered) / count) for k in range(count + 1)]
    return [ordered[(lo + hi - 1) // 2] for lo, hi in zip(bounds, bounds[1:])]


def _key(arch: Arch, steps: int) -> str:
    return f"{steps}:" + json.dumps(arch.to_config(), sort_keys=True)


#: Interleaved rounds that time a chosen candidate against the source end to end.
MEASURE_ROUNDS = 30
#: Candidates near ``min_speedup`` timed end to end to calibrate the latency table.
CALIBRATION_POINTS = 3
#: How far above ``min_speedup`` a calibrated prediction must be for a candidate to enter the
#: pool: about the spread of one model's end-to-end speed-up between runs here (9.08×-9.17×
#: timed warm, Intel Xeon with AMX).
SPEEDUP_MARGIN = 1.03
#: Step counts of the two probe runs that split a surrogate run's time into a fixed part and a
#: time per step.
PROBE_STEPS = (1, 4)
#: The least time per step (s) a prediction assumes, so that a noisy probe cannot predict 0.
MIN_STEP_SECONDS = 1e-3


@dataclass(frozen=True)
class _Surrogate:
    """The short distillation run against the source that gives a candidate its error."""

    source: Any
    corpus: Any
    importance: Importance
    seed: int
    name: str = "distill"

    def __call__(self, arch: Arch, steps: int) -> float:
        from .distill import surrogate_error

        return surrogate_error(arch, self.source, self.corpus, steps, self.seed,
                               importance=self.importance)


def _seconds(surrogate: Callable[[Arch, int], float], arch: Arch, steps: int) -> float:
    """Wall time of one surrogate run."""
    start = time.perf_counter()
    surrogate(arch, steps)
    return time.perf_counter() - start


#: The task-aware surrogate: training examples it distils on, sequences per step, tokens per
#: sequence, the temperature of the soft labels, and Θ (it keeps the best learning rate).
TASK_SAMPLE, TASK_BATCH, TASK_SEQ_LEN, TASK_TEMPERATURE = 2048, 32, 64, 2.0
TASK_LRS = (1e-3, 3e-4)


class _TaskSurrogate:
    """The task-aware error of a candidate: extracted from the fine-tuned teacher (pooler and
    head included), distilled for ``steps`` steps on the teacher's soft labels over a sample of
    the training split (cached teacher outputs, no gold labels), then its dev KL(teacher ‖
    student), the best over `TASK_LRS`. Every candidate pays the same loss."""

    def __init__(self, teacher: Any, task: Any, importance: Importance, seed: int):
        from .finetune import encode_split, teacher_outputs
        from .tokenize import load_tokenizer

        tokenizer = load_tokenizer(teacher.source_dir, TASK_SEQ_LEN)
        train = encode_split(tokenizer, task.train, TASK_SEQ_LEN)
        keep = np.random.default_rng(seed).permutation(len(train))[:TASK_SAMPLE]
        self.train = train.take(np.sort(keep))
        self.dev = encode_split(tokenizer, task.dev, TASK_SEQ_LEN)
        self.train_out = teacher_outputs(teacher, self.train)
        self.dev_soft = _softmax(teacher_outputs(teacher, self.dev).logits)
        self.teacher, self.importance, self.seed, self.name = teacher, importance, seed, "task"

    def __call__(self, arch: Arch, steps: int) -> float:
        return min(self._kl_after(arch, steps, lr) for lr in TASK_LRS)

    def _kl_after(self, arch: Arch, steps: int, lr: float) -> float:
        from dataclasses import replace

        from .config import FinetuneConfig
        from .extract import extract
        from .finetune import predict, train

        head = replace(arch, num_labels=self.teacher.arch.num_labels, pooler=True)
        student = extract(self.teacher, head, importance=self.importance)
        # the same frozen word embeddings for every candidate: a short run cannot move them
        # much, and their gradient and Adam update dominate a small candidate's step
        student.embeddings.word_embeddings.requires_grad_(False)
        per_epoch = -(-len(self.train) // TASK_BATCH)
        config = FinetuneConfig(lr=lr, epochs=steps / per_epoch, batch_size=TASK_BATCH,
                                seq_len=TASK_SEQ_LEN, alpha=0.0, temperature=TASK_TEMPERATURE,
                                seed=self.seed)
        model = train(student, self.train, self.dev, config, teacher=self.train_out,
                      distributed=False).model
        student_soft = _softmax(predict(model, self.dev))
        kl = self.dev_soft * (np.log(np.clip(self.dev_soft, _FLOOR, 1))
                              - np.log(np.clip(student_soft, _FLOOR, 1)))
        return float(kl.sum(axis=1).mean())


#: Either surrogate: called with (arch, steps), it returns the candidate's error.
Surrogate = _Surrogate | _TaskSurrogate
#: The smallest probability the dev KL takes a logarithm of.
_FLOOR = 1e-12


def _softmax(logits: np.ndarray) -> np.ndarray:
    z = np.exp(logits - logits.max(axis=1, keepdims=True))
    return z / z.sum(axis=1, keepdims=True)


def optimal_subarchitecture(source: Any, space: LayerwiseSpace | UniformSpace, corpus: Any, *,
                            importance: Importance, config: SearchConfig | None = None,
                            out: str | Path | None = None,
                            log: Callable[[str], None] | None = print,
                            cost_options: dict[str, Any] | None = None,
                            teacher: Any = None, task: Any = None,
                            **overrides: Any) -> SearchResult:
    """The Bort search: the frontier table's candidates (or the whole uniform grid) → ordered by
    (p, i) → one representative per interval → surrogate error by a short distillation against
    the source (the maximum point T) → W-coefficient → the optimum meeting the constraints.

    ``config`` (default `SearchConfig()`) sets ε, the cost kind, the representatives, steps,
    seed and constraints; ``overrides`` are its field names (``steps=2, max_params=...``).
    ``cost_options`` go to ``COSTS[config.cost].prepare`` (which measures the latency table
    when the cost is "latency" and no ``table`` is given) and on to every cost.
    ``config.space`` is not read: ``space`` is the space itself (`bort.space.SPACES` builds one
    by name). With ``teacher`` (the source fine-tuned on ``task``) and ``task``, the surrogate
    is task-aware: the dev KL to the teacher's soft labels after a short logit distillation
    (`_TaskSurrogate`); without them, the held-out loss of a short general distillation.
    Under torchrun the representatives are shared out across ranks. With ``out``,
    results are appended to ``out/evaluated.jsonl`` as they finish (a rerun skips them) and
    the result is written to ``out/front.json``.
    """
    config = (config or SearchConfig()).updated(overrides)
    start = time.perf_counter()
    rank, world_size = world()
    log = log if rank == 0 else None
    options = COSTS[config.cost].prepare(source.arch, space, **(cost_options or {}))
    arch_t = source.arch
    maximum = Candidate(arch_t, arch_t.params().total, cost(arch_t, config.cost, **options), 0.0)
    candidates = frontier(space, config.epsilon, config.cost, importance, **options)
    timer = (SpeedupTimer(arch_t, options["table"])
             if config.cost == "latency" and config.min_speedup is not None else None)
    kappa = _calibration(candidates, maximum, config, timer, log)
    factor = 1.0 if kappa is None else kappa / SPEEDUP_MARGIN
    chosen = _representatives(_allowed(candidates, maximum, config, factor), config)
    surrogate = (_TaskSurrogate(teacher, task, importance, config.seed)
                 if teacher is not None and task is not None
                 else _Surrogate(source, corpus, importance, config.seed))
    done = _finished(out, surrogate.name)
    todo = [c for c in chosen if _key(c.arch, config.steps) not in done]
    rungs = min(config.rungs, max(1, math.ceil(math.log2(len(chosen)))))
    predicted = rungs * _predict_seconds(todo, surrogate, config.steps) / world_size
    if log and todo:
        log(f"{len(todo)} representatives × {config.steps} steps, {rungs} rung(s), on "
            f"{world_size} process(es): expected {predicted / 60:.1f} min")
    evaluation_start = time.perf_counter()
    errors = _halving(chosen, surrogate, config.steps, rungs, done,
                      _journal(out, rank, world_size), log)
    evaluated = [Evaluated(c.arch, c.params, c.cost, c.error_proxy, errors[id(c)][0],
                           w_coefficient(c.params, c.cost, errors[id(c)][0], maximum.params,
                                         maximum.cost), errors[id(c)][1]) for c in chosen]
    optimum, speedup = _pick(evaluated, config, timer, log)
    result = SearchResult(evaluated, optimum, maximum, candidates, predicted,
                          time.perf_counter() - evaluation_start, time.perf_counter() - start,
                          by_w=max(evaluated, key=lambda x: x.w), rule=config.choose,
                          measured_speedup=speedup, calibration=kappa)
    if out and rank == 0:
        write_json(Path(out) / "front.json", result.to_json(), indent=2)
    return result


def _calibration(candidates: Sequence[Candidate], maximum: Candidate, config: SearchConfig,
                 timer: SpeedupTimer | None, log: Callable[[str], None] | None) -> float | None:
    """Measured over predicted speed-up, the median over the `CALIBRATION_POINTS` candidates
    the latency table puts nearest ``min_speedup`` (None without a latency cost or that bound).
    The table adds sublayers timed one at a time, whose weights stay in cache as they do not
    in a whole model, so it overrates small models: 11.8× predicted for a student measured at
    10.1× end to end (Intel Xeon with AMX); one point alone read 0.73 where the next search's
    choice measured 0.88 (AMD EPYC Zen 4, a noisy VM). Rank 0's value is every rank's."""
    if timer is None:
        return None
    mixing = [c for c in candidates if any(x.heads for x in c.arch.layers)] or list(candidates)
    refs = sorted(mixing, key=lambda c: abs(math.log(maximum.cost / c.cost
                                                     / config.min_speedup)))
    ratios = []
    for ref in refs[:CALIBRATION_POINTS]:
        predicted = maximum.cost / ref.cost
        ratios.append(timer(ref.arch) / predicted)
        if log:
            log(f"latency table calibration, {ref.arch.describe()}: {predicted:.2f}× "
                f"predicted, {predicted * ratios[-1]:.2f}× measured end to end")
    kappa = [statistics.median(ratios)]
    if world()[1] > 1:
        import torch

        torch.distributed.broadcast_object_list(kappa, src=0)
    if log:
        log(f"latency table calibrated: measured / predicted = {kappa[0]:.3f} (median of "
            f"{len(ratios)})")
    return kappa[0]


def _allowed(candidates: Sequence[Candidate], maximum: Candidate, config: SearchConfig,
             factor: float = 1.0) -> list[Candidate]:
    """The candidates with layers that meet the constraints of ``config``, a predicted
    speed-up counting as ``factor`` times itself (the calibration, less a margin)."""
    def ok(c: Candidate) -> bool:
        return ((config.max_params is None or c.params <= config.max_params)
                and (config.max_latency_ms is None or c.cost <= config.max_latency_ms)
                and (config.min_speedup is None
                     or factor * maximum.cost >= config.min_speedup * c.cost))

    # a candidate must mix its tokens: without one attention head every position, the first
    # token whose vector the pooler reads included, sees only itself
    pool = [c for c in candidates if ok(c) and any(x.heads for x in c.arch.layers)]
    if not pool:
        raise ConfigError("no candidate meets the constraints (max_params, max_latency_ms, "
                          "min_speedup)")
    return pool


def _representatives(pool: list[Candidate], config: SearchConfig) -> list[Candidate]:
    """One candidate per interval of the pool; for the rules that want the most accurate, also
    the pool's edge: the candidate with the least error proxy the constraints allow."""
    chosen = representatives(pool, config.representatives)
    edge = min(pool, key=lambda c: c.error_proxy)
    if config.choose != "w" and edge not in chosen:
        chosen.append(edge)
    return chosen


def _pick(evaluated: list[Evaluated], config: SearchConfig, timer: SpeedupTimer | None,
          log: Callable[[str], None] | None = None) -> tuple[Evaluated, float | None]:
    """The optimum under ``config.choose``; with a latency cost and ``min_speedup``, the best
    whose speed-up *measured* end to end reaches it (the table's sum is a prediction)."""
    ranked = choose(evaluated, config.choose, config.within)
    if timer is None:
        return ranked[0], None
    measured = []
    for x in ranked:
        measured.append(timer(x.arch))
        if log:
            log(f"{x.arch.describe()}: {measured[-1]:.2f}× faster than the source end to end")
        if measured[-1] >= config.min_speedup:
            return x, measured[-1]
    raise ConfigError(f"no evaluated candidate is {config.min_speedup}× faster than the source "
                      f"when timed end to end (best {max(measured):.2f}×); lower min_speedup")


def _finished(out: str | Path | None, surrogate: str) -> dict[str, float]:
    """The errors of the ``surrogate`` kind an earlier run wrote to ``out`` (every rank's
    journal), by key."""
    done: dict[str, float] = {}
    if out is None:
        return done
    for path in sorted(Path(out).glob("evaluated*.jsonl")):
        for line in path.read_text().splitlines():
            try:
                row = json.loads(line)
            except json.JSONDecodeError:  # blank, or cut short by a crash: evaluated again
                continue
            if row.get("surrogate", "distill") == surrogate:
                done[row["key"]] = row["error"]
    return done


def _journal(out: str | Path | None, rank: int, world_size: int) -> Path | None:
    """Where this rank appends its results: ``evaluated.jsonl``, one file per rank under
    torchrun."""
    if out is None:
        return None
    Path(out).mkdir(parents=True, exist_ok=True)
    name = f"evaluated.rank{rank}.jsonl" if world_size > 1 else "evaluated.jsonl"
    return Path(out) / name


def _predict_seconds(todo: Sequence[Candidate], surrogate: Surrogate, steps: int) -> float:
    """Seconds that ``steps``-step surrogate runs of ``todo`` will take in one process.

    A run is a fixed part (extraction, evaluation, saving) plus steps × a step time (the
    teacher's forward and the student's forward and backward). Runs of `PROBE_STEPS` steps on
    the cheapest and the costliest candidate measure both; candidates in between are
    interpolated by cost."""
    if not todo:
        return 0.0
    ends = sorted({min(todo, key=lambda c: c.cost), max(todo, key=lambda c: c.cost)},
                  key=lambda c: c.cost)
    # the first run in a process pays one-time costs (allocator, thread pools, caches):
    # a discarded warm-up keeps them out of the probes
    surrogate(ends[0].arch, PROBE_STEPS[0])
    (c0, f0, s0), (c1, f1, s1) = _probe(ends[0], surrogate), _probe(ends[-1], surrogate)

    def seconds(c: Candidate) -> float:
        a = (c.cost - c0) / (c1 - c0) if c1 > c0 else 0.0
        return f0 + a * (f1 - f0) + steps * (s0 + a * (s1 - s0))

    return sum(seconds(c) for c in todo)


def _probe(candidate: Candidate, surrogate: Surrogate) -> tuple[float, float, float]:
    """(cost, fixed seconds, seconds per step) of ``candidate``'s surrogate run."""
    few, more = PROBE_STEPS
    short, long = (_seconds(surrogate, candidate.arch, n) for n in PROBE_STEPS)
    step = max((long - short) / (more - few), MIN_STEP_SECONDS)
    return candidate.cost, max(short - few * step, 0.0), step


def _halving(chosen: Sequence[Candidate], surrogate: Surrogate, steps: int, rungs: int,
             done: dict[str, float], journal: Path | None,
             log: Callable[[str], None] | None) -> dict[int, tuple[float, int]]:
    """Successive halving: every candidate's error at ``steps``; then each of the next
    ``rungs - 1`` rungs keeps the better half and trains it twice as long. A candidate's
    (error, steps) are those of the last rung it reached (by ``id``)."""
    pool, errors = list(chosen), {}
    for _ in range(rungs):
        _evaluate([c for c in pool if _key(c.arch, steps) not in done], surrogate, steps, done,
                  journal, log)
        errors.update({id(c): (done[_key(c.arch, steps)], steps) for c in pool})
        pool = sorted(pool, key=lambda c: done[_key(c.arch, steps)])[:max(1, len(pool) // 2)]
        steps *= 2
    return errors


def _evaluate(todo: Sequence[Candidate], surrogate: Surrogate, steps: int,
              done: dict[str, float], journal: Path | None,
              log: Callable[[str], None] | None) -> None:
    """Surrogate errors of this rank's share of ``todo``, into ``done`` (then everyone's, under
    torchrun) and appended to ``journal``."""
    rank, world_size = world()
    mine = list(todo[rank::world_size])
    for n, c in enumerate(mine):
        error = surrogate(c.arch, steps)
        done[_key(c.arch, steps)] = error
        if journal:
            append_line(journal, json.dumps({"key": _key(c.arch, steps), "error": error,
                                             "surrogate": surrogate.name}))
        if log:
            log(f"[{n + 1}/{len(mine)}, {steps} steps] {c.arch.describe()}: surrogate error "
                f"{error:.4f}")
    if world_size > 1:  # everyone learns everyone's errors
        import torch

        gathered: list[dict[str, float]] = [{} for _ in range(world_size)]
        torch.distributed.all_gather_object(gathered, done)
        for d in gathered:
            done.update(d)


def plot_front(result: SearchResult, path: str | Path, unit: str, *,
               max_params: int | None = None, max_latency_ms: float | None = None) -> None:
    """The front as a PNG: the table's candidates, the representatives coloured by error, the
    optimum and the source; dashed lines at the constraints."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6.5, 4.5))
    ax = fig.subplots()
    ax.scatter([c.params / 1e6 for c in result.candidates], [c.cost for c in result.candidates],
               s=6, color="lightgray", label="frontier table")
    points = ax.scatter([x.params / 1e6 for x in result.evaluated],
                        [x.cost for x in result.evaluated],
                        c=[x.error for x in result.evaluated], cmap="viridis", s=40,
                        label="representatives")
    fig.colorbar(points, ax=ax, label="surrogate error")
    if result.optimum:
        ax.scatter([result.optimum.params / 1e6], [result.optimum.cost], marker="*", s=250,
                   color="red", label=f"optimum (rule: {result.rule})")
    ax.scatter([result.maximum.params / 1e6], [result.maximum.cost], marker="s", color="black",
               label="source")
    if max_params:
        ax.axvline(max_params / 1e6, color="red", linestyle="--", linewidth=0.8)
    if max_latency_ms:
        ax.axhline(max_latency_ms, color="red", linestyle="--", linewidth=0.8)
    ax.set_xlabel("parameters (millions)")
    ax.set_ylabel(unit)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
