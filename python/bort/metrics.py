"""Task metrics in numpy (torch-free: the runtime's evaluation uses them too).

Classification: accuracy, F1 (the positive class for binary tasks, macro-averaged otherwise) and
Matthews' correlation (its multi-class form). Regression: Pearson and Spearman correlation;
`spearman` is bort's one rank correlation (the search's importance and surrogate checks use it
too).
"""

from __future__ import annotations

from math import exp, lgamma, log

import numpy as np

__all__ = ["accuracy", "f1", "mcc", "pearson", "spearman", "kendall_tau", "classification_metrics",
           "regression_metrics", "mcnemar", "paired_bootstrap", "correct_string", "correct_of"]

#: Resamples of the paired bootstrap, and the confidence level of its interval.
BOOTSTRAP_ROUNDS, CONFIDENCE = 10_000, 0.95


def _pair(pred, gold) -> tuple[np.ndarray, np.ndarray]:
    pred, gold = np.asarray(pred), np.asarray(gold)
    if pred.shape != gold.shape or pred.ndim != 1:
        raise ValueError(f"predictions {pred.shape} and labels {gold.shape} must be equal 1-D")
    if len(gold) == 0:
        raise ValueError("no examples to score")
    return pred, gold


def accuracy(pred, gold) -> float:
    pred, gold = _pair(pred, gold)
    return float(np.mean(pred == gold))


def f1(pred, gold, num_labels: int = 2) -> float:
    """F1 of class 1 when ``num_labels == 2``, else the macro average over classes."""
    pred, gold = _pair(pred, gold)
    classes = [1] if num_labels == 2 else range(num_labels)
    scores = []
    for c in classes:
        tp = np.sum((pred == c) & (gold == c))
        denom = np.sum(pred == c) + np.sum(gold == c)
        scores.append(2 * tp / denom if denom else 0.0)
    return float(np.mean(scores))


def mcc(pred, gold, num_labels: int = 2) -> float:
    """Matthews' correlation coefficient (Gorodkin's multi-class form); 0 when undefined."""
    pred, gold = _pair(pred, gold)
    k = max(num_labels, int(pred.max()) + 1, int(gold.max()) + 1)
    c = np.zeros((k, k))
    np.add.at(c, (gold.astype(int), pred.astype(int)), 1)
    t, p, n, s = c.sum(1), c.sum(0), np.trace(c), c.sum()
    denom = np.sqrt(s * s - p @ p) * np.sqrt(s * s - t @ t)
    return float((n * s - t @ p) / denom) if denom else 0.0


def pearson(pred, gold) -> float:
    """Pearson's correlation; 0 when either side is constant."""
    pred, gold = _pair(pred, gold)
    a, b = pred - pred.mean(), gold - gold.mean()
    denom = np.sqrt((a * a).sum() * (b * b).sum())
    return float((a * b).sum() / denom) if denom else 0.0


def _ranks(x: np.ndarray) -> np.ndarray:
    """Ranks with ties averaged."""
    order = np.argsort(x, kind="stable")
    ranks = np.empty(len(x))
    ranks[order] = np.arange(len(x))
    _, inverse, counts = np.unique(x, return_inverse=True, return_counts=True)
    sums = np.bincount(inverse, weights=ranks)
    return sums[inverse] / counts[inverse]


def spearman(pred, gold) -> float:
    """Spearman's rank correlation (Pearson's on ranks, ties given their average rank); 0 when
    either side is constant. Takes any two equal-length 1-D sequences of numbers."""
    pred, gold = _pair(pred, gold)
    return pearson(_ranks(pred.astype(float)), _ranks(gold.astype(float)))


def kendall_tau(a, b) -> float:
    """Kendall's τ-b: (concordant − discordant pairs) / sqrt of the pairs untied on each side;
    0 when either side is constant. O(n²), for the few points a rank check compares.

    Example:
        >>> kendall_tau([1, 2, 3, 4], [1, 3, 2, 4])
        0.6666666666666666
    """
    a, b = _pair(a, b)
    i, j = np.triu_indices(len(a), k=1)
    da, db = np.sign(a[i] - a[j]), np.sign(b[i] - b[j])
    denom = np.sqrt(np.count_nonzero(da) * np.count_nonzero(db))
    return float((da * db).sum() / denom) if denom else 0.0


def classification_metrics(pred, gold, num_labels: int) -> dict[str, float]:
    return {"accuracy": accuracy(pred, gold), "f1": f1(pred, gold, num_labels),
            "mcc": mcc(pred, gold, num_labels)}


def regression_metrics(pred, gold) -> dict[str, float]:
    return {"pearson": pearson(pred, gold), "spearman": spearman(pred, gold)}


def correct_string(pred, gold) -> str:
    """Which examples ``pred`` got right, as a string of 0s and 1s (compact in JSON; paired
    tests between models read it back with `correct_of`).

    Example:
        >>> correct_string([1, 0, 1], [1, 1, 1])
        '101'
    """
    return "".join("01"[int(ok)] for ok in np.asarray(pred) == np.asarray(gold))


def correct_of(correct: str) -> np.ndarray:
    """The 0/1 array a `correct_string` holds."""
    return np.array([int(ch) for ch in correct], dtype=np.int64)


def mcnemar(correct_a, correct_b) -> dict[str, float]:
    """Exact two-sided McNemar test of two classifiers scored on the same examples.

    ``correct_a``/``correct_b`` are booleans per example. Returns the discordant counts
    (``a_only``: a right and b wrong, ``b_only``) and the p-value of the binomial test on them.
    """
    a, b = _pair(np.asarray(correct_a, bool), np.asarray(correct_b, bool))
    a_only, b_only = int(np.sum(a & ~b)), int(np.sum(~a & b))
    n, k = a_only + b_only, min(a_only, b_only)
    if n == 0:
        return {"a_only": 0, "b_only": 0, "p_value": 1.0}
    # P(X <= k) for X ~ Binomial(n, 1/2), in log space so large n does not overflow.
    logs = [lgamma(n + 1) - lgamma(i + 1) - lgamma(n - i + 1) - n * log(2) for i in range(k + 1)]
    top = max(logs)
    tail = exp(top) * sum(exp(v - top) for v in logs)
    return {"a_only": a_only, "b_only": b_only, "p_value": float(min(1.0, 2 * tail))}


def paired_bootstrap(correct_a, correct_b, *, rounds: int = BOOTSTRAP_ROUNDS,
                     confidence: float = CONFIDENCE, seed: int = 0) -> dict[str, float]:
    """Accuracy of a minus accuracy of b on the same examples, with a paired bootstrap interval:
    the examples are resampled with replacement (both models' results together) ``rounds``
    times, and the interval holds the middle ``confidence`` of the resampled differences.

    Example:
        >>> r = paired_bootstrap([1, 1, 1, 0] * 50, [1, 0, 1, 0] * 50)
        >>> r["difference"], r["low"] < 0.25 < r["high"]
        (0.25, True)
    """
    a, b = _pair(np.asarray(correct_a, float), np.asarray(correct_b, float))
    rng = np.random.default_rng(seed)
    diff = a - b
    block = max(1, 2_000_000 // len(diff))  # resamples at a time: memory stays ~16 MB
    samples = np.concatenate([diff[rng.integers(0, len(diff), (min(block, rounds - i),
                                                               len(diff)))].mean(axis=1)
                              for i in range(0, rounds, block)])
    tail = (1 - confidence) / 2
    low, high = np.quantile(samples, [tail, 1 - tail])
    return {"difference": float(diff.mean()), "low": float(low), "high": float(high),
            "confidence": confidence, "n": int(len(diff))}
