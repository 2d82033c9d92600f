"""What bounds the student at a speed-up: its shape against its training, on dev only.

Reuses a finished `bort pipeline` run (``--run``, default ``runs/demo``: its teacher, importance,
general-distillation settings and split). Each architecture of ``--archs`` gets the run's full
recipe (extraction, general distillation, task distillation; `surrogate_trust.full_recipe`)
under each ``--variants`` override of the run's ``[student]`` settings, for every seed. The
run's own choice reuses the run's general distillation.

An architecture is ``run`` (the run's choice) or ``H:A:I:D``: hidden size H and D layers of A
heads (the source's head size) and FFN width I, kept evenly spaced among the source's layers (the
others dropped), e.g. ``192:4:256:4``. Every architecture and the source are timed end to end in
one interleaved run (bort fp32, 1 × 128, 1 thread, as the pipeline's bound). Only dev is read:
this chooses a recipe, it scores none (the test split is for the final model).

Writes bench/results/student_recipe.{json,md}; models go under RUN/recipe (a rerun resumes).

    python bench/student_recipe.py --run runs/demo --archs run 192:4:256:4 \\
        --variants '{}' '{"epochs": 4}'
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from dataclasses import replace
from pathlib import Path

import torch
from surrogate_trust import full_recipe
from trade_off import SEQ_LEN, THREADS, latencies

from bort.arch import Arch, Layer
from bort.bench import machine_line
from bort.errors import ConfigError
from bort.io import write_json, write_text
from bort.pipeline import Run, open_run

RESULTS = Path(__file__).parent / "results" / "student_recipe"


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--run", type=Path, default=Path("runs/demo"), help="a finished pipeline run")
    p.add_argument("--archs", nargs="+", default=["run"],
                   help="'run' or H:A:I:D (hidden, heads, FFN, layers); default: run")
    p.add_argument("--variants", nargs="+", default=["{}"],
                   help="JSON overrides of the run's [student] settings; default: '{}'")
    p.add_argument("--seeds", type=int, nargs="+", default=[0])
    p.add_argument("--out", type=Path, default=RESULTS, help="results, without suffix")
    return p.parse_args()


def parse_arch(spec: str, run: Run) -> Arch:
    """The architecture ``spec`` names (see the module docstring)."""
    if spec == "run":
        return Arch.from_config(run.result("search")["arch"])
    source = run.source().arch
    try:
        hidden, heads, ffn, depth = (int(x) for x in spec.split(":"))
    except ValueError:
        raise ConfigError(f"--archs: {spec!r} is not 'run' or H:A:I:D") from None
    n = len(source.layers)
    if not 1 <= depth <= n:
        raise ConfigError(f"--archs {spec}: D must be 1..{n} (the source's layers)")
    keep = {round(i * (n - 1) / max(depth - 1, 1)) for i in range(depth)}
    layers = tuple(Layer(heads, source.layers[l].head_dim if heads else 0, ffn) if l in keep
                   else Layer(0, 0, 0) for l in range(n))
    return replace(source, hidden=hidden, layers=layers)


def dev_curve(model_dir: Path, metric: str) -> list[tuple[int, float]]:
    """(step, dev score) of every evaluation of a finished fine-tuning."""
    history = json.loads((model_dir / "metrics.json").read_text())["history"]
    return [(step, metrics[metric]) for step, metrics in history["dev"]]


def main() -> int:
    args = parse_args()
    began = time.perf_counter()
    run = open_run(args.run, needs=("teacher", "search", "distill"), log=print)
    if run.embedding:
        raise SystemExit("an embedding run: its students are scored by cosine, not dev accuracy")
    torch.set_num_threads(run.config.threads)
    archs = {spec: parse_arch(spec, run) for spec in args.archs}
    variants = [json.loads(v) for v in args.variants]
    base = run.config.stage("student")
    metric = run.task().metric
    points = []
    for spec, arch in archs.items():
        work = run.dir / "recipe" / spec.replace(":", "-")
        for over in variants:
            tag = "".join(f"{k}-{v}-" for k, v in sorted(over.items()))
            print(f"{arch.describe()}, student {over or 'as the run'}", flush=True)
            dev = full_recipe(run, arch, work, args.seeds, print, base.updated(over), tag)
            curve = dev_curve(work / f"{tag}seed-{args.seeds[0]}", metric)
            points.append({"arch": spec, "describe": arch.describe(),
                           "params": arch.params().total, "student": over,
                           "dev_per_seed": dev, "dev": statistics.fmean(dev),
                           "dev_curve_first_seed": curve})
    ms = latencies(run.source().arch, archs, THREADS, SEQ_LEN)
    teacher = run.result("teacher")["dev"][metric]
    for p in points:
        p["speedup"] = ms["source"] / ms[p["arch"]]
    record = {"command": "python " + " ".join(sys.argv), "run": str(args.run),
              "task": run.config.task, "machine": machine_line(), "seeds": args.seeds,
              "teacher_dev": teacher, "ms": ms, "points": points,
              "minutes": round((time.perf_counter() - began) / 60, 1)}
    rows = ["| architecture | params | speed-up | student settings | dev | − teacher, points "
            "| dev at each evaluation (first seed) |", "|---|---|---|---|---|---|---|"]
    rows += [f"| `{p['describe']}` | {p['params']:,} | {p['speedup']:.1f}× | "
             f"`{json.dumps(p['student']) if p['student'] else 'the run'}` | {p['dev']:.4f} | "
             f"{100 * (p['dev'] - teacher):+.1f} | "
             + ", ".join(f"{v:.3f}" for _, v in p["dev_curve_first_seed"]) + " |"
             for p in points]
    text = "\n".join(rows)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    write_json(args.out.with_suffix(".json"), record)
    write_text(args.out.with_suffix(".md"),
               f"# Student shape against recipe\n\n`{record['command']}`: {record['task']}, "
               f"teacher dev {teacher:.4f}, seeds {args.seeds}, dev only; speed-ups of bort "
               f"fp32 at 1 × {SEQ_LEN}, {THREADS} thread, source over student, one interleaved "
               f"run; {record['machine']}; {record['minutes']} min.\n\n{text}\n")
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
