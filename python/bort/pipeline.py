"""The main job, end to end: a source model → a chosen, trained, exported, benchmarked small one.

Stages (each writes under ``runs/<name>/<stage>/`` and is recorded in ``pipeline.json`` when it
finishes; a rerun skips finished stages and resumes an interrupted one from its checkpoints):

1. ``teacher``  fine-tune the source on the task (cached across runs by source, task, split and
   settings): the teacher S that Agora needs;
2. ``search``   the Bort search over the source's sub-architectures: by default the most
   accurate candidate (surrogate error) that is at least 10× faster than the source, timed with
   bort's encoder at 1 × 128 tokens on 1 thread (the paper's W pick is reported beside it);
3. ``extract``  the chosen architecture initialised from the source's weights;
4. ``distill``  distillation from the source on the corpus;
5. ``finetune`` the student: task distillation from the teacher's soft labels over the train
   split and unlabelled in-domain text (``[student]``), then bort's Agora from it beside its
   random and distillation controls (``[agora]``, `bort.agora_style`) and plain fine-tuning;
   the arm best on the selection data (the half of dev no arm trained on) is shipped;
6. ``export``   ONNX files of the source and the student;
7. ``bench``    latency of source and student under torch, ONNX Runtime and bort (fp32, bf16,
   int8), and the student's test accuracy in each bort dtype;
8. ``report``   ``report.md`` with the tables, and PNGs (front, training curves, latency)
   (`bort.report`).

With ``task = "embedding"`` the student learns the source's sentence embeddings instead: the
source is the teacher, and the student is scored by cosine and teacher-neighbour recall@10 on
held-out corpus passages (`bort.embedding`).

Settings come from `PipelineConfig`: top-level fields, and one section per stage that *is* the
stage's settings class (a TOML file overrides any field; `PipelineConfig.quick` is the
few-minute version `make test` runs). The top-level ``seed`` is every stage's seed.

Example:
    >>> run_pipeline(PipelineConfig.quick())        # doctest: +SKIP
    PosixPath('runs/quick/report.md')
"""

from __future__ import annotations

import hashlib
import json
import shutil
import time
import typing
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from .config import (
    AgoraConfig,
    BenchConfig,
    DistillConfig,
    FinetuneConfig,
    SearchConfig,
    Settings,
    read_toml,
    setting,
)
from .errors import ConfigError
from .io import write_json

__all__ = ["NEEDS", "STAGES", "PipelineConfig", "open_run", "run_pipeline"]

STAGES = ("teacher", "search", "extract", "distill", "finetune", "export", "bench", "report")
#: The stages whose results each stage reads.
NEEDS = {"search": ("teacher",), "extract": ("search",), "distill": ("extract",),
         "finetune": ("teacher", "distill"), "export": ("finetune",),
         "bench": ("export", "finetune"),
         "report": ("teacher", "search", "distill", "finetune", "bench")}
#: Stages whose results live outside the run directory (the cached teacher) or are only a file.
_KEEP_ON_REDO = ("teacher", "report")
#: The task-distilled arm: every other arm starts from it, and it is shipped unless another
#: arm beats it on the selection data.
STUDENT_ARM = "distilled"
#: Lines of the corpus held out for the distillation loss.
HELD_OUT = 0.002
#: ... and for an embedding student, whose dev and test passages they also are (~2,300 lines of
#: the default corpus).
EMBEDDING_HELD_OUT = 0.025


def _demo_bench() -> BenchConfig:
    # the peers a user compares with; OpenVINO and the other variants are `make bench`'s
    return BenchConfig(runtimes=["torch-fp32", "ort-fp32", "ort-int8", "bort-fp32",
                                 "bort-bf16", "bort-int8"])


@dataclass
class PipelineConfig(Settings):
    """Every setting of a pipeline run: top-level fields, plus one section per stage."""

    title: ClassVar[str] = "pipeline"
    name: str = setting("demo", "run name: results go to OUT/NAME")
    source: str | None = setting(None, "source model directory (default: the installed "
                                 "all-MiniLM-L6-v2)")
    task: str = setting("rotten_tomatoes", "installed dataset (bort.data.TASKS), GLUE directory, "
                        "CSV/TSV/JSONL file(s), or 'embedding' (a student of the source's "
                        "sentence embeddings)")
    corpus: list[str] | None = setting(None, "distillation text files (default: the installed "
                                       "default corpus)")
    seed: int = setting(0, "seed of every stage")
    threads: int = setting(2, "torch threads for the training stages", minimum=1)
    max_train: int | None = setting(None, "cap on the training split (seeded, stratified)",
                                    minimum=1)
    max_eval: int | None = setting(None, "cap on the dev and test splits", minimum=1)
    out: str = setting("runs", "runs directory")
    plain_baseline: bool = setting(True, "beside Agora, also fine-tune the student without the "
                                   "teacher (cross-entropy on the same gold data)")
    teacher: FinetuneConfig = field(default_factory=lambda: FinetuneConfig(
        epochs=2.0, seq_len=64, evals_per_epoch=2))
    agora_arms: bool = setting(True, "run bort's Agora and its random and distillation "
                               "controls from the task-distilled student, and ship the arm best "
                               "on the selection data (false: task distillation only)")
    search: SearchConfig = field(default_factory=lambda: SearchConfig(
        representatives=10, steps=60, rungs=2, cost="latency", min_speedup=10.0,
        choose="accurate"))
    distill: DistillConfig = field(default_factory=lambda: DistillConfig(
        steps=400, batch_size=16, seq_len=64, lr=5e-4, eval_every=100, checkpoint_every=100))
    # frozen word embeddings and 60,000 transfer sentences: dev 0.7923 -> 0.8040 -> 0.8122 on
    # one 2-head student, one seed; 4 epochs instead of 2: +1.06 dev points in each of 2 seeds
    # (bench/results/README.md, "The pipeline")
    student: FinetuneConfig = field(default_factory=lambda: FinetuneConfig(
        lr=2e-4, epochs=4.0, seq_len=64, evals_per_epoch=2, patience=3, transfer_limit=60000,
        freeze_word_embeddings=True))
    # each round's fits keep 2 epochs of their 3,200 rows: the arms cost what they were measured at
    agora: AgoraConfig = field(default_factory=lambda: AgoraConfig(
        thetas=[{"lr": 2e-4, "epochs": 2}, {"lr": 1e-4, "epochs": 2}, {"lr": 5e-5, "epochs": 2}],
        max_rounds=3))
    bench: BenchConfig = field(default_factory=_demo_bench)

    @classmethod
    def sections(cls) -> tuple[str, ...]:
        """The names of the per-stage sections (TOML tables)."""
        hints = typing.get_type_hints(cls)
        return tuple(f.name for f in fields(cls) if isinstance(hints[f.name], type)
                     and issubclass(hints[f.name], Settings))

    @classmethod
    def quick(cls, **overrides: Any) -> PipelineConfig:
        """The few-minute run (`bort pipeline --quick`): small splits, short training."""
        return cls().updated({
            "name": "quick", "max_train": 480, "max_eval": 160, "agora_arms": True,
            "teacher": {"lr": 2e-4, "epochs": 3, "batch_size": 16, "evals_per_epoch": 1,
                        "patience": 3},
            # a lower bound than the default's: timed end to end, 3 candidates near 10× can all
            # miss it on a busy machine, and the quick run checks the mechanics
            "search": {"representatives": 3, "steps": 4, "rungs": 1, "min_speedup": 4.0},
            "distill": {"steps": 40, "eval_every": 20, "checkpoint_every": 20},
            "student": {"epochs": 1, "batch_size": 16, "evals_per_epoch": 1,
                        "transfer_limit": 480},
            "agora": {"thetas": [{"lr": 3e-4}, {"lr": 1e-4}], "max_rounds": 2, "per_point": 2,
                      "neighbours": 2, "round_rows": 240},
            "bench": {"lengths": [16, 64], "rounds": 3,
                      "runtimes": ["torch-fp32", "ort-fp32", "bort-fp32", "bort-bf16",
                                   "bort-int8"]},
            **overrides})

    @classmethod
    def from_toml(cls, path: str | Path, *, quick: bool = False) -> PipelineConfig:
        """Defaults (or `quick`), overridden by a TOML file: top-level keys and one table per
        section."""
        return (cls.quick() if quick else cls()).updated(read_toml(path), where=str(path))

    @classmethod
    def load(cls, path: str | Path | None = None, *, quick: bool = False) -> PipelineConfig:
        """`from_toml` when a file is given, else the defaults or `quick`."""
        if path is not None:
            return cls.from_toml(path, quick=quick)
        return cls.quick() if quick else cls()

    def stage(self, name: str) -> Any:
        """A section with the run's seed."""
        return replace(getattr(self, name), seed=self.seed)


def _subset(task, config: PipelineConfig):
    """The task with its splits capped at max_train / max_eval (seeded, stratified)."""
    from .data import stratified_split

    def cap(split, n):
        if n is None or len(split) <= n:
            return split
        keep, _ = stratified_split(split.labels, (n / len(split), 1 - n / len(split)),
                                   config.seed)
        return split.subset(keep)

    return replace(task, train=cap(task.train, config.max_train),
                   dev=cap(task.dev, config.max_eval), test=cap(task.test, config.max_eval))


class Run:
    """The run directory, its record of finished stages, and the objects stages share (each
    made once, on first use)."""

    def __init__(self, config: PipelineConfig, log: Callable[[str], None]):
        self.config, self.log = config, log
        self.dir = Path(config.out) / config.name
        self.dir.mkdir(parents=True, exist_ok=True)
        self.record_path = self.dir / "pipeline.json"
        self.record = (json.loads(self.record_path.read_text()) if self.record_path.is_file()
                       else {"stages": {}})
        self.record["config"] = config.as_dict()
        self._cache: dict[str, Any] = {}

    def done(self, stage: str) -> bool:
        return stage in self.record["stages"]

    def finish(self, stage: str, seconds: float, result: dict) -> None:
        self.record["stages"][stage] = {"seconds": seconds, **result}
        write_json(self.record_path, self.record)

    def forget(self, stages: Sequence[str]) -> None:
        """Drop the results of ``stages`` (their directories too) so they run again."""
        for stage in stages:
            self.record["stages"].pop(stage, None)
            if stage not in _KEEP_ON_REDO:
                shutil.rmtree(self.dir / stage, ignore_errors=True)
        write_json(self.record_path, self.record)

    def result(self, stage: str) -> dict:
        return self.record["stages"][stage]

    def _once(self, key: str, make: Callable[[], Any]) -> Any:
        if key not in self._cache:
            self._cache[key] = make()
        return self._cache[key]

    @property
    def embedding(self) -> bool:
        """Whether the run makes an embedding student (``task = "embedding"``)."""
        from .data import EMBEDDING_TASK

        return self.config.task == EMBEDDING_TASK

    def embedding_texts(self) -> tuple[list[str], list[str], list[str]]:
        """An embedding run's (train, dev, test) passages (`bort.embedding.embedding_texts`:
        at most ``student.transfer_limit`` to train on; dev and test capped at max_eval)."""
        from .embedding import embedding_texts

        def make():
            c = self.config
            train, dev, test = embedding_texts(self.corpus(), limit=c.student.transfer_limit,
                                               seed=c.seed)
            return train, dev[:c.max_eval], test[:c.max_eval]

        return self._once("embedding_texts", make)

    def source_dir(self) -> Path:
        from .assets import default_source

        return Path(self.config.source) if self.config.source else default_source()

    def source(self):
        from .model import BortModel

        return self._once("source", lambda: BortModel.from_pretrained(self.source_dir()))

    def task(self):
        from .data import load_task

        def make():
            task = _subset(load_task(self.config.task, seed=self.config.seed), self.config)
            task.write_split(self.dir)
            return task

        return self._once("task", make)

    def corpus(self):
        from .data import default_corpus
        from .distill import Corpus

        share = EMBEDDING_HELD_OUT if self.embedding else HELD_OUT
        return self._once("corpus", lambda: Corpus(self.config.corpus or default_corpus(),
                                                   held_out=share))

    def teacher_dir(self, seed: int | None = None) -> Path:
        """The source fine-tuned on the run's task and split with the teacher settings and
        ``seed`` (default: the run's), cached across runs; fine-tuned here on first use."""
        from .costs import cache_dir
        from .finetune import finetune

        c = self.config
        config = replace(c.stage("teacher"), seed=c.seed if seed is None else seed)
        key = json.dumps({"source": str(self.source_dir().resolve()), "task": c.task,
                          "seed": c.seed, "max_train": c.max_train, "max_eval": c.max_eval,
                          "teacher": config.as_dict()}, sort_keys=True)
        cached = cache_dir() / "teachers" / hashlib.sha256(key.encode()).hexdigest()[:16]
        if not (cached / "metrics.json").is_file():
            self.log(f"teacher: fine-tuning the source on {c.task} (cached in {cached})")
            finetune(self.source(), self.task(), cached, config, resume=True, log=self.log)
        else:
            self.log(f"teacher: cached in {cached}")
        return cached

    def importance(self):
        """Unit importance of the source on the corpus's first lines (search and extraction)."""
        from .costs import importance

        lines = self.config.search.sample_lines
        return self._once("importance", lambda: importance(self.source(),
                                                           self.corpus().head(lines)))


def open_run(path: str | Path, *, needs: Sequence[str] = (),
             log: Callable[[str], None] = print) -> Run:
    """A run directory written by `run_pipeline`, with the settings it ran with (for bench
    scripts that reuse its stages); `ConfigError` if a stage in ``needs`` has not finished."""
    record_path = Path(path) / "pipeline.json"
    if not record_path.is_file():
        raise ConfigError(f"{path}: not a pipeline run (no pipeline.json)")
    record = json.loads(record_path.read_text())
    missing = sorted(set(needs) - set(record["stages"]))
    if missing:
        raise ConfigError(f"{path}: the run has not finished {missing}")
    config = PipelineConfig().updated({**record["config"], "out": str(Path(path).parent),
                                       "name": Path(path).name}, where=str(record_path))
    return Run(config, log=log)


# ---------------------------------------------------------------------- stages
def _teacher(run: Run) -> dict:
    if run.embedding:
        run.log("teacher: the source itself (its mean-pooled, normalised vectors)")
        return {"model": str(run.source_dir()), "embedding": True}
    cached = run.teacher_dir()
    metrics = json.loads((cached / "metrics.json").read_text())
    return {"model": str(cached / "model"), "dev": metrics["dev"], "test": metrics["test"]}


def _search(run: Run) -> dict:
    from .costs import COSTS
    from .model import BortModel
    from .search import optimal_subarchitecture, plot_front

    s = run.config.stage("search")
    source = run.source()
    out = run.dir / "search"
    teacher = BortModel.from_pretrained(run.result("teacher")["model"])
    result = optimal_subarchitecture(source, s.space_of(source.arch), run.corpus(),
                                     importance=run.importance(), config=s, out=out, log=run.log,
                                     teacher=None if run.embedding else teacher,
                                     task=None if run.embedding else run.task())
    if result.optimum is None:
        raise ConfigError("the search found no architecture meeting the constraints "
                          f"(max_params={s.max_params}, min_speedup={s.min_speedup})")
    plot_front(result, out / "front.png", COSTS[s.cost].unit, max_params=s.max_params,
               max_latency_ms=s.max_latency_ms)
    best = result.optimum
    return {"arch": best.arch.to_config(), "describe": best.arch.describe(),
            "params": best.params, "cost": best.cost, "cost_kind": s.cost, "error": best.error,
            "w": best.w, "rule": result.rule, "measured_speedup": result.measured_speedup,
            "calibration": result.calibration,
            "by_w": result.by_w.arch.describe(), "source_params": result.maximum.params,
            "source_cost": result.maximum.cost, "candidates": len(result.candidates),
            "evaluated": len(result.evaluated)}


def _extract(run: Run) -> dict:
    from .arch import Arch
    from .extract import extract

    arch = Arch.from_config(run.result("search")["arch"])
    student = extract(run.source(), arch, importance=run.importance())
    path = student.save_pretrained(run.dir / "extract" / "student",
                                   card={"source": str(run.source_dir()),
                                         "data": "extracted from the source's weights"})
    return {"model": str(path), "params": arch.params().total}


def _distill(run: Run) -> dict:
    from .distill import distill
    from .model import BortModel

    student = BortModel.from_pretrained(run.result("extract")["model"])
    out = run.dir / "distill"
    history = distill(run.source(), student, run.corpus(), out, run.config.stage("distill"),
                      resume=True, log=run.log, distributed=False)
    write_json(out / "distill.json", history)
    return {"model": str(out / "student"), "eval_loss": history["eval_loss"]}


def _distilled_arm(run: Run, teacher, arm_dir: Path) -> dict:
    """Task distillation from the teacher's soft labels over the train split and unlabelled
    in-domain text (dev and test near-duplicates removed), selected on dev."""
    from .data import default_transfer
    from .finetune import finetune
    from .metrics import correct_string
    from .model import BortModel

    config, task = run.config.stage("student"), run.task()
    texts, transfer = default_transfer(task, config.transfer_limit, run.config.seed)
    student = BortModel.from_pretrained(run.result("distill")["model"])
    result = finetune(student, task, arm_dir, config, teacher=teacher, transfer=texts,
                      resume=True, log=run.log)
    return {"model": str(arm_dir / "model"), "test": result.test,
            "selection": result.dev[task.metric], "train_steps": result.steps,
            "transfer": transfer,
            "test_correct": correct_string(result.test_predictions, task.test.labels)}


def _embedding_arm(run: Run, teacher, arm_dir: Path) -> dict:
    """The shipped embedding student: the teacher's pooled, normalised vectors distilled over
    corpus passages, scored on held-out ones."""
    from .embedding import distill_embeddings
    from .model import BortModel

    train, dev, test = run.embedding_texts()
    student = BortModel.from_pretrained(run.result("distill")["model"])
    result = distill_embeddings(student, teacher, train, dev, test, arm_dir,
                                run.config.stage("student"), resume=True, log=run.log)
    return {"model": str(arm_dir / "model"), "test": result.test, "dev": result.dev,
            "train_steps": result.steps,
            "passages": {"train": len(train), "dev": len(dev), "test": len(test)}}


def _agora_arms(run: Run, teacher) -> dict:
    """bort's Agora with its random and distillation controls (`bort.agora_style`), all from
    the task-distilled student, and plain fine-tuning on the same gold data (the student
    recipe without the teacher); the arm best on the selection data is shipped."""
    from .agora_style import finetune_rounds, gold_task
    from .data import default_transfer
    from .finetune import finetune
    from .metrics import correct_of, correct_string, paired_bootstrap
    from .model import BortModel

    c, task, out = run.config, run.task(), run.dir / "finetune"
    agora, config = c.stage("agora"), c.stage("student")
    texts, transfer = default_transfer(task, config.transfer_limit, c.seed)
    record = finetune_rounds(BortModel.from_pretrained(run.result("distill")["model"]), teacher,
                             task, out, config, agora, transfer=texts, log=run.log)
    arms, models = record.pop("arms"), {record["shipped"]: out / "model"}
    if c.plain_baseline:
        run.log("finetune: plain (cross-entropy on the arms' gold data, no teacher)")
        result = finetune(BortModel.from_pretrained(run.result("distill")["model"]),
                          gold_task(task, agora), out / "plain", config, resume=True,
                          log=run.log)
        arms["plain"] = {"selection": result.dev[task.metric], "test": result.test,
                         "train_steps": result.steps,
                         "test_correct": correct_string(result.test_predictions, task.test.labels)}
        models["plain"] = out / "plain" / "model"
    shipped = max(arms, key=lambda arm: arms[arm]["selection"])  # first best: distilled
    base = correct_of(arms["distilled"]["test_correct"])
    for arm in arms.values():
        arm["vs_distilled"] = paired_bootstrap(correct_of(arm["test_correct"]), base, seed=c.seed)
    arms["distilled"]["model"] = str(out / "distilled" / "model")
    return {**arms, "shipped": shipped, "model": str(models[shipped]), "transfer": transfer,
            "data": {k: v for k, v in record.items() if k != "shipped"}}


def _finetune(run: Run) -> dict:
    """The student's task stage: task distillation, or (``agora_arms``) bort's Agora, its
    controls and plain fine-tuning beside it; records each arm, the ``shipped`` one and its
    ``model`` directory."""
    from .model import BortModel

    c = run.config
    teacher = BortModel.from_pretrained(run.result("teacher")["model"])
    if run.embedding:
        if c.agora_arms:
            run.log("finetune: no Agora arms for an embedding student (Agora needs labels)")
        arm = _embedding_arm(run, teacher, run.dir / "finetune" / STUDENT_ARM)
    elif c.agora_arms:
        return _agora_arms(run, teacher)
    else:
        arm = _distilled_arm(run, teacher, run.dir / "finetune" / STUDENT_ARM)
    return {STUDENT_ARM: arm, "shipped": STUDENT_ARM, "model": arm["model"]}


def _shipped(run: Run) -> Path:
    """The directory of the student the run ships (exported and benchmarked)."""
    return Path(run.result("finetune")["model"])


def _export(run: Run) -> dict:
    from .export import export_onnx
    from .model import BortModel

    out = run.dir / "export"
    files = {}
    for name, directory in (("source", run.source_dir()), ("student", _shipped(run))):
        files[name] = str(export_onnx(BortModel.from_pretrained(directory).eval(),
                                      out / f"{name}.onnx"))
    return {"onnx": files}


def _correct(run: Run, model_dir: Path, dtype: str) -> tuple[np.ndarray, float]:
    """Which test items a classifier under bort's runtime gets right, and the seconds it took."""
    from .runtime import Classifier

    task, threads = run.task(), run.config.bench.threads[0]
    clf = Classifier.from_pretrained(model_dir, dtype=dtype, num_threads=threads,
                                     max_length=run.config.student.seq_len)
    start = time.perf_counter()
    pred = clf.predict(task.test.texts, task.test.pairs)
    seconds = time.perf_counter() - start
    return np.asarray([task.labels.index(p) for p in pred.labels]) == task.test.labels, seconds


def _dtype_accuracy(run: Run, student_dir: Path) -> dict:
    """The student's test accuracy (and time per sentence) in each of bort's dtypes, each
    against fp32 and the fp32 student against the teacher as paired differences with their
    bootstrap intervals over the test items."""
    from .metrics import paired_bootstrap
    from .runtime import DTYPES

    n = len(run.task().test)
    teacher, _ = _correct(run, Path(run.result("teacher")["model"]), "fp32")
    out, fp32 = {}, None
    for dtype in DTYPES:
        correct, seconds = _correct(run, student_dir, dtype)
        fp32 = correct if fp32 is None else fp32
        out[dtype] = {"accuracy": float(correct.mean()), "test_seconds": seconds,
                      "ms_per_sentence": 1000 * seconds / n,
                      "vs_fp32": paired_bootstrap(correct, fp32, seed=run.config.seed),
                      "vs_teacher": paired_bootstrap(correct, teacher, seed=run.config.seed)}
    return out


def _dtype_embedding(run: Run, student_dir: Path) -> dict:
    """The embedding student's test scores (cosine and recall@10 to the source's fp32 vectors)
    in each of bort's dtypes, each against fp32 as a paired difference with its bootstrap
    interval over the test passages."""
    from .embedding import embedding_scores
    from .metrics import paired_bootstrap
    from .runtime import DTYPES, Encoder

    _, _, test = run.embedding_texts()
    threads, seq = run.config.bench.threads[0], run.config.student.seq_len

    def vectors(model_dir, dtype):
        encoder = Encoder.from_pretrained(model_dir, dtype=dtype, num_threads=threads,
                                          max_length=seq)
        start = time.perf_counter()
        out = encoder.encode(test, pooling="mean", normalize=True)
        return out, time.perf_counter() - start

    teacher, _ = vectors(run.source_dir(), "fp32")
    out, fp32 = {}, None
    for dtype in DTYPES:
        got, seconds = vectors(student_dir, dtype)
        means, per = embedding_scores(got, teacher)
        fp32 = per if fp32 is None else fp32
        out[dtype] = {**means, "test_seconds": seconds,
                      "ms_per_sentence": 1000 * seconds / len(test),
                      "vs_fp32": {k: paired_bootstrap(v, fp32[k], seed=run.config.seed)
                                  for k, v in per.items()}}
    return out


def _bench(run: Run) -> dict:
    from .bench import markdown, plot, run_matrix
    from .io import write_text
    from .timing import cpu_summary

    student_dir = _shipped(run)
    accuracy = (_dtype_embedding(run, student_dir) if run.embedding
                else _dtype_accuracy(run, student_dir))
    onnx = {k: Path(v) for k, v in run.result("export")["onnx"].items()}
    work = run.dir / "bench"
    work.mkdir(parents=True, exist_ok=True)
    rows, notes = run_matrix({"source": run.source_dir(), "student": student_dir}, onnx,
                             run.config.bench, work)
    write_text(work / "latency.md", markdown(rows))
    plot(rows, work / "latency.png")
    record = {"cpu": cpu_summary(), "accuracy": accuracy, "rows": rows, "notes": notes}
    write_json(work / "bench.json", record)
    return record


def _report(run: Run) -> dict:
    from .io import write_text
    from .report import curves_figure, pipeline_report

    stages = run.record["stages"]
    curves_figure(stages).savefig(run.dir / "curves.png", dpi=110)
    parts = run.embedding_texts() if run.embedding else None
    task = None if run.embedding else run.task()
    sizes = {k: len(parts[i] if parts else getattr(task, k))
             for i, k in enumerate(("train", "dev", "test"))}
    text = pipeline_report(run.config, str(run.source_dir()),
                           "cosine" if task is None else task.metric, sizes, stages, STAGES[:-1])
    path = write_text(run.dir / "report.md", text)
    return {"report": str(path)}


#: Each stage's function, by name (a test swaps them to interrupt a run).
_STAGE_FUNCS: dict[str, Callable[[Run], dict]] = {
    "teacher": _teacher, "search": _search, "extract": _extract, "distill": _distill,
    "finetune": _finetune, "export": _export, "bench": _bench, "report": _report}


def _check_stages(skip: Sequence[str], redo: str | None) -> None:
    for name in list(skip) + ([redo] if redo else []):
        if name not in STAGES:
            raise ConfigError(f"unknown stage {name!r} (stages: {', '.join(STAGES)})")


def run_pipeline(config: PipelineConfig | None = None, *, skip: Sequence[str] = (),
                 redo: str | None = None, log: Callable[[str], None] = print) -> Path:
    """Run (or resume) the pipeline; returns the path of ``report.md``.

    ``skip`` names stages not to run (a later stage that needs one's result raises
    ConfigError); ``redo`` forgets that stage and every later one, and runs them again.
    """
    config = config or PipelineConfig()
    _check_stages(skip, redo)
    import torch

    torch.set_num_threads(config.threads)
    started = time.time()

    def stamped(msg: str) -> None:
        log(f"[{(time.time() - started) / 60:5.1f} min] {msg}")

    run = Run(config, stamped)
    if redo:
        run.forget(STAGES[STAGES.index(redo):])
    for stage in STAGES:
        if run.done(stage) or stage in skip:
            stamped(f"{stage}: {'done earlier, ' if run.done(stage) else ''}skipped")
            continue
        missing = [n for n in NEEDS.get(stage, ()) if not run.done(n)]
        if missing:
            raise ConfigError(f"stage {stage!r} needs {', '.join(missing)}, which did not run "
                              "(skipped?)")
        stamped(f"{stage}: start")
        t = time.time()
        result = _STAGE_FUNCS[stage](run)
        run.finish(stage, time.time() - t, result)
        stamped(f"{stage}: done in {(time.time() - t) / 60:.1f} min")
    return run.dir / "report.md"
