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

import importlib.util
import logging
import os
import shutil
import sys
import threading
import time
import warnings
from typing import Any

# The implementation lives in private sibling modules; every name (private ones included) that this
# module used to define is re-exported here, so existing imports keep working.
from ._bootstrap import _BOOTSTRAP
from ._config import (
    _TIMEOUT_EXIT_CODE,
    TRUNCATION_MARKER,
    ExecutionResult,
    SandboxConfig,
    add_print_of_last_expression,
    truncate_middle,
)
from ._isolation import _bwrap_prefix, _interpreter_layout, _is_within, _Plan
from ._process import _HeadTailBuffer, _SandboxProcess, _signal_name
from ._spawn import _memfd, _pidfd_open, _spawner, _Spawner, _uid_pool, _UidPool, _write_all

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

# Isolation plan: probed once per (interpreter, requested isolation) and cached. The cache lives here
# (tests swap ``_plans`` and ``_warned`` on this module).
_plans: dict[tuple[Any, ...], _Plan] = {}
_plans_lock = threading.Lock()
_warned: set[str] = set()


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
