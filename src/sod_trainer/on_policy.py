"""π_old from the loss's own forward pass, when a rollout batch feeds exactly one optimizer step.

With ``num_iterations == 1`` and ``gradient_accumulation_steps`` a multiple of ``steps_per_generation``, no
optimizer step happens between a rollout and the loss on it: π_old *is* the policy being differentiated. The
separate no-grad student pass of :meth:`RolloutScorer.build` is then redundant (TRL's ``GRPOTrainer`` skips it
in the same case). The loss takes ``s_t = log π(y_t)`` detached from its own forward pass, and d_k, w_k and the
advantages are computed here, per micro-batch, with the same :func:`weigh_steps` as the scorer. The gradient is
the same: the ratio ``exp(logp - logp.detach())`` is 1 and the advantages are equal (up to float noise between
two forward passes of the same weights).

The §10 diagnostics (entropy, reverse KL, d_k and w_k per step, weight patterns) are collected over the
micro-batches of a rollout batch and computed once when its last micro-batch has been seen, so they are the
same numbers as in the two-pass path.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from .scoring import StepWeighting, weigh_steps

__all__ = ["is_on_policy", "OnPolicyWeighting"]


def is_on_policy(args) -> bool:
    """Whether every rollout batch is consumed within one optimizer step (π_old == the current policy)."""
    generate_every = args.steps_per_generation * args.num_iterations
    return args.num_iterations == 1 and args.gradient_accumulation_steps % generate_every == 0


def _pad_cat(tensors: list[torch.Tensor], value) -> torch.Tensor:
    width = max(t.shape[1] for t in tensors)
    padded = [torch.nn.functional.pad(t, (0, width - t.shape[1]), value=value) for t in tensors]
    return torch.cat(padded)


@dataclass
class OnPolicyWeighting:
    """Per-micro-batch step weighting from the loss's forward pass, plus the batch's collected diagnostics."""

    args: Any
    _pending: list[dict[str, torch.Tensor]] = field(default_factory=list)
    _expected: int = 1
    last_logps: torch.Tensor | None = None  # (B, C) π_old of the last collected batch, when log_completions

    def start_batch(self, num_slices: int) -> None:
        """A new rollout batch of ``num_slices`` micro-batches begins (what is left of the last is dropped)."""
        self._pending = []
        self._expected = num_slices

    def terms(self, logps: torch.Tensor, entropy: torch.Tensor | None,
              inputs: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(old_logps, advantages, loss_mask)`` for the loss, from this micro-batch's log-probs."""
        assistant_mask = inputs["assistant_mask"].bool()
        old_logps = logps.detach()
        teacher_logps = inputs.get("teacher_logps")
        if teacher_logps is None:  # plain GRPO: no distillation term, divergences are 0
            teacher_logps = old_logps
        bad_rows = (~torch.isfinite(old_logps) & inputs["loss_mask"].bool()).any(1)
        clean_old = torch.nan_to_num(old_logps, nan=0.0, posinf=0.0, neginf=0.0)
        weighting = weigh_steps(self.args, clean_old, teacher_logps, inputs["step_ids"], inputs["error_steps"],
                                inputs["sequence_advantages"], inputs.get("teacher_spans"))
        loss_mask = inputs["loss_mask"]
        if bad_rows.any():
            loss_mask = loss_mask.clone()
            loss_mask[bad_rows] = 0
        self._pending.append({
            "divergence": weighting.divergence.cpu(), "valid": weighting.valid.cpu(),
            "weights": weighting.weights_per_step.cpu(),
            "entropy": (entropy[assistant_mask] if entropy is not None else torch.zeros(0)).cpu(),
            "reverse_kl": (clean_old - weighting.teacher_logps)[assistant_mask].cpu(),
            "nonfinite": (bad_rows | inputs["nonfinite_rows"]).sum().cpu(),
            # π_old and the q_t used, per token, for the trajectory viewer's page (sod_trainer.viewer)
            "logps": clean_old.cpu() if getattr(self.args, "log_completions", False) else None,
            "teacher": weighting.teacher_logps.cpu() if getattr(self.args, "log_completions", False) else None,
        })
        advantages = weighting.advantages
        if bad_rows.any():  # rows left out of the loss must not carry NaN into it (NaN * 0 is NaN)
            advantages = advantages.masked_fill(bad_rows.unsqueeze(1), 0.0)
        return old_logps, advantages, loss_mask

    def batch_complete(self) -> bool:
        return len(self._pending) >= self._expected

    def collected(self) -> tuple[StepWeighting, torch.Tensor, torch.Tensor, int]:
        """The whole rollout batch's weighting, entropies, reverse KLs and non-finite rows; clears the buffer."""
        pending, self._pending = self._pending, []
        logps, teacher = [p["logps"] for p in pending], [p["teacher"] for p in pending]
        self.last_logps = _pad_cat(logps, 0.0) if logps and all(t is not None for t in logps) else None
        weighting = StepWeighting(
            divergence=_pad_cat([p["divergence"] for p in pending], 0.0),
            valid=_pad_cat([p["valid"] for p in pending], False),
            weights_per_step=_pad_cat([p["weights"] for p in pending], 0.0),
            advantages=torch.zeros(0),
            teacher_logps=_pad_cat(teacher, 0.0) if teacher and all(t is not None for t in teacher) else None,
        )
        entropy = torch.cat([p["entropy"] for p in pending])
        reverse_kl = torch.cat([p["reverse_kl"] for p in pending])
        return weighting, entropy, reverse_kl, int(sum(int(p["nonfinite"]) for p in pending))
