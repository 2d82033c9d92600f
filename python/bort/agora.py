"""Agora: fine-tuning that learns from its dev-set mistakes (de Wynter, 2020; never released).

For a set Θ of hyperparameter settings, each round:
1. fine-tune one model per θ in Θ on the training set (the task's plus every point added so far);
2. take the best model by dev score; collect its dev mistakes;
3. generate new points near each mistake and label them with a teacher S (whose dev accuracy
   must exceed 2/3, checked up front); add them to the training set;
4. sort Θ by this round's dev scores and remove the leading run of the ascending order that ties
   with the worst setting: at least one setting per round, so the loop ends within |Θ| rounds,
   and never all of several at once (when all tie, the first listed stays).
It stops when Θ is empty, no dev mistake remains, or after ``max_rounds``. The model with the best
dev score over all rounds is returned. Because the training set grows from the dev set, dev
scores are no longer held out: each round also logs the test score, which never feeds back into
training or selection.

The loop is generic over a `Problem` (fit, predict, generate, teacher): `TextProblem` plugs in a
`BortModel` student, a teacher and the token-sequence generators of `bort.augment`; the tests run
it on points in 3-D as well. Every round is written to ``out``: the state as JSON
(``agora-state.json``, also the readable log of the rounds), the added points as safetensors
(``agora-points.safetensors``; numpy arrays or `bort.finetune.Encoded` token sequences) and the
best model so far (``best/``). A rerun resumes after the last finished round.

Example:
    >>> config = AgoraConfig(thetas=[{"lr": 1e-4}, {"lr": 5e-5}])
    >>> result = finetune_agora(student, teacher, load_task("rotten_tomatoes"), "runs/agora",
    ...                         agora_config=config)                     # doctest: +SKIP
    >>> result.test, [r["mistakes"] for r in result.rounds]                  # doctest: +SKIP
"""

from __future__ import annotations

import json
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from .config import AgoraConfig
from .errors import CheckpointError, ConfigError, DataError
from .io import save_safetensors, write_json
from .metrics import accuracy

__all__ = ["AgoraConfig", "AgoraResult", "Problem", "TextProblem", "agora", "finetune_agora",
           "prune", "text_generator"]

#: The teacher must beat this dev accuracy (the paper's "good enough" second model).
TEACHER_THRESHOLD = 2 / 3
#: Under ``out``: the state (JSON) and the points added so far (safetensors).
STATE_FILE = "agora-state.json"
POINTS_FILE = "agora-points.safetensors"
#: The state file of bort versions that could not resume from the formats above.
_OLD_STATE_FILE = "agora-state.pkl"
_FORMAT = 2
_STATE_KEYS = ("format", "round", "remaining", "rounds", "best", "teacher_dev", "done",
               "added_points")
#: The random stream of a round's generators, apart from its fits' streams (one per θ index).
_GENERATE_STREAM = 1_000_003
#: Dev scores closer than this tie when Θ is pruned.
_TIE = 1e-12

Points = Any  # a numpy array or a bort.finetune.Encoded
Labelled = tuple[Points, np.ndarray]


class Problem(Protocol):
    """What the loop needs from a task. Points ``X`` are whatever the problem uses (an array,
    token sequences) as long as `take` and `concat` below work on them; with ``out`` they must
    be a numpy array or `bort.finetune.Encoded` (what the state file can hold)."""

    def fit(self, theta: dict, X: Any, y: np.ndarray, seed: int) -> Any:
        """A model trained on (X, y) with the settings ``theta``."""

    def predict(self, model: Any, X: Any) -> np.ndarray:
        """Class ids of X."""

    def generate(self, X: Any, y: np.ndarray, rng: np.random.Generator) -> Any:
        """New points near the points X (labels y given for context; the teacher labels)."""

    def teacher(self, X: Any) -> np.ndarray:
        """The teacher's class ids of X."""

    def save(self, model: Any, directory: Path) -> None:
        """Write ``model`` into ``directory``."""

    def load(self, directory: Path) -> Any:
        """Read a model `save` wrote."""


def take(X: Any, index: np.ndarray) -> Any:
    return X[index] if isinstance(X, np.ndarray) else X.take(index)


def concat(a: Any, b: Any) -> Any:
    if isinstance(a, np.ndarray):
        return np.concatenate([a, b])
    return a.concat(b)


def size(X: Any) -> int:
    return len(X)


@dataclass
class AgoraResult:
    """The best model over all rounds and the log of each round."""

    model: Any
    rounds: list[dict] = field(default_factory=list)
    best_round: int = 0
    dev: float = 0.0
    test: float | None = None
    test_predictions: np.ndarray | None = None


def prune(thetas: Sequence[int], scores: Sequence[float]) -> list[int]:
    """Θ after a round: sort ascending by score and drop the leading run that ties with the worst
    (at least one setting; when all of several tie, all but the first listed). Returns the kept
    settings, best first."""
    if len(thetas) != len(scores):
        raise ValueError("one score per setting is needed")
    order = sorted(range(len(thetas)), key=lambda i: (scores[i], -i))  # ties: first listed last
    worst = scores[order[0]]
    run = 1
    while run < len(order) - 1 and np.isclose(scores[order[run]], worst, rtol=0, atol=_TIE):
        run += 1
    return [thetas[i] for i in reversed(order[run:])]


def _seed(*parts: int) -> int:
    return zlib.crc32(np.asarray(parts, np.int64).tobytes())


# ---------------------------------------------------------------------- the state on disk
def _points_arrays(points: Points, labels: np.ndarray) -> tuple[dict[str, np.ndarray], str]:
    """The arrays that hold (points, labels), and the kind of points. Token sequences are
    stored flat, with ``offsets`` (n + 1 of them) marking where each one starts."""
    labels = np.asarray(labels)
    if isinstance(points, np.ndarray):
        return {"points": points, "labels": labels}, "array"
    from .finetune import Encoded

    if not isinstance(points, Encoded):
        raise TypeError(f"the Agora state holds points as a numpy array or bort.finetune.Encoded, "
                        f"not {type(points).__name__}; run without out= to keep them in memory")
    offsets = np.cumsum([0] + [len(a) for a in points.ids], dtype=np.int64)
    empty = np.zeros(0, np.int32)
    return {"ids": np.concatenate(points.ids) if len(points) else empty,
            "types": np.concatenate(points.types) if len(points) else empty,
            "offsets": offsets, "point_labels": np.asarray(points.labels),
            "labels": labels}, "encoded"


def _points_from(arrays: dict[str, np.ndarray], kind: str | None, path: Path) -> Points:
    if kind == "array" and "points" in arrays:
        return arrays["points"]
    if kind != "encoded" or not {"ids", "types", "offsets", "point_labels"} <= arrays.keys():
        raise CheckpointError(f"{path}: not an Agora points file")
    from .finetune import Encoded

    ids, types, offsets = arrays["ids"], arrays["types"], arrays["offsets"]
    if (len(offsets) != len(arrays["point_labels"]) + 1 or offsets[0] != 0
            or np.any(np.diff(offsets) < 0) or offsets[-1] != len(ids) or len(types) != len(ids)):
        raise CheckpointError(f"{path}: the token offsets do not match the tokens")
    spans = list(zip(offsets[:-1], offsets[1:]))
    return Encoded([ids[a:b] for a, b in spans], [types[a:b] for a, b in spans],
                   arrays["point_labels"])


def read_points_file(path: Path, state_file: str) -> tuple[str | None, dict[str, np.ndarray]]:
    """The kind of points and the arrays of an Agora points file (CheckpointError naming an
    unreadable one, which ``state_file`` counts)."""
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), "np") as f:
            kind, names = (f.metadata() or {}).get("kind"), f.keys()
            return kind, {k: f.get_tensor(k) for k in names}
    except (OSError, SafetensorError) as e:
        raise CheckpointError(f"{path}: unreadable Agora points ({e}); delete it and "
                              f"{state_file} to restart") from None


def read_state_file(path: Path, fmt: int, keys: Sequence[str], what: str) -> dict:
    """The JSON state at ``path``: a dict of format ``fmt`` with ``keys`` (CheckpointError
    naming a damaged file, or one that is not ``what``)."""
    try:
        state = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:  # ValueError: bad UTF-8 or JSON
        raise CheckpointError(f"{path}: unreadable Agora state ({e}); delete it to "
                              "restart") from None
    if not isinstance(state, dict) or state.get("format") != fmt or not set(keys) <= state.keys():
        raise CheckpointError(f"{path}: not {what}")
    return state


def _read_points(path: Path, count: int) -> Labelled:
    """The first ``count`` added points and their labels. The file may hold more: those of a
    round that stopped after writing its points but before its state."""
    kind, arrays = read_points_file(path, STATE_FILE)
    points, labels = _points_from(arrays, kind, path), arrays.get("labels")
    if labels is None or len(labels) != size(points) or len(labels) < count:
        raise CheckpointError(f"{path}: holds {size(points)} points and "
                              f"{'no' if labels is None else len(labels)} labels; "
                              f"{STATE_FILE} counts {count} points")
    if len(labels) > count:
        points, labels = take(points, np.arange(count)), labels[:count]
    return points, labels


def _load_state(out: Path) -> dict | None:
    """The state a previous run left in ``out``, or None; CheckpointError naming a damaged or
    foreign file."""
    path = out / STATE_FILE
    if not path.is_file():
        if (out / _OLD_STATE_FILE).is_file():
            raise CheckpointError(f"{out / _OLD_STATE_FILE}: an Agora state of an earlier bort "
                                  f"version, which this one cannot read; delete it and {out} / "
                                  "best to restart")
        return None
    state = read_state_file(path, _FORMAT, _STATE_KEYS, "an Agora state file")
    count = state.pop("added_points")
    state["added"] = _read_points(out / POINTS_FILE, count) if count else None
    return state


def _save_state(out: Path, state: dict) -> None:
    """Write the added points, then the state that counts them (see `_read_points`)."""
    added = state["added"]
    if added is not None:
        arrays, kind = _points_arrays(*added)
        save_safetensors(arrays, out / POINTS_FILE, {"kind": kind, "format": str(_FORMAT)})
    record = {k: v for k, v in state.items() if k != "added"}
    write_json(out / STATE_FILE, {**record, "added_points": size(added[0]) if added else 0})


# ---------------------------------------------------------------------- the loop
def _check_inputs(thetas: Sequence[dict], splits: dict[str, Labelled | None]) -> None:
    if not thetas:
        raise ConfigError("Agora needs at least one hyperparameter setting in Θ")
    for split, data in splits.items():
        if data is None:
            continue
        X, y = data
        if size(X) != len(y):
            raise DataError(f"the {split} split has {size(X)} points but {len(y)} labels")
        if len(y) == 0:
            raise DataError(f"the {split} split is empty; Agora learns from dev mistakes and "
                            "needs a dev set")


class _Run:
    """One `agora` call: its inputs, the state a rerun resumes from (what `_save_state`
    writes, with ``added`` the points added so far and their labels) and the best model."""

    def __init__(self, problem: Problem, thetas: Sequence[dict], train: Labelled,
                 dev: Labelled, test: Labelled | None, config: AgoraConfig, metric: Callable,
                 log: Callable[[str], None] | None):
        self.problem, self.thetas, self.config, self.metric = problem, thetas, config, metric
        self.train, self.dev, self.test = train, dev, test
        self.log = log or (lambda message: None)
        self.state: dict = {}
        self.best_model: Any = None

    def start(self, out: Path | None) -> None:
        """Resume from ``out``, or check the teacher and begin at round 1."""
        state = _load_state(out) if out is not None else None
        if state is None:
            teacher_acc = accuracy(self.problem.teacher(self.dev[0]), self.dev[1])
            if not teacher_acc > TEACHER_THRESHOLD:
                raise ConfigError(f"the teacher's dev accuracy is {teacher_acc:.4f}; Agora needs "
                                  f"a teacher above {TEACHER_THRESHOLD:.4f} to label new points")
            state = {"format": _FORMAT, "round": 0, "remaining": list(range(len(self.thetas))),
                     "added": None, "rounds": [], "best": None, "teacher_dev": teacher_acc,
                     "done": False}
            self.log(f"agora: teacher dev accuracy {teacher_acc:.4f}; |Θ| = {len(self.thetas)}")
        else:
            self.log(f"agora: resuming after round {state['round']} ({out})")
        if out is not None and state["best"]:
            self.best_model = self.problem.load(out / "best")
        self.state = state

    def pending(self) -> bool:
        state = self.state
        return (not state["done"] and state["round"] < self.config.max_rounds
                and bool(state["remaining"]))

    def training_set(self) -> Labelled:
        X, y = self.train
        if self.state["added"] is None:
            return X, y
        added, labels = self.state["added"]
        return concat(X, added), np.concatenate([y, labels])

    def fit_all(self, X: Points, y: np.ndarray) -> tuple[Any, float, int, list[float]]:
        """One model per remaining θ: the best by dev score (the first of ties), its score and
        θ, and every θ's score."""
        r, dev = self.state["round"], self.dev
        scores, best = [], None
        for i in self.state["remaining"]:
            model = self.problem.fit(self.thetas[i], X, y, _seed(self.config.seed, r, i))
            score = self.metric(self.problem.predict(model, dev[0]), dev[1])
            scores.append(score)
            self.log(f"agora round {r + 1}: θ{i} {self.thetas[i]} dev {score:.4f}")
            if best is None or score > best[1]:
                best = (model, score, i)
            del model  # only the best stays alive while the next θ trains
        return (*best, scores)

    def augment(self, mistakes: np.ndarray) -> int:
        """Add points generated near the dev mistakes, labelled by the teacher; their count."""
        rng = np.random.default_rng(_seed(self.config.seed, self.state["round"],
                                          _GENERATE_STREAM))
        new = self.problem.generate(take(self.dev[0], mistakes), self.dev[1][mistakes], rng)
        if not size(new):
            return 0
        labels = np.asarray(self.problem.teacher(new))
        added = self.state["added"]
        self.state["added"] = ((new, labels) if added is None else
                               (concat(added[0], new), np.concatenate([added[1], labels])))
        return size(new)

    def round(self, out: Path | None) -> None:
        """Run the next round and record it in the state; its best model goes to ``out``/best
        when it beats every earlier round's."""
        state, r, problem, dev = self.state, self.state["round"], self.problem, self.dev
        X, y = self.training_set()
        spent = getattr(problem, "steps", 0)
        model, score, i, scores = self.fit_all(X, y)
        mistakes = np.flatnonzero(problem.predict(model, dev[0]) != dev[1])
        entry = {"round": r + 1, "train_size": size(X), "thetas": list(state["remaining"]),
                 "dev_scores": [float(s) for s in scores], "best_theta": i, "dev": float(score),
                 "mistakes": int(len(mistakes))}
        if hasattr(problem, "steps"):  # the compute this round spent, where the problem counts it
            entry["train_steps"] = int(problem.steps - spent)
        if self.test is not None:
            entry["test"] = float(self.metric(problem.predict(model, self.test[0]), self.test[1]))
        if state["best"] is None or score > state["best"]["dev"]:
            state["best"] = {"round": r + 1, "dev": float(score), "theta": i}
            self.best_model = model
            if out is not None:
                problem.save(model, out / "best")
        state["remaining"] = prune(state["remaining"], scores)
        grow = self.config.augment and len(mistakes) and state["remaining"]  # not after the last
        entry["points_added"] = self.augment(mistakes) if grow else 0
        state["rounds"].append(entry)
        state["round"], state["done"] = r + 1, not len(mistakes)
        self.log(f"agora round {r + 1}: best θ{i} dev {score:.4f}, {len(mistakes)} mistakes, "
                 f"{entry['points_added']} points added"
                 + (f", test {entry['test']:.4f}" if "test" in entry else "")
                 + f"; Θ left {state['remaining']}")

    def result(self) -> AgoraResult:
        if self.best_model is None:
            raise ConfigError("Agora ran no round (max_rounds reached before the first)")
        best = self.state["best"]
        result = AgoraResult(self.best_model, self.state["rounds"], best["round"], best["dev"])
        if self.test is not None:
            result.test_predictions = self.problem.predict(self.best_model, self.test[0])
            result.test = float(self.metric(result.test_predictions, self.test[1]))
        return result


def agora(problem: Problem, thetas: Sequence[dict], train: tuple[Any, np.ndarray],
          dev: tuple[Any, np.ndarray], test: tuple[Any, np.ndarray] | None = None,
          config: AgoraConfig | None = None, *, out: str | Path | None = None,
          metric: Callable[[np.ndarray, np.ndarray], float] = accuracy,
          log: Callable[[str], None] | None = print) -> AgoraResult:
    """Run Agora (see the module docstring) and return the best model with each round's log.

    ``train``/``dev``/``test`` are (points, labels). ``out`` keeps the state for resuming;
    ``config`` gives ``max_rounds``, ``seed`` and ``augment`` (Θ is ``thetas``).
    Raises ConfigError on an empty Θ, DataError on an empty dev set, ConfigError when the
    teacher's dev accuracy is not above 2/3, and CheckpointError on a damaged state in ``out``.
    """
    config = config or AgoraConfig()
    _check_inputs(thetas, {"train": train, "dev": dev, "test": test})
    out = Path(out) if out is not None else None
    run = _Run(problem, thetas, train, dev, test, config, metric, log)
    run.start(out)
    while run.pending():
        run.round(out)
        if out is not None:
            _save_state(out, run.state)
    return run.result()


# ---------------------------------------------------------------------- text tasks
class TextProblem:
    """Agora on a text task: each fit fine-tunes a fresh copy of ``student`` (`bort.finetune`
    with ``config`` updated by θ, early-stopped on ``dev``); the ``teacher`` labels generated
    token sequences; ``generator`` is one of `bort.augment`'s."""

    def __init__(self, student, teacher, generator, dev, config=None, *, metric: str = "accuracy",
                 log: Callable[[str], None] | None = None):
        from .finetune import FinetuneConfig

        if teacher.arch.num_labels != student.arch.num_labels or \
                teacher.id2label != student.id2label:
            raise ConfigError(f"teacher labels {teacher.id2label} differ from the student's "
                              f"{student.id2label}")
        if teacher.arch.vocab_size != student.arch.vocab_size:
            raise ConfigError("teacher and student must read the same tokens (vocabularies "
                              f"of {teacher.arch.vocab_size} and {student.arch.vocab_size})")
        self.initial, self.teacher_model, self.generator = student, teacher, generator
        self.dev, self.config = dev, config or FinetuneConfig()
        self.metric, self.log = metric, log
        self.steps = 0  # training steps over all fits: the compute spent

    def fit(self, theta, X, y, seed):
        import copy
        from dataclasses import replace

        from .finetune import Encoded, train

        model = copy.deepcopy(self.initial)
        config = replace(self.config.updated(theta), seed=seed)
        result = train(model, Encoded(X.ids, X.types, y), self.dev, config, metric=self.metric,
                       log=self.log)
        self.steps += result.steps
        return result.model

    def predict(self, model, X):
        from .finetune import predict

        return predict(model, X).argmax(1)

    def generate(self, X, y, rng):
        return self.generator(X, rng)

    def teacher(self, X):
        return self.predict(self.teacher_model, X)

    def save(self, model, directory: Path) -> None:
        model.save_pretrained(directory)

    def load(self, directory: Path):
        from .model import BortModel

        return BortModel.from_pretrained(directory)


def text_generator(model, tokenizer, config: AgoraConfig | None = None, *,
                   vocabulary: Sequence[int] | None = None):
    """A `bort.augment.Mix` of the generators ``config.generators`` names (entries of
    `bort.augment.GENERATORS`) for ``model``'s tokens, ``config.per_point`` new points per
    point; ``vocabulary`` limits the tokens the embedding generator produces."""
    from .augment import GENERATORS, Mix

    config = config or AgoraConfig()
    return Mix([GENERATORS[name](model, tokenizer, vocabulary, config)
                for name in config.generators], per_point=config.per_point)


def _task_metric(task) -> Callable[[np.ndarray, np.ndarray], float]:
    """The score of ``task.metric`` on (predictions, labels)."""
    if task.metric == "accuracy":
        return accuracy
    from .metrics import classification_metrics

    return lambda pred, gold: classification_metrics(pred, gold, task.num_labels)[task.metric]


def _text_problem(student, teacher, task, config, agora_config: AgoraConfig):
    """The `TextProblem` of ``task`` (both models given its head) and its encoded splits."""
    import torch

    from .finetune import encode_split, with_head
    from .tokenize import load_tokenizer

    torch.manual_seed(config.seed)  # a new head's initialisation is part of the run's seed
    student = with_head(student, task)
    teacher = with_head(teacher, task)
    if student.source_dir is None:
        raise ConfigError("the student has no tokenizer: load it with BortModel.from_pretrained")
    tokenizer = load_tokenizer(student.source_dir, config.seq_len)
    data = {k: encode_split(tokenizer, getattr(task, k), config.seq_len)
            for k in ("train", "dev", "test")}
    generator = text_generator(teacher, tokenizer, agora_config,
                               vocabulary=np.unique(np.concatenate(data["train"].ids)))
    problem = TextProblem(student, teacher, generator, data["dev"], config, metric=task.metric)
    return problem, data


def finetune_agora(student, teacher, task, out: str | Path, config=None,
                   agora_config: AgoraConfig | None = None, *,
                   log: Callable[[str], None] | None = print) -> AgoraResult:
    """Fine-tune ``student`` on ``task`` with Agora, ``teacher`` (a fine-tuned model of the task)
    labelling new points. ``config`` (a `bort.finetune.FinetuneConfig`) is each fit's base,
    updated by each θ; ``agora_config`` gives Θ, the generators and the loop's settings.
    Writes ``model/`` (the best student), ``metrics.json`` (test score of the best, every
    round's log, the compute spent), ``split.json`` and the Agora state under ``out``; a rerun
    resumes after the last finished round.
    """
    from .finetune import FinetuneConfig, evaluate

    if task.regression:
        raise ConfigError(f"{task.name}: Agora needs a classification task (the teacher labels "
                          "new points with classes)")
    config = config or FinetuneConfig()
    agora_config = agora_config or AgoraConfig()
    out = Path(out)
    problem, data = _text_problem(student, teacher, task, config, agora_config)
    result = agora(problem, agora_config.thetas, (data["train"], data["train"].labels),
                   (data["dev"], data["dev"].labels), (data["test"], data["test"].labels),
                   agora_config, out=out / "agora", metric=_task_metric(task), log=log)
    test, _ = evaluate(result.model, data["test"])
    task.write_split(out)
    result.model.save_pretrained(out / "model", card={
        "data": f"fine-tuned on {task.name} with Agora", "metrics": {"test": test}})
    write_json(out / "metrics.json", {
        "task": task.name, "metric": task.metric, "agora": True, "test": test,
        "dev": result.dev, "best_round": result.best_round, "rounds": result.rounds,
        "thetas": list(agora_config.thetas), "generators": list(agora_config.generators),
        "train_steps": sum(e.get("train_steps", 0) for e in result.rounds),
        "config": config.as_dict(), "agora_config": agora_config.as_dict()})
    return result
