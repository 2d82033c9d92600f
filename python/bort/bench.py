"""Latency harness: one model under several runtimes, timed side by side in one process.

Runtimes (`RUNTIMES`; those whose packages are missing are skipped with a note):
    torch-fp32, torch-bf16 (autocast), ort-fp32 (plain export), ort-opt-fp32 (ONNX Runtime's
    transformer optimizer), ort-int8 (dynamic quantisation), ov-fp32, ov-bf16 (OpenVINO),
    bort-<dtype> for each dtype of `bort.runtime.DTYPES` (fp32, bf16, int8).

Each entry of `RUNTIMES` is a builder: it takes a `Target` (the model, its ONNX export, the
thread count) and returns a callable that runs one batch, or raises `Skip` with the note to
print. Every runtime sees the same padded batch (token ids, mask); bort skips the padding
itself. Timings are interleaved (`bort.timing.interleaved_ms`: one call of each runtime per
round) so that machine noise hits all of them alike; the result is the median over rounds, in
milliseconds.
"""

from __future__ import annotations

import gc
from collections.abc import Callable
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np

from .config import BenchConfig
from .registry import Registry
from .runtime import DTYPES
from .timing import interleaved_ms

__all__ = ["RUNTIMES", "Inputs", "Skip", "Target", "make_inputs", "markdown", "plot",
           "run_matrix"]

#: A model at least this many FLOPs per sequence of 128 tokens times the batch is timed over
#: `HEAVY_ROUNDS` rounds only (BERT-large at batch 8 would take minutes per round set).
HEAVY_FLOPS = 2e11
HEAVY_ROUNDS = 5
#: A set of rounds stops early past this many seconds, once this many rounds are done.
BUDGET_S = 60.0
MIN_ROUNDS = 3
#: Token ids are drawn below this (and below the vocabulary size): the shared range of the
#: vocabularies benchmarked, clear of special tokens at the bottom (`make_inputs`' ``low``).
MAX_TOKEN_ID = 30000


@dataclass
class Inputs:
    """A padded batch: int64 (B, S) arrays."""

    input_ids: np.ndarray
    attention_mask: np.ndarray
    token_type_ids: np.ndarray

    def feed(self) -> dict[str, np.ndarray]:
        return {"input_ids": self.input_ids, "attention_mask": self.attention_mask,
                "token_type_ids": self.token_type_ids}


def make_inputs(lengths: list[int], vocab: int, seed: int = 0, low: int = 5) -> Inputs:
    """Random ids for sequences of the given lengths, padded to the longest (pad id 0 after
    each sequence; the ids stay clear of special tokens)."""
    rng = np.random.default_rng(seed)
    s = max(lengths)
    ids = rng.integers(low, vocab, (len(lengths), s))
    mask = np.zeros((len(lengths), s), dtype=np.int64)
    for i, n in enumerate(lengths):
        mask[i, :n] = 1
        ids[i, n:] = 0
    return Inputs(ids.astype(np.int64), mask, np.zeros_like(mask))


# ---------------------------------------------------------------------- the runtimes
class Skip(Exception):
    """A runtime that cannot run here (a package missing, a graph its optimizer rejects); the
    message is the note the bench prints."""


@dataclass
class Target:
    """What a runtime builder gets: a saved model, its ONNX export, the thread count, and a
    directory for derived files (optimised or quantised graphs). The torch model is loaded
    once for all the torch runtimes."""

    model_dir: Path
    onnx: Path
    threads: int
    workdir: Path

    @cached_property
    def arch(self) -> Any:
        from .arch import Arch

        return Arch.from_pretrained(self.model_dir)

    @cached_property
    def torch_model(self) -> Any:
        import torch

        from .model import BortModel

        torch.set_num_threads(self.threads)
        return BortModel.from_pretrained(self.model_dir).eval()


Runner = Callable[[Inputs], object]
#: Bench runtimes by name: each a builder ``(Target) -> runner`` that may raise `Skip`.
RUNTIMES: Registry[Callable[[Target], Runner]] = Registry("bench runtime")


def _torch(bf16: bool) -> Callable[[Target], Runner]:
    def build(target: Target) -> Runner:
        import torch

        model = target.torch_model

        def run(x: Inputs):
            t = {k: torch.from_numpy(v) for k, v in x.feed().items()}
            with torch.inference_mode(), torch.autocast("cpu", torch.bfloat16, enabled=bf16):
                return model(t["input_ids"], t["attention_mask"], t["token_type_ids"])

        return run
    return build


RUNTIMES.register("torch-fp32", _torch(bf16=False))
RUNTIMES.register("torch-bf16", _torch(bf16=True))


def _onnxruntime() -> Any:
    try:
        import onnxruntime
    except ImportError:
        raise Skip("onnxruntime missing: ort-* skipped") from None
    return onnxruntime


def _ort_session(path: Path, threads: int) -> Runner:
    ort = _onnxruntime()
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    # idle workers must not spin: they would steal the core from the next runtime
    so.add_session_config_entry("session.intra_op.allow_spinning", "0")
    session = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
    return lambda x: session.run(None, x.feed())


@RUNTIMES.register("ort-fp32")
def _ort_fp32(target: Target) -> Runner:
    return _ort_session(target.onnx, target.threads)


@RUNTIMES.register("ort-opt-fp32")
def _ort_optimized(target: Target) -> Runner:
    _onnxruntime()
    path = target.workdir / f"{target.onnx.stem}.opt.onnx"
    try:
        from onnxruntime.transformers.optimizer import optimize_model

        opt = optimize_model(str(target.onnx), model_type="bert",
                             num_heads=target.arch.layers[0].heads, hidden_size=target.arch.hidden)
        opt.save_model_to_file(str(path))
    except Exception as e:  # the optimizer fails on graphs it does not know
        raise Skip(f"ort-opt-fp32 skipped: {type(e).__name__}: {e}") from None
    return _ort_session(path, target.threads)


@RUNTIMES.register("ort-int8")
def _ort_int8(target: Target) -> Runner:
    _onnxruntime()
    from onnxruntime.quantization import QuantType, quantize_dynamic

    path = target.workdir / f"{target.onnx.stem}.int8.onnx"
    if not path.exists():
        quantize_dynamic(str(target.onnx), str(path), weight_type=QuantType.QInt8)
    return _ort_session(path, target.threads)


def _openvino(precision: str) -> Callable[[Target], Runner]:
    def build(target: Target) -> Runner:
        try:
            import openvino as ov
        except ImportError:
            raise Skip("openvino missing: ov-* skipped (pip install 'bort[bench]')") from None
        compiled = ov.Core().compile_model(str(target.onnx), "CPU", {
            "INFERENCE_NUM_THREADS": target.threads, "INFERENCE_PRECISION_HINT": precision,
            "PERFORMANCE_HINT": "LATENCY"})
        request = compiled.create_infer_request()
        return lambda x: request.infer(x.feed())
    return build


RUNTIMES.register("ov-fp32", _openvino("f32"))
RUNTIMES.register("ov-bf16", _openvino("bf16"))


def _bort(dtype: str) -> Callable[[Target], Runner]:
    def build(target: Target) -> Runner:
        from .runtime import Encoder

        try:
            encoder = Encoder.from_pretrained(target.model_dir, dtype=dtype,
                                              num_threads=target.threads)
        except Exception as e:  # a dtype this CPU or build lacks
            raise Skip(f"bort-{dtype} skipped: {e}") from None
        return lambda x: encoder.forward(x.input_ids, x.attention_mask, x.token_type_ids)
    return build


for _dtype in DTYPES:
    RUNTIMES.register(f"bort-{_dtype}", _bort(_dtype))


def _build(target: Target, runtimes: list[str], notes: list[str]) -> dict[str, Runner]:
    """A runner per runtime that can run here; a note for each one skipped."""
    runners: dict[str, Runner] = {}
    for name in runtimes:
        try:
            runners[name] = RUNTIMES[name](target)
        except Skip as skip:
            notes.append(str(skip))
    return runners


# ---------------------------------------------------------------------- the matrix
def run_matrix(dirs: dict[str, Path], onnx: dict[str, Path], config: BenchConfig,
               workdir: Path) -> tuple[list[dict], list[str]]:
    """Time every (model, threads, shape) of ``config`` under each of its runtimes; prints a
    line per measurement. Returns rows {model, shape, threads, runtime, ms, gflops_per_s} and
    notes on skipped runtimes."""
    rows: list[dict] = []
    notes: list[str] = []
    for name, directory in dirs.items():
        for threads in config.threads:
            runners = target = None  # free the last sessions first: two BERT-large do not fit
            gc.collect()
            target = Target(Path(directory), Path(onnx[name]), threads, Path(workdir))
            runners = _build(target, config.runtimes, notes)
            for shape, lengths in config.shapes().items():
                rows += _time_shape(name, target, runners, shape, lengths, config.rounds)
    return rows, sorted(set(notes))


def _time_shape(model: str, target: Target, runners: dict[str, Runner], shape: str,
                lengths: list[int], rounds: int) -> list[dict]:
    """The rows of one shape: median ms of every runner on the same padded batch."""
    arch = target.arch
    inputs = make_inputs(lengths, min(arch.vocab_size, MAX_TOKEN_ID))
    heavy = arch.flops(1, 128) * len(lengths) >= HEAVY_FLOPS
    ms = interleaved_ms({name: (lambda run=run: run(inputs)) for name, run in runners.items()},
                        rounds=HEAVY_ROUNDS if heavy else rounds,
                        min_rounds=min(rounds, MIN_ROUNDS), budget_s=BUDGET_S)
    real_flops = sum(arch.flops(1, n) for n in lengths)
    line = "  ".join(f"{r} {t:.2f}" for r, t in ms.items())
    print(f"{model:13s} {shape:8s} {target.threads}T  {line}", flush=True)
    return [{"model": model, "shape": shape, "threads": target.threads, "runtime": runtime,
             "ms": t, "gflops_per_s": real_flops / t / 1e6} for runtime, t in ms.items()]


#: bort's speed-up columns: (bort runtime, the runtimes it is compared with, best of them)
COMPARISONS = (("bort-fp32", ("ort-fp32", "ort-opt-fp32")), ("bort-fp32", ("ov-fp32",)),
               ("bort-fp32", ("torch-fp32",)), ("bort-bf16", ("ov-bf16",)),
               ("bort-bf16", ("torch-bf16",)), ("bort-int8", ("ort-int8",)))


def machine_line() -> str:
    """What every timing table names: the CPU, its ISA features and the kernels bort ran."""
    from . import _core
    from .timing import cpu_summary

    return f"CPU: {cpu_summary()}; bort's kernels: {_core.backend()['description']}"


def markdown(rows: list[dict]) -> str:
    """The machine line, then per model: milliseconds per runtime, then bort's speed-up over
    each competitor of the same precision (> 1: bort is faster; "ort fp32" is the better of
    plain and optimised)."""
    out = [machine_line(), ""]
    for model in dict.fromkeys(r["model"] for r in rows):
        mine = [r for r in rows if r["model"] == model]
        runtimes = list(dict.fromkeys(r["runtime"] for r in mine))
        pairs = [(b, others) for b, others in COMPARISONS
                 if b in runtimes and any(o in runtimes for o in others)]
        heads = [f"{b.split('-')[1]} vs {'/'.join(others)}" for b, others in pairs]
        out += [f"### {model} — median ms, and bort's speed-up", "",
                "| shape | threads | " + " | ".join(runtimes + heads) + " |",
                "|---|---|" + "---|" * (len(runtimes) + len(heads))]
        for key in dict.fromkeys((r["shape"], r["threads"]) for r in mine):
            ms = {r["runtime"]: r["ms"] for r in mine if (r["shape"], r["threads"]) == key}
            cells = [f"{ms[r]:.2f}" if r in ms else "" for r in runtimes]
            for b, others in pairs:
                best = min((ms[o] for o in others if o in ms), default=None)
                cells.append(f"**{best / ms[b]:.2f}×**" if best and b in ms else "")
            out.append(f"| {key[0]} | {key[1]} | " + " | ".join(cells) + " |")
        out.append("")
    return "\n".join(out) + "\n"


def plot(rows: list[dict], path: Path) -> None:
    """One panel per model: median ms per runtime for each (shape, threads), log scale."""
    import matplotlib
    from matplotlib.figure import Figure

    models = list(dict.fromkeys(r["model"] for r in rows))
    runtimes = list(dict.fromkeys(r["runtime"] for r in rows))
    cmap = matplotlib.colormaps["tab20"]
    colors = {r: cmap(i / max(1, len(runtimes) - 1)) for i, r in enumerate(runtimes)}
    fig = Figure(figsize=(14, 3.2 * len(models)))
    axes = fig.subplots(len(models), 1, squeeze=False)
    width = 0.8 / len(runtimes)
    for ax, model in zip(axes[:, 0], models):
        mine = [r for r in rows if r["model"] == model]
        groups = list(dict.fromkeys((r["shape"], r["threads"]) for r in mine))
        for i, runtime in enumerate(runtimes):
            ms = [next((r["ms"] for r in mine if r["runtime"] == runtime
                        and (r["shape"], r["threads"]) == g), np.nan) for g in groups]
            bort = runtime.startswith("bort")
            ax.bar(np.arange(len(groups)) + i * width, ms, width, label=runtime,
                   color=colors[runtime], edgecolor="black" if bort else "none", linewidth=0.6)
        ax.set_xticks(np.arange(len(groups)) + 0.4 - width / 2)
        ax.set_xticklabels([f"{s}, {t}T" for s, t in groups], fontsize=8)
        ax.set_yscale("log")
        ax.set_ylabel("ms (median)")
        ax.set_title(model, fontsize=10)
    axes[0, 0].legend(fontsize=7, ncol=len(runtimes), loc="lower left", bbox_to_anchor=(0, 1.12))
    fig.tight_layout()
    fig.savefig(path, dpi=110)
