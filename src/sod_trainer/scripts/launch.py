"""``accelerate launch`` for ``sod train``: the same arguments and behaviour, but a failed training process ends
the launcher with that process's exit code and no launcher traceback (``CalledProcessError`` from accelerate,
``ChildFailedError`` from torchrun), so the last thing ``sod train`` prints is the training process's error.

    python -m sod_trainer.scripts.launch [accelerate launch arguments] script.py [script arguments]
"""

from __future__ import annotations

import subprocess
import sys

__all__ = ["main", "child_exit_code"]


def child_exit_code(error: BaseException) -> int | None:
    """The failed training process's exit code carried by a launcher exception, or None if it carries none."""
    if isinstance(error, subprocess.CalledProcessError):
        return error.returncode or 1
    failures = getattr(error, "failures", None)  # torch.distributed.elastic's ChildFailedError
    if isinstance(failures, dict) and failures:
        first = failures[min(failures)]
        return getattr(first, "exitcode", 1) or 1
    return None


def main(argv: list[str] | None = None) -> int:
    """Run ``accelerate launch`` with ``argv``; return the training processes' exit code."""
    from accelerate.commands.launch import launch_command, launch_command_parser

    args = launch_command_parser().parse_args(sys.argv[1:] if argv is None else argv)
    try:
        launch_command(args)
    except Exception as error:
        code = child_exit_code(error)
        if code is None:
            raise
        return code
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
