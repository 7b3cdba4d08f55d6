"""The SOD objective as pure tensor functions (SOD_SPEC §2–§5).

Plain tensors in, tensors out: no model, tokenizer or trainer code lives here, so the whole
method can be read on one screen and pinned against a naive reference in the tests.

Shapes: ``B`` trajectories, ``T`` completion positions. Every per-token tensor is ``(B, T)``;
``assistant_mask`` is 1 on tokens the model sampled and 0 on observation tokens and padding.
"""

from __future__ import annotations

import torch

__all__ = [
    "STEP_WEIGHTING_SCHEMES",
    "step_ids_from_mask",
    "step_means",
    "step_divergence",
    "step_weights",
    "token_weights",
    "weights_for_step_ids",
    "group_advantages",
    "combined_advantages",
    "clipped_surrogate_loss",
]

STEP_WEIGHTING_SCHEMES = ("sod", "uniform", "decay", "mask_after_error", "sod_uncapped")


def step_ids_from_mask(assistant_mask: torch.Tensor) -> torch.Tensor:
    """Step index of every token: the k-th maximal run of ``assistant_mask == 1`` gets ``k`` (0-based).

    Tokens outside the mask (observations, padding) get ``-1``.
    """
    mask = assistant_mask.to(torch.long)
    previous = torch.nn.functional.pad(mask[:, :-1], (1, 0), value=0)
    starts = (mask == 1) & (previous == 0)
    ids = torch.cumsum(starts.to(torch.long), dim=1) - 1
    return torch.where(mask == 1, ids, torch.full_like(ids, -1))


def _num_steps(step_ids: torch.Tensor) -> int:
    return int(step_ids.max().item()) + 1 if step_ids.numel() and step_ids.max() >= 0 else 0


def step_means(per_token: torch.Tensor, step_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(B, K)`` mean of a per-token quantity over the tokens of each step, and which steps exist."""
    batch = step_ids.shape[0]
    num_steps = max(_num_steps(step_ids), 1)
    on_step = step_ids >= 0
    values = per_token.detach().float() * on_step
    index = step_ids.clamp(min=0)
    sums = torch.zeros(batch, num_steps, dtype=values.dtype, device=values.device)
    counts = torch.zeros_like(sums)
    sums.scatter_add_(1, index, values)
    counts.scatter_add_(1, index, on_step.to(values.dtype))
    return sums / counts.clamp(min=1), counts > 0


def step_divergence(
    student_logps: torch.Tensor, teacher_logps: torch.Tensor, step_ids: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-step mean absolute log-ratio ``d_k = mean_{t in k} |s_t - q_t|`` (SOD_SPEC §3).

    Returns ``(d, valid)``, both ``(B, K)``: ``d[b, k]`` is the divergence of step k of row b and
    ``valid[b, k]`` says whether row b has a step k (``d`` is 0 where it has not).
    """
    return step_means((student_logps.detach().float() - teacher_logps.detach().float()).abs(), step_ids)


def step_weights(
    divergence: torch.Tensor,
    valid: torch.Tensor,
    *,
    scheme: str = "sod",
    epsilon: float = 1e-6,
    delta: float = 0.2,
    error_steps: torch.Tensor | None = None,
    decay: float = 0.9,
) -> torch.Tensor:
    """Step weights ``w_k`` (SOD_SPEC §4) from step divergences ``(B, K)``; 0 where ``valid`` is False.

    ``sod``: ``w_1 = 1``, ``w_k = min((d_1+eps)/(d_k+eps), 1+delta)`` (the telescoped product).
    ``sod_uncapped``: the same ratio without the cap. ``uniform``: 1. ``decay``: 1 up to the first
    erroneous step ``e`` and ``decay**(k-e)`` for ``k > e``. ``mask_after_error``: 1 up to ``e``, 0 after.
    ``error_steps`` is ``(B,)``, 0-based, ``-1`` for a trajectory without a tool error.
    """
    if scheme not in STEP_WEIGHTING_SCHEMES:
        raise ValueError(f"Unknown step_weighting scheme {scheme!r}; choose one of {STEP_WEIGHTING_SCHEMES}.")
    batch, num_steps = divergence.shape
    device = divergence.device
    d = divergence.detach().float()
    if scheme in ("sod", "sod_uncapped"):
        weights = (d[:, :1] + epsilon) / (d + epsilon)
        if scheme == "sod":
            weights = weights.clamp(max=1.0 + delta)
        weights[:, 0] = 1.0
    elif scheme == "uniform":
        weights = torch.ones_like(d)
    else:
        if error_steps is None:
            raise ValueError(f"step_weighting={scheme!r} needs error_steps (first erroneous step per row, -1 if none).")
        k = torch.arange(num_steps, device=device).unsqueeze(0).expand(batch, -1)
        e = error_steps.to(device).long().unsqueeze(1)
        affected = (e >= 0) & (k > e)
        if scheme == "decay":
            after = torch.pow(torch.full_like(d, decay), (k - e).clamp(min=0).to(d.dtype))
            weights = torch.where(affected, after, torch.ones_like(d))
        else:
            weights = torch.where(affected, torch.zeros_like(d), torch.ones_like(d))
    return weights * valid


def token_weights(
    student_logps: torch.Tensor,
    teacher_logps: torch.Tensor,
    assistant_mask: torch.Tensor,
    *,
    scheme: str = "sod",
    epsilon: float = 1e-6,
    delta: float = 0.2,
    error_steps: torch.Tensor | None = None,
    decay: float = 0.9,
) -> torch.Tensor:
    """``(B, T)`` weight of every token: ``w`` of its step on model tokens, 0 elsewhere.

    Steps are the maximal runs of ``assistant_mask == 1`` (SOD_SPEC §2); see :func:`step_weights`.
    """
    step_ids = step_ids_from_mask(assistant_mask)
    return weights_for_step_ids(
        student_logps, teacher_logps, step_ids,
        scheme=scheme, epsilon=epsilon, delta=delta, error_steps=error_steps, decay=decay,
    )


def weights_for_step_ids(
    student_logps: torch.Tensor,
    teacher_logps: torch.Tensor,
    step_ids: torch.Tensor,
    **weighting,
) -> torch.Tensor:
    """Like :func:`token_weights`, for step ids from any :class:`~sod_trainer.StepSegmenter`."""
    divergence, valid = step_divergence(student_logps, teacher_logps, step_ids)
    weights = step_weights(divergence, valid, **weighting)
    per_token = torch.gather(weights, 1, step_ids.clamp(min=0))
    return torch.where(step_ids >= 0, per_token, torch.zeros_like(per_token))


def group_advantages(rewards: torch.Tensor, group_size: int, scale: bool = True) -> torch.Tensor:
    """GRPO advantage ``(r - mean_group) / (std_group + 1e-6)`` over consecutive groups of ``group_size``.

    Unbiased std; a group of one has mean 0 and std 1 (SOD_SPEC §5). ``scale=False`` skips the division.
    """
    if rewards.numel() % group_size:
        raise ValueError(f"{rewards.numel()} rewards do not split into groups of {group_size}.")
    grouped = rewards.float().view(-1, group_size)
    if group_size == 1:
        mean, std = torch.zeros_like(grouped), torch.ones_like(grouped)
    else:
        mean = grouped.mean(dim=1, keepdim=True)
        std = grouped.std(dim=1, keepdim=True, unbiased=True)
    centered = grouped - mean
    advantages = centered / (std + 1e-6) if scale else centered
    return advantages.view(-1)


def combined_advantages(
    sequence_advantages: torch.Tensor,
    student_logps: torch.Tensor,
    teacher_logps: torch.Tensor,
    weights: torch.Tensor,
    *,
    grpo_coef: float = 1.0,
    opd_coef: float = 1.0,
) -> torch.Tensor:
    """Per-token advantage ``c_grpo * A_hat + c_opd * w * (q - s)`` (SOD_SPEC §5), no gradient."""
    reverse_kl_reward = (teacher_logps.detach() - student_logps.detach()).float()
    return grpo_coef * sequence_advantages.float().unsqueeze(1) + opd_coef * weights.float() * reverse_kl_reward


def clipped_surrogate_loss(
    logps: torch.Tensor,
    old_logps: torch.Tensor,
    advantages: torch.Tensor,
    loss_mask: torch.Tensor,
    *,
    epsilon_low: float = 0.2,
    epsilon_high: float = 0.28,
    dual_clip: float | None = 3.0,
    normalizer: float | torch.Tensor | None = None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """PPO clipped surrogate with clip-higher and dual clip, summed over masked tokens / ``normalizer``.

    ``normalizer`` defaults to the number of masked tokens (token mean); the trainer passes the global
    count over accumulation micro-batches and processes. Returns ``(loss, stats)`` where ``stats`` holds
    the per-token loss and the clip indicators (for metrics).
    """
    mask = loss_mask.to(logps.dtype)
    ratio = torch.exp(logps - old_logps.detach())
    clipped_ratio = ratio.clamp(1.0 - epsilon_low, 1.0 + epsilon_high)
    unclipped = -advantages * ratio
    clipped = -advantages * clipped_ratio
    per_token = torch.maximum(unclipped, clipped)
    dual_clipped = torch.zeros_like(per_token, dtype=torch.bool)
    if dual_clip is not None:
        cap = -advantages * dual_clip
        dual_clipped = (advantages < 0) & (per_token > cap)
        per_token = torch.where(dual_clipped, cap, per_token)
    if normalizer is None:
        normalizer = mask.sum().clamp(min=1.0)
    loss = (per_token * mask).sum() / normalizer
    stats = {
        "per_token_loss": per_token.detach(),
        "ratio": ratio.detach(),
        "clipped_low": ((ratio < 1.0 - epsilon_low) & (advantages < 0)).detach(),
        "clipped_high": ((ratio > 1.0 + epsilon_high) & (advantages > 0)).detach(),
        "dual_clipped": dual_clipped.detach(),
    }
    return loss, stats
