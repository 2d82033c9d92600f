"""Wall-clock timing: the one loop behind the search's latency table and `bort bench`.

Runners are timed in interleaved rounds, so machine noise hits all of them alike, after warm-up
calls that keep one-time costs out; the result is the median. In a round each runner is called
`BACK_TO_BACK` times in a row and the last call is timed: it finds its own weights in cache, as a
server's consecutive calls do, rather than the previous runner's (a small model timed right
after a large one ran up to 15% slower: an end-to-end speed-up of 8.7× instead of ≈ 10×).

Example:
    >>> ms = interleaved_ms({"sum": lambda: sum(range(1000))}, rounds=5)
    >>> sorted(ms), ms["sum"] > 0
    (['sum'], True)
"""

from __future__ import annotations

import platform
import statistics
import time
from collections.abc import Callable, Mapping
from pathlib import Path

import numpy as np

__all__ = ["BACK_TO_BACK", "WARMUP", "cpu_model", "cpu_summary", "interleaved_ms", "median_ms",
           "median_of"]

#: The /proc/cpuinfo flags that decide which kernels can run, as a timing table names them.
ISA_FLAGS = ("avx2", "fma", "avx512f", "avx512_vnni", "avx_vnni", "avx512_bf16", "amx_bf16",
             "amx_int8")
#: Calls of each runner before timing starts (allocators, caches, thread pools warm up).
WARMUP = 2
#: Calls of a runner in a row in each round; the last one is timed.
BACK_TO_BACK = 2


def interleaved_ms(runners: Mapping[str, Callable[[], object]], *, rounds: int = 10,
                   warmup: int = WARMUP, min_rounds: int = 3, min_seconds: float = 0.0,
                   budget_s: float = float("inf"),
                   back_to_back: int = BACK_TO_BACK) -> dict[str, float]:
    """Median milliseconds of each runner over interleaved rounds.

    Runs at least ``min_rounds`` rounds and ``rounds`` unless ``budget_s`` seconds pass first,
    and keeps going past ``rounds`` until ``min_seconds`` have passed (short calls get more
    rounds)."""
    for run in runners.values():
        for _ in range(warmup):
            run()
    times: dict[str, list[float]] = {name: [] for name in runners}
    start = time.perf_counter()
    done = 0
    while True:
        for name, run in runners.items():
            for _ in range(back_to_back - 1):
                run()
            t = time.perf_counter()
            run()
            times[name].append(time.perf_counter() - t)
        done += 1
        elapsed = time.perf_counter() - start
        if done >= min_rounds and (elapsed > budget_s or (done >= rounds
                                                          and elapsed >= min_seconds)):
            break
    return {name: 1e3 * statistics.median(ts) for name, ts in times.items()}


def median_ms(fn: Callable[[], object], *, rounds: int = 5, min_seconds: float = 0.05) -> float:
    """Median milliseconds of ``fn()``: at least ``rounds`` calls and ``min_seconds`` of them."""
    return interleaved_ms({"fn": fn}, rounds=rounds, min_seconds=min_seconds, back_to_back=1)["fn"]


def median_of(sample: Callable[[], object], *, rounds: int = 5,
              warmup: int = WARMUP) -> np.ndarray:
    """Element-wise median of ``rounds`` calls of ``sample`` (which returns a measurement, such
    as the per-stage milliseconds the encoder times itself), after ``warmup`` discarded calls."""
    for _ in range(warmup):
        sample()
    return np.median(np.array([sample() for _ in range(rounds)], dtype=np.float64), axis=0)


def _cpuinfo() -> dict[str, str]:
    """The first processor's /proc/cpuinfo fields ({} where there is none)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return {}
    fields = {}
    for line in text.split("\n\n", 1)[0].splitlines():
        key, _, value = line.partition(":")
        fields[key.strip()] = value.strip()
    return fields


def cpu_model() -> str:
    """The CPU's model name with its family and model numbers (what timing tables and cached
    latency tables are labelled with): cloud machines often show a bare ``AMD EPYC`` for
    several generations, which the numbers tell apart (family 25: Zen 3/4, 26: Zen 5), e.g.
    ``AMD EPYC, family 26 model 2``."""
    info = _cpuinfo()
    name = info.get("model name") or platform.processor() or platform.machine()
    if info.get("cpu family") and info.get("model"):
        name += f", family {info['cpu family']} model {info['model']}"
    return name


def cpu_summary() -> str:
    """The model name and the ISA features kernels are chosen by, for the head of a timing
    table: e.g. ``AMD EPYC, family 26 model 2 (avx2 fma avx512f avx512_vnni avx512_bf16)``."""
    flags = set(_cpuinfo().get("flags", "").split())
    return f"{cpu_model()} ({' '.join(f for f in ISA_FLAGS if f in flags) or 'no flags read'})"
