"""`bort extract`: a sub-architecture initialised from a source's weights."""

from __future__ import annotations

import argparse
import json
from dataclasses import replace
from pathlib import Path

from ..arch import Arch

NAME = "extract"
HELP = "initialise a sub-architecture from a source's weights"
SETTINGS = ()


def add(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("source", help="source model directory")
    target = parser.add_mutually_exclusive_group(required=True)
    target.add_argument("--arch", help="uniform target D,A,H,I (layers, heads, hidden, FFN)")
    target.add_argument("--arch-json", type=Path, help='layer-wise target: {"hidden": H, '
                        '"layers": [[heads, head_dim, ffn], ...]} (one entry per source layer)')
    parser.add_argument("--texts", type=Path, help="sample text, one per line, to rank heads, "
                        "neurons and channels by importance (default: weight magnitude)")
    parser.add_argument("--out", required=True, type=Path, help="directory to write")


def target_of(args: argparse.Namespace, source: Arch) -> Arch:
    """The target architecture that --arch or --arch-json names."""
    from ..extract import target_arch

    if args.arch:
        try:
            d, a, h, i = (int(x) for x in args.arch.split(","))
        except ValueError:
            raise ValueError(f"--arch takes four integers D,A,H,I, got {args.arch!r}") from None
        return target_arch(source, d, a, h, i)
    try:
        spec = json.loads(args.arch_json.read_text())
        return replace(source, hidden=spec["hidden"], layers=tuple(spec["layers"]))
    except (json.JSONDecodeError, KeyError, TypeError) as e:
        raise ValueError(f"{args.arch_json}: expected {{\"hidden\": H, \"layers\": "
                         f"[[heads, head_dim, ffn], ...]}} ({e})") from None


def sample_texts(path: Path | None) -> list[str] | None:
    """The non-empty lines of ``path`` (None without one)."""
    if path is None:
        return None
    texts = [t for t in path.read_text(encoding="utf-8").splitlines() if t.strip()]
    if not texts:
        raise ValueError(f"{path} holds no text")
    return texts


def run(args: argparse.Namespace) -> int:
    from ..extract import extract
    from ..model import BortModel

    source = BortModel.from_pretrained(args.source)
    model = extract(source, target_of(args, source.arch), sample_texts(args.texts))
    model.save_pretrained(args.out)
    total = model.arch.params().total
    print(f"wrote {args.out}: {model.arch.describe()}, {total:,} parameters "
          f"({100 * total / source.arch.params().total:.1f}% of the source)")
    return 0
