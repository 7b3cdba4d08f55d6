"""Run model-written Python on the training machine itself, isolated, with no service to deploy.

Every call (stateless mode, the default and the paper's setup) runs in a fresh interpreter inside a
`bubblewrap <https://github.com/containers/bubblewrap>`_ sandbox; the persistent mode
(:mod:`.persistent`) keeps one such interpreter per trajectory.

What it protects against (isolation level ``"bwrap"``, the default when the trainer runs as root,
and ``"bwrap-userns"`` when it does not):

* hangs: a wall-clock timeout (an in-process ``TimeoutError`` first, so that the model sees where
  it was stuck, then SIGKILL ``kill_grace_s`` later) and a CPU-time limit;
* runaway processes: the code runs in its own PID namespace, so the whole tree -- including
  children that start a new session or ignore SIGTERM -- is killed when the call ends or times out,
  and the call returns only once it is gone; a process-count limit (RLIMIT_NPROC, made effective by
  a per-call unprivileged uid as root, or a per-call user namespace otherwise) stops fork bombs;
* memory, file-size and open-file bombs: RLIMIT_AS, RLIMIT_FSIZE, RLIMIT_NOFILE (no core files);
* runaway output: stdout and stderr are read concurrently and capped at ``max_output_bytes``,
  keeping head and tail, so a 100 MB print neither stalls nor bloats the trainer;
* the network: a fresh network namespace with only a loopback interface of its own;
* the filesystem: everything is mounted read-only; the only writable place is a per-call
  temporary directory (``/tmp``, also ``HOME`` and the working directory), removed afterwards;
  the trainer's home directory is hidden; as root the code runs as an unprivileged uid, so
  ``/etc/shadow`` and other root-only files are unreadable;
* the trainer's secrets: a scrubbed environment (only ``PATH``, ``HOME``, locale and thread-count
  variables), ``stdin`` closed, a fresh ``/proc`` that shows only the sandbox's own processes;
* the trainer itself: the code cannot signal it (other PID namespace) and bwrap's
  ``--die-with-parent`` kills every sandbox if the trainer dies.

What it does NOT protect against:

* kernel exploits and side channels (there is no seccomp filter and no VM boundary): do not treat
  it as a security boundary against a determined attacker; use gVisor/Firecracker for that;
* total memory: RLIMIT_AS bounds each process, not the sum over a process tree or over concurrent
  calls (use a cgroup memory limit around the trainer for that); tmpfs/shm are not used;
* disk usage: the temporary directory lives on the host filesystem and is only bounded per file
  (RLIMIT_FSIZE) and by the timeout;
* reading world-readable files (the sandbox sees the host filesystem read-only, minus the
  trainer's home directory); in ``"bwrap-userns"`` mode the code runs with the trainer's uid, so
  it can read whatever the trainer can outside the hidden paths;
* threads of a persistent worker that outlive their call (their output is discarded);
* in the fallback mode ``"rlimits"`` (no usable namespaces; a loud warning is emitted and the
  level recorded in every result): network access, filesystem writes wherever the process's uid
  may write, and children that escape the process group (as root they are still swept by uid).
"""

from __future__ import annotations

import ast
import collections
import concurrent.futures
import importlib.util
import json
import logging
import math
import os
import queue
import selectors
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import warnings
from dataclasses import dataclass, field
from typing import Any

__all__ = [
    "SandboxConfig",
    "ExecutionResult",
    "PythonSandbox",
    "run_code",
    "isolation_level",
    "add_print_of_last_expression",
    "truncate_middle",
]

logger = logging.getLogger(__name__)

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
    memory_mb: int = field(default=1024, metadata={"help": "Address-space limit (RLIMIT_AS) of each process, MiB."})
    cpu_time_s: float | None = field(default=None, metadata={"help": (
        "CPU-time limit (RLIMIT_CPU), seconds; default ceil(timeout_s) + 1. Persistent workers re-arm it per call.")})
    max_processes: int = field(default=64, metadata={"help": (
        "Processes and threads one sandbox may run at once (RLIMIT_NPROC, counted per sandbox).")})
    max_file_size_mb: int = field(default=64, metadata={"help": "Largest file the code may write (RLIMIT_FSIZE), MiB."})
    max_open_files: int = field(default=256, metadata={"help": "Open file descriptors per process (RLIMIT_NOFILE)."})
    isolation: str = field(default="auto", metadata={"help": (
        "'auto': bubblewrap namespaces when they work, else rlimits only with a loud warning; 'bwrap': namespaces "
        "or an error; 'rlimits': no namespaces (not safe for untrusted code)."),
        "choices": ["auto", "bwrap", "rlimits"]})
    python_executable: str | None = field(default=None, metadata={"help": (
        "Interpreter run inside the sandbox; default: the trainer's own, so its numpy and sympy are importable.")})
    hidden_paths: tuple[str, ...] = field(default=(), metadata={"help": (
        "Directories hidden behind an empty tmpfs inside the sandbox, besides the trainer's home directory.")})
    env: dict[str, str] = field(default_factory=dict, metadata={"help": (
        "Extra environment variables set inside the sandbox (nothing of the trainer's environment leaks).")})
    kill_grace_s: float = field(default=0.5, metadata={"help": (
        "Seconds between the in-process TimeoutError and SIGKILL of the whole process tree.")})
    temp_root: str | None = field(default=None, metadata={"help": (
        "Where the per-call temporary directories are created; default: the system temp dir.")})
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


# ----------------------------------------------------------------------------------------------
# The bootstrap: trusted code that runs first inside the sandbox, sets limits, drops privileges,
# then runs the model's code (once, or in a loop for the persistent worker).
# ----------------------------------------------------------------------------------------------

_BOOTSTRAP = r'''
def _sod_boot():
    # Imports are kept to builtin modules on the success path: every millisecond here is paid
    # on every tool call (json, ast, signal, traceback and site would add ~20 ms).
    import os, sys, _ast, _signal, resource, builtins
    cfg = eval(sys.argv[1], {"__builtins__": {}})  # a literal written by the trainer
    sys.argv[:] = [""]
    if cfg["no_new_privs"]:
        import ctypes
        ctypes.CDLL(None, use_errno=True).prctl(38, 1, 0, 0, 0)  # PR_SET_NO_NEW_PRIVS
    for name, (soft, hard) in cfg["limits"].items():
        which = getattr(resource, name)
        current_hard = resource.getrlimit(which)[1]
        if current_hard != resource.RLIM_INFINITY:
            hard = current_hard if hard < 0 else min(hard, current_hard)
        soft = hard if soft < 0 else (soft if hard < 0 else min(soft, hard))
        resource.setrlimit(which, (soft, hard))
    if cfg["uid"] is not None:
        os.setgroups([])
        os.setgid(cfg["uid"])
        os.setuid(cfg["uid"])
    if cfg["no_new_privs"]:  # no bwrap: die with the trainer ourselves (after setuid, which clears it)
        ctypes.CDLL(None, use_errno=True).prctl(1, 9, 0, 0, 0)  # PR_SET_PDEATHSIG, SIGKILL
        if os.getppid() != cfg["parent"]:
            os._exit(137)
    # What `site` would do, without running .pth files: site-packages on the path, exit() and quit().
    sys.path.extend(cfg["path"])

    class Quitter:
        def __init__(self, name):
            self.name = name

        def __repr__(self):
            return f"Use {self.name}() or Ctrl-D (i.e. EOF) to exit"

        def __call__(self, code=None):
            raise SystemExit(code)

    def help(*args, **kwargs):
        import pydoc
        return pydoc.help(*args, **kwargs)

    builtins.exit, builtins.quit, builtins.help = Quitter("exit"), Quitter("quit"), help
    namespace = sys.modules["__main__"].__dict__
    for key in [k for k in namespace if k not in ("__name__", "__builtins__", "__doc__", "__spec__", "__loader__", "__package__")]:
        del namespace[key]
    namespace["__doc__"] = None

    def print_error(error, tb, source, filename):
        try:
            import linecache, traceback
            linecache.cache[filename] = (len(source), None, source.splitlines(True), filename)
            # The last 200 frames at most: formatting a million-frame recursion would outlast the deadline.
            report = traceback.TracebackException(type(error), error, tb, limit=-200)
            report.stack = traceback.StackSummary.from_list(
                [frame for frame in report.stack if not (frame.filename == "<string>" and frame.name == "on_alarm")])
            sys.stderr.write("".join(report.format()))
        except BaseException:  # e.g. the code broke the traceback module: say at least what happened
            sys.stderr.write(f"Traceback (most recent call last):\n{type(error).__name__}: {error}\n")

    def run(source, filename, timeout, show_last):
        try:
            tree = compile(source, filename, "exec", _ast.PyCF_ONLY_AST)
            last = None
            if show_last and tree.body and isinstance(tree.body[-1], _ast.Expr):
                value = tree.body[-1].value
                if not (isinstance(value, _ast.Call) and isinstance(value.func, _ast.Name) and value.func.id == "print"):
                    last = compile(_ast.Expression(tree.body.pop().value), filename, "eval")
            body = compile(tree, filename, "exec")
        except Exception as error:
            print_error(error, None, source, filename)
            return 1
        fired = []

        def on_alarm(signum, frame):
            if not fired:
                fired.append(True)
                raise TimeoutError(f"execution exceeded the time limit of {timeout:g} s")

        _signal.signal(_signal.SIGALRM, on_alarm)
        _signal.setitimer(_signal.ITIMER_REAL, timeout)
        try:
            exec(body, namespace)
            if last is not None:
                value = eval(last, namespace)
                if value is not None:
                    print(repr(value) if isinstance(value, str) else value)
            status = 0
        except SystemExit as exit_:
            _signal.setitimer(_signal.ITIMER_REAL, 0)
            code = exit_.code
            if code is None:
                status = 0
            elif isinstance(code, int):
                status = code & 0xFF
            else:
                print(code, file=sys.stderr)
                status = 1
        except BaseException as error:
            _signal.setitimer(_signal.ITIMER_REAL, 0)
            print_error(error, error.__traceback__.tb_next, source, filename)
            status = 124 if fired and isinstance(error, TimeoutError) else 1
        finally:
            _signal.setitimer(_signal.ITIMER_REAL, 0)
        return status

    if cfg["mode"] == "oneshot":
        fd = cfg["code_fd"]
        chunks = []
        while True:
            chunk = os.read(fd, 1 << 20)
            if not chunk:
                break
            chunks.append(chunk)
        os.close(fd)
        status = run(b"".join(chunks).decode("utf-8", "replace"), "main.py", cfg["timeout"], cfg["show_last"])
        sys.stdout.flush()
        sys.stderr.flush()
        raise SystemExit(status)

    import json, time
    request_fd, response_fd = cfg["ctrl"]
    cpu = cfg["cpu_per_call"]

    def read_exact(n):
        data = b""
        while len(data) < n:
            chunk = os.read(request_fd, n - len(data))
            if not chunk:
                return None
            data += chunk
        return data

    cell = 0
    while True:
        header = read_exact(4)
        if header is None:
            break
        payload = read_exact(int.from_bytes(header, "big"))
        if payload is None:
            break
        request = json.loads(payload)
        cell += 1
        used = resource.getrusage(resource.RUSAGE_SELF)
        used = int(used.ru_utime + used.ru_stime) + 1
        hard = resource.getrlimit(resource.RLIMIT_CPU)[1]
        soft = used + cpu
        if hard != resource.RLIM_INFINITY:
            soft = min(soft, hard)
        resource.setrlimit(resource.RLIMIT_CPU, (soft, hard))
        status = run(request["code"], f"cell{cell}.py", request["timeout"], request["show_last"])
        try:
            sys.stdout.flush()
            sys.stderr.flush()
        except Exception:
            pass
        if cfg["kill_strays"]:
            # Kill every other process of the sandbox (kill(-1) spares the caller and the
            # namespace's init); inside our own PID namespace, wait until they are gone.
            try:
                os.kill(-1, 9)
            except OSError:
                pass
            if cfg["own_pid_namespace"]:
                me, end = os.getpid(), time.monotonic() + 2.0
                while True:
                    try:
                        while os.waitpid(-1, os.WNOHANG)[0] > 0:
                            pass
                    except ChildProcessError:
                        pass
                    if time.monotonic() > end or not [p for p in os.listdir("/proc") if p.isdigit() and int(p) not in (1, me)]:
                        break
                    time.sleep(0.001)
        os.write(response_fd, (json.dumps({"status": status}) + "\n").encode())

_sod_boot()
'''


# ----------------------------------------------------------------------------------------------
# Isolation plan: probed once per (interpreter, requested isolation) and cached.
# ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Plan:
    level: str  # "bwrap" | "bwrap-userns" | "rlimits"
    python: str
    drop_uid: bool  # run the code as a per-call unprivileged uid (trainer is root)
    bwrap_prefix: tuple[str, ...]  # bwrap options shared by all calls (empty for "rlimits")
    reason: str = ""
    site_paths: tuple[str, ...] = ()  # sys.path entries that `site` would have added
    tmp_binds: tuple[str, ...] = ()  # interpreter paths under /tmp (e.g. a venv), re-exposed over the call's /tmp

    @property
    def namespaces(self) -> bool:
        return self.level != "rlimits"

    def describe(self) -> dict[str, Any]:
        return {
            "isolation": self.level,
            "pid_namespace": self.namespaces,
            "network_isolated": self.namespaces,
            "filesystem_readonly": self.namespaces,
            "unprivileged_uid": self.drop_uid,
        }


_plans: dict[tuple[Any, ...], _Plan] = {}
_plans_lock = threading.Lock()
_warned: set[str] = set()


def _interpreter_layout(python: str) -> tuple[list[str], list[str]]:
    """(directories the interpreter needs, its site-packages path entries).

    The sandbox starts Python with ``-S`` (no ``site``: ~8 ms less per call), so the bootstrap puts
    site-packages and the directories listed in its ``.pth`` files on ``sys.path`` itself; the
    ``import`` lines of ``.pth`` files are not run.
    """
    if os.path.realpath(python) == os.path.realpath(sys.executable):
        import site

        prefixes = [sys.prefix, sys.base_prefix, sys.exec_prefix, sys.base_exec_prefix]
        site_dirs = site.getsitepackages()
    else:
        query = ("import sys, site, json; print(json.dumps([[sys.prefix, sys.base_prefix, sys.exec_prefix, "
                 "sys.base_exec_prefix], site.getsitepackages()]))")
        completed = subprocess.run([python, "-I", "-c", query], capture_output=True, text=True, timeout=30,
                                   env={"PATH": "/usr/bin:/bin"}, stdin=subprocess.DEVNULL)
        if completed.returncode != 0:
            raise RuntimeError(f"Cannot run the sandbox interpreter {python!r}: {completed.stderr.strip()[-500:]}")
        prefixes, site_dirs = json.loads(completed.stdout)
    paths = set()
    for path in [*prefixes, os.path.dirname(python)]:
        paths.add(os.path.abspath(path))
        paths.add(os.path.realpath(path))
    paths.add(os.path.dirname(os.path.realpath(python)))
    site_paths: list[str] = []
    for site_dir in site_dirs:
        if not os.path.isdir(site_dir) or site_dir in site_paths:
            continue
        site_paths.append(site_dir)
        for name in sorted(os.listdir(site_dir)):
            if not name.endswith(".pth"):
                continue
            try:
                lines = open(os.path.join(site_dir, name), encoding="utf-8").read().splitlines()
            except (OSError, UnicodeDecodeError):
                continue
            for line in lines:
                line = line.strip()
                if not line or line.startswith(("#", "import ", "import\t")):
                    continue
                entry = os.path.abspath(os.path.join(site_dir, line))
                if os.path.isdir(entry) and entry not in site_paths:
                    site_paths.append(entry)
    return sorted(paths), site_paths


def _is_within(path: str, parent: str) -> bool:
    return path == parent or path.startswith(parent.rstrip("/") + "/")


def _bwrap_prefix(config: SandboxConfig, python: str, as_root: bool) -> tuple[str, ...]:
    args = ["--die-with-parent", "--new-session", "--unshare-pid", "--unshare-net", "--unshare-ipc",
            "--unshare-uts", "--unshare-cgroup-try", "--hostname", "sandbox"]
    if not as_root:
        args.append("--unshare-user")
    args += ["--ro-bind", "/", "/", "--dev", "/dev", "--proc", "/proc"]
    hidden = []
    home = os.path.realpath(os.path.expanduser("~"))
    for path in (home, *config.hidden_paths):
        path = os.path.realpath(path)
        if path != "/" and os.path.isdir(path) and path not in hidden:
            hidden.append(path)
    for path in hidden:
        args += ["--tmpfs", path]
    needed = _interpreter_layout(python)[0]
    made_dirs: set[str] = set()
    bound: list[str] = []
    for path in sorted(needed):
        mask = next((h for h in hidden if _is_within(path, h) and path != h), None)
        if (mask is None and path not in hidden) or any(_is_within(path, b) for b in bound):
            continue
        bound.append(path)
        if mask is not None:
            # Directories that bwrap would create on its own get mode 0700, unreadable once we drop
            # privileges: create the ones between the mask and the interpreter path as 0755.
            relative = os.path.relpath(os.path.dirname(path), mask)
            current = mask
            for part in ([] if relative == "." else relative.split(os.sep)):
                current = os.path.join(current, part)
                if current not in made_dirs:
                    made_dirs.add(current)
                    args += ["--perms", "0755", "--dir", current]
        args += ["--ro-bind", path, path]
    return tuple(args)


def _make_plan(config: SandboxConfig) -> _Plan:
    python = config.python_executable or sys.executable
    as_root = os.geteuid() == 0
    requested = config.isolation
    if requested not in ("auto", "bwrap", "rlimits"):
        raise ValueError(f"SandboxConfig.isolation={requested!r}; choose 'auto', 'bwrap' or 'rlimits'.")
    reason = ""
    site_paths = tuple(_interpreter_layout(python)[1])
    if requested != "rlimits":
        bwrap = shutil.which("bwrap")
        if bwrap is None:
            reason = "bubblewrap (bwrap) is not installed (apt-get install bubblewrap)"
        else:
            tmp_binds = tuple(p for p in _interpreter_layout(python)[0] if _is_within(p, "/tmp") and p != "/tmp")
            plan = _Plan("bwrap" if as_root else "bwrap-userns", python, as_root,
                         (bwrap, *_bwrap_prefix(config, python, as_root)), site_paths=site_paths,
                         tmp_binds=tmp_binds)
            probe = _run_once(plan, config, "import numpy, sympy\nprint(6 * 7)", None, timeout_s=30.0,
                              show_last=False, probe=True)
            if probe.exit_code == 0 and probe.stdout.strip() == "42":
                return plan
            if probe.exit_code == 0 or "No module named" in probe.stderr:
                # numpy/sympy missing is not a namespace problem: keep the isolation, tell the user.
                probe2 = _run_once(plan, config, "print(6 * 7)", None, timeout_s=30.0, show_last=False, probe=True)
                if probe2.stdout.strip() == "42":
                    _warn_once("numpy", f"numpy/sympy are not importable inside the sandbox ({python}): "
                                        f"{probe.stderr.strip()[-300:]}")
                    return plan
            reason = (f"bubblewrap could not start a sandbox (exit {probe.exit_code}): "
                      f"{(probe.stderr or probe.stdout).strip()[-500:]}")
        if requested == "bwrap":
            raise RuntimeError(f"SandboxConfig.isolation='bwrap' but {reason}. Install bubblewrap and allow "
                               "namespaces (root, or unprivileged user namespaces), or set isolation='auto'.")
    drop_uid = False
    if as_root:
        # Run as an unprivileged uid only if that uid can still read the standard library (and
        # numpy, when the trainer has it): without a mount namespace, nothing can be re-exposed.
        plan = _Plan("rlimits", python, True, (), site_paths=site_paths)
        imports = "import fractions\n" + ("import numpy\n" if importlib.util.find_spec("numpy") else "")
        probe = _run_once(plan, config, imports + "print(6 * 7)", None, timeout_s=30.0, show_last=False, probe=True)
        drop_uid = probe.stdout.strip() == "42"
    plan = _Plan("rlimits", python, drop_uid, (), reason or "isolation='rlimits' requested", site_paths)
    message = ("SANDBOX WITHOUT NAMESPACES: model-written code runs with rlimits only -- it can reach the "
               "network and write wherever its uid may write"
               + ("" if drop_uid else ", and it runs with the trainer's own uid")
               + f". Reason: {plan.reason}.")
    _warn_once(f"rlimits:{python}:{drop_uid}", message)
    return plan


def _warn_once(key: str, message: str) -> None:
    with _plans_lock:
        if key in _warned:
            return
        _warned.add(key)
    logger.warning(message)
    warnings.warn(message, RuntimeWarning, stacklevel=3)


def _plan_for(config: SandboxConfig) -> _Plan:
    key = (config.python_executable or sys.executable, config.isolation, tuple(config.hidden_paths), os.geteuid())
    with _plans_lock:
        plan = _plans.get(key)
    if plan is None:
        plan = _make_plan(config)
        with _plans_lock:
            plan = _plans.setdefault(key, plan)
    return plan


def isolation_level(config: SandboxConfig | None = None) -> str:
    """The isolation the sandbox achieves on this machine: ``bwrap``, ``bwrap-userns`` or ``rlimits``."""
    return _plan_for(config or SandboxConfig()).level


# ----------------------------------------------------------------------------------------------
# Per-call unprivileged uids (root only): RLIMIT_NPROC counts per uid, and root ignores it, so each
# live sandbox gets a uid of its own.
# ----------------------------------------------------------------------------------------------


class _UidPool:
    slots = 1024

    def __init__(self) -> None:
        self._lock = threading.Condition()
        self._free = list(range(self.slots - 1, -1, -1))

    def acquire(self, base: int) -> int:
        with self._lock:
            while not self._free:
                self._lock.wait()
            slot = self._free.pop()
        return base + ((os.getpid() & 0xFFFF) << 10) + slot

    def release(self, uid: int, base: int) -> None:
        slot = (uid - base) & (self.slots - 1)
        with self._lock:
            self._free.append(slot)
            self._lock.notify()


_uid_pool = _UidPool()


# ----------------------------------------------------------------------------------------------
# One sandboxed interpreter: launch, read output with a cap, kill the whole tree, clean up.
# ----------------------------------------------------------------------------------------------


class _HeadTailBuffer:
    """Keeps the first and last ``cap // 2`` bytes of a stream, counting the rest."""

    def __init__(self, cap: int):
        self.head_cap = max(cap, 0) - max(cap, 0) // 2
        self.tail_cap = max(cap, 0) // 2
        self.head = bytearray()
        self.tail: collections.deque[bytes] = collections.deque()
        self.tail_size = 0
        self.total = 0

    def feed(self, data: bytes) -> None:
        self.total += len(data)
        if len(self.head) < self.head_cap:
            take = self.head_cap - len(self.head)
            self.head += data[:take]
            data = data[take:]
        if not data or self.tail_cap == 0:
            return
        if len(data) >= self.tail_cap:
            self.tail.clear()
            self.tail.append(data[-self.tail_cap:])
            self.tail_size = self.tail_cap
            return
        self.tail.append(data)
        self.tail_size += len(data)
        while self.tail_size - len(self.tail[0]) >= self.tail_cap:
            self.tail_size -= len(self.tail.popleft())

    @property
    def truncated(self) -> bool:
        return self.total > self.head_cap + self.tail_cap

    def text(self) -> str:
        tail = b"".join(self.tail)
        kept = len(self.head) + len(tail)
        if self.total > kept:
            tail = tail[-(self.tail_cap):] if self.tail_cap else b""
            return (self.head.decode("utf-8", "replace") + "\n" + TRUNCATION_MARKER + "\n"
                    + tail.decode("utf-8", "replace"))
        return (bytes(self.head) + tail).decode("utf-8", "replace")


def _signal_name(number: int) -> str:
    try:
        return signal.Signals(number).name
    except ValueError:
        return f"signal {number}"


def _memfd(data: bytes, name: str) -> int:
    try:
        fd = os.memfd_create(name)  # close-on-exec; inherited only through pass_fds
    except (AttributeError, OSError):
        handle = tempfile.TemporaryFile()
        fd = os.dup(handle.fileno())
        handle.close()
    _write_all(fd, data)
    os.lseek(fd, 0, os.SEEK_SET)
    return fd


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        written = os.write(fd, view)
        view = view[written:]


def _pidfd_open(pid: int) -> int | None:
    try:
        return os.pidfd_open(pid)
    except (AttributeError, OSError):
        return None


class _Spawner:
    """Starts every sandbox from one long-lived thread.

    bwrap's ``--die-with-parent`` (PR_SET_PDEATHSIG) fires when the *thread* that forked it exits,
    not the process: a persistent worker started from a thread-pool thread would be SIGKILLed when
    that thread retires. Forking from a thread that lives as long as the trainer avoids that, and
    the sandboxes still die with the trainer.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._requests: queue.SimpleQueue | None = None
        self._pid = -1

    def _loop(self, requests: queue.SimpleQueue) -> None:
        while True:
            args, kwargs, future = requests.get()
            if not future.set_running_or_notify_cancel():
                continue
            try:
                future.set_result(subprocess.Popen(*args, **kwargs))
            except BaseException as error:  # handed to the caller
                future.set_exception(error)

    def popen(self, *args: Any, **kwargs: Any) -> subprocess.Popen:
        with self._lock:
            if self._requests is None or self._pid != os.getpid():  # first use, or after a fork
                self._requests = queue.SimpleQueue()
                self._pid = os.getpid()
                threading.Thread(target=self._loop, args=(self._requests,), name="sod-sandbox-spawner",
                                 daemon=True).start()
            requests = self._requests
        future: concurrent.futures.Future = concurrent.futures.Future()
        requests.put((args, kwargs, future))
        return future.result()


_spawner = _Spawner()


class _SandboxProcess:
    """One sandboxed interpreter, one-shot or persistent worker."""

    def __init__(self, plan: _Plan, config: SandboxConfig, mode: str, *, code: str | None = None,
                 stdin: str | bytes | None = None, timeout_s: float | None = None, show_last: bool = True):
        self.plan = plan
        self.config = config
        self.mode = mode
        self.uid: int | None = None
        self.workdir: str | None = None
        self.popen: subprocess.Popen | None = None
        self.ns_init_pidfd: int | None = None
        self.exit_pidfd: int | None = None
        self.info_fd: int | None = None
        self.info = b""
        self.request_fd: int | None = None
        self.response_fd: int | None = None
        self.response = b""
        self.closed = False
        self.killed = False
        to_close: list[int] = []
        try:
            self._launch(code, stdin, timeout_s, show_last, to_close)
        except BaseException:
            self.close()
            raise
        finally:
            for fd in to_close:
                os.close(fd)

    # -- launching ------------------------------------------------------------------------------
    def _limits(self, cpu_s: int) -> dict[str, tuple[int, int]]:
        config = self.config
        memory = int(config.memory_mb) << 20
        limits = {
            "RLIMIT_AS": (memory, memory),
            "RLIMIT_CPU": (cpu_s, cpu_s + 1),
            "RLIMIT_FSIZE": (int(config.max_file_size_mb) << 20, int(config.max_file_size_mb) << 20),
            "RLIMIT_NOFILE": (config.max_open_files, config.max_open_files),
            "RLIMIT_CORE": (0, 0),
        }
        # RLIMIT_NPROC counts the processes of a uid: meaningful with a per-call uid (root) or inside
        # a user namespace of its own (bwrap-userns); with the trainer's uid it would count the trainer.
        if self.plan.drop_uid or self.plan.level == "bwrap-userns":
            limits["RLIMIT_NPROC"] = (config.max_processes, config.max_processes)
        return limits

    def _launch(self, code, stdin, timeout_s, show_last, to_close) -> None:
        plan, config = self.plan, self.config
        timeout = config.timeout_s if timeout_s is None else timeout_s
        if plan.drop_uid:
            self.uid = _uid_pool.acquire(config.sandbox_uid_base)
        self.workdir = tempfile.mkdtemp(prefix="sod_sandbox_", dir=config.temp_root)
        if self.uid is not None:
            os.chown(self.workdir, self.uid, self.uid)
        os.chmod(self.workdir, 0o700)
        cpu = config.resolved_cpu_time_s()
        boot: dict[str, Any] = {
            "mode": self.mode, "uid": self.uid, "timeout": timeout, "show_last": show_last,
            "no_new_privs": not plan.namespaces, "limits": self._limits(cpu),
            "kill_strays": plan.namespaces or plan.drop_uid, "own_pid_namespace": plan.namespaces,
            "parent": os.getpid(), "path": list(plan.site_paths),
        }
        pass_fds: list[int] = []
        if self.mode == "oneshot":
            code_fd = _memfd((code or "").encode("utf-8", "surrogatepass"), "sod_code")
            to_close.append(code_fd)
            pass_fds.append(code_fd)
            boot["code_fd"] = code_fd
        else:
            request_r, self.request_fd = os.pipe()
            self.response_fd, response_w = os.pipe()
            to_close += [request_r, response_w]
            pass_fds += [request_r, response_w]
            boot["ctrl"] = [request_r, response_w]
            boot["cpu_per_call"] = cpu
            boot["limits"]["RLIMIT_CPU"] = (cpu, cpu * 32)
        if stdin is None:
            stdin_fd = os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC)
        else:
            stdin_fd = _memfd(stdin.encode() if isinstance(stdin, str) else bytes(stdin), "sod_stdin")
        to_close.append(stdin_fd)

        inner_env = {
            "PATH": "/usr/local/bin:/usr/bin:/bin", "LANG": "C.UTF-8", "LC_ALL": "C.UTF-8",
            "PYTHONIOENCODING": "utf-8", "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1",
            "MKL_NUM_THREADS": "1", "NUMEXPR_NUM_THREADS": "1", "MPLBACKEND": "Agg",
        }
        python_argv = [plan.python, "-I", "-S", "-B", "-c", _BOOTSTRAP, repr(boot)]
        if plan.namespaces:
            inner_env.update(HOME="/tmp", TMPDIR="/tmp")
            inner_env.update(config.env)
            info_r, info_w = os.pipe()
            self.info_fd = info_r
            to_close.append(info_w)
            pass_fds.append(info_w)
            argv = [*plan.bwrap_prefix, "--bind", self.workdir, "/tmp", "--chdir", "/tmp", "--clearenv"]
            for path in plan.tmp_binds:  # an interpreter (venv) living under /tmp stays visible, read-only
                mount_point = os.path.join(self.workdir, os.path.relpath(path, "/tmp"))
                os.makedirs(mount_point, mode=0o755, exist_ok=True)
                current = mount_point
                while current != self.workdir:
                    os.chmod(current, 0o755)
                    current = os.path.dirname(current)
                argv += ["--ro-bind", path, path]
            for key, value in inner_env.items():
                argv += ["--setenv", key, value]
            argv += ["--info-fd", str(info_w), "--", *python_argv]
            env = {"PATH": "/usr/bin:/bin"}
            cwd = "/"
        else:
            inner_env.update(HOME=self.workdir, TMPDIR=self.workdir)
            inner_env.update(config.env)
            argv, env, cwd = python_argv, inner_env, self.workdir
        self.popen = _spawner.popen(
            argv, stdin=stdin_fd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env, cwd=cwd,
            pass_fds=pass_fds, close_fds=True, start_new_session=True,
        )
        self.exit_pidfd = _pidfd_open(self.popen.pid)
        for stream in (self.popen.stdout, self.popen.stderr):
            os.set_blocking(stream.fileno(), False)

    # -- reading ----------------------------------------------------------------------------------
    def collect(self, deadline: float, stdout: _HeadTailBuffer, stderr: _HeadTailBuffer,
                until_response: bool = False) -> str:
        """Read output until the process exits ("exited"), a worker response arrives ("response"),
        or the deadline passes ("deadline")."""
        popen = self.popen
        assert popen is not None
        selector = selectors.DefaultSelector()
        streams = {popen.stdout.fileno(): stdout, popen.stderr.fileno(): stderr}
        for fd in streams:
            selector.register(fd, selectors.EVENT_READ, "output")
        if self.info_fd is not None and self.ns_init_pidfd is None:
            selector.register(self.info_fd, selectors.EVENT_READ, "info")
        if self.exit_pidfd is not None:
            selector.register(self.exit_pidfd, selectors.EVENT_READ, "exit")
        if until_response and self.response_fd is not None:
            selector.register(self.response_fd, selectors.EVENT_READ, "response")
        open_streams = set(streams)
        try:
            while True:
                if until_response and b"\n" in self.response:
                    self._drain(streams, open_streams)
                    return "response"
                if popen.poll() is not None:
                    # bwrap exits as soon as the main process does; the namespace's init then kills
                    # the rest. Wait for that, so the pipes are at EOF and nothing is left running.
                    # Without namespaces strays may keep the pipes open: give them a moment only.
                    self.await_namespace_exit()
                    self._drain(streams, open_streams, grace_s=0.0 if self.plan.namespaces else 0.05)
                    return "exited"
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return "deadline"
                if self.exit_pidfd is None:
                    remaining = min(remaining, 0.01)
                for key, _ in selector.select(remaining):
                    fd = key.fd
                    if key.data == "output":
                        self._read(fd, streams[fd], selector, open_streams)
                    elif key.data == "info":
                        self._read_info(selector)
                    elif key.data == "response":
                        chunk = os.read(fd, 4096)
                        if chunk:
                            self.response += chunk
                        else:
                            selector.unregister(fd)
                    elif key.data == "exit":
                        selector.unregister(fd)
        finally:
            selector.close()

    @staticmethod
    def _read(fd: int, buffer: _HeadTailBuffer, selector, open_streams: set[int]) -> None:
        try:
            chunk = os.read(fd, 1 << 16)
        except BlockingIOError:
            return
        if chunk:
            buffer.feed(chunk)
        else:
            selector.unregister(fd)
            open_streams.discard(fd)

    def _drain(self, streams: dict[int, _HeadTailBuffer], open_streams: set[int], grace_s: float = 0.0) -> None:
        """Read what is already in the pipes (up to EOF), waiting at most ``grace_s`` for more."""
        end = time.monotonic() + grace_s
        for fd in list(open_streams):
            while True:
                try:
                    chunk = os.read(fd, 1 << 16)
                except BlockingIOError:
                    if time.monotonic() >= end:
                        break
                    time.sleep(0.005)
                    continue
                if not chunk:
                    open_streams.discard(fd)
                    break
                streams[fd].feed(chunk)

    def _read_info(self, selector=None) -> None:
        fd = self.info_fd
        if fd is None:
            return
        try:
            chunk = os.read(fd, 4096)
        except BlockingIOError:
            return
        self.info += chunk
        if not chunk or self.info.rstrip().endswith(b"}"):
            try:
                child = json.loads(self.info)["child-pid"]
            except (ValueError, KeyError, TypeError):
                child = None
            if child is not None:
                self.ns_init_pidfd = _pidfd_open(int(child))
            if selector is not None:
                selector.unregister(fd)
            os.close(fd)
            self.info_fd = None

    # -- killing and cleaning up -----------------------------------------------------------------
    def _await_info(self, timeout_s: float = 1.0) -> None:
        """The pid of the namespace's init arrives on the info fd right after the namespace exists."""
        end = time.monotonic() + timeout_s
        while self.info_fd is not None and time.monotonic() < end:
            ready = selectors.DefaultSelector()
            ready.register(self.info_fd, selectors.EVENT_READ)
            try:
                if ready.select(max(end - time.monotonic(), 0.0)):
                    self._read_info()
            finally:
                ready.close()

    def _kill_namespace(self) -> None:
        if self.ns_init_pidfd is not None:
            try:
                signal.pidfd_send_signal(self.ns_init_pidfd, signal.SIGKILL)
            except (OSError, AttributeError):
                pass

    def await_namespace_exit(self, timeout_s: float = 5.0) -> None:
        """Return once the sandbox's PID namespace is empty: its init (bwrap's reaper) has exited,
        which the kernel allows only after every other process of the namespace is gone."""
        if not self.plan.namespaces:
            return
        self._await_info()
        pidfd = self.ns_init_pidfd
        if pidfd is None:
            return
        for attempt in range(2):
            ready = selectors.DefaultSelector()
            ready.register(pidfd, selectors.EVENT_READ)
            try:
                if ready.select(timeout_s):
                    return
            finally:
                ready.close()
            self._kill_namespace()
        logger.error("sandbox namespace init did not exit after SIGKILL")

    def kill(self) -> None:
        """Kill the whole process tree and return once it is gone."""
        popen = self.popen
        if popen is None:
            return
        self.killed = True
        if self.plan.namespaces:
            # Killing the namespace's init empties the namespace (the kernel kills the rest).
            if self.ns_init_pidfd is None:
                self._await_info()
            self._kill_namespace()
            self.await_namespace_exit()
            try:
                popen.wait(timeout=5)
            except subprocess.TimeoutExpired:
                pass
        if popen.poll() is None:
            try:
                os.killpg(popen.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
            popen.kill()
        try:
            popen.wait(timeout=5)
        except subprocess.TimeoutExpired:  # pragma: no cover - a process SIGKILLed always dies
            logger.error("sandbox process %d did not die after SIGKILL", popen.pid)
        self._sweep()

    def _sweep(self) -> None:
        """Without namespaces: kill what is left of the process group, and as root every process of
        the call's own uid (this catches children that started a new session)."""
        if self.plan.namespaces or self.popen is None:
            return
        try:
            os.killpg(self.popen.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        if self.uid is not None:
            subprocess.run(["kill", "-9", "-1"], user=self.uid, group=self.uid, extra_groups=[],
                           stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                           env={"PATH": "/usr/bin:/bin"}, cwd="/", check=False)

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        if self.popen is not None:
            if self.popen.poll() is None:
                self.kill()
            else:
                self._kill_namespace()  # a no-op unless something outlived the main process
                self.await_namespace_exit()
                self._sweep()
            for stream in (self.popen.stdout, self.popen.stderr):
                if stream is not None:
                    stream.close()
        for name in ("ns_init_pidfd", "exit_pidfd", "info_fd", "request_fd", "response_fd"):
            fd = getattr(self, name)
            if fd is not None:
                try:
                    os.close(fd)
                except OSError:
                    pass
                setattr(self, name, None)
        if self.workdir is not None:
            shutil.rmtree(self.workdir, ignore_errors=True)
            self.workdir = None
        if self.uid is not None:
            _uid_pool.release(self.uid, self.config.sandbox_uid_base)
            self.uid = None

    def exit_status(self) -> tuple[int | None, str | None]:
        """(exit code, signal name) of the interpreter; bwrap reports a signal death as 128 + n."""
        popen = self.popen
        code = None if popen is None else popen.returncode
        if code is None:
            return None, None
        if code < 0:
            return code, _signal_name(-code)
        if self.plan.namespaces and code > 128 and (code - 128) in signal.valid_signals():
            return -(code - 128), _signal_name(code - 128)
        return code, None


def _run_once(plan: _Plan, config: SandboxConfig, code: str, stdin: str | bytes | None, *,
              timeout_s: float | None = None, show_last: bool = True, probe: bool = False) -> ExecutionResult:
    timeout = config.timeout_s if timeout_s is None else timeout_s
    start = time.monotonic()
    stdout = _HeadTailBuffer(config.max_output_bytes)
    stderr = _HeadTailBuffer(config.max_output_bytes)
    try:
        process = _SandboxProcess(plan, config, "oneshot", code=code, stdin=stdin, timeout_s=timeout,
                                  show_last=show_last)
    except OSError as error:
        if not probe:
            raise
        return ExecutionResult("", str(error), 127, isolation=plan.level)
    try:
        outcome = process.collect(start + timeout + config.kill_grace_s, stdout, stderr)
        if outcome == "deadline":
            process.kill()
            process._drain({process.popen.stdout.fileno(): stdout, process.popen.stderr.fileno(): stderr},
                           {process.popen.stdout.fileno(), process.popen.stderr.fileno()}, grace_s=0.0)
        exit_code, signal_name = process.exit_status()
    finally:
        process.close()
    killed_at_deadline = outcome == "deadline"
    if killed_at_deadline:
        exit_code, signal_name = None, None
    return ExecutionResult(
        stdout=stdout.text(), stderr=stderr.text(), exit_code=exit_code,
        timed_out=killed_at_deadline or exit_code == _TIMEOUT_EXIT_CODE,
        duration_s=time.monotonic() - start,
        output_truncated=stdout.truncated or stderr.truncated,
        isolation=plan.level, signal=signal_name,
        metadata={**plan.describe(), "output_bytes": stdout.total + stderr.total,
                  "killed_at_deadline": killed_at_deadline},
    )


class PythonSandbox:
    """Executes code in a fresh sandboxed ``python`` process per call. Thread-safe: any number of
    threads may call :meth:`run` at once (each call is its own process, uid and temp dir)."""

    def __init__(self, config: SandboxConfig | None = None):
        self.config = config or SandboxConfig()

    @property
    def isolation(self) -> str:
        """The isolation level this sandbox achieves here (probes on first use)."""
        return _plan_for(self.config).level

    def run(self, code: str, stdin: str | bytes | None = None, *, timeout_s: float | None = None,
            print_last_expression: bool = True) -> ExecutionResult:
        """Run ``code`` (the last bare expression is printed, REPL-like, unless disabled); ``stdin``
        is fed to the program (closed when ``None``)."""
        return _run_once(_plan_for(self.config), self.config, code, stdin, timeout_s=timeout_s,
                         show_last=print_last_expression)


def run_code(code: str, *, timeout: float = 10.0, memory_mb: int = 1024, stdin: str | None = None,
             **config: Any) -> ExecutionResult:
    """Run ``code`` once in the sandbox; the result has ``output``, ``is_error`` and ``timed_out``.

    ``config`` takes any other :class:`SandboxConfig` field (``max_processes=...``, ...).
    """
    sandbox = PythonSandbox(SandboxConfig(timeout_s=timeout, memory_mb=memory_mb, **config))
    return sandbox.run(code, stdin=stdin)
