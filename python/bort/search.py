"""The search: the frontier table of cost against error proxy over a space of sub-architectures.

`frontier` returns an ε-approximate Pareto front of (cost, error proxy): for every architecture x
of the space, some returned candidate y has ``cost(y) ≤ (1 + ε)·cost(x)`` and
``error_proxy(y) ≤ error_proxy(x)``. Layer-wise spaces (exponentially many architectures) go
through the C++ dynamic program of csrc/frontier/frontier.hpp, one run per hidden size, merged and
thinned; uniform spaces are small enough to list. `cost` and `error_proxy` give each value for one
architecture, so any point can be checked by brute force.

Example:
    >>> from bort import Arch
    >>> from bort.search import LayerwiseSpace, frontier
    >>> from bort.costs import Importance
    >>> import numpy as np
    >>> src = Arch.uniform(4, 4, 64, 128)
    >>> imp = Importance(src, [np.ones(4)] * 4, [np.ones(128)] * 4, np.ones(64))
    >>> front = frontier(LayerwiseSpace.from_source(src, ffn_step=32), 0.05, "flops", imp)
    >>> front[0].error_proxy, front[-1].error_proxy  # the empty network ... the source
    (528.0, 0.0)
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from . import _core
from . import costs as _costs
from .arch import Arch
from .costs import COST_KINDS, Importance, base_cost, cost, error_proxy, layer_cost
from .errors import ConfigError
from .space import LayerwiseSpace, UniformSpace

__all__ = ["Candidate", "Evaluated", "LayerwiseSpace", "SearchResult", "UniformSpace", "cost",
           "error_proxy", "frontier", "optimal_subarchitecture", "plot_front", "representatives",
           "w_coefficient"]

#: The most states the table keeps after any layer (and the largest exact front, ε = 0).
MAX_STATES = 2_000_000


@dataclass(frozen=True)
class Candidate:
    """A point of the front: its architecture, parameters, cost (FLOPs, ms or parameters, as
    asked) and error proxy."""

    arch: Arch
    params: int
    cost: float
    error_proxy: float


def _pareto(cost: np.ndarray, error: np.ndarray) -> np.ndarray:
    """Indices of the Pareto set (cost ascending, error strictly descending)."""
    order = np.lexsort((error, cost))
    kept, best = [], math.inf
    for i in order:
        if error[i] < best:
            kept.append(i)
            best = error[i]
    return np.asarray(kept, dtype=np.int64)


def frontier(space: LayerwiseSpace | UniformSpace, epsilon: float = 0.01, cost: str = "flops",
             importance: Importance | None = None, *, max_states: int = MAX_STATES,
             **cost_options: Any) -> list[Candidate]:
    """The ε-approximate front of ``cost`` against the error proxy over ``space``.

    Args:
        space: a `LayerwiseSpace` (dynamic program) or a `UniformSpace` (listed).
        epsilon: ≥ 0; 0 gives the exact Pareto set (failing past ``max_states`` points).
        cost: "flops", "latency" or "params" (see `bort.costs.decompose`; options such as
            ``batch``, ``seq_len``, ``effective`` and ``table`` pass through).
        importance: the source's `bort.costs.Importance`.

    Returns the candidates by increasing cost (and so decreasing error proxy).
    """
    if not (isinstance(epsilon, (int, float)) and math.isfinite(epsilon) and epsilon >= 0):
        raise ValueError(f"epsilon must be a finite number >= 0, got {epsilon!r}")
    if cost not in COST_KINDS:
        raise ValueError(f"unknown cost {cost!r}; expected one of {COST_KINDS}")
    if importance is None:
        raise ValueError("the frontier trades cost against the error proxy: pass the source's "
                         "importance (bort.costs.importance)")
    if isinstance(space, LayerwiseSpace):
        if not importance.matches(space.source):
            raise ConfigError(f"the importance table was measured on {importance.source.describe()}"
                              f", not on this space's source {space.source.describe()}")
        archs, costs, errors = _layerwise(space, epsilon, cost, importance, max_states,
                                          cost_options)
    elif isinstance(space, UniformSpace):
        archs = space.enumerate()
        costs = np.array([_costs.cost(a, cost, **cost_options) for a in archs])
        errors = np.array([error_proxy(a, importance) for a in archs])
    else:
        raise TypeError(f"space must be a LayerwiseSpace or a UniformSpace, got {type(space)}")
    if not archs:
        raise ConfigError("the space is empty")
    keep = _pareto(costs, errors)
    if epsilon > 0:
        ratio = math.sqrt(1 + epsilon) if isinstance(space, LayerwiseSpace) else 1 + epsilon
        keep = keep[_core.frontier_thin(costs[keep], errors[keep], ratio)]
    return [Candidate(archs[i], archs[i].params().total, float(costs[i]), float(errors[i]))
            for i in keep]


def _layerwise(space: LayerwiseSpace, epsilon: float, kind: str, importance: Importance,
               max_states: int, options: dict[str, Any]):
    """One DP per hidden size (each √(1+ε)-approximate before thinning); the caller merges."""
    choices = [space.choices(l) for l in range(space.num_layers)]
    errors_per_layer = [np.array([importance.layer_error(l, c) for c in cs])
                        for l, cs in enumerate(choices)]
    archs: list[Arch] = []
    costs: list[float] = []
    errors: list[float] = []
    for hidden in space.hiddens:
        per_layer_costs = [np.array([layer_cost(c, hidden, kind, **options) for c in cs])
                           for cs in choices]
        base = base_cost(space.arch(hidden, ()), kind, **options)
        c, e, pick = _core.frontier_solve(list(zip(per_layer_costs, errors_per_layer)), base,
                                          importance.hidden_error(hidden), float(epsilon),
                                          max_states, False)
        for row, cc, ee in zip(pick, c, e):
            archs.append(space.arch(hidden, [choices[l][k] for l, k in enumerate(row)]))
            costs.append(cc)
            errors.append(ee)
    return archs, np.array(costs), np.array(errors)


# ---------------------------------------------------------------------- the driver
@dataclass(frozen=True)
class Evaluated:
    """A representative after its short distillation run: ``error`` is the surrogate (held-out
    distillation loss), ``w`` its W-coefficient."""

    arch: Arch
    params: int
    cost: float
    error_proxy: float
    error: float
    w: float


@dataclass
class SearchResult:
    """The evaluated representatives by increasing (params, cost), the optimum (largest W that
    meets the constraints), the maximum point T and the candidates the table returned."""

    evaluated: list[Evaluated]
    optimum: Evaluated | None
    maximum: Candidate
    candidates: list[Candidate] = field(default_factory=list)
    predicted_seconds: float = 0.0  # the evaluation phase, as predicted before it started
    evaluation_seconds: float = 0.0  # ... and as it took
    seconds: float = 0.0  # the whole call

    def to_json(self) -> dict[str, Any]:
        def row(x):
            return {**{k: v for k, v in asdict(x).items() if k != "arch"},
                    "arch": x.arch.to_config(), "describe": x.arch.describe()}

        return {"maximum": row(self.maximum),
                "optimum": row(self.optimum) if self.optimum else None,
                "evaluated": [row(x) for x in self.evaluated],
                "candidates": [row(x) for x in self.candidates],
                "predicted_seconds": self.predicted_seconds,
                "evaluation_seconds": self.evaluation_seconds, "seconds": self.seconds}


def w_coefficient(params: float, cost: float, error: float, max_params: float,
                  max_cost: float) -> float:
    """W = ((p(T) − p)/p(T)) · ((i(T) − i)/i(T)) / e: the share of parameters and of inference cost
    saved, per unit of error (BORT_NOTES §1; our reading of the paper)."""
    if error <= 0:
        raise ValueError(f"the surrogate error must be positive, got {error}")
    return (max_params - params) / max_params * (max_cost - cost) / max_cost / error


def representatives(candidates: Sequence[Candidate], count: int) -> list[Candidate]:
    """Order the candidates by (params, cost), cut them into ``count`` intervals of equal size and
    take the middle one of each (the paper's intervals of the ordered space)."""
    if count < 1:
        raise ValueError(f"representatives must be >= 1, got {count}")
    ordered = sorted(candidates, key=lambda c: (c.params, c.cost))
    if len(ordered) <= count:
        return ordered
    bounds = [round(k * len(ordered) / count) for k in range(count + 1)]
    return [ordered[(lo + hi - 1) // 2] for lo, hi in zip(bounds, bounds[1:])]


def _key(arch: Arch) -> str:
    return json.dumps(arch.to_config(), sort_keys=True)


def optimal_subarchitecture(source: Any, space: LayerwiseSpace | UniformSpace, corpus: Any, *,
                            importance: Importance, epsilon: float = 0.01, cost: str = "flops",
                            representatives_count: int = 8, steps: int = 50, seed: int = 0,
                            max_params: int | None = None, max_latency_ms: float | None = None,
                            min_speedup: float | None = None, out: str | Path | None = None,
                            log: Callable[[str], None] | None = print,
                            **cost_options: Any) -> SearchResult:
    """The Bort search: the frontier table's candidates (or the whole uniform grid) → ordered by
    (p, i) → one representative per interval → surrogate error by a short distillation against
    the source (the maximum point T) → W-coefficient → the optimum meeting the constraints.

    ``max_latency_ms`` needs ``cost="latency"`` (and its ``table``); ``min_speedup`` bounds
    i(T)/i. Under torchrun the representatives are shared out across ranks. With ``out``,
    results are appended to ``out/evaluated.jsonl`` as they finish and a rerun skips them.
    """
    import torch

    from .distill import surrogate_error

    if max_latency_ms is not None and cost != "latency":
        raise ValueError("max_latency_ms needs cost='latency' (with its LatencyTable)")
    start = time.perf_counter()
    arch_t = source.arch
    maximum = Candidate(arch_t, arch_t.params().total, _costs.cost(arch_t, cost, **cost_options),
                        0.0)
    candidates = frontier(space, epsilon, cost, importance, **cost_options)

    def allowed(c: Candidate) -> bool:
        return ((max_params is None or c.params <= max_params)
                and (max_latency_ms is None or c.cost <= max_latency_ms)
                and (min_speedup is None or c.cost * min_speedup <= maximum.cost))

    pool = [c for c in candidates if allowed(c) and c.arch.depth > 0]
    if not pool:
        raise ConfigError("no candidate meets the constraints (max_params, max_latency_ms, "
                          "min_speedup)")
    chosen = representatives(pool, representatives_count)

    dist = torch.distributed
    rank, world = ((dist.get_rank(), dist.get_world_size())
                   if dist.is_available() and dist.is_initialized() else (0, 1))
    done: dict[str, float] = {}
    path = Path(out) / "evaluated.jsonl" if out else None
    if path:
        path.parent.mkdir(parents=True, exist_ok=True)
        for f in sorted(path.parent.glob("evaluated*.jsonl")):
            for line in f.read_text().splitlines():
                if line.strip():
                    row = json.loads(line)
                    done[row["key"]] = row["error"]
    todo = [c for c in chosen if _key(c.arch) not in done]
    # Predicted time: a surrogate run is a fixed part (extraction, evaluation, saving) plus
    # steps × a step time (the teacher's forward and the student's forward and backward). Runs of
    # 1 and 4 steps on the cheapest and the costliest candidate measure both (the step time is
    # the mean of steps 2-4); candidates in between are interpolated by cost.
    predicted = 0.0
    if todo:
        ends = sorted({min(todo, key=lambda c: c.cost), max(todo, key=lambda c: c.cost)},
                      key=lambda c: c.cost)
        # the first run in a process pays one-time costs (allocator, thread pools, caches):
        # a discarded warm-up keeps them out of the probes
        surrogate_error(ends[0].arch, source, corpus, 1, seed, importance=importance)
        probes = []
        for c in ends:
            timed = []
            for n in (1, 4):
                t = time.perf_counter()
                surrogate_error(c.arch, source, corpus, n, seed, importance=importance)
                timed.append(time.perf_counter() - t)
            step = max((timed[1] - timed[0]) / 3, 1e-3)
            probes.append((c.cost, max(timed[0] - step, 0.0), step))
        (c0, f0, s0), (c1, f1, s1) = probes[0], probes[-1]

        def seconds(c: Candidate) -> float:
            a = (c.cost - c0) / (c1 - c0) if c1 > c0 else 0.0
            return f0 + a * (f1 - f0) + steps * (s0 + a * (s1 - s0))

        predicted = sum(seconds(c) for c in todo) / world
        if log and rank == 0:
            log(f"{len(todo)} representatives × {steps} steps on {world} process(es): "
                f"expected {predicted / 60:.1f} min")
    evaluation_start = time.perf_counter()
    mine = [c for i, c in enumerate(todo) if i % world == rank]
    own = path.with_name(f"evaluated.rank{rank}.jsonl") if path and world > 1 else path
    for n, c in enumerate(mine):
        error = surrogate_error(c.arch, source, corpus, steps, seed, importance=importance)
        done[_key(c.arch)] = error
        if own:
            with open(own, "a") as f:
                f.write(json.dumps({"key": _key(c.arch), "error": error}) + "\n")
        if log and rank == 0:
            log(f"[{n + 1}/{len(mine)}] {c.arch.describe()}: surrogate error {error:.4f}")
    if world > 1:  # everyone learns everyone's errors
        gathered: list[dict[str, float]] = [{} for _ in range(world)]
        dist.all_gather_object(gathered, done)
        for d in gathered:
            done.update(d)
    evaluated = [Evaluated(c.arch, c.params, c.cost, c.error_proxy, done[_key(c.arch)],
                           w_coefficient(c.params, c.cost, done[_key(c.arch)], maximum.params,
                                         maximum.cost)) for c in chosen]
    optimum = max(evaluated, key=lambda x: x.w) if evaluated else None
    result = SearchResult(evaluated, optimum, maximum, candidates, predicted,
                          time.perf_counter() - evaluation_start, time.perf_counter() - start)
    if out and rank == 0:
        (Path(out) / "front.json").write_text(json.dumps(result.to_json(), indent=2) + "\n")
    return result


def plot_front(result: SearchResult, path: str | Path, unit: str, *,
               max_params: int | None = None, max_latency_ms: float | None = None) -> None:
    """The front as a PNG: the table's candidates, the representatives coloured by error, the
    optimum and the source; dashed lines at the constraints."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.5, 4.5))
    ax.scatter([c.params / 1e6 for c in result.candidates], [c.cost for c in result.candidates],
               s=6, color="lightgray", label="frontier table")
    points = ax.scatter([x.params / 1e6 for x in result.evaluated],
                        [x.cost for x in result.evaluated],
                        c=[x.error for x in result.evaluated], cmap="viridis", s=40,
                        label="representatives")
    fig.colorbar(points, label="surrogate error")
    if result.optimum:
        ax.scatter([result.optimum.params / 1e6], [result.optimum.cost], marker="*", s=250,
                   color="red", label="optimum (max W)")
    ax.scatter([result.maximum.params / 1e6], [result.maximum.cost], marker="s", color="black",
               label="source")
    if max_params:
        ax.axvline(max_params / 1e6, color="red", linestyle="--", linewidth=0.8)
    if max_latency_ms:
        ax.axhline(max_latency_ms, color="red", linestyle="--", linewidth=0.8)
    ax.set_xlabel("parameters (millions)")
    ax.set_ylabel(unit)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
