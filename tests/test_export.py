"""ONNX export: one file, dynamic shapes, parity with torch and with bort.runtime."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import randomize
from test_runtime import random_batch

from bort import Arch
from bort.export import export_onnx
from bort.model import BortModel
from bort.runtime import Encoder

TOL = 1e-4


def run_onnx(path, ids, mask, types):
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(None, {"input_ids": ids, "attention_mask": mask, "token_type_ids": types})


def test_minilm_export_matches_torch_and_runtime(minilm_dir, tmp_path) -> None:
    out = subprocess.run([str(Path(sys.executable).with_name("bort")), "export", str(minilm_dir),
                          "--out", str(tmp_path / "minilm.onnx")], capture_output=True, text=True,
                         timeout=300)
    assert out.returncode == 0, out.stderr
    assert "wrote" in out.stdout and not list(tmp_path.glob("*.data"))  # one file
    model = BortModel.from_pretrained(minilm_dir).eval()
    for lengths in ([1], [5, 64, 17]):  # other batch sizes and lengths than the example's
        ids, mask, types = random_batch(30522, lengths)
        (onnx_out,) = run_onnx(tmp_path / "minilm.onnx", ids, mask, types)
        with torch.no_grad():
            ref = model(torch.from_numpy(ids), torch.from_numpy(mask),
                        torch.from_numpy(types)).last_hidden_state.numpy()
        valid = mask.astype(bool)
        assert np.abs(onnx_out - ref)[valid].max() <= TOL
        ours = Encoder.from_pretrained(minilm_dir)(ids, mask, types)
        assert np.abs(onnx_out - ours)[valid].max() <= TOL


def test_layerwise_classifier_export(tmp_path) -> None:
    arch = Arch(hidden=32, layers=[(2, 16, 40), (0, 0, 24), (4, 8, 0)], vocab_size=90,
                max_positions=40, num_labels=3, position_style="roberta", pad_token_id=1,
                type_vocab_size=1)
    model = BortModel(arch).eval()
    randomize(model, seed=3)
    export_onnx(model, tmp_path / "m.onnx")
    ids, mask, types = random_batch(90, [9, 30], pad=1, types=1)
    hidden, logits = run_onnx(tmp_path / "m.onnx", ids, mask, types)
    with torch.no_grad():
        ref = model(torch.from_numpy(ids), torch.from_numpy(mask), torch.from_numpy(types))
    assert np.abs(hidden - ref.last_hidden_state.numpy())[mask.astype(bool)].max() <= TOL
    assert np.abs(logits - ref.logits.numpy()).max() <= TOL
    assert model.training is False


def test_export_rejects_bad_input(tmp_path) -> None:
    with pytest.raises(TypeError, match="BortModel"):
        export_onnx(torch.nn.Linear(2, 2), tmp_path / "x.onnx")
    with pytest.raises(ValueError, match="opset must be"):
        export_onnx(BortModel(Arch.uniform(1, 2, 8, 8, vocab_size=20, max_positions=16)),
                    tmp_path / "x.onnx", opset=11)
