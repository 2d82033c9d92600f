"""`bort bench`: a model's latency under bort and its peers, side by side."""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from ..config import BenchConfig
from ._options import add_settings, default_source, settings_from

NAME = "bench"
HELP = "latency of a model: bort vs torch, ONNX Runtime, OpenVINO (whichever are installed)"
SETTINGS = (BenchConfig,)


def add(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("model", nargs="?", help="model directory (default: all-MiniLM-L6-v2)")
    parser.add_argument("--json", type=Path, help="also write the rows as JSON to this file")
    add_settings(parser, BenchConfig)


def model_name(directory: Path) -> str:
    """A short name for a model directory (a package's ``.../NAME/model`` is NAME)."""
    return directory.parent.name if directory.name == "model" else directory.name


def run(args: argparse.Namespace) -> int:
    from ..bench import markdown, run_matrix
    from ..export import export_onnx
    from ..io import write_json
    from ..model import BortModel

    config = settings_from(args, BenchConfig)
    source = default_source(args.model)
    name = model_name(source)
    with tempfile.TemporaryDirectory() as tmp:
        onnx = Path(tmp) / "model.onnx"
        export_onnx(BortModel.from_pretrained(source).eval(), onnx)
        rows, notes = run_matrix({name: source}, {name: onnx}, config, Path(tmp))
    print(markdown(rows))
    for note in notes:
        print("note:", note)
    if args.json:
        write_json(args.json, {"rows": rows, "notes": notes}, indent=2)
    return 0
