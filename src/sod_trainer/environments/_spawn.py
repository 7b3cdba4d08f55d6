"""Process-spawning helpers: per-call uids, memfds, pidfds and the long-lived spawner thread."""

from __future__ import annotations

import concurrent.futures
import os
import queue
import subprocess
import tempfile
import threading
from typing import Any

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
