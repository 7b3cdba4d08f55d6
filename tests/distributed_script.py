"""A few SOD training steps on tiny offline models; launched by ``tests/test_distributed.py``.

Runs as a single process (``python tests/distributed_script.py ...``) or under ``accelerate launch``
(DDP over gloo, DeepSpeed ZeRO-2/3 on CPU). The global rollout batch is the same whatever the number
of processes (4 prompts x 2 generations), and so is the data: with ``--backend scripted`` every
trajectory is a canned multi-turn script run through the real Python tool, so runs with 1 or 2
processes see the same tokens and their losses can be compared. ``--backend hf`` samples greedily
with HF generate (under ZeRO-3 through TRL's ``unwrap_model_for_generation``, which gathers the
shards). Rank 0 writes the per-step losses, grad norms and a checksum of the final weights as JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from conftest import make_tiny_model  # noqa: E402  (the tests' one tiny-model builder)

SCRIPTS = {
    "alpha": ["Let me compute.\n```python\n1234 * 56\n```", "So \\boxed{69104}."],
    "beta": ["```python\nprint(undefined)\n```", "```python\nprint(7 * 6)\n```", "\\boxed{42}"],
    "gamma": ["\\boxed{12}"],
    "delta": ["```python\nprint(100 - 1)\n```", "\\boxed{99}"],
}


class ScriptedBackend:
    """Replays the canned turn of each trajectory's script (chosen by a key in its prompt), token-in/token-out."""

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer
        self.eos_token_ids = {tokenizer.eos_token_id}

    def generate(self, contexts, max_new_tokens, stop_strings=()):
        from sod_trainer.rollout.types import GenerationOutput

        outputs = []
        for context, budget in zip(contexts, max_new_tokens):
            text = self.tokenizer.decode(context)
            key = next(k for k in SCRIPTS if f"{k}:" in text)
            turn = text.count("<|im_start|>assistant") - 1
            script = SCRIPTS[key]
            ids = self.tokenizer.encode(script[min(turn, len(script) - 1)], add_special_tokens=False)
            ids = ids + [self.tokenizer.eos_token_id]
            reason = "eos"
            if len(ids) > budget:
                ids, reason = ids[:budget], "length"
            outputs.append(GenerationOutput(ids, reason))
        return outputs


class UnevenTurnsEnvironment:
    """Only 'alpha' trajectories call a tool (twice), the others answer at once: with 2 processes, rank 0 holds
    alpha and beta, rank 1 gamma and delta, so the ranks need different numbers of generation calls."""

    stop_strings = ("e", "a", "o", "t", " ")  # common text: turns of a random model end within a few tokens

    def __init__(self):
        self.key, self.calls = "", 0

    def reset(self, **row):
        self.key = next((k for k in SCRIPTS if f"{k}:" in row["prompt"][0]["content"]), "")
        return None

    def step(self, turn_text):
        from sod_trainer.environments.base import ToolResult

        if self.key != "alpha" or self.calls >= 2:
            return ToolResult(observation=None, done=True)
        self.calls += 1
        return ToolResult(observation=f"result {self.calls}", done=False, tool_called=True)

    def close(self):
        pass


def reward(prompts, completions, answer, **kwargs):
    from sod_trainer.rewards import completion_text  # conversational completions are message lists (as TRL)

    return [1.0 if f"\\boxed{{{a}}}" in completion_text(c) else -1.0 for c, a in zip(completions, answer)]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--output", required=True, help="JSON file written by rank 0")
    parser.add_argument("--backend", choices=["scripted", "hf"], default="scripted")
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--accumulation", type=int, default=1, help="gradient_accumulation_steps")
    parser.add_argument("--lora", action="store_true", help="train a LoRA adapter instead of the full student")
    parser.add_argument("--learning-rate", type=float, default=1e-2)
    parser.add_argument("--gradient-checkpointing", action="store_true")
    parser.add_argument("--cross-tokenizer", action="store_true",
                        help="a teacher with another tokenizer and chat template (the cross-tokenizer path)")
    parser.add_argument("--uneven-turns", action="store_true",
                        help="an environment under which the processes need different numbers of turns")
    args = parser.parse_args(argv)

    from datasets import Dataset

    from sod_trainer import SODConfig, SODTrainer
    from sod_trainer.toy.tokenizer import build_tokenizer

    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rollout_batch = 8  # 4 prompts x 2 generations, the same global batch for every world size
    per_device = rollout_batch // world_size // args.accumulation
    tokenizer = build_tokenizer()
    rows = [
        {"prompt": [{"role": "user", "content": "alpha: 1234*56?"}], "answer": "69104"},
        {"prompt": [{"role": "user", "content": "beta: 7*6?"}], "answer": "41"},
        {"prompt": [{"role": "user", "content": "gamma: 3*4?"}], "answer": "12"},
        {"prompt": [{"role": "user", "content": "delta: 100-1?"}], "answer": "99"},
    ]
    config = SODConfig(
        output_dir=os.path.join(os.path.dirname(os.path.abspath(args.output)), "trainer_output"),
        per_device_train_batch_size=per_device, gradient_accumulation_steps=args.accumulation,
        num_generations=2, max_completion_length=192, max_tool_calling_iterations=4, max_steps=args.steps,
        learning_rate=args.learning_rate, report_to=[], save_strategy="no", seed=0, logging_steps=1,
        shuffle_dataset=False, max_grad_norm=1.0, dataloader_num_workers=0, tool_workers=2,
        generation_kwargs={"do_sample": False} if args.backend == "hf" else None,
        gradient_checkpointing=args.gradient_checkpointing,
        # without CUDA: DDP over gloo needs use_cpu (else transformers sees one process), and DeepSpeed needs
        # the backend named (else accelerate counts one process although DeepSpeed started two)
        use_cpu=not torch.cuda.is_available() and os.environ.get("ACCELERATE_USE_DEEPSPEED", "false") != "true",
        ddp_backend="gloo" if not torch.cuda.is_available() and world_size > 1 else None,
    )
    student = make_tiny_model(tokenizer, hidden=64, layers=2, seed=0)
    teacher_tokenizer = build_tokenizer(vocab_size=400, family="header") if args.cross_tokenizer else None
    teacher = make_tiny_model(tokenizer if teacher_tokenizer is None else teacher_tokenizer, hidden=96, layers=2, seed=1)
    peft_config = None
    if args.lora:
        from peft import LoraConfig

        peft_config = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], lora_dropout=0.0,
                                 init_lora_weights=True)
    trainer = SODTrainer(model=student, teacher_model=teacher, args=config, train_dataset=Dataset.from_list(rows),
                         processing_class=tokenizer, reward_funcs=[reward], peft_config=peft_config,
                         teacher_processing_class=teacher_tokenizer,
                         environment_factory=UnevenTurnsEnvironment if args.uneven_turns else None)
    if args.backend == "scripted":
        trainer.rollout_engine.backend = ScriptedBackend(tokenizer)
    rollouts = []  # (step, prompt key, turns, stop reason, reward-relevant text) of this process's trajectories
    generate_and_score = trainer._generate_and_score

    def recording(rows, mode):
        batch = generate_and_score(rows, mode)
        for trajectory in batch.trajectories:
            text = tokenizer.decode(trajectory.prompt_ids)
            key = next((k for k in SCRIPTS if f"{k}:" in text), "?")
            rollouts.append([trainer.state.global_step, key, trajectory.num_turns, trajectory.stop_reason,
                             sum(trajectory.assistant_mask), len(trajectory.completion_ids)])
        return batch

    trainer._generate_and_score = recording
    started = time.perf_counter()
    trainer.train()
    elapsed = time.perf_counter() - started

    logs = [entry for entry in trainer.state.log_history if "loss" in entry]
    model = trainer.accelerator.unwrap_model(trainer.model)
    trainable = [p for p in model.parameters() if p.requires_grad]
    checksum = 0.0
    if trainer.is_deepspeed_enabled and trainer.accelerator.state.deepspeed_plugin.zero_stage == 3:
        import deepspeed

        with deepspeed.zero.GatheredParameters(trainable):
            checksum = float(sum(p.detach().double().abs().sum() for p in trainable))
    else:
        checksum = float(sum(p.detach().double().abs().sum() for p in trainable))
    from accelerate.utils import gather_object

    all_rollouts = sorted(r for part in gather_object([rollouts]) for r in part)
    result = {
        "rollouts": all_rollouts,
        "world_size": trainer.accelerator.num_processes,
        "distributed_type": str(trainer.accelerator.distributed_type),
        "zero_stage": (trainer.accelerator.state.deepspeed_plugin.zero_stage
                       if trainer.is_deepspeed_enabled else None),
        "losses": [entry["loss"] for entry in logs],
        "grad_norms": [entry.get("grad_norm") for entry in logs],
        "rewards": [entry.get("reward") for entry in logs],
        "steps_per_trajectory": [entry.get("steps_per_trajectory") for entry in logs],
        # TRL's metrics over the whole batch (gathered from every process)
        "trl_metrics": [{key: entry.get(key) for key in ("reward_std", "frac_reward_zero_std", "num_tokens",
                                                         "completions/mean_length", "completions/max_length",
                                                         "tools/call_frequency", "tools/failure_frequency")}
                        for entry in logs],
        "unaligned_tokens": [entry.get("teacher/unaligned_tokens") for entry in logs],
        "cross_tokenizer": type(trainer.scorer.teacher).__name__ == "CrossTokenizerTeacher",
        "global_step": trainer.state.global_step,
        "trainable_checksum": checksum,
        "train_seconds": elapsed,
    }
    if trainer.accelerator.is_main_process:
        with open(args.output, "w") as handle:
            json.dump(result, handle, indent=1)
        print("RESULT", json.dumps(result), flush=True)
    trainer.close()
    trainer.accelerator.wait_for_everyone()
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main())
