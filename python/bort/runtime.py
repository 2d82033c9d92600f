"""`bort.runtime`: serve a saved model on the CPU with bort's fused C++ encoder, without torch.

Needs only numpy, safetensors and tokenizers. Reads a directory that bort saved or a Hugging Face
BERT / RoBERTa directory as it is (``model.safetensors`` + ``config.json`` + ``tokenizer.json``).

Example:
    >>> from bort.runtime import Encoder
    >>> from bort.assets import default_source
    >>> encoder = Encoder.from_pretrained(default_source(), num_threads=1)
    >>> encoder.encode(["hello world", "a second sentence"], pooling="mean").shape
    (2, 384)
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from . import _core
from .arch import Arch, read_config
from .errors import BortError, WeightsError
from .tokenize import encode as tokenize
from .tokenize import load_tokenizer
from .weights import read_safetensors, safetensors_files, to_bort_names

__all__ = ["DTYPES", "Classifier", "Encoder", "Prediction"]

#: Precisions of the linear layers, as the C++ encoder names them (its one table).
DTYPES: tuple[str, ...] = tuple(_core.DTYPES)


def backend_name(dtype: str) -> str:
    """The kernels a ``dtype`` encoder runs on this CPU, e.g.
    ``"avx512, bf16 GEMM own-avx512bf16"``."""
    be = _core.backend()
    return f"{be['isa']}, {dtype} GEMM {be['gemm'][dtype]}"


def _default_threads() -> int:
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not Linux
        return max(1, os.cpu_count() or 1)


def _load_numpy(directory: Path) -> dict[str, np.ndarray]:
    files = safetensors_files(directory)
    if files is None:
        if (directory / "pytorch_model.bin").is_file():
            raise WeightsError(f"{directory} holds only pytorch_model.bin, which needs torch to "
                               "read; save it as safetensors first (bort.model.BortModel."
                               "from_pretrained(dir).save_pretrained(out))")
        raise FileNotFoundError(f"no weights in {directory} (model.safetensors or "
                                "model.safetensors.index.json)")
    return read_safetensors(files, "numpy")


class Encoder:
    """bort's fused C++ encoder over a saved model. Thread-safe: one instance may serve calls
    from several Python threads at once (the GIL is released while it computes).

    Args of `from_pretrained`:
        directory: the model directory.
        dtype: precision of the linear layers: "fp32"; "bf16" (fp32 accumulation; AMX or
            AVX512-BF16 where the CPU has them); "int8" (dynamic quantisation: weights per output
            channel, activations per token; the FFN's down projection, whose GELU inputs 8 bits
            resolve badly, runs in bf16). Attention's products run in bf16 for bf16 and int8
            models where the CPU has AVX512-BF16, in fp32 otherwise; softmax, LayerNorm and GELU
            in fp32. `backend` names the kernels that run.
        num_threads: threads of this encoder's own pool (default: the CPUs this process may
            use); torch's and numpy's settings are left alone.
    """

    def __init__(self, arch: Arch, weights: dict[str, np.ndarray], *,
                 num_threads: int | None = None,
                 dtype: str = "fp32", tokenizer=None, directory: Path | None = None):
        if dtype not in DTYPES:
            raise BortError(f"dtype {dtype!r} is not available; bort.runtime implements {DTYPES}")
        threads = _default_threads() if num_threads is None else num_threads
        if isinstance(threads, bool) or not isinstance(threads, int) or threads < 1:
            raise ValueError(f"num_threads must be a positive integer, got {num_threads!r}")
        state = to_bort_names(weights)
        arch = arch.fit_to_weights(state)  # e.g. sentence-embedding exports without a pooler
        try:
            self._core = _core.Encoder(arch._to_core(), state, threads, dtype)
        except ValueError as e:
            raise WeightsError(f"{directory or 'weights'}: {e}") from None
        self.arch, self.dtype, self.num_threads = arch, dtype, threads
        self.directory = directory
        self.max_length = arch.max_tokens  # what the tokenizer truncates to
        self._tokenizer = tokenizer

    @property
    def backend(self) -> str:
        """What runs this encoder here: the ISA and whose GEMM its dtype gets, e.g.
        ``"avx512, int8 GEMM own-avx512vnni"`` (bort's microkernels, chosen by CPUID features;
        ``BORT_ISA`` / ``BORT_GEMM`` force a lower ISA or MKL)."""
        return backend_name(self.dtype)

    @classmethod
    def from_pretrained(cls, directory: str | Path, *, dtype: str = "fp32",
                        num_threads: int | None = None, max_length: int | None = None):
        directory = Path(directory)
        config = read_config(directory)
        arch = Arch.from_config(config, source=str(directory / "config.json"))
        model = cls(arch, _load_numpy(directory), num_threads=num_threads, dtype=dtype,
                    directory=directory)
        model._config = config
        model.max_length = max_length or model.arch.max_tokens
        return model

    @property
    def tokenizer(self):
        """The model directory's `tokenizers.Tokenizer` (loaded on first use)."""
        if self._tokenizer is None:
            if self.directory is None:
                raise BortError("this encoder has no tokenizer: pass token ids, or load it with "
                                "from_pretrained from a directory holding tokenizer.json")
            self._tokenizer = load_tokenizer(self.directory, self.max_length)
        return self._tokenizer

    def forward(self, input_ids, attention_mask=None, token_type_ids=None) -> dict[str, np.ndarray]:
        """All outputs: ``last_hidden_state`` (B, S, H), and ``pooler_output`` / ``logits`` when
        the model has them. Padding positions of ``last_hidden_state`` are 0."""
        return self._core.forward(input_ids, attention_mask, token_type_ids)

    def __call__(self, input_ids, attention_mask=None, token_type_ids=None) -> np.ndarray:
        """``last_hidden_state`` (B, S, H) float32, as transformers' BertModel computes it at every
        real token (padding positions are 0)."""
        return self.forward(input_ids, attention_mask, token_type_ids)["last_hidden_state"]

    def sublayer_ms(self, input_ids, attention_mask=None, token_type_ids=None) -> list[float]:
        """Milliseconds of each stage of one forward pass: embeddings, then attention and FFN of
        every layer, then pooler/head. Feeds the search's latency table."""
        out = self._core.forward(input_ids, attention_mask, token_type_ids, timed=True)
        return out["sublayer_ms"]

    def _batches(self, texts: Sequence[str], pairs: Sequence[str] | None, batch_size: int):
        if isinstance(texts, str):
            raise TypeError("texts must be a list of strings, not one string")
        if pairs is not None and len(pairs) != len(texts):
            raise ValueError(f"{len(texts)} texts but {len(pairs)} pairs")
        for start in range(0, len(texts), batch_size):
            yield tokenize(self.tokenizer, texts[start:start + batch_size],
                           None if pairs is None else pairs[start:start + batch_size])

    def encode(self, texts: Sequence[str], pairs: Sequence[str] | None = None, *,
               pooling: str = "cls", normalize: bool = False, batch_size: int = 32) -> np.ndarray:
        """One vector per text (N, H): the first token's ("cls") or the mean over tokens
        ("mean", what sentence-transformers models use); ``normalize`` scales to unit length."""
        if pooling not in ("cls", "mean"):
            raise ValueError(f"pooling must be 'cls' or 'mean', got {pooling!r}")
        if len(texts) == 0:
            return np.zeros((0, self.arch.hidden), dtype=np.float32)
        out = []
        for batch in self._batches(texts, pairs, batch_size):
            hidden = self(**batch)
            if pooling == "cls":
                out.append(hidden[:, 0])
            else:
                mask = batch["attention_mask"][..., None].astype(np.float32)
                out.append((hidden * mask).sum(1) / np.maximum(mask.sum(1), 1.0))
        vectors = np.concatenate(out)
        if normalize:
            vectors /= np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)
        return vectors


@dataclass
class Prediction:
    """``labels`` (names), ``probabilities`` (N, classes) for classification; for regression
    ``values`` (N,) and no labels."""

    labels: list[str] | None
    probabilities: np.ndarray | None
    values: np.ndarray | None = None


class Classifier(Encoder):
    """A sequence classifier saved by bort's fine-tuning (or transformers'
    BertForSequenceClassification): first token → pooler → classifier.

    Example:
        >>> clf = Classifier.from_pretrained("runs/demo/student")      # doctest: +SKIP
        >>> clf.predict(["a gripping, beautiful film"]).labels         # doctest: +SKIP
        ['positive']
    """

    @classmethod
    def from_pretrained(cls, directory: str | Path, **kwargs) -> Classifier:
        model = super().from_pretrained(directory, **kwargs)
        if not model.arch.num_labels:
            raise BortError(f"{directory} has no classification head (config.json's architectures "
                            "name no *ForSequenceClassification); use bort.runtime.Encoder")
        labels = model._config.get("id2label") or {}
        model.id2label = {int(k): v for k, v in labels.items()} or {
            i: f"LABEL_{i}" for i in range(model.arch.num_labels)}
        model.problem_type = model._config.get("problem_type")
        return model

    def logits(self, texts: Sequence[str], pairs: Sequence[str] | None = None, *,
               batch_size: int = 32) -> np.ndarray:
        if len(texts) == 0:
            raise ValueError("empty batch: no texts to classify")
        return np.concatenate([self.forward(**b)["logits"]
                               for b in self._batches(texts, pairs, batch_size)])

    def predict(self, texts: Sequence[str], pairs: Sequence[str] | None = None, *,
                batch_size: int = 32) -> Prediction:
        logits = self.logits(texts, pairs, batch_size=batch_size)
        if self.problem_type == "regression" or self.arch.num_labels == 1:
            return Prediction(None, None, logits[:, 0])
        if self.problem_type == "multi_label_classification":
            probs = 1.0 / (1.0 + np.exp(-logits))
        else:
            z = np.exp(logits - logits.max(axis=1, keepdims=True))
            probs = z / z.sum(axis=1, keepdims=True)
        return Prediction([self.id2label[int(i)] for i in probs.argmax(axis=1)], probs)
