"""The arguments of ``sod eval``, parsed TRL's way (``TrlParser``: underscore flags with dashed aliases, an
optional ``--config eval.yaml`` whose keys the flags override, help for every option).

:class:`EvalScriptArguments` says what to evaluate (model, benchmark, device, output). Every field of
:class:`~sod_trainer.evaluation.EvaluationConfig` (sampling, budgets, tool-call format, chat-template
arguments, tool output cut, system prompt, sandbox, ...) is a flag as well: :data:`EvalRolloutArguments` is
generated from it, so a rollout option added there is on the command line without another edit.
"""

from __future__ import annotations

import json
from dataclasses import MISSING, dataclass, field, fields, make_dataclass
from typing import Any

from .runner import EvaluationConfig

__all__ = ["EvalScriptArguments", "EvalRolloutArguments", "make_eval_parser", "evaluation_config", "ROLLOUT_FILE",
           "write_rollout_file", "parse_eval_args"]

ROLLOUT_FILE = "sod_rollout.yaml"
# The options that make up a model's own rollout format: saved with the model by SODTrainer.save_model and read
# back by `sod eval --model <that folder>` as defaults (flags and --config override them).
FORMAT_FIELDS = ("max_turns", "tool_call_format", "chat_template_kwargs", "max_tool_response_chars",
                 "tool_response_template", "tool_persistent")


@dataclass
class EvalScriptArguments:
    """What ``sod eval`` evaluates, and where the model runs and the results go."""

    model: str = field(metadata={"help": "Model path or Hub id."})
    benchmark: str = field(metadata={"help": "aime2024, aime2025, gpqa_diamond, livecodebench_v6, math500, or toy."})
    tokenizer: str | None = field(default=None, metadata={"help": "Tokenizer path or Hub id (default: the model's)."})
    benchmark_path: str | None = field(
        default=None, metadata={"help": "Local JSON/JSONL/Parquet/CSV file or folder instead of the Hub."})
    limit: int | None = field(default=None, metadata={"help": "Evaluate the first N problems only."})
    strict: bool = field(default=False, metadata={"help": "Math: the paper's exact boxed match, no math-verify."})
    dtype: str = field(default="auto", metadata={"help": "Model dtype: auto, bfloat16, float16, float32.",
                                                 "choices": ["auto", "bfloat16", "float16", "float32"]})
    device: str | None = field(default=None, metadata={"help": "cuda, cpu, ... (default: cuda when available)."})
    output_dir: str | None = field(default=None, metadata={"help": "Where problems.jsonl and summary.json go."})
    no_text: bool = field(default=False, metadata={"help": "Leave trajectory text out of problems.jsonl."})


# How an EvaluationConfig field is spelled on the command line, where its type cannot be (tuples, dicts, the
# system prompt's 'tool' / 'none' words).
_CLI_FIELDS: dict[str, tuple[Any, Any, str]] = {
    "seeds": (list[int], None, " Several values: --seeds 0 1 2."),
    "pass_k": (list[int] | None, None, " Several values: --pass_k 1 4 16."),
    "chat_template_kwargs": (str | None, None, " A JSON object, e.g. '{\"enable_thinking\": false}'."),
    "system_prompt": (str, "tool", " On the command line: 'tool' (the training prompt), 'none', or the text."),
}
_SCRIPT_NAMES = {f.name for f in fields(EvalScriptArguments)} | {"keep_text"}  # keep_text is --no_text


def _training_choices(name: str) -> list | None:
    """The choices SODConfig declares for a rollout option of the same name (one list, in one place)."""
    from ..config import SODConfig

    item = SODConfig.__dataclass_fields__.get(name)
    return list(item.metadata["choices"]) if item is not None and "choices" in item.metadata else None


def _rollout_fields() -> list[tuple[str, Any, Any]]:
    specs = []
    for item in fields(EvaluationConfig):
        if item.name in _SCRIPT_NAMES:
            continue
        annotation, default, extra = _CLI_FIELDS.get(item.name, (item.type, MISSING, ""))
        if default is MISSING:
            default = item.default if item.default is not MISSING else item.default_factory()
        if item.name == "seeds":
            specs.append((item.name, annotation, field(default_factory=lambda d=item.default: list(d),
                                                       metadata={"help": item.metadata["help"] + extra})))
            continue
        metadata = {"help": item.metadata["help"] + extra}
        choices = _training_choices(item.name)
        if choices:
            metadata["choices"] = choices
        specs.append((item.name, annotation, field(default=default, metadata=metadata)))
    return specs


EvalRolloutArguments = make_dataclass("EvalRolloutArguments", _rollout_fields())
EvalRolloutArguments.__doc__ = "Every EvaluationConfig field as a ``sod eval`` flag (generated from it)."


def make_eval_parser(prog: str = "sod eval"):
    """``TrlParser`` over :class:`EvalScriptArguments` and :data:`EvalRolloutArguments`."""
    from ..scripts.train import SODParser  # TRL's parser, with "did you mean ...?" for unknown options

    return SODParser((EvalScriptArguments, EvalRolloutArguments), prog=prog,
                     description="Evaluate a model with the Python tool on a benchmark (SOD_SPEC §9).")


def evaluation_config(script: EvalScriptArguments, rollout: Any) -> EvaluationConfig:
    """The :class:`EvaluationConfig` of parsed ``sod eval`` arguments."""
    from ..prompts import resolve_system_prompt

    values = {f.name: getattr(rollout, f.name) for f in fields(rollout)}
    values["seeds"] = tuple(values["seeds"])
    values["pass_k"] = tuple(values["pass_k"]) if values["pass_k"] else None
    kwargs = values["chat_template_kwargs"]
    if isinstance(kwargs, str):
        try:
            values["chat_template_kwargs"] = json.loads(kwargs)
        except json.JSONDecodeError as error:
            raise ValueError(f"chat_template_kwargs must be a JSON object, got {kwargs!r}: {error}") from None
        if not isinstance(values["chat_template_kwargs"], dict):
            raise ValueError(f"chat_template_kwargs must be a JSON object, got {kwargs!r}.")
    values["system_prompt"] = resolve_system_prompt(values["system_prompt"])
    return EvaluationConfig(**values, keep_text=not script.no_text)


def write_rollout_file(training_args: Any, folder: str) -> str:
    """Write the rollout format of a training run (:data:`FORMAT_FIELDS`, from its SODConfig) to
    ``folder/sod_rollout.yaml``; returns the path."""
    import os

    import yaml

    config = EvaluationConfig.from_training_args(training_args)
    values = {name: getattr(config, name) for name in FORMAT_FIELDS}
    if values["chat_template_kwargs"] is not None:
        values["chat_template_kwargs"] = json.dumps(values["chat_template_kwargs"])
    os.makedirs(folder, exist_ok=True)
    path = os.path.join(folder, ROLLOUT_FILE)
    with open(path, "w", encoding="utf-8") as handle:
        handle.write("# The rollout format this model was trained with; `sod eval --model <this folder>` uses it "
                     "(flags override).\n")
        yaml.safe_dump(values, handle, sort_keys=False)
    return path


def _model_argument(argv: list[str]) -> str | None:
    for index, token in enumerate(argv[:-1]):
        if token == "--model":
            return argv[index + 1]
    for token in argv:
        if token.startswith("--model="):
            return token.split("=", 1)[1]
    if "--config" in argv[:-1]:
        import yaml

        with open(argv[argv.index("--config") + 1], encoding="utf-8") as handle:
            return (yaml.safe_load(handle) or {}).get("model")
    return None


def parse_eval_args(argv: list[str]) -> tuple[EvalScriptArguments, Any, str | None]:
    """Parse ``sod eval`` arguments; a model folder's ``sod_rollout.yaml`` sets the rollout defaults (then
    ``--config``, then flags). Returns the two argument objects and the rollout file used, if any."""
    import os

    import yaml

    parser = make_eval_parser()
    model = _model_argument(argv)
    rollout_file = os.path.join(model, ROLLOUT_FILE) if model and os.path.isdir(model) else None
    if rollout_file is not None and os.path.isfile(rollout_file):
        with open(rollout_file, encoding="utf-8") as handle:
            saved = yaml.safe_load(handle) or {}
        known = {f.name for f in fields(EvalRolloutArguments)}
        parser.set_defaults_with_config(**{key: value for key, value in saved.items() if key in known})
    else:
        rollout_file = None
    script, rollout = parser.parse_args_and_config(argv)
    return script, rollout, rollout_file
