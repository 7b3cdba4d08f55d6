"""GPU smoke test: bf16 SOD training steps on a Qwen3-0.6B-shaped model built from a config (no Hub).

Run by ``scripts/gpu_smoke.sh``; two phases:

``--phase prepare``  builds the toy tokenizer and a Qwen3-0.6B-shaped model (vocab 151936, 28 layers,
    hidden 1024, ~0.6B parameters) from random weights, then teaches it the tool-call format with a
    short SFT on canned tool-use trajectories (``print(a * b)`` in a ```python block, the tool output,
    the answer in ``\\boxed{}``): a snapshot after ``--student-sft-steps`` is the student, the model
    after ``--teacher-sft-steps`` the teacher. Both are saved (bf16) under ``--models``.
``--phase train``    loads them and runs ``--steps`` SOD optimizer steps with real multi-turn rollouts
    (HF generate + the sandboxed Python tool), bf16, gradient checkpointing. Under
    ``accelerate launch --use_deepspeed`` this is DeepSpeed ZeRO-2/3 on one GPU.

Each phase prints one ``SMOKE {json}`` line (peak GPU memory, step times, losses, tool calls) and writes
it to ``--out``. ``--tiny`` shrinks the model so that the script can be checked on a CPU.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch  # noqa: E402

VOCAB = 151936  # Qwen3's


def log(message: str) -> None:
    print(f"[gpu_smoke {time.strftime('%H:%M:%S')}] {message}", flush=True)


def model_config(tokenizer, tiny: bool):
    from transformers import Qwen3Config

    if tiny:
        sizes = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=2,
                     num_key_value_heads=1, head_dim=32)
    else:  # Qwen3-0.6B
        sizes = dict(hidden_size=1024, intermediate_size=3072, num_hidden_layers=28, num_attention_heads=16,
                     num_key_value_heads=8, head_dim=128)
    return Qwen3Config(vocab_size=VOCAB, max_position_embeddings=4096, rope_theta=1_000_000.0, tie_word_embeddings=True,
                       eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id, bos_token_id=None,
                       rms_norm_eps=1e-6, **sizes)


def make_problem(rng: random.Random) -> dict:
    a, b, c = rng.randint(100, 999), rng.randint(10, 99), rng.randint(1000, 9999)
    kind = rng.random()
    if kind < 0.5:
        return {"question": f"What is {a} * {b} + {c}?", "code": f"print({a} * {b} + {c})", "answer": str(a * b + c)}
    return {"question": f"What is {a} * {b}?", "code": f"print({a} * {b})", "answer": str(a * b)}


def sft_example(tokenizer, formatter, problem: dict) -> tuple[list[int], list[int]]:
    """Prompt ids + completion ids of one canned trajectory in exactly the rollout engine's format."""
    from sod_trainer.data import encode_prompt, row_to_messages

    prompt = encode_prompt(tokenizer, row_to_messages({"prompt": [{"role": "user", "content": problem["question"]}]}, 0),
                           max_prompt_length=None)
    eos = [tokenizer.eos_token_id]
    turn1 = tokenizer.encode(f"Let me compute.\n```python\n{problem['code']}\n```", add_special_tokens=False) + eos
    glue = formatter(problem["answer"], True)
    turn2 = tokenizer.encode(f"The answer is \\boxed{{{problem['answer']}}}.", add_special_tokens=False) + eos
    return prompt, turn1 + glue + turn2


def sft(model, tokenizer, steps: int, start_step: int, device, batch_size: int = 32, lr: float = 3e-4, seed: int = 0):
    from sod_trainer.rollout.glue import ToolResponseFormatter

    formatter = ToolResponseFormatter(tokenizer)
    rng = random.Random(seed + start_step)
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
    warmup = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: min(1.0, (step + 1) / 10))
    model.train()
    loss = torch.tensor(float("nan"))
    for step in range(steps):
        examples = [sft_example(tokenizer, formatter, make_problem(rng)) for _ in range(batch_size)]
        width = max(len(p) + len(c) for p, c in examples)
        ids = torch.full((batch_size, width), tokenizer.pad_token_id, dtype=torch.long)
        labels = torch.full_like(ids, -100)
        attention = torch.zeros_like(ids)
        for row, (prompt, completion) in enumerate(examples):
            sequence = prompt + completion
            ids[row, :len(sequence)] = torch.tensor(sequence)
            attention[row, :len(sequence)] = 1
            labels[row, len(prompt):len(sequence)] = torch.tensor(completion)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
            loss = model(input_ids=ids.to(device), attention_mask=attention.to(device), labels=labels.to(device)).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        warmup.step()
        optimizer.zero_grad(set_to_none=True)
        if step % 25 == 0 or step == steps - 1:
            log(f"sft step {start_step + step}: loss {loss.item():.3f}")
    return float(loss.detach())


def prepare(args) -> dict:
    from transformers import Qwen3ForCausalLM

    from sod_trainer.toy.tokenizer import build_tokenizer

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    tokenizer = build_tokenizer()
    torch.manual_seed(0)
    started = time.perf_counter()
    model = Qwen3ForCausalLM(model_config(tokenizer, args.tiny)).to(device)
    parameters = sum(p.numel() for p in model.parameters())
    log(f"built a Qwen3-shaped model: {parameters / 1e6:.1f} M parameters, vocab {VOCAB}, on {device}")
    batch = 8 if args.tiny else 32
    student_loss = sft(model, tokenizer, args.student_sft_steps, 0, device, batch_size=batch)
    os.makedirs(args.models, exist_ok=True)
    model.to(torch.bfloat16).save_pretrained(os.path.join(args.models, "student"))
    model.to(torch.float32)
    teacher_loss = sft(model, tokenizer, args.teacher_sft_steps - args.student_sft_steps, args.student_sft_steps, device,
                       batch_size=batch)
    model.to(torch.bfloat16).save_pretrained(os.path.join(args.models, "teacher"))
    for name in ("student", "teacher"):
        tokenizer.save_pretrained(os.path.join(args.models, name))
    return {"phase": "prepare", "parameters": parameters, "student_sft_loss": student_loss,
            "teacher_sft_loss": teacher_loss, "seconds": time.perf_counter() - started,
            "peak_gpu_memory_gib": torch.cuda.max_memory_allocated() / 2**30 if device.type == "cuda" else None}


def boxed_reward(prompts, completions, answer, **kwargs):
    from sod_trainer.rewards import completion_text  # conversational completions are message lists (as TRL)

    return [1.0 if f"\\boxed{{{a}}}" in completion_text(c) else -1.0 for c, a in zip(completions, answer)]


def train(args) -> dict:
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer, LogitsProcessor, LogitsProcessorList, TrainerCallback

    from sod_trainer import SODConfig, SODTrainer

    class KnownTokensOnly(LogitsProcessor):
        """Sample only ids the (small) tokenizer can decode; the model's vocabulary is Qwen's 151936."""

        def __init__(self, size: int):
            self.size = size

        def __call__(self, input_ids, scores):
            scores[:, self.size:] = -float("inf")
            return scores

    class StepTimer(TrainerCallback):
        def __init__(self):
            self.times: list[float] = []
            self._start = 0.0

        def on_step_begin(self, args, state, control, **kwargs):
            if torch.cuda.is_available():
                torch.cuda.synchronize()
            self._start = time.perf_counter()

        def on_step_end(self, args, state, control, **kwargs):
            if torch.cuda.is_available():
                torch.cuda.synchronize()
            self.times.append(time.perf_counter() - self._start)

    cuda = torch.cuda.is_available()
    tokenizer = AutoTokenizer.from_pretrained(os.path.join(args.models, "student"))
    student = AutoModelForCausalLM.from_pretrained(os.path.join(args.models, "student"), dtype=torch.float32)
    teacher = AutoModelForCausalLM.from_pretrained(os.path.join(args.models, "teacher"),
                                                   dtype=torch.bfloat16 if cuda else torch.float32)
    rng = random.Random(1)
    rows = []
    for _ in range(64):
        problem = make_problem(rng)
        rows.append({"prompt": [{"role": "user", "content": problem["question"]}], "answer": problem["answer"]})
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    config = SODConfig(
        output_dir=os.path.join(args.models, f"run-{args.tag}"), per_device_train_batch_size=args.batch_size,
        gradient_accumulation_steps=2, num_generations=4, max_steps=args.steps, max_completion_length=args.max_completion,
        max_tool_calling_iterations=4, learning_rate=1e-5, bf16=cuda, gradient_checkpointing=True,
        report_to=[], save_strategy="no", logging_steps=1, seed=0, tool_workers=8,
        ddp_backend="gloo" if not cuda and world_size > 1 else None, use_cpu=not cuda and "ACCELERATE_USE_DEEPSPEED" not in os.environ,
    )
    timer = StepTimer()
    trainer = SODTrainer(model=student, teacher_model=teacher, args=config, train_dataset=Dataset.from_list(rows),
                         processing_class=tokenizer, reward_funcs=[boxed_reward], callbacks=[timer])
    backend = trainer.rollout_engine.backend
    if hasattr(backend, "generation_kwargs"):
        backend.generation_kwargs["logits_processor"] = LogitsProcessorList([KnownTokensOnly(len(tokenizer))])
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    started = time.perf_counter()
    trainer.train()
    elapsed = time.perf_counter() - started
    logs = [entry for entry in trainer.state.log_history if "loss" in entry]
    zero_stage = trainer.accelerator.state.deepspeed_plugin.zero_stage if trainer.is_deepspeed_enabled else None
    result = {
        "phase": "train", "tag": args.tag, "zero_stage": zero_stage, "world_size": trainer.accelerator.num_processes,
        "device": torch.cuda.get_device_name(0) if cuda else "cpu", "steps": trainer.state.global_step,
        "seconds": elapsed, "step_seconds": [round(t, 3) for t in timer.times],
        "peak_gpu_memory_gib": torch.cuda.max_memory_allocated() / 2**30 if cuda else None,
        "losses": [entry["loss"] for entry in logs],
        "rewards": [entry.get("reward") for entry in logs],
        "tool_calls_per_trajectory": [entry.get("tools/call_frequency") for entry in logs],
        "tool_failure_rate": [entry.get("tools/failure_frequency") for entry in logs],
        "steps_per_trajectory": [entry.get("steps_per_trajectory") for entry in logs],
        "mean_length": [entry.get("completions/mean_length") for entry in logs],
        "weights_step_2": [entry.get("weights/step_2") for entry in logs],
    }
    sample = trainer._last_samples[:1]
    if sample:
        text = "".join(segment for segment, _ in sample[0]["segments"])
        result["sample_completion"] = text[:600]
    trainer.close()
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()
    return result


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--phase", choices=["prepare", "train"], required=True)
    parser.add_argument("--models", default="/tmp/sod-gpu-smoke/models")
    parser.add_argument("--out", default=None, help="write the result JSON here")
    parser.add_argument("--tag", default="single")
    parser.add_argument("--tiny", action="store_true", help="a tiny model, to check the script on a CPU")
    parser.add_argument("--student-sft-steps", type=int, default=200)
    parser.add_argument("--teacher-sft-steps", type=int, default=300)
    parser.add_argument("--steps", type=int, default=3, help="SOD optimizer steps")
    parser.add_argument("--batch-size", type=int, default=8, help="per_device_train_batch_size")
    parser.add_argument("--max-completion", type=int, default=384)
    args = parser.parse_args(argv)
    result = prepare(args) if args.phase == "prepare" else train(args)
    line = json.dumps(result)
    print(f"SMOKE {line}", flush=True)
    if args.out:
        with open(args.out, "w") as handle:
            handle.write(line + "\n")
    for loss in result.get("losses", []):
        if loss != loss or abs(loss) == float("inf"):
            log(f"non-finite loss in {result.get('tag')}: {result['losses']}")
            return 1
    if result["phase"] == "train" and result["steps"] < args.steps:
        log(f"only {result['steps']} of {args.steps} steps ran")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
