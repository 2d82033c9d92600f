"""The shipped student over several seeds: teacher, plain fine-tuning and task distillation.

Reuses a finished `bort pipeline` run (``--run``, default ``runs/demo``): its task split, its
searched and generally distilled student (``RUN/distill/student``) and its settings
(``RUN/pipeline.json``). For each seed, on the run's split (the same test items every time, so
that differences pair):

- teacher: the source fine-tuned with the run's teacher settings and that seed (cached; the run's
  own seed reuses the run's teacher);
- plain: the student fine-tuned on the gold labels of the train split alone, the run's student
  settings;
- distilled: the pipeline's student recipe (`bort.finetune` with that seed's teacher: soft labels
  over the train split and a transfer sample drawn with that seed); for the run's own seed, the
  run's student itself.

Reports each arm's test accuracy (mean ± sd over seeds), and for teacher − plain, teacher −
distilled and distilled − plain the difference per seed with its paired bootstrap 95% CI over
test items and McNemar's exact test, and the difference of the seed-averaged predictions with
its CI. Models are selected on dev; the test split scores each final model once.

Writes bench/results/student_seeds.json and .md; models go under RUN/seeds (a rerun resumes).

    python bench/student_seeds.py --run runs/demo --seeds 0 1 2 3 4
"""

from __future__ import annotations

import argparse
import copy
import statistics
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from bort.data import default_transfer
from bort.finetune import encode_split, evaluate, finetune
from bort.io import write_json, write_text
from bort.metrics import mcnemar, paired_bootstrap
from bort.model import BortModel
from bort.pipeline import Run, open_run
from bort.tokenize import load_tokenizer

RESULTS = Path(__file__).parent / "results" / "student_seeds"
ARMS = ("teacher", "plain", "distilled")
#: The paired differences reported: the teacher's lead over each student, and what task
#: distillation adds over plain fine-tuning of the same student.
PAIRS = (("teacher", "plain"), ("teacher", "distilled"), ("distilled", "plain"))


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--run", type=Path, default=Path("runs/demo"), help="a finished pipeline run")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    p.add_argument("--work", type=Path, help="where the models go (default: RUN/seeds)")
    p.add_argument("--out", type=Path, default=RESULTS, help="results, without suffix")
    return p.parse_args()


def trained(out: Path, make) -> BortModel:
    """The model fine-tuned in ``out``: reused when finished, else ``make(out)`` trains it."""
    if not (out / "metrics.json").is_file():
        make(out)
    return BortModel.from_pretrained(out / "model")


def one_seed(run: Run, seed: int, work: Path, test) -> dict:
    """The three arms of one seed: each one's dev and test scores and test correctness."""
    task, config = run.task(), replace(run.config.stage("student"), seed=seed)
    student = BortModel.from_pretrained(run.result("distill")["model"])
    models = {"teacher": BortModel.from_pretrained(run.teacher_dir(seed) / "model")}
    models["plain"] = trained(work / "plain", lambda out: finetune(
        copy.deepcopy(student), task, out, config, log=None, progress=False))
    if (seed == run.config.seed and run.done("finetune")  # the run's own student is this arm
            and "agora" not in run.result("finetune")):  # (unless selected on half of dev)
        models["distilled"] = BortModel.from_pretrained(run.result("finetune")["distilled"]
                                                        ["model"])
    else:
        models["distilled"] = trained(work / "distilled", lambda out: finetune(
            copy.deepcopy(student), task, out, config, teacher=models["teacher"],
            transfer=default_transfer(task, config.transfer_limit, seed)[0], log=None,
            progress=False))
    out = {}
    for arm, model in models.items():
        metrics, pred = evaluate(model.eval(), test)
        out[arm] = {"test": metrics[task.metric], "correct": (pred == test.labels).tolist()}
    return out


def compare(a: np.ndarray, b: np.ndarray) -> dict:
    """a − b on the same items: paired bootstrap CI, and McNemar when both are 0/1."""
    out = {"bootstrap": paired_bootstrap(a, b, seed=0)}
    if set(np.unique(np.concatenate([a, b]))) <= {0.0, 1.0}:
        out["mcnemar"] = mcnemar(a.astype(bool), b.astype(bool))
    return out


def summarise(per_seed: dict[int, dict]) -> dict:
    """Mean ± sd of each arm, per-seed and seed-averaged teacher − student comparisons."""
    correct = {arm: np.asarray([per_seed[s][arm]["correct"] for s in per_seed], float)
               for arm in ARMS}
    arms = {}
    for arm in ARMS:
        scores = [per_seed[s][arm]["test"] for s in per_seed]
        arms[arm] = {"mean": statistics.fmean(scores),
                     "sd": statistics.stdev(scores) if len(scores) > 1 else 0.0,
                     "per_seed": dict(zip(map(str, per_seed), scores))}
    gaps = {}
    for a, b in PAIRS:
        gaps[f"{a} − {b}"] = {
            "per_seed": {str(s): compare(correct[a][i], correct[b][i])
                         for i, s in enumerate(per_seed)},
            # every item's correctness averaged over seeds, then paired over items
            "seed_averaged": compare(correct[a].mean(0), correct[b].mean(0))}
    return {"arms": arms, "differences": gaps}


def table(summary: dict) -> str:
    pts = 100.0
    lines = ["| arm | test accuracy, mean ± sd | " + " | ".join(
        f"seed {s}" for s in summary["arms"]["teacher"]["per_seed"]) + " |",
        "|---|---|" + "---|" * len(summary["arms"]["teacher"]["per_seed"])]
    for arm, a in summary["arms"].items():
        lines.append(f"| {arm} | {a['mean']:.4f} ± {a['sd']:.4f} | "
                     + " | ".join(f"{v:.4f}" for v in a["per_seed"].values()) + " |")
    lines += ["", "| difference | seed | points [95% CI] | McNemar p |", "|---|---|---|---|"]
    for name, g in summary["differences"].items():
        rows = [*g["per_seed"].items(), ("mean", g["seed_averaged"])]
        for seed, c in rows:
            b = c["bootstrap"]
            p = f"{c['mcnemar']['p_value']:.3g}" if "mcnemar" in c else "—"
            lines.append(f"| {name} | {seed} | {pts * b['difference']:+.1f} "
                         f"[{pts * b['low']:+.1f}, {pts * b['high']:+.1f}] | {p} |")
    return "\n".join(lines)


def main() -> int:
    args = parse_args()
    began = time.perf_counter()
    run = open_run(args.run, needs=("teacher", "distill"))
    torch.set_num_threads(run.config.threads)
    student_dir = Path(run.result("distill")["model"])
    test = encode_split(load_tokenizer(student_dir, run.config.student.seq_len), run.task().test,
                        run.config.student.seq_len)
    per_seed = {}
    for seed in args.seeds:
        start = time.perf_counter()
        per_seed[seed] = one_seed(run, seed, (args.work or args.run / "seeds") / f"seed-{seed}",
                                  test)
        print(f"seed {seed}: " + ", ".join(f"{arm} {per_seed[seed][arm]['test']:.4f}"
                                           for arm in ARMS)
              + f" ({time.perf_counter() - start:.0f} s)", flush=True)
    summary = summarise(per_seed)
    record = {"command": "python " + " ".join(sys.argv), "run": str(args.run),
              "task": run.config.task, "split": f"seed {run.config.seed}: "
              f"{len(run.task().train)} / {len(run.task().dev)} / {len(run.task().test)}",
              "student": run.result("search")["describe"],
              "measured_speedup": run.result("search")["measured_speedup"],
              "student_settings": run.config.student.as_dict(),
              "teacher_settings": run.config.teacher.as_dict(), **summary,
              # which test items each model gets right, as 0/1 strings: any other comparison
              # can be recomputed from the record
              "correct": {str(s): {arm: "".join("01"[c] for c in per_seed[s][arm]["correct"])
                                   for arm in ARMS} for s in per_seed},
              "minutes": round((time.perf_counter() - began) / 60, 1),
              "threads": torch.get_num_threads()}
    text = table(summary)
    write_json(args.out.with_suffix(".json"), record)
    write_text(args.out.with_suffix(".md"),
               f"# Student over {len(args.seeds)} seeds\n\n`{record['command']}`: "
               f"{record['task']} ({record['split']}), student `{record['student']}` "
               f"({record['measured_speedup']:.1f}× measured), {record['minutes']} min.\n\n"
               f"{text}\n")
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
