"""`bort.model`: a torch encoder built from any `Arch`, with Hugging Face weights in and out.

Module and tensor names follow transformers' `BertModel` (``encoder.layer.3.attention.self.query``
and so on), so a Hugging Face BERT or RoBERTa directory loads as it is, and a uniform model that
bort saves loads unchanged in transformers. Layers may differ from each other, and a layer may
lack its attention (``heads == 0``) or its FFN (``ffn == 0``): such a sublayer is the identity.

The sequence-classification head is transformers' `BertForSequenceClassification` head: the
first token's vector → pooler (dense + tanh) → dropout → ``classifier`` (linear). It is the one
format that fine-tuning writes and the runtime reads; a problem of type "regression" has one output.

Example:
    >>> import torch
    >>> from bort.model import BortModel
    >>> from bort.assets import default_source
    >>> model = BortModel.from_pretrained(default_source()).eval()
    >>> ids = torch.tensor([[101, 7592, 102]])
    >>> model(ids).last_hidden_state.shape
    torch.Size([1, 3, 384])
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .arch import INITIALIZER_RANGE, Arch, read_config
from .errors import WeightsError
from .io import copy_file, save_safetensors, write_json, write_text
from .weights import read_safetensors, safetensors_files, to_bort_names, to_roberta_head_name

__all__ = ["BortModel", "ModelOutput", "load_weights"]

#: Files of a tokenizer that `save_pretrained` copies from the source directory.
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
                   "vocab.txt", "vocab.json", "merges.txt")


@dataclass
class ModelOutput:
    """``last_hidden_state`` (B, S, H); ``pooler_output`` (B, H) when the arch has a pooler;
    ``logits`` (B, num_labels) with a head; per-layer ``hidden_states`` (embeddings first),
    ``attentions`` (B, heads, S, S; None for a layer without attention) and ``mlm_logits``
    (B, S, vocab) when asked for."""

    last_hidden_state: Tensor
    pooler_output: Tensor | None = None
    logits: Tensor | None = None
    hidden_states: tuple[Tensor, ...] | None = None
    attentions: tuple[Tensor | None, ...] | None = None
    mlm_logits: Tensor | None = None


def _activation(name: str):
    if name == "gelu":
        return F.gelu
    if name in ("gelu_new", "gelu_pytorch_tanh"):
        return lambda x: F.gelu(x, approximate="tanh")
    if name == "relu":
        return F.relu
    raise ValueError(f"unknown activation {name!r}")  # Arch validates; unreachable


class Embeddings(nn.Module):
    def __init__(self, arch: Arch):
        super().__init__()
        roberta = arch.position_style == "roberta"
        self.word_embeddings = nn.Embedding(arch.vocab_size, arch.hidden,
                                            padding_idx=arch.pad_token_id)
        self.position_embeddings = nn.Embedding(arch.max_positions, arch.hidden,
                                                padding_idx=arch.pad_token_id if roberta else None)
        self.token_type_embeddings = nn.Embedding(arch.type_vocab_size, arch.hidden)
        self.LayerNorm = nn.LayerNorm(arch.hidden, eps=arch.layer_norm_eps)
        self.dropout = nn.Dropout(arch.dropout)
        self.roberta = roberta
        self.pad_token_id = arch.pad_token_id

    def forward(self, input_ids: Tensor, token_type_ids: Tensor) -> Tensor:
        # input_ids, token_type_ids: (B, S) -> (B, S, H)
        if self.roberta:  # positions count real tokens from pad + 1; padding keeps pad_token_id
            real = input_ids.ne(self.pad_token_id).int()
            positions = torch.cumsum(real, dim=1) * real + self.pad_token_id
        else:
            positions = torch.arange(input_ids.shape[1], device=input_ids.device)[None]
        x = (self.word_embeddings(input_ids) + self.position_embeddings(positions)
             + self.token_type_embeddings(token_type_ids))
        return self.dropout(self.LayerNorm(x))


class SelfAttention(nn.Module):
    def __init__(self, hidden: int, heads: int, head_dim: int, dropout: float):
        super().__init__()
        width = heads * head_dim
        self.query = nn.Linear(hidden, width)
        self.key = nn.Linear(hidden, width)
        self.value = nn.Linear(hidden, width)
        self.heads, self.head_dim, self.dropout = heads, head_dim, dropout

    def forward(self, x: Tensor, mask: Tensor, need_weights: bool) -> tuple[Tensor, Tensor | None]:
        # x: (B, S, H); mask: (B, 1, 1, S) additive -> context (B, S, heads * head_dim)
        b, s, _ = x.shape
        q, k, v = (proj(x).view(b, s, self.heads, self.head_dim).transpose(1, 2)
                   for proj in (self.query, self.key, self.value))
        p = self.dropout if self.training else 0.0
        if need_weights:
            scores = q @ k.transpose(-1, -2) / math.sqrt(self.head_dim) + mask
            probs = scores.softmax(dim=-1)
            context = F.dropout(probs, p, self.training) @ v
        else:
            probs = None
            context = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=p)
        return context.transpose(1, 2).reshape(b, s, self.heads * self.head_dim), probs


class SublayerOutput(nn.Module):
    """dense (width -> hidden) + dropout + residual + LayerNorm: the end of both sublayers."""

    def __init__(self, width: int, hidden: int, eps: float, dropout: float):
        super().__init__()
        self.dense = nn.Linear(width, hidden)
        self.LayerNorm = nn.LayerNorm(hidden, eps=eps)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: Tensor, residual: Tensor) -> Tensor:
        return self.LayerNorm(self.dropout(self.dense(x)) + residual)


class Attention(nn.Module):
    def __init__(self, arch: Arch, heads: int, head_dim: int):
        super().__init__()
        self.self = SelfAttention(arch.hidden, heads, head_dim, arch.attention_dropout)
        self.output = SublayerOutput(heads * head_dim, arch.hidden, arch.layer_norm_eps,
                                     arch.dropout)

    def forward(self, x: Tensor, mask: Tensor, need_weights: bool) -> tuple[Tensor, Tensor | None]:
        context, probs = self.self(x, mask, need_weights)
        return self.output(context, x), probs


class Intermediate(nn.Module):
    def __init__(self, hidden: int, ffn: int, activation: str):
        super().__init__()
        self.dense = nn.Linear(hidden, ffn)
        self.act = _activation(activation)

    def forward(self, x: Tensor) -> Tensor:
        return self.act(self.dense(x))


class EncoderLayer(nn.Module):
    """One layer; ``attention`` is None when heads == 0, ``intermediate``/``output`` are None when
    ffn == 0 (a removed sublayer is the identity)."""

    def __init__(self, arch: Arch, index: int):
        super().__init__()
        spec = arch.layers[index]
        self.attention = Attention(arch, spec.heads, spec.head_dim) if spec.heads else None
        if spec.ffn:
            self.intermediate = Intermediate(arch.hidden, spec.ffn, arch.activation)
            self.output = SublayerOutput(spec.ffn, arch.hidden, arch.layer_norm_eps, arch.dropout)
        else:
            self.intermediate = self.output = None

    def forward(self, x: Tensor, mask: Tensor, need_weights: bool) -> tuple[Tensor, Tensor | None]:
        probs = None
        if self.attention is not None:
            x, probs = self.attention(x, mask, need_weights)
        if self.intermediate is not None:
            x = self.output(self.intermediate(x), x)
        return x, probs


class Encoder(nn.Module):
    def __init__(self, arch: Arch):
        super().__init__()
        self.layer = nn.ModuleList(EncoderLayer(arch, i) for i in range(len(arch.layers)))


class Pooler(nn.Module):
    def __init__(self, hidden: int):
        super().__init__()
        self.dense = nn.Linear(hidden, hidden)

    def forward(self, hidden_states: Tensor) -> Tensor:
        return torch.tanh(self.dense(hidden_states[:, 0]))


class MLMHead(nn.Module):
    """transformers' BertLMPredictionHead: dense + activation + LayerNorm, then a decoder tied to
    the word embeddings, plus a bias per token."""

    def __init__(self, arch: Arch, word_embeddings: nn.Embedding):
        super().__init__()
        self.transform = nn.Module()
        self.transform.dense = nn.Linear(arch.hidden, arch.hidden)
        self.transform.LayerNorm = nn.LayerNorm(arch.hidden, eps=arch.layer_norm_eps)
        self.act = _activation(arch.activation)
        self.bias = nn.Parameter(torch.zeros(arch.vocab_size))
        self.word_embeddings = [word_embeddings]  # a list: shared, not a submodule

    def forward(self, hidden_states: Tensor) -> Tensor:
        # (B, S, H) -> (B, S, vocab)
        x = self.transform.LayerNorm(self.act(self.transform.dense(hidden_states)))
        return F.linear(x, self.word_embeddings[0].weight, self.bias)


class MLMHeads(nn.Module):
    """Holds ``predictions`` so that tensor names read ``cls.predictions.*`` as in transformers."""

    def __init__(self, arch: Arch, word_embeddings: nn.Embedding):
        super().__init__()
        self.predictions = MLMHead(arch, word_embeddings)


class BortModel(nn.Module):
    """A BERT/RoBERTa encoder of any `Arch`, with optional pooler and classification head.

    Args:
        arch: the architecture; weights are initialised as transformers does (normal, std
            ``INITIALIZER_RANGE``).
        id2label: label names of the classification head (default ``LABEL_i``).
        problem_type: transformers' ``problem_type`` ("regression",
            "single_label_classification", ...), kept in config.json.
        card: model-card fields (``source``, ``data``, ``metrics``, ``license``) saved with it.
    """

    def __init__(self, arch: Arch, *, id2label: Mapping[int, str] | None = None,
                 problem_type: str | None = None, card: Mapping[str, Any] | None = None):
        super().__init__()
        self.arch = arch
        self.embeddings = Embeddings(arch)
        self.encoder = Encoder(arch)
        self.pooler = Pooler(arch.hidden) if arch.pooler else None
        if arch.num_labels:
            self.dropout = nn.Dropout(arch.dropout)
            self.classifier = nn.Linear(arch.hidden, arch.num_labels)
        else:
            self.dropout = self.classifier = None
        self.cls = MLMHeads(arch, self.embeddings.word_embeddings) if arch.mlm_head else None
        labels = id2label or {i: f"LABEL_{i}" for i in range(arch.num_labels)}
        self.id2label = {int(k): str(v) for k, v in labels.items()}
        if arch.num_labels and sorted(self.id2label) != list(range(arch.num_labels)):
            raise ValueError(f"id2label must name labels 0..{arch.num_labels - 1}, "
                             f"got {sorted(self.id2label)}")
        self.problem_type = problem_type
        self.card = dict(card or {})
        self.source_dir: Path | None = None
        self.apply(self._init_weights)

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        if isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, std=INITIALIZER_RANGE)
            nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, std=INITIALIZER_RANGE)
            if module.padding_idx is not None:
                with torch.no_grad():
                    module.weight[module.padding_idx].zero_()
        elif isinstance(module, nn.LayerNorm):
            nn.init.ones_(module.weight)
            nn.init.zeros_(module.bias)

    # ------------------------------------------------------------------ forward
    def _check_inputs(self, input_ids: Tensor, attention_mask: Tensor | None,
                      token_type_ids: Tensor | None) -> None:
        arch = self.arch
        if not isinstance(input_ids, Tensor) or input_ids.dim() != 2:
            raise ValueError("input_ids must be a 2-D tensor (batch, seq_len)")
        if input_ids.dtype not in (torch.int64, torch.int32):
            raise ValueError(f"input_ids must be integer token ids, got {input_ids.dtype}")
        b, s = input_ids.shape
        if b == 0 or s == 0:
            raise ValueError(f"empty batch: input_ids has shape {tuple(input_ids.shape)}")
        if s > arch.max_tokens:
            raise ValueError(f"sequence length {s} exceeds the model's {arch.max_tokens} "
                             "positions")
        lo, hi = int(input_ids.min()), int(input_ids.max())
        if lo < 0 or hi >= arch.vocab_size:
            raise ValueError(f"input_ids out of range [0, {arch.vocab_size}): min {lo}, max {hi}")
        for name, t, bound in (("attention_mask", attention_mask, 2),
                               ("token_type_ids", token_type_ids, arch.type_vocab_size)):
            if t is None:
                continue
            if t.shape != input_ids.shape:
                raise ValueError(f"{name} has shape {tuple(t.shape)}, input_ids "
                                 f"{tuple(input_ids.shape)}")
            if int(t.min()) < 0 or int(t.max()) >= bound:
                raise ValueError(f"{name} values must lie in [0, {bound})")

    def forward(self, input_ids: Tensor, attention_mask: Tensor | None = None,
                token_type_ids: Tensor | None = None, *, output_hidden_states: bool = False,
                output_attentions: bool = False, output_mlm: bool = False) -> ModelOutput:
        """Hugging Face semantics: ``input_ids``, ``attention_mask`` (1 = token, 0 = padding) and
        ``token_type_ids``, all (B, S); missing mask = all tokens, missing types = 0."""
        if not (torch.jit.is_tracing() or torch.compiler.is_compiling()):  # not while exporting
            self._check_inputs(input_ids, attention_mask, token_type_ids)
        if output_mlm and self.cls is None:
            raise ValueError("output_mlm needs an MLM head (Arch.mlm_head)")
        if token_type_ids is None:
            token_type_ids = torch.zeros_like(input_ids)
        x = self.embeddings(input_ids.long(), token_type_ids.long())
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        hidden_states, attentions = self._encode(x, attention_mask, output_attentions)
        x = hidden_states[-1]
        out = ModelOutput(last_hidden_state=x)
        if self.pooler is not None:
            out.pooler_output = self.pooler(x)
        if self.classifier is not None:
            out.logits = self.classifier(self.dropout(out.pooler_output))
        if output_hidden_states:
            out.hidden_states = hidden_states
        if output_attentions:
            out.attentions = attentions
        if output_mlm:
            out.mlm_logits = self.cls.predictions(x)
        return out

    def _encode(self, x: Tensor, attention_mask: Tensor, need_weights: bool
                ) -> tuple[tuple[Tensor, ...], tuple[Tensor | None, ...]]:
        """Every layer over the embeddings ``x``: (hidden states, embeddings first; attention
        probabilities, when ``need_weights``, else Nones)."""
        mask = (1.0 - attention_mask[:, None, None, :].to(x.dtype)) * torch.finfo(x.dtype).min
        hidden_states, attentions = [x], []
        for layer in self.encoder.layer:
            x, probs = layer(x, mask, need_weights)
            hidden_states.append(x)
            attentions.append(probs)
        return tuple(hidden_states), tuple(attentions)

    # ------------------------------------------------------------------ loading
    @classmethod
    def from_pretrained(cls, directory: str | Path) -> BortModel:
        """Load a Hugging Face BERT/RoBERTa directory, or one bort saved (any `Arch`).

        Weights come from ``model.safetensors`` (single or sharded) or, only through torch's
        ``weights_only=True`` loader, ``pytorch_model.bin``. Every tensor's name and shape is
        checked; a mismatch raises `WeightsError` naming the tensor.
        """
        directory = Path(directory)
        config = read_config(directory)
        arch = Arch.from_config(config, source=str(directory / "config.json"))
        state = to_bort_names(load_weights(directory))
        if not arch.mlm_head:  # e.g. a BertForPreTraining read as an encoder
            state = {k: v for k, v in state.items() if not k.startswith("cls.")}
        arch = arch.fit_to_weights(state)  # e.g. sentence-embedding exports without a pooler
        id2label = config.get("id2label") if arch.num_labels else None
        model = cls(arch, id2label=id2label, problem_type=config.get("problem_type"),
                    card=config.get("bort"))
        model.load_checked(state, source=str(directory))
        model.source_dir = directory
        return model

    def load_checked(self, state: Mapping[str, Tensor], source: str = "state dict") -> None:
        """Copy ``state`` into the model; every name and shape must match exactly."""
        own = self.state_dict()
        missing = [k for k in own if k not in state]
        extra = [k for k in state if k not in own]
        if missing:
            raise WeightsError(f"{source}: missing tensor {missing[0]!r} "
                               f"({len(missing)} missing) for architecture {self.arch.describe()}")
        if extra:
            raise WeightsError(f"{source}: unexpected tensor {extra[0]!r} ({len(extra)} "
                               f"unexpected) for architecture {self.arch.describe()}")
        for name, tensor in own.items():
            if tuple(state[name].shape) != tuple(tensor.shape):
                raise WeightsError(f"{source}: tensor {name!r} has shape "
                                   f"{tuple(state[name].shape)}, the architecture needs "
                                   f"{tuple(tensor.shape)}")
        self.load_state_dict(dict(state), strict=True)

    # ------------------------------------------------------------------ saving
    def save_pretrained(self, directory: str | Path, *,
                        card: Mapping[str, Any] | None = None) -> Path:
        """Write ``model.safetensors``, ``config.json``, the source's tokenizer files and a
        model card (README.md) into ``directory``. Each file is written atomically.

        A uniform model loads unchanged in transformers (`BertModel`, or
        `BertForSequenceClassification` with a head); layer-wise ones load in bort.
        """
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        self.card.update(card or {})
        arch = self.arch
        config = arch.to_config()
        if arch.num_labels:
            config["id2label"] = {str(i): name for i, name in sorted(self.id2label.items())}
            config["label2id"] = {name: i for i, name in sorted(self.id2label.items())}
        if self.problem_type:
            config["problem_type"] = self.problem_type
        config["torch_dtype"] = "float32"
        config["bort"] = {"version": _bort_version(), **self.card}
        save_safetensors(_to_hf_names(self.state_dict(), arch), directory / "model.safetensors")
        write_json(directory / "config.json", config, indent=2)
        if self.source_dir is not None and self.source_dir.resolve() != directory.resolve():
            for name in TOKENIZER_FILES:
                if (self.source_dir / name).is_file():
                    copy_file(self.source_dir / name, directory / name)
        write_text(directory / "README.md", model_card(self))
        return directory


# ---------------------------------------------------------------------- weights on disk
def load_weights(directory: Path) -> dict[str, Tensor]:
    """All tensors of a model directory: safetensors (single or sharded), else pytorch_model.bin
    through ``torch.load(weights_only=True)``, which reads tensors and plain containers only."""
    files = safetensors_files(directory)
    if files is None:
        path = directory / "pytorch_model.bin"
        if not path.is_file():
            raise FileNotFoundError(f"no weights in {directory} (model.safetensors, "
                                    "model.safetensors.index.json or pytorch_model.bin)")
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as e:  # a refused or corrupt file raises many error types
            raise WeightsError(f"{path}: not loadable with weights_only=True ({e})") from None
        if not isinstance(state, dict):
            raise WeightsError(f"{path}: expected a state dict, got {type(state).__name__}")
        return state
    return read_safetensors(files, "pt")


def _to_hf_names(state: Mapping[str, Tensor], arch: Arch) -> dict[str, Tensor]:
    """bort's names → what transformers expects for this arch: bare names for a base model;
    with a head, the encoder under ``bert.`` / ``roberta.``, and RoBERTa's head names for
    RoBERTa models (``classifier.dense`` / ``out_proj``, ``lm_head``)."""
    if not (arch.num_labels or arch.mlm_head):
        return dict(state)
    out = {}
    roberta = arch.family == "roberta"
    for name, tensor in state.items():
        is_head = name.startswith(("classifier.", "cls.")) or (
            roberta and arch.num_labels and name.startswith("pooler."))
        if not is_head:
            name = f"{arch.family}.{name}"
        elif roberta:
            name = to_roberta_head_name(name)
        out[name] = tensor
    return out


def _bort_version() -> str:
    from . import __version__

    return __version__


def model_card(model: BortModel) -> str:
    """A short model card: source, architecture and sizes, data, metrics, licence."""
    arch, card = model.arch, model.card
    p = arch.params()
    license_ = card.get("license") or "the licence of the source model"
    lines = [
        "---",
        f"license: {card.get('license') or 'other'}",
        "library_name: bort",
        f"tags: [bort, {arch.family}]",
        "---",
        f"# {card.get('name') or 'bort model'}",
        "",
        f"- **Architecture:** {arch.describe()}",
        f"- **Parameters:** {p.total:,} (embeddings {p.embeddings:,}, encoder {p.encoder:,}, "
        f"pooler {p.pooler:,}, head {p.head:,})",
        f"- **FLOPs, batch 1 × 128 tokens:** {arch.flops(1, 128):,}",
        f"- **Source:** {card.get('source') or 'not recorded'}",
        f"- **Data:** {card.get('data') or 'not recorded'}",
        f"- **Licence:** {license_}",
    ]
    if arch.num_labels:
        lines.append(f"- **Labels:** {', '.join(model.id2label[i] for i in sorted(model.id2label))}"
                     + (f" ({model.problem_type})" if model.problem_type else ""))
    metrics = card.get("metrics") or {}
    if metrics:
        lines += ["", "| metric | value |", "|---|---|"]
        lines += [f"| {k} | {v} |" for k, v in metrics.items()]
    lines += ["", f"Written by bort {_bort_version()}. Load with `bort.model.BortModel."
              "from_pretrained(dir)` (training) or `bort.runtime` (serving)"
              + ("; transformers loads it too." if arch.is_uniform else ".")]
    return "\n".join(lines) + "\n"
