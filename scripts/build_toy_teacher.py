#!/usr/bin/env python
"""Train the toy world's teacher and save it as package data (``src/sod_trainer/toy/assets/teacher``).

    PYTHONPATH=src python scripts/build_toy_teacher.py                  # defaults, any device
    PYTHONPATH=src python scripts/build_toy_teacher.py --device cpu --threads 2 --max-minutes 60

SFT of the tiny Qwen3 teacher (``sod_trainer.toy.models.teacher_config``) on clean reference
trajectories only (the teacher never sees a tool error), loss on assistant tokens only. Held-out
accuracy is measured by sampling at temperature 1.0 with real tool execution. Writes the weights
(bf16 safetensors), the tokenizer, ``training_log.jsonl`` and ``build_info.json`` (accuracy, steps,
time, device) next to each other.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from sod_trainer.toy.evaluation import evaluate_model  # noqa: E402
from sod_trainer.toy.models import TEACHER_DIR, build_model, count_parameters, teacher_config  # noqa: E402
from sod_trainer.toy.sft import encode_conversation, sft_train  # noqa: E402
from sod_trainer.toy.tasks import build_rows, build_toy_tokenizer, load_toy_tokenizer, generate_problems, reference_messages  # noqa: E402


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output", default=str(TEACHER_DIR))
    parser.add_argument("--steps", type=int, default=6000)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--learning-rate", type=float, default=2e-3)
    parser.add_argument("--warmup-steps", type=int, default=200)
    parser.add_argument("--train-problems", type=int, default=40000)
    parser.add_argument("--eval-problems", type=int, default=256)
    parser.add_argument("--eval-every", type=int, default=1000)
    parser.add_argument("--max-minutes", type=float, default=None,
                        help="fit the schedule into this many minutes of training (evaluations excluded)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--tokenizer", default=None, help="a saved tokenizer folder (default: build it, deterministic)")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.backends.cuda.matmul.allow_tf32 = True
    output = Path(args.output)
    output.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()

    tokenizer = load_toy_tokenizer(args.tokenizer) if args.tokenizer else build_toy_tokenizer()
    problems = generate_problems(args.train_problems, seed=args.seed, split="train")
    from sod_trainer.rollout.glue import ToolResponseFormatter

    formatter = ToolResponseFormatter(tokenizer)
    examples = [encode_conversation(tokenizer, p.prompt(), reference_messages(p), formatter) for p in problems]
    lengths = [len(e.input_ids) for e in examples]
    print(f"{len(examples)} clean trajectories, mean {sum(lengths) / len(lengths):.0f} tokens, max {max(lengths)} "
          f"({time.monotonic() - started:.0f}s)", flush=True)
    eval_set = build_rows(args.eval_problems, seed=args.seed, split="eval")

    model = build_model(teacher_config(tokenizer), seed=args.seed)
    print(f"teacher: {count_parameters(model) / 1e6:.2f} M parameters, device {args.device}", flush=True)
    log_path = output / "training_log.jsonl"
    log_file = log_path.open("w")
    evaluations = []

    def evaluate(step: int) -> float:
        metrics, _ = evaluate_model(model, tokenizer, eval_set, temperature=1.0, batch_size=256, tool_workers=16)
        model.train()
        save(model)
        evaluations.append({"step": step, **metrics})
        log_file.write(json.dumps({"step": step, "eval": metrics}) + "\n")
        log_file.flush()
        print(f"  step {step}: held-out accuracy {metrics['accuracy']:.3f} "
              f"(tool calls {metrics['tool_calls_per_trajectory']:.2f}, failures "
              f"{metrics['tool_failures_per_trajectory']:.2f})", flush=True)
        return metrics["accuracy"]

    def save(model) -> None:
        import copy

        copy.deepcopy(model).to("cpu").to(torch.bfloat16).save_pretrained(output, safe_serialization=True)

    def callback(step: int, record: dict) -> None:
        log_file.write(json.dumps(record) + "\n")
        log_file.flush()
        if step % 100 == 0:
            print(f"step {step} loss {record['loss']:.4f} lr {record['lr']:.2e} {record['seconds']:.0f}s", flush=True)
        if args.eval_every and step % args.eval_every == 0:
            evaluate(step)

    train_started = time.monotonic()
    result = sft_train(model, examples, steps=args.steps, batch_size=args.batch_size,
                       learning_rate=args.learning_rate, warmup_steps=args.warmup_steps, seed=args.seed,
                       device=args.device, log_every=25, callback=callback, pad_token_id=tokenizer.pad_token_id,
                       max_seconds=None if args.max_minutes is None else 60 * args.max_minutes)
    steps_done = result.log[-1]["step"]
    train_seconds = time.monotonic() - train_started
    model.eval()
    tokenizer.save_pretrained(output)
    final_accuracy = evaluate(steps_done)
    info = {
        "held_out_accuracy": final_accuracy,
        "held_out_problems": args.eval_problems,
        "eval_sampling": "temperature 1.0, real Python tool, one sample per problem, seed range disjoint from training",
        "final_eval": evaluations[-1],
        "evaluations": evaluations,
        "steps": steps_done,
        "batch_size": args.batch_size,
        "learning_rate": args.learning_rate,
        "train_problems": args.train_problems,
        "train_seconds_including_evals": round(train_seconds, 1),
        "total_seconds": round(time.monotonic() - started, 1),
        "device": args.device if args.device == "cpu" else torch.cuda.get_device_name(0),
        "threads": torch.get_num_threads(),
        "parameters": count_parameters(model),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "command": "python scripts/build_toy_teacher.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        "data": "clean reference trajectories only (sod_trainer.toy.tasks.reference_messages, lazy_error=False)",
    }
    (output / "build_info.json").write_text(json.dumps(info, indent=2) + "\n")
    log_file.close()
    print(json.dumps({k: info[k] for k in ("held_out_accuracy", "steps", "train_seconds_including_evals", "device")}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
