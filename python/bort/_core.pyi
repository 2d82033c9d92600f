"""Type stub of bort's C++ core (csrc/bindings.cpp). Private: use the bort package."""

from enum import Enum

__version__: str
#: The encoder's dtypes ("fp32", "bf16", "int8"), from its one table.
DTYPES: tuple[str, ...]

class Activation(Enum):
    gelu_erf = ...
    gelu_tanh = ...
    relu = ...

class PositionStyle(Enum):
    absolute = ...
    roberta = ...

class Layer:
    heads: int
    head_dim: int
    ffn: int
    def __init__(self, heads: int, head_dim: int, ffn: int) -> None: ...
    def params(self, hidden: int) -> int: ...
    def flops(self, hidden: int, batch: int, seq_len: int) -> int: ...

class Params:
    embeddings: int
    encoder: int
    pooler: int
    head: int
    @property
    def total(self) -> int: ...

class Arch:
    hidden: int
    layers: list[Layer]
    def __init__(self, *, hidden: int, layers: list[Layer], vocab_size: int, max_positions: int,
                 type_vocab_size: int, activation: Activation, layer_norm_eps: float,
                 position_style: PositionStyle, pad_token_id: int, pooler: bool,
                 num_labels: int, mlm_head: bool = False) -> None: ...
    def params(self) -> Params: ...
    def flops(self, batch: int, seq_len: int) -> int: ...
