"""The ablation's verdict: states from intervals, and the shipped copy true to the committed results."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from sod_trainer.ablation.verdict import answer_lines, load_shipped_verdict, verdict

ROOT = Path(__file__).resolve().parents[1]


def _summary(low, high, estimate):
    return {"w": {"arms": {"sod": {"seeds": 3},
                           "uniform": {"seeds": 3, "difference_to_sod": {"estimate": estimate, "low": low,
                                                                          "high": high}}}}}


@pytest.mark.parametrize("low, high, state", [(-0.05, -0.001, "sod_ahead"), (0.001, 0.04, "sod_behind"),
                                              (-0.016, 0.029, "undecided"), (-0.02, 0.0, "undecided")])
def test_verdict_is_sod_ahead_only_when_the_whole_interval_is_below_zero(low, high, state):
    v = verdict(_summary(low, high, (low + high) / 2), source="t")
    assert v["worlds"]["w"]["uniform"]["verdict"] == state
    assert "sod" not in v["worlds"]["w"]  # the reference has no difference to itself


def test_answer_names_the_world_where_sod_is_ahead_and_says_not_shown_otherwise():
    ahead = answer_lines(verdict(_summary(-0.05, -0.01, -0.03), source="table"))
    assert "shows it beyond the 95 % interval in world 'w': uniform - sod = -3.0 points [-5.0, -1.0]" in ahead[0]
    undecided = answer_lines(verdict(_summary(-0.016, 0.029, 0.006), source="table"))
    assert undecided[0].startswith("Does SOD beat uniform OPD? Not shown") and "+0.6 points [-1.6, +2.9]" in undecided[0]
    behind = answer_lines(verdict(_summary(0.01, 0.05, 0.03), source="table"))
    assert behind[0].startswith("Does SOD beat uniform OPD? Not shown")
    assert "+3.0 points [+1.0, +5.0], 3 seeds, SOD behind beyond the interval" in behind[0]
    assert "SOD behind" not in undecided[0]
    assert "No ablation result ships" in answer_lines(None)[0]
    noted = answer_lines(verdict(_summary(-0.016, 0.029, 0.006), source="table", note="Sitting 2 is under way."))
    assert noted[1] == "Sitting 2 is under way."


def test_shipped_verdict_is_recomputed_from_the_committed_results_it_names():
    shipped = load_shipped_verdict()
    path = ROOT / shipped["source"].split("(")[1].rstrip(")")
    committed = json.loads(path.read_text())
    assert verdict(committed["summary"], source=shipped["source"], settings=shipped["settings"],
                   note=shipped.get("note")) == shipped
    for key, value in shipped["settings"].items():
        assert committed["settings"][key] == value


def _arm(minus_sod, minus_uniform=None, seeds=5):
    entry = {"seeds": seeds, "difference_to_sod": {"estimate": sum(minus_sod) / 2, "low": minus_sod[0],
                                                   "high": minus_sod[1]}}
    if minus_uniform is not None:
        entry["difference_to_uniform"] = {"estimate": sum(minus_uniform) / 2, "low": minus_uniform[0],
                                          "high": minus_uniform[1]}
    return entry


def test_other_arms_are_reported_against_uniform_and_sod_only_beyond_the_interval():
    summary = {"flaky": {"arms": {
        "sod": {"seeds": 5},
        "uniform": _arm((-0.053, 0.015)),
        "iw_opd": _arm((-0.040, 0.033), (-0.01, 0.03)),              # undecided against both: not named
        "sod_median_ref": _arm((-0.009, 0.035), (0.009, 0.056)),      # ahead of uniform only
        "mask_after_error": _arm((0.009, 0.037), (-0.01, 0.02), 3),   # ahead of SOD only
        "grpo": _arm((-0.30, -0.20), (-0.28, -0.18), 3),              # behind SOD (and uniform)
    }}}
    v = verdict(summary, source="table")
    arms = v["worlds"]["flaky"]
    assert arms["sod_median_ref"]["verdict_vs_uniform"] == "ahead"
    assert arms["sod_median_ref"]["interval_vs_uniform_points"] == [0.9, 5.6]
    assert arms["iw_opd"]["verdict_vs_uniform"] == "undecided" and arms["grpo"]["verdict_vs_uniform"] == "behind"
    assert "verdict_vs_uniform" not in arms["uniform"]
    lines = answer_lines(v)
    assert lines[0].startswith("Does SOD beat uniform OPD? Not shown")
    assert lines[1] == ("Ahead of uniform OPD beyond the interval: sod_median_ref [ours, not the paper's rule] in world "
                        "'flaky' +3.2 points [+0.9, +5.6], 5 seeds.")
    assert lines[2] == "Ahead of SOD beyond the interval: mask_after_error in world 'flaky' +2.3 points [+0.9, +3.7], 3 seeds."
    assert lines[3].startswith("Behind SOD beyond the interval: grpo in world 'flaky' -25.0 points [-30.0, -20.0]")
    assert len(lines) == 4 and not any("iw_opd" in line for line in lines)
