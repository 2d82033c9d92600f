"""Search spaces: the Bort paper's uniform grid, and layer-wise spaces cut from a source model.

Torch-free. A space lists architectures (`enumerate`, for small spaces) and, for layer-wise
spaces, exposes the per-layer choices that the frontier table (`bort.search.frontier`) works on.
Every space names the sublayer shapes its architectures use (`sublayers`), which is what a
latency table must cover. `SPACES` builds a space from a source architecture by name (what
``bort search --space`` and the pipeline's ``[search] space`` choose from).

Example:
    >>> space = SPACES["uniform"](Arch.uniform(2, 2, 32, 64))
    >>> attention, ffn, hiddens = space.sublayers()
    >>> sorted(hiddens), sorted(attention)[:2]
    ([16, 24, 32], [(16, 1, 16), (16, 2, 8)])
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, replace

from .arch import Arch, Layer
from .errors import ConfigError
from .registry import Registry

__all__ = ["ENUMERATE_LIMIT", "SPACES", "LayerwiseSpace", "Sublayers", "UniformSpace"]

#: What a space's architectures are made of: attention shapes (hidden, heads, head_dim), FFN
#: shapes (hidden, width) and hidden sizes. Sublayers with no heads or no width are left out.
Sublayers = tuple[set[tuple[int, int, int]], set[tuple[int, int]], set[int]]

#: `enumerate()` refuses spaces larger than this; use the frontier table instead.
ENUMERATE_LIMIT = 1_000_000

#: Fields of the Bort paper's maximum point, RoBERTa-large: its vocabulary, positions and norms.
ROBERTA_LARGE = Arch.uniform(24, 16, 1024, 4096, vocab_size=50265, max_positions=514,
                             type_vocab_size=1, position_style="roberta", pad_token_id=1,
                             layer_norm_eps=1e-5)


def _sizes(name: str, values: Sequence[int], minimum: int) -> tuple[int, ...]:
    values = tuple(values)
    if not values:
        raise ConfigError(f"{name} is empty: a search space needs at least one value")
    for v in values:
        if isinstance(v, bool) or not isinstance(v, int) or v < minimum:
            raise ConfigError(f"{name} must hold integers >= {minimum}, got {v!r}")
    return tuple(sorted(set(values)))


def _check_size(size: int) -> None:
    if size > ENUMERATE_LIMIT:
        raise ConfigError(f"the space holds {size:,} architectures, more than enumerate() lists "
                          f"({ENUMERATE_LIMIT:,}); use bort.search.frontier on it instead")


@dataclass(frozen=True)
class UniformSpace:
    """All uniform ⟨D, A, H, I⟩ architectures of a grid with H divisible by A.

    Vocabulary, positions and the other non-size fields come from ``base``.

    Example:
        >>> space = UniformSpace.bort()
        >>> len(space.enumerate())
        300
    """

    depths: tuple[int, ...]
    heads: tuple[int, ...]
    hiddens: tuple[int, ...]
    ffns: tuple[int, ...]
    base: Arch = ROBERTA_LARGE

    def __post_init__(self) -> None:
        object.__setattr__(self, "depths", _sizes("depths", self.depths, 1))
        object.__setattr__(self, "heads", _sizes("heads", self.heads, 1))
        object.__setattr__(self, "hiddens", _sizes("hiddens", self.hiddens, 1))
        object.__setattr__(self, "ffns", _sizes("ffns", self.ffns, 1))
        if not self._pairs():
            raise ConfigError(f"no hidden size in {self.hiddens} is divisible by a head count "
                              f"in {self.heads}: the space is empty")

    @classmethod
    def bort(cls, base: Arch = ROBERTA_LARGE) -> UniformSpace:
        """The Bort paper's grid: D ∈ {2..12 step 2}, A ∈ {4, 8, 12, 16}, H ∈ {512, 768, 1024},
        I ∈ {256, 512, 768, 1024, 3072}: 300 architectures. ``base`` defaults to RoBERTa-large's
        vocabulary and positions, the paper's maximum point."""
        return cls((2, 4, 6, 8, 10, 12), (4, 8, 12, 16), (512, 768, 1024),
                   (256, 512, 768, 1024, 3072), base)

    @classmethod
    def around(cls, source: Arch, hiddens: Sequence[int] | None = None) -> UniformSpace:
        """A small grid below ``source``: depths 1..D, head counts up to its own, ``hiddens``
        (default the source's × {1/2, 3/4, 1}) and FFN × {1/4, 1/2, 1} of its first layer's."""
        first = source.layers[0]
        if hiddens is None:
            hiddens = {source.hidden // 2, source.hidden * 3 // 4, source.hidden}
        elif hiddens and max(hiddens) > source.hidden:  # here, not after the whole search
            raise ConfigError(f"hidden size {max(hiddens)} exceeds the source's {source.hidden}")
        return cls(range(1, len(source.layers) + 1),
                   [h for h in (1, 2, 4, 6, 8, 12, 16) if h <= first.heads], sorted(hiddens),
                   sorted({first.ffn // 4, first.ffn // 2, first.ffn}), base=source)

    def _pairs(self) -> list[tuple[int, int]]:
        return [(a, h) for h in self.hiddens for a in self.heads if h % a == 0]

    def __len__(self) -> int:
        return len(self.depths) * len(self._pairs()) * len(self.ffns)

    def __iter__(self) -> Iterator[Arch]:
        for d in self.depths:
            for a, h in self._pairs():
                for i in self.ffns:
                    yield replace(self.base, hidden=h, layers=(Layer(a, h // a, i),) * d)

    def enumerate(self) -> list[Arch]:
        """Every architecture of the grid, ordered by D, then H, then A, then I."""
        _check_size(len(self))
        return list(self)

    def sublayers(self) -> Sublayers:
        """The attention and FFN shapes and hidden sizes of the grid (head_dim = H / A)."""
        pairs = self._pairs()
        hiddens = {h for _, h in pairs}
        return ({(h, a, h // a) for a, h in pairs}, {(h, i) for h in hiddens for i in self.ffns},
                hiddens)


@dataclass(frozen=True)
class LayerwiseSpace:
    """Layer-wise sub-architectures of a source: layer l keeps 0..all of its heads and 0..all of
    its FFN width in steps (0 removes the sublayer; both 0 drop the layer), with the hidden size
    chosen from ``hiddens``. Layer l of a candidate stands for layer l of the source.

    Example:
        >>> bert_large = Arch.uniform(24, 16, 1024, 4096)
        >>> space = LayerwiseSpace.from_source(bert_large)
        >>> len(space.choices(0)), space.size == 1105 ** 24
        (1105, True)
    """

    source: Arch
    head_choices: tuple[tuple[int, ...], ...]  # per layer: head counts allowed
    ffn_choices: tuple[tuple[int, ...], ...]  # per layer: FFN widths allowed
    hiddens: tuple[int, ...]

    @classmethod
    def from_source(cls, arch: Arch, head_step: int = 1, ffn_step: int = 64,
                    hiddens: Sequence[int] | None = None) -> LayerwiseSpace:
        """Heads 0, head_step, 2·head_step, … and all; FFN widths 0, ffn_step, … and all."""
        if not arch.layers:
            raise ConfigError("the source has no layers: the space is empty")
        for name, step in (("head_step", head_step), ("ffn_step", ffn_step)):
            if isinstance(step, bool) or not isinstance(step, int) or step < 1:
                raise ConfigError(f"{name} must be a positive integer, got {step!r}")
        hiddens = _sizes("hiddens", hiddens if hiddens is not None else (arch.hidden,), 1)
        if hiddens[-1] > arch.hidden:
            raise ConfigError(f"hidden size {hiddens[-1]} exceeds the source's {arch.hidden}")

        def steps(full: int, step: int) -> tuple[int, ...]:
            return tuple(sorted({*range(0, full, step), full}))

        return cls(arch, tuple(steps(x.heads, head_step) for x in arch.layers),
                   tuple(steps(x.ffn, ffn_step) for x in arch.layers), hiddens)

    @property
    def num_layers(self) -> int:
        return len(self.source.layers)

    def choices(self, layer: int) -> list[Layer]:
        """The options of one layer, heads-major: (heads, source head_dim, ffn)."""
        head_dim = self.source.layers[layer].head_dim
        return [Layer(h, head_dim, f) for h in self.head_choices[layer]
                for f in self.ffn_choices[layer]]

    @property
    def size(self) -> int:
        return len(self.hiddens) * math.prod(len(h) * len(f) for h, f in
                                              zip(self.head_choices, self.ffn_choices))

    def __len__(self) -> int:
        return self.size

    def arch(self, hidden: int, layers: Sequence[Layer]) -> Arch:
        """The architecture of one pick per layer at a hidden size, fields from the source."""
        return replace(self.source, hidden=hidden, layers=tuple(layers))

    def __iter__(self) -> Iterator[Arch]:
        per_layer = [self.choices(l) for l in range(self.num_layers)]
        for hidden in self.hiddens:
            for layers in itertools.product(*per_layer):
                yield self.arch(hidden, layers)

    def enumerate(self) -> list[Arch]:
        """Every architecture; raises ConfigError on spaces past `ENUMERATE_LIMIT`."""
        _check_size(self.size)
        return list(self)

    def sublayers(self) -> Sublayers:
        """The attention and FFN shapes of every layer's choices at every hidden size (heads
        keep their source layer's head_dim)."""
        attention = {(h, a, x.head_dim) for h in self.hiddens
                     for x, heads in zip(self.source.layers, self.head_choices)
                     for a in heads if a}
        ffn = {(h, f) for h in self.hiddens for widths in self.ffn_choices for f in widths if f}
        return attention, ffn, set(self.hiddens)


# ---------------------------------------------------------------------- the registry
#: Search spaces by name: each entry builds a space from the source architecture (and, where it
#: takes a ``hiddens`` keyword, the hidden sizes `SearchConfig.hiddens` asks for).
SPACES: Registry = Registry("search space")
SPACES.register("layerwise", LayerwiseSpace.from_source)
SPACES.register("uniform", UniformSpace.around)


@SPACES.register("bort")
def bort_space(source: Arch, hiddens: Sequence[int] | None = None) -> UniformSpace:
    """The Bort paper's grid (`UniformSpace.bort`) with the source's vocabulary and positions;
    every architecture of it must be a part of the source. Its hidden sizes are the paper's."""
    if hiddens is not None:
        raise ConfigError("--space bort has the paper's hidden sizes (512, 768, 1024); "
                          "choose hidden sizes with --space layerwise or uniform")
    grid = UniformSpace.bort(base=source)
    big_enough = (len(source.layers) >= max(grid.depths) and source.hidden >= max(grid.hiddens)
                  and all(x.heads >= max(grid.heads) and x.ffn >= max(grid.ffns)
                          for x in source.layers))
    if not big_enough:
        raise ConfigError(f"--space bort needs a source at least as large as its grid "
                          f"({max(grid.depths)} layers, {max(grid.heads)} heads, hidden "
                          f"{max(grid.hiddens)}, FFN {max(grid.ffns)})")
    return grid
