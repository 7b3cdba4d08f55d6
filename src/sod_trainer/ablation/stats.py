"""Statistics of an ablation grid: mean and spread over seeds, paired differences with a two-level bootstrap.

A run is one (world, arm, seed): a student trained from that seed's cold start and evaluated on the same held-out
problems as every other arm of the seed, several samples per problem. Its accuracy is the mean over problems of
the share of correct samples. Two kinds of noise move a difference between arms: the seed (cold start, training
and sampling) and the evaluation's finite sample of problems. :func:`paired_difference` resamples both: seeds with
replacement, then, within each drawn seed, problems with replacement — the same problems for both arms, because the
arms of one seed are evaluated on the same problems (a paired design).
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence
from dataclasses import dataclass

__all__ = ["Interval", "mean_std", "run_accuracy", "paired_difference", "percentile"]


@dataclass(frozen=True)
class Interval:
    """A point estimate with a two-sided percentile interval."""

    estimate: float
    low: float
    high: float
    level: float = 0.95

    def excludes_zero(self) -> bool:
        return self.low > 0 or self.high < 0

    def as_dict(self) -> dict[str, float]:
        return {"estimate": self.estimate, "low": self.low, "high": self.high, "level": self.level}


def mean_std(values: Sequence[float]) -> tuple[float, float]:
    """Mean and unbiased standard deviation (0 for a single value)."""
    n = len(values)
    if n == 0:
        raise ValueError("mean_std of no values")
    mean = sum(values) / n
    if n == 1:
        return mean, 0.0
    return mean, math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1))


def run_accuracy(per_problem: Sequence[float]) -> float:
    """A run's accuracy: the mean over problems of the share of correct samples (avg@k)."""
    if not per_problem:
        raise ValueError("a run with no evaluated problems")
    return sum(per_problem) / len(per_problem)


def percentile(sorted_values: Sequence[float], q: float) -> float:
    """The ``q`` quantile (0..1) of already sorted values, linear interpolation between order statistics."""
    if not sorted_values:
        raise ValueError("percentile of no values")
    position = q * (len(sorted_values) - 1)
    low = math.floor(position)
    high = min(low + 1, len(sorted_values) - 1)
    return sorted_values[low] + (sorted_values[high] - sorted_values[low]) * (position - low)


def paired_difference(
    arm: Sequence[Sequence[float]],
    reference: Sequence[Sequence[float]],
    *,
    resamples: int = 2000,
    level: float = 0.95,
    seed: int = 0,
) -> Interval:
    """Mean over seeds of ``accuracy(arm) - accuracy(reference)``, with a seeds-then-problems bootstrap interval.

    ``arm[s][p]`` and ``reference[s][p]`` are the share of correct samples on problem ``p`` for seed ``s``; both
    arms of a seed must cover the same problems. Each bootstrap replicate draws the seeds with replacement, then for
    each drawn seed draws the problems with replacement (one draw, used for both arms), and averages the seeds'
    differences; the interval is the replicates' percentile interval.
    """
    if len(arm) != len(reference) or not arm:
        raise ValueError(f"paired_difference needs the same non-zero number of seeds, got {len(arm)} and "
                         f"{len(reference)}")
    differences: list[list[float]] = []
    for s, (a, r) in enumerate(zip(arm, reference)):
        if len(a) != len(r) or not a:
            raise ValueError(f"seed {s}: the two arms were evaluated on {len(a)} and {len(r)} problems; a paired "
                             "difference needs the same problems")
        differences.append([x - y for x, y in zip(a, r)])
    estimate = sum(sum(d) / len(d) for d in differences) / len(differences)
    rng = random.Random(seed)
    replicates = []
    num_seeds = len(differences)
    for _ in range(resamples):
        total = 0.0
        for _ in range(num_seeds):
            d = differences[rng.randrange(num_seeds)]
            total += sum(d[rng.randrange(len(d))] for _ in range(len(d))) / len(d)
        replicates.append(total / num_seeds)
    replicates.sort()
    tail = (1.0 - level) / 2
    return Interval(estimate, percentile(replicates, tail), percentile(replicates, 1 - tail), level)
