"""`bort distill`: a student distilled from a teacher on plain text."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..config import DistillConfig
from ..distributed import torchrun
from ._options import add_settings, settings_from

NAME = "distill"
HELP = "distil a student from a teacher on text"
SETTINGS = (DistillConfig,)


def add(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--teacher", required=True, help="teacher model directory")
    parser.add_argument("--student", required=True,
                        help="student model directory (e.g. from bort extract)")
    parser.add_argument("--corpus", required=True, nargs="+", type=Path,
                        help="plain-text files, one document per line")
    parser.add_argument("--out", required=True, type=Path,
                        help="run directory: checkpoints/ and student/")
    parser.add_argument("--resume", action="store_true",
                        help="continue from the newest checkpoint under --out")
    add_settings(parser, DistillConfig)


def run(args: argparse.Namespace) -> int:
    from ..distill import Corpus, distill
    from ..model import BortModel

    config = settings_from(args, DistillConfig)
    with torchrun():
        result = distill(BortModel.from_pretrained(args.teacher),
                         BortModel.from_pretrained(args.student), Corpus(args.corpus), args.out,
                         config, resume=args.resume)
    first, last = result["eval_loss"][0], result["eval_loss"][-1]
    print(f"held-out loss {first[1]:.4f} (step {first[0]}) -> {last[1]:.4f} (step {last[0]}); "
          f"student in {args.out / 'student'}")
    return 0
