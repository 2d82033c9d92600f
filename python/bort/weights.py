"""Tensor names and weight files shared by the torch model and the torch-free runtime.

bort's names are those of transformers' `BertModel` (``embeddings.word_embeddings.weight``,
``encoder.layer.0.attention.self.query.weight``, ...) plus ``classifier.*`` for the head.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import TypeVar

from .errors import WeightsError

__all__ = ["IGNORED_PREFIXES", "read_safetensors", "safetensors_files", "safetensors_names",
           "to_bort_names", "to_roberta_head_name"]

T = TypeVar("T")

#: Tensors of Hugging Face checkpoints that bort does not keep: the position-id buffer of old
#: checkpoints, the next-sentence head, and MLM decoders (tied to the word embeddings).
IGNORED_PREFIXES = ("embeddings.position_ids", "cls.seq_relationship.", "cls.predictions.decoder.",
                    "lm_head.decoder.")
#: RoBERTa's names for the parts of heads that BERT names otherwise.
_ROBERTA_HEADS = {"classifier.dense.": "pooler.dense.", "classifier.out_proj.": "classifier.",
                  "lm_head.dense.": "cls.predictions.transform.dense.",
                  "lm_head.layer_norm.": "cls.predictions.transform.LayerNorm.",
                  "lm_head.bias": "cls.predictions.bias"}


def to_bort_names(state: Mapping[str, T]) -> dict[str, T]:
    """Hugging Face names → bort's: strip the base-model prefix, skip what bort does not keep,
    and read RoBERTa's heads (classification: dense + tanh, out_proj; MLM: lm_head) under BERT's
    names (pooler + classifier; cls.predictions)."""
    out: dict[str, T] = {}
    for name, tensor in state.items():
        for prefix in ("bert.", "roberta.", "model."):
            if name.startswith(prefix):
                name = name[len(prefix):]
                break
        if name.startswith(IGNORED_PREFIXES):
            continue
        for roberta, bert in _ROBERTA_HEADS.items():
            if name.startswith(roberta):
                name = bert + name[len(roberta):]
                break
        out[name] = tensor
    return out


def to_roberta_head_name(name: str) -> str:
    """The inverse of the head renaming of `to_bort_names`, for saving RoBERTa models."""
    for roberta, bert in _ROBERTA_HEADS.items():
        if name.startswith(bert):
            return roberta + name[len(bert):]
    return name


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


def read_safetensors(files: list[Path], framework: str = "numpy") -> dict:
    """All tensors of the files, as numpy arrays ("numpy") or torch tensors ("pt"); a corrupt or
    truncated file raises WeightsError naming it."""
    if framework == "pt":
        from safetensors.torch import load_file
    else:
        from safetensors.numpy import load_file
    state: dict = {}
    for path in files:
        try:
            state.update(load_file(str(path)))
        except Exception as e:  # safetensors raises its own error types for corrupt files
            raise WeightsError(f"{path}: unreadable safetensors file ({e})") from None
    return state
