"""Distillation on this CPU: learning curves, and the cost of the search's surrogate per step.

1. all-MiniLM-L6-v2 teaches a 3-layer, half-FFN student on the default corpus for --steps steps,
   twice: extracted from the teacher's weights (importance-guided) and randomly initialised.
   Held-out distillation loss every --eval-every steps → distill.json, distill.png.
2. Seconds per distillation step (batch 16 × 64 tokens) for 2-, 4- and 6-layer students (the
   cost the search driver pays per surrogate step).

    python bench/distill.py [--steps 200] [--out bench/results]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch

from bort.assets import default_source
from bort.costs import importance
from bort.data import default_corpus
from bort.distill import Corpus, DistillConfig, distill
from bort.extract import extract, target_arch
from bort.io import write_json
from bort.model import BortModel


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--eval-every", type=int, default=20)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    args.out.mkdir(parents=True, exist_ok=True)
    teacher = BortModel.from_pretrained(default_source())
    corpus = Corpus(default_corpus(), held_out=0.002)
    imp = importance(teacher, corpus.head(64))
    target = target_arch(teacher.arch, 3, 12, 384, 768)
    config = DistillConfig(steps=args.steps, batch_size=16, seq_len=64, lr=5e-4,
                           eval_every=args.eval_every, checkpoint_every=args.steps + 1)
    curves = {}
    for name, student in (("extracted", extract(teacher, target, importance=imp)),
                          ("random init", BortModel(target))):
        start = time.process_time()
        with tempfile.TemporaryDirectory() as run:
            result = distill(teacher, student, corpus, run, config, log=None)
        curves[name] = {"eval_loss": result["eval_loss"],
                        "cpu_seconds": time.process_time() - start}
        print(f"{name}: held-out loss {result['eval_loss'][0][1]:.4f} -> "
              f"{result['eval_loss'][-1][1]:.4f} in {args.steps} steps, "
              f"{curves[name]['cpu_seconds']:.0f} CPU s")
    per_step = {}
    for layers in (2, 4, 6):
        student = extract(teacher, target_arch(teacher.arch, layers, 12, 384, 1536),
                          importance=imp)
        quick = DistillConfig(steps=12, batch_size=16, seq_len=64, eval_every=1000,
                              checkpoint_every=1000)
        with tempfile.TemporaryDirectory() as run:
            wall = time.perf_counter()
            distill(teacher, student, corpus, run, quick, log=None, progress=False)
            per_step[layers] = (time.perf_counter() - wall) / quick.steps
        print(f"{layers}-layer student: {per_step[layers]:.3f} s per step "
              f"(batch 16 x 64 tokens, {args.threads} threads, incl. the teacher's forward)")
    write_json(args.out / "distill.json",
               {"curves": curves, "seconds_per_step": per_step, "threads": args.threads},
               indent=2)
    _plot(curves, args.out / "distill.png")
    print(f"wrote {args.out / 'distill.json'} and {args.out / 'distill.png'}")


def _plot(curves: dict, path: Path) -> None:
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6, 4))
    ax = fig.subplots()
    for name, curve in curves.items():
        steps, losses = zip(*curve["eval_loss"])
        ax.plot(steps, losses, marker=".", label=name)
    ax.set_xlabel("distillation step (batch 16 × 64 tokens)")
    ax.set_ylabel("held-out distillation loss")
    ax.set_title("3-layer student of all-MiniLM-L6-v2")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)


if __name__ == "__main__":
    main()
