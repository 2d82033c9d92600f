"""New points near a token sequence, for Agora: sequences that teacher and student both read.

Representation space (the default, no extra data):
- `EmbeddingNeighbours`: replace some tokens by neighbours in the source's input embedding
  table, within a ball whose radius is a quantile of the table's nearest-neighbour distances.
Text space:
- `TokenDropout`: drop some tokens;
- `SpanSwap`: swap two short spans of the same segment;
- `Synonyms`: replace whole words by WordNet synonyms (needs nltk and the WordNet files; a
  clear error says so where they are missing).
`Mix` draws one generator per new point. Special tokens ([CLS], [SEP], ...) are never touched,
and a sequence pair keeps its segments. Every generator is numpy-only and seeded by the ``rng``
it is given.

`GENERATORS` names them for Agora (``AgoraConfig.generators``): each entry is a factory
``(model, tokenizer, vocabulary, config: AgoraConfig) -> generator``, so a new generator is one
`GENERATORS.register` call.

Example:
    >>> special = marked_tokens(tokenizer)                                # doctest: +SKIP
    >>> gen = Mix([EmbeddingNeighbours.of(model, tokenizer),
    ...            TokenDropout(special)])                                  # doctest: +SKIP
    >>> new = gen(points, rng)                                            # doctest: +SKIP
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

import numpy as np

from .errors import BortError, ConfigError
from .finetune import Encoded
from .registry import Registry

if TYPE_CHECKING:
    from .config import AgoraConfig

__all__ = ["GENERATORS", "EmbeddingNeighbours", "Mix", "SpanSwap", "Synonyms", "TokenDropout",
           "marked_tokens", "nn_radius"]

#: Rows of the embedding table whose nearest-neighbour distances estimate the ball radius.
RADIUS_SAMPLE = 2048
#: Rows compared with the whole table at once while estimating it (bounds the memory).
_RADIUS_CHUNK = 256


def marked_tokens(tokenizer) -> list[int]:
    """Ids of bracketed vocabulary entries: special and unused tokens ([CLS], [unused3], <s>)."""
    return sorted(i for t, i in tokenizer.get_vocab().items()
                  if (t[:1], t[-1:]) in (("[", "]"), ("<", ">")))


def _editable(ids: np.ndarray, special: np.ndarray) -> np.ndarray:
    return np.flatnonzero(~np.isin(ids, special))


def _choose(positions: np.ndarray, rate: float, rng: np.random.Generator) -> np.ndarray:
    """Each position with probability ``rate``, and at least one."""
    if len(positions) == 0:
        return positions
    hit = positions[rng.random(len(positions)) < rate]
    return hit if len(hit) else rng.choice(positions, 1)


class _Generator:
    per_point: int = 8

    def one(self, ids: np.ndarray, types: np.ndarray, rng: np.random.Generator
            ) -> tuple[np.ndarray, np.ndarray] | None:
        raise NotImplementedError

    def __call__(self, X: Encoded, rng: np.random.Generator) -> Encoded:
        """``per_point`` new sequences per sequence of X (unchanged copies are left out);
        labels are -1 until the teacher labels them."""
        ids, types = [], []
        for a, t in zip(X.ids, X.types):
            for _ in range(self.per_point):
                new = self.one(a, t, rng)
                if new is not None and not (len(new[0]) == len(a) and np.array_equal(new[0], a)):
                    ids.append(new[0].astype(np.int32))
                    types.append(new[1].astype(np.int32))
        return Encoded(ids, types, np.full(len(ids), -1, np.int64))


def nn_radius(table: np.ndarray, quantile: float, allowed: np.ndarray,
              sample: int = RADIUS_SAMPLE, seed: int = 0) -> float:
    """The ``quantile`` of nearest-neighbour distances among the ``allowed`` rows of ``table``,
    estimated on a seeded sample of ``sample`` rows against all allowed rows."""
    if not 0 < quantile <= 1:
        raise ConfigError(f"the radius quantile must be in (0, 1], got {quantile}")
    rows = table[allowed].astype(np.float32)
    norms = (rows * rows).sum(1)
    pick = np.random.default_rng(seed).choice(len(rows), min(sample, len(rows)), replace=False)
    nearest = []
    for start in range(0, len(pick), _RADIUS_CHUNK):
        p = pick[start:start + _RADIUS_CHUNK]
        d2 = norms[p, None] + norms[None, :] - 2 * rows[p] @ rows.T
        d2[np.arange(len(p)), p] = np.inf  # not itself
        nearest.append(np.sqrt(np.maximum(d2.min(1), 0)))
    return float(np.quantile(np.concatenate(nearest), quantile))


class EmbeddingNeighbours(_Generator):
    """Replace each token (probability ``rate``, at least one per sequence) by a random other
    token within ``radius`` of it in the input embedding ``table``; tokens with no neighbour in
    the ball stay. The radius defaults to the ``quantile`` of nearest-neighbour distances.

    ``allowed`` marks the token ids that may be produced (e.g. not [unused] or special tokens).
    """

    def __init__(self, table: np.ndarray, special: Sequence[int], *,
                 allowed: np.ndarray | None = None, quantile: float = 0.5,
                 radius: float | None = None, rate: float = 0.15, per_point: int = 8):
        self.table = np.asarray(table, np.float32)
        self.special = np.asarray(sorted(special), np.int64)
        mask = np.ones(len(self.table), bool) if allowed is None else np.asarray(allowed, bool)
        mask[self.special] = False
        self.allowed = np.flatnonzero(mask)
        self.radius = radius if radius is not None else nn_radius(self.table, quantile,
                                                                  self.allowed)
        self.rate, self.per_point = rate, per_point
        self._norms = (self.table[self.allowed] ** 2).sum(1)
        self._cache: dict[int, np.ndarray] = {}

    @classmethod
    def of(cls, model, tokenizer, vocabulary: Sequence[int] | None = None,
           **kwargs) -> EmbeddingNeighbours:
        """From a `BortModel`'s word embeddings. Only ids in ``vocabulary`` (default: all) are
        produced; pass the ids of the task's training text to stay in its distribution (rare
        tokens sit near the table's centre, close to everything). Bracketed vocabulary entries
        ([unused12], <s>, ...) are neither replaced nor produced."""
        table = model.embeddings.word_embeddings.weight.detach().float().numpy()
        marked = [i for i in marked_tokens(tokenizer) if i < len(table)]
        allowed = np.zeros(len(table), bool)
        allowed[np.asarray(vocabulary, np.int64) if vocabulary is not None else slice(None)] = True
        allowed[marked] = False
        return cls(table, marked, allowed=allowed, **kwargs)

    def neighbours(self, token: int) -> np.ndarray:
        found = self._cache.get(token)
        if found is None:
            e = self.table[token]
            d2 = self._norms + e @ e - 2 * self.table[self.allowed] @ e
            found = self.allowed[(d2 <= self.radius ** 2) & (self.allowed != token)]
            self._cache[token] = found
        return found

    def one(self, ids, types, rng):
        out = ids.copy()
        for pos in _choose(_editable(ids, self.special), self.rate, rng):
            near = self.neighbours(int(ids[pos]))
            if len(near):
                out[pos] = rng.choice(near)
        return out, types


class TokenDropout(_Generator):
    """Drop each token with probability ``rate`` (at least one; never all of a segment)."""

    def __init__(self, special: Sequence[int], rate: float = 0.15, per_point: int = 8):
        self.special = np.asarray(sorted(special), np.int64)
        self.rate, self.per_point = rate, per_point

    def one(self, ids, types, rng):
        editable = _editable(ids, self.special)
        drop = _choose(editable, self.rate, rng)
        keep = np.ones(len(ids), bool)
        keep[drop] = False
        for seg in np.unique(types[editable]):
            in_seg = editable[types[editable] == seg]
            if not keep[in_seg].any():
                keep[in_seg[0]] = True
        return ids[keep], types[keep]


class SpanSwap(_Generator):
    """Swap two non-overlapping spans of 1..``max_span`` tokens within one segment."""

    def __init__(self, special: Sequence[int], max_span: int = 3, per_point: int = 8):
        self.special = np.asarray(sorted(special), np.int64)
        self.max_span, self.per_point = max_span, per_point

    def one(self, ids, types, rng):
        editable = _editable(ids, self.special)
        if len(editable) < 2:
            return None
        seg = types[rng.choice(editable)]
        pos = editable[types[editable] == seg]  # contiguous: the segment's own tokens
        if len(pos) < 2:
            return None
        n = int(rng.integers(1, min(self.max_span, len(pos) // 2) + 1))
        a = int(rng.integers(0, len(pos) - 2 * n + 1))
        b = int(rng.integers(a + n, len(pos) - n + 1))
        idx = np.arange(len(ids))
        lo, hi = pos[0], pos[-1] + 1
        seq = list(idx[lo:hi])
        i, j = a, b
        seq = seq[:i] + seq[j:j + n] + seq[i + n:j] + seq[i:i + n] + seq[j + n:]
        idx[lo:hi] = seq
        return ids[idx], types[idx]


class Synonyms(_Generator):
    """Replace whole words (WordPiece ``##`` pieces merged) by a random single-word WordNet
    synonym, each with probability ``rate``; the synonym is re-tokenised by ``tokenizer``.

    Raises BortError when nltk or the WordNet files are missing, naming how to get them.
    """

    def __init__(self, tokenizer, special: Sequence[int], rate: float = 0.2, per_point: int = 8):
        try:
            from nltk.corpus import wordnet

            wordnet.ensure_loaded()
        except (ImportError, LookupError, OSError) as e:
            raise BortError(
                "WordNet synonyms need nltk (pip install nltk) and the WordNet files in a "
                "corpora/wordnet folder on nltk.data.path (e.g. from Debian's wordnet-base and "
                f"wordnet-sense-index packages); use the embedding or dropout generators "
                f"otherwise ({type(e).__name__}: {str(e).strip().splitlines()[0][:120]})"
            ) from None
        self.wordnet, self.tokenizer = wordnet, tokenizer
        self.special = np.asarray(sorted(special), np.int64)
        self.rate, self.per_point = rate, per_point
        self._cache: dict[str, list[list[int]]] = {}

    def _synonyms(self, word: str) -> list[list[int]]:
        found = self._cache.get(word)
        if found is None:
            names = {lemma.name() for s in self.wordnet.synsets(word) for lemma in s.lemmas()}
            names = sorted(n.lower() for n in names if "_" not in n and n.lower() != word)
            found = [self.tokenizer.encode(n, add_special_tokens=False).ids for n in names]
            self._cache[word] = found = [f for f in found if f]
        return found

    def one(self, ids, types, rng):
        pieces = [self.tokenizer.id_to_token(int(i)) or "" for i in ids]
        words: list[tuple[int, int]] = []  # [start, end) token spans of whole words
        for k, piece in enumerate(pieces):
            if piece.startswith("##") and words:
                words[-1] = (words[-1][0], k + 1)
            elif ids[k] not in self.special:
                words.append((k, k + 1))
        out_ids, out_types, last = [], [], 0
        changed = False
        for start, end in words:
            word = "".join(p.removeprefix("##") for p in pieces[start:end])
            if word.isalpha() and rng.random() < self.rate:
                options = self._synonyms(word)
                if options:
                    new = options[int(rng.integers(len(options)))]
                    out_ids += [ids[last:start], np.asarray(new)]
                    out_types += [types[last:start], np.full(len(new), types[start])]
                    last, changed = end, True
        if not changed:
            return None
        out_ids.append(ids[last:])
        out_types.append(types[last:])
        return np.concatenate(out_ids), np.concatenate(out_types)


class Mix(_Generator):
    """``per_point`` new sequences per point, each from a generator drawn at random."""

    def __init__(self, generators: Sequence[_Generator], per_point: int = 8):
        if not generators:
            raise ConfigError("Mix needs at least one generator")
        self.generators, self.per_point = list(generators), per_point

    def one(self, ids, types, rng):
        return self.generators[int(rng.integers(len(self.generators)))].one(ids, types, rng)


# ---------------------------------------------------------------------- by name, for Agora
Factory = Callable[..., _Generator]  # (model, tokenizer, vocabulary, config) -> generator

#: Agora's generators by name: factories ``(model, tokenizer, vocabulary, config: AgoraConfig)``
#: returning a generator (``vocabulary``: the token ids the embedding generator may produce).
GENERATORS: Registry[Factory] = Registry("generator")


@GENERATORS.register("embedding")
def _embedding(model, tokenizer, vocabulary, config: AgoraConfig) -> _Generator:
    return EmbeddingNeighbours.of(model, tokenizer, vocabulary, quantile=config.quantile,
                                  rate=config.rate)


@GENERATORS.register("dropout")
def _dropout(model, tokenizer, vocabulary, config: AgoraConfig) -> _Generator:
    return TokenDropout(marked_tokens(tokenizer), rate=config.rate)


@GENERATORS.register("swap")
def _swap(model, tokenizer, vocabulary, config: AgoraConfig) -> _Generator:
    return SpanSwap(marked_tokens(tokenizer))


@GENERATORS.register("synonyms")
def _synonyms(model, tokenizer, vocabulary, config: AgoraConfig) -> _Generator:
    return Synonyms(tokenizer, marked_tokens(tokenizer), rate=config.rate)
