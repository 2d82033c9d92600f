"""CPU latency of bort's encoder against torch, ONNX Runtime and OpenVINO on the same models.

Models (random weights, seeded — speed does not depend on training; MiniLM uses its real ones):
BERT-large ⟨24, 16, 1024, 4096⟩, BERT-base ⟨12, 12, 768, 3072⟩, Bort as released ⟨4, 8, 1024, 768⟩,
Bort as in the paper ⟨4, 8, 768, 1024⟩ (both with RoBERTa's vocabulary), all-MiniLM-L6-v2.
Shapes: batch 1 × {16, 128, 512}, 8 × 128, and 8 sequences with lengths drawn uniformly from
16–128 by numpy.random.default_rng(0) (padded for the other runtimes; bort skips the padding).
Threads: 1 and 2. Runtimes are interleaved in one process; medians of repeated rounds.

    python bench/latency.py [--quick] [--models ...] [--out bench/results]

Writes latency.json, latency.md (tables, with bort's ratio to each runtime) and latency.png.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
from pathlib import Path

import numpy as np

from bort import Arch
from bort.bench import RUNTIMES, make_inputs, measure, prepare

ROBERTA = dict(vocab_size=50265, max_positions=514, type_vocab_size=1, position_style="roberta",
               pad_token_id=1, layer_norm_eps=1e-5)
MODELS = {
    "bert-large": Arch.uniform(24, 16, 1024, 4096),
    "bert-base": Arch.uniform(12, 12, 768, 3072),
    "bort-released": Arch.uniform(4, 8, 1024, 768, **ROBERTA),
    "bort-paper": Arch.uniform(4, 8, 768, 1024, **ROBERTA),
    "minilm-l6": None,  # the real all-MiniLM-L6-v2
}
SHAPES = {
    "1x16": [16], "1x128": [128], "1x512": [512], "8x128": [128] * 8,
    "8xmixed": [int(n) for n in np.random.default_rng(0).integers(16, 129, 8)],
}


def model_dir(name: str, workdir: Path) -> Path:
    import torch

    from bort.assets import default_source
    from bort.model import BortModel

    if MODELS[name] is None:
        return default_source()
    path = workdir / name
    if not (path / "model.safetensors").exists():
        torch.manual_seed(0)
        BortModel(MODELS[name]).save_pretrained(path, card={"source": "random weights (bench)"})
    return path


def onnx_file(name: str, directory: Path, workdir: Path) -> Path:
    from bort.export import export_onnx
    from bort.model import BortModel

    path = workdir / f"{name}.onnx"
    if not path.exists():
        export_onnx(BortModel.from_pretrained(directory).eval(), path)
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true",
                        help="Bort (released) and BERT-large at 1×16 and 1×128 only")
    parser.add_argument("--models", nargs="+", choices=list(MODELS), default=list(MODELS))
    parser.add_argument("--shapes", nargs="+", choices=list(SHAPES), default=list(SHAPES))
    parser.add_argument("--threads", nargs="+", type=int, default=[1, 2])
    parser.add_argument("--runtimes", nargs="+", choices=RUNTIMES, default=list(RUNTIMES))
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--workdir", type=Path, default=Path(tempfile.gettempdir()) / "bort-bench")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    args = parser.parse_args()
    if args.quick:
        args.models, args.shapes = ["bort-released", "bert-large"], ["1x16", "1x128"]
    args.workdir.mkdir(parents=True, exist_ok=True)
    args.out.mkdir(parents=True, exist_ok=True)

    rows, notes = [], []
    for name in args.models:
        directory = model_dir(name, args.workdir)
        onnx = onnx_file(name, directory, args.workdir)
        arch = Arch.from_pretrained(directory)
        for threads in args.threads:
            runners = prepare(directory, onnx, tuple(args.runtimes), threads, args.workdir, notes)
            for shape in args.shapes:
                lengths = SHAPES[shape]
                inputs = make_inputs(lengths, min(arch.vocab_size, 30000))
                rounds = args.rounds if arch.flops(1, 128) * len(lengths) < 2e11 else 5
                ms = measure(runners, inputs, rounds=rounds)
                real_flops = sum(arch.flops(1, n) for n in lengths)
                for runtime, t in ms.items():
                    rows.append({"model": name, "shape": shape, "threads": threads,
                                 "runtime": runtime, "ms": t,
                                 "gflops_per_s": real_flops / t / 1e6})
                line = "  ".join(f"{r} {t:.2f}" for r, t in ms.items())
                print(f"{name:13s} {shape:8s} {threads}T  {line}", flush=True)
    report = {"machine": {"cpu": _cpu(), "cores": os.cpu_count(), "python": platform.python_version()},
              "notes": sorted(set(notes)), "rows": rows}
    (args.out / "latency.json").write_text(json.dumps(report, indent=2) + "\n")
    table = markdown(rows)
    (args.out / "latency.md").write_text(table)
    print(table)
    for note in sorted(set(notes)):
        print("note:", note)
    plot(rows, args.out / "latency.png")


def _cpu() -> str:
    from bort.costs import _cpu_model

    return _cpu_model()


def markdown(rows: list[dict]) -> str:
    """One table per model: a row per (shape, threads), ms per runtime, then bort-fp32's speed-up
    over each fp32 runtime (> 1: bort is faster)."""
    out = []
    for model in dict.fromkeys(r["model"] for r in rows):
        mine = [r for r in rows if r["model"] == model]
        runtimes = list(dict.fromkeys(r["runtime"] for r in mine))
        others = [r for r in runtimes if r != "bort-fp32"]
        out += [f"### {model} (ms; last columns: bort-fp32 speed-up)", "",
                "| shape | threads | " + " | ".join(runtimes) + " | "
                + " | ".join(f"vs {r}" for r in others) + " |",
                "|---|---|" + "---|" * (len(runtimes) + len(others))]
        for key in dict.fromkeys((r["shape"], r["threads"]) for r in mine):
            ms = {r["runtime"]: r["ms"] for r in mine if (r["shape"], r["threads"]) == key}
            mine_ms = ms.get("bort-fp32")
            ratios = [f"{ms[r] / mine_ms:.2f}×" if mine_ms and r in ms else "" for r in others]
            out.append(f"| {key[0]} | {key[1]} | " + " | ".join(
                f"{ms[r]:.2f}" if r in ms else "" for r in runtimes) + " | " + " | ".join(ratios) + " |")
        out.append("")
    return "\n".join(out) + "\n"


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    groups = list(dict.fromkeys((r["model"], r["shape"], r["threads"]) for r in rows))
    runtimes = list(dict.fromkeys(r["runtime"] for r in rows))
    fig, ax = plt.subplots(figsize=(max(6, 0.9 * len(groups)), 4.5))
    width = 0.8 / len(runtimes)
    for i, runtime in enumerate(runtimes):
        ms = [next((r["ms"] for r in rows if (r["model"], r["shape"], r["threads"]) == g
                    and r["runtime"] == runtime), np.nan) for g in groups]
        ax.bar(np.arange(len(groups)) + i * width, ms, width, label=runtime)
    ax.set_xticks(np.arange(len(groups)) + 0.4 - width / 2)
    ax.set_xticklabels([f"{m}\n{s} {t}T" for m, s, t in groups], fontsize=7)
    ax.set_yscale("log")
    ax.set_ylabel("ms (median, log scale)")
    ax.legend(fontsize=7, ncol=4)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


if __name__ == "__main__":
    main()
