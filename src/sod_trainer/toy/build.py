"""Build the toy teacher: SFT on clean reference trajectories, held-out accuracy with the real tool.

``scripts/build_toy_teacher.py`` is the command-line front end; ``sod demo`` calls
:func:`build_teacher` when no teacher is shipped. Writes the weights (bf16 safetensors), the
tokenizer, ``training_log.jsonl`` and ``build_info.json`` (accuracy, steps, time, device).
"""

from __future__ import annotations

import copy
import json
import platform
import sys
import time
from pathlib import Path

import torch

from .evaluation import evaluate_model
from .models import TEACHER_DIR, build_model, count_parameters, teacher_config
from .sft import encode_conversation, sft_train
from .tasks import build_rows, build_toy_tokenizer, generate_problems, load_toy_tokenizer, reference_messages

__all__ = ["build_teacher"]


def build_teacher(
    output: str | Path = TEACHER_DIR,
    *,
    steps: int = 6000,
    batch_size: int = 64,
    learning_rate: float = 2e-3,
    warmup_steps: int = 200,
    train_problems: int = 40000,
    eval_problems: int = 256,
    eval_every: int = 1000,
    max_minutes: float | None = None,
    device: str | None = None,
    threads: int | None = None,
    seed: int = 0,
    tokenizer_path: str | Path | None = None,
    command: str = "",
    log=print,
) -> dict:
    """Train, evaluate and save the teacher into ``output``; returns the build record."""
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    if threads:
        torch.set_num_threads(threads)
    torch.backends.cuda.matmul.allow_tf32 = True
    output = Path(output)
    output.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()

    tokenizer = load_toy_tokenizer(tokenizer_path) if tokenizer_path else build_toy_tokenizer()
    from ..rollout.glue import ToolResponseFormatter

    formatter = ToolResponseFormatter(tokenizer)
    problems = generate_problems(train_problems, seed=seed, split="train")
    examples = [encode_conversation(tokenizer, p.prompt(), reference_messages(p), formatter) for p in problems]
    lengths = [len(e.input_ids) for e in examples]
    log(f"{len(examples)} clean trajectories, mean {sum(lengths) / len(lengths):.0f} tokens, max {max(lengths)} "
        f"({time.monotonic() - started:.0f}s)")
    eval_set = build_rows(eval_problems, seed=seed, split="eval")

    model = build_model(teacher_config(tokenizer), seed=seed)
    log(f"teacher: {count_parameters(model) / 1e6:.2f} M parameters, device {device}")
    log_file = (output / "training_log.jsonl").open("w")
    evaluations: list[dict] = []

    def save() -> None:
        copy.deepcopy(model).to("cpu").to(torch.bfloat16).save_pretrained(output, safe_serialization=True)

    def evaluate(step: int) -> float:
        metrics, _ = evaluate_model(model, tokenizer, eval_set, temperature=1.0, batch_size=256, tool_workers=16)
        model.train()
        save()
        evaluations.append({"step": step, **metrics})
        log_file.write(json.dumps({"step": step, "eval": metrics}) + "\n")
        log_file.flush()
        log(f"  step {step}: held-out accuracy {metrics['accuracy']:.3f} (tool calls "
            f"{metrics['tool_calls_per_trajectory']:.2f}, failures {metrics['tool_failures_per_trajectory']:.2f})")
        return metrics["accuracy"]

    def callback(step: int, record: dict) -> None:
        log_file.write(json.dumps(record) + "\n")
        log_file.flush()
        if step % 100 == 0:
            log(f"step {step} loss {record['loss']:.4f} lr {record['lr']:.2e} {record['seconds']:.0f}s")
        if eval_every and step % eval_every == 0:
            evaluate(step)

    train_started = time.monotonic()
    result = sft_train(model, examples, steps=steps, batch_size=batch_size, learning_rate=learning_rate,
                       warmup_steps=warmup_steps, seed=seed, device=device, log_every=25, callback=callback,
                       pad_token_id=tokenizer.pad_token_id,
                       max_seconds=None if max_minutes is None else 60 * max_minutes)
    steps_done = result.log[-1]["step"]
    train_seconds = time.monotonic() - train_started
    model.eval()
    tokenizer.save_pretrained(output)
    accuracy = evaluations[-1]["accuracy"] if evaluations and evaluations[-1]["step"] == steps_done else evaluate(
        steps_done)
    info = {
        "held_out_accuracy": accuracy,
        "held_out_problems": eval_problems,
        "eval_sampling": "temperature 1.0, real Python tool, one sample per problem, seed range disjoint from training",
        "final_eval": evaluations[-1],
        "evaluations": evaluations,
        "steps": steps_done,
        "batch_size": batch_size,
        "learning_rate": learning_rate,
        "train_problems": train_problems,
        "train_seconds_including_evals": round(train_seconds, 1),
        "total_seconds": round(time.monotonic() - started, 1),
        "device": device if device == "cpu" else torch.cuda.get_device_name(0),
        "threads": torch.get_num_threads(),
        "parameters": count_parameters(model),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "command": command,
        "data": "clean reference trajectories only (sod_trainer.toy.tasks.reference_messages, lazy_error=False)",
    }
    (output / "build_info.json").write_text(json.dumps(info, indent=2) + "\n")
    log_file.close()
    return info
