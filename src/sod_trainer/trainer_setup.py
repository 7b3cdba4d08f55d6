"""What :class:`~sod_trainer.SODTrainer`'s constructor needs before ``Trainer.__init__``: loading a model named by a
string (as TRL's GRPOTrainer), and the glue for TRL-style environments and function tools."""

from __future__ import annotations

import logging

from transformers import PreTrainedModel

from .config import SODConfig

logger = logging.getLogger("sod_trainer.trainer")

__all__ = ["load_model", "placeholder_dataset", "prompt_options", "warn_interpreter_fields"]

_INTERPRETER_FIELDS = ("tool_call_format", "tool_response_template", "max_tool_response_chars", "tool_timeout",
                       "tool_persistent", "tool_memory_mb", "tool_max_processes", "tool_isolation")


def warn_interpreter_fields(args) -> None:
    """The built-in code interpreter's settings do nothing for TRL-style function tools: say so when one is set."""
    defaults = SODConfig.__dataclass_fields__
    changed = [f"{name}={getattr(args, name)!r}" for name in _INTERPRETER_FIELDS
               if getattr(args, name) != defaults[name].default]
    if changed:
        logger.warning("%s only configure%s the built-in code interpreter; TRL-style environments and tools=[...] "
                       "call functions (their results are shown in full, as in TRL). Drop %s.", ", ".join(changed),
                       "s" if len(changed) == 1 else "", "it" if len(changed) == 1 else "them")


def placeholder_dataset(function_tools, args):
    """As TRL: without a train_dataset, an environment whose ``reset`` returns the prompt drives the run; one rollout
    batch's worth of empty prompts, cycled for ``max_steps``."""
    from datasets import Dataset

    if function_tools.multi_environment:
        raise ValueError("A dict environment_factory (several environments) needs a train_dataset with an "
                         "`environment` column to route each row to its environment. Pass a dataset, or a single "
                         "environment factory.")
    if args.max_steps <= 0:
        raise ValueError("Without a train_dataset (the environment returns the prompt from reset()), set max_steps to "
                         "a positive number to define the training length, e.g. SODConfig(max_steps=100).")
    rows = args.generation_batch_size // args.num_generations
    return Dataset.from_dict({"prompt": [[{"role": "user", "content": ""}]] * rows})


def prompt_options(function_tools):
    """The prompt-rendering arguments (function tools, template) of the environment a dataset row selects."""

    def options(row):
        name = row.get("environment") if function_tools.multi_environment else None
        return {"tools": function_tools.environment_tools.get(name) or None,
                "chat_template": function_tools.chat_template}

    return options


def load_model(name_or_path: str, init_kwargs: dict | None, args: SODConfig, what: str) -> PreTrainedModel:
    """Load a model named by a string as TRL's GRPOTrainer does (``trl``'s ``create_model_from_path``: the
    architecture from the config, ``dtype`` as a string or ``torch.dtype``, ``device_map`` None under DDP/DeepSpeed)."""
    from trl.trainer.utils import create_model_from_path

    kwargs = dict(init_kwargs or {})  # a copy: args.model_init_kwargs stays as given
    if "torch_dtype" in kwargs and "dtype" not in kwargs:  # the older transformers name
        kwargs["dtype"] = kwargs.pop("torch_dtype")
    if args.distributed_state.distributed_type in ("MULTI_GPU", "DEEPSPEED"):
        kwargs["device_map"] = None  # as TRL: "auto" fails under distributed training
    kwargs.setdefault("trust_remote_code", args.trust_remote_code)
    try:
        return create_model_from_path(name_or_path, **kwargs)
    except OSError as error:
        raise OSError(
            f"Could not load the {what} {name_or_path!r}: {error}. Pass a local path, or make sure the Hugging "
            "Face Hub is reachable (HF_HUB_OFFLINE must be unset)."
        ) from error
