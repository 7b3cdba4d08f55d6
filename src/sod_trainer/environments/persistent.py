"""Persistent mode: one sandboxed interpreter per trajectory, so variables survive across turns.

The worker is the same bubblewrap sandbox as a stateless call (see :mod:`.sandbox` for what it
protects against), started on the first call and kept alive until :meth:`close`. Each call sends
the code over a pipe; the worker runs it in its ``__main__`` namespace with the call's own time
limit, prints the last bare expression, flushes, kills any process the call left behind, and
answers. A call that hits the hard deadline or kills the worker (segfault, ``os._exit``, CPU limit)
takes the worker down with it: the result says so (``state_reset``), and the next call starts a
fresh worker with an empty namespace.

Limits that are per process (memory, open files, process count) hold for the worker's whole life;
the CPU-time limit is re-armed per call (and capped at 32 calls' worth over the worker's life).
"""

from __future__ import annotations

import hmac
import json
import logging
import os
import selectors
import threading
import time
import weakref

from .sandbox import (
    _TIMEOUT_EXIT_CODE,
    _memory_note,
    ExecutionResult,
    SandboxConfig,
    _HeadTailBuffer,
    _plan_for,
    _SandboxProcess,
)

__all__ = ["PersistentPythonSession"]

logger = logging.getLogger("sod_trainer.environments.sandbox")
FORGED_NOTE = ("SandboxError: the code wrote to the sandbox's control channel (a forged status line); "
               "the interpreter was restarted")


class _Count:
    """Process-wide count of forged or garbled control lines (``int(control_channel_violations)``)."""

    def __init__(self) -> None:
        self.value = 0
        self._lock = threading.Lock()

    def add(self) -> None:
        with self._lock:
            self.value += 1

    def __int__(self) -> int:
        return self.value


control_channel_violations = _Count()


def _verify(line: bytes, key: bytes, cell: int) -> int | None:
    """The status of cell ``cell`` if ``line`` is the worker's own, authenticated answer to it, else None."""
    try:
        body, mac = line.decode("ascii").rsplit(" ", 1)
        number, status = body.split(" ")
    except (UnicodeDecodeError, ValueError):
        return None
    expected = hmac.new(key, body.encode(), "sha256").hexdigest()
    if not hmac.compare_digest(expected, mac) or number != str(cell):
        return None
    return int(status)


def _close_process(process: _SandboxProcess) -> None:
    process.close()


class PersistentPythonSession:
    """A killable per-trajectory Python worker. Thread-safe (calls are serialized)."""

    def __init__(self, config: SandboxConfig | None = None):
        self.config = config or SandboxConfig()
        self._process: _SandboxProcess | None = None
        self._finalizer: weakref.finalize | None = None
        self._lock = threading.Lock()
        self.calls = 0
        self.workers_started = 0
        self.control_violations = 0

    @property
    def isolation(self) -> str:
        return _plan_for(self.config).level

    @property
    def alive(self) -> bool:
        """A worker is running (its namespace holds the state of earlier calls)."""
        process = self._process
        return process is not None and process.popen is not None and process.popen.poll() is None

    def _start(self) -> _SandboxProcess:
        process = _SandboxProcess(_plan_for(self.config), self.config, "worker")
        os.set_blocking(process.request_fd, False)
        self._process = process
        self._finalizer = weakref.finalize(self, _close_process, process)
        self.workers_started += 1
        return process

    def _stop(self) -> None:
        if self._finalizer is not None:
            self._finalizer()  # closes the process exactly once
            self._finalizer = None
        self._process = None

    def restart(self) -> None:
        """Forget all state: kill the worker; the next call starts a fresh one."""
        with self._lock:
            self._stop()

    def close(self) -> None:
        """Kill the worker and its whole process tree, remove its temp dir."""
        with self._lock:
            self._stop()

    def __enter__(self) -> PersistentPythonSession:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def run(self, code: str, *, timeout_s: float | None = None, print_last_expression: bool = True) -> ExecutionResult:
        """Run ``code`` in the trajectory's interpreter (started on first use)."""
        with self._lock:
            return self._run(code, self.config.timeout_s if timeout_s is None else timeout_s, print_last_expression)

    def _run(self, code: str, timeout: float, show_last: bool) -> ExecutionResult:
        config = self.config
        start = time.monotonic()
        deadline = start + timeout + config.kill_grace_s
        self.calls += 1
        process = self._process
        if process is None or not self.alive:
            self._stop()
            process = self._start()
        stdout = _HeadTailBuffer(config.max_output_bytes)
        stderr = _HeadTailBuffer(config.max_output_bytes)
        # Output written between calls (a thread the previous call left running) is not this call's.
        streams = {process.popen.stdout.fileno(): _HeadTailBuffer(0), process.popen.stderr.fileno(): _HeadTailBuffer(0)}
        process._drain(streams, set(streams))
        process.response = b""
        cell = self.calls
        payload = json.dumps({"code": code, "timeout": timeout, "show_last": show_last, "cell": cell}).encode()
        sent = self._send(process, len(payload).to_bytes(4, "big") + payload, deadline)
        outcome = process.collect(deadline, stdout, stderr, until_response=True) if sent else "exited"
        exit_code: int | None
        signal_name = None
        state_reset = False
        forged = False
        if outcome == "response":
            line, _, rest = process.response.partition(b"\n")
            status = _verify(line, process.key, cell)
            if status is None or rest:
                # Not the worker's answer to this cell (or more than one line): the code wrote to the
                # control channel. Contained: this call is an error, the worker (and its state) is gone.
                forged, exit_code, state_reset = True, 1, True
                self.control_violations += 1
                control_channel_violations.add()
                logger.warning("persistent sandbox: rejected a forged control line %r", line[:100])
                process.kill()
                stderr.feed(("\n" if stderr.total else "").encode() + FORGED_NOTE.encode() + b"\n")
            else:
                exit_code = status
        elif outcome == "deadline":
            process.kill()
            exit_code, state_reset = None, True
        else:  # the worker died
            if process.popen.poll() is None:
                process.kill()
            exit_code, signal_name = process.exit_status()
            state_reset = True
        plan = process.plan
        memory_exceeded = process.check_memory()
        if memory_exceeded:
            stderr.feed(_memory_note(config).encode())
        if state_reset:
            self._stop()
        return ExecutionResult(
            stdout=stdout.text(), stderr=stderr.text(), exit_code=exit_code,
            timed_out=outcome == "deadline" or exit_code == _TIMEOUT_EXIT_CODE,
            duration_s=time.monotonic() - start,
            output_truncated=stdout.truncated or stderr.truncated,
            isolation=plan.level, signal=signal_name, state_reset=state_reset,
            metadata={**plan.describe(), "persistent": True, "output_bytes": stdout.total + stderr.total,
                      "killed_at_deadline": outcome == "deadline", "workers_started": self.workers_started,
                      "control_channel_forged": forged, "memory_exceeded": memory_exceeded},
        )

    @staticmethod
    def _send(process: _SandboxProcess, data: bytes, deadline: float) -> bool:
        """Write the request without blocking past the deadline; False if the worker is gone."""
        view = memoryview(data)
        selector = selectors.DefaultSelector()
        selector.register(process.request_fd, selectors.EVENT_WRITE)
        try:
            while view:
                try:
                    written = os.write(process.request_fd, view)
                    view = view[written:]
                    continue
                except BlockingIOError:
                    pass
                except (BrokenPipeError, OSError):
                    return False
                remaining = deadline - time.monotonic()
                if remaining <= 0 or (not selector.select(min(remaining, 0.05)) and process.popen.poll() is not None):
                    return False
        finally:
            selector.close()
        return True
