"""average@k, unbiased pass@k (against brute-force enumeration), maj@k, mean ± std."""

from __future__ import annotations

import itertools
import math
import random

import pytest

from sod_trainer.evaluation_metrics import (
    average_at_k,
    format_mean_std,
    majority_at_k,
    majority_at_k_single,
    mean_std,
    pass_at_k,
    pass_at_k_single,
)


def brute_force_pass_at_k(flags: list[bool], k: int) -> float:
    """Fraction of all k-subsets of the samples that contain at least one right sample."""
    subsets = list(itertools.combinations(range(len(flags)), k))
    return sum(any(flags[i] for i in subset) for subset in subsets) / len(subsets)


@pytest.mark.parametrize("n", [1, 2, 5, 8, 10])
def test_pass_at_k_equals_brute_force_enumeration(n):
    rng = random.Random(n)
    for _ in range(5):
        flags = [rng.random() < 0.3 for _ in range(n)]
        for k in range(1, n + 1):
            assert pass_at_k_single(n, sum(flags), k) == pytest.approx(brute_force_pass_at_k(flags, k), abs=1e-12)


def test_pass_at_k_edge_cases_and_closed_form():
    assert pass_at_k_single(5, 0, 3) == 0.0
    assert pass_at_k_single(5, 5, 1) == 1.0
    assert pass_at_k_single(5, 3, 3) == 1.0  # fewer than k wrong samples
    assert pass_at_k_single(10, 3, 1) == pytest.approx(0.3)  # pass@1 is the accuracy
    assert pass_at_k_single(32, 4, 8) == pytest.approx(1 - math.comb(28, 8) / math.comb(32, 8))
    assert pass_at_k_single(1000, 1, 10) == pytest.approx(0.01)  # large n stays stable
    with pytest.raises(ValueError):
        pass_at_k_single(4, 5, 1)
    with pytest.raises(ValueError, match="k=5"):
        pass_at_k_single(4, 1, 5)


def test_pass_at_k_averages_over_problems():
    correct = [[True, False, False, False], [False] * 4, [True] * 4]
    assert pass_at_k(correct, 1) == pytest.approx((0.25 + 0 + 1) / 3)
    assert pass_at_k(correct, 2) == pytest.approx((0.5 + 0 + 1) / 3)


def test_average_at_k_is_mean_accuracy_over_samples_then_problems():
    correct = [[True, False, True, True], [False, False, False, True]]
    assert average_at_k(correct) == pytest.approx((0.75 + 0.25) / 2)
    assert average_at_k(correct, k=2) == pytest.approx((0.5 + 0.0) / 2)  # the first k samples
    assert average_at_k([[True], [True, False]]) == pytest.approx(0.75)  # per-problem mean first
    with pytest.raises(ValueError):
        average_at_k(correct, k=5)
    with pytest.raises(ValueError):
        average_at_k([])


def test_majority_at_k_votes_among_answers():
    # 3 votes for "12" (right), 2 for "7" (wrong): the majority answer is right.
    assert majority_at_k_single(["12", "7", "12", "7", "12"], [True, False, True, False, True]) == 1.0
    # The majority is wrong though one sample is right.
    assert majority_at_k_single(["7", "7", "12"], [False, False, True]) == 0.0
    # Unanswered samples do not vote: one right answer against two blanks wins.
    assert majority_at_k_single([None, "12", None], [False, True, False]) == 1.0
    assert majority_at_k_single([None, None], [False, False]) == 0.0
    # First k samples only.
    assert majority_at_k_single(["7", "12", "12", "12"], [False, True, True, True], k=1) == 0.0


def test_majority_at_k_tie_scores_expected_value_independent_of_order():
    assert majority_at_k_single(["12", "7"], [True, False]) == 0.5
    assert majority_at_k_single(["7", "12"], [False, True]) == 0.5
    assert majority_at_k_single(["a", "b", "c", "a", "b", "c"], [True, False, False] * 2) == pytest.approx(1 / 3)


def test_majority_at_k_averages_over_problems_and_checks_shapes():
    answers = [["1", "1", "2"], ["3", "4", "4"]]
    correct = [[True, True, False], [True, False, False]]
    assert majority_at_k(answers, correct) == 0.5
    with pytest.raises(ValueError):
        majority_at_k([["1"]], [[True, False]])


def test_mean_std_over_seeds():
    mean, std = mean_std([0.40, 0.42, 0.44])
    assert mean == pytest.approx(0.42)
    assert std == pytest.approx(0.02)  # sample std, n - 1
    assert mean_std([0.5]) == (0.5, 0.0)
    assert format_mean_std([0.40, 0.42, 0.44]) == "42.00 ± 2.00"
    assert format_mean_std([0.4298]) == "42.98"
    with pytest.raises(ValueError):
        mean_std([])
