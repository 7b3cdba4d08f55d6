"""The ablation's report: ``ablation.json`` (every run and the statistics), ``ablation.md`` and plots."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from .stats import mean_std, paired_difference

__all__ = ["summarize_grid", "write_report", "markdown_table"]


def _mean(values):
    values = [v for v in values if v is not None and not (isinstance(v, float) and math.isnan(v))]
    return sum(values) / len(values) if values else None


def summarize_grid(grid: dict[str, Any], *, resamples: int = 2000) -> dict[str, Any]:
    """Per world and arm: accuracy mean and std over seeds, the paired difference to ``sod`` (and, when the grid
    has a ``uniform`` arm, to ``uniform``) with its 95 % interval (seeds, then problems), tool failures per
    trajectory, and the recovery rate (correct answers among trajectories that hit a tool error)."""
    settings = grid["settings"]
    by_key = {(r["world"], r["arm"], r["seed"]): r for r in grid["runs"]}
    summary: dict[str, Any] = {}
    for world in settings["worlds"]:
        arms: dict[str, Any] = {}
        per_problem = {arm: [by_key[(world, arm, s)]["eval"]["per_problem"] for s in settings["seeds"]]
                       for arm in settings["arms"]}
        for arm in settings["arms"]:
            runs = [by_key[(world, arm, s)] for s in settings["seeds"]]
            accuracies = [r["eval"]["accuracy"] for r in runs]
            mean, std = mean_std(accuracies)
            entry = {
                "seeds": len(runs), "accuracy_mean": mean, "accuracy_std": std, "accuracies": accuracies,
                "tool_failures_per_trajectory": _mean([r["eval"]["summary"]["tool_failures_per_trajectory"]
                                                       for r in runs]),
                "recovery_rate": _mean([r["eval"]["summary"]["accuracy_with_tool_error"] for r in runs]),
                "share_with_tool_error": _mean([r["eval"]["summary"]["share_with_tool_error"] for r in runs]),
                # the flaky tool's injected failures only (None for runs evaluated before this was recorded)
                "transient_recovery_rate": _mean([r["eval"]["summary"].get("accuracy_with_transient_error")
                                                  for r in runs]),
            }
            if arm != "sod":
                entry["difference_to_sod"] = paired_difference(per_problem[arm], per_problem["sod"],
                                                               resamples=resamples).as_dict()
            diagnostics = [r["eval"].get("diagnostics") for r in runs if r["eval"].get("diagnostics")]
            entry["d_after_clean"] = _mean([d["by_context"]["after_clean"]["d"] for d in diagnostics])
            entry["d_after_error"] = _mean([d["by_context"]["after_error"]["d"] for d in diagnostics])
            arms[arm] = entry
        if "uniform" in arms:  # the question the ablation asks: does an arm beat uniform OPD (paired, same seeds)?
            for arm, entry in arms.items():
                if arm != "uniform":
                    entry["difference_to_uniform"] = paired_difference(per_problem[arm], per_problem["uniform"],
                                                                       resamples=resamples).as_dict()
        colds = [c for c in grid.get("cold_starts", []) if c["world"] == world]
        summary[world] = {"arms": arms, "cold_start_accuracy": _mean([c["eval"]["accuracy"] for c in colds])}
    return summary


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.1f}"


def _difference_text(diff: dict[str, float] | None) -> str:
    if diff is None:
        return "—"
    return (f"{100 * diff['estimate']:+.1f} [{100 * diff['low']:+.1f}, {100 * diff['high']:+.1f}]"
            + (" *" if diff["low"] > 0 or diff["high"] < 0 else ""))


def markdown_table(grid: dict[str, Any], summary: dict[str, Any]) -> str:
    """One table per world in the paper's shape: arm, accuracy over seeds, paired difference to SOD."""
    settings = grid["settings"]
    lines = [f"Settings: {len(settings['seeds'])} seeds {settings['seeds']}, {settings['train_steps']} training "
             f"steps of {settings['prompts_per_step']} prompts x {settings['num_generations']} samples, held-out "
             f"{settings['eval_problems']} problems x {settings['eval_samples']} samples (temperature 1)."]
    for world, entry in summary.items():
        lines += ["", f"### World `{world}` (cold start: {_pct(entry['cold_start_accuracy'])} %)", "",
                  "| arm | accuracy % (mean ± std over seeds) | minus `sod`, points [95 % interval] | minus `uniform`, "
                  "points [95 % interval] | tool failures / traj. | recovery rate % | recovery after a transient "
                  "failure % | d after clean obs. | d after error obs. |",
                  "|---|---|---|---|---|---|---|---|---|"]
        for arm, a in entry["arms"].items():
            diff_text = _difference_text(a.get("difference_to_sod"))
            uniform_text = _difference_text(a.get("difference_to_uniform"))
            d_clean = "-" if a["d_after_clean"] is None else f"{a['d_after_clean']:.3f}"
            d_error = "-" if a["d_after_error"] is None else f"{a['d_after_error']:.3f}"
            tool = "-" if a["tool_failures_per_trajectory"] is None else f"{a['tool_failures_per_trajectory']:.2f}"
            lines.append(f"| `{arm}` | {_pct(a['accuracy_mean'])} ± {_pct(a['accuracy_std'])} | {diff_text} "
                         f"| {uniform_text} | {tool} "
                         f"| {_pct(a['recovery_rate'])} | {_pct(a.get('transient_recovery_rate'))} | {d_clean} | {d_error} |")
    lines += ["", "`*`: the 95 % interval of the paired difference excludes 0 (bootstrap over seeds, then problems)."]
    if len(settings["seeds"]) < 2:
        lines += ["With one seed the interval covers the evaluation's sampling of problems only, not the seed-to-seed "
                  "spread of training: it is too narrow to decide anything."]
    return "\n".join(lines) + "\n"


def _plots(grid: dict[str, Any], summary: dict[str, Any], output_dir: Path) -> list[str]:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return []
    files = []
    worlds = list(summary)
    fig, axes = plt.subplots(1, len(worlds), figsize=(6 * len(worlds), 4.5), squeeze=False)
    for ax, world in zip(axes[0], worlds):
        arms = [a for a in summary[world]["arms"] if a != "sod"]
        diffs = [summary[world]["arms"][a]["difference_to_sod"] for a in arms]
        ys = range(len(arms))
        ax.errorbar([100 * d["estimate"] for d in diffs], list(ys), fmt="o", capsize=3,
                    xerr=[[100 * (d["estimate"] - d["low"]) for d in diffs],
                          [100 * (d["high"] - d["estimate"]) for d in diffs]])
        ax.axvline(0, color="gray", linestyle=":")
        ax.set_yticks(list(ys), arms)
        n = summary[world]["arms"]["sod"]["seeds"]
        ax.set(title=f"World '{world}': arm minus SOD (n = {n} seeds)",
               xlabel="held-out accuracy difference (percentage points, 95 % interval)")
    fig.tight_layout()
    fig.savefig(output_dir / "ablation_differences.png", dpi=110)
    plt.close(fig)
    files.append("ablation_differences.png")

    fig, axes = plt.subplots(1, len(worlds), figsize=(6 * len(worlds), 4.5), squeeze=False)
    for ax, world in zip(axes[0], worlds):
        for arm in grid["settings"]["arms"]:
            curves = [r["curve"] for r in grid["runs"] if r["world"] == world and r["arm"] == arm]
            steps = sorted({e["step"] for c in curves for e in c})
            means = [_mean([e.get("accuracy") for c in curves for e in c if e["step"] == step]) for step in steps]
            if steps:
                ax.plot(steps, [100 * m if m is not None else float("nan") for m in means], label=arm)
        ax.set(title=f"World '{world}': training-batch accuracy (mean over seeds)", xlabel="training step",
               ylabel="accuracy of the step's rollouts (%)", ylim=(0, 100))
        ax.xaxis.get_major_locator().set_params(integer=True)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(output_dir / "ablation_curves.png", dpi=110)
    plt.close(fig)
    files.append("ablation_curves.png")
    return files


def write_report(grid: dict[str, Any], output_dir: str | Path, *, resamples: int = 2000) -> dict[str, Any]:
    """Write ``ablation.json``, ``ablation.md`` and the plots into ``output_dir``; returns the summary."""
    output_dir = Path(output_dir)
    summary = summarize_grid(grid, resamples=resamples)
    table = markdown_table(grid, summary)
    (output_dir / "ablation.md").write_text("# Ablation\n\n" + table)
    plots = _plots(grid, summary, output_dir)
    (output_dir / "ablation.json").write_text(json.dumps({**grid, "summary": summary, "plots": plots}, indent=1,
                                                         default=str) + "\n")
    return {"summary": summary, "table": table, "plots": plots}
