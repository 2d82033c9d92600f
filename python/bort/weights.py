"""Tensor names and weight files shared by the torch model and the torch-free runtime.

bort's names are those of transformers' `BertModel` (``embeddings.word_embeddings.weight``,
``encoder.layer.0.attention.self.query.weight``, ...) plus ``classifier.*`` for the head.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Mapping, TypeVar

from .errors import WeightsError

__all__ = ["IGNORED_PREFIXES", "safetensors_files", "safetensors_names", "to_bort_names"]

T = TypeVar("T")

#: Tensors of Hugging Face checkpoints that are not part of the encoder and are skipped:
#: the position-id buffer of old checkpoints and pre-training heads (MLM / next sentence).
IGNORED_PREFIXES = ("embeddings.position_ids", "cls.", "lm_head.")


def to_bort_names(state: Mapping[str, T]) -> dict[str, T]:
    """Hugging Face names → bort's: strip the base-model prefix, skip pre-training heads and
    buffers, and read a RoBERTa classification head (dense + tanh, out_proj) as pooler + classifier.
    """
    out: dict[str, T] = {}
    for name, tensor in state.items():
        for prefix in ("bert.", "roberta.", "model."):
            if name.startswith(prefix):
                name = name[len(prefix):]
                break
        if name.startswith(IGNORED_PREFIXES):
            continue
        name = (name.replace("classifier.dense.", "pooler.dense.")
                    .replace("classifier.out_proj.", "classifier."))
        out[name] = tensor
    return out


def safetensors_files(directory: Path) -> list[Path] | None:
    """The safetensors files of a model directory (one, or the shards of an index); None if it
    has none."""
    single, index = directory / "model.safetensors", directory / "model.safetensors.index.json"
    if single.is_file():
        return [single]
    if not index.is_file():
        return None
    try:
        shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
    except (json.JSONDecodeError, KeyError, TypeError, AttributeError) as e:
        raise WeightsError(f"{index}: bad safetensors index ({e})") from None
    files = [directory / shard for shard in shards]
    for path in files:
        if not path.is_file():
            raise FileNotFoundError(f"weights shard missing: {path}")
    return files


def safetensors_names(directory: Path) -> list[str] | None:
    """Tensor names of the directory's safetensors weights, read from the file headers only;
    None when the directory has none."""
    from safetensors import safe_open

    files = safetensors_files(directory)
    if files is None:
        return None
    names: list[str] = []
    for path in files:
        try:
            with safe_open(str(path), framework="numpy") as f:
                names += f.keys()
        except Exception as e:  # safetensors raises its own error types for corrupt headers
            raise WeightsError(f"{path}: unreadable safetensors file ({e})") from None
    return names
