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
import os
import platform
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from bort import Arch, _core
from bort.bench import RUNTIMES, markdown, plot, run_matrix
from bort.config import BenchConfig, setting
from bort.io import write_json, write_text

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


@dataclass
class Matrix(BenchConfig):
    """`BenchConfig` with this script's named shapes, which mix batch sizes and lengths (a
    `BenchConfig` has one batch size)."""

    named: dict = setting({}, "shape name -> the lengths of its sequences", cli=False)

    def shapes(self) -> dict[str, list[int]]:
        return {name: list(lengths) for name, lengths in self.named.items()}


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
    parser.add_argument("--runtimes", nargs="+", choices=RUNTIMES.names(),
                        default=list(RUNTIMES.names()))
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--workdir", type=Path, default=Path(tempfile.gettempdir()) / "bort-bench")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    args = parser.parse_args()
    if args.quick:
        args.models, args.shapes = ["bort-released", "bert-large"], ["1x16", "1x128"]
    args.workdir.mkdir(parents=True, exist_ok=True)
    args.out.mkdir(parents=True, exist_ok=True)

    dirs = {name: model_dir(name, args.workdir) for name in args.models}
    onnx = {name: onnx_file(name, d, args.workdir) for name, d in dirs.items()}
    config = Matrix(threads=args.threads, rounds=args.rounds, runtimes=args.runtimes,
                    named={name: SHAPES[name] for name in args.shapes})
    rows, notes = run_matrix(dirs, onnx, config, args.workdir)
    machine = {"cpu": _cpu(), "backend": _core.backend()["description"], "cores": os.cpu_count(),
               "python": platform.python_version()}
    report = {"machine": machine,
              "notes": sorted(set(notes)), "rows": rows}
    write_json(args.out / "latency.json", report, indent=2)
    table = markdown(rows)
    write_text(args.out / "latency.md", table)
    print(table)
    for note in sorted(set(notes)):
        print("note:", note)
    plot(rows, args.out / "latency.png")


def _cpu() -> str:
    from bort.timing import cpu_summary

    return cpu_summary()


if __name__ == "__main__":
    main()
