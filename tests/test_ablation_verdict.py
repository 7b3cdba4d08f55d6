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
