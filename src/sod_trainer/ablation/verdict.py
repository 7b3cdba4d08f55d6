"""What the ablation has shown so far, in one small JSON the demo ships and prints (issue 14, item 5).

:func:`verdict` reads a grid's summary (``report.summarize_grid``) and says, per world and arm, whether SOD is ahead
(the 95 % interval of ``arm - sod`` lies below 0), behind (above 0) or undecided. The shipped copy
(``toy/assets/ablation_verdict.json``) is checked by a test against the committed results it names, so the demo
never states more than the table does.
"""

from __future__ import annotations

import json
from importlib import resources
from typing import Any

__all__ = ["verdict", "load_shipped_verdict", "answer_lines"]


def verdict(summary: dict[str, Any], *, source: str, settings: dict[str, Any] | None = None,
            note: str | None = None) -> dict[str, Any]:
    """Per world and arm: the difference to ``sod`` (points), its interval, seeds, and ``sod_ahead`` /
    ``sod_behind`` / ``undecided``; ``source`` names the table it comes from, ``note`` is said after the answer."""
    worlds: dict[str, Any] = {}
    for world, entry in summary.items():
        arms = {}
        for arm, a in entry["arms"].items():
            diff = a.get("difference_to_sod")
            if diff is None:
                continue
            state = {"ahead": "sod_behind", "behind": "sod_ahead", "undecided": "undecided"}[_state(diff)]
            arms[arm] = {"minus_sod_points": round(100 * diff["estimate"], 1),
                         "interval_points": [round(100 * diff["low"], 1), round(100 * diff["high"], 1)],
                         "seeds": a["seeds"], "verdict": state}
            versus_uniform = a.get("difference_to_uniform")
            if versus_uniform is not None:  # the arm against uniform OPD, the baseline the claim is about
                arms[arm].update({
                    "minus_uniform_points": round(100 * versus_uniform["estimate"], 1),
                    "interval_vs_uniform_points": [round(100 * versus_uniform["low"], 1),
                                                   round(100 * versus_uniform["high"], 1)],
                    "verdict_vs_uniform": _state(versus_uniform)})
        worlds[world] = arms
    result = {"source": source, "settings": settings or {}, "worlds": worlds}
    if note:
        result["note"] = note
    return result


def _state(diff: dict[str, float]) -> str:
    """``ahead`` / ``behind`` when the whole 95 % interval of ``arm - reference`` is above / below 0."""
    return "ahead" if diff["low"] > 0 else "behind" if diff["high"] < 0 else "undecided"


def load_shipped_verdict() -> dict[str, Any] | None:
    """The verdict shipped with the package, or ``None`` when there is none."""
    try:
        text = resources.files("sod_trainer.toy").joinpath("assets/ablation_verdict.json").read_text()
    except (FileNotFoundError, ModuleNotFoundError):
        return None
    return json.loads(text)


def answer_lines(shipped: dict[str, Any] | None) -> list[str]:
    """Plain sentences for the demo: where SOD beat uniform OPD beyond the interval, or that no world has shown it."""
    if not shipped or not shipped.get("worlds"):
        return ["Does SOD beat uniform OPD? No ablation result ships with this version; run `sod ablate` "
                "(docs/ablation.md)."]
    ahead, other = [], []
    for world, arms in shipped["worlds"].items():
        uniform = arms.get("uniform")
        if uniform is None:
            continue
        low, high = uniform["interval_points"]
        text = (f"world '{world}': uniform - sod = {uniform['minus_sod_points']:+.1f} points "
                f"[{low:+.1f}, {high:+.1f}], {uniform['seeds']} seeds")
        if uniform["verdict"] == "sod_behind":
            text += ", SOD behind beyond the interval"
        (ahead if uniform["verdict"] == "sod_ahead" else other).append(text)
    note = [shipped["note"]] if shipped.get("note") else []  # e.g. a sitting still under way
    others = _other_arm_lines(shipped["worlds"])
    if ahead:
        return ["Does SOD beat uniform OPD? The ablation shows it beyond the 95 % interval in " + "; ".join(ahead)
                + f" ({shipped['source']})."] + others + note
    return ["Does SOD beat uniform OPD? Not shown: the ablation has found no world where SOD is ahead beyond the "
            "95 % interval (" + "; ".join(other) + "). The demo trains SOD alone unless asked (--compare uniform trains "
            f"both from one cold start); the table: {shipped['source']}."] + others + note


# arms that are this project's readings, not the paper's objectives: named as such wherever a result is said
OURS = {"sod_median_ref": "sod_median_ref [ours, not the paper's rule]"}


def _other_arm_lines(worlds: dict[str, Any]) -> list[str]:
    """The other arms whose interval excludes 0, against uniform OPD and against SOD (undecided ones are left to
    the table)."""
    def text(world, arm, points, interval, seeds):
        return (f"{OURS.get(arm, arm)} in world '{world}' {points:+.1f} points "
                f"[{interval[0]:+.1f}, {interval[1]:+.1f}], {seeds} seeds")

    over_uniform, over_sod, under_sod = [], [], []
    for world, arms in worlds.items():
        for arm, a in arms.items():
            if arm == "uniform":
                continue
            if a.get("verdict_vs_uniform") == "ahead":
                over_uniform.append(text(world, arm, a["minus_uniform_points"], a["interval_vs_uniform_points"],
                                         a["seeds"]))
            if a["verdict"] != "undecided":
                (over_sod if a["verdict"] == "sod_behind" else under_sod).append(
                    text(world, arm, a["minus_sod_points"], a["interval_points"], a["seeds"]))
    lines = []
    if over_uniform:
        lines.append("Ahead of uniform OPD beyond the interval: " + "; ".join(over_uniform) + ".")
    if over_sod:
        lines.append("Ahead of SOD beyond the interval: " + "; ".join(over_sod) + ".")
    if under_sod:
        lines.append("Behind SOD beyond the interval: " + "; ".join(under_sod) + ".")
    return lines
