"""The ``sod`` command: ``sod train``, ``sod eval``, ``sod demo``, ``sod inspect``, ``sod env``, ``sod ablate``
(one table, :data:`COMMANDS`).

``sod train --config recipe.yaml [--field value ...]`` works like ``trl grpo``: the YAML sets the defaults
of the script, ``SODConfig``, ``ModelConfig`` and launch dataclasses (see :mod:`sod_trainer.scripts.train`),
flags override it, its ``env:`` mapping is exported, and the launch keys (``num_processes``,
``accelerate_config``, ``mixed_precision``, ...) go to ``accelerate launch``, which runs the training
script in every process. ``sod train --help`` lists every field with its help text.
"""

from __future__ import annotations

import argparse
import importlib
import os
import platform
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError, version

__all__ = ["COMMANDS", "Command", "main", "build_launch_command", "split_launcher_flags", "print_env"]

def _version(package: str) -> str:
    try:
        return version(package)
    except PackageNotFoundError:
        return "not installed"


def _sod_version() -> str:
    try:
        return version("sod-trainer")
    except PackageNotFoundError:
        from . import __version__

        return f"{__version__} (not installed: running from source)"


# --------------------------------------------------------------------------------------------
# sod train
# --------------------------------------------------------------------------------------------


def split_launcher_flags(argv: list[str], launcher_fields: set[str]) -> tuple[list[str], list[str]]:
    """Split command-line ``argv`` into (launcher flags, the rest). Accepts ``--name value``, ``--name=value`` and
    the dashed spelling ``--num-processes``, as the parser does."""
    launcher, rest = [], []
    index = 0
    while index < len(argv):
        token = argv[index]
        name = token[2:].split("=", 1)[0].replace("-", "_") if token.startswith("--") else None
        if name in launcher_fields:
            if "=" in token:
                launcher.append(token)
                index += 1
            else:
                has_value = index + 1 < len(argv) and not argv[index + 1].startswith("--")
                launcher += argv[index:index + (2 if has_value else 1)]
                index += 2 if has_value else 1
            continue
        rest.append(token)
        index += 1
    return launcher, rest


def training_script_path() -> str:
    """The file ``accelerate launch`` runs in every process."""
    from .scripts import train

    return train.__file__


def _default_accelerate_config_exists() -> bool:
    try:
        from accelerate.commands.config import default_config_file
    except ImportError:
        return False
    return os.path.isfile(default_config_file)


LAUNCHER_MODULE = "sod_trainer.scripts.launch"  # accelerate launch, minus its traceback when training fails


def build_launch_command(launch_args, script_argv: list[str], training_args=None) -> list[str]:
    """``python -m sod_trainer.scripts.launch <launch args> <training script> <script argv>``: ``accelerate
    launch`` (see :mod:`sod_trainer.scripts.launch`).

    Without an accelerate config (neither ``accelerate_config`` nor one saved by ``accelerate config``),
    the values accelerate would otherwise guess with a warning are filled in: one machine, no dynamo,
    and the mixed precision that ``SODConfig`` asks for (``bf16`` / ``fp16``).
    """
    args = launch_args.accelerate_args()
    if not launch_args.accelerate_config and not _default_accelerate_config_exists():
        defaults = {"--num_machines": "1", "--dynamo_backend": "no"}
        if training_args is not None:
            defaults["--mixed_precision"] = ("bf16" if training_args.bf16 else
                                             "fp16" if training_args.fp16 else "no")
        for flag, value in defaults.items():
            if flag not in args:
                args += [flag, value]
    return [sys.executable, "-m", LAUNCHER_MODULE, *args, training_script_path(), *script_argv]


def _train(argv: list[str]) -> int:
    from .scripts.train import config_path, launcher_field_names, main, make_parser

    parser = make_parser(prog="sod train")
    # Parses the YAML and the flags (and exits with the full help on -h); exports the `env:` block.
    try:
        script_args, training_args, model_args, launch_args = parser.parse_args_and_config(list(argv))
    except ValueError as error:
        print(f"sod train: error: {error}", file=sys.stderr)
        return 2
    if launch_args.launcher == "none":
        try:
            main(script_args, training_args, model_args, launch_args, recipe_file=config_path(list(argv)))
        except Exception as error:
            import traceback

            traceback.print_exc()
            print(f"sod train: error: training failed: {type(error).__name__}: {error}", file=sys.stderr)
            return 1
        return 0
    # Every process re-reads the recipe; the launcher's own flags stay here.
    _, script_argv = split_launcher_flags(list(argv), launcher_field_names())
    try:
        command = build_launch_command(launch_args, script_argv, training_args)
    except ValueError as error:
        print(f"sod train: error: {error}", file=sys.stderr)
        return 2
    print("sod train: accelerate launch " + " ".join(command[3:]), file=sys.stderr, flush=True)
    return _run_training(command)


def _run_training(command: list[str]) -> int:
    """Run the launcher; when training fails, end with the training process's error and exit code."""
    import tempfile

    from .scripts.train import ERROR_FILE_VARIABLE

    with tempfile.TemporaryDirectory(prefix="sod-train-") as folder:
        error_file = os.path.join(folder, "error.txt")
        returncode = subprocess.run(command, env={**os.environ, ERROR_FILE_VARIABLE: error_file}).returncode
        if returncode == 0:
            return 0
        errors = []
        if os.path.exists(error_file):
            with open(error_file, encoding="utf-8") as handle:
                errors = sorted((line.rstrip("\n").split("\t", 1) for line in handle if "\t" in line),
                                key=lambda item: int(item[0]) if item[0].isdigit() else 0)
    if errors:
        rank, message = errors[0]
        where = f" (process {rank})" if len(errors) > 1 or rank != "0" else ""
        print(f"sod train: error: training failed with exit code {returncode}{where}: {message}", file=sys.stderr)
    else:
        print(f"sod train: error: training failed with exit code {returncode} (the training process's output is "
              "above).", file=sys.stderr)
    return returncode


# --------------------------------------------------------------------------------------------
# sod eval / sod demo: implemented elsewhere, imported only when used
# --------------------------------------------------------------------------------------------


def _delegate(module_name: str, argv: list[str], what: str) -> int:
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as error:
        if error.name is not None and module_name.startswith(error.name):
            print(f"sod {what}: {module_name} is not part of this installation of sod-trainer "
                  f"({_sod_version()}). Upgrade sod-trainer to get `sod {what}`.", file=sys.stderr)
            return 2
        raise
    entry = getattr(module, "main", None)
    if entry is None:
        print(f"sod {what}: {module_name} has no main(argv) entry point in this version of sod-trainer.",
              file=sys.stderr)
        return 2
    result = entry(list(argv))
    return result if isinstance(result, int) else 0


# --------------------------------------------------------------------------------------------
# sod env
# --------------------------------------------------------------------------------------------


def environment_info() -> dict[str, str]:
    """Versions of the stack and the accelerators, for bug reports."""
    info = {
        "sod-trainer": _sod_version(),
        "Platform": platform.platform(),
        "Python": platform.python_version(),
    }
    for package in ("torch", "transformers", "trl", "accelerate", "datasets", "peft", "tokenizers",
                    "math-verify", "vllm", "deepspeed", "flash-attn", "bitsandbytes", "liger-kernel", "wandb"):
        info[package] = _version(package)
    try:
        import torch

        if torch.cuda.is_available():
            names = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
            info["Accelerators"] = f"{len(names)} x CUDA: " + ", ".join(sorted(set(names)))
            info["CUDA (torch build)"] = str(torch.version.cuda)
        elif getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            info["Accelerators"] = "MPS"
        else:
            info["Accelerators"] = "none (CPU only)"
    except ImportError:
        info["Accelerators"] = "unknown (torch not importable)"
    try:
        from accelerate.commands.config import default_config_file

        info["Accelerate default config"] = default_config_file if os.path.isfile(default_config_file) else "none"
    except ImportError:
        pass
    for variable in ("HF_HUB_OFFLINE", "CUDA_VISIBLE_DEVICES", "ACCELERATE_MIXED_PRECISION"):
        if variable in os.environ:
            info[variable] = os.environ[variable]
    import warnings

    from sod_trainer.environments.sandbox import isolation_report

    with warnings.catch_warnings():  # the report says it; no second copy as a warning
        warnings.simplefilter("ignore", RuntimeWarning)
        info.update(isolation_report())  # what the tool sandbox gives on this machine, and why
    return info


def print_env() -> int:
    info = environment_info()
    width = max(len(key) for key in info)
    print("Copy-paste this into your bug report:\n")
    for key, value in info.items():
        print(f"- {key.ljust(width)} : {value}")
    return 0


# --------------------------------------------------------------------------------------------
# main
# --------------------------------------------------------------------------------------------


def _env(rest: list[str]) -> int:
    if rest and rest[0] in ("-h", "--help"):
        print("usage: sod env\n\n" + COMMANDS["env"].help)
        return 0
    return print_env()


@dataclass(frozen=True)
class Command:
    """A ``sod`` subcommand: its one-line help, and what runs it: a function of the remaining argv, or the name
    of a module with ``main(argv)``, imported only when the command is used."""

    help: str
    run: Callable[[list[str]], int] | str


# Every subcommand, in the order `sod --help` lists them. A new one is one entry here.
COMMANDS: dict[str, Command] = {
    "train": Command("Train with SOD from a YAML recipe (TRL style: --config recipe.yaml, flags override).", _train),
    "eval": Command("Evaluate a model with tools (avg@k / pass@k / maj@k) on the paper's benchmarks.",
                    "sod_trainer.evaluation"),
    "demo": Command("The offline toy world end to end: teacher, cold-start student, SOD training, before/after "
                    "evaluation, in minutes on a CPU.", "sod_trainer.toy.demo"),
    "inspect": Command("Render saved rollouts (a run's output dir or a .jsonl) to the trajectory viewer page; prints "
                       "its path.", "sod_trainer.viewer.inspect_cli"),
    "env": Command("Print the versions of the stack, to paste into a bug report.", _env),
    "ablate": Command("A seeded grid of objectives x seeds x toy worlds (resumable): ablation.json, a table with "
                      "paired intervals, plots.", "sod_trainer.ablation"),
}


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="sod", description="Step-wise on-policy distillation (SOD) for tool-using small language models.",
        epilog="Run `sod <command> --help` for a command's options. Docs: docs/ (mkdocs serve).",
    )
    parser.add_argument("--version", action="version", version=f"sod-trainer {_sod_version()}")
    subparsers = parser.add_subparsers(dest="command", metavar="{" + ",".join(COMMANDS) + "}")
    for name, command in COMMANDS.items():
        subparsers.add_parser(name, help=command.help, add_help=False)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``sod`` console script."""
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = _parser()
    if not argv or argv[0] not in COMMANDS:
        parser.parse_args(argv or ["--help"])  # prints help / version / the unknown-command error and exits
        return 2
    command, rest = COMMANDS[argv[0]], argv[1:]
    if isinstance(command.run, str):
        return _delegate(command.run, rest, argv[0])
    return command.run(rest)


if __name__ == "__main__":
    raise SystemExit(main())
