"""Draw docs/images/weight_patterns.png: the three step-weight patterns of SOD_SPEC §10.

    PYTHONPATH=src python docs/scripts/weight_patterns.py

The weights are computed by the library (``sod_trainer.objective.step_weights``) from example step
divergences, and labelled by ``sod_trainer.metrics.weight_patterns``: the figure shows what the code does.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch

from sod_trainer.metrics import weight_patterns
from sod_trainer.objective import step_weights

OUTPUT = Path(__file__).resolve().parents[1] / "images" / "weight_patterns.png"

# Example step divergences d_k (mean |s_t - q_t| over the tokens of step k) and the steps whose tool call failed.
EXAMPLES = {
    "stable": ([0.40, 0.38, 0.37, 0.34, 0.31, 0.32, 0.30], []),
    "erroneous": ([0.218, 0.61, 1.284, 1.41, 1.52, 1.47, 1.60], [1, 2, 3]),
    # the recovering trajectory of SOD_SPEC §4: w = 1.00, 0.73, 0.56, 0.41, 0.76, 1.12, 1.20
    "recovery": ([0.30, 0.411, 0.536, 0.732, 0.395, 0.268, 0.24], [1, 2]),
}
COLORS = {"stable": "#2a9d8f", "erroneous": "#e76f51", "recovery": "#457b9d"}


def compute() -> dict[str, tuple[list[float], list[float], list[int], str]]:
    """For each example: divergences, SOD weights, error steps, and the pattern label the trainer logs."""
    result = {}
    for name, (divergence, errors) in EXAMPLES.items():
        d = torch.tensor([divergence])
        valid = torch.ones_like(d, dtype=torch.bool)
        w = step_weights(d, valid, scheme="sod", epsilon=1e-6, delta=0.2)
        label = weight_patterns(w, valid, threshold=0.8)[0]
        result[name] = (divergence, w[0].tolist(), errors, label)
    return result


def draw(path: Path = OUTPUT) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    data = compute()
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4.4), dpi=120)
    for name, (divergence, weights, errors, label) in data.items():
        steps = list(range(1, len(divergence) + 1))
        left.plot(steps, divergence, marker="o", color=COLORS[name], label=name)
        right.plot(steps, weights, marker="o", color=COLORS[name])
        for error in errors:
            left.plot(error + 1, divergence[error], marker="x", color="black", markersize=9, zorder=5)
            right.plot(error + 1, weights[error], marker="x", color="black", markersize=9, zorder=5)
    left.set_title("step divergence $d_k$")
    left.set_xlabel("step $k$ (assistant turn)")
    left.set_ylabel("$d_k$ = mean $|s_t - q_t|$")
    right.axhline(1.2, color="gray", linestyle="--", linewidth=1)
    right.text(1.05, 1.23, "cap $1+\\delta$", color="gray", fontsize=8)
    right.axhline(0.8, color="gray", linestyle=":", linewidth=1)
    right.text(1.05, 0.83, "pattern threshold 0.8", color="gray", fontsize=8)
    right.set_title("SOD step weight $w_k$ (capped at $1+\\delta$ = 1.2)")
    right.set_xlabel("step $k$ (assistant turn)")
    right.set_ylabel("$w_k$")
    right.set_ylim(0, 1.4)
    left.plot([], [], marker="x", color="black", linestyle="none", label="tool call failed")
    fig.legend(*left.get_legend_handles_labels(), loc="lower center", ncol=4, frameon=False, fontsize=9)
    fig.tight_layout(rect=(0, 0.07, 1, 1))
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, metadata={"Software": None})
    plt.close(fig)
    return path


if __name__ == "__main__":
    for name, (_, weights, _, label) in compute().items():
        print(f"{name:10s} -> {label:10s} w = {', '.join(f'{w:.2f}' for w in weights)}")
    print(draw(Path(sys.argv[1]) if len(sys.argv) > 1 else OUTPUT))
