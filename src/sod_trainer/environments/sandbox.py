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
  and the call returns only once it is gone; ``max_processes`` bounds the sandbox as a whole (a
  cgroup ``pids.max``, and RLIMIT_NPROC made per-sandbox by a per-call uid as root, or a per-call
  user namespace otherwise);
* memory: ``memory_mb`` bounds all processes of the sandbox together, its ``/tmp`` included (a
  cgroup per call, v1 or v2; the whole sandbox is killed when it is exceeded), and each process's
  address space (RLIMIT_AS, a ``MemoryError`` for one huge allocation); RLIMIT_FSIZE, RLIMIT_NOFILE,
  no core files;
* runaway output: stdout and stderr are read concurrently and capped at ``max_output_bytes``,
  keeping head and tail, so a 100 MB print neither stalls nor bloats the trainer;
* the network: a fresh network namespace with only a loopback interface of its own;
* the host's files: the sandbox's root is empty but for an allowlist bound read-only -- ``/usr``
  (and the ``/bin``, ``/lib*`` links), a few ``/etc`` files, the interpreter's prefixes and
  site-packages, ``SandboxConfig.readonly_paths`` -- so the training data, output directories,
  checkouts, home directories, ``/run`` (host unix sockets: system and session buses, databases),
  ``/var`` and host FIFOs and lock files do not exist inside; the only writable place is a private
  ``/tmp`` (a tmpfs of ``workdir_mb``, also ``HOME`` and the working directory) that vanishes with
  the call; as root the code runs as an unprivileged uid;
* the kernel's less-used surface: a seccomp filter (:mod:`._seccomp`) refuses new namespaces,
  keyrings (no notes passed between calls), ``io_uring``, ``perf_event_open``, ``bpf``,
  ``ptrace``, mounts, and socket families other than unix/IPv4/IPv6;
* the trainer's secrets: a scrubbed environment (only ``PATH``, ``HOME``, locale and thread-count
  variables), ``stdin`` closed, a fresh ``/proc`` that shows only the sandbox's own processes;
* the trainer itself: the code cannot signal it (other PID namespace), bwrap's
  ``--die-with-parent`` kills every sandbox if the trainer dies, and the clean-up after a call
  cannot be broken by what the code left (:mod:`._cleanup`): it never raises into the rollout, and
  the uid slot is always released.

What it does NOT protect against:

* kernel exploits and side channels: the seccomp filter narrows the kernel surface but there is
  no VM boundary; do not treat it as a boundary against a determined attacker (use gVisor or
  Firecracker for that);
* reading what is in the allowlist: the standard library, site-packages (so the code can read
  the *source* of installed packages, including this one) and ``readonly_paths``;
* total memory over many concurrent calls: each call's group is bounded, their sum is
  ``tool_workers * memory_mb``; without cgroups (a v2 group shared with other processes, no
  permission) only the per-process rlimits remain, with a warning and ``result.metadata["limits"]``
  saying so;
* CPU share between concurrent sandboxes (no ``cpu`` controller; each is bounded by its CPU-time
  limit only);
* threads of a persistent worker that outlive their call (their output is discarded), and a
  persistent cell that digs its worker's key out of the interpreter's memory to forge its *own*
  status (a forged line from the code is otherwise rejected: see :mod:`.persistent`);
* in the fallback mode ``"rlimits"`` (no usable namespaces; a loud warning is emitted and the
  level recorded in every result): network access, the host's files, filesystem writes wherever the
  process's uid may write, and children that escape the process group (as root they are still
  swept by uid); there is no seccomp filter at that level.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import shutil
import sys
import tempfile
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
from ._cgroup import CgroupSupport
from ._cgroup import support as cgroup_support
from ._cleanup import cleanup_failures, remove_tree, sweep_stale_workdirs
from ._isolation import (
    _bwrap_prefix,
    _interpreter_layout,
    _is_within,
    _namespaces_refused,
    _Plan,
    etc_contents,
    resolve_python,
)
from ._report import isolation_report
from ._seccomp import seccomp_program
from ._process import _HeadTailBuffer, _SandboxProcess, _signal_name
from ._spawn import _memfd, _pidfd_open, _spawner, _Spawner, _uid_pool, _UidPool, _write_all

__all__ = [
    "SandboxConfig",
    "ExecutionResult",
    "PythonSandbox",
    "run_code",
    "isolation_level",
    "isolation_report",
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
    python = resolve_python(config.python_executable)
    as_root = os.geteuid() == 0
    requested = config.isolation
    if requested not in ("auto", "bwrap", "rlimits"):
        raise ValueError(f"SandboxConfig.isolation={requested!r}; choose 'auto', 'bwrap' or 'rlimits'.")
    for name in ("seccomp", "cgroup"):
        if getattr(config, name) not in ("auto", "require", "off"):
            raise ValueError(f"SandboxConfig.{name}={getattr(config, name)!r}; choose 'auto', 'require' or 'off'.")
    cgroup = _cgroup_support(config)
    reason = ""
    layout, site_paths = _interpreter_layout(python)
    if requested != "rlimits":
        bwrap = shutil.which("bwrap")
        refused = "" if bwrap is None else _namespaces_refused(bwrap, as_root)
        if bwrap is None:
            reason = "bubblewrap (bwrap) is not installed (apt-get install bubblewrap)"
        elif refused:
            reason = f"bubblewrap cannot create namespaces here: {refused}"
        else:
            program, seccomp_reason = (None, "seccomp='off'") if config.seccomp == "off" else seccomp_program()
            if program is None and config.seccomp == "require":
                raise RuntimeError(f"SandboxConfig.seccomp='require' but {seccomp_reason}.")
            prefix, visible = _bwrap_prefix(config, python, as_root, cgroup.cgroupns)
            tmp_binds = tuple(p for p in layout if _is_within(p, "/tmp") and p != "/tmp")
            plan = _Plan("bwrap" if as_root else "bwrap-userns", python, as_root, (bwrap, *prefix),
                         site_paths=tuple(site_paths), tmp_binds=tmp_binds, seccomp=program,
                         seccomp_reason=seccomp_reason, cgroup=cgroup, visible=visible, etc_files=etc_contents())
            _check_probe(plan, config)
            if program is None and config.seccomp == "auto":
                _warn_once(f"seccomp:{python}", f"SANDBOX WITHOUT SECCOMP FILTER: {seccomp_reason}. Model-written "
                                                "code can create user namespaces, keyring entries and io_uring rings.")
            _warn_cgroup(plan, config)
            return plan
        if requested == "bwrap":
            raise RuntimeError(f"SandboxConfig.isolation='bwrap' but {reason}. Install bubblewrap and allow "
                               "namespaces (root, or unprivileged user namespaces), or set isolation='auto'.")
    drop_uid = False
    if as_root:
        # Run as an unprivileged uid only if that uid can still read the standard library (and
        # numpy, when the trainer has it): without a mount namespace, nothing can be re-exposed.
        plan = _Plan("rlimits", python, True, (), site_paths=tuple(site_paths), cgroup=cgroup)
        imports = "import fractions\n" + ("import numpy\n" if importlib.util.find_spec("numpy") else "")
        probe = _run_once(plan, config, imports + "print(6 * 7)", None, timeout_s=30.0, show_last=False, probe=True)
        drop_uid = probe.stdout.strip() == "42"
    plan = _Plan("rlimits", python, drop_uid, (), reason or "isolation='rlimits' requested", tuple(site_paths),
                 cgroup=cgroup, seccomp_reason="no namespaces (seccomp is applied by bubblewrap)")
    message = ("SANDBOX WITHOUT NAMESPACES: model-written code runs with rlimits only -- it can reach the "
               "network, read the host's files and write wherever its uid may write"
               + ("" if drop_uid else ", and it runs with the trainer's own uid")
               + f". Reason: {plan.reason}.")
    _warn_once(f"rlimits:{python}:{drop_uid}", message)
    _warn_cgroup(plan, config)
    return plan


_swept: set[tuple[int, str]] = set()


def _sweep_once(temp_root: str | None) -> None:
    """Remove the per-call directories that crashed trainers left in ``temp_root`` (once per process and root)."""
    root = temp_root or tempfile.gettempdir()
    key = (os.getpid(), root)
    with _plans_lock:
        if key in _swept:
            return
        _swept.add(key)
    sweep_stale_workdirs(root)


def _cgroup_support(config: SandboxConfig) -> CgroupSupport:
    if config.cgroup == "off":
        return CgroupSupport(None, reason="cgroup='off' requested")
    found = cgroup_support()
    if not found.available and config.cgroup == "require":
        raise RuntimeError(f"SandboxConfig.cgroup='require' but {found.reason}.")
    return found


def _warn_cgroup(plan: _Plan, config: SandboxConfig) -> None:
    if not plan.cgroup.available and config.cgroup == "auto":
        _warn_once(f"cgroup:{plan.python}", (
            f"SANDBOX LIMITS PER PROCESS ONLY (no cgroup): {plan.cgroup.reason}. memory_mb and max_processes "
            "bound each process (rlimits), not the sandbox as a whole."))


def _check_probe(plan: _Plan, config: SandboxConfig) -> None:
    """Run one call with the full plan; raise with bwrap's or Python's message if it fails.

    Namespaces work here (checked before): a failure now is a bug or a misconfiguration (an
    interpreter path, a bind), never a reason to fall back to a weaker isolation.
    """
    probe = _run_once(plan, config, "import numpy, sympy\nprint(6 * 7)", None, timeout_s=30.0,
                      show_last=False, probe=True)
    if probe.exit_code == 0 and probe.stdout.strip() == "42":
        return
    if "No module named" in probe.stderr:
        # numpy/sympy missing is not a namespace problem: keep the isolation, tell the user.
        probe2 = _run_once(plan, config, "print(6 * 7)", None, timeout_s=30.0, show_last=False, probe=True)
        if probe2.stdout.strip() == "42":
            _warn_once("numpy", f"numpy/sympy are not importable inside the sandbox ({plan.python}): "
                                f"{probe.stderr.strip()[-300:]}")
            return
        probe = probe2
    raise RuntimeError(
        f"The sandbox could not start although bubblewrap can create namespaces here (exit {probe.exit_code}): "
        f"{(probe.stderr or probe.stdout).strip()[-800:]}\nInterpreter: {plan.python}. This is not a missing "
        "feature of the machine, so there is no fallback: fix the cause, or set SandboxConfig(isolation='rlimits') "
        "knowingly.")


def _warn_once(key: str, message: str) -> None:
    with _plans_lock:
        if key in _warned:
            return
        _warned.add(key)
    logger.warning(message)
    warnings.warn(message, RuntimeWarning, stacklevel=3)


def _plan_for(config: SandboxConfig) -> _Plan:
    key = (config.python_executable or sys.executable, os.getcwd() if config.python_executable else "",
           config.isolation, tuple(config.hidden_paths), tuple(config.readonly_paths), config.seccomp, config.cgroup,
           os.geteuid())
    _sweep_once(config.temp_root)
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
        memory_exceeded = process.check_memory()
    finally:
        process.close()
    if memory_exceeded:
        stderr.feed(_memory_note(config).encode())
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
                  "killed_at_deadline": killed_at_deadline, "memory_exceeded": memory_exceeded},
    )


def _memory_note(config: SandboxConfig) -> str:
    return (f"\nMemoryError: the sandbox exceeded memory_mb={config.memory_mb} (all its processes together) "
            "and was killed\n")


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
