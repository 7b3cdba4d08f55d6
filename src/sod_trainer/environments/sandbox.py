"""Run model-written Python in a separate process (minimal executor; hardened in the sandbox issue).

Protects against: hangs (wall-clock timeout, the whole process group is killed), runaway output
(byte cap), leaking the trainer's environment variables (scrubbed environment).
Does NOT yet protect against: filesystem writes, network access, fork bombs, memory bombs.
"""

from __future__ import annotations

import ast
import os
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass

__all__ = ["SandboxConfig", "ExecutionResult", "PythonSandbox", "add_print_of_last_expression", "truncate_middle"]


@dataclass
class SandboxConfig:
    """Limits for one tool call."""

    timeout_s: float = 10.0
    max_output_bytes: int = 1 << 20


@dataclass
class ExecutionResult:
    stdout: str
    stderr: str
    exit_code: int | None
    timed_out: bool = False
    duration_s: float = 0.0
    output_truncated: bool = False
    isolation: str = "process"

    @property
    def error(self) -> bool:
        return self.timed_out or self.exit_code != 0 or "Traceback (most recent call last)" in self.stderr

    def observation(self, max_chars: int) -> str:
        """Text shown to the model: stdout then stderr, cut to ``max_chars`` keeping head and tail."""
        text = self.stdout
        if self.stderr:
            text = (text + "\n" if text and not text.endswith("\n") else text) + self.stderr
        if self.timed_out:
            text += f"\nTimeoutError: execution exceeded the time limit"
        return truncate_middle(text.strip("\n"), max_chars)


def truncate_middle(text: str, max_chars: int, marker: str = "...(truncated)...") -> str:
    """Keep the head and tail of ``text`` around ``marker`` so that it is at most ``max_chars`` long."""
    if max_chars <= 0 or len(text) <= max_chars:
        return text
    keep = max(max_chars - len(marker), 0)
    head = keep // 2
    tail = keep - head
    return text[:head] + marker + (text[-tail:] if tail else "")


def add_print_of_last_expression(code: str) -> str:
    """REPL-like: if the last statement is a bare expression (not a call to print), print its value."""
    try:
        tree = ast.parse(code)
    except SyntaxError:
        return code
    if not tree.body or not isinstance(tree.body[-1], ast.Expr):
        return code
    last = tree.body[-1].value
    if isinstance(last, ast.Call) and isinstance(last.func, ast.Name) and last.func.id == "print":
        return code
    tree.body[-1] = ast.Expr(
        value=ast.Call(
            func=ast.Name(id="__sod_show__", ctx=ast.Load()), args=[last], keywords=[]
        )
    )
    helper = ast.parse("def __sod_show__(value):\n    if value is not None:\n        print(repr(value) if isinstance(value, str) else value)\n")
    tree.body = helper.body + tree.body
    ast.fix_missing_locations(tree)
    return ast.unparse(tree)


class PythonSandbox:
    """Executes code in a fresh ``python`` process per call."""

    def __init__(self, config: SandboxConfig | None = None):
        self.config = config or SandboxConfig()

    def run(self, code: str) -> ExecutionResult:
        source = add_print_of_last_expression(code)
        start = time.monotonic()
        with tempfile.TemporaryDirectory(prefix="sod_tool_") as workdir:
            env = {"PATH": "/usr/bin:/bin", "HOME": workdir, "PYTHONIOENCODING": "utf-8", "LANG": "C.UTF-8"}
            process = subprocess.Popen(
                [sys.executable, "-I", "-c", source],
                cwd=workdir, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                stderr=subprocess.PIPE, start_new_session=True,
            )
            timed_out = False
            try:
                out, err = process.communicate(timeout=self.config.timeout_s)
            except subprocess.TimeoutExpired:
                timed_out = True
                try:
                    os.killpg(process.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                out, err = process.communicate()
        cap = self.config.max_output_bytes
        truncated = len(out) > cap or len(err) > cap
        return ExecutionResult(
            stdout=out[:cap].decode("utf-8", "replace"),
            stderr=err[:cap].decode("utf-8", "replace"),
            exit_code=None if timed_out else process.returncode,
            timed_out=timed_out,
            duration_s=time.monotonic() - start,
            output_truncated=truncated,
        )
