"""The demo's figures, drawn from its ``report.json`` alone (so they can be redrawn without training again).

Every axis says what it measures and in which unit, x axes of optimizer steps have integer ticks, and every
value that rests on few samples says how many (``n``). ``python -m sod_trainer.toy.plots sod-demo`` redraws
the figures of a finished demo.
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path
from typing import Any

__all__ = ["plot_report", "figures", "FEW_SAMPLES"]

FEW_SAMPLES = 10
"""Bars and points resting on fewer samples than this are hatched / marked and labelled with their count."""

_CONTEXTS = {"first": "first step", "after_clean": "after a clean\ntool output", "after_error": "after a failed\ntool call"}


def _finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value)


def _save(fig, path: Path) -> str:
    import matplotlib.pyplot as plt

    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path.name


def _integer_steps(ax, xlabel: str = "SOD optimizer step") -> None:
    from matplotlib.ticker import MaxNLocator

    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel(xlabel)


def _percent(ax) -> None:
    from matplotlib.ticker import PercentFormatter

    ax.yaxis.set_major_formatter(PercentFormatter(1.0, decimals=0))


def _training_curve(report: dict):
    import matplotlib.pyplot as plt

    runs = report["training"]
    held_out = report["student"]["before"].get("n", report["settings"].get("eval_problems"))
    per_step = next(iter(runs.values()), {}).get("rollouts_per_step", "?")
    fig, axes = plt.subplots(1, 3, figsize=(16, 4.6))
    for name, run in runs.items():
        steps = [e["step"] for e in run["curve"]]
        axes[0].plot(steps, [e.get("accuracy", float("nan")) for e in run["curve"]], marker=".",
                     label=f"{name}: training batch (n={run['rollouts_per_step']} rollouts)")
        axes[1].plot(steps, [e.get("tools/failures_per_trajectory", float("nan")) for e in run["curve"]],
                     marker=".", label=name)
        axes[2].plot(steps, [e.get("loss", float("nan")) for e in run["curve"]], marker=".", label=name)
    before = report["student"]["before"]
    axes[0].axhline(before["accuracy"], color="gray", linestyle=":",
                    label=f"held-out, before training ({before['accuracy']:.0%}, n={held_out} problems)")
    for name, after in report["student"]["after"].items():
        axes[0].axhline(after["accuracy"], linestyle="--",
                        label=f"held-out, after {name} ({after['accuracy']:.0%}, n={after.get('n', held_out)} problems)")
    axes[0].set(title="Student accuracy", ylabel="accuracy (share of rollouts right)", ylim=(0, 1))
    _percent(axes[0])
    legend_places = {0: "lower right"}
    axes[1].set(title=f"Failed tool calls per trajectory\n(training rollouts, n={per_step} per step)",
                ylabel="failed tool calls per trajectory")
    axes[1].set_ylim(bottom=0)
    axes[2].set(title="Training loss: SOD clipped surrogate\n(token mean of -min(r A, clip(r) A))",
                ylabel="loss (dimensionless, per model token)")
    for i, ax in enumerate(axes):
        _integer_steps(ax)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, loc=legend_places.get(i, "best"))
    fig.suptitle("sod demo: training the cold-started student on the toy tool-use world", fontsize=11)
    return fig


def _divergence(report: dict):
    import matplotlib.pyplot as plt

    diagnostics = {"before training": report["diagnostics"]["before"],
                   **{f"after {k}": v for k, v in report["diagnostics"]["after"].items()}}
    contexts = list(_CONTEXTS)
    width = 0.8 / max(len(diagnostics), 1)
    fig, axes = plt.subplots(1, 2, figsize=(12.5, 4.8))
    for i, (name, diag) in enumerate(diagnostics.items()):
        for ax, key in zip(axes, ("d", "w")):
            xs = [x + i * width for x in range(len(contexts))]
            values = [diag["by_context"][c][key] for c in contexts]
            counts = [diag["by_context"][c]["n"] for c in contexts]
            bars = ax.bar(xs, [v if v is not None else math.nan for v in values], width, label=name,
                          color=f"C{i}", edgecolor="black", linewidth=0.5)
            for x, bar, value, count in zip(xs, bars, values, counts):
                few = count < FEW_SAMPLES
                if few:
                    bar.set_hatch("//")
                if value is None:  # at the foot of the axis (a log axis has no 0)
                    ax.annotate("no steps", (x, 0), xycoords=("data", "axes fraction"), ha="center", va="bottom",
                                fontsize=7, xytext=(0, 2), textcoords="offset points")
                else:
                    ax.annotate(f"n={count}" + (" (few)" if few else ""), (x, bar.get_height()), ha="center",
                                va="bottom", fontsize=7, xytext=(0, 2), textcoords="offset points")
    from matplotlib.patches import Patch

    handles = [Patch(facecolor=f"C{i}", edgecolor="black", linewidth=0.5, label=name)
               for i, name in enumerate(diagnostics)]  # plain swatches: the hatching marks bars, not series
    for ax in axes:
        ax.set_xticks([x + width * (len(diagnostics) - 1) / 2 for x in range(len(contexts))],
                      [_CONTEXTS[c] for c in contexts])
        ax.set_xlim(-width, len(contexts) - 1 + width * len(diagnostics))  # NaN bars (no steps) keep their slot
        ax.set_xlabel("what preceded the step (held-out rollouts; n = steps averaged)")
        ax.legend(handles=handles, fontsize=8)
    axes[0].set_yscale("log")
    axes[0].set(title="Step divergence d_k = mean over the step's tokens of |log p_student - log p_teacher|",
                ylabel="mean d_k (nats per token, log scale)")
    axes[1].set(title="SOD step weight w_k = min((d_1 + eps) / (d_k + eps), 1 + delta)",
                ylabel="mean w_k (dimensionless; 1 = full distillation)")
    axes[0].title.set_fontsize(9)
    axes[1].title.set_fontsize(9)
    hatched = any(diag["by_context"][c]["n"] < FEW_SAMPLES for diag in diagnostics.values() for c in contexts)
    fig.suptitle("Where student and teacher disagree: steps after a failed tool call" +
                 (f"  (hatched: fewer than {FEW_SAMPLES} steps)" if hatched else ""), fontsize=11)
    return fig


def _weights(report: dict):
    import matplotlib.pyplot as plt

    runs = report["training"]
    fig, axes = plt.subplots(1, 2, figsize=(12.5, 4.6))
    for name, run in runs.items():
        steps = [e["step"] for e in run["curve"]]
        for k in range(1, 5):
            values = [e.get(f"weights/step_{k}", float("nan")) for e in run["curve"]]
            counts = [e.get(f"steps/reaching_{k}") for e in run["curve"]]
            if not any(_finite(v) for v in values):
                continue
            known = [c for c in counts if _finite(c)]
            span = (f"{min(known):.0f}" if min(known) == max(known) else f"{min(known):.0f}-{max(known):.0f}") \
                if known else ""
            label = f"{name}: w_{k}" + (f" (n={span} trajectories per step)" if known else "")
            line, = axes[0].plot(steps, values, marker=".", label=label)
            few = [(s, v) for s, v, c in zip(steps, values, counts) if _finite(c) and c < FEW_SAMPLES and _finite(v)]
            if few:
                axes[0].scatter(*zip(*few), s=60, facecolors="none", edgecolors=line.get_color())
        for pattern in ("stable", "erroneous", "recovery"):
            axes[1].plot(steps, [e.get(f"patterns/{pattern}", float("nan")) for e in run["curve"]], marker=".",
                         label=f"{name}: {pattern}")
    per_step = next(iter(runs.values()), {}).get("rollouts_per_step", "?")
    axes[0].set(title=f"Mean SOD weight of step k during training\n(circled: fewer than {FEW_SAMPLES} trajectories "
                      "reach step k)", ylabel="mean w_k (dimensionless)", ylim=(0, 1.3))  # legend below the lines
    axes[1].set(title=f"Weight pattern of each trajectory (n={per_step} per step)",
                ylabel="share of trajectories", ylim=(0, 1))
    _percent(axes[1])
    for ax, place in zip(axes, ("lower left", "upper right")):
        _integer_steps(ax)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, loc=place)
    fig.suptitle("SOD weights during training", fontsize=11)
    return fig


def figures(report: dict) -> dict:
    """The demo's matplotlib figures by file name: ``training_curve.png``, ``divergence.png``, ``weights.png``."""
    import matplotlib

    matplotlib.use("Agg")
    return {"training_curve.png": _training_curve(report), "divergence.png": _divergence(report),
            "weights.png": _weights(report)}


def plot_report(report: dict, output_dir: str | Path) -> list[str]:
    """Draw the :func:`figures` into ``output_dir``; returns the file names (empty without matplotlib, the
    ``plots`` extra)."""
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return []
    return [_save(fig, Path(output_dir) / name) for name, fig in figures(report).items()]


if __name__ == "__main__":  # pragma: no cover - redraw a finished demo's figures
    folder = Path(sys.argv[1] if len(sys.argv) > 1 else "sod-demo")
    print(plot_report(json.loads((folder / "report.json").read_text()), folder))
