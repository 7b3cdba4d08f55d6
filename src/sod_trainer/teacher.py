"""Teacher scoring: log-probs of the student's sampled tokens under the frozen teacher (SOD_SPEC §3)."""

from __future__ import annotations

from typing import Protocol

import torch

from .logprobs import sampled_token_logprobs

__all__ = ["TeacherScorer", "LocalTeacher", "check_vocabularies"]


class TeacherScorer(Protocol):
    """Returns ``(B, C)`` teacher log-probs of the completion tokens (0 where ``token_mask`` is unset)."""

    def score(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, completion_start: torch.Tensor,
              token_mask: torch.Tensor) -> torch.Tensor: ...


class LocalTeacher:
    """A teacher model in the trainer's process (replicated, or sharded under DeepSpeed ZeRO-3)."""

    def __init__(self, model: torch.nn.Module, temperature: float = 1.0, chunk_size: int = 1024):
        self.model = model
        self.temperature = temperature
        self.chunk_size = chunk_size

    @torch.no_grad()
    def score(self, input_ids, attention_mask, completion_start, token_mask) -> torch.Tensor:
        logps, _ = sampled_token_logprobs(
            self.model, input_ids, attention_mask, completion_start, token_mask,
            temperature=self.temperature, chunk_size=self.chunk_size,
        )
        return logps


def check_vocabularies(student: torch.nn.Module, teacher: torch.nn.Module, tokenizer) -> None:
    """Reject a teacher whose output vocabulary differs from the student's (SOD needs the same tokens)."""
    from .logprobs import unwrap_causal_lm

    def vocab_size(model):
        weight = unwrap_causal_lm(model).get_output_embeddings().weight
        return int(getattr(weight, "ds_shape", weight.shape)[0])  # ZeRO-3 keeps the full shape in ds_shape

    student_size, teacher_size = vocab_size(student), vocab_size(teacher)
    if student_size != teacher_size:
        raise ValueError(
            f"The teacher's vocabulary has {teacher_size} tokens but the student's has {student_size}. SOD scores "
            "the student's sampled token ids with the teacher, so both must share one tokenizer. Use a teacher "
            "from the same model family (e.g. Qwen3-4B for a Qwen3-0.6B student)."
        )
    if len(tokenizer) > student_size:
        raise ValueError(
            f"The tokenizer has {len(tokenizer)} tokens but the model's vocabulary only {student_size}; "
            "resize the model's embeddings or use the model's own tokenizer."
        )
