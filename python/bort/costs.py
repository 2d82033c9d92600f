"""The three objectives of the search for one architecture: p, i and the error proxy e.

- p: parameters, the total of `Arch.params()`, or the encoder alone ("effective" size).
- i: inference cost, either the FLOP count of `Arch.flops` at a stated batch × length, or a
  latency in milliseconds summed from a per-sublayer table measured on this CPU with bort's
  own encoder (or torch) (`LatencyTable`, cached on disk by CPU model, threads and backend).
- e: an additive error proxy, the summed importance of every head, FFN neuron and hidden channel
  the architecture removes from the source (`importance`, measured once on the source).

Every cost is ``base(hidden) + Σ_layers layer_cost``, which is what lets the frontier table
(csrc/frontier) run a dynamic program over layers; `decompose` is that split and `cost` its sum,
so the table and a brute-force check compute the very same numbers.

Torch is imported only to measure (importance, latency); reading costs is torch-free.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import statistics
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from .arch import Arch, Layer
from .errors import BortError, ConfigError

__all__ = ["COST_KINDS", "Importance", "LatencyTable", "base_cost", "cost", "decompose",
           "error_proxy", "importance", "layer_cost", "layer_map", "measure_latency"]

COST_KINDS = ("params", "flops", "latency")


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
        key = lambda s: tuple(int(x) for x in s.split(","))  # noqa: E731
        return cls(data["batch"], data["seq_len"], data["threads"], data["backend"], data["cpu"],
                   {key(k): v for k, v in data["attention"].items()},
                   {key(k): v for k, v in data["ffn"].items()},
                   {int(k): v for k, v in data["base"].items()})


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def cache_dir() -> Path:
    """``$BORT_CACHE_DIR``, else ``$XDG_CACHE_HOME/bort``, else ``~/.cache/bort``."""
    if os.environ.get("BORT_CACHE_DIR"):
        return Path(os.environ["BORT_CACHE_DIR"])
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "bort"


def _time_ms(fn, min_repeats: int = 5, min_seconds: float = 0.05) -> float:
    """Median wall time of ``fn()`` in ms after two warm-up calls."""
    fn(), fn()
    times: list[float] = []
    start = time.perf_counter()
    while len(times) < min_repeats or time.perf_counter() - start < min_seconds:
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return 1e3 * statistics.median(times)


def measure_latency(source: Arch, hiddens: Sequence[int], heads: Sequence[int],
                    ffns: Sequence[int], *, head_dim: int | None = None, batch: int = 1,
                    seq_len: int = 128, threads: int = 1, backend: str = "bort",
                    dtype: str = "fp32", cache: bool = True) -> LatencyTable:
    """Time every attention sublayer (``heads`` choices) and FFN sublayer (``ffns`` widths) at each
    hidden size on this CPU; entries already in the on-disk cache are not re-measured.

    backend: "bort" (the fused encoder that will serve the model, in ``dtype``; each entry is
    the sublayer's own time from `bort.runtime.Encoder.sublayer_ms`) or "torch" (eager fp32).
    ``head_dim`` defaults to the source's first attention layer's. The cache file is keyed by
    CPU model, threads, backend, batch and length.
    """
    import torch

    from . import __version__
    from .model import BortModel, EncoderLayer

    if backend not in ("bort", "torch"):
        raise ValueError(f"backend must be 'bort' or 'torch', got {backend!r}")
    if head_dim is None:
        head_dim = next((x.head_dim for x in source.layers if x.heads), 64)
    name = f"bort-{dtype}-{__version__}" if backend == "bort" else f"torch-{torch.__version__}"
    cpu = _cpu_model()
    table = LatencyTable(batch, seq_len, threads, name, cpu)
    key = json.dumps([cpu, threads, name, batch, seq_len])
    key = hashlib.sha1(key.encode()).hexdigest()[:16]
    path = cache_dir() / "latency" / f"{key}.json"
    if cache and path.is_file():
        try:
            table = LatencyTable.from_json(json.loads(path.read_text()))
        except (json.JSONDecodeError, KeyError, ValueError):
            pass  # a damaged cache is measured again

    def single(hidden: int, layers: list[Layer]) -> Arch:
        return Arch(hidden=hidden, layers=layers, vocab_size=source.vocab_size,
                    max_positions=max(source.max_positions, seq_len), pooler=source.pooler,
                    activation=source.activation)

    def bort_ms(arch: Arch) -> np.ndarray:
        """Median per-stage milliseconds (embeddings, attention and FFN per layer, head)."""
        from .runtime import Encoder

        state = {k: v.numpy() for k, v in BortModel(arch).state_dict().items()}
        encoder = Encoder(arch, state, num_threads=threads, dtype=dtype)
        ids = np.random.default_rng(0).integers(0, source.vocab_size, (batch, seq_len))
        runs = [encoder.sublayer_ms(ids) for _ in range(7)]
        return np.median(np.array(runs[2:]), axis=0)

    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        with torch.inference_mode():
            for hidden in hiddens:
                x = torch.randn(batch, seq_len, hidden)
                mask = torch.zeros(batch, 1, 1, seq_len)
                jobs = [(table.attention, (hidden, h, head_dim), Layer(h, head_dim, 0), 1)
                        for h in heads if h] + [(table.ffn, (hidden, f), Layer(0, 0, f), 2)
                                                 for f in ffns if f]
                for entries, k, spec, stage in jobs:
                    if k in entries:
                        continue
                    if backend == "bort":
                        entries[k] = float(bort_ms(single(hidden, [spec]))[stage])
                    else:
                        layer = EncoderLayer(single(hidden, [spec]), 0).eval()
                        entries[k] = _time_ms(lambda: layer(x, mask, False))
                if hidden not in table.base:
                    if backend == "bort":
                        table.base[hidden] = float(bort_ms(single(hidden, [])).sum())
                    else:
                        model = BortModel(single(hidden, [])).eval()
                        ids = torch.randint(0, source.vocab_size, (batch, seq_len))
                        table.base[hidden] = _time_ms(lambda: model(ids))
    finally:
        torch.set_num_threads(before)
    if cache:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".tmp")
        with os.fdopen(fd, "w") as f:
            json.dump(table.to_json(), f, indent=1)
        os.replace(tmp, path)
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
        from safetensors.numpy import save_file

        tensors = {"channels": self.channels.astype(np.float64)}
        for l, (h, n) in enumerate(zip(self.heads, self.neurons)):
            tensors[f"heads.{l}"] = h.astype(np.float64)
            tensors[f"neurons.{l}"] = n.astype(np.float64)
        save_file(tensors, str(path), metadata={"source": json.dumps(self.source.to_config())})

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

    from .model import BortModel
    from .tokenize import encode, load_tokenizer

    if not isinstance(model, BortModel):
        raise TypeError(f"importance needs a bort.model.BortModel, got {type(model).__name__}")
    if len(texts) == 0:
        raise ValueError("importance needs sample text; got none")
    if tokenizer is None:
        if model.source_dir is None:
            raise ValueError("pass a tokenizer: the model was not loaded from a directory")
        tokenizer = load_tokenizer(model.source_dir, max_length)
    arch = model.arch
    gen = torch.Generator().manual_seed(seed)
    heads = [torch.ones(x.heads, requires_grad=True) for x in arch.layers]
    neurons = [torch.ones(x.ffn, requires_grad=True) for x in arch.layers]
    channels = torch.ones(arch.hidden, requires_grad=True)
    fisher = [torch.zeros(g.shape, dtype=torch.float64) for g in (*heads, *neurons, channels)]

    hooks = []

    def head_gate(gate, layer):
        def pre(_module, args):  # context (B, S, heads * head_dim) before the output projection
            (context,) = args
            b, s, _ = context.shape
            return (context.view(b, s, layer.heads, layer.head_dim) * gate[:, None]).view(b, s, -1),
        return pre

    def mul_output(gate):
        return lambda _module, _args, out: out * gate

    for spec, block, hg, ng in zip(arch.layers, model.encoder.layer, heads, neurons):
        if block.attention is not None:
            dense = block.attention.output.dense
            hooks.append(dense.register_forward_pre_hook(head_gate(hg, spec)))
            hooks.append(block.attention.output.LayerNorm.register_forward_hook(mul_output(channels)))
        if block.intermediate is not None:
            hooks.append(block.intermediate.register_forward_hook(mul_output(ng)))
            hooks.append(block.output.LayerNorm.register_forward_hook(mul_output(channels)))
    hooks.append(model.embeddings.LayerNorm.register_forward_hook(mul_output(channels)))

    was_training = model.training
    model.eval()
    try:
        for start in range(0, len(texts), batch_size):
            batch = {k: torch.from_numpy(v) for k, v in
                     encode(tokenizer, texts[start:start + batch_size]).items()}
            out = model(**batch).last_hidden_state
            gates = [*heads, *neurons, channels]
            for probe in range(probes):
                r = torch.randn(out.shape, generator=gen) * batch["attention_mask"][..., None]
                grads = torch.autograd.grad((out * r).sum(), gates, allow_unused=True,
                                            retain_graph=probe < probes - 1)
                for f, g in zip(fisher, grads):
                    if g is not None:
                        f += g.double() ** 2
    finally:
        for h in hooks:
            h.remove()
        model.train(was_training)
    draws = -(-len(texts) // batch_size) * probes
    values = [(f / draws).numpy() for f in fisher]
    n = len(arch.layers)
    return Importance(arch, values[:n], values[n:2 * n], values[2 * n])


# ---------------------------------------------------------------------- the costs
def _options(batch: int = 1, seq_len: int = 128, effective: bool = False,
             table: LatencyTable | None = None) -> dict[str, Any]:
    return {"batch": batch, "seq_len": seq_len, "effective": effective, "table": table}


def layer_cost(layer: Layer, hidden: int, kind: str = "flops", **options: Any) -> float:
    """The cost of one layer at a hidden size; options as in `decompose`."""
    o = _options(**options)
    if kind == "params":
        return float(layer.params(hidden))
    if kind == "flops":
        return float(layer.flops(hidden, o["batch"], o["seq_len"]))
    if kind == "latency":
        table = _table(o)
        return table.attention_ms(hidden, layer) + table.ffn_ms(hidden, layer)
    raise ValueError(f"unknown cost kind {kind!r}; expected one of {COST_KINDS}")


def base_cost(arch: Arch, kind: str = "flops", **options: Any) -> float:
    """The cost of everything but the layers: embeddings, pooler and head."""
    o = _options(**options)
    if kind == "params":
        p = arch.params()
        return 0.0 if o["effective"] else float(p.embeddings + p.pooler + p.head)
    if kind == "flops":
        return float(arch.with_layers(()).flops(o["batch"], o["seq_len"]))
    if kind == "latency":
        return _table(o).base_ms(arch.hidden)
    raise ValueError(f"unknown cost kind {kind!r}; expected one of {COST_KINDS}")


def _table(options: dict[str, Any]) -> LatencyTable:
    if options["table"] is None:
        raise ValueError("cost kind 'latency' needs a LatencyTable (bort.costs.measure_latency)")
    return options["table"]


def decompose(arch: Arch, kind: str = "flops", **options: Any) -> tuple[float, list[float]]:
    """``(base, per-layer costs)`` with ``cost(arch) == base + sum(per-layer)``.

    kind: "params" (``effective=True``: the encoder only, without embeddings, pooler and head),
    "flops" (at ``batch`` × ``seq_len``, default 1 × 128) or "latency" (ms, from ``table``).
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
