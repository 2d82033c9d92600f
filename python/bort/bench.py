"""Latency harness: one model under several runtimes, timed side by side in one process.

Runtimes (those whose packages are missing are skipped with a note):
    torch-fp32, torch-bf16 (autocast), ort-fp32 (plain export), ort-opt-fp32 (ONNX Runtime's
    transformer optimizer), ort-int8 (dynamic quantisation), ov-fp32, ov-bf16 (OpenVINO),
    bort-fp32, bort-bf16, bort-int8 (bort.runtime).

Every runtime sees the same padded batch (token ids, mask); bort skips the padding itself.
Timings are interleaved (one call of each runtime per round) so that machine noise hits all of
them alike; the result is the median over rounds, in milliseconds.
"""

from __future__ import annotations

import gc
import statistics
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

RUNTIMES = ("torch-fp32", "torch-bf16", "ort-fp32", "ort-opt-fp32", "ort-int8", "ov-fp32",
            "ov-bf16", "bort-fp32", "bort-bf16", "bort-int8")


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


def prepare(model_dir: Path, onnx_path: Path, runtimes: tuple[str, ...], threads: int,
            workdir: Path, notes: list[str]) -> dict[str, Callable[[Inputs], object]]:
    """A callable per available runtime, set to ``threads`` threads."""
    import torch

    from .arch import Arch
    from .model import BortModel
    from .runtime import Encoder

    runners: dict[str, Callable[[Inputs], object]] = {}
    arch = Arch.from_pretrained(model_dir)
    if any(r.startswith("torch") for r in runtimes):
        torch.set_num_threads(threads)
        model = BortModel.from_pretrained(model_dir).eval()

        def torch_run(x: Inputs, bf16: bool = False):
            t = {k: torch.from_numpy(v) for k, v in x.feed().items()}
            with torch.inference_mode(), torch.autocast("cpu", torch.bfloat16, enabled=bf16):
                return model(t["input_ids"], t["attention_mask"], t["token_type_ids"])

        if "torch-fp32" in runtimes:
            runners["torch-fp32"] = torch_run
        if "torch-bf16" in runtimes:
            runners["torch-bf16"] = lambda x: torch_run(x, bf16=True)
    ort_models = {"ort-fp32": onnx_path}
    if any(r.startswith("ort") for r in runtimes):
        try:
            import onnxruntime as ort
        except ImportError:
            notes.append("onnxruntime missing: ort-* skipped")
        else:
            if "ort-opt-fp32" in runtimes:
                try:
                    from onnxruntime.transformers.optimizer import optimize_model

                    first = arch.layers[0]
                    opt = optimize_model(str(onnx_path), model_type="bert", num_heads=first.heads,
                                         hidden_size=arch.hidden)
                    ort_models["ort-opt-fp32"] = workdir / f"{onnx_path.stem}.opt.onnx"
                    opt.save_model_to_file(str(ort_models["ort-opt-fp32"]))
                except Exception as e:  # the optimizer fails on graphs it does not know
                    notes.append(f"ort-opt-fp32 skipped: {type(e).__name__}: {e}")
            if "ort-int8" in runtimes:
                from onnxruntime.quantization import QuantType, quantize_dynamic

                ort_models["ort-int8"] = workdir / f"{onnx_path.stem}.int8.onnx"
                if not ort_models["ort-int8"].exists():
                    quantize_dynamic(str(onnx_path), str(ort_models["ort-int8"]),
                                     weight_type=QuantType.QInt8)
            for name, path in ort_models.items():
                if name not in runtimes:
                    continue
                so = ort.SessionOptions()
                so.intra_op_num_threads = threads
                so.inter_op_num_threads = 1
                so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
                # idle workers must not spin: they would steal the core from the next runtime
                so.add_session_config_entry("session.intra_op.allow_spinning", "0")
                session = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
                runners[name] = lambda x, s=session: s.run(None, x.feed())
    if any(r.startswith("ov") for r in runtimes):
        try:
            import openvino as ov
        except ImportError:
            notes.append("openvino missing: ov-* skipped (pip install 'bort[bench]')")
        else:
            core = ov.Core()
            for name, precision in (("ov-fp32", "f32"), ("ov-bf16", "bf16")):
                if name not in runtimes:
                    continue
                compiled = core.compile_model(str(onnx_path), "CPU", {
                    "INFERENCE_NUM_THREADS": threads, "INFERENCE_PRECISION_HINT": precision,
                    "PERFORMANCE_HINT": "LATENCY"})
                request = compiled.create_infer_request()
                runners[name] = lambda x, r=request: r.infer(x.feed())
    for name in runtimes:
        if name.startswith("bort-"):
            dtype = name.split("-", 1)[1]
            try:
                encoder = Encoder.from_pretrained(model_dir, dtype=dtype, num_threads=threads)
            except Exception as e:  # a dtype not built yet
                notes.append(f"{name} skipped: {e}")
                continue
            runners[name] = lambda x, e=encoder: e.forward(x.input_ids, x.attention_mask,
                                                           x.token_type_ids)
    return runners


def run_matrix(dirs: dict[str, Path], onnx: dict[str, Path], shapes: dict[str, list[int]],
               threads: list[int], runtimes: tuple[str, ...], rounds: int,
               workdir: Path) -> tuple[list[dict], list[str]]:
    """Time every (model, threads, shape) under every runtime; prints a line per measurement.
    Returns rows {model, shape, threads, runtime, ms, gflops_per_s} and notes on skipped
    runtimes."""
    from .arch import Arch

    rows: list[dict] = []
    notes: list[str] = []
    for name, directory in dirs.items():
        arch = Arch.from_pretrained(directory)
        for n_threads in threads:
            runners = None  # free the last sessions first: two sets of BERT-large do not fit
            gc.collect()
            runners = prepare(directory, onnx[name], runtimes, n_threads, workdir, notes)
            for shape, lengths in shapes.items():
                inputs = make_inputs(lengths, min(arch.vocab_size, 30000))
                heavy = arch.flops(1, 128) * len(lengths) >= 2e11
                ms = measure(runners, inputs, rounds=5 if heavy else rounds)
                real_flops = sum(arch.flops(1, n) for n in lengths)
                for runtime, t in ms.items():
                    rows.append({"model": name, "shape": shape, "threads": n_threads,
                                 "runtime": runtime, "ms": t, "gflops_per_s": real_flops / t / 1e6})
                line = "  ".join(f"{r} {t:.2f}" for r, t in ms.items())
                print(f"{name:13s} {shape:8s} {n_threads}T  {line}", flush=True)
    return rows, sorted(set(notes))


def measure(runners: dict[str, Callable[[Inputs], object]], inputs: Inputs, *, rounds: int = 10,
            warmup: int = 2, budget_s: float = 60.0) -> dict[str, float]:
    """Median milliseconds per runtime, rounds interleaved; stops early past ``budget_s``."""
    for run in runners.values():
        for _ in range(warmup):
            run(inputs)
    times: dict[str, list[float]] = {name: [] for name in runners}
    start = time.perf_counter()
    for i in range(rounds):
        for name, run in runners.items():
            t = time.perf_counter()
            run(inputs)
            times[name].append(time.perf_counter() - t)
        if i >= 2 and time.perf_counter() - start > budget_s:
            break
    return {name: 1e3 * statistics.median(ts) for name, ts in times.items()}


#: bort's speed-up columns: (bort runtime, the runtimes it is compared with, best of them)
COMPARISONS = (("bort-fp32", ("ort-fp32", "ort-opt-fp32")), ("bort-fp32", ("ov-fp32",)),
               ("bort-fp32", ("torch-fp32",)), ("bort-bf16", ("ov-bf16",)),
               ("bort-bf16", ("torch-bf16",)), ("bort-int8", ("ort-int8",)))


def markdown(rows: list[dict]) -> str:
    """Per model: milliseconds per runtime, then bort's speed-up over each competitor of the
    same precision (> 1: bort is faster; "ort fp32" is the better of plain and optimised)."""
    out = []
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

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    models = list(dict.fromkeys(r["model"] for r in rows))
    runtimes = list(dict.fromkeys(r["runtime"] for r in rows))
    colors = {r: plt.cm.tab20(i / max(1, len(runtimes) - 1)) for i, r in enumerate(runtimes)}
    fig, axes = plt.subplots(len(models), 1, figsize=(14, 3.2 * len(models)), squeeze=False)
    width = 0.8 / len(runtimes)
    for ax, model in zip(axes[:, 0], models):
        mine = [r for r in rows if r["model"] == model]
        groups = list(dict.fromkeys((r["shape"], r["threads"]) for r in mine))
        for i, runtime in enumerate(runtimes):
            ms = [next((r["ms"] for r in rows if r["model"] == model and r["runtime"] == runtime
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
