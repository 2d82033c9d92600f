"""The `bort` command: one module per subcommand, each with ``add`` (its options), ``run`` (the
work) and ``SETTINGS`` (the settings classes its options come from).

Example:
    >>> main(["--version"])                                  # doctest: +SKIP
    bort 0.1.0
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from .. import __version__
from ..errors import BortError
from . import bench, distill, export, extract, finetune, info, pipeline, search

__all__ = ["COMMANDS", "build_parser", "main"]

#: The subcommands, in the order `bort --help` lists them.
COMMANDS = {m.NAME: m for m in (info, search, extract, distill, finetune, export, bench,
                                 pipeline)}


def build_parser() -> argparse.ArgumentParser:
    """The `bort` parser with every subcommand."""
    parser = argparse.ArgumentParser(
        prog="bort", description="Optimal sub-architecture extraction for BERT-family encoders.")
    parser.add_argument("--version", action="version", version=f"bort {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, module in COMMANDS.items():
        module.add(commands.add_parser(name, help=module.HELP, description=module.HELP))
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run one `bort` command; errors bort expects print one line and return 1."""
    args = build_parser().parse_args(argv)
    try:
        return COMMANDS[args.command].run(args)
    except (BortError, OSError, ValueError) as e:
        print(f"bort {args.command}: error: {e}", file=sys.stderr)
        return 1
