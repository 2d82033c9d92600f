"""Frontier table on the 24-layer BERT-large layer-wise space: time, size, approximation quality.

The space: every layer keeps 0..16 heads and 0..4096 FFN neurons in steps of 64 (17 × 65 = 1,105
choices per layer, 1105^24 architectures); cost = FLOPs at 1 × 128. The error proxy needs an
importance table; BERT-large weights are not installable here, and the DP's speed depends only on
the table's shape, so importance values are drawn (log-normal, seeded) — stated in the output.

For each ε it reports: the C++ table's time on one core (best of 3), `bort.search.frontier`'s
end-to-end time, the front's size against the bound 2·⌈log_{1+ε}(c_max/c_min)⌉ + 1, the worst
ratio against a 10× finer table (must be ≤ 1 + ε), and the same DP written in plain numpy.

    python bench/frontier.py [--eps 0.1 0.01] [--out bench/results]
"""

from __future__ import annotations

import argparse
import math
import os
import time
from pathlib import Path

import numpy as np

from bort import Arch, _core
from bort.costs import Importance, layer_cost
from bort.io import write_json
from bort.search import LayerwiseSpace, frontier


def numpy_dp(layers: list[tuple[np.ndarray, np.ndarray]], epsilon: float):
    """The same DP as csrc/frontier/frontier.hpp, vectorised per layer with numpy."""
    n = len(layers)
    kept = []
    for c, e in layers:  # drop each layer's dominated choices
        order = np.lexsort((e, c))
        run_min = np.minimum.accumulate(e[order])
        first = np.concatenate([[True], run_min[1:] < run_min[:-1]])
        kept.append(order[first])
    lo = min(c[k][c[k] > 0].min() for (c, _), k in zip(layers, kept) if np.any(c[k] > 0))
    log_delta = math.log1p(epsilon) / (2 * n)
    cost, err = np.zeros(1), np.zeros(1)
    back = []
    for (c, e), k in zip(layers, kept):
        tc = (cost[:, None] + c[k][None, :]).ravel()
        te = (err[:, None] + e[k][None, :]).ravel()
        bins = np.where(tc > 0, 1 + np.floor(np.log(np.maximum(tc, lo) / lo) / log_delta), 0)
        order = np.lexsort((tc, te, bins))  # by bin, then error, then cost
        first = np.concatenate([[True], bins[order][1:] != bins[order][:-1]])
        best = order[first]  # least-error state of each bin, bins ascending
        keep = best[np.concatenate([[True], te[best][1:] < np.minimum.accumulate(te[best])[:-1]])]
        back.append((keep // len(k), k[keep % len(k)]))
        cost, err = tc[keep], te[keep]
    ratio = math.sqrt(1 + epsilon)
    kept_rows = _core.frontier_thin(cost, err, ratio)
    return cost[kept_rows], err[kept_rows]


def worst_ratio(front_c, front_e, ref_c, ref_e) -> float:
    """max over reference points x of min{c(y)/c(x) : y in front, e(y) ≤ e(x)}."""
    order = np.argsort(front_e, kind="stable")
    e_sorted = front_e[order]
    cheapest = np.minimum.accumulate(front_c[order])  # least cost among the i least-error points
    worst = 1.0
    for c, e in zip(ref_c, ref_e):
        i = np.searchsorted(e_sorted, e + 1e-12 * max(1.0, e), side="right")
        best = cheapest[i - 1] if i else math.inf
        worst = max(worst, best / c if c > 0 else 1.0)
    return worst


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--eps", type=float, nargs="+", default=[0.1, 0.01])
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    args = parser.parse_args()

    src = Arch.uniform(24, 16, 1024, 4096)
    space = LayerwiseSpace.from_source(src, head_step=1, ffn_step=64)
    rng = np.random.default_rng(0)
    imp = Importance(src, [rng.lognormal(0.0, 1.0, 16) for _ in range(24)],
                     [rng.lognormal(-3.0, 1.0, 4096) for _ in range(24)], rng.lognormal(0, 1, 1024))
    choices = [space.choices(l) for l in range(24)]
    tables = [(np.array([layer_cost(c, 1024, "flops") for c in cs]),
               np.array([imp.layer_error(l, c) for c in cs])) for l, cs in enumerate(choices)]
    print(f"space: 24 layers × {len(choices[0])} choices = 1105^24 "
          f"≈ 10^{24 * math.log10(1105):.0f} "
          f"architectures; cost FLOPs at 1×128; importance drawn log-normal (seed 0)")
    print(f"cores: {os.cpu_count()} (the table runs on one)")

    rows = []
    for eps in args.eps:
        times = []
        for _ in range(3):
            t = time.perf_counter()
            c, e, _ = _core.frontier_solve(tables, 0.0, 0.0, eps, 10**7)
            times.append(time.perf_counter() - t)
        t = time.perf_counter()
        front = frontier(space, eps, "flops", imp)
        end_to_end = time.perf_counter() - t
        t = time.perf_counter()
        nc, ne = numpy_dp(tables, eps)
        numpy_time = time.perf_counter() - t
        fine_eps = eps / 10
        t = time.perf_counter()
        rc, re_, _ = _core.frontier_solve(tables, 0.0, 0.0, fine_eps, 10**7)
        fine_time = time.perf_counter() - t
        positive = c[c > 0]
        bound = 2 * math.ceil(math.log(positive.max() / positive.min()) / math.log1p(eps)) + 1
        row = {
            "epsilon": eps, "cpp_seconds": min(times), "frontier_seconds": end_to_end,
            "numpy_seconds": numpy_time, "front_size": int(len(c)),
            "front_size_frontier": len(front), "numpy_front_size": int(len(nc)),
            "size_bound": bound, "c_max_over_c_min": float(positive.max() / positive.min()),
            "fine_epsilon": fine_eps, "fine_front_size": int(len(rc)), "fine_seconds": fine_time,
            "worst_ratio_vs_fine": worst_ratio(c, e, rc, re_),
            "numpy_worst_ratio_vs_fine": worst_ratio(nc, ne, rc, re_),
        }
        rows.append(row)

    header = ("ε", "C++ s", "frontier() s", "numpy s", "numpy/C++", "front", "bound",
              "worst ratio", "≤ 1+ε")
    print(" | ".join(header))
    for r in rows:
        print(" | ".join([f"{r['epsilon']:g}", f"{r['cpp_seconds']:.3f}",
                          f"{r['frontier_seconds']:.3f}", f"{r['numpy_seconds']:.3f}",
                          f"{r['numpy_seconds'] / r['cpp_seconds']:.1f}×", str(r["front_size"]),
                          str(r["size_bound"]), f"{r['worst_ratio_vs_fine']:.5f}",
                          str(r["worst_ratio_vs_fine"] <= 1 + r["epsilon"] + 1e-12)]))
    args.out.mkdir(parents=True, exist_ok=True)
    write_json(args.out / "frontier.json", {
        "space": "BERT-large layer-wise, 1105 choices/layer, FLOPs at 1x128",
        "importance": "log-normal draws, seed 0", "rows": rows}, indent=2)
    _plot(space, imp, args.eps, args.out / "frontier.png")
    print(f"wrote {args.out / 'frontier.json'} and {args.out / 'frontier.png'}")


def _plot(space, imp, eps_list, path: Path) -> None:
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6, 4))
    ax = fig.subplots()
    for eps in sorted(eps_list):
        front = frontier(space, eps, "flops", imp)
        ax.plot([x.cost / 1e9 for x in front], [x.error_proxy for x in front], ".-",
                markersize=3, linewidth=0.6, label=f"ε = {eps:g} ({len(front)} points)")
    ax.set_xscale("log")
    ax.set_yscale("symlog", linthresh=1)
    ax.set_ylim(bottom=0)
    ax.set_xlabel("GFLOP at 1 × 128 tokens")
    ax.set_ylabel("error proxy (summed importance removed)")
    ax.set_title("Frontier table, BERT-large layer-wise space")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)


if __name__ == "__main__":
    main()
