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
it on points in 3-D as well. Every round is written to ``out`` (the state, the added points and
the best model so far), and a rerun resumes after the last finished round.

Example:
    >>> result = finetune_agora(student, teacher, load_task("rotten_tomatoes"),
    ...                         "runs/agora", thetas=[{"lr": 1e-4}, {"lr": 5e-5}])  # doctest: +SKIP
    >>> result.test, [r["mistakes"] for r in result.rounds]                  # doctest: +SKIP
"""

from __future__ import annotations

import json
import os
import pickle
import zlib
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Protocol, Sequence

import numpy as np

from .errors import CheckpointError, ConfigError, DataError
from .metrics import accuracy

__all__ = ["AgoraConfig", "AgoraResult", "Problem", "TextProblem", "agora", "finetune_agora",
           "prune", "text_generator"]

#: The teacher must beat this dev accuracy (the paper's "good enough" second model).
TEACHER_THRESHOLD = 2 / 3


class Problem(Protocol):
    """What the loop needs from a task. Points ``X`` are whatever the problem uses (an array,
    token sequences) as long as `take` and `concat` below work on them."""

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
class AgoraConfig:
    max_rounds: int = 10
    seed: int = 0
    #: Add the generated points (True: Agora) or only retrain and reselect each round (False:
    #: the same loop and compute without the augmentation, the fair plain baseline).
    augment: bool = True

    def __post_init__(self) -> None:
        if self.max_rounds < 1:
            raise ConfigError(f"max_rounds must be >= 1, got {self.max_rounds}")


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
    while run < len(order) - 1 and np.isclose(scores[order[run]], worst, rtol=0, atol=1e-12):
        run += 1
    return [thetas[i] for i in reversed(order[run:])]


def _seed(*parts: int) -> int:
    return zlib.crc32(np.asarray(parts, np.int64).tobytes())


def _write_atomic(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _load_state(out: Path) -> dict | None:
    path = out / "agora-state.pkl"
    if not path.is_file():
        return None
    try:
        with open(path, "rb") as f:
            state = pickle.load(f)  # our own file, written by _save_state
    except Exception as e:  # unpickling fails in many ways on a damaged file
        raise CheckpointError(f"{path}: unreadable Agora state ({e}); delete it to "
                              "restart") from None
    if not isinstance(state, dict) or state.get("format") != 1:
        raise CheckpointError(f"{path}: not an Agora state file")
    return state


def agora(problem: Problem, thetas: Sequence[dict], train: tuple[Any, np.ndarray],
          dev: tuple[Any, np.ndarray], test: tuple[Any, np.ndarray] | None = None,
          config: AgoraConfig | None = None, *, out: str | Path | None = None,
          metric: Callable[[np.ndarray, np.ndarray], float] = accuracy,
          log: Callable[[str], None] | None = print) -> AgoraResult:
    """Run Agora (see the module docstring) and return the best model with each round's log.

    ``train``/``dev``/``test`` are (points, labels). ``out`` keeps the state for resuming.
    Raises ConfigError on an empty Θ, DataError on an empty dev set, and ConfigError when the
    teacher's dev accuracy is not above 2/3.
    """
    config = config or AgoraConfig()
    if not thetas:
        raise ConfigError("Agora needs at least one hyperparameter setting in Θ")
    for split, (X, y) in (("train", train), ("dev", dev)) + ((("test", test),) if test else ()):
        if size(X) != len(y):
            raise DataError(f"the {split} split has {size(X)} points but {len(y)} labels")
        if len(y) == 0:
            raise DataError(f"the {split} split is empty; Agora learns from dev mistakes and "
                            "needs a dev set")
    out = Path(out) if out is not None else None
    state = _load_state(out) if out is not None else None
    if state is None:
        teacher_acc = accuracy(problem.teacher(dev[0]), dev[1])
        if not teacher_acc > TEACHER_THRESHOLD:
            raise ConfigError(f"the teacher's dev accuracy is {teacher_acc:.4f}; Agora needs a "
                              f"teacher above {TEACHER_THRESHOLD:.4f} to label new points")
        state = {"format": 1, "round": 0, "remaining": list(range(len(thetas))),
                 "added": None, "rounds": [], "best": None, "teacher_dev": teacher_acc,
                 "done": False}
        if log:
            log(f"agora: teacher dev accuracy {teacher_acc:.4f}; |Θ| = {len(thetas)}")
    elif log:
        log(f"agora: resuming after round {state['round']} ({out})")
    best_model = problem.load(out / "best") if out is not None and state["best"] else None

    while not state["done"]:
        r = state["round"]
        if r >= config.max_rounds or not state["remaining"]:
            break
        X, y = train
        if state["added"] is not None:
            X, y = concat(X, state["added"][0]), np.concatenate([y, state["added"][1]])
        scores, round_best = [], None
        spent = getattr(problem, "steps", 0)
        for i in state["remaining"]:
            model = problem.fit(thetas[i], X, y, _seed(config.seed, r, i))
            score = metric(problem.predict(model, dev[0]), dev[1])
            scores.append(score)
            if log:
                log(f"agora round {r + 1}: θ{i} {thetas[i]} dev {score:.4f}")
            if round_best is None or score > round_best[1]:
                round_best = (model, score, i)
            del model
        model, score, i = round_best
        pred = problem.predict(model, dev[0])
        mistakes = np.flatnonzero(pred != dev[1])
        entry = {"round": r + 1, "train_size": size(X), "thetas": list(state["remaining"]),
                 "dev_scores": [float(s) for s in scores], "best_theta": i, "dev": float(score),
                 "mistakes": int(len(mistakes))}
        if hasattr(problem, "steps"):  # the compute this round spent, where the problem counts it
            entry["train_steps"] = int(problem.steps - spent)
        if test is not None:
            entry["test"] = float(metric(problem.predict(model, test[0]), test[1]))
        if state["best"] is None or score > state["best"]["dev"]:
            state["best"] = {"round": r + 1, "dev": float(score), "theta": i}
            best_model = model
            if out is not None:
                problem.save(model, out / "best")
        added = 0
        state["remaining"] = prune(state["remaining"], scores)
        if config.augment and len(mistakes) and state["remaining"]:  # not after the last round
            rng = np.random.default_rng(_seed(config.seed, r, 1_000_003))
            new = problem.generate(take(dev[0], mistakes), dev[1][mistakes], rng)
            if size(new):
                labels = np.asarray(problem.teacher(new))
                added = size(new)
                state["added"] = ((new, labels) if state["added"] is None else
                                  (concat(state["added"][0], new),
                                   np.concatenate([state["added"][1], labels])))
        entry["points_added"] = added
        state["rounds"].append(entry)
        state["round"] = r + 1
        state["done"] = not len(mistakes)
        if log:
            log(f"agora round {r + 1}: best θ{i} dev {score:.4f}, {len(mistakes)} mistakes, "
                f"{added} points added" + (f", test {entry['test']:.4f}" if test else "")
                + f"; Θ left {state['remaining']}")
        if out is not None:
            out.mkdir(parents=True, exist_ok=True)
            _write_atomic(out / "agora-state.pkl", pickle.dumps(state))
            _write_atomic(out / "agora.json", (json.dumps(
                {k: v for k, v in state.items() if k != "added"}, indent=1) + "\n").encode())
    state["done"] = True
    if best_model is None:
        raise ConfigError("Agora ran no round (max_rounds reached before the first)")
    result = AgoraResult(best_model, state["rounds"], state["best"]["round"],
                         state["best"]["dev"])
    if test is not None:
        result.test_predictions = problem.predict(best_model, test[0])
        result.test = float(metric(result.test_predictions, test[1]))
    return result


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


#: Generators by name, for `finetune_agora` and the CLI.
GENERATORS = ("embedding", "dropout", "swap", "synonyms")


def text_generator(names: Sequence[str], model, tokenizer, *, quantile: float = 0.5,
                   rate: float = 0.15, per_point: int = 8, vocabulary: Sequence[int] | None = None):
    """A `bort.augment.Mix` of the named generators (see `GENERATORS`) for ``model``'s tokens;
    ``vocabulary`` limits the tokens the embedding generator produces."""
    from .augment import EmbeddingNeighbours, Mix, SpanSwap, Synonyms, TokenDropout, marked_tokens

    unknown = sorted(set(names) - set(GENERATORS))
    if unknown or not names:
        raise ConfigError(f"unknown generators {unknown or names} (choose from {GENERATORS})")
    special = marked_tokens(tokenizer)
    made = []
    for name in names:
        if name == "embedding":
            made.append(EmbeddingNeighbours.of(model, tokenizer, vocabulary, quantile=quantile,
                                               rate=rate))
        elif name == "dropout":
            made.append(TokenDropout(special, rate=rate))
        elif name == "swap":
            made.append(SpanSwap(special))
        else:
            made.append(Synonyms(tokenizer, special, rate=rate))
    return Mix(made, per_point=per_point)


#: Θ by default: three learning rates, the rest of the fine-tuning config as given.
DEFAULT_THETAS = [{"lr": 1e-4}, {"lr": 5e-5}, {"lr": 2e-5}]


def finetune_agora(student, teacher, task, out: str | Path, config=None, *,
                   thetas: Sequence[dict] = DEFAULT_THETAS, agora_config: AgoraConfig | None = None,
                   generators: Sequence[str] = ("embedding",), quantile: float = 0.5,
                   per_point: int = 8, log: Callable[[str], None] | None = print) -> AgoraResult:
    """Fine-tune ``student`` on ``task`` with Agora, ``teacher`` (a fine-tuned model of the task)
    labelling new points. Writes ``model/`` (the best student), ``metrics.json`` (test score of
    the best, every round's log, the compute spent), ``split.json`` and the Agora state under
    ``out``; a rerun resumes after the last finished round.
    """
    from .finetune import FinetuneConfig, encode_split, evaluate, with_head
    from .metrics import classification_metrics
    from .model import _write_text_atomic
    from .tokenize import load_tokenizer

    if task.regression:
        raise ConfigError(f"{task.name}: Agora needs a classification task (the teacher labels "
                          "new points with classes)")
    config = config or FinetuneConfig()
    out = Path(out)
    import torch

    torch.manual_seed(config.seed)  # a new head's initialisation is part of the run's seed
    student = with_head(student, task)
    teacher = with_head(teacher, task)
    if student.source_dir is None:
        raise ConfigError("the student has no tokenizer: load it with BortModel.from_pretrained")
    tokenizer = load_tokenizer(student.source_dir, config.seq_len)
    data = {k: encode_split(tokenizer, getattr(task, k), config.seq_len)
            for k in ("train", "dev", "test")}
    generator = text_generator(generators, teacher, tokenizer, quantile=quantile,
                               per_point=per_point,
                               vocabulary=np.unique(np.concatenate(data["train"].ids)))
    problem = TextProblem(student, teacher, generator, data["dev"], config, metric=task.metric)
    metric_fn = {"accuracy": accuracy}.get(task.metric) or (
        lambda p, g: classification_metrics(p, g, task.num_labels)[task.metric])
    result = agora(problem, thetas, (data["train"], data["train"].labels),
                   (data["dev"], data["dev"].labels), (data["test"], data["test"].labels),
                   agora_config, out=out / "agora", metric=metric_fn, log=log)
    test, _ = evaluate(result.model, data["test"])
    task.write_split(out)
    result.model.save_pretrained(out / "model", card={
        "data": f"fine-tuned on {task.name} with Agora", "metrics": {"test": test}})
    _write_text_atomic(out / "metrics.json", json.dumps({
        "task": task.name, "metric": task.metric, "agora": True, "test": test,
        "dev": result.dev, "best_round": result.best_round, "rounds": result.rounds,
        "thetas": list(thetas), "generators": list(generators),
        "train_steps": sum(e.get("train_steps", 0) for e in result.rounds),
        "config": asdict(config)}, indent=1) + "\n")
    return result
