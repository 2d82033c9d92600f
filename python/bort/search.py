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

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from . import _core
from . import costs as _costs
from .arch import Arch
from .costs import COST_KINDS, Importance, base_cost, cost, error_proxy, layer_cost
from .errors import ConfigError
from .space import LayerwiseSpace, UniformSpace

__all__ = ["Candidate", "LayerwiseSpace", "UniformSpace", "cost", "error_proxy", "frontier"]

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
