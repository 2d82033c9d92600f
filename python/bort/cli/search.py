"""`bort search`: the Bort search over a source's sub-architectures."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..config import SearchConfig
from ..distributed import torchrun
from ._options import add_settings, default_source, settings_from

NAME = "search"
HELP = "the Bort search: frontier table, surrogate error by short distillation, W-coefficient"
SETTINGS = (SearchConfig,)
#: How many characters of an architecture's description the table shows.
ARCH_COLUMN = 60


def add(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("source", nargs="?", help="source model (default: all-MiniLM-L6-v2)")
    parser.add_argument("--corpus", nargs="+", type=Path,
                        help="text files (default: bort's default corpus)")
    parser.add_argument("--out", type=Path, default=Path("runs/search"),
                        help="directory for front.json and front.png (default: runs/search)")
    parser.add_argument("--teacher", help="the source fine-tuned on --task: the surrogate error "
                        "becomes the dev KL to its soft labels after a short logit distillation")
    parser.add_argument("--task", help="the task of --teacher (installed dataset, GLUE "
                        "directory or CSV/TSV/JSONL file(s))")
    add_settings(parser, SearchConfig)


def search(args: argparse.Namespace, config: SearchConfig):
    """Load the source and corpus, measure importance and run the search."""
    from ..costs import importance
    from ..data import default_corpus, load_task
    from ..distill import Corpus
    from ..model import BortModel
    from ..search import optimal_subarchitecture

    if (args.teacher is None) != (args.task is None):
        raise ValueError("--teacher and --task go together (a task-aware surrogate needs both)")
    source = BortModel.from_pretrained(default_source(args.source))
    space = config.space_of(source.arch)  # a source too small for the space fails here
    corpus = Corpus(args.corpus or default_corpus())
    imp = importance(source, corpus.head(config.sample_lines))
    task = load_task(args.task) if args.task else None
    teacher = BortModel.from_pretrained(args.teacher) if args.teacher else None
    return optimal_subarchitecture(source, space, corpus, importance=imp, config=config,
                                   out=args.out, teacher=teacher, task=task)


def print_result(result, config: SearchConfig, out: Path) -> None:
    from ..costs import COSTS
    from ..search import plot_front

    unit = COSTS[config.cost].unit
    print(f"{'':2}{'architecture':{ARCH_COLUMN}} {'params':>12} {unit:>12} {'error':>8} "
          f"{'W':>8}")
    for x in result.evaluated:
        mark = "*" if x is result.optimum else " "
        print(f"{mark} {x.arch.describe()[:ARCH_COLUMN]:{ARCH_COLUMN}} {x.params:>12,} "
              f"{x.cost:>12.4g} {x.error:>8.4f} {x.w:>8.4f}")
    print(f"source: {result.maximum.params:,} parameters, {result.maximum.cost:.4g} {unit}; "
          f"{len(result.candidates)} candidates in the table")
    measured = (f", measured {result.measured_speedup:.1f}× faster than the source"
                if result.measured_speedup else "")
    print(f"* chosen by rule {result.rule}{measured}; largest W: {result.by_w.arch.describe()}")
    print(f"evaluation took {result.evaluation_seconds / 60:.2f} min (predicted "
          f"{result.predicted_seconds / 60:.2f}); the whole search {result.seconds / 60:.2f} min")
    plot_front(result, out / "front.png", unit, max_params=config.max_params,
               max_latency_ms=config.max_latency_ms)
    print(f"wrote {out / 'front.json'} and {out / 'front.png'}")


def run(args: argparse.Namespace) -> int:
    config = settings_from(args, SearchConfig)
    with torchrun() as (rank, _):
        result = search(args, config)
    if rank == 0:
        print_result(result, config, args.out)
    return 0
