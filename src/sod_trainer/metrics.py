"""Diagnostics of SOD_SPEC §10: per-step divergence and weights, weight patterns, tool statistics."""

from __future__ import annotations

import torch

__all__ = ["PATTERNS", "weight_patterns", "per_step_means"]

PATTERNS = ("stable", "erroneous", "recovery")


def weight_patterns(weights: torch.Tensor, valid: torch.Tensor, threshold: float = 0.8) -> list[str]:
    """Classify each trajectory's step weights [ours]: stable if min w >= threshold, erroneous if the last
    w < threshold, recovery otherwise (dips, then climbs back)."""
    labels = []
    for row_weights, row_valid in zip(weights, valid):
        values = row_weights[row_valid.bool()]
        if values.numel() == 0:
            labels.append("stable")
        elif values.min() >= threshold:
            labels.append("stable")
        elif values[-1] < threshold:
            labels.append("erroneous")
        else:
            labels.append("recovery")
    return labels


def per_step_means(values: torch.Tensor, valid: torch.Tensor, num_steps: int) -> list[float]:
    """Mean of ``values[:, k]`` over rows that have step k, for k < num_steps (NaN where none has it)."""
    means = []
    for k in range(num_steps):
        if k < values.shape[1] and valid[:, k].any():
            means.append(float(values[:, k][valid[:, k].bool()].float().mean()))
        else:
            means.append(float("nan"))
    return means
