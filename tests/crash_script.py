"""A tiny SOD run for the crash-safety tests, in its own process so it can be SIGKILLed.

``python crash_script.py OUT [--kill-mid-step N] [--kill-while-saving N] [--resume] [--result FILE]``:
trains 4 steps on the toy tokenizer's tiny models, checkpointing every step; ``--kill-mid-step N`` SIGKILLs
the process during step N (after its rollout, before its update); ``--kill-while-saving N`` SIGKILLs it in
the middle of writing ``checkpoint-N`` (model and optimizer written, trainer state not); ``--resume`` resumes
with ``resume_from_checkpoint=True``; ``--result`` saves the final weights, the losses and where it resumed.
"""

from __future__ import annotations

import argparse
import os
import signal

import torch
from datasets import Dataset

from conftest import make_tiny_model
from sod_trainer import SODConfig, SODTrainer
from sod_trainer.toy.tokenizer import build_tokenizer

ROWS = [{"prompt": [{"role": "user", "content": f"q{i}: what is {i} * 1234?"}], "answer": str(i * 1234)}
        for i in range(6)]


def reward(prompts, completions, answer, **kwargs):
    return [1.0 if a in c else -1.0 for c, a in zip(completions, answer)]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("output_dir")
    parser.add_argument("--kill-mid-step", type=int, default=None)
    parser.add_argument("--kill-while-saving", type=int, default=None)
    parser.add_argument("--resume", action="store_true")
    parser.add_argument("--result", default=None)
    args = parser.parse_args()
    torch.set_num_threads(1)
    tokenizer = build_tokenizer()
    config = SODConfig(output_dir=args.output_dir, per_device_train_batch_size=4, num_generations=2,
                       max_completion_length=24, max_tool_calling_iterations=2, max_steps=4, learning_rate=1e-2,
                       report_to=[], use_cpu=True, save_strategy="steps", save_steps=1, seed=7, logging_steps=1,
                       disable_tqdm=True)
    student, teacher = make_tiny_model(tokenizer, seed=0), make_tiny_model(tokenizer, hidden=96, seed=1)
    trainer = SODTrainer(model=student, teacher_model=teacher, args=config, train_dataset=Dataset.from_list(ROWS),
                         processing_class=tokenizer, reward_funcs=[reward])
    if args.kill_mid_step is not None:
        generate_and_score = trainer._generate_and_score

        def killed_after_rollout(rows, mode):
            batch = generate_and_score(rows, mode)
            if trainer.state.global_step == args.kill_mid_step - 1:
                os.kill(os.getpid(), signal.SIGKILL)
            return batch

        trainer._generate_and_score = killed_after_rollout
    if args.kill_while_saving is not None:
        save_rng_state = trainer._save_rng_state

        def killed_while_saving(output_dir):
            save_rng_state(output_dir)
            if trainer.state.global_step == args.kill_while_saving:
                os.kill(os.getpid(), signal.SIGKILL)

        trainer._save_rng_state = killed_while_saving
    resumed_from = {}
    load_sod_state = trainer._load_sod_state
    trainer._load_sod_state = lambda folder: resumed_from.setdefault("folder", folder) and load_sod_state(folder)
    trainer.train(resume_from_checkpoint=True if args.resume else None)
    if args.result:
        losses = {entry["step"]: entry["loss"] for entry in trainer.state.log_history if "loss" in entry}
        torch.save({"params": {k: v.detach().clone() for k, v in trainer.model.state_dict().items()},
                    "losses": losses, "resumed_from": os.path.basename(resumed_from.get("folder", ""))},
                   args.result)


if __name__ == "__main__":
    main()
