"""Can the search's surrogate be trusted? Kendall τ between it and the full recipe's accuracy.

Reuses a finished `bort pipeline` run (``--run``, default ``runs/demo``: its task, teacher,
search and settings). From the search's front it takes ``--candidates`` architectures whose
predicted latency lies within ``--band`` (±15%) of the chosen one's — the chosen one and others
spread over the band, since a spread-out front ranks by size alone — and for each:

- the surrogate error the search gives it (the run's task-aware surrogate at the run's step
  count; read from the run's journal where the search scored it);
- the full recipe, as the pipeline trains its student: extraction from the source, general
  distillation (``[distill]``), then task distillation (``[student]``) once per ``--seeds``
  seed; its dev accuracy averaged over the seeds.

Reports Kendall's τ-b (and Spearman's ρ) between −surrogate error and dev accuracy. Only dev
is read: this bench selects nothing. Writes bench/results/surrogate_trust.{json,md,png};
models go under RUN/trust (a rerun resumes).

    python bench/surrogate_trust.py --run runs/demo --candidates 8 --seeds 0 1
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import sys
import time
from dataclasses import replace
from pathlib import Path

import torch

from bort.arch import Arch
from bort.data import default_transfer
from bort.distill import distill
from bort.extract import extract
from bort.finetune import FinetuneConfig, finetune
from bort.io import write_json, write_text
from bort.metrics import kendall_tau, spearman
from bort.model import BortModel
from bort.pipeline import STUDENT_ARM, Run, open_run
from bort.search import Candidate, _finished, _key, _TaskSurrogate, representatives
from bort.timing import cpu_summary

RESULTS = Path(__file__).parent / "results" / "surrogate_trust"


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--run", type=Path, default=Path("runs/demo"), help="a finished pipeline run")
    p.add_argument("--candidates", type=int, default=8, help="architectures compared")
    p.add_argument("--band", type=float, default=0.15,
                   help="relative distance in predicted latency from the chosen one")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1],
                   help="task-distillation seeds averaged per candidate")
    p.add_argument("--out", type=Path, default=RESULTS, help="results, without suffix")
    return p.parse_args()


def in_band(run: Run, count: int, band: float) -> list[Candidate]:
    """The chosen architecture and ``count`` − 1 others spread over the front's candidates
    within ``band`` of its predicted latency (each with an attention head, as the search
    requires)."""
    front = json.loads((run.dir / "search" / "front.json").read_text())
    chosen = front["optimum"]

    def candidate(row: dict) -> Candidate:
        return Candidate(Arch.from_config(row["arch"]), row["params"], row["cost"],
                         row["error_proxy"])

    pool = [candidate(r) for r in front["candidates"]
            if abs(r["cost"] / chosen["cost"] - 1) <= band and r["arch"] != chosen["arch"]
            and any(layer.heads for layer in Arch.from_config(r["arch"]).layers)]
    if len(pool) < count - 1:
        raise SystemExit(f"only {len(pool)} other candidates within ±{band:.0%} of the chosen "
                         "one's latency: widen --band")
    return [candidate(chosen), *representatives(pool, count - 1)]


def surrogate_errors(run: Run, archs: list[Arch], log) -> list[float]:
    """The run's surrogate error of each architecture at the run's step count (the journal's
    where the search scored it, else scored here and kept in RUN/trust/surrogate.json)."""
    steps = run.config.search.steps
    done = _finished(run.dir / "search", "task")
    path = run.dir / "trust" / "surrogate.json"
    done.update(json.loads(path.read_text()) if path.is_file() else {})
    surrogate = None
    for arch in archs:
        if _key(arch, steps) not in done:
            surrogate = surrogate or _TaskSurrogate(
                BortModel.from_pretrained(run.result("teacher")["model"]), run.task(),
                run.importance(), run.config.search.seed)
            done[_key(arch, steps)] = surrogate(arch, steps)
            log(f"surrogate {done[_key(arch, steps)]:.4f}: {arch.describe()}")
            write_json(path, done)
    return [done[_key(a, steps)] for a in archs]


def full_recipe(run: Run, arch: Arch, work: Path, seeds: list[int], log,
                student: FinetuneConfig | None = None, tag: str = "") -> list[float]:
    """Dev accuracy of ``arch`` after extraction, general distillation and task distillation
    with each seed (finished models are reused; the run's own choice reuses the run's general
    distillation, and its task distillation at the run's seed, which are the same training).
    ``student`` replaces the run's task-distillation settings (its models go to ``work /
    f"{tag}seed-{seed}"``)."""
    teacher = BortModel.from_pretrained(run.result("teacher")["model"])
    chosen = arch == Arch.from_config(run.result("search")["arch"])
    general = (Path(run.result("distill")["model"]) if chosen and run.done("distill")
               else work / "distill" / "student")
    if not (general / "config.json").is_file():
        student = extract(run.source(), arch, importance=run.importance())
        distill(run.source(), student, run.corpus(), work / "distill",
                run.config.stage("distill"), resume=True, log=None, progress=False,
                distributed=False)
    task, dev = run.task(), []
    for seed in seeds:
        out = work / f"{tag}seed-{seed}"
        if (chosen and student is None and seed == run.config.seed and run.done("finetune")
                and "agora" not in run.result("finetune")):  # else selected on half of dev
            out = Path(run.result("finetune")[STUDENT_ARM]["model"]).parent
        if not (out / "metrics.json").is_file():
            config = replace(student or run.config.stage("student"), seed=seed)
            finetune(copy.deepcopy(BortModel.from_pretrained(general)), task, out, config,
                     teacher=teacher, transfer=default_transfer(task, config.transfer_limit,
                                                                 seed)[0],
                     resume=True, log=None, progress=False)
        dev.append(json.loads((out / "metrics.json").read_text())["dev"][task.metric])
        log(f"  seed {seed}: dev {dev[-1]:.4f}")
    return dev


def plot(record: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.6, 4.0))
    xs = [p["surrogate"] for p in record["points"]]
    ys = [100 * p["dev"] for p in record["points"]]
    ax.scatter(xs, ys)
    ax.scatter(xs[:1], ys[:1], color="r", label="the run's choice")
    ax.set_xlabel("surrogate error (dev KL to the teacher after a short distillation)")
    ax.set_ylabel(f"dev accuracy after the full recipe, %, mean of {len(record['seeds'])} seeds")
    ax.set_title(f"Kendall τ {record['kendall_tau']:.2f} over {len(xs)} candidates")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main() -> int:
    args = parse_args()
    began = time.perf_counter()
    run = open_run(args.run, needs=("teacher", "search"), log=print)
    if run.embedding:
        raise SystemExit("an embedding run: its surrogate is task-free (no dev accuracy)")
    torch.set_num_threads(run.config.threads)
    picks = in_band(run, args.candidates, args.band)
    errors = surrogate_errors(run, [c.arch for c in picks], print)
    points = []
    for i, (c, error) in enumerate(zip(picks, errors)):
        print(f"[{i + 1}/{len(picks)}] {c.arch.describe()} ({c.cost:.2f} ms predicted), "
              f"surrogate {error:.4f}", flush=True)
        dev = full_recipe(run, c.arch, run.dir / "trust" / f"candidate-{i}", args.seeds, print)
        points.append({"arch": c.arch.describe(), "params": c.params, "predicted_ms": c.cost,
                       "surrogate": error, "dev_per_seed": dev, "dev": statistics.fmean(dev)})
    # a lower error should mean a higher accuracy: τ of −error against accuracy
    tau = kendall_tau([-p["surrogate"] for p in points], [p["dev"] for p in points])
    rho = spearman([-p["surrogate"] for p in points], [p["dev"] for p in points])
    record = {"command": "python " + " ".join(sys.argv), "run": str(args.run),
              "task": run.config.task, "cpu": cpu_summary(), "band": args.band,
              "seeds": args.seeds, "steps": run.config.search.steps, "kendall_tau": tau,
              "spearman": rho, "points": points,
              "minutes": round((time.perf_counter() - began) / 60, 1)}
    rows = ["| architecture | params | predicted ms | surrogate error | dev (mean) | per seed |",
            "|---|---|---|---|---|---|"]
    rows += [f"| `{p['arch']}` | {p['params']:,} | {p['predicted_ms']:.2f} | "
             f"{p['surrogate']:.4f} | {p['dev']:.4f} | "
             + ", ".join(f"{d:.4f}" for d in p["dev_per_seed"]) + " |" for p in points]
    text = "\n".join(rows) + (f"\n\nKendall τ-b (−surrogate error, dev accuracy) = **{tau:.3f}**"
                              f", Spearman ρ = {rho:.3f}; the first row is the run's choice.")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    write_json(args.out.with_suffix(".json"), record)
    plot(record, args.out.with_suffix(".png"))
    write_text(args.out.with_suffix(".md"),
               f"# Surrogate trust\n\n`{record['command']}`: {record['task']}, {len(points)} "
               f"candidates within ±{args.band:.0%} of the chosen one's predicted latency, "
               f"{record['steps']}-step surrogate, "
               f"dev accuracy after the full recipe over seeds {args.seeds}; {record['cpu']}; "
               f"{record['minutes']} min.\n\n{text}\n")
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
