"""Extraction: initialise any sub-architecture of a source model from the source's weights.

The target keeps, from the source (see `bort.costs` for how units are ranked):
- layers: the source layers `bort.costs.layer_map` assigns (position by position for layer-wise
  archs; for a uniform arch with fewer layers, those that cost most to drop, or evenly spaced
  ones without importance);
- in each layer, its most important heads (their first ``head_dim`` dimensions when the target's
  heads are narrower) and FFN neurons;
- the most important hidden channels: one selection applied consistently to the embeddings, every
  projection's inputs and outputs, every LayerNorm, the pooler and the head.

Importance comes from `bort.costs.importance` over sample text, or from weight magnitudes
(`magnitude_importance`) without text. The extracted model is a `bort.model.BortModel`; its
LayerNorms normalise over the kept channels only, which distillation then corrects.

Example:
    >>> source = BortModel.from_pretrained(src)                   # doctest: +SKIP
    >>> target = target_arch(source.arch, 3, 12, 384, 768)        # doctest: +SKIP
    >>> student = extract(source, target, sample_texts)           # doctest: +SKIP
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace

import numpy as np
import torch

from .arch import Arch, Layer
from .costs import Importance, layer_map
from .costs import importance as measure_importance
from .errors import ConfigError
from .model import BortModel

__all__ = ["extract", "magnitude_importance", "target_arch"]

#: Fields a target shares with its source; extraction takes them from the source.
_SHARED = ("vocab_size", "max_positions", "type_vocab_size", "activation", "layer_norm_eps",
           "position_style", "pad_token_id")


def target_arch(source: Arch, layers: int, heads: int, hidden: int, ffn: int) -> Arch:
    """The uniform ⟨D, A, H, I⟩ target for a source (heads of size H / A), with the source's
    vocabulary, positions, norms, pooler and heads."""
    target = Arch.uniform(layers, heads, hidden, ffn)
    return replace(target, **{f: getattr(source, f) for f in _SHARED}, pooler=source.pooler,
                   num_labels=source.num_labels, mlm_head=source.mlm_head)


def magnitude_importance(model: BortModel) -> Importance:
    """Importance from the weights alone: a head by ‖W_V,h‖·‖W_O,h‖, an FFN neuron by
    ‖W_in,j‖·‖W_out,j‖, a hidden channel by the squared LayerNorm scales it passes through."""
    arch = model.arch
    heads, neurons = [], []
    channels = model.embeddings.LayerNorm.weight.detach().double() ** 2
    for spec, block in zip(arch.layers, model.encoder.layer):
        if block.attention is not None:
            d = spec.head_dim
            v = block.attention.self.value.weight.detach().double().view(spec.heads, d, -1)
            o = block.attention.output.dense.weight.detach().double().view(-1, spec.heads, d)
            heads.append((v.norm(dim=(1, 2)) * o.norm(dim=(0, 2))).numpy())
            channels = channels + block.attention.output.LayerNorm.weight.detach().double() ** 2
        else:
            heads.append(np.zeros(0))
        if block.intermediate is not None:
            w_in = block.intermediate.dense.weight.detach().double()
            w_out = block.output.dense.weight.detach().double()
            neurons.append((w_in.norm(dim=1) * w_out.norm(dim=0)).numpy())
            channels = channels + block.output.LayerNorm.weight.detach().double() ** 2
        else:
            neurons.append(np.zeros(0))
    return Importance(arch, heads, neurons, channels.numpy())


def _top(values: np.ndarray, k: int) -> torch.Tensor:
    """Indices of the k largest values, in their original order (ties: the earlier first)."""
    order = np.argsort(-values, kind="stable")[:k]
    return torch.from_numpy(np.sort(order)).long()


def extract(source: BortModel, target: Arch, sample_texts: Sequence[str] | None = None, *,
            importance: Importance | None = None) -> BortModel:
    """A `BortModel` of architecture ``target`` initialised from ``source``'s weights.

    ``importance`` ranks the units (measured with `bort.costs.importance`); else it is measured
    over ``sample_texts``; else weight magnitudes rank them. Raises ConfigError when ``target``
    is not a part of the source (more layers, heads, neurons or channels than it has, wider
    heads, another vocabulary).
    """
    src = source.arch
    _check_target(target, src)
    if importance is None:
        importance = (measure_importance(source, sample_texts) if sample_texts
                      else magnitude_importance(source))
    if not importance.matches(src):
        raise ConfigError("the importance table was measured on another architecture")
    mapping = layer_map(target, src, importance)
    _check_layers(target, src, mapping)

    c = _top(importance.channels, target.hidden)  # kept hidden channels
    old = source.state_dict()
    new = _embeddings(old, c)
    for t, (l, layer) in enumerate(zip(mapping, target.layers)):
        new.update(_layer(old, c, importance, (t, layer), (l, src.layers[l])))
    new.update(_heads(old, c, target))

    model = BortModel(target, id2label=source.id2label if target.num_labels else None,
                      problem_type=source.problem_type,
                      card={**source.card, "source": str(source.source_dir or "a BortModel"),
                            "extracted": f"{src.describe()} → {target.describe()}"})
    model.load_checked({k: v.clone().contiguous() for k, v in new.items()}, source="extraction")
    model.source_dir = source.source_dir  # its tokenizer goes with it
    return model


def _check_target(target: Arch, src: Arch) -> None:
    """Refuse a target that does not share the source's tokens or has parts the source lacks."""
    for f in _SHARED:
        if getattr(target, f) != getattr(src, f):
            raise ConfigError(f"target {f} {getattr(target, f)!r} differs from the source's "
                              f"{getattr(src, f)!r}; a sub-architecture keeps it")
    if target.hidden > src.hidden:
        raise ConfigError(f"target hidden {target.hidden} exceeds the source's {src.hidden}")
    if target.pooler and not src.pooler:
        raise ConfigError("the target has a pooler and the source has none")
    if target.mlm_head and not src.mlm_head:
        raise ConfigError("the target has an MLM head and the source has none")
    if target.num_labels and target.num_labels != src.num_labels:
        raise ConfigError(f"the target's head has {target.num_labels} labels, the source's "
                          f"{src.num_labels}")


def _check_layers(target: Arch, src: Arch, mapping: Sequence[int]) -> None:
    """Refuse a target layer larger than the source layer it is cut from."""
    for t, (l, layer) in enumerate(zip(mapping, target.layers)):
        s = src.layers[l]
        wider = layer.heads and layer.head_dim > s.head_dim
        if layer.heads > s.heads or layer.ffn > s.ffn or wider:
            raise ConfigError(f"target layer {t} ({layer.heads} heads × {layer.head_dim}, FFN "
                              f"{layer.ffn}) is not a part of source layer {l} ({s.heads} heads × "
                              f"{s.head_dim}, FFN {s.ffn})")


Tensors = dict[str, torch.Tensor]


def _embeddings(old: Tensors, c: torch.Tensor) -> Tensors:
    """The embedding tables and LayerNorm at the kept channels ``c``."""
    new = {f"embeddings.{name}.weight": old[f"embeddings.{name}.weight"][:, c]
           for name in ("word_embeddings", "position_embeddings", "token_type_embeddings")}
    for p in ("weight", "bias"):
        new[f"embeddings.LayerNorm.{p}"] = old[f"embeddings.LayerNorm.{p}"][c]
    return new


def _layer(old: Tensors, c: torch.Tensor, importance: Importance, target: tuple[int, Layer],
           source: tuple[int, Layer]) -> Tensors:
    """Target layer ``target`` (index, shape) cut from source layer ``source``: the source's
    most important heads (their first ``head_dim`` rows) and neurons, at the kept channels
    ``c``."""
    (t, layer), (l, s) = target, source
    pt, ps = f"encoder.layer.{t}.", f"encoder.layer.{l}."
    new: Tensors = {}
    if layer.heads:
        h = _top(importance.heads[l], layer.heads)
        rows = (h[:, None] * s.head_dim + torch.arange(layer.head_dim)[None]).reshape(-1)
        for part in ("query", "key", "value"):
            w = old[f"{ps}attention.self.{part}.weight"]
            new[f"{pt}attention.self.{part}.weight"] = w[rows][:, c]
            bias = old[f"{ps}attention.self.{part}.bias"]
            new[f"{pt}attention.self.{part}.bias"] = bias[rows]
        new[f"{pt}attention.output.dense.weight"] = (
            old[f"{ps}attention.output.dense.weight"][c][:, rows])
        for p in ("dense.bias", "LayerNorm.weight", "LayerNorm.bias"):
            new[f"{pt}attention.output.{p}"] = old[f"{ps}attention.output.{p}"][c]
    if layer.ffn:
        j = _top(importance.neurons[l], layer.ffn)
        new[f"{pt}intermediate.dense.weight"] = old[f"{ps}intermediate.dense.weight"][j][:, c]
        new[f"{pt}intermediate.dense.bias"] = old[f"{ps}intermediate.dense.bias"][j]
        new[f"{pt}output.dense.weight"] = old[f"{ps}output.dense.weight"][c][:, j]
        for p in ("dense.bias", "LayerNorm.weight", "LayerNorm.bias"):
            new[f"{pt}output.{p}"] = old[f"{ps}output.{p}"][c]
    return new


def _heads(old: Tensors, c: torch.Tensor, target: Arch) -> Tensors:
    """The pooler, classification head and MLM head the target has, at the kept channels."""
    new: Tensors = {}
    if target.pooler:
        new["pooler.dense.weight"] = old["pooler.dense.weight"][c][:, c]
        new["pooler.dense.bias"] = old["pooler.dense.bias"][c]
    if target.num_labels:
        new["classifier.weight"] = old["classifier.weight"][:, c]
        new["classifier.bias"] = old["classifier.bias"]
    if target.mlm_head:
        head = "cls.predictions."
        new[f"{head}transform.dense.weight"] = old[f"{head}transform.dense.weight"][c][:, c]
        for p in ("transform.dense.bias", "transform.LayerNorm.weight", "transform.LayerNorm.bias"):
            new[f"{head}{p}"] = old[f"{head}{p}"][c]
        new[f"{head}bias"] = old[f"{head}bias"]
    return new
