"""The training script behind ``sod train`` and ``examples/math_tir.py``.

    sod train --config examples/recipes/sod_qwen3_1.7b.yaml [--any_field value ...]
    accelerate launch -m sod_trainer.scripts.train --config examples/recipes/sod_qwen3_1.7b.yaml

One YAML file sets the defaults of four dataclasses, TRL's way (``trl.TrlParser``):

* :class:`SODScriptArguments`: the data, the reward functions, the tool environment;
* :class:`~sod_trainer.SODConfig`: everything about training (a ``transformers.TrainingArguments``);
* ``trl.ModelConfig``: the student's loading (``model_name_or_path``, ``dtype``, ...) and LoRA (``use_peft``);
* :class:`LaunchArguments`: how ``sod train`` starts ``accelerate launch`` (ignored once launched).

Flags given on the command line override the file; an ``env:`` mapping in the file is exported to the
environment before anything else runs. ``model_name_or_path: toy-student`` with
``teacher_model_name_or_path: toy-teacher`` and ``dataset_name: toy-arithmetic`` select the offline toy
world (:mod:`sod_trainer.toy`), so the whole path runs on a laptop without the Hub.
"""

from __future__ import annotations

import importlib
import json
import logging
import os
import sys
from functools import partial
from typing import Any

from trl import ModelConfig

from sod_trainer.config import SODConfig
from sod_trainer.scripts.arguments import (LaunchArguments, SODParser, SODScriptArguments, accelerate_config_dirs,
                                           launcher_field_names, make_parser, resolve_accelerate_config)

logger = logging.getLogger(__name__)

TOY_STUDENT = "toy-student"
TOY_TEACHER = "toy-teacher"
TOY_DATASET = "toy-arithmetic"
REWARD_NAMES = ("auto", "math", "math_strict", "multiple_choice", "code", "toy")

__all__ = [
    "SODScriptArguments",
    "LaunchArguments",
    "SODParser",
    "make_parser",
    "launcher_field_names",
    "accelerate_config_dirs",
    "main",
    "load_models",
    "load_datasets",
    "build_reward_funcs",
    "build_environment_factory",
    "resolve_accelerate_config",
    "TOY_STUDENT",
    "TOY_TEACHER",
    "TOY_DATASET",
]



# --------------------------------------------------------------------------------------------
# Models
# --------------------------------------------------------------------------------------------


def _toy_world_models(seed: int):
    """Tokenizer, student and teacher of the offline toy world (:func:`sod_trainer.toy.load_toy_world`)."""
    from sod_trainer.toy.models import load_toy_world

    return load_toy_world(seed)


def load_models(model_args: ModelConfig, training_args: SODConfig):
    """``(tokenizer, student, teacher)``: instances for the toy world; for real models the student and
    teacher stay names (SODTrainer loads them with ``model_init_kwargs`` / ``teacher_model_init_kwargs``,
    which this fills from ``ModelConfig``: revision, dtype, attention, quantization)."""
    student_name = model_args.model_name_or_path
    teacher_name = training_args.teacher_model_name_or_path
    if student_name is None:
        raise ValueError("No student: set model_name_or_path (a Hub id, a local path, or 'toy-student').")
    if (student_name == TOY_STUDENT) != (teacher_name == TOY_TEACHER):
        raise ValueError(f"The toy world's models go together: model_name_or_path={student_name!r} and "
                         f"teacher_model_name_or_path={teacher_name!r}; use '{TOY_STUDENT}' with '{TOY_TEACHER}' "
                         "(they share the toy tokenizer) or two real models that share a tokenizer.")
    if student_name == TOY_STUDENT:
        return _toy_world_models(training_args.seed)
    if teacher_name is None and training_args.teacher_server_url is None:
        raise ValueError("No teacher: set teacher_model_name_or_path (or teacher_server_url).")

    from transformers import AutoTokenizer
    from trl import get_quantization_config

    model_kwargs: dict[str, Any] = {"revision": model_args.model_revision, "dtype": model_args.dtype}
    if model_args.attn_implementation is not None:
        model_kwargs["attn_implementation"] = model_args.attn_implementation
    quantization_config = get_quantization_config(model_args)
    if quantization_config is not None:
        model_kwargs["quantization_config"] = quantization_config
        from accelerate import PartialState

        model_kwargs["device_map"] = {"": PartialState().local_process_index}  # k-bit weights stay on this GPU
    training_args.model_init_kwargs = {**model_kwargs, **(training_args.model_init_kwargs or {})}
    if training_args.teacher_model_init_kwargs is None:
        training_args.teacher_model_init_kwargs = {
            key: value for key, value in model_kwargs.items() if key in ("dtype", "attn_implementation")}
    tokenizer = AutoTokenizer.from_pretrained(student_name, revision=model_args.model_revision,
                                              trust_remote_code=training_args.trust_remote_code)
    return tokenizer, student_name, teacher_name


# --------------------------------------------------------------------------------------------
# Data
# --------------------------------------------------------------------------------------------


def _system_prompt(value: str | None) -> str | None:
    from sod_trainer.data import TOOL_SYSTEM_PROMPT

    if value is None or value.strip().lower() == "none":
        return None
    return TOOL_SYSTEM_PROMPT if value.strip().lower() == "tool" else value


def _load_one(script_args: SODScriptArguments, name: str, split: str, size: int | None, seed: int):
    if name == TOY_DATASET:
        from sod_trainer.toy.tasks import build_dataset

        toy_split = "train" if split == script_args.dataset_train_split else "eval"
        return build_dataset(size or (1024 if toy_split == "train" else 64), seed=seed, split=toy_split)
    from sod_trainer.data import load_prompt_dataset

    return load_prompt_dataset(name, config=script_args.dataset_config, split=split)


def load_datasets(script_args: SODScriptArguments, training_args: SODConfig):
    """``(train_dataset, eval_dataset or None)``, loaded, rendered into prompts and checked row by row."""
    from sod_trainer.data import prepare_dataset

    if script_args.dataset_name is None:
        raise ValueError("No training data: set dataset_name (a Hub id, a local file or folder, or "
                         f"'{TOY_DATASET}').")
    if script_args.dataset_streaming:
        raise ValueError("dataset_streaming is not supported: SOD samples each prompt num_generations times, "
                         "which needs a map-style dataset.")
    system_prompt = _system_prompt(script_args.system_prompt)
    train = _load_one(script_args, script_args.dataset_name, script_args.dataset_train_split,
                      script_args.max_train_samples, training_args.seed)
    train = prepare_dataset(train, template=script_args.prompt_template, system_prompt=system_prompt,
                            max_samples=script_args.max_train_samples)
    evaluation = None
    if training_args.eval_strategy != "no":
        name = script_args.eval_dataset_name or script_args.dataset_name
        evaluation = _load_one(script_args, name, script_args.dataset_test_split, script_args.max_eval_samples,
                               training_args.seed)
        evaluation = prepare_dataset(evaluation, template=script_args.prompt_template, system_prompt=system_prompt,
                                     max_samples=script_args.max_eval_samples)
    return train, evaluation


# --------------------------------------------------------------------------------------------
# Rewards and environment
# --------------------------------------------------------------------------------------------


def _import_object(dotted: str, what: str):
    module_name, _, attribute = dotted.rpartition(".")
    if not module_name:
        raise ValueError(f"{what} {dotted!r} is not a known name or a dotted import path (module.name).")
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())  # as TRL: modules next to the recipe are importable
    try:
        return getattr(importlib.import_module(module_name), attribute)
    except (ImportError, AttributeError) as error:
        raise ValueError(f"Could not import {what} {dotted!r}: {error}") from error


def build_reward_funcs(script_args: SODScriptArguments, training_args: SODConfig, train_dataset) -> list:
    """Reward callables for the names in ``script_args.reward_funcs`` (see its help)."""
    from sod_trainer import rewards

    options = {"tool_shaping": script_args.reward_tool_shaping,
               "overlong_buffer": script_args.reward_overlong_buffer,
               "overlong_factor": script_args.reward_overlong_factor,
               "max_completion_length": training_args.max_completion_length}
    factories = {"math": rewards.make_math_reward, "multiple_choice": rewards.make_multiple_choice_reward,
                 "code": rewards.make_code_reward}
    result = []
    for name in script_args.reward_funcs or []:
        if name == "auto":
            try:
                result += rewards.default_reward_funcs(train_dataset, **options)
            except ValueError:
                if training_args.grpo_coef != 0:
                    raise
                logger.info("No reward fits the dataset's columns; training without rewards (grpo_coef=0).")
        elif name == "math_strict":
            result.append(rewards.make_math_reward(strict=True, **options))
        elif name in factories:
            result.append(factories[name](**options))
        elif name == "toy":
            from sod_trainer.toy.tasks import toy_reward

            result.append(toy_reward)
        else:
            result.append(_import_object(name, "reward function"))
    return result


def build_environment_factory(script_args: SODScriptArguments):
    """``None`` for the built-in Python tool (SODTrainer builds it from SODConfig), else a zero-argument
    factory for the class or function named by ``script_args.environment``."""
    if script_args.environment == "python":
        if script_args.environment_kwargs:
            raise ValueError("environment_kwargs applies to a custom environment; configure the built-in Python "
                             "tool with SODConfig's tool_* fields (tool_timeout, tool_call_format, ...).")
        return None
    kwargs = script_args.environment_kwargs or {}
    if isinstance(kwargs, str):
        try:
            kwargs = json.loads(kwargs)
        except json.JSONDecodeError as error:
            raise ValueError(f"environment_kwargs must be a JSON object, got {kwargs!r}: {error}") from None
    if not isinstance(kwargs, dict):
        raise ValueError(f"environment_kwargs must be a mapping, got {kwargs!r}.")
    factory = _import_object(script_args.environment, "environment")
    if not callable(factory):
        raise ValueError(f"environment {script_args.environment!r} is not a class or a function.")
    return partial(factory, **kwargs) if kwargs else factory


# --------------------------------------------------------------------------------------------
# The run
# --------------------------------------------------------------------------------------------


def main(script_args: SODScriptArguments, training_args: SODConfig, model_args: ModelConfig,
         launch_args: LaunchArguments | None = None, recipe_file: str | None = None):
    """Load everything the arguments name, train, save (and push, with ``push_to_hub``); returns the trainer.
    ``recipe_file``, the YAML the arguments came from, is copied next to the model card."""
    from trl import get_peft_config

    from sod_trainer.trainer import SODTrainer

    tokenizer, student, teacher = load_models(model_args, training_args)
    train_dataset, eval_dataset = load_datasets(script_args, training_args)
    reward_funcs = build_reward_funcs(script_args, training_args, train_dataset)
    trainer = SODTrainer(
        model=student, teacher_model=teacher, args=training_args, train_dataset=train_dataset,
        eval_dataset=eval_dataset, processing_class=tokenizer, reward_funcs=reward_funcs,
        environment_factory=build_environment_factory(script_args), peft_config=get_peft_config(model_args),
    )
    trainer.recipe_file = recipe_file
    try:
        trainer.train(resume_from_checkpoint=training_args.resume_from_checkpoint)
        trainer.accelerator.print("Training completed.")
        if script_args.save_final_model:
            trainer.save_model(training_args.output_dir)
            trainer.accelerator.print(f"Model saved to {training_args.output_dir}.")
        if training_args.push_to_hub:
            trainer.push_to_hub(dataset_name=script_args.dataset_name)
    finally:
        trainer.close()
        if hasattr(trainer, "end"):
            trainer.end()
    return trainer


def config_path(argv: list[str]) -> str | None:
    """The recipe named by ``--config`` in ``argv``, if any."""
    return argv[argv.index("--config") + 1] if "--config" in argv[:-1] else None


def run(argv: list[str] | None = None):
    """Parse ``argv`` (``--config recipe.yaml`` and flags) and train in this process."""
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = make_parser()
    script_args, training_args, model_args, launch_args = parser.parse_args_and_config(argv)
    return main(script_args, training_args, model_args, launch_args, recipe_file=config_path(argv))


ERROR_FILE_VARIABLE = "SOD_TRAIN_ERROR_FILE"


def record_failure(error: BaseException) -> None:
    """Append this process's error (one line) to the file ``sod train`` reads back (``$SOD_TRAIN_ERROR_FILE``)."""
    path = os.environ.get(ERROR_FILE_VARIABLE)
    if not path:
        return
    rank = os.environ.get("RANK", "0")
    message = " ".join(f"{type(error).__name__}: {error}".split())
    with open(path, "a", encoding="utf-8") as handle:
        handle.write(f"{rank}\t{message}\n")


def run_as_script(argv: list[str] | None = None) -> int:
    """``run`` as a process's entry point: a failure prints its traceback, is recorded for ``sod train``, and
    exits with 1."""
    try:
        run(argv)
    except Exception as error:
        import traceback

        traceback.print_exc()
        record_failure(error)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(run_as_script())
