"""`Arch`: the one description of a BERT-family encoder, and its exact sizes.

Torch-free. Every other part of bort (the search, the torch model, the C++ encoder, ONNX export)
reads its shapes from an `Arch`, and `Arch.params()` / `Arch.flops()` are the one source of truth
for sizes; ``csrc/arch.hpp`` mirrors them and the tests hold the two equal.

A layer has its own ``heads``, ``head_dim`` and ``ffn`` width. ``heads == 0`` removes the attention
sublayer and ``ffn == 0`` the FFN sublayer: a removed sublayer is the identity, with no weights, no
bias and no LayerNorm; with both 0 the layer is dropped (it costs and does nothing).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Mapping
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path
from typing import Any

from .errors import ConfigError
from .weights import safetensors_names

__all__ = ["Arch", "Layer", "ParamCount"]

#: Hugging Face ``hidden_act`` names bort implements, and the kernel each one means.
ACTIVATIONS = {"gelu": "gelu_erf", "gelu_new": "gelu_tanh", "gelu_pytorch_tanh": "gelu_tanh",
               "relu": "relu"}
POSITION_STYLES = ("absolute", "roberta")
#: Hugging Face model types bort reads, and their position style.
FAMILIES = {"bert": "absolute", "roberta": "roberta", "xlm-roberta": "roberta",
            "camembert": "roberta"}
#: config.json ``model_type`` of layer-wise architectures, which transformers cannot express.
LAYERWISE_MODEL_TYPE = "bort"
#: Standard deviation of the normal initialisation (transformers' ``initializer_range``).
INITIALIZER_RANGE = 0.02
#: How the pooler's weight is named (after any base-model prefix such as ``bert.``).
POOLER_WEIGHT = "pooler.dense.weight"


def _check_int(name: str, value: Any, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigError(f"{name} must be an integer, got {value!r}")
    if value < minimum:
        raise ConfigError(f"{name} must be >= {minimum}, got {value}")


@dataclass(frozen=True)
class Layer:
    """One encoder layer: ``heads`` × ``head_dim`` attention and an FFN of width ``ffn``.

    ``heads == 0`` (attention removed) stores ``head_dim`` as 0, so equal layers compare equal.
    """

    heads: int
    head_dim: int
    ffn: int

    def __post_init__(self) -> None:
        for name in ("heads", "head_dim", "ffn"):
            _check_int(f"Layer.{name}", getattr(self, name), 0)
        if self.heads > 0 and self.head_dim == 0:
            raise ConfigError(f"a layer with {self.heads} heads needs head_dim > 0")
        if self.heads == 0:
            object.__setattr__(self, "head_dim", 0)

    @property
    def attn_width(self) -> int:
        """Width of the concatenated heads (Q/K/V output size)."""
        return self.heads * self.head_dim

    @property
    def is_empty(self) -> bool:
        """True when both sublayers are removed: the layer is the identity."""
        return self.heads == 0 and self.ffn == 0

    def attention_params(self, hidden: int) -> int:
        """Q, K, V and output projections with biases, and the attention LayerNorm."""
        if self.heads == 0:
            return 0
        a = self.attn_width
        return 3 * (hidden * a + a) + (a * hidden + hidden) + 2 * hidden

    def ffn_params(self, hidden: int) -> int:
        """The two FFN dense layers with biases, and the FFN LayerNorm."""
        if self.ffn == 0:
            return 0
        return (hidden * self.ffn + self.ffn) + (self.ffn * hidden + hidden) + 2 * hidden

    def params(self, hidden: int) -> int:
        return self.attention_params(hidden) + self.ffn_params(hidden)

    def flops(self, hidden: int, batch: int, seq_len: int) -> int:
        """Matrix-product FLOPs (a multiply-add counts 2) of this layer on batch × seq_len
        tokens."""
        tokens = batch * seq_len
        f = 0
        if self.heads > 0:
            a = self.attn_width
            f += 2 * tokens * hidden * 3 * a  # Q, K, V projections
            f += 2 * 2 * batch * self.heads * seq_len * seq_len * self.head_dim  # QK^T and PV
            f += 2 * tokens * a * hidden  # output projection
        if self.ffn > 0:
            f += 2 * 2 * tokens * hidden * self.ffn
        return f


@dataclass(frozen=True)
class ParamCount:
    """Exact parameter counts by part. ``total`` is their sum."""

    embeddings: int
    encoder: int
    pooler: int
    head: int

    @property
    def total(self) -> int:
        return self.embeddings + self.encoder + self.pooler + self.head

    def as_dict(self) -> dict[str, int]:
        return {**asdict(self), "total": self.total}


def _as_layer(item: Any) -> Layer:
    if isinstance(item, Layer):
        return item
    if isinstance(item, Mapping):
        return Layer(item["heads"], item["head_dim"], item["ffn"])
    if isinstance(item, (tuple, list)) and len(item) == 3:
        return Layer(*item)
    raise ConfigError("a layer is a Layer, a (heads, head_dim, ffn) triple or a mapping; "
                      f"got {item!r}")


@dataclass(frozen=True)
class Arch:
    """A BERT-family encoder: embeddings, a tuple of (possibly different) layers, pooler, head.

    Example:
        >>> from bort import Arch
        >>> bort_paper = Arch.uniform(4, 8, 768, 1024, vocab_size=50265, max_positions=514,
        ...                           type_vocab_size=1, position_style="roberta", pad_token_id=1)
        >>> bort_paper.params().total
        55351552
        >>> Arch(hidden=384, layers=[(12, 32, 1536), (0, 0, 768)]).params().encoder
        2366208
    """

    hidden: int
    layers: tuple[Layer, ...]
    vocab_size: int = 30522
    max_positions: int = 512
    type_vocab_size: int = 2
    activation: str = "gelu"
    layer_norm_eps: float = 1e-12
    position_style: str = "absolute"
    pad_token_id: int = 0
    pooler: bool = True
    num_labels: int = 0  # > 0: a sequence-classification head with that many outputs
    mlm_head: bool = False  # a masked-LM head (decoder tied to the word embeddings)
    dropout: float = 0.1
    attention_dropout: float = 0.1

    def __post_init__(self) -> None:
        if isinstance(self.layers, (str, bytes)) or not isinstance(self.layers, Iterable):
            raise ConfigError(f"layers must be a sequence of layers, got {self.layers!r}")
        object.__setattr__(self, "layers", tuple(_as_layer(x) for x in self.layers))
        _check_int("hidden", self.hidden, 1)
        _check_int("vocab_size", self.vocab_size, 1)
        _check_int("max_positions", self.max_positions, 1)
        _check_int("type_vocab_size", self.type_vocab_size, 1)
        _check_int("pad_token_id", self.pad_token_id, 0)
        _check_int("num_labels", self.num_labels, 0)
        if self.pad_token_id >= self.vocab_size:
            raise ConfigError(f"pad_token_id {self.pad_token_id} is outside the vocabulary "
                              f"of {self.vocab_size}")
        if self.activation not in ACTIVATIONS:
            raise ConfigError(f"unknown activation {self.activation!r}; "
                              f"bort implements {sorted(ACTIVATIONS)}")
        if self.position_style not in POSITION_STYLES:
            raise ConfigError(f"unknown position_style {self.position_style!r}; "
                              f"expected one of {POSITION_STYLES}")
        if self.position_style == "roberta" and self.max_positions <= self.pad_token_id + 1:
            raise ConfigError("RoBERTa positions start at pad_token_id + 1: "
                              f"max_positions {self.max_positions} leaves no room")
        if not (isinstance(self.layer_norm_eps, (int, float)) and self.layer_norm_eps > 0):
            raise ConfigError(f"layer_norm_eps must be positive, got {self.layer_norm_eps!r}")
        for name in ("dropout", "attention_dropout"):
            p = getattr(self, name)
            if not (isinstance(p, (int, float)) and 0 <= p < 1):
                raise ConfigError(f"{name} must be in [0, 1), got {p!r}")
        if self.num_labels > 0 and not self.pooler:
            raise ConfigError("a classification head reads the pooler: "
                              "num_labels > 0 needs pooler=True")

    # ------------------------------------------------------------------ construction
    @classmethod
    def uniform(cls, layers: int, heads: int, hidden: int, ffn: int, **kwargs: Any) -> Arch:
        """The common ⟨D, A, H, I⟩ architecture: ``layers`` equal layers of ``heads`` heads of
        size ``hidden / heads`` and FFN width ``ffn``. Other fields as keyword arguments.

        Example:
            >>> Arch.uniform(24, 16, 1024, 4096).params().total  # BERT-large
            335141888
        """
        for name, value, minimum in (("layers", layers, 0), ("heads", heads, 1),
                                     ("hidden", hidden, 1), ("ffn", ffn, 1)):
            _check_int(name, value, minimum)
        if hidden % heads:
            raise ConfigError(f"hidden {hidden} is not divisible by heads {heads}: "
                              "a uniform architecture needs hidden = heads × head_dim")
        return cls(hidden=hidden, layers=(Layer(heads, hidden // heads, ffn),) * layers, **kwargs)

    def with_layers(self, layers: Iterable[Any]) -> Arch:
        """The same architecture with other layers."""
        return replace(self, layers=tuple(layers))

    # ------------------------------------------------------------------ properties
    @property
    def is_uniform(self) -> bool:
        """True when transformers can express it: equal layers, no removed sublayer,
        and heads × head_dim == hidden."""
        if not self.layers:
            return False
        first = self.layers[0]
        return (first.heads > 0 and first.ffn > 0 and first.attn_width == self.hidden
                and all(layer == first for layer in self.layers))

    @property
    def depth(self) -> int:
        """Number of layers that do something (dropped layers not counted)."""
        return sum(not layer.is_empty for layer in self.layers)

    @property
    def family(self) -> str:
        """Hugging Face model type written for uniform archs: "bert" or "roberta"."""
        return "roberta" if self.position_style == "roberta" else "bert"

    @property
    def max_tokens(self) -> int:
        """The longest sequence the position table allows: RoBERTa's positions start after
        ``pad_token_id``, so it loses ``pad_token_id + 1`` of them."""
        offset = self.pad_token_id + 1 if self.position_style == "roberta" else 0
        return self.max_positions - offset

    def fit_to_weights(self, names: Iterable[str]) -> Arch:
        """This architecture with the pooler the weights ``names`` have (Hugging Face or bort
        tensor names): sentence-embedding exports often ship without one. A classification
        head reads the pooler, so an arch with one keeps it (loading then names what is
        missing)."""
        if self.num_labels:
            return self
        has_pooler = any(name.endswith(POOLER_WEIGHT) for name in names)
        return self if has_pooler == self.pooler else replace(self, pooler=has_pooler)

    def describe(self) -> str:
        """A one-line summary, e.g. ``⟨D=6, A=12, H=384, I=1536⟩`` for a uniform arch."""
        if self.is_uniform:
            first = self.layers[0]
            return f"⟨D={len(self.layers)}, A={first.heads}, H={self.hidden}, I={first.ffn}⟩"
        body = ", ".join(f"{layer.heads}x{layer.head_dim}/{layer.ffn}" for layer in self.layers)
        return f"layer-wise H={self.hidden} [heads x head_dim / ffn: {body}]"

    # ------------------------------------------------------------------ sizes
    def params(self) -> ParamCount:
        """Exact parameter counts: embeddings (word, position, token type, LayerNorm), encoder,
        pooler and classification head; equal to the ``numel()`` sum of the real model."""
        h = self.hidden
        return ParamCount(
            embeddings=(self.vocab_size + self.max_positions + self.type_vocab_size) * h + 2 * h,
            encoder=sum(layer.params(h) for layer in self.layers),
            pooler=h * h + h if self.pooler else 0,
            head=(h * self.num_labels + self.num_labels if self.num_labels else 0)
            + (h * h + h + 2 * h + self.vocab_size if self.mlm_head else 0),
        )

    def flops(self, batch: int = 1, seq_len: int = 128) -> int:
        """Matrix-product FLOPs (a multiply-add counts 2) of one forward pass on ``batch``
        sequences of ``seq_len`` real tokens: every projection, QK^T and PV, plus the pooler and
        head on the first token. Lookups, LayerNorm, softmax and GELU are not counted; this is the
        convention of torch's FlopCounterMode, which the tests check it against.
        """
        _check_int("batch", batch, 1)
        _check_int("seq_len", seq_len, 1)
        f = sum(layer.flops(self.hidden, batch, seq_len) for layer in self.layers)
        if self.pooler:
            f += 2 * batch * self.hidden * self.hidden
        if self.num_labels:
            f += 2 * batch * self.hidden * self.num_labels
        if self.mlm_head:  # transform and tied decoder, on every token
            f += 2 * batch * seq_len * self.hidden * (self.hidden + self.vocab_size)
        return f

    # ------------------------------------------------------------------ config.json
    @classmethod
    def from_pretrained(cls, directory: str | Path) -> Arch:
        """Read ``config.json`` of a Hugging Face BERT/RoBERTa directory or one bort wrote.

        Whether the pooler exists is read from the weights' tensor names when a safetensors
        file is present (sentence-embedding models often ship without one).
        """
        directory = Path(directory)
        config = read_config(directory)
        arch = cls.from_config(config, source=str(directory / "config.json"))
        names = safetensors_names(directory)
        if names is not None and "bort_pooler" not in config:
            arch = arch.fit_to_weights(names)
        return arch

    @classmethod
    def from_config(cls, config: Mapping[str, Any], source: str = "config") -> Arch:
        """Parse a config.json mapping (Hugging Face BERT/RoBERTa, or bort's layer-wise form)."""
        _check_encoder_config(config, source)
        get = _getter(config, source)
        hidden = get("hidden_size")
        if config.get("model_type") == LAYERWISE_MODEL_TYPE:
            layers = _layerwise_layers(get("layers"), source)
            position_style = get("position_style", "absolute")
        else:
            layers = _uniform_layers(config, get, source)
            position_style = FAMILIES[config["model_type"]]
        num_labels, pooler, mlm_head = _heads(config)
        pad = config.get("pad_token_id")
        default = {f.name: f.default for f in fields(cls)}  # also transformers' defaults
        return cls(
            hidden=hidden,
            layers=layers,
            vocab_size=get("vocab_size"),
            max_positions=get("max_position_embeddings"),
            type_vocab_size=get("type_vocab_size", default["type_vocab_size"]),
            activation=get("hidden_act", default["activation"]),
            layer_norm_eps=get("layer_norm_eps", default["layer_norm_eps"]),
            position_style=position_style,
            pad_token_id=default["pad_token_id"] if pad is None else pad,
            pooler=bool(config.get("bort_pooler", pooler)),
            num_labels=num_labels,
            mlm_head=mlm_head,
            dropout=get("hidden_dropout_prob", default["dropout"]),
            attention_dropout=get("attention_probs_dropout_prob", default["attention_dropout"]),
        )

    def to_config(self) -> dict[str, Any]:
        """config.json content: a standard Hugging Face config when uniform (transformers loads
        it unchanged), else bort's layer-wise form (``model_type: "bort"``, explicit layers)."""
        common = {
            "hidden_size": self.hidden,
            "vocab_size": self.vocab_size,
            "max_position_embeddings": self.max_positions,
            "type_vocab_size": self.type_vocab_size,
            "hidden_act": self.activation,
            "layer_norm_eps": self.layer_norm_eps,
            "pad_token_id": self.pad_token_id,
            "hidden_dropout_prob": self.dropout,
            "attention_probs_dropout_prob": self.attention_dropout,
            "initializer_range": INITIALIZER_RANGE,
        }
        if self.pooler != (self._head_name() != "ForMaskedLM"):  # not what transformers builds
            common["bort_pooler"] = self.pooler
        if self.is_uniform:
            first = self.layers[0]
            config = {
                "model_type": self.family,
                "architectures": [("Bert" if self.family == "bert" else "Roberta")
                                  + self._head_name()],
                "num_hidden_layers": len(self.layers),
                "num_attention_heads": first.heads,
                "intermediate_size": first.ffn,
                "position_embedding_type": "absolute",
                **common,
            }
        else:
            config = {
                "model_type": LAYERWISE_MODEL_TYPE,
                "architectures": ["Bort" + self._head_name()],
                "position_style": self.position_style,
                "layers": [asdict(layer) for layer in self.layers],
                **common,
            }
        if self.num_labels:
            config["num_labels"] = self.num_labels
            config["id2label"] = {str(i): f"LABEL_{i}" for i in range(self.num_labels)}
            config["label2id"] = {f"LABEL_{i}": i for i in range(self.num_labels)}
        return config

    def _head_name(self) -> str:
        if self.num_labels:
            return "ForSequenceClassification"
        return "ForMaskedLM" if self.mlm_head else "Model"

    def to_hf_config(self) -> dict[str, Any]:
        """The Hugging Face config.json of a uniform arch; raises ConfigError for layer-wise
        ones."""
        if not self.is_uniform:
            raise ConfigError("transformers cannot express this layer-wise architecture "
                              f"({self.describe()}); use to_config() for bort's own form")
        return self.to_config()

    def _to_core(self) -> Any:
        """The C++ mirror (``bort._core.Arch``), used by the search table and the encoder."""
        from . import _core

        return _core.Arch(
            hidden=self.hidden,
            layers=[_core.Layer(x.heads, x.head_dim, x.ffn) for x in self.layers],
            vocab_size=self.vocab_size,
            max_positions=self.max_positions,
            type_vocab_size=self.type_vocab_size,
            activation=getattr(_core.Activation, ACTIVATIONS[self.activation]),
            layer_norm_eps=float(self.layer_norm_eps),
            position_style=getattr(_core.PositionStyle, self.position_style),
            pad_token_id=self.pad_token_id,
            pooler=self.pooler,
            num_labels=self.num_labels,
            mlm_head=self.mlm_head,
        )


def _check_encoder_config(config: Mapping[str, Any], source: str) -> None:
    """Refuse configs of models that are not BERT-family encoders with absolute positions."""
    model_type = config.get("model_type")
    if model_type != LAYERWISE_MODEL_TYPE and model_type not in FAMILIES:
        raise ConfigError(f"{source}: model_type {model_type!r} is not a BERT-family encoder; "
                          f"bort reads {sorted(FAMILIES)} "
                          f"(and its own {LAYERWISE_MODEL_TYPE!r})")
    for flag in ("is_decoder", "add_cross_attention"):
        if config.get(flag):
            raise ConfigError(f"{source}: {flag}=true is a decoder; bort models encoders")
    pos_type = config.get("position_embedding_type", "absolute")
    if pos_type != "absolute":
        raise ConfigError(f"{source}: position_embedding_type {pos_type!r} is not supported "
                          "(bort implements absolute positions)")


def _getter(config: Mapping[str, Any], source: str) -> Callable[..., Any]:
    """``get(key, default=None)``: the config's value, else ``default``; a key without a
    default is required."""

    def get(key: str, default: Any = None) -> Any:
        if key in config:
            return config[key]
        if default is None:
            raise ConfigError(f"{source}: missing {key!r}")
        return default

    return get


def _layerwise_layers(raw: Any, source: str) -> tuple[Layer, ...]:
    """The ``layers`` list of bort's layer-wise config.json."""
    if not isinstance(raw, list):
        raise ConfigError(f"{source}: 'layers' must be a list of {{heads, head_dim, ffn}}")
    try:
        return tuple(_as_layer(x) for x in raw)
    except (KeyError, TypeError) as e:
        raise ConfigError(f"{source}: bad layer entry in 'layers': {e}") from None


def _uniform_layers(config: Mapping[str, Any], get: Callable[..., Any],
                    source: str) -> tuple[Layer, ...]:
    """The equal layers of a Hugging Face config."""
    hidden, heads, depth, ffn = (get("hidden_size"), get("num_attention_heads"),
                                 get("num_hidden_layers"), get("intermediate_size"))
    for name, value in (("num_attention_heads", heads), ("hidden_size", hidden)):
        _check_int(f"{source}: {name}", value, 1)
    _check_int(f"{source}: num_hidden_layers", depth, 0)
    _check_int(f"{source}: intermediate_size", ffn, 1)
    head_dim = config.get("head_dim") or hidden // heads
    if heads * head_dim != hidden:
        raise ConfigError(f"{source}: hidden_size {hidden} != num_attention_heads {heads} "
                          f"× head_dim {head_dim}")
    return (Layer(heads, head_dim, ffn),) * depth


def _heads(config: Mapping[str, Any]) -> tuple[int, bool, bool]:
    """(num_labels, pooler, mlm_head) as the config's ``architectures`` name them."""
    architectures = config.get("architectures") or ()
    mlm_head = any(a.endswith(("ForMaskedLM", "ForPreTraining")) for a in architectures)
    # transformers builds *ForMaskedLM without a pooler
    pooler = not any(a.endswith("ForMaskedLM") for a in architectures)
    num_labels = 0
    if any("ForSequenceClassification" in a for a in architectures):
        num_labels = len(config.get("id2label") or {}) or int(config.get("num_labels", 2))
    return num_labels, pooler, mlm_head


def read_config(directory: Path) -> dict[str, Any]:
    """config.json of a model directory, with errors that name the path."""
    if not directory.exists():
        raise FileNotFoundError(f"model directory not found: {directory}")
    if not directory.is_dir():
        raise NotADirectoryError(f"expected a model directory, got a file: {directory}")
    path = directory / "config.json"
    if not path.is_file():
        raise FileNotFoundError(f"no config.json in {directory}")
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ConfigError(f"{path}: not valid JSON ({e})") from None
    if not isinstance(config, dict):
        raise ConfigError(f"{path}: expected a JSON object")
    return config
