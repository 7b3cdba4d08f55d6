"""Sandbox configuration, execution results, and the output-truncation and REPL-print helpers."""

from __future__ import annotations

import ast
import math
from dataclasses import dataclass, field
from typing import Any

TRUNCATION_MARKER = "...(truncated)..."
_TIMEOUT_EXIT_CODE = 124  # the bootstrap's exit status after its own TimeoutError (as timeout(1))


@dataclass
class SandboxConfig:
    """Limits and isolation of the sandbox. Every field has a safe default; ``None`` means "derived"."""

    timeout_s: float = field(default=10.0, metadata={"help": (
        "Wall-clock limit of one call, seconds. The code gets a TimeoutError at this point (so the model sees "
        "where it was stuck), and the whole process tree gets SIGKILL kill_grace_s later.")})
    max_output_bytes: int = field(default=1 << 20, metadata={"help": (
        "Bytes of stdout and of stderr kept per call (head and tail halves); the rest is read and dropped.")})
    memory_mb: int = field(default=1024, metadata={"help": (
        "Memory of the whole sandbox, MiB: a cgroup limit on all its processes and its /tmp together (when the "
        "machine allows cgroups, see `cgroup`), and the address-space limit (RLIMIT_AS) of each process.")})
    cpu_time_s: float | None = field(default=None, metadata={"help": (
        "CPU-time limit (RLIMIT_CPU), seconds; default ceil(timeout_s) + 1. Persistent workers re-arm it per call.")})
    max_processes: int = field(default=64, metadata={"help": (
        "Processes and threads one sandbox may run at once (cgroup pids.max, and RLIMIT_NPROC counted per sandbox).")})
    workdir_mb: int = field(default=256, metadata={"help": (
        "Size of the sandbox's private /tmp (its working directory, a tmpfs), MiB; with namespaces only.")})
    max_file_size_mb: int = field(default=64, metadata={"help": "Largest file the code may write (RLIMIT_FSIZE), MiB."})
    max_open_files: int = field(default=256, metadata={"help": "Open file descriptors per process (RLIMIT_NOFILE)."})
    isolation: str = field(default="auto", metadata={"help": (
        "'auto': bubblewrap namespaces when they work; rlimits only, with a loud warning, when the machine "
        "cannot give namespaces (bwrap missing or namespaces refused; any other failure is an error); 'bwrap': "
        "namespaces or an error; 'rlimits': no namespaces (not safe for untrusted code)."),
        "choices": ["auto", "bwrap", "rlimits"]})
    python_executable: str | None = field(default=None, metadata={"help": (
        "Interpreter run inside the sandbox; default: the trainer's own, so its numpy and sympy are importable. "
        "Made absolute (a bare name is looked up on PATH) before anything else.")})
    readonly_paths: tuple[str, ...] = field(default=(), metadata={"help": (
        "Host paths made visible read-only inside the sandbox, at the same place (e.g. a code benchmark's data "
        "directory). Nothing else of the host is visible besides the system directories and the interpreter.")})
    hidden_paths: tuple[str, ...] = field(default=(), metadata={"help": (
        "Directories hidden behind an empty tmpfs inside the sandbox (only useful within what is visible: "
        "the interpreter's directories and readonly_paths).")})
    seccomp: str = field(default="auto", metadata={"help": (
        "The syscall filter (with namespaces): 'auto' on when libseccomp works, else a warning; 'require': an "
        "error without it; 'off'."), "choices": ["auto", "require", "off"]})
    cgroup: str = field(default="auto", metadata={"help": (
        "Per-sandbox memory and process limits through a cgroup: 'auto' when the machine allows it (else rlimits "
        "only, with a warning); 'require': an error without it; 'off': rlimits only."),
        "choices": ["auto", "require", "off"]})
    env: dict[str, str] = field(default_factory=dict, metadata={"help": (
        "Extra environment variables set inside the sandbox (nothing of the trainer's environment leaks).")})
    kill_grace_s: float = field(default=0.5, metadata={"help": (
        "Seconds between the in-process TimeoutError and SIGKILL of the whole process tree.")})
    temp_root: str | None = field(default=None, metadata={"help": (
        "Where the per-call working directories are created when there are no namespaces (isolation 'rlimits'); "
        "default: the system temp dir. Leftovers of a trainer that crashed are removed at the next start.")})
    sandbox_uid_base: int = field(default=2_000_000_000, metadata={"help": (
        "As root, each live sandbox runs as uid base + (pid % 65536) * 1024 + slot: unprivileged and unique.")})

    def resolved_cpu_time_s(self) -> int:
        if self.cpu_time_s is not None:
            return max(1, math.ceil(self.cpu_time_s))
        return math.ceil(self.timeout_s) + 1


@dataclass
class ExecutionResult:
    """What one call produced. ``stdout``/``stderr`` are capped (head and tail kept)."""

    stdout: str
    stderr: str
    exit_code: int | None
    """The interpreter's exit status; negative when a signal killed it; ``None`` when the sandbox
    killed it at the deadline."""
    timed_out: bool = False
    duration_s: float = 0.0
    output_truncated: bool = False
    isolation: str = "process"
    """``bwrap`` | ``bwrap-userns`` | ``rlimits`` (see the module docstring)."""
    signal: str | None = None
    """Name of the signal that killed the interpreter (``SIGSEGV``, ``SIGKILL``, ...), if any."""
    state_reset: bool = False
    """Persistent mode: the worker was killed by this call, so the next call starts with no state."""
    metadata: dict[str, Any] = field(default_factory=dict)

    @property
    def error(self) -> bool:
        """Non-zero exit, a traceback, a timeout or a kill."""
        return (self.timed_out or self.exit_code != 0 or self.signal is not None
                or "Traceback (most recent call last)" in self.stderr)

    @property
    def is_error(self) -> bool:
        return self.error

    @property
    def output(self) -> str:
        """stdout then stderr, with a note on timeouts and kills (not cut to a length)."""
        text = self.stdout
        if self.stderr:
            text = (text + "\n" if text and not text.endswith("\n") else text) + self.stderr
        notes = []
        if self.timed_out and "TimeoutError" not in self.stderr[-500:]:
            notes.append("TimeoutError: execution exceeded the time limit")
        elif self.signal is not None and not self.timed_out:
            notes.append(f"Process killed by signal {self.signal}")
        if self.state_reset:
            notes.append("(the interpreter was restarted; variables from earlier calls were lost)")
        if notes:
            text = (text + "\n" if text and not text.endswith("\n") else text) + "\n".join(notes)
        return text

    def observation(self, max_chars: int) -> str:
        """Text shown to the model: :attr:`output` cut to ``max_chars`` keeping head and tail."""
        return truncate_middle(self.output.strip("\n"), max_chars)


def truncate_middle(text: str, max_chars: int, marker: str = TRUNCATION_MARKER) -> str:
    """Keep the head and tail of ``text`` around ``marker`` so that it is at most ``max_chars`` long."""
    if max_chars <= 0 or len(text) <= max_chars:
        return text
    keep = max(max_chars - len(marker), 0)
    head = keep // 2
    tail = keep - head
    return text[:head] + marker + (text[-tail:] if tail else "")


def add_print_of_last_expression(code: str) -> str:
    """REPL-like source rewrite: if the last statement is a bare expression (not a call to print),
    print its value. (The sandbox does the same on the AST, keeping line numbers and comments.)"""
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
