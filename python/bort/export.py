"""ONNX export of any bort model (encoder or classifier): one file, dynamic batch and length.

Inputs ``input_ids``, ``attention_mask``, ``token_type_ids`` (int64, batch × seq); outputs
``last_hidden_state`` and, with a classification head, ``logits``. Uses torch's own exporter
(``torch.export`` → ONNX, opset ≥ 17).

Example:
    >>> from bort.model import BortModel                       # doctest: +SKIP
    >>> export_onnx(BortModel.from_pretrained(d), "model.onnx")  # doctest: +SKIP
"""

from __future__ import annotations

import contextlib
import io
import logging
import warnings
from pathlib import Path

import torch
from torch import nn

from .model import BortModel

__all__ = ["INPUT_NAMES", "export_onnx"]

INPUT_NAMES = ("input_ids", "attention_mask", "token_type_ids")
#: Shape of the example batch the exporter traces (both axes stay dynamic in the graph).
_EXAMPLE_BATCH, _EXAMPLE_TOKENS = 2, 8


class _Graph(nn.Module):
    """Positional inputs and plain tensor outputs, as ONNX wants them."""

    def __init__(self, model: BortModel):
        super().__init__()
        self.model = model

    def forward(self, input_ids, attention_mask, token_type_ids):
        out = self.model(input_ids, attention_mask, token_type_ids)
        return (out.last_hidden_state,) if out.logits is None else (out.last_hidden_state,
                                                                    out.logits)


def export_onnx(model: BortModel, path: str | Path, *, opset: int = 18) -> Path:
    """Write ``model`` (in eval mode, fp32) to ``path`` as one ONNX file and return the path."""
    if not isinstance(model, BortModel):
        raise TypeError(f"export_onnx needs a bort.model.BortModel, got {type(model).__name__}")
    if opset < 17:
        raise ValueError(f"opset must be >= 17, got {opset}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    was_training = model.training
    graph = _Graph(model).eval()
    shape = (_EXAMPLE_BATCH, min(model.arch.max_tokens, _EXAMPLE_TOKENS))
    example = (torch.full(shape, model.arch.pad_token_id + 1, dtype=torch.long),
               torch.ones(shape, dtype=torch.long), torch.zeros(shape, dtype=torch.long))
    batch, seq = torch.export.Dim("batch"), torch.export.Dim("seq")
    outputs = ["last_hidden_state"] + (["logits"] if model.arch.num_labels else [])
    log = logging.getLogger("torch.onnx")
    level = log.level
    try:
        # the exporter reports progress on stdout, notes in its log, deprecations as warnings
        log.setLevel(logging.ERROR)
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")
            torch.onnx.export(graph, example, str(path), input_names=list(INPUT_NAMES),
                              output_names=outputs, opset_version=opset, dynamo=True,
                              external_data=False,
                              dynamic_shapes={name: {0: batch, 1: seq} for name in INPUT_NAMES})
    finally:
        log.setLevel(level)
        model.train(was_training)
    return path
