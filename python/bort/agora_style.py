"""bort's Agora (Agora-style, the default of ``--agora``): teacher-labelled points around a
student's mistakes, found without the data that selects, with random and distillation controls
run in the same loop and compute.

How it differs from the paper's loop (`bort.agora`, ``--agora paper``):
- **Mistakes without the selection data.** ``selection="halves"``: dev is split into a
  generation half, where mistakes are sought, and a selection half, which early-stops every
  fit and picks θ and the round; the control arms train on the generation half's gold labels
  instead, so every arm sees the same gold data. ``selection="kfold"``: mistakes are the
  out-of-fold ones on train (model j never trained on fold j's rows) and all of dev selects.
- **Soft labels.** A new point carries the teacher's logits (the training loss is
  `bort.finetune.kd_loss`) and is kept only where the teacher's top probability reaches
  ``confidence``. Each mistake yields at most ``per_point`` token-space edits (`bort.augment`)
  and ``neighbours`` real sentences of the transfer pool, the nearest to it in the teacher's
  pooled-vector space (a pool row is added once).
- **Rounds warm-start** from the best model so far and train on ``round_rows`` rows: the points
  added in every round so far (at most ``share`` of the rows; a seeded sample beyond that) and
  a replayed sample of the task-distillation set (gold train rows up to half, the rest
  teacher-labelled pool rows). Every arm thus takes the same steps per fit. Θ is pruned by the
  paper's rule (`bort.agora.prune`): |Θ| ≥ 3 allows ≥ 3 rounds.
- The test split is never read here: callers score it once, on each arm's final model.

Arms (`ARMS`): ``agora``; ``random``, as many teacher-labelled points per round as Agora kept
(its ``counts``), drawn uniformly from the same generators (edits of uniformly drawn seed
points) and pool; ``distill``, the same rounds without new points: task distillation given the
same extra steps. Round 0 is the starting model itself, so an arm that never beats it on the
selection data returns it.

The loop is generic over a `RoundsProblem`; `bort.agora_style.TextRounds` plugs in a
`BortModel`, and the tests run it on points in 3-D as well. Each round is written to ``out``
(state JSON, added points as safetensors, ``round-R/`` with the models that round made current)
and a rerun resumes after the last finished round.

Example:
    >>> import numpy as np
    >>> nearest(np.array([[1.0, 0.0]]), np.array([[2.0, 0.1], [0.0, 1.0], [1.0, -0.1]]), 2)
    array([0, 2])
    >>> confident(np.array([[2.0, 0.0], [0.1, 0.0]]), 0.7)      # the teacher's top p >= 0.7
    array([0])
    >>> record = finetune_rounds(student, teacher, task, "runs/agora",
    ...                          transfer=pool_sentences)                  # doctest: +SKIP
    >>> record["shipped"], record["arms"]["agora"]["test"]              # doctest: +SKIP
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from .agora import (
    _points_arrays,
    _points_from,
    _seed,
    concat,
    prune,
    read_points_file,
    read_state_file,
    size,
    take,
)
from .config import AgoraConfig
from .errors import CheckpointError, ConfigError, DataError
from .io import save_safetensors, write_json
from .metrics import accuracy, correct_string

__all__ = ["ARMS", "RoundsData", "RoundsProblem", "RoundsResult", "Rows", "agora_rounds",
           "confident", "finetune_rounds", "gold_task", "nearest"]

ARMS = ("agora", "random", "distill")
STATE_FILE = "rounds-state.json"
POINTS_FILE = "rounds-points.safetensors"
_FORMAT = 1
_STATE_KEYS = ("format", "arm", "round", "remaining", "rounds", "best", "done", "pool_used",
               "added_points")
#: Random streams apart from the fits' (one per θ index): new points, and the replayed rows.
_GENERATE, _REPLAY = 1_000_003, 1_000_033
#: Query rows compared with the whole pool at once in `nearest` (bounds the memory).
_CHUNK = 256

Points = Any  # a numpy array or a bort.finetune.Encoded


def _matrix(a: Any, n: int) -> np.ndarray:
    """``a`` as float32 rows, one per point (a flat array of n rows' values too)."""
    a = np.asarray(a, np.float32)
    return a if a.ndim == 2 else a.reshape(n, -1 if n else 0)


@dataclass
class Rows:
    """Points and what training reads of them, row-aligned: gold class ids (−1: none), the
    teacher's logits (N, C) and pooled vectors (N, d), and under k-fold each gold row's fold
    (``group``, −1 for rows outside the folds)."""

    X: Points
    gold: np.ndarray
    logits: np.ndarray
    pooled: np.ndarray
    group: np.ndarray | None = None

    def __post_init__(self) -> None:
        n = size(self.X)
        self.gold = np.asarray(self.gold, np.int64)
        self.logits, self.pooled = _matrix(self.logits, n), _matrix(self.pooled, n)
        self.group = (np.full(n, -1, np.int64) if self.group is None
                      else np.asarray(self.group, np.int64))
        if not len(self.gold) == len(self.group) == n:
            raise DataError(f"{n} points but {len(self.gold)} gold labels and "
                            f"{len(self.group)} fold ids")

    def __len__(self) -> int:
        return len(self.gold)

    def take(self, index: np.ndarray) -> Rows:
        index = np.asarray(index, np.int64)
        return Rows(take(self.X, index), self.gold[index], self.logits[index],
                    self.pooled[index], self.group[index])

    def concat(self, other: Rows) -> Rows:
        return Rows(concat(self.X, other.X), np.concatenate([self.gold, other.gold]),
                    np.concatenate([self.logits, other.logits]),
                    np.concatenate([self.pooled, other.pooled]),
                    np.concatenate([self.group, other.group]))


@dataclass
class RoundsData:
    """An arm's data: ``base``, the task-distillation set every round replays; ``seeds``, gold
    points where mistakes are sought (their ``group`` the folds under k-fold); ``pool``, real
    unlabelled points that retrieval and the random arm draw from; ``select``, gold points that
    early-stop every fit and pick θ and the round."""

    base: Rows
    seeds: Rows
    pool: Rows
    select: Rows


class RoundsProblem(Protocol):
    """What the rounds need from a task (points as in `bort.agora.Problem`)."""

    def fit(self, theta: dict, start: Any, rows: Rows, select: Rows, seed: int) -> Any:
        """A copy of ``start`` trained on ``rows`` (gold where ≥ 0, the teacher's logits
        everywhere) with the settings ``theta``, early-stopped on ``select``."""

    def logits(self, model: Any, X: Points) -> np.ndarray:
        """The model's logits (N, C) of X."""

    def label(self, X: Points) -> Rows:
        """X with the teacher's logits and pooled vectors (gold −1)."""

    def edit(self, X: Points, rng: np.random.Generator) -> Points:
        """Token-space neighbours of X (``per_point`` per point, or fewer)."""

    def save(self, model: Any, directory: Path) -> None:
        """Write ``model`` into ``directory``."""

    def load(self, directory: Path) -> Any:
        """Read a model `save` wrote."""


@dataclass
class RoundsResult:
    """An arm's best model over its rounds (round 0: the starting model), its selection
    score and each round's log."""

    model: Any
    arm: str
    score: float
    best_round: int
    rounds: list[dict] = field(default_factory=list)
    added: int = 0


def confident(logits: np.ndarray, threshold: float) -> np.ndarray:
    """Rows whose softmax's largest probability is at least ``threshold``."""
    z = logits - logits.max(1, keepdims=True)
    p = np.exp(z)
    return np.flatnonzero(p.max(1) / p.sum(1) >= threshold)


def nearest(queries: np.ndarray, keys: np.ndarray, k: int,
            exclude: np.ndarray | None = None) -> np.ndarray:
    """The distinct rows of ``keys`` among the ``k`` nearest to some query by cosine
    similarity (rows marked in the boolean ``exclude`` never), sorted."""
    if k == 0 or len(queries) == 0 or len(keys) == 0:
        return np.zeros(0, np.int64)

    def unit(a: np.ndarray) -> np.ndarray:
        a = np.asarray(a, np.float32)
        return a / np.maximum(np.linalg.norm(a, axis=1, keepdims=True), 1e-12)

    keys, k = unit(keys), min(k, len(keys))
    hits = []
    for start in range(0, len(queries), _CHUNK):
        sims = unit(queries[start:start + _CHUNK]) @ keys.T
        if exclude is not None:
            sims[:, exclude] = -np.inf
        top = np.argpartition(-sims, k - 1, axis=1)[:, :k]
        hits.append(top[np.take_along_axis(sims, top, 1) > -np.inf])
    return np.unique(np.concatenate(hits)).astype(np.int64)


def _check(data: RoundsData, config: AgoraConfig, arm: str, folds: Sequence | None,
           counts: Sequence[dict] | None) -> None:
    if arm not in ARMS:
        raise ConfigError(f"unknown arm {arm!r}: one of {', '.join(ARMS)}")
    if not config.thetas:
        raise ConfigError("Agora needs at least one hyperparameter setting in Θ")
    if len(data.select) == 0 or not (data.select.gold >= 0).all():
        raise DataError("the selection data is empty or lacks gold labels: it picks θ and "
                        "the round")
    if len(data.base) == 0:
        raise DataError("the task-distillation set to replay is empty")
    if arm == "agora" and (len(data.seeds) == 0 or not (data.seeds.gold >= 0).all()):
        raise DataError("Agora seeks mistakes on gold points: the seed set is empty or "
                        "unlabelled")
    if arm != "distill" and config.neighbours and len(data.pool) == 0:
        raise DataError("the pool of unlabelled points is empty: retrieval has nothing to "
                        "draw from (set neighbours = 0 for edits only)")
    kfold = arm == "agora" and config.selection == "kfold"
    if kfold and (folds is None or len(folds) != config.folds):
        raise ConfigError(f"k-fold Agora needs {config.folds} fold models (model j never "
                          "trained on fold j)")
    if kfold and not set(np.unique(data.seeds.group)) <= set(range(config.folds)):
        raise DataError(f"every seed point needs a fold id in 0..{config.folds - 1}")
    if arm == "random" and counts is None:
        raise ConfigError("the random arm draws as many points per round as Agora kept: pass "
                          "the agora arm's rounds as counts")


class _Arm:
    """One arm's run: its inputs, the state a rerun resumes from and the current models."""

    def __init__(self, problem: RoundsProblem, start: Any, data: RoundsData,
                 config: AgoraConfig, arm: str, folds: Sequence | None,
                 counts: Sequence[dict] | None, out: Path | None, metric: Callable,
                 log: Callable[[str], None]):
        self.problem, self.data, self.config, self.arm = problem, data, config, arm
        self.counts, self.out, self.metric, self.log = counts, out, metric, log
        self.kfold = arm == "agora" and config.selection == "kfold"
        self.best_model, self.folds = start, list(folds or [])
        self.added: Rows | None = None
        self.state: dict = {}

    # ---------------------------------------------------------------- state
    def score(self, model: Any) -> float:
        select = self.data.select
        return float(self.metric(self.problem.logits(model, select.X).argmax(1), select.gold))

    def start(self) -> None:
        state = self._load() if self.out is not None else None
        if state is None:
            score = self.score(self.best_model)
            state = {"format": _FORMAT, "arm": self.arm, "round": 0,
                     "remaining": list(range(len(self.config.thetas))), "rounds": [],
                     "best": {"round": 0, "score": score, "theta": None}, "done": False,
                     "pool_used": []}
            self.log(f"{self.arm}: the starting model scores {score:.4f} on the selection "
                     f"data; |Θ| = {len(self.config.thetas)}")
        else:
            self.log(f"{self.arm}: resuming after round {state['round']} ({self.out})")
        self.state = state

    def _load(self) -> dict | None:
        path = self.out / STATE_FILE
        if not path.is_file():
            return None
        state = read_state_file(path, _FORMAT, _STATE_KEYS, "a bort Agora state file")
        if state["arm"] != self.arm:
            raise CheckpointError(f"{path}: the state of the {state['arm']} arm, not "
                                  f"{self.arm}: give each arm its own directory")
        count = state.pop("added_points")
        self.added = self._read_points(count) if count else None
        current = self.out / f"round-{state['round']}"
        if state["best"]["round"]:
            self.best_model = self.problem.load(self.out / f"round-{state['best']['round']}"
                                                / "model")
        if self.kfold and state["round"]:
            self.folds = [self.problem.load(current / f"fold-{j}")
                          for j in range(self.config.folds)]
        return state

    def _read_points(self, count: int) -> Rows:
        path = self.out / POINTS_FILE
        kind, arrays = read_points_file(path, STATE_FILE)
        X = _points_from(arrays, kind, path)
        if not {"logits", "pooled", "labels"} <= arrays.keys() or \
                not len(arrays["logits"]) == len(arrays["pooled"]) == size(X) >= count:
            raise CheckpointError(f"{path}: holds {size(X)} points; {STATE_FILE} counts {count}")
        rows = Rows(X, arrays["labels"], arrays["logits"], arrays["pooled"])
        return rows.take(np.arange(count)) if len(rows) > count else rows

    def save(self, r: int, improved: bool) -> None:
        """Write round ``r``'s points and models, then the state that names them, then drop
        the directories it no longer names."""
        out = self.out
        if self.added is not None:
            arrays, kind = _points_arrays(self.added.X, self.added.gold)
            arrays.update(logits=self.added.logits, pooled=self.added.pooled)
            save_safetensors(arrays, out / POINTS_FILE, {"kind": kind, "format": str(_FORMAT)})
        current = out / f"round-{r}"
        if improved:
            self.problem.save(self.best_model, current / "model")
        for j, model in enumerate(self.folds if self.kfold else []):
            self.problem.save(model, current / f"fold-{j}")
        write_json(out / STATE_FILE, {**self.state, "added_points": len(self.added or ())})
        keep = {current.name, f"round-{self.state['best']['round']}"}
        for old in out.glob("round-*"):
            if old.name not in keep:
                shutil.rmtree(old, ignore_errors=True)

    # ---------------------------------------------------------------- new points
    def mistakes(self) -> np.ndarray:
        """Seed points the current model gets wrong (under k-fold, each by the fold model
        that never trained on its fold)."""
        seeds, problem = self.data.seeds, self.problem
        if not self.kfold:
            return np.flatnonzero(problem.logits(self.best_model, seeds.X).argmax(1)
                                  != seeds.gold)
        pred = np.full(len(seeds), -1, np.int64)
        for j, model in enumerate(self.folds):
            rows = np.flatnonzero(seeds.group == j)
            if len(rows):
                pred[rows] = problem.logits(model, take(seeds.X, rows)).argmax(1)
        return np.flatnonzero(pred != seeds.gold)

    def edits(self, points: Points, rng: np.random.Generator) -> Rows | None:
        new = self.problem.edit(points, rng)
        if not size(new):
            return None
        labelled = self.problem.label(new)
        return labelled.take(confident(labelled.logits, self.config.confidence))

    def pool_used(self) -> np.ndarray:
        """Which pool rows an earlier round added (a boolean mask)."""
        used = np.zeros(len(self.data.pool), bool)
        used[np.asarray(self.state["pool_used"], np.int64)] = True
        return used

    def retrieved(self, index: np.ndarray) -> Rows:
        """The pool rows ``index`` that pass the confidence filter (as unlabelled rows),
        marked as used."""
        pool = self.data.pool
        keep = index[confident(pool.logits[index], self.config.confidence)]
        self.state["pool_used"] = sorted(set(self.state["pool_used"]) | set(keep.tolist()))
        rows = pool.take(keep)
        return Rows(rows.X, np.full(len(rows), -1), rows.logits, rows.pooled)

    def agora_points(self, rng: np.random.Generator) -> tuple[Rows | None, Rows, dict]:
        """Edits of the mistakes and the pool rows nearest to them."""
        mistakes, seeds = self.mistakes(), self.data.seeds
        edits = self.edits(take(seeds.X, mistakes), rng) if len(mistakes) else None
        near = self.retrieved(nearest(seeds.pooled[mistakes], self.data.pool.pooled,
                                      self.config.neighbours, exclude=self.pool_used()))
        return edits, near, {"mistakes": int(len(mistakes))}

    def random_points(self, rng: np.random.Generator) -> tuple[Rows | None, Rows | None, dict]:
        """As many edits and pool rows as Agora kept in this round, drawn uniformly: edits of
        seed points in a random order (as many at a time as Agora had mistakes, until enough
        pass the filter) and unused pool rows in a random order."""
        r, seeds = self.state["round"], self.data.seeds
        want = self.counts[r] if r < len(self.counts) else {}
        edits = None
        if want.get("edits"):
            order, step = rng.permutation(len(seeds)), max(1, want.get("mistakes") or 1)
            for start in range(0, len(order), step):
                batch = self.edits(take(seeds.X, order[start:start + step]), rng)
                if batch is not None:
                    edits = batch if edits is None else edits.concat(batch)
                if edits is not None and len(edits) >= want["edits"]:
                    break
            edits = edits.take(np.arange(min(len(edits), want["edits"]))) if edits else None
        near = None
        if want.get("retrieved"):
            free = np.flatnonzero(~self.pool_used())
            order = free[rng.permutation(len(free))]
            passing = order[confident(self.data.pool.logits[order], self.config.confidence)]
            near = self.retrieved(np.sort(passing[:want["retrieved"]]))
        return edits, near, {"mistakes": None}

    def add(self, rng: np.random.Generator) -> dict:
        """This round's new points (none for the distillation arm), appended to the added
        ones; their counts."""
        edits, near, entry = None, None, {"mistakes": None}
        if self.arm == "agora":
            edits, near, entry = self.agora_points(rng)
        elif self.arm == "random":
            edits, near, entry = self.random_points(rng)
        for rows in (edits, near):
            if rows is not None and len(rows):
                self.added = rows if self.added is None else self.added.concat(rows)
        return {**entry, "edits": len(edits or ()), "retrieved": len(near or ())}

    # ---------------------------------------------------------------- a round
    def replay(self, rng: np.random.Generator) -> Rows:
        """The round's training rows: the added points (a sample of ``share`` of the rows
        when there are more) and a sample of the task-distillation set, gold rows up to half."""
        config, base = self.config, self.data.base
        added = self.added
        cap = int(config.share * config.round_rows)
        if added is not None and len(added) > cap:
            added = added.take(np.sort(rng.choice(len(added), cap, replace=False)))
        budget = config.round_rows - len(added or ())
        gold, other = np.flatnonzero(base.gold >= 0), np.flatnonzero(base.gold < 0)
        n_other = min(len(other), budget - min(len(gold), budget // 2))
        n_gold = min(len(gold), budget - n_other)
        index = np.sort(np.concatenate([rng.choice(gold, n_gold, replace=False),
                                        rng.choice(other, n_other, replace=False)]))
        rows = base.take(index)
        return rows if added is None else rows.concat(added)

    def round(self) -> None:
        state, config, problem = self.state, self.config, self.problem
        r = state["round"]
        entry = {"round": r + 1, **self.add(np.random.default_rng(
            _seed(config.seed, r, _GENERATE)))}
        rows = self.replay(np.random.default_rng(_seed(config.seed, r, _REPLAY)))
        entry.update(train_rows=len(rows), added_total=len(self.added or ()),
                     thetas=list(state["remaining"]))
        scores, best = [], None
        for i in state["remaining"]:
            model = problem.fit(config.thetas[i], self.best_model, rows, self.data.select,
                                _seed(config.seed, r, i))
            score = self.score(model)
            scores.append(score)
            self.log(f"{self.arm} round {r + 1}: θ{i} {config.thetas[i]} selection "
                     f"{score:.4f}")
            if best is None or score > best[1]:
                best = (model, score, i)
            del model
        improved = best[1] > state["best"]["score"]
        if improved:
            self.best_model = best[0]
            state["best"] = {"round": r + 1, "score": best[1], "theta": best[2]}
        if self.kfold:  # each fold model learns the round's rows but its own fold's
            self.folds = [problem.fit(config.thetas[best[2]], model,
                                      rows.take(np.flatnonzero(rows.group != j)),
                                      self.data.select, _seed(config.seed, r, j, _GENERATE))
                          for j, model in enumerate(self.folds)]
        entry.update(selection_scores=scores, best_theta=best[2], score=best[1])
        state["rounds"].append(entry)
        state["remaining"] = prune(state["remaining"], scores)
        state["round"] = r + 1
        state["done"] = self.arm == "agora" and entry["mistakes"] == 0
        self.log(f"{self.arm} round {r + 1}: best θ{best[2]} {best[1]:.4f}"
                 + (f", {entry['mistakes']} mistakes" if entry["mistakes"] is not None else "")
                 + f", {entry['edits']} edits and {entry['retrieved']} pool rows added; "
                 f"Θ left {state['remaining']}")
        if self.out is not None:
            self.save(r + 1, improved)

    def pending(self) -> bool:
        state = self.state
        return (not state["done"] and state["round"] < self.config.max_rounds
                and bool(state["remaining"]))


def agora_rounds(problem: RoundsProblem, start: Any, data: RoundsData,
                 config: AgoraConfig | None = None, arm: str = "agora", *,
                 folds: Sequence | None = None, counts: Sequence[dict] | None = None,
                 out: str | Path | None = None,
                 metric: Callable[[np.ndarray, np.ndarray], float] = accuracy,
                 log: Callable[[str], None] | None = print) -> RoundsResult:
    """Run one arm of bort's Agora (see the module docstring) from ``start``.

    ``folds`` (k-fold Agora): ``config.folds`` models, model j never trained on the rows of
    fold j. ``counts`` (the random arm): the agora arm's rounds (`RoundsResult.rounds`), whose
    kept edits and pool rows it matches. ``out`` keeps the state for resuming. Raises
    ConfigError or DataError on inputs that do not fit, CheckpointError on a damaged state.
    """
    config = config or AgoraConfig()
    _check(data, config, arm, folds, counts)
    out = Path(out) if out is not None else None
    run = _Arm(problem, start, data, config, arm, folds, counts, out, metric, log or
               (lambda message: None))
    run.start()
    while run.pending():
        run.round()
    best = run.state["best"]
    return RoundsResult(run.best_model, arm, best["score"], best["round"], run.state["rounds"],
                        len(run.added or ()))


# ---------------------------------------------------------------------- text tasks
class TextRounds:
    """bort's Agora on a text task: each fit is task distillation (`bort.finetune.train`
    with the teacher's logits as soft targets, gold CE where a row has a label), warm from
    the model it is given and early-stopped on the selection data; the teacher labels the
    token-space edits ``generator`` makes (one of `bort.agora.text_generator`'s)."""

    def __init__(self, teacher, generator, config=None, *, metric: str = "accuracy"):
        from .finetune import FinetuneConfig

        self.teacher, self.generator = teacher, generator
        self.config, self.metric = config or FinetuneConfig(), metric
        self.steps = 0  # training steps over all fits: the compute spent

    def fit(self, theta, start, rows, select, seed):
        import copy
        from dataclasses import replace

        from .finetune import Encoded, TeacherOutputs, train

        model = copy.deepcopy(start)
        config = replace(self.config.updated(theta), seed=seed)
        result = train(model, Encoded(rows.X.ids, rows.X.types, rows.gold),
                       Encoded(select.X.ids, select.X.types, select.gold), config,
                       metric=self.metric, distributed=False,
                       teacher=TeacherOutputs(rows.logits, rows.pooled))
        self.steps += result.steps
        return result.model

    def logits(self, model, X):
        from .finetune import predict

        return predict(model, X)

    def label(self, X):
        from .finetune import teacher_outputs

        out = teacher_outputs(self.teacher, X, cache=False)
        return Rows(X, np.full(len(X), -1), out.logits, out.pooled)

    def edit(self, X, rng):
        return self.generator(X, rng)

    def save(self, model, directory: Path) -> None:
        model.save_pretrained(directory)

    def load(self, directory: Path):
        from .model import BortModel

        return BortModel.from_pretrained(directory)


def _rows(teacher, data) -> Rows:
    """Encoded gold rows with the teacher's (cached) outputs."""
    from .finetune import teacher_outputs

    out = teacher_outputs(teacher, data)
    return Rows(data, data.labels, out.logits, out.pooled)


def dev_halves(labels: np.ndarray, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """The generation and the selection half of dev (stratified by label, seeded)."""
    from .data import stratified_split

    gen, sel = stratified_split(labels, (0.5, 0.5), seed)
    return gen, sel


def gold_task(task, agora: AgoraConfig):
    """``task`` as the gold data every arm sees: under dev halves the train split plus the
    generation half, with the selection half as dev; under k-fold the task itself (a plain
    fine-tuning control trains on it and is selected on the same data as the arms)."""
    from dataclasses import replace

    if agora.selection != "halves":
        return task
    gen, sel = dev_halves(task.dev.labels, agora.seed)
    return replace(task, train=task.train.concat(task.dev.subset(gen)),
                   dev=task.dev.subset(sel))


@dataclass
class TextRoundsData:
    """What `text_rounds_data` makes of a task: each arm's `RoundsData` (the controls' and
    Agora's differ under dev halves), the test split, the fold of every train row under
    k-fold, and what metrics.json records of it."""

    arms: dict[str, RoundsData]
    test: Any
    folds: np.ndarray | None
    record: dict


def text_rounds_data(teacher, task, tokenizer, config, agora: AgoraConfig,
                     transfer: Sequence[str] | None, log=None) -> TextRoundsData:
    """The arms' data on ``task``: the task-distillation set of `bort.finetune` (train split,
    augmented copies, ``transfer`` texts; the teacher's outputs cached) as the base every
    round replays and, its unlabelled rows, the pool; then, by ``agora.selection``: dev split
    into a generation and a selection half (stratified, seeded), the controls training on the
    generation half's gold rows too; or k-fold fold ids on the train rows, all of dev
    selecting."""
    from .agora import TEACHER_THRESHOLD
    from .data import stratified_split
    from .finetune import _distillation_set, encode_split

    data = {k: encode_split(tokenizer, getattr(task, k), config.seq_len)
            for k in ("train", "dev", "test")}
    n_train, dev = len(data["train"]), _rows(teacher, data["dev"])
    gen, sel = dev_halves(dev.gold, agora.seed) if agora.selection == "halves" else (
        None, np.arange(len(dev)))
    teacher_score = accuracy(dev.logits[sel].argmax(1), dev.gold[sel])
    if not teacher_score > TEACHER_THRESHOLD:
        raise ConfigError(f"the teacher scores {teacher_score:.4f} on the selection data; "
                          f"Agora needs a teacher above {TEACHER_THRESHOLD:.4f} to label points")
    soft, record = _distillation_set(teacher, task, tokenizer, data, transfer, config, log)
    base = Rows(data["train"], data["train"].labels, soft.logits, soft.pooled)
    pool = base.take(np.flatnonzero(base.gold < 0))
    if agora.neighbours and not len(pool):
        raise DataError("bort's Agora retrieves real sentences near each mistake from the "
                        "transfer pool, which is empty: give transfer texts (--transfer FILE) "
                        "or set neighbours = 0")
    record = {**record, "selection": agora.selection, "pool": len(pool),
              "teacher_selection": teacher_score}
    if gen is not None:
        gen, select = dev.take(gen), dev.take(sel)
        arms = {arm: RoundsData(base if arm == "agora" else base.concat(gen), gen, pool, select)
                for arm in ARMS}
        record.update(generation=len(gen), selection_rows=len(select))
        return TextRoundsData(arms, data["test"], None, record)
    folds = np.full(len(base), -1, np.int64)
    for j, part in enumerate(stratified_split(base.gold[:n_train], [1 / agora.folds] *
                                              agora.folds, agora.seed)):
        folds[part] = j
    base = Rows(base.X, base.gold, base.logits, base.pooled, folds)
    seeds = base.take(np.arange(n_train))
    return TextRoundsData({arm: RoundsData(base, seeds, pool, dev) for arm in ARMS},
                          data["test"], folds, {**record, "folds": agora.folds})


def _check_text(model, task, arms: Sequence[str]) -> None:
    if task.regression:
        raise ConfigError(f"{task.name}: Agora needs a classification task")
    if model.source_dir is None:
        raise ConfigError("the student has no tokenizer: load it with BortModel.from_pretrained")
    unknown = [a for a in arms if a not in ARMS]
    if unknown:
        raise ConfigError(f"unknown arms {unknown}: choose from {', '.join(ARMS)}")
    if "random" in arms and ("agora" not in arms or arms.index("random") < arms.index("agora")):
        raise ConfigError("the random arm matches the agora arm's counts: run agora first")


def _starts(model, teacher, task, out: Path, config, agora: AgoraConfig, transfer,
            folds: np.ndarray | None, log) -> tuple[Any, list | None]:
    """The task-distilled student every arm starts from (selected on the selection half
    under dev halves) and, under k-fold, the fold models (the same recipe without fold j's
    train rows), each trained once under ``out`` and reused."""
    from dataclasses import replace

    from .finetune import finetune
    from .model import BortModel

    def distilled(directory: Path, rows_task) -> BortModel:
        if not (directory / "metrics.json").is_file():
            finetune(model, rows_task, directory, config, teacher=teacher,  # seeds the head
                     transfer=transfer, resume=True, log=log, progress=False)
        return BortModel.from_pretrained(directory / "model")

    if folds is None:  # the generation half is for mistakes, not for the start to learn
        return distilled(out / "distilled", replace(task, dev=gold_task(task, agora).dev)), None
    return distilled(out / "distilled", task), [
        distilled(out / "folds" / f"fold-{j}", replace(task, train=task.train.subset(
            np.flatnonzero(folds[:len(task.train)] != j)))) for j in range(agora.folds)]


def finetune_rounds(model, teacher, task, out: str | Path, config=None,
                    agora: AgoraConfig | None = None, *, transfer: Sequence[str] | None = None,
                    arms: Sequence[str] = ARMS,
                    log: Callable[[str], None] | None = print) -> dict:
    """bort's Agora on ``task`` from ``model`` (a student before the task), ``teacher`` (the
    source fine-tuned on it) labelling new points; returns what metrics.json records.

    First task distillation (`bort.finetune.finetune` with the ``transfer`` texts; under dev
    halves selected on the selection half only); under k-fold also the fold models, the same
    recipe without fold j's train rows. Then each of ``arms`` (`ARMS`; random after agora)
    runs its rounds from the task-distilled student. The test split is scored once per arm,
    on its final model; the one that scores best on the selection data (the task-distilled
    student on a tie) is shipped. Writes under ``out``: ``distilled/``, ``folds/``, one
    directory per arm, ``model/`` (the shipped one) and ``metrics.json``; a rerun resumes.
    Raises ConfigError on a regression task, unknown arms, or a teacher at or below 2/3 on
    the selection data (checked before any training).
    """
    from .agora import _task_metric, text_generator
    from .finetune import FinetuneConfig, _check_teacher, evaluate, with_head
    from .tokenize import load_tokenizer

    config, agora, arms = config or FinetuneConfig(), agora or AgoraConfig(), list(arms)
    _check_text(model, task, arms)
    out, log = Path(out), log or (lambda message: None)
    teacher = with_head(teacher, task)
    _check_teacher(teacher, with_head(model, task), config)
    tokenizer = load_tokenizer(model.source_dir, config.seq_len)
    data = text_rounds_data(teacher, task, tokenizer, config, agora, transfer, log)
    first = data.arms["agora"]
    problem = TextRounds(teacher, text_generator(teacher, tokenizer, agora, vocabulary=np.unique(
        np.concatenate(first.seeds.X.ids))), config, metric=task.metric)
    start, folds = _starts(model, teacher, task, out, config, agora, transfer, data.folds, log)
    metric = _task_metric(task)
    steps = json.loads((out / "distilled" / "metrics.json").read_text())["steps"]
    finals = {"distilled": (start, float(metric(problem.logits(start, first.select.X)
                                                .argmax(1), first.select.gold)),
                            {"train_steps": steps})}
    for arm in arms:
        spent = problem.steps
        result = agora_rounds(problem, start, data.arms[arm], agora, arm,
                              folds=folds if arm == "agora" else None,
                              counts=finals["agora"][2]["rounds"] if arm == "random" else None,
                              out=out / arm, metric=metric, log=log)
        finals[arm] = (result.model, result.score, {
            "best_round": result.best_round, "added": result.added, "rounds": result.rounds,
            "train_steps": problem.steps - spent})  # a resumed arm counts only this run's
    record = {"task": task.name, "metric": task.metric, **data.record, "arms": {}}
    for name, (final, score, extra) in finals.items():  # the test split, once per arm
        test, pred = evaluate(final, data.test)
        record["arms"][name] = {"selection": score, "test": test,
                                "test_correct": correct_string(pred, data.test.labels), **extra}
    record["shipped"] = shipped = max(finals, key=lambda name: finals[name][1])  # first best
    task.write_split(out)
    finals[shipped][0].save_pretrained(out / "model", card={
        "data": f"{task.name}: bort's Agora, the {shipped} arm (best on the selection data)",
        "metrics": {"test": record["arms"][shipped]["test"]}})
    write_json(out / "metrics.json", {**record, "config": config.as_dict(),
                                      "agora_config": agora.as_dict()})
    return record
