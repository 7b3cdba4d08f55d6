"""The arguments of ``sod train`` (TRL's way, ``trl.TrlParser``): the script's data / reward / environment fields,
how ``sod train`` starts ``accelerate launch``, and the parser that reads them from a YAML recipe and the command
line with "did you mean ...?" for unknown options. :mod:`sod_trainer.scripts.train` re-exports all of them."""

from __future__ import annotations

import shlex
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from trl import ModelConfig, ScriptArguments, TrlParser

from sod_trainer.config import SODConfig

__all__ = ["SODScriptArguments", "LaunchArguments", "SODParser", "make_parser", "launcher_field_names",
           "accelerate_config_dirs", "resolve_accelerate_config"]


@dataclass
class SODScriptArguments(ScriptArguments):
    """Arguments of the training script: data, rewards, environment (TRL's ``ScriptArguments`` plus SOD's)."""

    dataset_name: str | None = field(
        default=None,
        metadata={"help": "Training data: a Hub id, a local .json/.jsonl/.parquet/.csv file, a local folder (a "
                  "saved dataset or split-named data files), or 'toy-arithmetic' (the offline toy world)."},
    )
    eval_dataset_name: str | None = field(
        default=None,
        metadata={"help": "Evaluation data when it is not the `dataset_test_split` split of `dataset_name` "
                  "(same forms as dataset_name). Used only when eval_strategy is not 'no'."},
    )
    max_train_samples: int | None = field(
        default=None, metadata={"help": "Keep only the first N training rows (for a quick run)."}
    )
    max_eval_samples: int | None = field(default=None, metadata={"help": "Keep only the first N evaluation rows."})
    prompt_template: str = field(
        default="auto",
        metadata={"help": "How rows with plain problem/question columns become prompts: 'auto' (code if the row "
                  "has tests, multiple_choice if it has choices, else math), 'math', 'multiple_choice', 'code', "
                  "or 'none' (the text as it is). Rows with a prompt or messages column are used as they are.",
                  "choices": ["auto", "math", "multiple_choice", "code", "none"]},
    )
    system_prompt: str | None = field(
        default="tool",
        metadata={"help": "System message of prompts rendered from problem/question columns: 'tool' (the built-in "
                  "tool-use instructions, sod_trainer.data.TOOL_SYSTEM_PROMPT), 'none', or the text itself."},
    )
    reward_funcs: list[str] = field(
        default_factory=lambda: ["auto"],
        metadata={"help": "Reward functions: 'auto' (picked from the dataset's columns: math for answer, "
                  "multiple_choice for choices or letter answers, code for tests), 'math', 'math_strict' (the "
                  "paper's exact boxed match), 'multiple_choice', 'code', 'toy', or a dotted import path "
                  "('my_module.my_reward', TRL's signature fn(prompts, completions, **kwargs))."},
    )
    reward_tool_shaping: bool = field(
        default=False,
        metadata={"help": "Tool-use shaping of wrong answers: r = min(-0.6, r + 0.1 * (num_turns - 2) / 2) "
                  "(paper: on)."},
    )
    reward_overlong_buffer: int | None = field(
        default=None,
        metadata={"help": "DAPO overlong penalty buffer in tokens (paper: 1024); None disables the penalty."},
    )
    reward_overlong_factor: float = field(default=1.0, metadata={"help": "DAPO overlong penalty factor (paper: 1.0)."})
    environment: str = field(
        default="python",
        metadata={"help": "Tool environment: 'python' (the built-in sandboxed Python tool, configured by SODConfig's "
                  "tool_* fields) or a dotted import path to a ToolEnvironment class or a factory function."},
    )
    environment_kwargs: dict[str, Any] | str | None = field(
        default=None,
        metadata={"help": "Keyword arguments for a custom environment (a YAML mapping or a JSON string)."},
    )
    save_final_model: bool = field(
        default=True, metadata={"help": "Save the trained model (and tokenizer) to output_dir at the end."}
    )


@dataclass
class LaunchArguments:
    """How ``sod train`` starts the run: arguments for ``accelerate launch``. Ignored inside the launched script."""

    launcher: str = field(
        default="accelerate",
        metadata={"help": "'accelerate': start the run with `accelerate launch` (TRL's way); 'none': train in this "
                  "process (a debugger, a notebook, or a launcher of your own such as torchrun).",
                  "choices": ["accelerate", "none"]},
    )
    accelerate_config: str | None = field(
        default=None,
        metadata={"help": "Accelerate config: a file, or a name from examples/accelerate_configs (single_gpu, "
                  "multi_gpu, zero2, zero3, zero3_offload) or from TRL's shipped configs."},
    )
    num_processes: int | None = field(default=None, metadata={"help": "Processes in total (usually one per GPU)."})
    num_machines: int | None = field(default=None, metadata={"help": "Machines (nodes) in the run."})
    machine_rank: int | None = field(default=None, metadata={"help": "Rank of this machine (0 on the main node)."})
    main_process_ip: str | None = field(default=None, metadata={"help": "IP address of the main node."})
    main_process_port: int | None = field(default=None, metadata={"help": "Port of the main node."})
    mixed_precision: str | None = field(
        default=None, metadata={"help": "Mixed precision of `accelerate launch`.",
                                "choices": ["no", "fp16", "bf16", "fp8"]},
    )
    gpu_ids: str | None = field(default=None, metadata={"help": "GPUs to use on this machine, e.g. '0,1,2,3'."})
    dynamo_backend: str | None = field(default=None, metadata={"help": "torch.compile backend, e.g. 'inductor'."})
    deepspeed_config_file: str | None = field(
        default=None, metadata={"help": "A DeepSpeed JSON config (instead of the accelerate config's own)."}
    )
    zero_stage: int | None = field(default=None, metadata={"help": "DeepSpeed ZeRO stage (1, 2 or 3)."})
    launch_args: str | None = field(
        default=None,
        metadata={"help": "Any other `accelerate launch` arguments, as one string, e.g. '--rdzv_backend c10d'."},
    )

    _FLAGS = ("num_processes", "num_machines", "machine_rank", "main_process_ip", "main_process_port",
              "mixed_precision", "gpu_ids", "dynamo_backend", "deepspeed_config_file", "zero_stage")

    def accelerate_args(self) -> list[str]:
        """The arguments for ``accelerate launch`` (before the script), in a stable order."""
        args: list[str] = []
        if self.accelerate_config:
            args += ["--config_file", resolve_accelerate_config(self.accelerate_config)]
        for name in self._FLAGS:
            value = getattr(self, name)
            if value is not None:
                args += [f"--{name}", str(value)]
        if self.zero_stage is not None:
            args.insert(0, "--use_deepspeed")
        if self.launch_args:
            args += shlex.split(self.launch_args)
        return args


def launcher_field_names() -> set[str]:
    """Names of the :class:`LaunchArguments` fields (flags that ``sod train`` keeps for itself)."""
    from dataclasses import fields

    return {f.name for f in fields(LaunchArguments)}


def accelerate_config_dirs() -> list[Path]:
    """Where named accelerate configs are looked up: ./examples/accelerate_configs, the repository's, TRL's."""
    dirs = [Path.cwd() / "examples" / "accelerate_configs", Path(__file__).resolve().parents[3] / "examples" /
            "accelerate_configs"]
    import trl

    dirs.append(Path(trl.__file__).parent / "accelerate_configs")
    return dirs


def resolve_accelerate_config(value: str) -> str:
    """A path for ``--config_file``: ``value`` itself if it is a file, else ``<dir>/<value>.yaml``."""
    path = Path(value).expanduser()
    if path.is_file():
        return str(path)
    for directory in accelerate_config_dirs():
        candidate = directory / f"{value.removesuffix('.yaml')}.yaml"
        if candidate.is_file():
            return str(candidate)
    known = sorted({p.stem for d in accelerate_config_dirs() if d.is_dir() for p in d.glob("*.yaml")})
    raise ValueError(f"accelerate_config={value!r} is neither a file nor a known config name. Known names: "
                     f"{', '.join(known) or 'none found'}.")


class SODParser(TrlParser):
    """TRL's parser (``--config recipe.yaml``, flags override it, ``env:`` exported) that names an unknown key or
    flag with the closest known ones ("did you mean ...?") instead of TRL's generic message."""

    def parse_args_and_config(self, args=None, return_remaining_strings: bool = False,
                              fail_with_unknown_args: bool = True, separate_remaining_strings: bool = False):
        """As ``TrlParser.parse_args_and_config``; unknown YAML keys and flags raise ``ValueError`` with hints."""
        if return_remaining_strings or not fail_with_unknown_args:
            return super().parse_args_and_config(args, return_remaining_strings, fail_with_unknown_args,
                                                 separate_remaining_strings)
        args = list(sys.argv[1:] if args is None else args)
        config_path = args[args.index("--config") + 1] if "--config" in args[:-1] else None
        *outputs, from_config, from_flags = super().parse_args_and_config(
            args, return_remaining_strings=True, separate_remaining_strings=True)
        problems = [_unknown(name, self.known_names(), f"key in {config_path}", self.prog)
                    for name in from_config[::2]]  # TRL returns them as ["--key", "value", ...]
        problems += [_unknown(token, self.known_names(), "flag", self.prog) for token in from_flags
                     if token.startswith("-")]
        if not problems and from_flags:
            problems.append(f"unexpected argument(s) {from_flags}: options are written --name value.")
        if problems:
            raise ValueError(" ".join(problems))
        return tuple(outputs)

    def known_names(self) -> list[str]:
        """Every option name this parser accepts (without dashes), plus ``config``."""
        names = {"config"}
        for action in self._actions:
            names.update(option.lstrip("-") for option in action.option_strings if option.startswith("--"))
        return sorted(names)


def _unknown(token: str, known: list[str], what: str, prog: str = "sod train") -> str:
    """One "unknown ... did you mean ...?" sentence."""
    import difflib

    name = token.lstrip("-").split("=", 1)[0]
    close = difflib.get_close_matches(name.replace("-", "_"), [k for k in known if "-" not in k], n=3, cutoff=0.6)
    hint = f" Did you mean {' or '.join(repr(c) for c in close)}?" if close else ""
    return f"Unknown {what}: {name!r}.{hint} `{prog} --help` lists every option."


def make_parser(prog: str | None = None) -> SODParser:
    """The parser of ``sod train``: script, training, model and launch arguments, with ``--config``."""
    return SODParser((SODScriptArguments, SODConfig, ModelConfig, LaunchArguments), prog=prog)
