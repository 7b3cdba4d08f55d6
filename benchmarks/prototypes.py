"""Prototypes of the performance fixes recommended in docs/performance.md, kept here so the benchmarks can
measure them next to the library's current code. They are not part of the package; the lead owns the files
they would change (``logprobs.py``, ``scoring.py``, ``trainer.py``).

1. :func:`fast_sampled_token_logprobs` — ``logprobs.sampled_token_logprobs`` with (a) the entropy computed
   only when asked for (today every chunk builds a full softmax for the entropy, also in the training pass,
   where the result is thrown away, and again when the checkpointed chunk is recomputed in backward), and
   (b) a custom autograd function per chunk that saves the chunk's log-normalizer and recomputes only the
   logits in backward, instead of ``torch.utils.checkpoint`` re-running logsumexp, softmax and entropy.
2. :class:`FusedSODTrainer` — when a rollout batch feeds exactly one optimizer step (``num_iterations == 1``
   and ``steps_per_generation == gradient_accumulation_steps``, the default), π_old equals the current
   policy at loss time, so the separate no-grad student pass is redundant (TRL's GRPOTrainer skips it in the
   same case). The student's sampled-token log-probs ``s_t`` are then taken (detached) from the training
   forward pass, and d_k, w_k and the advantages are computed inside ``compute_loss``. Gradients are the same
   (``ratio = exp(logp - logp.detach()) = 1``, same advantages); one student forward pass per step is saved.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from sod_trainer.logprobs import _capture_hidden, completion_positions, unwrap_causal_lm
from sod_trainer.objective import (
    clipped_surrogate_loss,
    combined_advantages,
    group_advantages,
    step_divergence,
    step_weights,
)
from sod_trainer.scoring import RolloutScorer, ScoredBatch, error_steps_for
from sod_trainer.trainer import SODTrainer

__all__ = ["fast_sampled_token_logprobs", "FusedSODTrainer"]


# ---------------------------------------------------------------------------------------------- 1. log-probs
class _ChunkLogProb(torch.autograd.Function):
    """log p(target) for one chunk of hidden states through a linear head, without keeping the logits."""

    @staticmethod
    def forward(ctx, hidden, weight, targets, inv_temperature: float, with_entropy: bool):
        logits = (hidden @ weight.t()).float()
        if inv_temperature != 1.0:
            logits = logits * inv_temperature
        normalizer = torch.logsumexp(logits, dim=-1)
        logps = logits.gather(-1, targets.unsqueeze(-1)).squeeze(-1) - normalizer
        entropy = None
        if with_entropy:
            probs = torch.exp(logits - normalizer.unsqueeze(-1))
            entropy = normalizer - (probs * logits).sum(-1)
        ctx.save_for_backward(hidden, weight, targets, normalizer)
        ctx.inv_temperature = inv_temperature
        if entropy is None:
            entropy = torch.empty(0, device=hidden.device)
        ctx.mark_non_differentiable(entropy)
        return logps, entropy

    @staticmethod
    def backward(ctx, grad_logps, _grad_entropy):
        hidden, weight, targets, normalizer = ctx.saved_tensors
        logits = (hidden @ weight.t()).float()
        if ctx.inv_temperature != 1.0:
            logits = logits * ctx.inv_temperature
        # d logp / d logits = onehot(target) - softmax; reuse the logits buffer for the gradient
        grad_logits = logits.sub_(normalizer.unsqueeze(-1)).exp_().mul_(-grad_logps.unsqueeze(-1))
        grad_logits.scatter_add_(-1, targets.unsqueeze(-1), grad_logps.unsqueeze(-1).to(grad_logits.dtype))
        if ctx.inv_temperature != 1.0:
            grad_logits.mul_(ctx.inv_temperature)
        grad_logits = grad_logits.to(hidden.dtype)
        grad_hidden = grad_logits @ weight if ctx.needs_input_grad[0] else None
        grad_weight = grad_logits.t() @ hidden if ctx.needs_input_grad[1] else None
        return grad_hidden, grad_weight, None, None, None


def _chunk_no_grad(hidden, weight, targets, inv_temperature, with_entropy):
    logits = (hidden @ weight.t()).float()
    if inv_temperature != 1.0:
        logits = logits * inv_temperature
    normalizer = torch.logsumexp(logits, dim=-1)
    logps = logits.gather(-1, targets.unsqueeze(-1)).squeeze(-1) - normalizer
    entropy = None
    if with_entropy:
        entropy = normalizer - (torch.softmax(logits, dim=-1) * logits).sum(-1)
    return logps, entropy


def fast_sampled_token_logprobs(
    model, input_ids, attention_mask, completion_start, token_mask, *, temperature: float = 1.0,
    chunk_size: int = 1024, with_entropy: bool = False,
):
    """Drop-in for ``sod_trainer.logprobs.sampled_token_logprobs`` (same inputs, same outputs)."""
    from sod_trainer.logprobs import sampled_token_logprobs

    causal_lm = unwrap_causal_lm(model)
    head = causal_lm.get_output_embeddings()
    if (getattr(causal_lm.config, "final_logit_softcapping", None) or not isinstance(head, torch.nn.Linear)
            or head.bias is not None):
        return sampled_token_logprobs(model, input_ids, attention_mask, completion_start, token_mask,
                                      temperature=temperature, chunk_size=chunk_size, with_entropy=with_entropy)
    decoder = causal_lm.get_decoder()
    with _capture_hidden(decoder) as captured:
        model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False, logits_to_keep=1)
    hidden = captured.pop("hidden")
    batch, length = token_mask.shape
    positions = completion_positions(completion_start, length, input_ids.shape[1])
    targets = input_ids.gather(1, positions)
    selected = token_mask.bool().reshape(-1).nonzero(as_tuple=True)[0]
    rows = selected // length
    source = positions.reshape(-1).index_select(0, selected) - 1
    flat_hidden = hidden[rows, source]
    flat_targets = targets.reshape(-1).index_select(0, selected)
    inv_temperature = 1.0 / temperature
    grad = torch.is_grad_enabled() and (flat_hidden.requires_grad or head.weight.requires_grad)
    logps_chunks, entropy_chunks = [], []
    for start in range(0, flat_targets.numel(), chunk_size):
        h = flat_hidden[start:start + chunk_size]
        t = flat_targets[start:start + chunk_size]
        if grad:
            logps, entropy = _ChunkLogProb.apply(h, head.weight, t, inv_temperature, with_entropy)
        else:
            logps, entropy = _chunk_no_grad(h, head.weight, t, inv_temperature, with_entropy)
        logps_chunks.append(logps)
        if with_entropy:
            entropy_chunks.append(entropy.detach())
    flat_logps = torch.zeros(batch * length, dtype=torch.float32, device=input_ids.device)
    if logps_chunks:
        flat_logps = flat_logps.index_put((selected,), torch.cat(logps_chunks))
    entropy = None
    if with_entropy:
        flat_entropy = torch.zeros(batch * length, dtype=torch.float32, device=input_ids.device)
        if entropy_chunks:
            flat_entropy = flat_entropy.index_put((selected,), torch.cat(entropy_chunks))
        entropy = flat_entropy.view(batch, length)
    return flat_logps.view(batch, length), entropy


# ---------------------------------------------------------------------------------------------- 2. fused π_old
FUSED_KEYS = ("input_ids", "attention_mask", "completion_start", "loss_mask", "assistant_mask", "teacher_logps",
              "step_ids", "error_steps", "sequence_advantages")
PER_TOKEN = ("loss_mask", "assistant_mask", "teacher_logps", "step_ids")
STUDENT_METRICS = ("entropy", "opd/reverse_kl", "weights/mean", "weights/min", "divergence/", "weights/step_",
                   "patterns/", "steps_per_trajectory")


class _FusedBatch(ScoredBatch):
    def slices(self, num_slices: int, accumulation_steps: int = 1) -> list[dict[str, torch.Tensor]]:
        rows = self.tensors["input_ids"].shape[0]
        size = rows // num_slices
        parts = []
        for index in range(num_slices):
            part = {key: self.tensors[key][index * size:(index + 1) * size] for key in FUSED_KEYS}
            length = int(part["attention_mask"].sum(1).max().item())
            part["input_ids"] = part["input_ids"][:, :length]
            part["attention_mask"] = part["attention_mask"][:, :length]
            mask = part["assistant_mask"]
            width = max(1, int(mask.any(0).nonzero().max().item()) + 1) if mask.any() else 1
            for key in PER_TOKEN:
                part[key] = part[key][:, :width]
            parts.append(part)
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


class _FusedScorer(RolloutScorer):
    """``RolloutScorer.build`` without the student pass: keeps what the loss needs to weight steps itself.

    Wraps the library's ``build`` (so it follows its changes): the student pass is replaced by a stub that
    returns zeros, and the teacher log-probs, step ids, assistant mask and rewards are captured on the way.
    """

    def build(self, rows, engine, student_logprobs, *args, **kwargs) -> ScoredBatch:
        if self.teacher is None:
            return super().build(rows, engine, student_logprobs, *args, **kwargs)
        captured: dict[str, Any] = {"teacher": []}

        def stub(input_ids, attention_mask, completion_start, token_mask, with_entropy=False):
            zeros = torch.zeros(token_mask.shape, dtype=torch.float32, device=input_ids.device)
            return zeros, (zeros.clone() if with_entropy else None)

        teacher_score, segmenter = self.teacher.score, self.segmenter
        had_rewards = "rewards" in self.__dict__
        rewards = self.rewards

        def capture_teacher(*a, **k):
            out = teacher_score(*a, **k)
            captured["teacher"].append(out)
            return out

        def capture_segmenter(completion_ids, assistant_mask):
            out = segmenter(completion_ids, assistant_mask)
            captured["step_ids"], captured["assistant_mask"] = out, assistant_mask
            return out

        def capture_rewards(*a, **k):
            out = rewards(*a, **k)
            captured["rewards"] = out[0]
            return out

        self.teacher.score, self.segmenter, self.rewards = capture_teacher, capture_segmenter, capture_rewards
        try:
            batch = super().build(rows, engine, stub, *args, **kwargs)
        finally:
            self.teacher.score, self.segmenter = teacher_score, segmenter
            if had_rewards:
                self.rewards = rewards
            else:
                del self.rewards
        args_ = self.args
        device = self.accelerator.device
        step_ids = captured["step_ids"].to(device)
        tensors = dict(batch.tensors)
        tensors.pop("old_logps")
        tensors.pop("advantages")
        tensors.update(
            assistant_mask=captured["assistant_mask"].to(device),
            teacher_logps=torch.cat(captured["teacher"]).to(device), step_ids=step_ids,
            error_steps=error_steps_for(batch.trajectories, step_ids.cpu()).to(device),
            sequence_advantages=group_advantages(captured["rewards"], args_.num_generations,
                                                 scale=args_.scale_rewards == "group").to(device),
        )
        metrics = {k: v for k, v in batch.metrics.items() if not k.startswith(STUDENT_METRICS)}
        return _FusedBatch(tensors, metrics, [], batch.trajectories, reduce_sum=batch.reduce_sum,
                           loss_type=batch.loss_type)


class FusedSODTrainer(SODTrainer):
    """SODTrainer with prototypes 1 and 2 (fused π_old when on-policy, lean chunked log-probs)."""

    def __init__(self, *args, fuse_old_logps: bool = True, **kwargs):
        super().__init__(*args, **kwargs)
        self.fused = (fuse_old_logps and self.args.num_iterations == 1
                      and self.args.steps_per_generation == self.args.gradient_accumulation_steps)
        if self.fused:
            scorer = self.scorer
            self.scorer = _FusedScorer(args=self.args, tokenizer=scorer.tokenizer, teacher=scorer.teacher,
                                       segmenter=scorer.segmenter, reward_funcs=scorer.reward_funcs,
                                       accelerator=scorer.accelerator)
        self.scorer.teacher.score = self._teacher_score  # lean log-probs for the teacher too

    @torch.no_grad()
    def _teacher_score(self, input_ids, attention_mask, completion_start, token_mask):
        teacher = self.scorer.teacher
        logps, _ = fast_sampled_token_logprobs(teacher.model, input_ids, attention_mask, completion_start,
                                               token_mask, temperature=teacher.temperature,
                                               chunk_size=teacher.chunk_size)
        return logps

    def _student_logprobs(self, input_ids, attention_mask, completion_start, token_mask, with_entropy=False):
        return fast_sampled_token_logprobs(
            self.model, input_ids, attention_mask, completion_start, token_mask,
            temperature=self.args.temperature, chunk_size=self.args.logprob_chunk_size, with_entropy=with_entropy,
        )

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        if not self.fused or "teacher_logps" not in inputs:
            return self._compute_loss_unfused(model, inputs)
        args = self.args
        mode = "train" if model.training else "eval"
        loss_mask = inputs["loss_mask"]
        assistant_mask = inputs["assistant_mask"]
        logps, entropy = fast_sampled_token_logprobs(
            model, inputs["input_ids"], inputs["attention_mask"], inputs["completion_start"], assistant_mask,
            temperature=args.temperature, chunk_size=args.logprob_chunk_size, with_entropy=True,
        )
        old_logps = logps.detach()
        teacher_logps = inputs["teacher_logps"]
        step_ids = inputs["step_ids"]
        divergence, valid = step_divergence(old_logps, teacher_logps, step_ids)
        weights_per_step = step_weights(
            divergence, valid, scheme=args.step_weighting, epsilon=args.sod_epsilon, delta=args.sod_delta,
            error_steps=inputs["error_steps"], decay=args.decay_rate,
        )
        weights = torch.gather(weights_per_step, 1, step_ids.clamp(min=0)) * (step_ids >= 0)
        advantages = combined_advantages(inputs["sequence_advantages"], old_logps, teacher_logps, weights,
                                         grpo_coef=args.grpo_coef, opd_coef=args.opd_coef)
        nonfinite = ~(torch.isfinite(old_logps) & torch.isfinite(teacher_logps)) & loss_mask.bool()
        if nonfinite.any():
            loss_mask = loss_mask.clone()
            loss_mask[nonfinite.any(1)] = 0
            advantages = torch.nan_to_num(advantages, nan=0.0, posinf=0.0, neginf=0.0)
        if args.loss_type == "grpo":
            token_scale = loss_mask / loss_mask.sum(1, keepdim=True).clamp(min=1)
        else:
            token_scale = loss_mask.to(logps.dtype)
        normalizer = inputs["normalizer"] / self.accelerator.num_processes
        loss, stats = clipped_surrogate_loss(
            logps, old_logps, advantages, token_scale, epsilon_low=args.epsilon, epsilon_high=args.epsilon_high,
            dual_clip=args.dual_clip, normalizer=normalizer,
        )
        mask = assistant_mask.bool()
        metrics = self._metrics[mode]
        metrics["entropy"].append(float(entropy[mask].mean()) if mask.any() else math.nan)
        metrics["opd/reverse_kl"].append(float((old_logps - teacher_logps)[mask].mean()) if mask.any() else math.nan)
        metrics["weights/mean"].append(float(weights_per_step[valid].mean()) if valid.any() else math.nan)
        metrics["steps_per_trajectory"].append(float(valid.sum(1).float().mean()))
        total = loss_mask.bool().sum().clamp(min=1)
        lm = loss_mask.bool()
        for name, key in (("clipped_low", "low"), ("clipped_high", "high"), ("dual_clipped", "dual")):
            metrics[f"clip_ratio/{key}"].append(float(((stats[name] & lm).sum() / total)))
        if not bool(torch.isfinite(loss)):
            self._skip_update = True
            loss = (logps * 0.0).sum()
        return loss

    def _compute_loss_unfused(self, model, inputs):
        # the library's compute_loss with the lean log-probs
        import sod_trainer.trainer as trainer_module

        original = trainer_module.sampled_token_logprobs
        trainer_module.sampled_token_logprobs = fast_sampled_token_logprobs
        try:
            return SODTrainer.compute_loss(self, model, inputs)
        finally:
            trainer_module.sampled_token_logprobs = original


def gradients_match(reference: SODTrainer, candidate: FusedSODTrainer, rows: list[dict[str, Any]],
                    atol: float = 1e-6) -> dict[str, float]:
    """Loss and gradients of one rollout batch, library vs prototype, on the same trajectories.

    The candidate's models must start equal to the reference's. The reference's rollout is replayed for
    the candidate (its backend returns the same token ids), so both losses see identical batches.
    """
    from sod_trainer.rollout.types import GenerationOutput

    recorded: list[list[GenerationOutput]] = []
    backend = reference.rollout_engine.backend
    original = backend.generate

    def record(contexts, budgets, stops=()):
        outputs = original(contexts, budgets, stops)
        recorded.append(outputs)
        return outputs

    class Replay:
        eos_token_ids = getattr(backend, "eos_token_ids", set())

        def generate(self, contexts, budgets, stops=()):
            return recorded.pop(0)

    backend.generate = record
    results = {}
    try:
        grads = []
        for trainer in (reference, candidate):
            if trainer is candidate:
                saved = trainer.rollout_engine.backend
                trainer.rollout_engine.backend = Replay()
            trainer.model.train()
            trainer._step = 0
            trainer._buffered_inputs = None
            inputs = trainer._prepare_inputs(list(rows))
            trainer.model.zero_grad(set_to_none=True)
            loss = trainer.compute_loss(trainer.model, inputs)
            loss.backward()
            grads.append(torch.cat([p.grad.flatten() for p in trainer.model.parameters() if p.grad is not None]))
            results[f"loss_{'reference' if trainer is reference else 'candidate'}"] = float(loss)
            trainer.model.zero_grad(set_to_none=True)
            if trainer is candidate:
                trainer.rollout_engine.backend = saved
    finally:
        backend.generate = original
    difference = (grads[0] - grads[1]).abs().max().item()
    results.update(max_abs_grad_difference=difference, grad_norm=float(grads[0].norm()),
                   match=bool(difference <= atol + 1e-4 * grads[0].abs().max().item()))
    return results


# ---------------------------------------------------------------------------------------------- 3. overlapped tools
from sod_trainer.rollout.engine import RolloutEngine  # noqa: E402
from sod_trainer.rollout.types import Trajectory, Turn  # noqa: E402


class PipelinedRolloutEngine(RolloutEngine):
    """``RolloutEngine`` whose tool calls run while the model generates: the live trajectories are split into
    ``groups`` halves that take turns — group A's tool calls run on the pool while group B generates, and the
    other way round. Same trajectories (same per-trajectory rules as ``RolloutEngine.rollout``); each
    generate call is smaller, which costs little where tools or per-call overhead dominate."""

    def __init__(self, *args, groups: int = 2, **kwargs):
        super().__init__(*args, **kwargs)
        self.groups = groups

    def rollout(self, prompt_ids, rows, environments=None):
        if environments is None:
            environments, _ = self.make_environments(rows)
        stop_strings = self._stop_strings(environments)
        trajectories = [Trajectory(prompt_ids=list(ids), row=dict(row)) for ids, row in zip(prompt_ids, rows)]
        indices = list(range(len(trajectories)))
        size = -(-len(indices) // self.groups) if indices else 1
        groups = [{"live": indices[g * size:(g + 1) * size], "turn": 0, "pending": None}
                  for g in range(self.groups)]
        try:
            while any(g["live"] or g["pending"] for g in groups):
                for group in groups:
                    if group["pending"] is not None:
                        self._finish_turn(group, trajectories)
                    if group["live"] and group["turn"] < self.max_turns:
                        self.should_stop()
                        self._start_turn(group, trajectories, environments, stop_strings)
                    elif group["pending"] is None:
                        group["live"] = []
        finally:
            for environment in environments:
                try:
                    environment.close()
                except Exception:  # noqa: BLE001
                    pass
        return trajectories

    def _start_turn(self, group, trajectories, environments, stop_strings):
        live = group["live"]
        contexts = [trajectories[i].prompt_ids + trajectories[i].completion_ids for i in live]
        budgets = [self.max_completion_length - trajectories[i].completion_length for i in live]
        outputs = self.backend.generate(contexts, budgets, stop_strings)
        stepping = []
        for i, output in zip(live, outputs):
            trajectory = trajectories[i]
            start = trajectory.completion_length
            trajectory.append(output.token_ids, sampled=True)
            text = self.tokenizer.decode(output.token_ids, skip_special_tokens=True)
            trajectory.turns.append(Turn(start, trajectory.completion_length, text, output.finish_reason))
            if output.finish_reason == "length":
                trajectory.truncated = True
                trajectory.stop_reason = "budget"
            stepping.append((i, output, self.pool.submit(self._safe_step, environments[i], text)))
        group["pending"] = stepping

    def _finish_turn(self, group, trajectories):
        still_live = []
        for i, output, future in group["pending"]:
            result = future.result()
            trajectory = trajectories[i]
            turn = trajectory.turns[-1]
            turn.tool_called, turn.tool_error = result.tool_called, result.error
            turn.observation, turn.metadata = result.observation, dict(result.metadata)
            if trajectory.truncated:
                continue
            if result.done or result.observation is None:
                trajectory.stop_reason = "answer" if not result.error else "environment"
                continue
            if group["turn"] == self.max_turns - 1:
                trajectory.stop_reason = "max_turns"
                continue
            glue = self.formatter(result.observation, output.finish_reason == "eos")
            if trajectory.completion_length + len(glue) >= self.max_completion_length:
                trajectory.stop_reason = "observation_over_budget"
                continue
            trajectory.append(glue, sampled=False)
            still_live.append(i)
        group["live"] = still_live
        group["pending"] = None
        group["turn"] += 1
