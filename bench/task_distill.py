"""Task distillation against plain fine-tuning on Rotten Tomatoes, scored on the test split.

1. Teacher: all-MiniLM-L6-v2 fine-tuned on the task's train split (selected on dev), or
   ``--teacher DIR``.
2. Student: a small extraction of MiniLM (``--layers`` layers, 12 heads, hidden 384, FFN
   ``--ffn``), no general distillation; the same initial weights and seed in every arm.
3. Three arms, the same fine-tuning settings:
   - plain: cross-entropy on the gold labels of the train split;
   - distil: `bort.finetune.kd_loss` (alpha, T from FinetuneConfig) on the train split with the
     teacher's soft labels;
   - distil + transfer: the same over the train split plus ``--transfer`` IMDB sentences of the
     installed corpus (`bort.data.default_transfer`: RT dev/test copies and near copies
     removed), labelled by the teacher alone.
   Test accuracy of each arm's dev-selected model, McNemar's exact test and a paired bootstrap
   95% CI of each distilled arm against plain.

Writes bench/results/task_distill.json; models go under --work (a rerun reuses the teacher).

    python bench/task_distill.py [--layers 2] [--epochs 2] [--transfer 10000] [--seed 0]
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
import time
from pathlib import Path

import torch

from bort.assets import default_source
from bort.costs import cache_dir
from bort.data import default_transfer, load_task
from bort.extract import extract, magnitude_importance, target_arch
from bort.finetune import FinetuneConfig, encode_split, evaluate, finetune
from bort.io import write_json
from bort.metrics import mcnemar, paired_bootstrap
from bort.model import BortModel
from bort.tokenize import load_tokenizer

RESULTS = Path(__file__).parent / "results" / "task_distill.json"


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--layers", type=int, default=2, help="student layers (default: 2)")
    p.add_argument("--ffn", type=int, default=768, help="student FFN width (default: 768)")
    p.add_argument("--epochs", type=float, default=2.0, help="student epochs (default: 2)")
    p.add_argument("--lr", type=float, default=2e-4, help="student learning rate")
    p.add_argument("--transfer", type=int, default=10000, help="transfer sentences")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--teacher", type=Path, help="a teacher fine-tuned on rotten_tomatoes "
                   "(default: fine-tune MiniLM here, 1 epoch, seq_len 64)")
    p.add_argument("--teacher-epochs", type=float, default=1.0)
    p.add_argument("--work", type=Path, default=cache_dir() / "bench" / "task_distill")
    p.add_argument("--out", type=Path, default=RESULTS)
    return p.parse_args()


def teacher_model(args, task, log) -> tuple[BortModel, float]:
    """The teacher, and the seconds it took to fine-tune here (0 when reused)."""
    if args.teacher is not None:
        return BortModel.from_pretrained(args.teacher), 0.0
    out = args.work / "teacher"
    start = time.perf_counter()
    if not (out / "metrics.json").is_file():
        config = FinetuneConfig(lr=1e-4, epochs=args.teacher_epochs, seq_len=64,
                                evals_per_epoch=2, seed=args.seed)
        finetune(BortModel.from_pretrained(default_source()), task, out, config, log=log,
                 progress=False)
    return BortModel.from_pretrained(out / "model"), time.perf_counter() - start


def student_model(args) -> BortModel:
    source = BortModel.from_pretrained(default_source())
    target = target_arch(source.arch, args.layers, 12, 384, args.ffn)
    student = extract(source, target, importance=magnitude_importance(source))
    student.source_dir = source.source_dir
    return student


def run_arm(name, args, task, student, config, teacher, transfer, test, log) -> dict:
    """One arm: fine-tune a copy of ``student``; its scores, time and test predictions."""
    out = args.work / name
    start = time.perf_counter()
    result = finetune(copy.deepcopy(student), task, out, config, teacher=teacher,
                      transfer=transfer, log=log, progress=False)
    seconds = time.perf_counter() - start
    _, pred = evaluate(result.model, test)
    metrics = json.loads((out / "metrics.json").read_text())
    return {"dev": result.dev, "test": result.test, "steps": result.steps,
            "seconds": round(seconds, 1), "train_rows": metrics.get("train_rows",
                                                                    len(task.train)),
            "transfer": metrics.get("transfer", 0), "teacher": metrics.get("teacher"),
            "teacher_outputs": metrics.get("teacher_outputs"),
            "correct": (pred == test.labels).tolist()}


def compare(arms: dict) -> dict:
    """McNemar and a paired bootstrap CI of each distilled arm against plain, on test."""
    import numpy as np

    plain = np.asarray(arms["plain"]["correct"], bool)
    out = {}
    for name in ("distil", "distil_transfer"):
        other = np.asarray(arms[name]["correct"], bool)
        out[f"{name} - plain"] = {"mcnemar": mcnemar(other, plain),
                                  "bootstrap": paired_bootstrap(other, plain, seed=0)}
    return out


def main() -> int:
    args = parse_args()
    log = print
    began = time.perf_counter()
    task = load_task("rotten_tomatoes", seed=0)
    teacher, teacher_s = teacher_model(args, task, log)
    start = time.perf_counter()
    texts, report = default_transfer(task, args.transfer, seed=args.seed)
    transfer_s = time.perf_counter() - start
    log(f"transfer set: {report}")
    student = student_model(args)
    config = FinetuneConfig(lr=args.lr, epochs=args.epochs, seq_len=64, evals_per_epoch=2,
                            patience=3, seed=args.seed)
    test = encode_split(load_tokenizer(student.source_dir, 64), task.test, 64)
    arms = {}
    for name, kd, extra in (("plain", None, None), ("distil", teacher, None),
                            ("distil_transfer", teacher, texts)):
        arms[name] = run_arm(name, args, task, student, config, kd, extra, test, log)
        log(f"{name}: test accuracy {arms[name]['test']['accuracy']:.4f} "
            f"({arms[name]['seconds']:.0f} s)")
    summary = {
        "command": "python " + " ".join(sys.argv),
        "task": "rotten_tomatoes (seed-0 split: 6824 / 852 / 854)",
        "student": student.arch.describe(), "config": config.as_dict(),
        "teacher": {"dir": str(teacher.source_dir), "seconds": round(teacher_s, 1),
                    **(arms["distil"]["teacher"] or {})},
        "transfer": {**report, "seconds": round(transfer_s, 1)},
        "arms": {k: {m: v for m, v in a.items() if m not in ("correct", "teacher")}
                 for k, a in arms.items()},
        "against_plain": compare(arms),
        "seconds": round(time.perf_counter() - began, 1),
        "threads": torch.get_num_threads()}
    write_json(args.out, summary)
    print(json.dumps({k: summary["arms"][k]["test"]["accuracy"] for k in arms}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
