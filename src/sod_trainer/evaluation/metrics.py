"""Pure metric functions for evaluation (SOD_SPEC §9): average@k, unbiased pass@k, maj@k, mean ± std.

Inputs are plain Python lists, one entry per problem (a list of per-sample outcomes); no model code.
Every metric returns a fraction in [0, 1]; reports multiply by 100.
"""

from __future__ import annotations

import math
from collections.abc import Hashable, Sequence

__all__ = [
    "average_at_k",
    "pass_at_k_single",
    "pass_at_k",
    "majority_at_k_single",
    "majority_at_k",
    "mean_std",
    "format_mean_std",
]


def _check_k(k: int | None, n: int, name: str) -> int:
    if k is None:
        return n
    if k < 1:
        raise ValueError(f"{name}: k must be at least 1, got {k}.")
    if k > n:
        raise ValueError(f"{name}: k={k} is more than the {n} samples available for a problem.")
    return k


def average_at_k(correct: Sequence[Sequence[bool]], k: int | None = None) -> float:
    """The paper's metric: mean accuracy over the first ``k`` samples of each problem, averaged over problems.

    ``correct[i][j]`` is whether sample ``j`` of problem ``i`` is right; ``k=None`` uses all samples.
    """
    if not correct:
        raise ValueError("average_at_k: no problems.")
    per_problem = []
    for samples in correct:
        used = _check_k(k, len(samples), "average_at_k")
        per_problem.append(sum(bool(x) for x in samples[:used]) / used)
    return sum(per_problem) / len(per_problem)


def pass_at_k_single(n: int, c: int, k: int) -> float:
    """Unbiased pass@k for one problem with ``n`` samples of which ``c`` are right (Chen et al., 2021).

    ``1 - C(n - c, k) / C(n, k)``: the probability that a random ``k``-subset of the ``n`` samples
    holds at least one right one. Computed as a product to stay exact-ish for large ``n``.
    """
    if not 0 <= c <= n:
        raise ValueError(f"pass_at_k: need 0 <= c <= n, got c={c}, n={n}.")
    _check_k(k, n, "pass_at_k")
    if n - c < k:
        return 1.0
    product = 1.0
    for i in range(n - c + 1, n + 1):
        product *= 1.0 - k / i
    return 1.0 - product


def pass_at_k(correct: Sequence[Sequence[bool]], k: int) -> float:
    """Mean over problems of the unbiased pass@k estimate, using every sample of each problem."""
    if not correct:
        raise ValueError("pass_at_k: no problems.")
    return sum(pass_at_k_single(len(s), sum(bool(x) for x in s), k) for s in correct) / len(correct)


def majority_at_k_single(answers: Sequence[Hashable | None], correct: Sequence[bool], k: int | None = None) -> float:
    """maj@k for one problem: vote among the first ``k`` samples' answers; 1 if the winner is right.

    Samples with no answer (``None``) do not vote; with no votes at all the score is 0. A tie
    between several most-voted answers scores the fraction of tied answers that are right (the
    expected score of breaking the tie at random), so the result does not depend on sample order.
    An answer is right if the sample that gave it was judged right.
    """
    if len(answers) != len(correct):
        raise ValueError(f"maj@k: {len(answers)} answers but {len(correct)} correctness flags.")
    used = _check_k(k, len(answers), "maj@k")
    votes: dict[Hashable, int] = {}
    right: dict[Hashable, bool] = {}
    for answer, is_right in zip(answers[:used], correct[:used]):
        if answer is None:
            continue
        votes[answer] = votes.get(answer, 0) + 1
        right[answer] = right.get(answer, False) or bool(is_right)
    if not votes:
        return 0.0
    top = max(votes.values())
    winners = [answer for answer, count in votes.items() if count == top]
    return sum(right[answer] for answer in winners) / len(winners)


def majority_at_k(answers: Sequence[Sequence[Hashable | None]], correct: Sequence[Sequence[bool]], k: int | None = None) -> float:
    """Mean over problems of :func:`majority_at_k_single`."""
    if not answers:
        raise ValueError("maj@k: no problems.")
    if len(answers) != len(correct):
        raise ValueError(f"maj@k: {len(answers)} problems of answers but {len(correct)} of correctness flags.")
    return sum(majority_at_k_single(a, c, k) for a, c in zip(answers, correct)) / len(answers)


def mean_std(values: Sequence[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (n - 1 in the denominator; 0 for a single value) over seeds."""
    if not values:
        raise ValueError("mean_std: no values.")
    mean = sum(values) / len(values)
    if len(values) == 1:
        return mean, 0.0
    variance = sum((value - mean) ** 2 for value in values) / (len(values) - 1)
    return mean, math.sqrt(variance)


def format_mean_std(values: Sequence[float], scale: float = 100.0, digits: int = 2) -> str:
    """``"42.98 ± 1.20"`` (percent by default); a single seed prints just the value."""
    mean, std = mean_std(values)
    if len(values) == 1:
        return f"{mean * scale:.{digits}f}"
    return f"{mean * scale:.{digits}f} ± {std * scale:.{digits}f}"
