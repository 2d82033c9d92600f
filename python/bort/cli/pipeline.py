"""`bort pipeline`: the main job, from a source model to a benchmarked small one."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..pipeline import STAGES, PipelineConfig
from ._options import add_overrides, overrides_from

NAME = "pipeline"
HELP = "the main job: teacher, search, extract, distill, student, export, bench, report"
SETTINGS = ()
#: Top-level settings the command line may override (the TOML file sets any of them).
OVERRIDES = ("name", "source", "task", "corpus", "out", "seed", "threads")


def add(parser: argparse.ArgumentParser) -> None:
    sections = ", ".join(f"[{s}]" for s in PipelineConfig.sections())
    parser.add_argument("--config", type=Path, help="TOML file: top-level settings and one "
                        f"table per stage ({sections}), each with the fields of its settings "
                        "class")
    parser.add_argument("--quick", action="store_true", help="the few-minute version")
    add_overrides(parser, PipelineConfig, OVERRIDES)
    parser.add_argument("--skip", nargs="+", default=[], metavar="STAGE", choices=STAGES,
                        help="stages not to run")
    parser.add_argument("--redo", metavar="STAGE", choices=STAGES,
                        help="run this stage and all later ones again")


def run(args: argparse.Namespace) -> int:
    from ..pipeline import run_pipeline

    config = PipelineConfig.load(args.config, quick=args.quick)
    config = config.updated(overrides_from(args, OVERRIDES))
    report = run_pipeline(config, skip=args.skip, redo=args.redo)
    if report.is_file():
        print(report.read_text(encoding="utf-8"))
        print(f"wrote {report}")
    return 0
