"""The cold-start student: a layer-dropped copy of the teacher, briefly fine-tuned on a few trajectories.

The student keeps the teacher's embeddings and three of its four layers (``student_from_teacher``), so
it starts out knowing the format but copying numbers and picking operations badly, then gets a short
SFT on a few trajectories from :func:`~sod_trainer.toy.tasks.student_sft_messages`, a share of which
re-use the previous turn's variable in the stateless tool, hit a ``NameError`` and retry. The result
makes real tool errors (tracebacks) and some silent wrong numbers: what SOD has to deal with.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from .models import student_from_teacher
from .sft import SFTResult, encode_conversation, sft_train
from .tasks import generate_problems, student_sft_messages

__all__ = ["cold_start_student"]


def cold_start_student(
    teacher,
    tokenizer,
    *,
    layers: tuple[int, ...] = (0, 1, 3),
    num_trajectories: int = 256,
    steps: int = 40,
    batch_size: int = 16,
    learning_rate: float = 1e-3,
    lazy_error_rate: float = 0.3,
    transient_error_rate: float = 0.0,
    seed: int = 1,
    callback: Callable[[int, dict], None] | None = None,
    device: str | torch.device = "cpu",
) -> tuple[torch.nn.Module, SFTResult]:
    """Build and cold-start the student on CPU; returns ``(student, sft_result)``."""
    from ..rollout.glue import ToolResponseFormatter

    student = student_from_teacher(teacher.float(), layers=layers)
    formatter = ToolResponseFormatter(tokenizer)
    problems = generate_problems(num_trajectories, seed=1000 + seed, split="train")
    examples = [
        encode_conversation(tokenizer, p.prompt(), student_sft_messages(p, lazy_error_rate=lazy_error_rate,
                                                                   transient_error_rate=transient_error_rate),
                            formatter)
        for p in problems
    ]
    result = sft_train(student, examples, steps=steps, batch_size=batch_size, learning_rate=learning_rate,
                       warmup_steps=max(1, steps // 10), seed=seed, log_every=max(1, steps // 10),
                       callback=callback, pad_token_id=tokenizer.pad_token_id, device=device)
    return student, result
