"""From dataset rows to a scored training batch (SOD_SPEC §2–§5, §10).

prompts → rollouts → rewards → group advantages → student (π_old) and teacher log-probs of the sampled
tokens → step ids → d_k, w_k → combined per-token advantages, plus the diagnostics of §10.

On-policy batches (``build(..., on_policy=True)``: each rollout batch feeds exactly one optimizer step, so
π_old is the policy the loss differentiates) skip the separate student pass: the batch carries the teacher
log-probs, step ids and sequence advantages, and the trainer's loss computes ``s_t``, d_k, w_k and the
advantages from its own forward pass (:func:`weigh_steps`, the same function as here).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from .completions_log import build_samples, fill_samples
from .data import encode_prompt, row_to_messages
from .metrics import PATTERNS, per_step_means, weight_patterns
from .objective import combined_advantages, group_advantages, spread_span_logps, step_and_token_weights
from .reward_calling import RewardCaller, trl_prompts_and_completions
from .rollout.types import Trajectory

logger = logging.getLogger(__name__)

__all__ = ["RolloutScorer", "ScoredBatch", "StepWeighting", "collate_trajectories", "fill_samples", "weigh_steps"]

# (B, T) sequences; (B,) per-row values; everything else is (B, C) per completion token
SEQUENCE_KEYS = ("input_ids", "attention_mask")
ROW_KEYS = ("completion_start", "error_steps", "sequence_advantages", "nonfinite_rows")


@dataclass
class StepWeighting:
    """d_k, w_k and the combined per-token advantages of a batch (SOD_SPEC §3–§5)."""

    divergence: torch.Tensor  # (B, K)
    valid: torch.Tensor  # (B, K): step k exists
    weights_per_step: torch.Tensor  # (B, K)
    advantages: torch.Tensor  # (B, C)
    teacher_logps: torch.Tensor | None = None  # (B, C) the q_t used (spread over spans for a cross-tokenizer teacher)


def weigh_steps(args, old_logps: torch.Tensor, teacher_logps: torch.Tensor, step_ids: torch.Tensor,
                error_steps: torch.Tensor, sequence_advantages: torch.Tensor,
                teacher_spans: torch.Tensor | None = None) -> StepWeighting:
    """Step divergences, step weights and per-token advantages from π_old's and the teacher's log-probs.

    ``teacher_spans``: span ids from a teacher with another tokenizer; ``teacher_logps`` then holds span
    log-probs, spread over each span's tokens first (:func:`~sod_trainer.objective.spread_span_logps`)."""
    if teacher_spans is not None:
        teacher_logps = spread_span_logps(old_logps, teacher_logps, teacher_spans)
    divergence, valid, weights_per_step, weights = step_and_token_weights(
        old_logps, teacher_logps, step_ids, scheme=args.step_weighting, epsilon=args.sod_epsilon,
        delta=args.sod_delta, error_steps=error_steps, decay=args.decay_rate,
        iw_opd_gamma=args.iw_opd_gamma, iw_opd_epsilon=args.iw_opd_epsilon,
    )
    advantages = combined_advantages(sequence_advantages, old_logps, teacher_logps, weights,
                                     grpo_coef=args.grpo_coef, opd_coef=args.opd_coef)
    return StepWeighting(divergence, valid, weights_per_step, advantages, teacher_logps)


@dataclass
class ScoredBatch:
    """A rollout batch ready for the loss, its metrics and a few printable samples."""

    tensors: dict[str, torch.Tensor]
    metrics: dict[str, float]
    samples: list[dict[str, Any]]
    trajectories: list[Trajectory]
    reduce_sum: Callable[[torch.Tensor], torch.Tensor] = field(default=lambda t: t, repr=False)
    loss_type: str = "dapo"
    view: Any = None  # the trajectory viewer's BatchView (sod_trainer.viewer) when log_completions is on
    num_tokens: int = 0  # prompt + model tokens of the whole batch (all processes), for TRL's ``num_tokens``

    def slices(self, num_slices: int, accumulation_steps: int = 1) -> list[dict[str, torch.Tensor]]:
        """Split into ``num_slices`` micro-batches; each carries the global normalizer of its optimizer step
        (model tokens, or sequences for ``loss_type='grpo'``, summed over its accumulation window and processes)."""
        rows = self.tensors["input_ids"].shape[0]
        if rows % num_slices:
            raise ValueError(f"{rows} trajectories do not split into {num_slices} micro-batches.")
        size = rows // num_slices
        parts = []
        for index in range(num_slices):
            part = {key: value[index * size:(index + 1) * size] for key, value in self.tensors.items()}
            parts.append(_trim(part))
        windows = max(1, num_slices // max(1, accumulation_steps))
        per_window = num_slices // windows
        for window in range(windows):
            members = parts[window * per_window:(window + 1) * per_window]
            if self.loss_type == "grpo":
                local = sum((p["loss_mask"].sum(1) > 0).sum() for p in members)
            else:
                local = sum(p["loss_mask"].sum() for p in members)
            total = self.reduce_sum(torch.as_tensor(local, dtype=torch.float32,
                                                    device=members[0]["loss_mask"].device)).clamp(min=1.0)
            for part in members:
                part["normalizer"] = total
        return parts


def _trim(part: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Drop padding columns that no row of this micro-batch uses."""
    length = int(part["attention_mask"].sum(1).max().item())
    used = part.get("assistant_mask", part["loss_mask"])  # on-policy batches need every model token (for d_k)
    width = max(1, int(used.any(0).nonzero().max().item()) + 1) if used.any() else 1
    part = dict(part)
    for key in part:
        if key in SEQUENCE_KEYS:
            part[key] = part[key][:, :length]
        elif key not in ROW_KEYS:
            part[key] = part[key][:, :width]
    return part


def collate_trajectories(trajectories: Sequence[Trajectory], pad_token_id: int) -> dict[str, torch.Tensor]:
    """Right-padded ``prompt + completion`` ids and ``(B, C)`` completion tensors (ids and assistant mask)."""
    lengths = [len(t.prompt_ids) + len(t.completion_ids) for t in trajectories]
    width = max(lengths)
    completion_width = max(1, max(len(t.completion_ids) for t in trajectories))
    batch = len(trajectories)
    input_ids = torch.full((batch, width), pad_token_id, dtype=torch.long)
    attention_mask = torch.zeros((batch, width), dtype=torch.long)
    completion_ids = torch.full((batch, completion_width), pad_token_id, dtype=torch.long)
    assistant_mask = torch.zeros((batch, completion_width), dtype=torch.long)
    for row, trajectory in enumerate(trajectories):
        ids = trajectory.prompt_ids + trajectory.completion_ids
        input_ids[row, :len(ids)] = torch.tensor(ids, dtype=torch.long)
        attention_mask[row, :len(ids)] = 1
        n = len(trajectory.completion_ids)
        if n:
            completion_ids[row, :n] = torch.tensor(trajectory.completion_ids, dtype=torch.long)
            assistant_mask[row, :n] = torch.tensor(trajectory.assistant_mask, dtype=torch.long)
    completion_start = torch.tensor([len(t.prompt_ids) for t in trajectories], dtype=torch.long)
    return dict(input_ids=input_ids, attention_mask=attention_mask, completion_start=completion_start,
                completion_ids=completion_ids, assistant_mask=assistant_mask)


def error_steps_for(trajectories: Sequence[Trajectory], step_ids: torch.Tensor) -> torch.Tensor:
    """``(B,)`` step id of the first erroneous tool call (the step holding the end of that turn), -1 if none."""
    result = torch.full((len(trajectories),), -1, dtype=torch.long)
    for row, trajectory in enumerate(trajectories):
        turn_index = trajectory.first_error_turn
        if turn_index >= 0:
            turn = trajectory.turns[turn_index]
            if turn.end > turn.start:
                result[row] = int(step_ids[row, turn.end - 1])
    return result


class RolloutScorer:
    """Builds :class:`ScoredBatch` objects; holds no model of its own except through ``teacher``."""

    def __init__(self, *, args, tokenizer, teacher, segmenter, rewards: RewardCaller, accelerator):
        self.args = args
        self.tokenizer = tokenizer
        self.teacher = teacher
        self.segmenter = segmenter
        self.reward_caller = rewards
        self.accelerator = accelerator

    # ------------------------------------------------------------------ prompts and rewards
    def encode_prompts(self, rows, extras, options=None) -> tuple[list[list[dict]], list[list[int]]]:
        """Prompt messages and ids; rows reach here without their dataset index (the upfront check has it).
        ``options``: per row, extra rendering arguments from its environment (TRL-style function tools)."""
        messages, ids = [], []
        for row, extra, option in zip(rows, extras, options or [{}] * len(rows)):
            option = dict(option)
            supplied = option.pop("environment_prompt", False)
            row_messages = row_to_messages(row, None, extra, environment_prompt=supplied)
            messages.append(row_messages)
            ids.append(encode_prompt(
                self.tokenizer, row_messages, max_prompt_length=self.args.max_prompt_length,
                truncation=self.args.prompt_truncation, index=None,
                chat_template_kwargs=self.args.chat_template_kwargs, **option,
            ))
        return messages, ids

    def rewards(self, rows, prompts, completions, trajectories, environments=None, trainer_state=None
                ) -> tuple[torch.Tensor, torch.Tensor, dict[str, float]]:
        """The reward sources called as TRL calls them: ``(B, F)`` rewards (NaN = None), the ``(B,)`` weighted sum
        (NaN for a row every source left out) and the failure counts (``reward_failure_policy='contain'``)."""
        caller = self.reward_caller
        if not len(caller):
            return torch.zeros(len(completions), 0), torch.zeros(len(completions)), {}
        per_function, metrics = caller(rows, prompts, completions, [list(t.completion_ids) for t in trajectories],
                                       trainer_state=trainer_state, environments=environments,
                                       trajectories=trajectories)
        unscorable = torch.isnan(per_function).all(dim=1)
        rewards = (per_function * caller.weights.unsqueeze(0)).nansum(dim=1)
        rewards[unscorable] = torch.nan
        return per_function, rewards, metrics

    # ------------------------------------------------------------------ the batch
    def _in_row_chunks(self, function, tensors, **kwargs):
        size = max(1, self.args.per_device_train_batch_size)
        outputs = []
        for start in range(0, tensors["input_ids"].shape[0], size):
            sl = slice(start, start + size)
            outputs.append(function(tensors["input_ids"][sl], tensors["attention_mask"][sl],
                                    tensors["completion_start"][sl], tensors["assistant_mask"][sl], **kwargs))
        return outputs

    def build(self, rows, engine, student_logprobs, on_policy: bool = False, trainer_state=None) -> ScoredBatch:
        """Roll ``rows`` out and score them. ``on_policy``: leave π_old to the loss (see the module docstring);
        ``trainer_state`` reaches the reward functions (TRL's ``trainer_state``)."""
        args = self.args
        device = self.accelerator.device
        environments, extras = engine.make_environments(rows)
        try:
            prompt_messages, prompt_ids = self.encode_prompts(rows, extras, [e.prompt_options() for e in environments])
        except Exception:
            for environment in environments:
                environment.close()
            raise
        trajectories = engine.rollout(prompt_ids, rows, environments)
        prompts, completions = trl_prompts_and_completions(rows, prompt_messages, trajectories, self.tokenizer)
        # TRL's `environments`: each rollout's own environment object (the user's, not SOD's adapter around it)
        user_environments = [t.environment if t.environment is not None else e
                             for t, e in zip(trajectories, environments)]
        per_function, rewards, reward_metrics = self.rewards(rows, prompts, completions, trajectories,
                                                             environments=user_environments,
                                                             trainer_state=trainer_state)

        cpu = collate_trajectories(trajectories, self.tokenizer.pad_token_id)
        tensors = {key: value.to(device) for key, value in cpu.items()}
        old_logps = entropy = None
        if not on_policy:
            student = self._in_row_chunks(student_logprobs, tensors, with_entropy=True)
            old_logps = torch.cat([logps for logps, _ in student])
            entropy = torch.cat([ent for _, ent in student])
        teacher_spans = None
        if self.teacher is not None and hasattr(self.teacher, "score_trajectories"):  # another tokenizer
            cross = self.teacher.score_trajectories(
                trajectories, prompt_messages, tensors["assistant_mask"].shape[1],
                rows_per_call=max(1, args.per_device_train_batch_size), device=device)
            teacher_logps, teacher_spans = cross.logps, cross.span_ids
            unaligned = tensors["assistant_mask"].bool() & ~cross.aligned
            reward_metrics = {**reward_metrics, **self._cross_metrics(cross.stats)}
        elif self.teacher is not None:
            teacher_logps = torch.cat(self._in_row_chunks(self.teacher.score, tensors)).to(device)
        else:  # plain GRPO: no distillation term, divergences are 0
            teacher_logps = None if on_policy else old_logps.clone()

        assistant_mask = tensors["assistant_mask"]
        step_ids = self.segmenter(tensors["completion_ids"], assistant_mask).to(device)
        error_steps = error_steps_for(trajectories, step_ids.cpu()).to(device)
        # a row every reward source left out (all None) is outside the group baseline and gets no advantage (TRL)
        # and, as there, a NaN advantage (a group with a single scored row) is 0; a group with an infinite reward
        # keeps its NaN, so the loss is non-finite and that update is skipped (counted in skipped_updates)
        sequence_advantages = group_advantages(rewards, args.num_generations, scale=args.scale_rewards == "group")
        infinite = torch.isinf(rewards).view(-1, args.num_generations).any(1).repeat_interleave(args.num_generations)
        sequence_advantages = sequence_advantages.masked_fill(torch.isnan(sequence_advantages) & ~infinite, 0.0)
        sequence_advantages = sequence_advantages.to(device)
        loss_mask = assistant_mask.clone()
        if teacher_spans is not None:  # tokens the teacher's tokenization cannot be aligned with: no signal
            loss_mask[unaligned] = 0
        if args.mask_truncated_completions:
            truncated = torch.tensor([t.truncated for t in trajectories], device=device)
            loss_mask[truncated] = 0
        finite = torch.ones_like(loss_mask, dtype=torch.bool)
        for logps in (old_logps, teacher_logps):
            if logps is not None:
                finite &= torch.isfinite(logps)
        bad_rows = (~finite & loss_mask.bool()).any(1)
        if bad_rows.any():
            logger.warning("%d trajectories have non-finite log-probs; they are left out of the loss (counted in "
                           "nonfinite_logprob_trajectories).",
                           int(bad_rows.sum()))
            loss_mask[bad_rows] = 0

        batch_tensors = dict(input_ids=tensors["input_ids"], attention_mask=tensors["attention_mask"],
                             completion_start=tensors["completion_start"], loss_mask=loss_mask)
        metrics = self.rollout_metrics(trajectories, per_function, rewards, reward_metrics)
        extra, logged = self.reward_caller.flush(len(trajectories), self._gather_object, self._gather_mean)
        metrics.update(logged)
        weighting = None
        if on_policy:
            batch_tensors.update(assistant_mask=assistant_mask, step_ids=step_ids, error_steps=error_steps,
                                 sequence_advantages=sequence_advantages, nonfinite_rows=bad_rows)
            if teacher_logps is not None:
                batch_tensors["teacher_logps"] = torch.nan_to_num(teacher_logps, nan=0.0, posinf=0.0, neginf=0.0)
            if teacher_spans is not None:
                batch_tensors["teacher_spans"] = teacher_spans
            samples = self._samples(trajectories, prompts, completions, per_function, rewards, sequence_advantages,
                                    extra, None)
        else:
            weighting = weigh_steps(args, old_logps, teacher_logps, step_ids, error_steps, sequence_advantages,
                                    teacher_spans)
            advantages = weighting.advantages
            if bad_rows.any():
                advantages = torch.nan_to_num(advantages, nan=0.0, posinf=0.0, neginf=0.0)
                old_logps = torch.nan_to_num(old_logps, nan=0.0, posinf=0.0, neginf=0.0)
            batch_tensors.update(old_logps=old_logps, advantages=advantages)
            mask = assistant_mask.bool()
            metrics.update(self.student_metrics(weighting, entropy[mask], (old_logps - weighting.teacher_logps)[mask],
                                                int(bad_rows.sum())))
            samples = self._samples(trajectories, prompts, completions, per_function, rewards, sequence_advantages,
                                    extra, weighting)
        view = None
        if args.log_completions and self.accelerator.is_main_process:  # the trajectory page (sod_trainer.viewer)
            from .viewer import BatchView

            view = BatchView.from_scoring(trajectories, rewards, step_ids, error_steps, teacher_logps, old_logps,
                                          weighting, args)
        reduce_sum = lambda t: self.accelerator.reduce(t, reduction="sum")  # noqa: E731
        model_tokens = sum(len(t.prompt_ids) + sum(t.assistant_mask) for t in trajectories)
        num_tokens = int(reduce_sum(torch.tensor(model_tokens, dtype=torch.long, device=device)).item())
        return ScoredBatch(batch_tensors, metrics, samples, trajectories, reduce_sum=reduce_sum,
                           loss_type=args.loss_type, num_tokens=num_tokens, view=view)

    # ------------------------------------------------------------------ diagnostics
    def _cross_metrics(self, stats: dict[str, float]) -> dict[str, float]:
        """A cross-tokenizer teacher's alignment counts: summed over processes, ratios and times averaged."""
        summed = ("teacher/unaligned_tokens",)
        values = torch.tensor([stats[key] for key in stats], dtype=torch.float64, device=self.accelerator.device)
        values = self.accelerator.reduce(values, reduction="sum")
        processes = max(1, self.accelerator.num_processes)
        return {key: float(value) if key in summed else float(value) / processes
                for key, value in zip(stats, values.tolist())}

    def _gather_mean(self, values: list[float]) -> float:
        tensor = torch.tensor([sum(values), len(values)], dtype=torch.float64, device=self.accelerator.device)
        total = self.accelerator.reduce(tensor, reduction="sum")
        return float(total[0] / total[1]) if total[1] > 0 else float("nan")

    def _gather(self, values) -> torch.Tensor:
        """This batch's per-row values of every process, as one CPU tensor (TRL gathers before its statistics)."""
        tensor = torch.as_tensor(values, dtype=torch.float32).to(self.accelerator.device)
        return self.accelerator.gather(tensor).cpu()

    def _gather_object(self, objects: list) -> list:
        from accelerate.utils import gather_object

        return gather_object(objects) if self.accelerator.num_processes > 1 else list(objects)

    def rollout_metrics(self, trajectories, rewards_per_function, rewards, reward_metrics) -> dict[str, float]:
        """TRL's reward, length and tool metrics (same names, same meaning, gathered over processes), then SOD's own:
        everything that does not need the student's log-probs."""
        from trl.trainer.utils import nanstd

        gather = self._gather
        names = self.reward_caller.names
        metrics: dict[str, float] = {}
        # completions: TRL counts model tokens only (its tool_mask), and "clipped" = cut by the budget
        lengths = gather([float(sum(t.assistant_mask)) for t in trajectories])
        clipped = gather([float(t.truncated) for t in trajectories]).bool()
        terminated = lengths[~clipped] if (~clipped).any() else torch.zeros(1)
        metrics.update({
            "completions/mean_length": float(lengths.mean()),
            "completions/min_length": float(lengths.min()),
            "completions/max_length": float(lengths.max()),
            "completions/clipped_ratio": float(clipped.float().mean()),
            "completions/mean_terminated_length": float(terminated.mean()),
            "completions/min_terminated_length": float(terminated.min()),
            "completions/max_terminated_length": float(terminated.max()),
        })
        calls = gather([float(_tool_calls(t)) for t in trajectories]).sum()
        failures = gather([float(_tool_failures(t)) for t in trajectories]).sum()
        metrics["tools/call_frequency"] = float(calls / lengths.numel())
        metrics["tools/failure_frequency"] = float(failures / calls) if calls > 0 else 0.0
        # rewards: per source over the rows it scored, then the weighted sum without the unscorable rows
        if names:
            per_function = gather(rewards_per_function)
            for j, name in enumerate(names):
                metrics[f"rewards/{name}/mean"] = float(torch.nanmean(per_function[:, j]))
                metrics[f"rewards/{name}/std"] = float(nanstd(per_function[:, j]))
        all_rewards = gather(rewards)
        group = self.args.num_generations
        if group > 1 and all_rewards.numel() % group == 0:
            std = nanstd(all_rewards.view(-1, group), dim=1)
            zero_std = torch.isclose(std, torch.zeros_like(std)).repeat_interleave(group)
        else:
            zero_std = torch.ones_like(all_rewards, dtype=torch.bool)
        metrics["reward"] = float(torch.nanmean(all_rewards))
        metrics["reward_std"] = float(nanstd(all_rewards))
        metrics["frac_reward_zero_std"] = float(zero_std.float().mean())
        scored = all_rewards[~torch.isnan(all_rewards)]
        # SOD's own
        mean = self._gather_mean
        metrics.update({
            "accuracy": float((scored > 0).float().mean()) if scored.numel() else float("nan"),
            "trajectories/mean_length": mean([t.completion_length for t in trajectories]),  # tool output included
            "tools/failures_per_trajectory": mean([_tool_failures(t) for t in trajectories]),  # the demo table's unit
            "tools/timeouts_per_trajectory": mean([sum(bool(turn.metadata.get("timed_out")) for turn in t.turns)
                                                   for t in trajectories]),
            "tools/error_trajectory_ratio": mean([float(t.num_tool_errors > 0) for t in trajectories]),
            # the environment itself crashed or hung (a bug to fix), apart from the model's failed tool calls
            "tools/environment_failures": mean([float(t.environment_failure is not None) for t in trajectories]),
        })
        metrics.update(reward_metrics)
        return metrics

    def student_metrics(self, weighting: StepWeighting, entropy: torch.Tensor, reverse_kl: torch.Tensor,
                        nonfinite_rows: int) -> dict[str, float]:
        """SOD_SPEC §10 diagnostics of a whole rollout batch: entropy and reverse KL over model tokens,
        d_k and w_k per step, weight patterns. Collective (every process calls it once per batch)."""
        args = self.args
        mean = self._gather_mean
        divergence, valid, weights_per_step = weighting.divergence, weighting.valid, weighting.weights_per_step
        metrics = {
            "steps_per_trajectory": mean(valid.sum(1).tolist()),
            "entropy": mean(entropy.tolist()) if entropy.numel() else float("nan"),
            "opd/reverse_kl": mean(reverse_kl.tolist()) if reverse_kl.numel() else float("nan"),
            "weights/mean": mean(weights_per_step[valid].tolist()),
            "weights/min": float(self.accelerator.gather(  # accelerate's reduce has no "min"
                weights_per_step.masked_fill(~valid, math.inf).min().reshape(1).to(self.accelerator.device)
            ).min().item()),
            "nonfinite_logprob_trajectories": float(nonfinite_rows),
        }
        for k, value in enumerate(per_step_means(divergence, valid, args.log_step_indices)):
            metrics[f"divergence/step_{k + 1}"] = value
        for k, value in enumerate(per_step_means(weights_per_step, valid, args.log_step_indices)):
            metrics[f"weights/step_{k + 1}"] = value
        shown = min(args.log_step_indices, valid.shape[1])  # how many trajectories each step-k mean rests on
        reaching = torch.zeros(args.log_step_indices, dtype=torch.float64, device=self.accelerator.device)
        reaching[:shown] = valid[:, :shown].sum(0).to(device=reaching.device, dtype=torch.float64)
        for k, value in enumerate(self.accelerator.reduce(reaching, reduction="sum").tolist()):
            metrics[f"steps/reaching_{k + 1}"] = value
        labels = weight_patterns(weights_per_step, valid, args.pattern_threshold)
        for pattern in PATTERNS:
            metrics[f"patterns/{pattern}"] = mean([float(label == pattern) for label in labels])
        return metrics

    def _samples(self, trajectories, prompts, completions, rewards_per_function, rewards, advantages, extra,
                 weighting: StepWeighting | None) -> list[dict[str, Any]]:
        """The batch's records for ``log_completions`` (all rows; none when it is off): see :mod:`.completions_log`."""
        if not self.args.log_completions:
            return []
        samples = build_samples(self.tokenizer, trajectories, prompts, completions, self.reward_caller.names,
                                rewards_per_function, rewards, advantages.cpu(), extra)
        if weighting is not None:
            fill_samples(samples, weighting)
        return samples


def _tool_calls(trajectory: Trajectory) -> int:
    """Tool calls of a trajectory as TRL counts them (a function-tool turn may make several)."""
    return trajectory.num_function_calls


def _tool_failures(trajectory: Trajectory) -> int:
    """Failed tool calls of a trajectory as TRL counts them."""
    return trajectory.num_function_call_failures
