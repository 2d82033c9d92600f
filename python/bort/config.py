"""One settings class per stage: the single home of every default.

Each class is a dataclass checked in ``__post_init__`` (types from the annotations, ranges and
choices from each field's `setting`), so a bad value gets the same `ConfigError` whether it came
from the Python API, a ``bort`` command line (`bort.cli` builds its options from these fields,
defaults and help included) or a pipeline TOML file (whose sections are these classes).

Example:
    >>> DistillConfig(steps=200).updated({"lr": 3e-4}).lr
    0.0003
    >>> DistillConfig(steps=0)
    Traceback (most recent call last):
    ...
    bort.errors.ConfigError: distillation: steps must be >= 1, got 0
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, TypeVar, Union

from .errors import ConfigError

if TYPE_CHECKING:
    from .arch import Arch

__all__ = ["AgoraConfig", "BenchConfig", "DistillConfig", "ExportConfig", "FinetuneConfig",
           "SearchConfig", "Settings", "TrainingConfig", "read_toml", "setting"]

S = TypeVar("S", bound="Settings")


def setting(default: Any, help: str, *, minimum: float | None = None,
            maximum: float | None = None, above: float | None = None,
            below: float | None = None,
            choices: Callable[[], Sequence[str]] | Sequence[str] | None = None,
            flag: str | None = None, cli: bool = True,
            factory: Callable[[], Any] | None = None) -> Any:
    """A settings field: its default and help text, and what values it accepts.

    ``minimum``/``maximum`` bound it inclusively, ``above``/``below`` exclusively; ``choices``
    lists the allowed strings (a callable reads a registry when checked, so entries added later
    count).
    ``flag`` renames its command-line option; ``cli=False`` keeps it off the command line.
    Lists and dicts are copied per instance; ``factory`` makes the default when it is read from
    elsewhere (a registry), with ``default`` then ignored."""
    meta = {"help": help, "minimum": minimum, "maximum": maximum, "above": above, "below": below,
            "choices": choices, "flag": flag, "cli": cli}
    if factory is not None:
        return field(default_factory=factory, metadata=meta)
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda: _copy(default), metadata=meta)
    return field(default=default, metadata=meta)


def _copy(value: Any) -> Any:
    if isinstance(value, list):
        return [_copy(v) for v in value]
    if isinstance(value, dict):
        return {k: _copy(v) for k, v in value.items()}
    return value


def choices_of(f: dataclasses.Field) -> tuple[str, ...] | None:
    """The allowed values of a field, reading its registry now."""
    choices = f.metadata.get("choices")
    if choices is None:
        return None
    return tuple(choices() if callable(choices) else choices)


def _type_name(hint: Any) -> str:
    names = {int: "an integer", float: "a number", str: "a string", bool: "true or false",
             dict: "a table", list: "a list"}
    return names.get(hint, getattr(hint, "__name__", str(hint)))


def _coerce(where: str, value: Any, hint: Any) -> Any:
    """``value`` checked against the annotation ``hint`` (ints pass as floats; tuples as lists)."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        (hint,) = [a for a in args if a is not type(None)]
        origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin is list:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where} must be a list, got {value!r}")
        return [_coerce(f"{where}[{i}]", v, args[0] if args else Any) for i, v in enumerate(value)]
    if hint is Any or (isinstance(hint, type) and issubclass(hint, Settings)):
        return value
    if hint is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if hint is dict and isinstance(value, Mapping):
        return dict(value)
    ok = isinstance(value, hint) and not (hint is int and isinstance(value, bool))
    if not ok:
        raise ConfigError(f"{where} must be {_type_name(hint)}, got {value!r}")
    return value


def _check_range(where: str, value: Any, meta: Mapping[str, Any]) -> None:
    values = value if isinstance(value, list) else [value]
    for v in values:
        if not isinstance(v, (int, float)) or isinstance(v, bool):
            continue
        if isinstance(v, float) and not math.isfinite(v):
            raise ConfigError(f"{where} must be finite, got {v}")
        if meta.get("minimum") is not None and v < meta["minimum"]:
            raise ConfigError(f"{where} must be >= {meta['minimum']:g}, got {v:g}")
        if meta.get("maximum") is not None and v > meta["maximum"]:
            raise ConfigError(f"{where} must be <= {meta['maximum']:g}, got {v:g}")
        if meta.get("above") is not None and v <= meta["above"]:
            raise ConfigError(f"{where} must be > {meta['above']:g}, got {v:g}")
        if meta.get("below") is not None and v >= meta["below"]:
            raise ConfigError(f"{where} must be < {meta['below']:g}, got {v:g}")


class Settings:
    """Base of the stage settings: checks every field against its annotation and `setting`,
    then the class's own `validate`; `updated` makes a checked copy with new values."""

    #: How messages name this class ("distillation: steps must be ...").
    title: ClassVar[str] = "settings"

    def __post_init__(self) -> None:
        hints = typing.get_type_hints(type(self))
        for f in fields(self):  # type: ignore[arg-type]
            where = f"{self.title}: {f.name}"
            value = _coerce(where, getattr(self, f.name), hints[f.name])
            _check_range(where, value, f.metadata)
            allowed = choices_of(f)
            if allowed is not None:
                for v in value if isinstance(value, list) else [value]:
                    if v is not None and v not in allowed:
                        raise ConfigError(f"{where}: unknown value {v!r} (choose from: "
                                          f"{', '.join(allowed)})")
            object.__setattr__(self, f.name, value)
        self.validate()

    def validate(self) -> None:
        """Rules between fields; a subclass raises ConfigError here."""

    def updated(self: S, values: Mapping[str, Any], where: str | None = None) -> S:
        """A checked copy with ``values`` applied; a nested section takes a mapping. Unknown
        names raise ConfigError naming ``where`` (default: this class's title)."""
        where = where or self.title
        known = {f.name for f in fields(self)}  # type: ignore[arg-type]
        changes = {}
        for key, value in values.items():
            if key not in known:
                raise ConfigError(f"{where}: unknown setting {key!r} (known: "
                                  f"{', '.join(sorted(known))})")
            current = getattr(self, key)
            if isinstance(current, Settings):
                if not isinstance(value, Mapping):
                    raise ConfigError(f"{where}: [{key}] must be a table of settings")
                value = current.updated(value, f"{where} [{key}]")
            changes[key] = value
        return replace(self, **changes)  # type: ignore[type-var]

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)  # type: ignore[call-overload]


def read_toml(path: str | Path) -> dict[str, Any]:
    """A TOML file as a dict, with errors that name the file."""
    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10
        import tomli as tomllib
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"settings file not found: {path}")
    try:
        return tomllib.loads(path.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{path}: not valid TOML ({e})") from None


# ---------------------------------------------------------------------- registries, read late
def _spaces() -> tuple[str, ...]:
    from .space import SPACES

    return SPACES.names()


def _costs() -> tuple[str, ...]:
    from .costs import COSTS

    return COSTS.names()


def _runtimes() -> tuple[str, ...]:
    from .bench import RUNTIMES

    return RUNTIMES.names()


def _generators() -> tuple[str, ...]:
    from .augment import GENERATORS

    return GENERATORS.names()


# ---------------------------------------------------------------------- the stages
@dataclass
class SearchConfig(Settings):
    """The Bort search (`bort.search.optimal_subarchitecture`, `bort search`)."""

    title: ClassVar[str] = "search"
    space: str = setting("layerwise", "search space (bort.space.SPACES)", choices=_spaces)
    cost: str = setting("flops", "inference cost i of the frontier table (bort.costs.COSTS)",
                        choices=_costs)
    epsilon: float = setting(0.01, "approximation ε of the frontier table: every architecture "
                             "has a candidate within (1+ε)× its cost and no worse error proxy",
                             minimum=0)
    representatives: int = setting(8, "candidates evaluated, one per interval of the front",
                                   minimum=1)
    steps: int = setting(50, "distillation steps per representative (its surrogate error)",
                         minimum=1)
    rungs: int = setting(1, "successive halving: after the first rung, each keeps the better "
                         "half of the candidates and trains them twice as long", minimum=1)
    seed: int = setting(0, "seed of the surrogate runs")
    max_params: int | None = setting(None, "largest parameter count allowed", minimum=1)
    max_latency_ms: float | None = setting(None, "largest latency allowed (needs cost latency)",
                                           minimum=0)
    min_speedup: float | None = setting(None, "smallest cost ratio source / candidate allowed",
                                        minimum=1)
    hiddens: list[int] | None = setting(None, "hidden sizes the space chooses from (default: "
                                        "the source's for layerwise, its x 1/2, 3/4, 1 for "
                                        "uniform; bort has the paper's)", minimum=1)
    sample_lines: int = setting(64, "corpus lines that measure the source's unit importance",
                                minimum=1)
    choose: str = setting("w", "the rule that picks the optimum among the evaluated: w (the "
                          "paper's W-coefficient), accurate (the lowest surrogate error that "
                          "meets the constraints), fastest (the cheapest within `within` of the "
                          "lowest error)", choices=("w", "accurate", "fastest"))
    within: float = setting(0.02, "for choose fastest: the error allowed above the lowest, as "
                            "a share of it", minimum=0)

    def validate(self) -> None:
        if self.max_latency_ms is not None and self.cost != "latency":
            raise ConfigError("search: max_latency_ms needs cost 'latency' (a measured table)")

    def space_of(self, source: Arch) -> Any:  # a LayerwiseSpace or UniformSpace
        """The search space (`bort.space.SPACES`) this config names, cut from ``source``, at
        ``hiddens`` when set (passed to the entry as ``hiddens=``)."""
        from .space import SPACES

        build = SPACES[self.space]
        return build(source) if self.hiddens is None else build(source, hiddens=self.hiddens)


@dataclass
class TrainingConfig(Settings):
    """What the training loops share: batch, length, AdamW's decay, the clip, bf16."""

    batch_size: int = setting(32, "sequences per step, over all ranks", minimum=1)
    seq_len: int = setting(128, "tokens per sequence (longer ones are cut)", minimum=2)
    weight_decay: float = setting(0.01, "AdamW weight decay (none on LayerNorm and biases)",
                                  minimum=0)
    clip: float = setting(1.0, "gradient norm clip", minimum=0)
    bf16: bool = setting(False, "bf16 autocast for the model being trained")


@dataclass
class DistillConfig(TrainingConfig):
    """General distillation on a text corpus (`bort.distill.distill`, `bort distill`)."""

    title: ClassVar[str] = "distillation"
    steps: int = setting(1000, "optimizer steps", minimum=1)
    lr: float = setting(1e-4, "peak learning rate of AdamW", above=0)
    warmup: float = setting(0.01, "share of the steps spent warming the learning rate up",
                            minimum=0, maximum=1)
    mask_rate: float = setting(0.15, "share of tokens masked in the input both models read",
                               minimum=0, below=1)
    hidden_weight: float = setting(1.0, "weight of the hidden-state MSE", minimum=0)
    attention_weight: float = setting(1.0, "weight of the attention KL", minimum=0)
    mlm_weight: float = setting(0.1, "weight of the MLM cross-entropy (Bort's release: 0.1)",
                                minimum=0)
    logit_weight: float = setting(0.5, "weight of T²·KL of the MLM logits", minimum=0)
    temperature: float = setting(2.0, "temperature T of the logit KL", above=0)
    eval_every: int = setting(100, "steps between held-out evaluations", minimum=1)
    eval_sequences: int = setting(64, "held-out sequences per evaluation", minimum=1)
    checkpoint_every: int = setting(200, "steps between checkpoints", minimum=1)
    seed: int = setting(0, "seed of data order, masks and initialisation")


@dataclass
class FinetuneConfig(TrainingConfig):
    """Fine-tuning on a labelled task (`bort.finetune.finetune`, `bort finetune`)."""

    title: ClassVar[str] = "fine-tuning"
    lr: float = setting(5e-5, "peak learning rate of AdamW", above=0)
    epochs: float = setting(3.0, "passes over the training split (a fraction is allowed)",
                            above=0)
    warmup: float = setting(0.1, "share of the steps spent warming the learning rate up",
                            minimum=0, maximum=1)
    patience: int = setting(2, "evaluations without a better dev score before stopping",
                            minimum=1)
    evals_per_epoch: int = setting(1, "dev evaluations per epoch", minimum=1)
    seed: int = setting(0, "seed of data order and the new head")
    freeze_word_embeddings: bool = setting(
        False, "keep the word embeddings as they are: a small student's steps cost a fraction "
        "(Adam's update of a 30k-row table dominates them), and words the task never shows "
        "keep their place next to those it does")
    alpha: float = setting(0.5, "task distillation (with a teacher): weight of the gold labels' "
                           "cross-entropy; 1 - alpha weighs T²·KL(teacher ‖ student)",
                           minimum=0, maximum=1)
    temperature: float = setting(2.0, "task distillation: temperature T of the soft labels",
                                 above=0)
    pooled_weight: float = setting(0.0, "task distillation: weight of the MSE between the "
                                   "student's and the teacher's pooled vectors", minimum=0)
    transfer_limit: int = setting(20000, "task distillation: most unlabelled transfer texts "
                                  "the teacher labels", minimum=0)
    augment_copies: int = setting(0, "task distillation: augmented copies of each training "
                                  "example (bort.augment: embedding neighbours, token dropout, "
                                  "span swap) added to the set the teacher labels", minimum=0)


@dataclass
class AgoraConfig(Settings):
    """Agora's loop around fine-tuning (`bort.agora`, `bort finetune --agora`)."""

    title: ClassVar[str] = "Agora"
    thetas: list[dict] = setting([{"lr": 1e-4}, {"lr": 5e-5}, {"lr": 2e-5}],
                                 'Θ: fine-tuning settings to try, as JSON, e.g. [{"lr": 1e-4}]')
    max_rounds: int = setting(10, "at most this many rounds", minimum=1, flag="--rounds")
    generators: list[str] = setting(["embedding"], "how new points are made near each mistake "
                                    "(bort.augment.GENERATORS)", choices=_generators)
    quantile: float = setting(0.5, "embedding ball radius, as this quantile of the table's "
                              "nearest-neighbour distances", above=0, maximum=1)
    per_point: int = setting(8, "new points per mistake", minimum=1)
    rate: float = setting(0.15, "share of a point's tokens a generator edits", minimum=0,
                          maximum=1)
    seed: int = setting(0, "seed of the fits and the generators")
    augment: bool = setting(True, "add the new points (false: the same loop and compute "
                            "without them, the fair plain baseline)", cli=False)
    # bort's Agora-style rounds (bort.agora_style); the paper's loop reads the settings above
    selection: str = setting("halves", "where bort's Agora seeks mistakes without touching the "
                             "data that selects: 'halves' (dev split into a generation and a "
                             "selection half) or 'kfold' (out-of-fold mistakes on train)",
                             choices=("halves", "kfold"))
    folds: int = setting(3, "folds of the k-fold cross-fitting", minimum=2)
    neighbours: int = setting(8, "real pool sentences retrieved per mistake, nearest in the "
                              "teacher's pooled-vector space", minimum=0)
    confidence: float = setting(0.7, "the teacher's top probability a new point needs",
                                minimum=0, maximum=1)
    share: float = setting(0.5, "most share of a round's training rows that are added points",
                           above=0, maximum=1)
    round_rows: int = setting(3200, "training rows of each round (a replayed sample of the "
                              "task-distillation set, plus the added points)", minimum=1)

    def validate(self) -> None:
        if not self.thetas:
            raise ConfigError("Agora: needs at least one hyperparameter setting in thetas (Θ)")
        if not self.generators:
            raise ConfigError("Agora: generators is empty")
        for theta in self.thetas:
            FinetuneConfig().updated(theta, "Agora: thetas")


@dataclass
class BenchConfig(Settings):
    """Latency side by side (`bort.bench`, `bort bench`)."""

    title: ClassVar[str] = "bench"
    lengths: list[int] = setting([16, 128], "sequence lengths, one shape each", minimum=1)
    batch: int = setting(1, "sequences per call", minimum=1)
    threads: list[int] = setting([1], "thread counts", minimum=1)
    rounds: int = setting(50, "interleaved timing rounds (medians over them)", minimum=1)
    runtimes: list[str] = setting(None, "runtimes to time (default: every one in "
                                  "bort.bench.RUNTIMES)", choices=_runtimes,
                                  factory=lambda: list(_runtimes()))

    def shapes(self) -> dict[str, list[int]]:
        """``{"BxN": [N] * B}`` per length."""
        return {f"{self.batch}x{n}": [n] * self.batch for n in self.lengths}


@dataclass
class ExportConfig(Settings):
    """ONNX export (`bort.export.export_onnx`, `bort export`)."""

    title: ClassVar[str] = "export"
    opset: int = setting(18, "ONNX opset (torch's exporter needs >= 17)", minimum=17)
