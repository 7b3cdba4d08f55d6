"""Printing sample trajectories (``log_completions``) with the tool observations visibly marked."""

from __future__ import annotations

from typing import Any

__all__ = ["print_trajectories", "format_trajectory"]


def format_trajectory(sample: dict[str, Any]) -> str:
    """Plain-text rendering: observation spans framed by ``[tool ▸ ... ◂ tool]`` markers."""
    parts = []
    for text, sampled in sample["segments"]:
        parts.append(text if sampled else f"\n[tool ▸{text}◂ tool]\n")
    weights = ", ".join(f"{w:.2f}" for w in sample["weights"])
    return (f"{''.join(parts)}\n-- reward {sample['reward']:+.2f} | step weights [{weights}] | "
            f"stop: {sample['stop_reason']}")


def print_trajectories(samples: list[dict[str, Any]], step: int) -> None:
    """Print trajectories with rich when available: model text plain, observations dimmed in cyan."""
    try:
        from rich.console import Console
        from rich.panel import Panel
        from rich.text import Text
    except ImportError:  # rich is a dependency, but printing must never break training
        for sample in samples:
            print(f"[step {step}]\n{format_trajectory(sample)}")
        return
    console = Console()
    for sample in samples:
        body = Text()
        for text, sampled in sample["segments"]:
            body.append(text, style=None if sampled else "dim cyan")
        weights = ", ".join(f"{w:.2f}" for w in sample["weights"])
        body.append(f"\nreward {sample['reward']:+.2f} | step weights [{weights}] | stop: {sample['stop_reason']}",
                    style="bold")
        console.print(Panel(body, title=f"step {step}: sample trajectory (tool observations in cyan)"))
