"""The model's own tokenizer (Hugging Face `tokenizers`, torch-free) and padded numpy batches."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from .errors import BortError

__all__ = ["encode", "load_tokenizer"]


def load_tokenizer(directory: str | Path, max_length: int = 512):
    """The ``tokenizer.json`` of a model directory, truncating to ``max_length`` tokens."""
    from tokenizers import Tokenizer

    path = Path(directory) / "tokenizer.json"
    if not path.is_file():
        raise FileNotFoundError(f"no tokenizer.json in {directory}; bort reads tokenizers saved "
                                "in the Hugging Face `tokenizers` format")
    try:
        tokenizer = Tokenizer.from_file(str(path))
    except Exception as e:  # tokenizers raises a bare Exception on bad files
        raise BortError(f"{path}: unreadable tokenizer ({e})") from None
    tokenizer.enable_truncation(max_length)
    # Pad to the longest sequence of each batch (saved tokenizers often pad to a fixed length).
    padding = tokenizer.padding or {}
    pad_token = padding.get("pad_token") or next(
        (t for t in ("[PAD]", "<pad>") if tokenizer.token_to_id(t) is not None), "[PAD]")
    pad_id = padding.get("pad_id", tokenizer.token_to_id(pad_token) or 0)
    tokenizer.enable_padding(pad_id=pad_id, pad_token=pad_token)
    return tokenizer


def encode(tokenizer, texts: Sequence[str],
           pairs: Sequence[str] | None = None) -> dict[str, np.ndarray]:
    """``input_ids``, ``attention_mask`` and ``token_type_ids`` (int64, batch × longest), padded
    with the tokenizer's pad id (0 when it names none)."""
    if isinstance(texts, str):
        raise TypeError("texts must be a sequence of strings, not one string")
    if len(texts) == 0:
        raise ValueError("empty batch: no texts to encode")
    if pairs is not None and len(pairs) != len(texts):
        raise ValueError(f"{len(texts)} texts but {len(pairs)} pairs")
    inputs = list(zip(texts, pairs)) if pairs is not None else list(texts)
    encodings = tokenizer.encode_batch(inputs)
    pad = tokenizer.padding["pad_id"] if tokenizer.padding else 0
    width = max(len(e.ids) for e in encodings)
    out = {name: np.zeros((len(encodings), width), dtype=np.int64)
           for name in ("input_ids", "attention_mask", "token_type_ids")}
    out["input_ids"].fill(pad)
    for i, e in enumerate(encodings):
        n = len(e.ids)
        out["input_ids"][i, :n] = e.ids
        out["attention_mask"][i, :n] = e.attention_mask
        out["token_type_ids"][i, :n] = e.type_ids
    return out
