"""Accuracy against speed: the pipeline's student recipe at several speed-up bounds.

Reuses a finished `bort pipeline` run (``--run``, default ``runs/demo``) and its settings. For
each bound X of ``--speedups`` it runs the run's stages teacher → finetune again with only
``search.min_speedup = X`` changed, as the run ``RUN-xX`` beside it: the same cached teacher,
the same surrogate (the run's journal is copied, so candidates scored already are not scored
again), the most accurate candidate whose speed-up *measured* end to end reaches X, then
extraction, general distillation and task distillation as the run did. The run itself is the
point at its own bound.

Then every student and the source are timed side by side in one interleaved run (bort fp32 at
the search's shape and threads), and each student's test accuracy is compared with the
teacher's on the same items (paired bootstrap 95% CI, McNemar). Models are selected on dev; the
test split scores each final model once. The two ends of the trade-off are named from dev: the
most accurate student at the run's bound, and the fastest student within ``--within`` points of
the teacher.

Writes bench/results/trade_off.{json,md,png}; runs go beside RUN (a rerun resumes).

    python bench/trade_off.py --run runs/demo --speedups 5 7
"""

from __future__ import annotations

import argparse
import shutil
import sys
import time
from pathlib import Path

import numpy as np
import torch

from bort.arch import Arch
from bort.finetune import encode_split, evaluate
from bort.io import write_json, write_text
from bort.metrics import mcnemar, paired_bootstrap
from bort.model import BortModel
from bort.pipeline import STUDENT_ARM, Run, open_run, run_pipeline
from bort.search import random_encoder
from bort.timing import cpu_summary, interleaved_ms
from bort.tokenize import load_tokenizer

RESULTS = Path(__file__).parent / "results" / "trade_off"
#: The stages a point needs (the rest of the pipeline is the run's business).
STAGES_AFTER = ("export", "bench", "report")
ROUNDS = 30
#: The shape and threads the speed-ups are timed at: the pipeline's (the latency cost's
#: defaults, `bort.costs`).
SEQ_LEN, THREADS = 128, 1


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--run", type=Path, default=Path("runs/demo"), help="a finished pipeline run")
    p.add_argument("--speedups", type=float, nargs="+", default=[5.0, 7.0],
                   help="speed-up bounds besides the run's own")
    p.add_argument("--within", type=float, default=2.0,
                   help="points of dev accuracy below the teacher's that count as 'within'")
    p.add_argument("--out", type=Path, default=RESULTS, help="results, without suffix")
    return p.parse_args()


def point_run(base: Run, bound: float) -> Run:
    """The run at speed-up bound ``bound``: finished here unless an earlier call finished it."""
    if bound == base.config.search.min_speedup:
        return base
    config = base.config.updated({"name": f"{base.config.name}-x{bound:g}", "agora_arms": False,
                                  "search": {"min_speedup": bound}})
    journal = base.dir / "search" / "evaluated.jsonl"
    copy = Path(config.out) / config.name / "search" / journal.name
    if journal.is_file() and not copy.is_file():
        copy.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(journal, copy)
    run_pipeline(config, skip=STAGES_AFTER)
    return open_run(Path(config.out) / config.name, needs=("search", "finetune"))


def latencies(source: Arch, students: dict[str, Arch], threads: int, seq_len: int
              ) -> dict[str, float]:
    """Median ms of the source and every student, timed in one interleaved run."""
    ids = np.random.default_rng(0).integers(0, source.vocab_size, (1, seq_len))
    runners = {}
    for name, arch in {"source": source, **students}.items():
        encoder = random_encoder(arch, threads=threads)
        runners[name] = lambda e=encoder: e(ids)
    return interleaved_ms(runners, rounds=ROUNDS)


def scored(run: Run, dev, test) -> tuple[dict, np.ndarray]:
    """The run's task-distilled student: its record and which test items it gets right (dev
    scored here: a run with Agora arms selected it on half of dev, held out all the same)."""
    arm = run.result("finetune")[STUDENT_ARM]
    model = BortModel.from_pretrained(arm["model"]).eval()
    metric = run.task().metric
    dev_metrics, _ = evaluate(model, dev)
    metrics, pred = evaluate(model, test)
    search = run.result("search")
    return ({"bound": run.config.search.min_speedup, "run": str(run.dir),
             "arch": search["describe"], "params": search["params"],
             "search_speedup": search["measured_speedup"], "dev": dev_metrics[metric],
             "test": metrics[metric]}, pred == test.labels)


def ends(points: list[dict], teacher_dev: float, bound: float, within: float) -> dict:
    """The most accurate student (dev) at ``bound`` or faster and the fastest within ``within``
    points of the teacher on dev (None when no student is)."""
    fast = [p for p in points if p["speedup"] >= bound]
    close = [p for p in points if 100 * (teacher_dev - p["dev"]) <= within]
    return {"most_accurate_at_bound": max(fast, key=lambda p: p["dev"])["name"] if fast else None,
            "fastest_within": max(close, key=lambda p: p["speedup"])["name"] if close else None}


def table(record: dict) -> str:
    t = record["teacher"]
    lines = ["| student | architecture | params | speed-up | dev | test | teacher − student, "
             "test [95% CI] | McNemar p |", "|---|---|---|---|---|---|---|---|",
             f"| teacher (source) | — | {record['source_params']:,} | 1.0× | {t['dev']:.4f} | "
             f"{t['test']:.4f} | — | — |"]
    for p in record["points"]:
        b, m = p["teacher_minus"]["bootstrap"], p["teacher_minus"]["mcnemar"]
        lines.append(f"| {p['name']} | `{p['arch']}` | {p['params']:,} | {p['speedup']:.1f}× | "
                     f"{p['dev']:.4f} | {p['test']:.4f} | {100 * b['difference']:+.1f} "
                     f"[{100 * b['low']:+.1f}, {100 * b['high']:+.1f}] | {m['p_value']:.3g} |")
    e = record["ends"]
    lines += ["", f"Most accurate on dev at ≥ {record['bound']:g}×: "
              f"**{e['most_accurate_at_bound'] or 'none'}**; fastest within "
              f"{record['within']:g} points of the teacher on dev: "
              f"**{e['fastest_within'] or 'none'}**."]
    return "\n".join(lines)


def plot(record: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    x = [p["speedup"] for p in record["points"]]
    y = [100 * p["test"] for p in record["points"]]
    t = 100 * record["teacher"]["test"]
    # the interval of the student's accuracy implied by the paired one of its gap
    err = [[100 * (p["teacher_minus"]["bootstrap"]["high"]
                   - p["teacher_minus"]["bootstrap"]["difference"]) for p in record["points"]],
           [100 * (p["teacher_minus"]["bootstrap"]["difference"]
                   - p["teacher_minus"]["bootstrap"]["low"]) for p in record["points"]]]
    ax.errorbar(x, y, yerr=err, fmt="o-", capsize=3, label="student (test, 95% CI of the gap)")
    ax.axhline(t, color="k", lw=1, label=f"teacher {t:.1f}")
    ax.axhspan(t - record["within"], t, color="0.9", label=f"within {record['within']:g} points")
    ax.axvline(record["bound"], color="r", ls=":", lw=1, label=f"{record['bound']:g}× bound")
    ax.set_xlabel("speed-up over the source, measured (bort fp32, 1 thread)")
    ax.set_ylabel("test accuracy, %")
    ax.set_title(f"{record['task']}: accuracy against speed")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main() -> int:
    args = parse_args()
    began = time.perf_counter()
    base = open_run(args.run, needs=("teacher", "search", "finetune"))
    if base.embedding:
        raise SystemExit("an embedding run: this bench compares classifiers with their teacher")
    torch.set_num_threads(base.config.threads)
    bounds = sorted({*args.speedups, base.config.search.min_speedup})
    runs = {f"≥ {b:g}×": point_run(base, b) for b in bounds}
    seq_len = base.config.student.seq_len
    tokenizer = load_tokenizer(base.result("teacher")["model"], seq_len)
    dev, test = (encode_split(tokenizer, getattr(base.task(), k), seq_len) for k in ("dev", "test"))
    teacher = BortModel.from_pretrained(base.result("teacher")["model"]).eval()
    t_metrics, t_pred = evaluate(teacher, test)
    t_correct = t_pred == test.labels
    points = []
    for name, run in runs.items():
        point, correct = scored(run, dev, test)
        point["name"] = name
        point["teacher_minus"] = {
            "bootstrap": paired_bootstrap(t_correct, correct, seed=0),
            "mcnemar": mcnemar(t_correct, correct)}
        points.append(point)
    shape = base.config.search
    ms = latencies(base.source().arch, {p["name"]: Arch.from_config(
        run.result("search")["arch"]) for p, run in zip(points, runs.values())},
        threads=THREADS, seq_len=SEQ_LEN)
    for p in points:
        p["ms"], p["speedup"] = ms[p["name"]], ms["source"] / ms[p["name"]]
    metric = base.task().metric
    record = {"command": "python " + " ".join(sys.argv), "run": str(args.run),
              "task": base.config.task, "cpu": cpu_summary(), "bound": shape.min_speedup,
              "within": args.within, "source_ms": ms["source"],
              "source_params": base.source().arch.params().total,
              "teacher": {"dev": base.result("teacher")["dev"][metric],
                          "test": t_metrics[metric]},
              "points": points, "minutes": round((time.perf_counter() - began) / 60, 1),
              "timing": f"bort fp32, 1 × {SEQ_LEN} tokens, {THREADS} thread(s), median of "
                        f"{ROUNDS} interleaved rounds, random weights"}
    record["ends"] = ends(points, record["teacher"]["dev"], shape.min_speedup, args.within)
    text = table(record)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    write_json(args.out.with_suffix(".json"), record)
    plot(record, args.out.with_suffix(".png"))
    write_text(args.out.with_suffix(".md"),
               f"# Accuracy against speed\n\n`{record['command']}`: {record['task']}, "
               f"{record['cpu']}; speed-ups {record['timing']} (source {ms['source']:.1f} ms); "
               f"{record['minutes']} min.\n\n{text}\n")
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
