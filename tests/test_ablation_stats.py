"""The ablation's statistics against hand-computed values."""

from __future__ import annotations

import itertools
import math

import pytest

from sod_trainer.ablation.stats import mean_std, paired_difference, percentile, run_accuracy


def test_mean_std_is_the_unbiased_one():
    mean, std = mean_std([0.5, 0.7, 0.9])
    assert mean == pytest.approx(0.7)
    assert std == pytest.approx(math.sqrt((0.04 + 0 + 0.04) / 2))
    assert mean_std([0.3]) == (0.3, 0.0)


def test_run_accuracy_is_avg_at_k_over_problems():
    # 3 problems, 4 samples each: 4/4, 1/4, 0/4 correct
    assert run_accuracy([1.0, 0.25, 0.0]) == pytest.approx(1.25 / 3)


def test_percentile_interpolates_between_order_statistics():
    assert percentile([0.0, 1.0, 2.0, 3.0], 0.5) == pytest.approx(1.5)
    assert percentile([0.0, 1.0, 2.0, 3.0], 0.0) == 0.0 and percentile([0.0, 1.0, 2.0, 3.0], 1.0) == 3.0
    assert percentile([5.0], 0.3) == 5.0


def test_point_estimate_is_the_mean_of_per_seed_differences():
    arm = [[1.0, 0.5, 0.0, 1.0], [0.75, 0.75, 0.25, 0.25]]
    ref = [[0.5, 0.5, 0.0, 0.5], [1.0, 0.25, 0.25, 0.0]]
    # seed 0: 2.5/4 - 1.5/4 = 0.25; seed 1: 2.0/4 - 1.5/4 = 0.125
    got = paired_difference(arm, ref, resamples=200)
    assert got.estimate == pytest.approx((0.25 + 0.125) / 2)


def test_no_noise_gives_a_point_interval():
    arm = [[0.75] * 5, [0.75] * 5, [0.75] * 5]
    ref = [[0.5] * 5, [0.5] * 5, [0.5] * 5]
    got = paired_difference(arm, ref, resamples=300)
    assert (got.estimate, got.low, got.high) == pytest.approx((0.25, 0.25, 0.25))
    assert got.excludes_zero()


def test_seed_level_interval_matches_the_exact_bootstrap_distribution():
    # one problem per seed: only the seed draw varies. Seeds' differences [0, 0, 1]: the bootstrap mean over 3
    # draws takes the values k/3 (k = number of draws of the 1) with binomial(3, 1/3) probabilities.
    arm, ref = [[0.0], [0.0], [1.0]], [[0.0], [0.0], [0.0]]
    exact = sorted(sum(c) / 3 for c in itertools.product([0.0, 0.0, 1.0], repeat=3))  # 27 equally likely draws
    got = paired_difference(arm, ref, resamples=20000, seed=1)
    assert got.estimate == pytest.approx(1 / 3)
    assert got.low == pytest.approx(percentile(exact, 0.025), abs=1e-9)  # P(k = 0) = 8/27 > 2.5 %: low is 0
    assert got.high == pytest.approx(1.0)  # P(k = 3) = 1/27 = 3.7 % > 2.5 %: the top is reached


def test_problem_level_noise_widens_the_interval_even_with_one_seed():
    # one seed; the arm wins on half of the problems and ties on the rest: the difference is 0.5 on average,
    # and resampling problems gives an interval around it that a seeds-only bootstrap (one seed) would miss
    arm, ref = [[1.0, 0.0] * 20], [[0.0, 0.0] * 20]
    got = paired_difference(arm, ref, resamples=4000, seed=2)
    assert got.estimate == pytest.approx(0.5)
    # the mean of 40 Bernoulli(0.5) draws: std 0.079, a 95 % interval of about +-0.155
    assert 0.30 < got.low < 0.40 and 0.60 < got.high < 0.70


def test_mismatched_problems_are_refused():
    with pytest.raises(ValueError, match="same problems"):
        paired_difference([[1.0, 0.0]], [[1.0]])
    with pytest.raises(ValueError, match="number of seeds"):
        paired_difference([[1.0]], [[1.0], [0.0]])


def test_the_table_warns_that_one_seed_cannot_decide():
    from sod_trainer.ablation.report import markdown_table, summarize_grid

    def run(arm, seed, per_problem):
        summary = {"tool_failures_per_trajectory": 0.5, "accuracy_with_tool_error": None, "share_with_tool_error": 0.0}
        return {"world": "w", "arm": arm, "seed": seed, "curve": [], "eval": {
            "per_problem": per_problem, "accuracy": sum(per_problem) / len(per_problem), "summary": summary}}

    settings = {"worlds": ["w"], "arms": ["sod", "uniform"], "seeds": [0], "train_steps": 1, "prompts_per_step": 1,
                "num_generations": 1, "eval_problems": 4, "eval_samples": 1}
    grid = {"settings": settings, "runs": [run("sod", 0, [1.0, 1.0, 1.0, 0.0]), run("uniform", 0, [0.0] * 4)]}
    table = markdown_table(grid, summarize_grid(grid, resamples=200))
    assert "| `uniform` | 0.0 ± 0.0 | -75.0 [" in table
    assert "too narrow to decide anything" in table
    grid["settings"] = {**settings, "seeds": [0, 1]}
    grid["runs"] += [run("sod", 1, [1.0, 0.0, 1.0, 0.0]), run("uniform", 1, [0.0, 0.0, 1.0, 0.0])]
    assert "too narrow" not in markdown_table(grid, summarize_grid(grid, resamples=200))


def test_every_arm_is_also_paired_with_uniform():
    from sod_trainer.ablation.report import markdown_table, summarize_grid

    def run(arm, seed, per_problem):
        summary = {"tool_failures_per_trajectory": 0.0, "accuracy_with_tool_error": None, "share_with_tool_error": 0.0}
        return {"world": "w", "arm": arm, "seed": seed, "curve": [], "eval": {
            "per_problem": per_problem, "accuracy": sum(per_problem) / len(per_problem), "summary": summary}}

    settings = {"worlds": ["w"], "arms": ["sod", "uniform", "decay"], "seeds": [0, 1], "train_steps": 1,
                "prompts_per_step": 1, "num_generations": 1, "eval_problems": 4, "eval_samples": 1}
    grid = {"settings": settings, "runs": [
        run("sod", 0, [1.0, 1.0, 0.0, 0.0]), run("sod", 1, [1.0, 0.0, 0.0, 0.0]),
        run("uniform", 0, [1.0, 0.0, 0.0, 0.0]), run("uniform", 1, [0.0, 0.0, 0.0, 0.0]),
        run("decay", 0, [1.0, 1.0, 1.0, 1.0]), run("decay", 1, [1.0, 1.0, 0.5, 0.0])]}
    arms = summarize_grid(grid, resamples=200)["w"]["arms"]
    # hand-computed: mean over seeds of acc(arm) - acc(uniform): sod (0.50-0.25 + 0.25-0) / 2, decay (0.75 + 0.625) / 2
    assert arms["sod"]["difference_to_uniform"]["estimate"] == pytest.approx(0.25)
    assert arms["decay"]["difference_to_uniform"]["estimate"] == pytest.approx(0.6875)
    assert arms["decay"]["difference_to_sod"]["estimate"] == pytest.approx(0.4375)
    assert "difference_to_uniform" not in arms["uniform"]
    table = markdown_table(grid, summarize_grid(grid, resamples=200))
    assert "| `decay` | 81.2 ± 26.5 | +43.8 [" in table and "| minus `uniform`, points" in table
    row = next(line for line in table.splitlines() if line.startswith("| `decay`"))
    assert row.split(" | ")[3].startswith("+68.8 [")
