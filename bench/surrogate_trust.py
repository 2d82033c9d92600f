"""Can the short surrogate be trusted? Rank correlation of short-run and 10× longer errors.

Takes 5 points spread over the front of a finished `bort search` (its front.json), distils each
from all-MiniLM-L6-v2 for the surrogate budget and for 10× as many steps, and reports the
Spearman rank correlation between the two sets of held-out distillation losses.

    python bench/surrogate_trust.py --front bench/results/search-minilm/front.json --steps 30
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from bort import Arch
from bort.assets import default_source
from bort.costs import importance
from bort.data import default_corpus
from bort.distill import Corpus, surrogate_error
from bort.io import write_json
from bort.metrics import spearman
from bort.model import BortModel


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--front", type=Path, required=True)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--points", type=int, default=5)
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    args = parser.parse_args()
    front = json.loads(args.front.read_text())
    rows = front["evaluated"]
    picks = [rows[round(i * (len(rows) - 1) / (args.points - 1))] for i in range(args.points)]
    teacher = BortModel.from_pretrained(default_source())
    corpus = Corpus(default_corpus())
    imp = importance(teacher, corpus.head(64))
    results = []
    for row in picks:
        arch = Arch.from_config(row["arch"])
        t = time.perf_counter()
        short = surrogate_error(arch, teacher, corpus, args.steps, importance=imp)
        long = surrogate_error(arch, teacher, corpus, 10 * args.steps, importance=imp)
        results.append({"describe": row["describe"], "params": row["params"], "short": short,
                        "long": long, "seconds": time.perf_counter() - t})
        print(f"{row['describe'][:70]:70} {row['params']:>11,}  {args.steps} steps {short:.4f}  "
              f"{10 * args.steps} steps {long:.4f}", flush=True)
    rho = spearman([r["short"] for r in results], [r["long"] for r in results])
    print(f"Spearman rank correlation, {args.steps} vs {10 * args.steps} steps: {rho:.3f}")
    write_json(args.out / "surrogate_trust.json",
               {"steps": args.steps, "spearman": rho, "points": results}, indent=2)


if __name__ == "__main__":
    main()
