"""The SOD objective as pure tensor functions (SOD_SPEC §2–§5).

Plain tensors in, tensors out: no model, tokenizer or trainer code lives here, so the whole
method can be read on one screen and pinned against a naive reference in the tests.

Shapes: ``B`` trajectories, ``T`` completion positions. Every per-token tensor is ``(B, T)``;
``assistant_mask`` is 1 on tokens the model sampled and 0 on observation tokens and padding.
"""

from __future__ import annotations

import math

import torch

__all__ = [
    "STEP_WEIGHTING_SCHEMES",
    "step_ids_from_mask",
    "step_means",
    "step_divergence",
    "step_weights",
    "token_weights",
    "weights_for_step_ids",
    "step_and_token_weights",
    "iw_opd_token_weights",
    "group_advantages",
    "combined_advantages",
    "clipped_surrogate_loss",
    "spread_span_logps",
]

STEP_WEIGHTING_SCHEMES = (
    "sod", "uniform", "decay", "mask_after_error", "sod_uncapped", "iw_opd",
    "sod_median_ref",  # [ours]: not in the paper (docs/ablation.md, sitting 4)
)
TOKEN_WEIGHTING_SCHEMES = ("iw_opd",)  # weights computed per token, not from step divergences


def _working_dtype(*tensors: torch.Tensor) -> torch.dtype:
    """The inputs' own floating precision (float64 stays float64); half precision is accumulated in float32."""
    dtype = tensors[0].dtype
    for tensor in tensors[1:]:
        dtype = torch.promote_types(dtype, tensor.dtype)
    if not dtype.is_floating_point or torch.finfo(dtype).bits < 32:
        return torch.float32
    return dtype


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
    """``(B, K)`` mean of a per-token quantity over the tokens of each step, and which steps exist.

    Computed in the input's precision (float64 in, float64 out; half precision is accumulated in float32).
    Positions outside every step are never read: a NaN or inf there cannot reach a step's mean.
    """
    batch = step_ids.shape[0]
    num_steps = max(_num_steps(step_ids), 1)
    on_step = step_ids >= 0
    per_token = per_token.detach()
    per_token = per_token.to(_working_dtype(per_token))
    values = torch.where(on_step, per_token, torch.zeros((), dtype=per_token.dtype, device=per_token.device))
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
    dtype = _working_dtype(student_logps, teacher_logps)
    return step_means((student_logps.detach().to(dtype) - teacher_logps.detach().to(dtype)).abs(), step_ids)


def _median(values: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """The median of ``values[valid]`` (the mean of the two middle values for an even count), 0 when no value is
    valid; a 0-d float64 tensor on the values' device, computed without moving anything to the host."""
    masked = torch.where(valid, values.to(torch.float64), torch.full((), float("nan"), dtype=torch.float64,
                                                                      device=values.device))
    return torch.nan_to_num(torch.nanquantile(masked.flatten(), 0.5), nan=0.0)


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
    ``sod_uncapped``: the same ratio without the cap. ``sod_median_ref`` [ours]: the reference is
    ``max(d_1, m)``, ``m`` the median of ``d`` over every valid step of the whole batch (so a near-deterministic
    step 1 does not turn every later clean step down); capped as ``sod``. ``uniform``: 1. ``decay``: 1 up to the first
    erroneous step ``e`` and ``decay**(k-e)`` for ``k > e``. ``mask_after_error``: 1 up to ``e``, 0 after.
    ``error_steps`` is ``(B,)``, 0-based, ``-1`` for a trajectory without a tool error.
    Computed in the divergence's precision; a step that does not exist (``valid`` False) gets 0 whatever
    ``divergence`` holds there.
    """
    if scheme not in STEP_WEIGHTING_SCHEMES:
        raise ValueError(f"Unknown step_weighting scheme {scheme!r}; choose one of {STEP_WEIGHTING_SCHEMES}.")
    if scheme in TOKEN_WEIGHTING_SCHEMES:
        raise ValueError(f"step_weighting={scheme!r} weighs tokens, not steps: use token_weights or "
                         "step_and_token_weights, which take the per-token log-probs.")
    batch, num_steps = divergence.shape
    device = divergence.device
    d = divergence.detach()
    d = d.to(_working_dtype(d))
    d = torch.where(valid, d, torch.zeros((), dtype=d.dtype, device=device))
    if scheme in ("sod", "sod_uncapped", "sod_median_ref"):
        reference = d[:, :1]
        if scheme == "sod_median_ref":
            reference = reference.clamp(min=_median(d, valid).to(d.dtype))
        weights = (reference + epsilon) / (d + epsilon)
        if scheme in ("sod", "sod_median_ref"):
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
    return torch.where(valid, weights, torch.zeros((), dtype=weights.dtype, device=device))


def iw_opd_token_weights(
    student_logps: torch.Tensor,
    teacher_logps: torch.Tensor,
    loss_mask: torch.Tensor,
    *,
    gamma: float = 0.5,
    epsilon: float = 1e-8,
) -> torch.Tensor:
    """IW-OPD's per-token weights (TRL ``trl.experimental.iw_opd``, arXiv 2606.22600), 0 off the mask.

    ``w_t = 1 + gamma * (1 - P_t / S)`` with ``a_t = |q_t - s_t|`` on model tokens, ``P_t`` the sum of ``a`` over
    the model tokens before ``t`` and ``S = max(sum of a over the completion, epsilon)``: later tokens are turned
    down once discrepancy has accumulated (token-wise, where SOD is step-wise). Observation and padding tokens
    neither carry a weight nor add to the prefix, as TRL's ``labels == -100`` positions.
    """
    on = loss_mask.bool()
    dtype = _working_dtype(student_logps, teacher_logps)
    zero = torch.zeros((), dtype=dtype, device=student_logps.device)
    gap = torch.where(on, (teacher_logps.detach().to(dtype) - student_logps.detach().to(dtype)).abs(), zero)
    prefix = gap.cumsum(dim=1) - gap
    total = gap.sum(dim=1, keepdim=True).clamp_min(epsilon)
    weights = 1.0 + gamma * (1.0 - prefix / total)
    return torch.where(on, weights, zero)


def step_and_token_weights(
    student_logps: torch.Tensor,
    teacher_logps: torch.Tensor,
    step_ids: torch.Tensor,
    *,
    scheme: str = "sod",
    iw_opd_gamma: float = 0.5,
    iw_opd_epsilon: float = 1e-8,
    **weighting,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(d, valid, w_step, w_token)``: step divergences, which steps exist, step weights ``(B, K)`` and the
    weight of every token ``(B, T)`` (0 off the steps).

    For the step schemes ``w_token`` is the weight of the token's step. For ``iw_opd`` the weights are per token
    (:func:`iw_opd_token_weights`) and ``w_step`` is the mean token weight of each step, for the diagnostics.
    """
    divergence, valid = step_divergence(student_logps, teacher_logps, step_ids)
    on_step = step_ids >= 0
    if scheme in TOKEN_WEIGHTING_SCHEMES:
        per_token = iw_opd_token_weights(student_logps, teacher_logps, on_step,
                                         gamma=iw_opd_gamma, epsilon=iw_opd_epsilon)
        per_step, _ = step_means(per_token, step_ids)
        return divergence, valid, per_step, per_token
    per_step = step_weights(divergence, valid, scheme=scheme, **weighting)
    per_token = torch.gather(per_step, 1, step_ids.clamp(min=0))
    return divergence, valid, per_step, torch.where(on_step, per_token, torch.zeros_like(per_token))


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
    iw_opd_gamma: float = 0.5,
    iw_opd_epsilon: float = 1e-8,
) -> torch.Tensor:
    """``(B, T)`` weight of every token: ``w`` of its step on model tokens, 0 elsewhere.

    Steps are the maximal runs of ``assistant_mask == 1`` (SOD_SPEC §2); see :func:`step_weights`
    (and :func:`iw_opd_token_weights` for ``scheme="iw_opd"``).
    """
    step_ids = step_ids_from_mask(assistant_mask)
    return weights_for_step_ids(
        student_logps, teacher_logps, step_ids, scheme=scheme, epsilon=epsilon, delta=delta,
        error_steps=error_steps, decay=decay, iw_opd_gamma=iw_opd_gamma, iw_opd_epsilon=iw_opd_epsilon,
    )


def weights_for_step_ids(
    student_logps: torch.Tensor,
    teacher_logps: torch.Tensor,
    step_ids: torch.Tensor,
    **weighting,
) -> torch.Tensor:
    """Like :func:`token_weights`, for step ids from any :class:`~sod_trainer.StepSegmenter`."""
    return step_and_token_weights(student_logps, teacher_logps, step_ids, **weighting)[3]


def group_advantages(rewards: torch.Tensor, group_size: int, scale: bool = True) -> torch.Tensor:
    """GRPO advantage ``(r - mean_group) / (std_group + 1e-6)`` over consecutive groups of ``group_size``.

    Unbiased std; a group of one has mean 0 and std 1 (SOD_SPEC §5). ``scale=False`` skips the division.
    A NaN reward (every reward function returned ``None``, as in TRL) is left out of its group's mean and std and
    keeps a NaN advantage (the caller zeroes it).
    """
    if rewards.numel() % group_size:
        raise ValueError(f"{rewards.numel()} rewards do not split into groups of {group_size}.")
    grouped = rewards.float().view(-1, group_size)
    if group_size == 1:
        mean, std = torch.zeros_like(grouped), torch.ones_like(grouped)
    elif not torch.isnan(grouped).any():
        mean = grouped.mean(dim=1, keepdim=True)
        std = grouped.std(dim=1, keepdim=True, unbiased=True)
    else:
        mean = torch.nanmean(grouped, dim=1, keepdim=True)
        count = (~torch.isnan(grouped)).sum(dim=1, keepdim=True)
        variance = torch.nansum((grouped - mean) ** 2, dim=1, keepdim=True) / (count - 1).clamp(min=1)
        std = torch.where(count > 1, variance.sqrt(), torch.full_like(variance, math.nan))
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
    """Per-token advantage ``c_grpo * A_hat + c_opd * w * (q - s)`` (SOD_SPEC §5), no gradient.

    In the log-probs' precision (at least float32)."""
    dtype = _working_dtype(student_logps, teacher_logps)
    reverse_kl_reward = teacher_logps.detach().to(dtype) - student_logps.detach().to(dtype)
    return (grpo_coef * sequence_advantages.detach().to(dtype).unsqueeze(1)
            + opd_coef * weights.detach().to(dtype) * reverse_kl_reward)


def spread_span_logps(student_logps: torch.Tensor, span_logps: torch.Tensor, span_ids: torch.Tensor) -> torch.Tensor:
    """Per-token teacher log-probs ``q_t`` from span log-probs of a teacher with another tokenizer.

    ``span_ids`` ``(B, T)`` numbers the aligned spans of each row (-1: no span); ``span_logps`` holds each span's
    teacher log-prob ``Q`` summed over the span's tokens (e.g. all on its last token). A span of ``n`` student
    tokens with student log-prob ``S = sum s_t`` gets ``q_t = s_t + (Q - S) / n``: the span's ``q - s`` is
    conserved and shared evenly by its tokens. One-token spans keep ``q_t = Q`` exactly; tokens outside every
    span get ``q_t = s_t`` (no distillation signal; the trainer also leaves them out of the loss).
    """
    dtype = _working_dtype(student_logps, span_logps)
    student = student_logps.detach().to(dtype)
    on_span = span_ids >= 0
    index = span_ids.clamp(min=0)
    zero = torch.zeros((), dtype=dtype, device=student.device)
    width = int(span_ids.max().item()) + 1 if span_ids.numel() and span_ids.max() >= 0 else 1
    sums = torch.zeros(span_ids.shape[0], width, dtype=dtype, device=student.device)
    student_sum = sums.scatter_add(1, index, torch.where(on_span, student, zero))
    teacher_sum = sums.scatter_add(1, index, torch.where(on_span, span_logps.detach().to(dtype), zero))
    count = sums.scatter_add(1, index, on_span.to(dtype))
    share = ((teacher_sum - student_sum) / count.clamp(min=1)).gather(1, index)
    single = count.gather(1, index) == 1
    spread = torch.where(single, span_logps.detach().to(dtype), student + share)
    return torch.where(on_span, spread, student)


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
