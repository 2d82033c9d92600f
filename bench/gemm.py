"""GEMM rates of bort's own microkernels against MKL, as % of the instruction's peak.

The GEMMs of one encoder layer (fused QKV, attention output, FFN up, FFN down) of Bort as released
⟨H 1024, A 1024, I 768⟩, BERT-base ⟨768, 768, 3072⟩ and all-MiniLM-L6 ⟨384, 384, 1536⟩, at
M ∈ {1, 16, 128, 512} tokens, in fp32, bf16 and int8, on 1 and 2 threads. Each GEMM runs through
the encoder's linear layer (`bort._core.Linear`: the per-call conversion of X to bf16 / u8 is
included), weights packed once; the rate of a cell is the layer's 4 GEMMs' operations over their
summed median times. Own kernels and MKL run in separate processes (the backend is chosen once
per process; MKL with BORT_GEMM=mkl). The peaks are this CPU's, measured by a register-only loop
of each kernel's instruction (`bort._core.gemm_peak`).

    python bench/gemm.py [--quick] [--out bench/results]

Writes gemm.json, gemm.md (a table per dtype) and gemm.png.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from bort import _core
from bort.io import write_json, write_text
from bort.timing import cpu_summary

#: (hidden, attention width, FFN width) per model
MODELS = {"bort-released": (1024, 1024, 768), "bert-base": (768, 768, 3072),
          "minilm-l6": (384, 384, 1536)}
ROWS = (1, 16, 128, 512)
THREADS = (1, 2)
SOURCES = {"own": {}, "mkl": {"BORT_GEMM": "mkl"}}


def layer_shapes(hidden: int, attn: int, ffn: int) -> list[tuple[int, int]]:
    """(N, K) of a layer's GEMMs: fused QKV, attention output, FFN up, FFN down."""
    return [(3 * attn, hidden), (hidden, attn), (ffn, hidden), (hidden, ffn)]


def median_s(fn, min_s: float) -> float:
    """Median seconds per call over 5 timed batches of calls, each at least min_s / 5 long."""
    fn(), fn()
    t = time.perf_counter()
    fn()
    once = max(time.perf_counter() - t, 1e-6)
    reps = max(1, int(min_s / 5 / once))
    times = []
    for _ in range(5):
        t = time.perf_counter()
        for _ in range(reps):
            fn()
        times.append((time.perf_counter() - t) / reps)
    return float(np.median(times))


def worker(models: list[str], rows: tuple[int, ...], min_s: float) -> dict:
    """This process's backend and every cell: GOP/s per (model, dtype, threads, M)."""
    rng = np.random.default_rng(0)
    out = []
    for model in models:
        shapes = layer_shapes(*MODELS[model])
        weights = [(rng.standard_normal((n, k)) / np.sqrt(k)).astype(np.float32) for n, k in shapes]
        for dtype in _core.DTYPES:
            for threads in THREADS:
                layers = [_core.Linear(w, dtype, threads) for w in weights]
                for m in rows:
                    xs = [rng.standard_normal((m, k)).astype(np.float32) for _, k in shapes]
                    seconds = sum(median_s(lambda f=f, x=x: f(x), min_s)
                                  for f, x in zip(layers, xs))
                    ops = sum(2 * m * n * k for n, k in shapes)
                    out.append({"model": model, "dtype": dtype, "threads": threads, "m": m,
                                "gops": ops / seconds / 1e9, "ms": seconds * 1e3})
    return {"backend": _core.backend()["description"], "rows": out}


def peaks() -> dict[str, float]:
    """GOP/s of one core in a register-only loop of each own kernel's instruction."""
    return {dtype: _core.gemm_peak(dtype, 0.5) / 1e9 for dtype in _core.DTYPES}


def run_source(source: str, args) -> dict:
    env = {**os.environ, **SOURCES[source]}
    cmd = [sys.executable, __file__, "--worker", "--models", *args.models,
           "--rows", *map(str, args.rows), "--min-s", str(args.min_s)]
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, check=True)
    return json.loads(out.stdout)


def markdown(report: dict) -> str:
    lines = [f"CPU: {report['machine']['cpu']}",
             f"Backend (own): {report['backend']['own']}; MKL forced: {report['backend']['mkl']}",
             "Peaks of one core (register-only loop, GOP/s): "
             + ", ".join(f"{d} {p:.0f}" for d, p in report["peaks"].items()), ""]
    cells = {(r["source"], r["model"], r["dtype"], r["threads"], r["m"]): r for r in report["rows"]}
    for dtype in _core.DTYPES:
        peak = report["peaks"][dtype]
        lines += [f"### {dtype} — GOP/s (% of the {dtype} peak × threads)", "",
                  "| model | M | " + " | ".join(f"own {t}T | mkl {t}T" for t in THREADS) + " |",
                  "|---|---|" + "---|---|" * len(THREADS)]
        for model in report["models"]:
            for m in report["rows_m"]:
                row = f"| {model} | {m} |"
                for t in THREADS:
                    for source in SOURCES:
                        g = cells[(source, model, dtype, t, m)]["gops"]
                        share = f" ({100 * g / (peak * t):.0f}%)" if peak else ""
                        row += f" {g:.0f}{share} |"
                lines.append(row)
        lines.append("")
    return "\n".join(lines)


def plot(report: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(_core.DTYPES), figsize=(13, 4), sharey=True)
    for ax, dtype in zip(axes, _core.DTYPES):
        peak = report["peaks"][dtype]
        for model in report["models"]:
            for source, style in (("own", "-"), ("mkl", ":")):
                ys = [next(r["gops"] for r in report["rows"]
                           if (r["source"], r["model"], r["dtype"], r["threads"], r["m"])
                           == (source, model, dtype, 1, m)) for m in report["rows_m"]]
                ax.plot(report["rows_m"], [100 * y / peak for y in ys], style, marker="o",
                        label=f"{model} {source}")
        ax.set_xscale("log", base=2)
        ax.set_title(f"{dtype}, 1 thread")
        ax.set_xlabel("M (tokens)")
        ax.axhline(100, color="grey", lw=0.5)
    axes[0].set_ylabel("% of this CPU's instruction peak")
    axes[-1].legend(fontsize=7)
    fig.suptitle(report["machine"]["cpu"], fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="MiniLM and Bort, M = 1 and 128 only")
    parser.add_argument("--models", nargs="+", choices=list(MODELS), default=list(MODELS))
    parser.add_argument("--rows", nargs="+", type=int, default=list(ROWS), help="values of M")
    parser.add_argument("--min-s", type=float, default=0.2, help="timed seconds per GEMM")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(worker(args.models, tuple(args.rows), args.min_s)))
        return
    if args.quick:
        args.models, args.rows = ["bort-released", "minilm-l6"], [1, 128]
    args.out.mkdir(parents=True, exist_ok=True)
    rows = []
    backend = {}
    for source in SOURCES:
        result = run_source(source, args)
        backend[source] = result["backend"]
        rows += [{"source": source, **r} for r in result["rows"]]
    report = {"machine": {"cpu": cpu_summary(), "cores": os.cpu_count(),
                          "python": platform.python_version()},
              "backend": backend, "peaks": peaks(), "models": args.models, "rows_m": args.rows,
              "rows": rows}
    write_json(args.out / "gemm.json", report, indent=1)
    table = markdown(report)
    write_text(args.out / "gemm.md", table)
    print(table)
    plot(report, args.out / "gemm.png")


if __name__ == "__main__":
    main()
