"""bort's Agora in the scarce-data regime: N labelled sentences in all, the rest as a pool.

For each N of ``--sizes`` and each seed: a stratified, seeded sample of N sentences of the
run's Rotten Tomatoes train split, 80% to train and 20% to dev (dev counts inside N); the rest
of the train split is the unlabelled pool (its labels are never read); the run's test split.
The teacher is the source fine-tuned on those N sentences only (selected on their dev); the
student is the run's generally distilled student (``--run``, default ``runs/demo``). Every arm
sees the same gold labels:

- plain: cross-entropy on the gold labels, as many steps as task distillation, early-stopped
  with the same patience in steps;
- distilled: task distillation from the teacher over the train sentences and the pool;
- agora, random, distill: bort's Agora (`bort.agora_style`, k-fold: out-of-fold mistakes on
  train, all of dev selecting) from the distilled student; random, as many teacher-labelled
  points per round drawn uniformly; distill, the same extra steps without new points.

Where the teacher is at or below 2/3 on dev, the arms that need it are reported as skipped.
Test accuracy of each final model once; per N, mean ± sd over seeds, paired bootstrap 95% CIs
over test items (seed-averaged correctness and per seed) and McNemar per seed for the
differences in `PAIRS`. Writes bench/results/agora_scarce.{json,md,png}; models go under
RUN/agora-scarce/N-n/seed-s (a rerun resumes per (N, seed, arm)).

    python bench/agora.py --run runs/demo --sizes 250 500 1000 --seeds 0 1 2 3 4
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
from student_seeds import compare

from bort.agora import TEACHER_THRESHOLD
from bort.agora_style import finetune_rounds
from bort.data import stratified_split
from bort.finetune import finetune
from bort.io import write_json, write_text
from bort.metrics import correct_of, correct_string
from bort.model import BortModel
from bort.pipeline import Run, open_run
from bort.timing import cpu_summary

RESULTS = Path(__file__).parent / "results" / "agora_scarce"
ARMS = ("plain", "distilled", "distill", "random", "agora")
#: Differences reported (a − b), each paired over the test items.
PAIRS = (("agora", "random"), ("agora", "distill"), ("agora", "distilled"),
         ("distilled", "plain"))
#: The teacher on a few hundred sentences: enough epochs to converge, stopped on dev.
TEACHER_EPOCHS, PATIENCE = 10, 3


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--run", type=Path, default=Path("runs/demo"), help="a finished pipeline run")
    p.add_argument("--sizes", type=int, nargs="+", default=[250, 500, 1000],
                   help="labelled sentences in all (train + dev)")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    p.add_argument("--out", type=Path, default=RESULTS, help="results, without suffix")
    return p.parse_args()


def scarce(run: Run, n: int, seed: int):
    """The task with N labelled sentences (80% train, 20% dev) and the pool: the rest of the
    train split's texts."""
    task = run.task()
    train = task.train
    if not 10 <= n < len(train):
        raise SystemExit(f"N = {n}: needs 10 <= N < {len(train)} (the train split)")
    keep, rest = stratified_split(train.labels, (n / len(train), 1 - n / len(train)), seed)
    labelled = train.subset(keep)
    tr, dv = stratified_split(labelled.labels, (0.8, 0.2), seed)
    return (replace(task, train=labelled.subset(tr), dev=labelled.subset(dv)),
            [train.texts[i] for i in rest])


def one(run: Run, n: int, seed: int, work: Path, log) -> dict:
    """Every arm at (N, seed): test accuracy and test correctness (0/1 string) per arm, the
    teacher's dev score, and the arms skipped."""
    from bort.finetune import encode_split, evaluate
    from bort.tokenize import load_tokenizer

    task, pool = scarce(run, n, seed)
    c = run.config
    teacher_dir = work / "teacher"
    if not (teacher_dir / "metrics.json").is_file():
        finetune(run.source(), task, teacher_dir, replace(c.stage("teacher"), seed=seed,
                                                          epochs=TEACHER_EPOCHS,
                                                          patience=PATIENCE),
                 resume=True, log=None, progress=False)
    teacher = BortModel.from_pretrained(teacher_dir / "model")
    teacher_dev = json.loads((teacher_dir / "metrics.json").read_text())["dev"]["accuracy"]
    student = BortModel.from_pretrained(run.result("distill")["model"])
    config = replace(c.stage("student"), seed=seed)
    test = encode_split(load_tokenizer(student.source_dir, config.seq_len), task.test,
                        config.seq_len)
    out: dict = {"teacher_dev": teacher_dev, "train": len(task.train), "dev": len(task.dev),
                 "pool": len(pool), "arms": {}, "skipped": []}

    def record(arm: str, model: BortModel) -> None:
        metrics, pred = evaluate(model.eval(), test)
        out["arms"][arm] = {"test": metrics["accuracy"],
                            "correct": correct_string(pred, test.labels)}

    if teacher_dev > TEACHER_THRESHOLD:
        agora = replace(c.stage("agora"), selection="kfold", seed=seed)
        rounds = finetune_rounds(student, teacher, task, work / "agora", config, agora,
                                 transfer=pool, log=log)
        for arm, r in rounds["arms"].items():
            out["arms"][arm] = {"test": r["test"]["accuracy"], "correct": r["test_correct"]}
        out["rounds"] = {arm: rounds["arms"][arm].get("rounds", []) for arm in rounds["arms"]}
        steps = json.loads((work / "agora" / "distilled" / "metrics.json").read_text())["steps"]
    else:
        out["skipped"] = ["distilled", "distill", "random", "agora"]
        log(f"N = {n}, seed {seed}: the teacher's dev accuracy {teacher_dev:.4f} is not above "
            f"2/3; only the plain arm runs")
        steps = 3 * -(-len(task.train) // config.batch_size)
    plain_dir = work / "plain"
    if not (plain_dir / "metrics.json").is_file():  # as many steps as task distillation
        epochs = steps * config.batch_size / len(task.train)
        # over N sentences an epoch is a few steps: patience in distillation's evaluations,
        # else plain stops after ~40 steps still at chance (seen at N = 500)
        patience = PATIENCE * -(-epochs // config.epochs)
        finetune(BortModel.from_pretrained(run.result("distill")["model"]), task, plain_dir,
                 replace(config, epochs=epochs, patience=int(patience)), resume=True, log=None,
                 progress=False)
    record("plain", BortModel.from_pretrained(plain_dir / "model"))
    return out


def summarise(per_seed: dict[int, dict]) -> dict:
    """Per arm mean ± sd over seeds; per pair, per-seed and seed-averaged differences."""
    seeds = list(per_seed)
    arms = [a for a in ARMS if all(a in per_seed[s]["arms"] for s in seeds)]
    correct = {a: np.asarray([correct_of(per_seed[s]["arms"][a]["correct"]) for s in seeds],
                             float) for a in arms}
    summary = {"arms": {}, "differences": {}}
    for a in arms:
        scores = [per_seed[s]["arms"][a]["test"] for s in seeds]
        summary["arms"][a] = {"mean": statistics.fmean(scores),
                              "sd": statistics.stdev(scores) if len(scores) > 1 else 0.0,
                              "per_seed": dict(zip(map(str, seeds), scores))}
    for a, b in PAIRS:
        if a in arms and b in arms:
            summary["differences"][f"{a} − {b}"] = {
                "per_seed": {str(s): compare(correct[a][i], correct[b][i])
                             for i, s in enumerate(seeds)},
                "seed_averaged": compare(correct[a].mean(0), correct[b].mean(0))}
    return summary


def table(n: int, summary: dict, teacher: list[float]) -> str:
    lines = [f"### N = {n} (teacher dev {statistics.fmean(teacher):.4f} ± "
             f"{statistics.stdev(teacher) if len(teacher) > 1 else 0:.4f})", "",
             "| arm | test accuracy, mean ± sd | per seed |", "|---|---|---|"]
    for arm, a in summary["arms"].items():
        lines.append(f"| {arm} | {a['mean']:.4f} ± {a['sd']:.4f} | "
                     + ", ".join(f"{v:.4f}" for v in a["per_seed"].values()) + " |")
    lines += ["", "| difference | seed | points [95% CI] | McNemar p |", "|---|---|---|---|"]
    for name, g in summary["differences"].items():
        for seed, c in [*g["per_seed"].items(), ("mean", g["seed_averaged"])]:
            b = c["bootstrap"]
            p = f"{c['mcnemar']['p_value']:.3g}" if "mcnemar" in c else "—"
            lines.append(f"| {name} | {seed} | {100 * b['difference']:+.1f} "
                         f"[{100 * b['low']:+.1f}, {100 * b['high']:+.1f}] | {p} |")
    return "\n".join(lines)


def plot(by_n: dict[int, dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.6, 4.0))
    for arm in ARMS:
        points = [(n, s["arms"][arm]) for n, s in by_n.items() if arm in s["arms"]]
        if points:
            ax.errorbar([n for n, _ in points], [100 * a["mean"] for _, a in points],
                        yerr=[100 * a["sd"] for _, a in points], marker="o", capsize=3,
                        label=arm)
    ax.set_xscale("log")
    ax.set_xlabel("labelled sentences N (train + dev)")
    ax.set_ylabel("test accuracy, %, mean ± sd over seeds")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main() -> int:
    args = parse_args()
    began = time.perf_counter()
    run = open_run(args.run, needs=("teacher", "distill"), log=print)
    if run.embedding or run.task().regression:
        raise SystemExit("Agora needs a classification run")
    torch.set_num_threads(run.config.threads)
    by_n, raw = {}, {}
    for n in args.sizes:
        per_seed = {}
        for seed in args.seeds:
            start = time.perf_counter()
            per_seed[seed] = one(run, n, seed, run.dir / "agora-scarce" / f"N-{n}" /
                                 f"seed-{seed}", lambda m: None)
            print(f"N = {n}, seed {seed}: " + ", ".join(
                f"{a} {r['test']:.4f}" for a, r in per_seed[seed]["arms"].items())
                + f" (teacher dev {per_seed[seed]['teacher_dev']:.4f}; "
                f"{time.perf_counter() - start:.0f} s)", flush=True)
        by_n[n], raw[str(n)] = summarise(per_seed), {str(s): v for s, v in per_seed.items()}
    record = {"command": "python " + " ".join(sys.argv), "run": str(args.run),
              "task": run.config.task, "cpu": cpu_summary(), "student":
              run.result("search")["describe"], "sizes": args.sizes, "seeds": args.seeds,
              "agora_settings": run.config.agora.as_dict(),
              "student_settings": run.config.student.as_dict(),
              "results": {str(n): s for n, s in by_n.items()}, "per_seed": raw,
              "minutes": round((time.perf_counter() - began) / 60, 1)}
    text = "\n\n".join(table(n, by_n[n], [raw[str(n)][str(s)]["teacher_dev"]
                                          for s in args.seeds]) for n in args.sizes)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    write_json(args.out.with_suffix(".json"), record)
    plot(by_n, args.out.with_suffix(".png"))
    write_text(args.out.with_suffix(".md"),
               f"# bort's Agora with scarce labels\n\n`{record['command']}`: "
               f"{record['task']}, student `{record['student']}`, seeds {args.seeds}; "
               f"{record['cpu']}; {record['minutes']} min.\n\n{text}\n")
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
