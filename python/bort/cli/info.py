"""`bort info`: architecture, parameters by part and FLOPs of a model; `--cpu`: this CPU and the
kernels bort's encoder runs on it."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from ..arch import Arch
from ._options import default_source

NAME = "info"
HELP = "architecture, parameters by part and FLOPs of a model"
SETTINGS = ()

#: The FLOP count's default shape: one sequence of 128 tokens, the serving shape bort reports.
BATCH, SEQ_LEN = 1, 128


def add(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("source", nargs="?",
                        help="model directory (default: the installed all-MiniLM-L6-v2)")
    parser.add_argument("--batch", type=int, default=BATCH, help="batch size for the FLOP count")
    parser.add_argument("--seq-len", type=int, default=SEQ_LEN, help="tokens per sequence")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    parser.add_argument("--cpu", action="store_true",
                        help="show this CPU, its ISA features and the kernels (ISA, GEMM per "
                             "dtype) bort's encoder runs here, instead of a model")


def info(source: Path, batch: int, seq_len: int) -> dict[str, Any]:
    """What `bort info` shows: the architecture, parameters by part and FLOPs."""
    arch = Arch.from_pretrained(source)
    return {
        "source": str(source),
        "architecture": arch.describe(),
        "uniform": arch.is_uniform,
        "config": arch.to_config(),
        "params": arch.params().as_dict(),
        "flops": {"batch": batch, "seq_len": seq_len, "flops": arch.flops(batch, seq_len)},
    }


def _print_layers(arch: Arch) -> None:
    for i, layer in enumerate(arch.layers):
        attn = f"{layer.heads} heads × {layer.head_dim}" if layer.heads else "no attention"
        ffn = f"FFN {layer.ffn}" if layer.ffn else "no FFN"
        print(f"  layer {i:<3}   {attn}, {ffn}, {layer.params(arch.hidden):,} parameters")


def print_info(report: dict[str, Any]) -> None:
    arch = Arch.from_config(report["config"])
    p, f = report["params"], report["flops"]
    print(f"source        {report['source']}")
    print(f"architecture  {report['architecture']}")
    print(f"              {arch.family} family, {arch.activation} activation, "
          f"{arch.position_style} positions, LayerNorm eps {arch.layer_norm_eps:g}")
    print(f"vocabulary    {arch.vocab_size:,} tokens, {arch.max_positions:,} positions, "
          f"{arch.type_vocab_size} token types")
    if not arch.is_uniform:
        _print_layers(arch)
    print(f"parameters    {p['total']:>14,}")
    for part in ("embeddings", "encoder", "pooler", "head"):
        print(f"  {part:<11} {p[part]:>14,}  {100 * p[part] / p['total']:5.1f}%")
    print(f"FLOPs         {f['flops']:>14,}  (batch {f['batch']} × {f['seq_len']} tokens, "
          f"{f['flops'] / 1e9:.2f} GFLOP)")


def cpu_info() -> dict[str, Any]:
    """What `bort info --cpu` shows: the CPU, its features and the encoder's backend."""
    from .. import _core
    from ..timing import cpu_summary

    return {"cpu": cpu_summary(), **_core.backend()}


def print_cpu(report: dict[str, Any]) -> None:
    print(f"cpu           {report['cpu']}")
    print(f"isa           {report['isa']} (element-wise kernels, attention, fp32 GEMM)")
    for dtype, kernel in report["gemm"].items():
        print(f"gemm {dtype:<8} {kernel}")
    print("forced by     BORT_ISA=avx2|avx512, BORT_GEMM=own|mkl")


def run(args: argparse.Namespace) -> int:
    if args.cpu:
        report = cpu_info()
        print(json.dumps(report, indent=2)) if args.json else print_cpu(report)
        return 0
    report = info(default_source(args.source), args.batch, args.seq_len)
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        print_info(report)
    return 0
