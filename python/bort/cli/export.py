"""`bort export`: a model as one ONNX file."""

from __future__ import annotations

import argparse

from ..config import ExportConfig
from ._options import add_settings, settings_from

NAME = "export"
HELP = "write a model as one ONNX file"
SETTINGS = (ExportConfig,)


def add(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("model", help="model directory (bort or Hugging Face BERT/RoBERTa)")
    parser.add_argument("--out", required=True, help="the .onnx file to write")
    add_settings(parser, ExportConfig)


def run(args: argparse.Namespace) -> int:
    from ..export import export_onnx
    from ..model import BortModel

    config = settings_from(args, ExportConfig)
    path = export_onnx(BortModel.from_pretrained(args.model), args.out, opset=config.opset)
    print(f"wrote {path} ({path.stat().st_size / 1e6:.1f} MB)")
    return 0
