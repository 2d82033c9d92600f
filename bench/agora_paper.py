"""The paper's Agora loop vs plain fine-tuning on Rotten Tomatoes polarity (held-out test).

1. Teacher S: all-MiniLM-L6-v2 fine-tuned on the task (train split, selected on dev).
2. Student: a 3-layer, half-FFN extraction of MiniLM, distilled on the default corpus.
3. For each seed, the same Θ (learning rates) and the same loop twice:
   - plain: each round retrains one model per θ with fresh seeds and keeps the best on dev, but
     adds no points (the same sweep and compute as Agora, without its augmentation);
   - Agora: each round adds points generated around the best model's dev mistakes (token
     neighbours in the embedding table), labelled by S.
   Test accuracy of the dev-selected model of each arm; "plain, one sweep" is plain's round 1.
4. mean ± std over seeds, and McNemar's exact test on the test predictions (per seed and pooled).

Writes bench/results/agora.{json,md}; models and Agora states go under --work (resumable:
a rerun skips what is done).

    python bench/agora_paper.py [--seeds 0 1 2] [--work runs/bench-agora]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

from bort.agora import AgoraConfig, finetune_agora
from bort.assets import default_source
from bort.costs import importance
from bort.data import default_corpus, load_task
from bort.distill import Corpus, DistillConfig, distill
from bort.extract import extract, target_arch
from bort.finetune import FinetuneConfig, encode_split, evaluate, finetune
from bort.io import write_json, write_text
from bort.metrics import mcnemar
from bort.model import BortModel
from bort.tokenize import load_tokenizer


def teacher_model(task, work: Path, log) -> tuple[BortModel, dict]:
    done = work / "teacher" / "metrics.json"
    if not done.is_file():
        config = FinetuneConfig(lr=5e-5, epochs=2, seq_len=64, evals_per_epoch=2)
        finetune(BortModel.from_pretrained(default_source()), task, work / "teacher", config,
                 resume=True, log=log)
    return BortModel.from_pretrained(work / "teacher" / "model"), json.loads(done.read_text())


def student_model(work: Path, steps: int, log) -> BortModel:
    path = work / "student" / "student"
    if not (path / "config.json").is_file():
        source = BortModel.from_pretrained(default_source())
        corpus = Corpus(default_corpus(), held_out=0.002)
        target = target_arch(source.arch, 3, 12, 384, 768)
        student = extract(source, target, importance=importance(source, corpus.head(64)))
        config = DistillConfig(steps=steps, batch_size=16, seq_len=64, lr=5e-4,
                               eval_every=max(1, steps // 4), checkpoint_every=50)
        distill(source, student, corpus, work / "student", config, resume=True, log=log)
    return BortModel.from_pretrained(path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--epochs", type=float, default=1.0, help="epochs per fit")
    parser.add_argument("--lrs", type=float, nargs="+", default=[2e-4, 1e-4], help="Θ")
    parser.add_argument("--distill-steps", type=int, default=400)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--work", type=Path, default=Path("runs/bench-agora"))
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    started = time.time()
    thetas = [{"lr": lr} for lr in args.lrs]

    def log(msg: str) -> None:
        print(f"[{(time.time() - started) / 60:6.1f} min] {msg}", flush=True)

    task = load_task("rotten_tomatoes", seed=0)
    task.write_split(args.work)
    teacher, teacher_metrics = teacher_model(task, args.work, log)
    log(f"teacher test accuracy {teacher_metrics['test']['accuracy']:.4f}")
    student = student_model(args.work, args.distill_steps, log)
    config = FinetuneConfig(epochs=args.epochs, seq_len=64, evals_per_epoch=2, patience=2)
    runs: dict[str, dict[int, dict]] = {"plain": {}, "agora": {}}
    for seed in args.seeds:
        for arm in ("plain", "agora"):
            out = args.work / f"{arm}-seed{seed}"
            if not (out / "metrics.json").is_file():
                t = time.time()
                agora_config = AgoraConfig(thetas=thetas, seed=seed, augment=arm == "agora")
                finetune_agora(student, teacher, task, out, config, agora_config, log=log)
                log(f"{arm} seed {seed}: {(time.time() - t) / 60:.1f} min")
            metrics = json.loads((out / "metrics.json").read_text())
            model = BortModel.from_pretrained(out / "model")  # predictions for the paired test
            test = encode_split(load_tokenizer(out / "model"), task.test, config.seq_len)
            _, pred = evaluate(model, test)
            metrics["test_correct"] = (pred == test.labels).astype(int).tolist()
            runs[arm][seed] = metrics
            log(f"{arm} seed {seed}: test {metrics['test']['accuracy']:.4f}")

    def summary(values):
        return {"mean": float(np.mean(values)), "std": float(np.std(values, ddof=1))
                if len(values) > 1 else 0.0, "values": [float(v) for v in values]}

    seeds = args.seeds
    result = {
        "task": "rotten_tomatoes", "split": task.split | {"sizes": [len(task.train),
                                                                     len(task.dev),
                                                                     len(task.test)]},
        "teacher": {"test": teacher_metrics["test"], "dev": teacher_metrics["dev"]},
        "student_params": student.arch.params().total,
        "teacher_params": teacher.arch.params().total,
        "student_arch": str(student.arch),
        "thetas": thetas, "epochs_per_fit": args.epochs, "seeds": seeds,
        "plain_one_sweep": summary([runs["plain"][s]["rounds"][0]["test"] for s in seeds]),
        "plain": summary([runs["plain"][s]["test"]["accuracy"] for s in seeds]),
        "agora": summary([runs["agora"][s]["test"]["accuracy"] for s in seeds]),
        "train_steps": {arm: [runs[arm][s]["train_steps"] for s in seeds] for arm in runs},
        "rounds": {arm: {s: runs[arm][s]["rounds"] for s in seeds} for arm in runs},
        "mcnemar_per_seed": {s: mcnemar(runs["agora"][s]["test_correct"],
                                        runs["plain"][s]["test_correct"]) for s in seeds},
        "mcnemar_pooled": mcnemar(sum((runs["agora"][s]["test_correct"] for s in seeds), []),
                                  sum((runs["plain"][s]["test_correct"] for s in seeds), [])),
        "minutes": (time.time() - started) / 60,
    }
    write_json(args.out / "agora.json", result)
    pooled = result["mcnemar_pooled"]
    lines = [
        f"Rotten Tomatoes polarity, test split of {len(task.test)} sentences "
        f"(seeds {', '.join(map(str, seeds))}; Θ = lr ∈ {[t['lr'] for t in thetas]}, "
        f"{args.epochs} epochs per fit)", "",
        "| model | params | test accuracy (mean ± std) | training steps per seed |",
        "|---|---|---|---|",
        f"| teacher S: all-MiniLM-L6-v2 fine-tuned | {result['teacher_params']:,} | "
        f"{teacher_metrics['test']['accuracy']:.4f} | — |",
    ]
    for key, name in (("plain_one_sweep", "student, plain (one sweep over Θ)"),
                      ("plain", "student, plain (same loop and compute as Agora)"),
                      ("agora", "student, Agora")):
        steps = result["train_steps"]["agora" if key == "agora" else "plain"]
        steps_text = ("—" if key == "plain_one_sweep" else
                      f"{np.mean(steps):,.0f}")
        lines.append(f"| {name} | {result['student_params']:,} | {result[key]['mean']:.4f} ± "
                     f"{result[key]['std']:.4f} | {steps_text} |")
    lines += ["", f"McNemar (Agora vs plain, same loop), pooled over seeds: Agora right and plain "
                  f"wrong on {pooled['a_only']}, the reverse on {pooled['b_only']}, "
                  f"p = {pooled['p_value']:.3g}."]
    write_text(args.out / "agora.md", "\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
