"""Logging for :class:`~sod_trainer.SODTrainer` (a mixin over ``transformers.Trainer``): the metrics collected in
``self._metrics`` averaged into each ``log`` call (``eval_`` prefixed in evaluation), TRL's ``clip_ratio/*``, the
on-policy diagnostics of a rollout batch, and the sample trajectories / completions table / trajectory page of
``log_completions``.
"""

from __future__ import annotations

import math

import torch

from .scoring import fill_samples

__all__ = ["LoggingMixin"]


class LoggingMixin:
    """``log`` and the metric helpers of :class:`~sod_trainer.SODTrainer`; put before ``Trainer`` in the bases (its
    ``super().log`` is ``Trainer``'s)."""

    def _log_clip_ratios(self, mode: str, stats: dict[str, torch.Tensor], mask: torch.Tensor) -> None:
        """TRL's ``clip_ratio/*`` (token means over all processes; the min / max of the per-sequence means) and
        SOD's ``dual_clip_ratio``."""
        from trl.trainer.utils import nanmax, nanmin

        def global_masked_mean(x: torch.Tensor) -> float:
            totals = self.accelerator.reduce(torch.stack([(x * mask).sum(), mask.sum().float()]), reduction="sum")
            return float(totals[0] / totals[1].clamp(min=1.0))

        def sequence_means(x: torch.Tensor) -> torch.Tensor:
            return self.accelerator.gather((x * mask).sum(-1) / mask.sum(-1))  # NaN for a row without tokens

        low, high = stats["clipped_low"].float(), stats["clipped_high"].float()
        metrics = self._metrics[mode]
        metrics["clip_ratio/low_mean"].append(global_masked_mean(low))
        metrics["clip_ratio/high_mean"].append(global_masked_mean(high))
        metrics["clip_ratio/region_mean"].append(global_masked_mean(((low + high) > 0).float()))
        metrics["clip_ratio/low_min"].append(float(nanmin(sequence_means(low))))
        metrics["clip_ratio/high_max"].append(float(nanmax(sequence_means(high))))
        metrics["dual_clip_ratio"].append(global_masked_mean(stats["dual_clipped"].float()))

    def _log_on_policy_metrics(self, mode: str) -> None:
        """The §10 diagnostics of an on-policy rollout batch, once its last micro-batch has been through the loss."""
        weighting, entropy, reverse_kl, nonfinite = self._on_policy_weighting.collected()
        for key, value in self.scorer.student_metrics(weighting, entropy, reverse_kl, nonfinite).items():
            self._metrics[mode][key].append(value)
        fill_samples(self._last_samples, weighting)
        if self._last_view is not None:
            self._last_view.fill(weighting, self._on_policy_weighting.last_logps)

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        mode = "train" if self.model.training else "eval"
        metrics = {}
        for key, values in self._metrics[mode].items():
            valid = [v for v in values if not math.isnan(v)]
            metrics[key] = sum(valid) / len(valid) if valid else None
        if mode == "eval":
            metrics = {f"eval_{key}": value for key, value in metrics.items()}
        logs = {**logs, **{k: v for k, v in metrics.items() if v is not None}}
        super().log(logs, start_time)
        self._metrics[mode].clear()
        if self.args.log_completions:
            self._log_completions()

    def _log_completions(self) -> None:
        """Print sample trajectories, write TRL's completions table (every process takes part in the gather) and
        the trajectory page (:mod:`sod_trainer.viewer`)."""
        from accelerate.utils import gather_object

        from .completions_log import completions_table, write_completions_table
        from .printing import print_trajectories

        samples = self._last_samples  # kept (TRL keeps its table of the latest generation batch too)
        if self.accelerator.num_processes > 1:
            samples = gather_object(list(samples))
        if not self.accelerator.is_main_process:
            return
        if samples:
            print_trajectories(samples[: self.args.num_completions_to_print or 1], self.state.global_step)
            write_completions_table(completions_table(samples, self.state.global_step), self.args,
                                    self.state.global_step)
        if self._last_view is not None:
            from .viewer import log_batch  # the trajectory page: output_dir/trajectories/, wandb, trackio

            log_batch(self, self._last_view)
            self._last_view = None
