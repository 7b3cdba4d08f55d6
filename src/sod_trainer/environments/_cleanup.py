"""Clean-up the sandboxed code cannot break: non-recursive removal, failures counted, stale state swept.

A per-call directory on the host (the ``rlimits`` level; with namespaces the call's ``/tmp`` is a
tmpfs that vanishes with it) holds whatever the code wrote: a tree 100,000 directories deep, names
at the length limit, directories with mode 000. :func:`remove_tree` walks it with one open
directory at a time and an explicit stack of names (no recursion, no path longer than a name), and
never raises: a failure is logged and counted in :data:`cleanup_failures`.
"""

from __future__ import annotations

import logging
import os
import stat
import subprocess
import threading

logger = logging.getLogger("sod_trainer.environments.sandbox")

_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
WORKDIR_PREFIX = "sod_sandbox_"


class _Counter:
    """A thread-safe count of clean-up failures (per process); read with ``int(cleanup_failures)``."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.value = 0
        self.last_error = ""

    def add(self, error: str) -> None:
        with self._lock:
            self.value += 1
            self.last_error = error

    def __int__(self) -> int:
        return self.value


cleanup_failures = _Counter()


def _open_dir(name: str, dir_fd: int) -> int:
    try:
        return os.open(name, _DIR_FLAGS, dir_fd=dir_fd)
    except PermissionError:  # a directory the code made unreadable (only matters without root)
        os.chmod(name, 0o700, dir_fd=dir_fd)
        return os.open(name, _DIR_FLAGS, dir_fd=dir_fd)


def _scan(fd: int) -> list[str]:
    """Unlink every non-directory in ``fd``; the names of its subdirectories."""
    subdirs = []
    with os.scandir(fd) as entries:
        for entry in entries:
            if entry.is_dir(follow_symlinks=False):
                subdirs.append(entry.name)
            else:
                os.unlink(entry.name, dir_fd=fd)
    return subdirs


def _remove_tree_fd(path: str) -> None:
    """Remove ``path`` and everything under it, depth-first, holding one directory fd at a time."""
    try:
        fd = os.open(path, _DIR_FLAGS)
    except FileNotFoundError:
        return
    # One entry per level from ``path`` down to the directory ``fd`` is open on: (its name, its
    # subdirectories still to remove). Going up uses "..": nothing runs in the tree any more.
    stack: list[tuple[str, list[str]]] = [("", _scan(fd))]
    try:
        while True:
            pending = stack[-1][1]
            if pending:
                child = pending.pop()
                child_fd = _open_dir(child, fd)
                os.close(fd)
                fd = child_fd
                stack.append((child, _scan(fd)))
                continue
            name = stack.pop()[0]
            if not stack:
                break
            parent_fd = os.open("..", _DIR_FLAGS, dir_fd=fd)
            os.close(fd)
            fd = parent_fd
            os.rmdir(name, dir_fd=fd)
    finally:
        os.close(fd)
    os.rmdir(path)


def remove_tree(path: str) -> bool:
    """Remove a directory tree without recursion; never raises. False (logged, counted) if it could not."""
    try:
        mode = os.lstat(path).st_mode
    except FileNotFoundError:
        return True
    except OSError as error:
        _failed(path, error)
        return False
    try:
        if not stat.S_ISDIR(mode):
            os.unlink(path)
            return True
        _remove_tree_fd(path)
        return True
    except BaseException as first:  # noqa: BLE001 - whatever the tree does, the rollout goes on
        # Second chance: rm(1) walks with fts, which is not recursive either and copes with the rest.
        try:
            subprocess.run(["rm", "-rf", "--one-file-system", "--", path], stdin=subprocess.DEVNULL,
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=120, check=False,
                           env={"PATH": "/usr/bin:/bin"})
        except (OSError, subprocess.SubprocessError):
            pass
        if os.path.lexists(path):
            _failed(path, first)
            return False
        return True


def _failed(path: str, error: BaseException) -> None:
    message = f"could not remove the sandbox directory {path}: {type(error).__name__}: {error}"
    cleanup_failures.add(message)
    logger.error(message)


# ----------------------------------------------------------------------------------------------
# Owner tags: a per-call directory (or cgroup) is named after the trainer process that made it,
# pid and start time, so that the next trainer can tell a crashed owner's leftovers from a live one's.
# ----------------------------------------------------------------------------------------------


def _start_time(pid: int) -> str | None:
    try:
        with open(f"/proc/{pid}/stat", "rb") as handle:
            fields = handle.read().rsplit(b")", 1)[1].split()
        return fields[19].decode()  # field 22, after the command name: start time in clock ticks
    except (OSError, IndexError):
        return None


def owner_tag(pid: int | None = None) -> str:
    """``<pid>-<start time>`` of this process (or ``pid``)."""
    pid = os.getpid() if pid is None else pid
    return f"{pid}-{_start_time(pid) or 0}"


def owner_is_alive(tag: str) -> bool:
    """Whether the process that made ``<pid>-<start time>`` still runs (pid reuse is told apart)."""
    pid_text, _, start = tag.partition("-")
    if not pid_text.isdigit():
        return True  # not ours: leave it alone
    return _start_time(int(pid_text)) == start


def sweep_stale_workdirs(root: str) -> int:
    """Remove ``sod_sandbox_<pid>-<start>_*`` directories under ``root`` whose trainer is gone; their number."""
    removed = 0
    try:
        entries = list(os.scandir(root))
    except OSError:
        return 0
    for entry in entries:
        if not entry.name.startswith(WORKDIR_PREFIX):
            continue
        tag = entry.name[len(WORKDIR_PREFIX):].split("_", 1)[0]
        if "-" not in tag or owner_is_alive(tag):
            continue
        if remove_tree(entry.path):
            removed += 1
            logger.warning("removed the sandbox directory %s left by a trainer that is gone", entry.path)
    return removed
