"""The three objectives of the search for one architecture: p, i and the error proxy e.

- p: parameters, the total of `Arch.params()`, or the encoder alone ("effective" size).
- i: inference cost, either the FLOP count of `Arch.flops` at a stated batch × length, or a
  latency in milliseconds summed from a per-sublayer table measured on this CPU with bort's
  own encoder (or torch) (`LatencyTable`, cached on disk by CPU model, threads and backend).
- e: an additive error proxy, the summed importance of every head, FFN neuron and hidden channel
  the architecture removes from the source (`importance`, measured once on the source).

Every cost is ``base(hidden) + Σ_layers layer_cost``, which is what lets the frontier table
(csrc/frontier) run a dynamic program over layers; `decompose` is that split and `cost` its sum,
so the table and a brute-force check compute the very same numbers. The kinds of cost live in
`COSTS` (a `CostKind` each: "params", "flops", "latency"); a new one is one entry there.

Torch is imported only to measure (importance, latency); reading costs is torch-free.

Example:
    >>> from bort import Arch
    >>> arch = Arch.uniform(2, 4, 64, 128)
    >>> base, layers = decompose(arch, "params", effective=True)
    >>> base, layers == [arch.layers[0].params(64)] * 2, COSTS.names()
    (0.0, True, ('params', 'flops', 'latency'))
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from . import timing
from .arch import Arch, Layer
from .errors import BortError, ConfigError
from .io import save_safetensors, write_json
from .registry import Registry

__all__ = ["COSTS", "CostKind", "Importance", "LatencyTable", "base_cost", "cache_dir", "cost",
           "decompose", "error_proxy", "importance", "layer_cost", "layer_map",
           "measure_latency"]


# ---------------------------------------------------------------------- latency table
@dataclass
class LatencyTable:
    """Milliseconds per sublayer, measured on this CPU at ``batch`` × ``seq_len`` tokens.

    ``attention[(hidden, heads, head_dim)]`` and ``ffn[(hidden, width)]`` time one sublayer
    (projections, attention or GELU, residual and LayerNorm); ``base[hidden]`` times the rest
    (embeddings, pooler). An architecture's latency is their sum: additive by construction, which
    ignores cache effects between layers (the search driver reports measured latency beside it).
    """

    batch: int
    seq_len: int
    threads: int
    backend: str
    cpu: str
    attention: dict[tuple[int, int, int], float] = field(default_factory=dict)
    ffn: dict[tuple[int, int], float] = field(default_factory=dict)
    base: dict[int, float] = field(default_factory=dict)

    def attention_ms(self, hidden: int, layer: Layer) -> float:
        if layer.heads == 0:
            return 0.0
        return self._get(self.attention, (hidden, layer.heads, layer.head_dim), "attention")

    def ffn_ms(self, hidden: int, layer: Layer) -> float:
        return 0.0 if layer.ffn == 0 else self._get(self.ffn, (hidden, layer.ffn), "FFN")

    def base_ms(self, hidden: int) -> float:
        return self._get(self.base, hidden, "embeddings/pooler")

    @staticmethod
    def _get(table: dict, key: Any, what: str) -> float:
        try:
            return table[key]
        except KeyError:
            raise BortError(f"the latency table has no {what} entry for {key}; measure it with "
                            "bort.costs.measure_latency over this space") from None

    def to_json(self) -> dict[str, Any]:
        return {
            "batch": self.batch, "seq_len": self.seq_len, "threads": self.threads,
            "backend": self.backend, "cpu": self.cpu,
            "attention": {",".join(map(str, k)): v for k, v in sorted(self.attention.items())},
            "ffn": {",".join(map(str, k)): v for k, v in sorted(self.ffn.items())},
            "base": {str(k): v for k, v in sorted(self.base.items())},
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> LatencyTable:
        def key(s: str) -> tuple[int, ...]:
            return tuple(int(x) for x in s.split(","))

        return cls(data["batch"], data["seq_len"], data["threads"], data["backend"], data["cpu"],
                   {key(k): v for k, v in data["attention"].items()},
                   {key(k): v for k, v in data["ffn"].items()},
                   {int(k): v for k, v in data["base"].items()})


def cache_dir() -> Path:
    """``$BORT_CACHE_DIR``, else ``$XDG_CACHE_HOME/bort``, else ``~/.cache/bort``."""
    if os.environ.get("BORT_CACHE_DIR"):
        return Path(os.environ["BORT_CACHE_DIR"])
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "bort"


#: Where a one-layer model's sublayer sits in `bort.runtime.Encoder.sublayer_ms`, which lists
#: embeddings, then attention and FFN of each layer, then pooler/head.
_ATTENTION_STAGE, _FFN_STAGE = 1, 2


class _Timer:
    """Times sublayers of models built like ``source`` (vocabulary, positions, pooler,
    activation) with random weights, at ``batch`` × ``seq_len`` tokens."""

    def __init__(self, source: Arch, batch: int, seq_len: int, threads: int, dtype: str):
        self.source, self.batch, self.seq_len = source, batch, seq_len
        self.threads, self.dtype = threads, dtype

    def arch(self, hidden: int, layers: Sequence[Layer]) -> Arch:
        src = self.source
        return Arch(hidden=hidden, layers=layers, vocab_size=src.vocab_size,
                    max_positions=max(src.max_positions, self.seq_len), pooler=src.pooler,
                    activation=src.activation)

    def ids(self) -> np.ndarray:
        rng = np.random.default_rng(0)
        return rng.integers(0, self.source.vocab_size, (self.batch, self.seq_len))


class _BortTimer(_Timer):
    """bort's fused encoder in ``dtype``: each entry is the sublayer's own stage time."""

    @property
    def name(self) -> str:
        from . import __version__

        return f"bort-{self.dtype}-{__version__}"

    def _stages(self, arch: Arch) -> np.ndarray:
        """Median per-stage milliseconds of one forward pass (`Encoder.sublayer_ms`)."""
        from .model import BortModel
        from .runtime import Encoder

        state = {k: v.numpy() for k, v in BortModel(arch).state_dict().items()}
        encoder = Encoder(arch, state, num_threads=self.threads, dtype=self.dtype)
        ids = self.ids()
        return timing.median_of(lambda: encoder.sublayer_ms(ids))

    def layer_ms(self, hidden: int, layer: Layer) -> float:
        stage = _ATTENTION_STAGE if layer.heads else _FFN_STAGE
        return float(self._stages(self.arch(hidden, [layer]))[stage])

    def base_ms(self, hidden: int) -> float:
        return float(self._stages(self.arch(hidden, [])).sum())


class _TorchTimer(_Timer):
    """Eager torch in fp32: a lone `EncoderLayer`, or a layer-less `BortModel` for the base."""

    @property
    def name(self) -> str:
        import torch

        return f"torch-{torch.__version__}"

    def layer_ms(self, hidden: int, layer: Layer) -> float:
        import torch

        from .model import EncoderLayer

        module = EncoderLayer(self.arch(hidden, [layer]), 0).eval()
        x = torch.randn(self.batch, self.seq_len, hidden)
        mask = torch.zeros(self.batch, 1, 1, self.seq_len)
        return timing.median_ms(lambda: module(x, mask, False))

    def base_ms(self, hidden: int) -> float:
        import torch

        from .model import BortModel

        model = BortModel(self.arch(hidden, [])).eval()
        ids = torch.from_numpy(self.ids())
        return timing.median_ms(lambda: model(ids))


#: The backends `measure_latency` times with.
_TIMERS: dict[str, type[_Timer]] = {"bort": _BortTimer, "torch": _TorchTimer}


@contextlib.contextmanager
def _torch_threads(threads: int) -> Iterator[None]:
    """Torch on ``threads`` threads, without autograd, for the block."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        with torch.inference_mode():
            yield
    finally:
        torch.set_num_threads(before)


def _cache_file(table: LatencyTable) -> Path:
    """The cache file of tables measured like ``table`` (CPU, threads, backend, shape), by the
    kernels that ran them and the build: a new build or a forced BORT_ISA / BORT_GEMM measures
    afresh."""
    from . import _core

    build = [_core.__version__, _core.__file__, _core.backend()["description"]]
    if Path(_core.__file__).is_file():
        build.append(Path(_core.__file__).stat().st_mtime_ns)
    key = json.dumps([table.cpu, table.threads, table.backend, table.batch, table.seq_len, build])
    return cache_dir() / "latency" / f"{hashlib.sha1(key.encode()).hexdigest()[:16]}.json"


def _read_cache(path: Path, empty: LatencyTable) -> LatencyTable:
    if path.is_file():
        with contextlib.suppress(json.JSONDecodeError, KeyError, ValueError):
            return LatencyTable.from_json(json.loads(path.read_text()))
    return empty  # none yet, or a damaged one: measured again


def _shapes(hiddens: Iterable[int], heads: Iterable[int], ffns: Iterable[int], head_dim: int,
            attention_shapes: Iterable[tuple[int, int, int]],
            ffn_shapes: Iterable[tuple[int, int]]) -> tuple[set, set, set]:
    """The attention shapes, FFN shapes and hidden sizes to time: the grid of ``hiddens`` ×
    ``heads`` / ``ffns`` joined with the explicit shapes (sublayers of size 0 cost nothing)."""
    hiddens = set(hiddens)
    attention = {(h, a, head_dim) for h in hiddens for a in heads}
    attention |= {tuple(shape) for shape in attention_shapes}
    ffn = {(h, f) for h in hiddens for f in ffns} | {tuple(shape) for shape in ffn_shapes}
    attention = {k for k in attention if k[1] and k[2]}
    ffn = {k for k in ffn if k[1]}
    return attention, ffn, hiddens | {k[0] for k in attention} | {k[0] for k in ffn}


def measure_latency(source: Arch, hiddens: Sequence[int] = (), heads: Sequence[int] = (),
                    ffns: Sequence[int] = (), *, head_dim: int | None = None,
                    attention_shapes: Iterable[tuple[int, int, int]] = (),
                    ffn_shapes: Iterable[tuple[int, int]] = (), batch: int = 1,
                    seq_len: int = 128, threads: int = 1, backend: str = "bort",
                    dtype: str = "fp32", cache: bool = True) -> LatencyTable:
    """Time attention and FFN sublayers and the base of each hidden size on this CPU; entries
    already in the on-disk cache are not re-measured.

    The sublayers: every ``heads`` count (of ``head_dim``, default the source's first attention
    layer's) and ``ffns`` width at each of ``hiddens``, plus the explicit ``attention_shapes``
    (hidden, heads, head_dim) and ``ffn_shapes`` (hidden, width), such as a space's
    `sublayers()`; the base is timed at every hidden size any of them uses.

    backend: "bort" (the fused encoder that will serve the model, in ``dtype``; each entry is
    the sublayer's own time from `bort.runtime.Encoder.sublayer_ms`) or "torch" (eager fp32).
    The cache file is keyed by CPU model, threads, backend, batch and length.
    """
    if backend not in _TIMERS:
        raise ValueError(f"backend must be one of {tuple(_TIMERS)}, got {backend!r}")
    if head_dim is None:
        head_dim = next((x.head_dim for x in source.layers if x.heads), 64)
    attention, ffn, sizes = _shapes(hiddens, heads, ffns, head_dim, attention_shapes, ffn_shapes)
    timer = _TIMERS[backend](source, batch, seq_len, threads, dtype)
    table = LatencyTable(batch, seq_len, threads, timer.name, timing.cpu_model())
    path = _cache_file(table)
    if cache:
        table = _read_cache(path, table)
    todo = (sorted(attention - table.attention.keys()), sorted(ffn - table.ffn.keys()),
            sorted(sizes - table.base.keys()))
    if not any(todo):
        return table
    with _torch_threads(threads):
        for h, a, d in todo[0]:
            table.attention[h, a, d] = timer.layer_ms(h, Layer(a, d, 0))
        for h, f in todo[1]:
            table.ffn[h, f] = timer.layer_ms(h, Layer(0, 0, f))
        for h in todo[2]:
            table.base[h] = timer.base_ms(h)
    if cache:
        write_json(path, table.to_json())
    return table


# ---------------------------------------------------------------------- importance
@dataclass
class Importance:
    """Importance of every head, FFN neuron and hidden channel of ``source``: the diagonal Fisher
    information of a gate on each unit (see `importance`). Removing units costs the sum of theirs.

    ``heads[l]`` has one value per head of source layer l, ``neurons[l]`` one per FFN neuron,
    ``channels`` one per hidden channel.
    """

    source: Arch
    heads: list[np.ndarray]
    neurons: list[np.ndarray]
    channels: np.ndarray

    def __post_init__(self) -> None:
        src = self.source
        if len(self.heads) != len(src.layers) or len(self.neurons) != len(src.layers):
            raise ConfigError(f"importance covers {len(self.heads)} layers, the source has "
                              f"{len(src.layers)}")
        for l, (h, n, layer) in enumerate(zip(self.heads, self.neurons, src.layers)):
            if h.shape != (layer.heads,) or n.shape != (layer.ffn,):
                raise ConfigError(f"importance of layer {l} has {h.shape[0]} heads and "
                                  f"{n.shape[0]} neurons; the source layer has {layer.heads} and "
                                  f"{layer.ffn}")
        if self.channels.shape != (src.hidden,):
            raise ConfigError(f"importance has {self.channels.shape[0]} hidden channels, the "
                              f"source {src.hidden}")
        for a in (*self.heads, *self.neurons, self.channels):
            if not np.all(np.isfinite(a)) or np.any(a < 0):
                raise ConfigError("importance values must be finite and >= 0")
        # Removing the k least important units of a kind costs the sum of the k smallest.
        self._head_cut = [np.concatenate([[0.0], np.cumsum(np.sort(h))]) for h in self.heads]
        self._neuron_cut = [np.concatenate([[0.0], np.cumsum(np.sort(n))]) for n in self.neurons]
        self._channel_cut = np.concatenate([[0.0], np.cumsum(np.sort(self.channels))])

    def layer_error(self, index: int, layer: Layer) -> float:
        """Error of keeping ``layer.heads`` heads and ``layer.ffn`` neurons of source layer
        ``index`` (the most important ones). A head narrower than the source's keeps that share
        of its importance (a uniform grid's head size is hidden / heads); a wider one keeps all of
        it. Raises ConfigError if the layer has more heads or neurons than the source layer."""
        src = self.source.layers[index]
        if layer.heads > src.heads or layer.ffn > src.ffn:
            raise ConfigError(f"layer {index} ({layer}) is not a part of source layer {index} "
                              f"({src})")
        cut = self._head_cut[index]
        error = cut[src.heads - layer.heads] + self._neuron_cut[index][src.ffn - layer.ffn]
        if 0 < layer.head_dim < src.head_dim:
            kept = cut[-1] - cut[src.heads - layer.heads]
            error += kept * (1 - layer.head_dim / src.head_dim)
        return float(error)

    def hidden_error(self, hidden: int) -> float:
        if hidden > self.source.hidden:
            raise ConfigError(f"hidden {hidden} exceeds the source's {self.source.hidden}")
        return float(self._channel_cut[self.source.hidden - hidden])

    def matches(self, source: Arch) -> bool:
        return (source.hidden == self.source.hidden
                and [(x.heads, x.head_dim, x.ffn) for x in source.layers]
                == [(x.heads, x.head_dim, x.ffn) for x in self.source.layers])

    def save(self, path: str | Path) -> None:
        """A safetensors file (numpy arrays; the source's config in the metadata)."""
        tensors = {"channels": self.channels.astype(np.float64)}
        for l, (h, n) in enumerate(zip(self.heads, self.neurons)):
            tensors[f"heads.{l}"] = h.astype(np.float64)
            tensors[f"neurons.{l}"] = n.astype(np.float64)
        save_safetensors(tensors, path, metadata={"source": json.dumps(self.source.to_config())})

    @classmethod
    def load(cls, path: str | Path) -> Importance:
        from safetensors import safe_open

        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"importance file not found: {path}")
        try:
            with safe_open(str(path), framework="numpy") as f:
                source = Arch.from_config(json.loads(f.metadata()["source"]))
                n = len(source.layers)
                return cls(source, [f.get_tensor(f"heads.{l}") for l in range(n)],
                           [f.get_tensor(f"neurons.{l}") for l in range(n)],
                           f.get_tensor("channels"))
        except (KeyError, TypeError, json.JSONDecodeError) as e:
            raise ConfigError(f"{path}: not a bort importance file ({e})") from None


def _head_gate(gate: Any, layer: Layer) -> Callable:
    """A forward pre-hook of the attention's output projection that scales each head's context
    (B, S, heads · head_dim) by its gate."""
    def pre(_module, args):
        (context,) = args
        b, s, _ = context.shape
        return (context.view(b, s, layer.heads, layer.head_dim) * gate[:, None]).view(b, s, -1),
    return pre


def _scale_output(gate: Any) -> Callable:
    """A forward hook that multiplies a module's output by ``gate`` (broadcast on the last axis)."""
    return lambda _module, _args, out: out * gate


class _Gates:
    """A gate g = 1 on every head, FFN neuron and hidden channel of an architecture."""

    def __init__(self, arch: Arch):
        import torch

        self.heads = [torch.ones(x.heads, requires_grad=True) for x in arch.layers]
        self.neurons = [torch.ones(x.ffn, requires_grad=True) for x in arch.layers]
        self.channels = torch.ones(arch.hidden, requires_grad=True)

    @property
    def all(self) -> list[Any]:
        return [*self.heads, *self.neurons, self.channels]

    @contextlib.contextmanager
    def applied(self, model: Any) -> Iterator[None]:
        """Hooks on ``model`` that apply the gates for the block: heads before the output
        projection, neurons after the FFN's activation, channels after every LayerNorm."""
        hooks = [model.embeddings.LayerNorm.register_forward_hook(_scale_output(self.channels))]
        for spec, block, head, neuron in zip(model.arch.layers, model.encoder.layer, self.heads,
                                             self.neurons):
            if block.attention is not None:
                output = block.attention.output
                hooks.append(output.dense.register_forward_pre_hook(_head_gate(head, spec)))
                hooks.append(output.LayerNorm.register_forward_hook(_scale_output(self.channels)))
            if block.intermediate is not None:
                hooks.append(block.intermediate.register_forward_hook(_scale_output(neuron)))
                hooks.append(block.output.LayerNorm.register_forward_hook(
                    _scale_output(self.channels)))
        try:
            yield
        finally:
            for hook in hooks:
                hook.remove()


def _squared_gradients(model: Any, gates: _Gates, batches: Iterable[dict], probes: int,
                       generator: Any) -> list[Any]:
    """Σ (∂⟨r, output⟩/∂g)² per gate over the batches and ``probes`` draws of r each."""
    import torch

    fisher = [torch.zeros(g.shape, dtype=torch.float64) for g in gates.all]
    for batch in batches:
        out = model(**batch).last_hidden_state
        for probe in range(probes):
            r = torch.randn(out.shape, generator=generator) * batch["attention_mask"][..., None]
            grads = torch.autograd.grad((out * r).sum(), gates.all, allow_unused=True,
                                        retain_graph=probe < probes - 1)
            for f, g in zip(fisher, grads):
                if g is not None:
                    f += g.double() ** 2
    return fisher


def importance(model: Any, texts: Sequence[str], tokenizer: Any = None, *, max_length: int = 128,
               batch_size: int = 1, probes: int = 4, seed: int = 0) -> Importance:
    """Measure the importance of every head, FFN neuron and hidden channel of a `BortModel`.

    A gate g = 1 multiplies each unit's output: each head's context, each FFN neuron's activation,
    and each hidden channel of the residual stream (after the embeddings and after every
    LayerNorm). The importance of a unit is the diagonal Fisher information of its gate,
    E[(∂L/∂g)²], for a Gaussian model of the encoder's output: L = ⟨r, last_hidden_state⟩ with
    r ~ N(0, I) drawn afresh per batch, so E[(∂L/∂g)²] = ‖∂ output / ∂g‖² — how far the output
    moves when the unit is scaled (gradient × activation at g = 1). No labels and no MLM head are
    needed. Removing a set of units then costs, to second order, half the sum of their values
    (the Fisher pruning criterion of Kwon et al., 2022); e(x) uses the sum.

    The gradient of a batch sums its sequences, so each (batch, probe) pair is one draw of a
    χ²-like estimate: small batches and several probes per batch lower its variance.

    Args:
        model: the source `bort.model.BortModel`.
        texts: sample text (a few hundred sentences suffice).
        tokenizer: a `tokenizers.Tokenizer`; default: the model directory's tokenizer.json.
        batch_size, probes: sequences per forward pass, random projections per pass.
        seed: the projections' seed (same text, same seed: same result).
    """
    import torch

    from .tokenize import encode

    tokenizer = _importance_tokenizer(model, texts, tokenizer, max_length)
    batches = ({k: torch.from_numpy(v) for k, v in
                encode(tokenizer, texts[start:start + batch_size]).items()}
               for start in range(0, len(texts), batch_size))
    gates = _Gates(model.arch)
    was_training = model.training
    model.eval()
    try:
        with gates.applied(model):
            fisher = _squared_gradients(model, gates, batches, probes,
                                        torch.Generator().manual_seed(seed))
    finally:
        model.train(was_training)
    draws = -(-len(texts) // batch_size) * probes
    values = [(f / draws).numpy() for f in fisher]
    n = len(model.arch.layers)
    return Importance(model.arch, values[:n], values[n:2 * n], values[2 * n])


def _importance_tokenizer(model: Any, texts: Sequence[str], tokenizer: Any,
                          max_length: int) -> Any:
    """Check `importance`'s arguments; the tokenizer to use."""
    from .model import BortModel
    from .tokenize import load_tokenizer

    if not isinstance(model, BortModel):
        raise TypeError(f"importance needs a bort.model.BortModel, got {type(model).__name__}")
    if len(texts) == 0:
        raise ValueError("importance needs sample text; got none")
    if tokenizer is not None:
        return tokenizer
    if model.source_dir is None:
        raise ValueError("pass a tokenizer: the model was not loaded from a directory")
    return load_tokenizer(model.source_dir, max_length)


# ---------------------------------------------------------------------- the costs
def _options(batch: int = 1, seq_len: int = 128, effective: bool = False,
             table: LatencyTable | None = None) -> dict[str, Any]:
    """The options of the built-in kinds, with their defaults (unknown names: TypeError)."""
    return {"batch": batch, "seq_len": seq_len, "effective": effective, "table": table}


class CostKind:
    """A kind of inference cost the search trades against the error proxy. An architecture's
    cost is `base` plus `layer` summed over its layers (what the frontier table's dynamic
    program needs); `prepare` turns a search's options into those the two read, measuring what
    they need once. Register an instance in `COSTS` to make it a choice of the search.

    The built-in kinds share the options ``batch`` and ``seq_len`` (the shape costed, default
    1 × 128), ``effective`` (params without embeddings, pooler and head) and ``table`` (a
    `LatencyTable`)."""

    #: How tables and plots label a value of this cost.
    unit = "cost"

    def layer(self, layer: Layer, hidden: int, **options: Any) -> float:
        """The cost of one layer at a hidden size."""
        raise NotImplementedError

    def base(self, arch: Arch, **options: Any) -> float:
        """The cost of everything but the layers: embeddings, pooler and head."""
        raise NotImplementedError

    def prepare(self, source: Arch, space: Any, **options: Any) -> dict[str, Any]:
        """The options to cost every architecture of ``space`` (cut from ``source``) with; by
        default, those given."""
        return dict(options)


class ParamsCost(CostKind):
    """Parameter count p (``effective=True``: the encoder only)."""

    unit = "parameters"

    def layer(self, layer: Layer, hidden: int, **options: Any) -> float:
        _options(**options)
        return float(layer.params(hidden))

    def base(self, arch: Arch, **options: Any) -> float:
        if _options(**options)["effective"]:
            return 0.0
        p = arch.params()
        return float(p.embeddings + p.pooler + p.head)


class FlopsCost(CostKind):
    """FLOPs of one forward pass at ``batch`` × ``seq_len`` (`Arch.flops`)."""

    unit = "FLOPs"

    def layer(self, layer: Layer, hidden: int, **options: Any) -> float:
        o = _options(**options)
        return float(layer.flops(hidden, o["batch"], o["seq_len"]))

    def base(self, arch: Arch, **options: Any) -> float:
        o = _options(**options)
        return float(arch.with_layers(()).flops(o["batch"], o["seq_len"]))


class LatencyCost(CostKind):
    """Milliseconds on this CPU, summed from the sublayer times of ``table``."""

    unit = "ms"
    #: `prepare` options that shape the measurement only (see `measure_latency`).
    MEASURE_OPTIONS = ("threads", "backend", "dtype", "cache")

    def layer(self, layer: Layer, hidden: int, **options: Any) -> float:
        table = self._table(options)
        return table.attention_ms(hidden, layer) + table.ffn_ms(hidden, layer)

    def base(self, arch: Arch, **options: Any) -> float:
        return self._table(options).base_ms(arch.hidden)

    def prepare(self, source: Arch, space: Any, **options: Any) -> dict[str, Any]:
        """Unless ``table`` is given, measure one covering every sublayer of ``space`` and of
        ``source`` (the maximum point); ``threads``, ``backend``, ``dtype`` and ``cache`` pass
        to `measure_latency`."""
        measure = {k: options.pop(k) for k in self.MEASURE_OPTIONS if k in options}
        o = _options(**options)
        if o["table"] is not None:
            if measure:
                raise TypeError(f"{', '.join(measure)}: no measurement to shape, a table is given")
            return options
        attention, ffn, hiddens = space.sublayers()
        attention |= {(source.hidden, x.heads, x.head_dim) for x in source.layers}
        ffn |= {(source.hidden, x.ffn) for x in source.layers}
        table = measure_latency(source, sorted(hiddens | {source.hidden}),
                                attention_shapes=attention, ffn_shapes=ffn, batch=o["batch"],
                                seq_len=o["seq_len"], **measure)
        return {**options, "table": table}

    @staticmethod
    def _table(options: dict[str, Any]) -> LatencyTable:
        table = _options(**options)["table"]
        if table is None:
            raise ValueError("cost kind 'latency' needs a LatencyTable: pass table= "
                             "(bort.costs.measure_latency, or COSTS['latency'].prepare)")
        return table


#: The kinds of cost by name: ``cost(arch, kind)`` and the search's ``cost`` setting.
COSTS: Registry[CostKind] = Registry("cost kind")
COSTS.register("params", ParamsCost())
COSTS.register("flops", FlopsCost())
COSTS.register("latency", LatencyCost())


def layer_cost(layer: Layer, hidden: int, kind: str = "flops", **options: Any) -> float:
    """The cost of one layer at a hidden size; options as in `decompose`."""
    return float(COSTS[kind].layer(layer, hidden, **options))


def base_cost(arch: Arch, kind: str = "flops", **options: Any) -> float:
    """The cost of everything but the layers: embeddings, pooler and head."""
    return float(COSTS[kind].base(arch, **options))


def decompose(arch: Arch, kind: str = "flops", **options: Any) -> tuple[float, list[float]]:
    """``(base, per-layer costs)`` with ``cost(arch) == base + sum(per-layer)``.

    kind: a name in `COSTS`: "params" (``effective=True``: the encoder only, without
    embeddings, pooler and head), "flops" (at ``batch`` × ``seq_len``, default 1 × 128) or
    "latency" (ms, from ``table``).
    """
    return (base_cost(arch, kind, **options),
            [layer_cost(x, arch.hidden, kind, **options) for x in arch.layers])


def cost(arch: Arch, kind: str = "flops", **options: Any) -> float:
    """The inference cost i (or p with kind="params") of one architecture; options as in
    `decompose`."""
    base, layers = decompose(arch, kind, **options)
    return base + sum(layers)


def layer_map(arch: Arch, source: Arch, importance: Importance | None = None) -> list[int]:
    """The source layer each layer of ``arch`` stands for, in order.

    Same layer count: position by position (the layer-wise spaces). A uniform arch with fewer
    layers keeps the source layers whose removal would cost the most error proxy, or, without
    importance, evenly spaced ones (first and last included).
    """
    n, d = len(source.layers), len(arch.layers)
    if d == n:
        return list(range(n))
    if not (arch.is_uniform and d < n):
        raise ConfigError(f"{arch.describe()} has {d} layers and cannot be read as a part of the "
                          f"{n}-layer source")
    if importance is None:
        return sorted({round(i * (n - 1) / max(d - 1, 1)) for i in range(d)}) if d > 1 else [n - 1]
    layer = arch.layers[0]
    gain = [importance.layer_error(l, Layer(0, 0, 0)) - importance.layer_error(l, layer)
            for l in range(n)]
    return sorted(sorted(range(n), key=lambda l: gain[l], reverse=True)[:d])


def error_proxy(arch: Arch, importance: Importance) -> float:
    """e(arch): the summed importance of what ``arch`` removes from the source: the units its
    layers drop from the source layers they stand for (`layer_map`), every source layer it does
    not keep, and the hidden channels it cuts."""
    src = importance.source
    kept = dict(zip(layer_map(arch, src, importance), arch.layers))
    return importance.hidden_error(arch.hidden) + sum(
        importance.layer_error(l, kept.get(l, Layer(0, 0, 0))) for l in range(len(src.layers)))
