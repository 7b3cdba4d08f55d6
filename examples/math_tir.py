# /// script
# dependencies = ["sod-trainer"]
# ///
"""Step-wise on-policy distillation of a tool-using (TIR) student from a teacher, TRL style.

    accelerate launch examples/math_tir.py --config examples/recipes/sod_qwen3_1.7b.yaml
    accelerate launch --config_file examples/accelerate_configs/zero2.yaml --num_processes 8 \\
        examples/math_tir.py --config examples/recipes/sod_qwen3_1.7b.yaml --max_steps 100
    python examples/math_tir.py --config examples/recipes/toy.yaml --max_steps 2       # offline, on a CPU

This is the script behind `sod train` (sod_trainer.scripts.train), spelled out so you can change any
step: the YAML sets the defaults of the four dataclasses, command-line flags override them. Launch keys
in the YAML (num_processes, accelerate_config, ...) are only read by `sod train`; with `accelerate launch`
pass them to accelerate itself, as above.
"""

import sys

from trl import get_peft_config

from sod_trainer import SODTrainer
from sod_trainer.scripts.train import (
    build_environment_factory,
    build_reward_funcs,
    config_path,
    load_datasets,
    load_models,
    make_parser,
)


def main():
    parser = make_parser()
    script_args, training_args, model_args, _launch_args = parser.parse_args_and_config()

    # Student and teacher: names (loaded by the trainer with model_init_kwargs filled from ModelConfig),
    # or in-process models for the offline toy world (model_name_or_path: toy-student).
    tokenizer, student, teacher = load_models(model_args, training_args)

    # Prompts: a `prompt` / `messages` column as it is, or `problem` / `question` rendered with the math,
    # multiple-choice or code template. Every row is checked; extra columns reach rewards and the tool.
    train_dataset, eval_dataset = load_datasets(script_args, training_args)

    # Rewards (for the GRPO term): picked from the dataset's columns with `reward_funcs: [auto]`.
    reward_funcs = build_reward_funcs(script_args, training_args, train_dataset)

    trainer = SODTrainer(
        model=student,
        teacher_model=teacher,
        args=training_args,
        train_dataset=train_dataset,
        eval_dataset=eval_dataset,
        processing_class=tokenizer,
        reward_funcs=reward_funcs,
        environment_factory=build_environment_factory(script_args),  # None: the built-in Python tool
        peft_config=get_peft_config(model_args),  # LoRA when use_peft: true
    )
    trainer.recipe_file = config_path(sys.argv[1:])  # copied next to the model card, which links to it
    try:
        trainer.train(resume_from_checkpoint=training_args.resume_from_checkpoint)
        if script_args.save_final_model:
            trainer.save_model(training_args.output_dir)
        if training_args.push_to_hub:  # the model, its card (tags trl and sod, the SOD citation) and the recipe
            trainer.push_to_hub(dataset_name=script_args.dataset_name)
    finally:
        trainer.close()


if __name__ == "__main__":
    main()
