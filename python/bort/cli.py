"""The `bort` command. Each subcommand is a thin layer over the Python API."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any, Sequence

from . import __version__
from .arch import Arch
from .errors import BortError


def _source(path: str | None) -> Path:
    if path is not None:
        return Path(path)
    from .assets import default_source

    return default_source()


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


def _print_info(report: dict[str, Any]) -> None:
    arch = Arch.from_config(report["config"])
    p, f = report["params"], report["flops"]
    print(f"source        {report['source']}")
    print(f"architecture  {report['architecture']}")
    print(f"              {arch.family} family, {arch.activation} activation, "
          f"{arch.position_style} positions, LayerNorm eps {arch.layer_norm_eps:g}")
    print(f"vocabulary    {arch.vocab_size:,} tokens, {arch.max_positions:,} positions, "
          f"{arch.type_vocab_size} token types")
    if not arch.is_uniform:
        for i, layer in enumerate(arch.layers):
            attn = f"{layer.heads} heads × {layer.head_dim}" if layer.heads else "no attention"
            ffn = f"FFN {layer.ffn}" if layer.ffn else "no FFN"
            print(f"  layer {i:<3}   {attn}, {ffn}, {layer.params(arch.hidden):,} parameters")
    print(f"parameters    {p['total']:>14,}")
    for part in ("embeddings", "encoder", "pooler", "head"):
        share = 100 * p[part] / p["total"]
        print(f"  {part:<11} {p[part]:>14,}  {share:5.1f}%")
    print(f"FLOPs         {f['flops']:>14,}  (batch {f['batch']} × {f['seq_len']} tokens, "
          f"{f['flops'] / 1e9:.2f} GFLOP)")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="bort", description="Optimal sub-architecture extraction for BERT-family encoders.")
    parser.add_argument("--version", action="version", version=f"bort {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p_info = commands.add_parser("info", help="architecture, parameters by part and FLOPs of a model")
    p_info.add_argument("source", nargs="?", help="model directory (default: the installed "
                        "all-MiniLM-L6-v2)")
    p_info.add_argument("--batch", type=int, default=1, help="batch size for the FLOP count")
    p_info.add_argument("--seq-len", type=int, default=128, help="tokens per sequence")
    p_info.add_argument("--json", action="store_true", help="print JSON instead of a table")

    p_export = commands.add_parser("export", help="write a model as one ONNX file")
    p_export.add_argument("model", help="model directory (bort or Hugging Face BERT/RoBERTa)")
    p_export.add_argument("--out", required=True, help="the .onnx file to write")
    p_export.add_argument("--opset", type=int, default=18, help="ONNX opset (>= 17)")

    args = parser.parse_args(argv)
    try:
        if args.command == "info":
            report = info(_source(args.source), args.batch, args.seq_len)
            if args.json:
                print(json.dumps(report, indent=2))
            else:
                _print_info(report)
        elif args.command == "export":
            from .export import export_onnx
            from .model import BortModel

            path = export_onnx(BortModel.from_pretrained(args.model), args.out, opset=args.opset)
            print(f"wrote {path} ({path.stat().st_size / 1e6:.1f} MB)")
    except (BortError, OSError, ValueError) as e:
        print(f"bort {args.command}: error: {e}", file=sys.stderr)
        return 1
    return 0
