"""Per-sandbox memory and process limits through a cgroup (v1 ``memory`` + ``pids``, or v2).

Each call (each persistent worker) gets a group of its own under the trainer's cgroup:
``<trainer's group>/sod-sandbox-<pid>-<start>/call-<n>``. Its limits cover every process of the
sandbox together: ``memory_mb`` (``memory.limit_in_bytes`` and ``memsw`` on v1, ``memory.max`` and
``memory.swap.max = 0`` on v2; the tmpfs ``/tmp`` of the call is charged to it too) and
``max_processes`` (``pids.max``). The trainer opens the group's ``cgroup.procs`` and hands the
descriptor to the sandbox's bootstrap, which moves itself into the group (writing ``0``) before any
model code runs, so everything the code starts is inside.

On the out-of-memory killer: v2 kills the whole group (``memory.oom.group = 1``); v1 kills one
process, so the trainer listens for the group's OOM notification (an eventfd registered through
``cgroup.event_control``) and kills the rest of the sandbox itself.

cgroup v2 can hand controllers to child groups only from a group without processes of its own: when
the trainer is alone in its group it moves itself into a leaf ``sod-trainer-<pid>-<start>`` first;
when other processes share its group, cgroup limits are off (the rlimits remain) and the reason says
how to get them (``systemd-run --scope -p Delegate=yes``, or a container where the trainer is alone).
"""

from __future__ import annotations

import atexit
import errno
import itertools
import logging
import os
import threading
import time
from dataclasses import dataclass

from ._cleanup import cleanup_failures, owner_is_alive, owner_tag

logger = logging.getLogger("sod_trainer.environments.sandbox")

CGROUP_ROOT = "/sys/fs/cgroup"
GROUP_PREFIX = "sod-sandbox-"


def _write(path: str, value: str) -> None:
    with open(path, "w") as handle:
        handle.write(value)


def _own_groups() -> dict[str, str]:
    """Controller (``memory``, ``pids``, or ``""`` for v2) -> this process's group path."""
    groups = {}
    with open("/proc/self/cgroup") as handle:
        for line in handle:
            _, controllers, path = line.rstrip("\n").split(":", 2)
            for controller in controllers.split(",") if controllers else [""]:
                groups[controller] = path
    return groups


def _cgroup2_mount() -> str | None:
    with open("/proc/self/mountinfo") as handle:
        for line in handle:
            fields = line.split()
            separator = fields.index("-")
            if fields[separator + 1] == "cgroup2":
                return fields[4]
    return None


@dataclass
class CgroupSupport:
    """What this machine allows: ``version`` "v1" | "v2" | None, the parent directories, and why not."""

    version: str | None
    parents: tuple[str, ...] = ()  # v1: (memory parent, pids parent); v2: (parent,)
    reason: str = ""
    # Whether the sandbox may have a cgroup namespace of its own: its root is the trainer's group, and a
    # process may only move into a group below its namespace's root -- not so when the trainer moved
    # into a leaf beside the sandboxes' groups (v2).
    cgroupns: bool = True

    @property
    def available(self) -> bool:
        return self.version is not None


def _make_parent(base: str, tag: str) -> str:
    parent = os.path.join(base, GROUP_PREFIX + tag)
    sweep_stale_groups(base)
    os.makedirs(parent, exist_ok=True)
    return parent


def sweep_stale_groups(base: str) -> int:
    """Remove the sandbox groups under ``base`` whose trainer is gone (empty by then: the sandboxes died with it)."""
    removed = 0
    try:
        entries = [e for e in os.scandir(base) if e.name.startswith(GROUP_PREFIX) and e.is_dir()]
    except OSError:
        return 0
    for entry in entries:
        if owner_is_alive(entry.name[len(GROUP_PREFIX):]):
            continue
        try:
            for child in os.scandir(entry.path):
                if child.is_dir(follow_symlinks=False):
                    os.rmdir(child.path)
            os.rmdir(entry.path)
            removed += 1
        except OSError as error:
            logger.warning("could not remove the stale sandbox cgroup %s: %s", entry.path, error)
    return removed


def _detect_v1(groups: dict[str, str], tag: str) -> CgroupSupport:
    parents = []
    for controller in ("memory", "pids"):
        base = os.path.join(CGROUP_ROOT, controller) + groups[controller]
        if not os.path.isfile(os.path.join(base, "cgroup.procs")):
            return CgroupSupport(None, reason=f"cgroup v1 {controller} hierarchy not mounted at {base}")
        parents.append(_make_parent(base, tag))
    return CgroupSupport("v1", tuple(parents))


def _detect_v2(path: str, tag: str) -> CgroupSupport:
    mount = _cgroup2_mount()
    if mount is None:
        return CgroupSupport(None, reason="no cgroup v2 mount and no cgroup v1 memory/pids controllers")
    own = os.path.join(mount, path.lstrip("/"))
    with open(os.path.join(own, "cgroup.controllers")) as handle:
        available = handle.read().split()
    missing = [c for c in ("memory", "pids") if c not in available]
    if missing:
        return CgroupSupport(None, reason=f"cgroup v2 group {own} is not given the {'/'.join(missing)} controller")
    moved = False
    try:
        _write(os.path.join(own, "cgroup.subtree_control"), "+memory +pids")
    except OSError as error:
        if error.errno != errno.EBUSY:
            raise
        with open(os.path.join(own, "cgroup.procs")) as handle:
            members = {int(p) for p in handle.read().split()}
        if members - {os.getpid()}:
            return CgroupSupport(None, reason=(
                f"cgroup v2 group {own} holds other processes too ({len(members)}), so it cannot delegate "
                "memory/pids to child groups; start the trainer in a group of its own "
                "(systemd-run --scope -p Delegate=yes ..., or a container whose main process it is)"))
        leaf = os.path.join(own, "sod-trainer-" + tag)
        os.makedirs(leaf, exist_ok=True)
        _write(os.path.join(leaf, "cgroup.procs"), "0")  # the trainer moves into a leaf of its own group
        _write(os.path.join(own, "cgroup.subtree_control"), "+memory +pids")
        moved = True
    parent = _make_parent(own, tag)
    _write(os.path.join(parent, "cgroup.subtree_control"), "+memory +pids")
    return CgroupSupport("v2", (parent,), cgroupns=not moved)


def detect() -> CgroupSupport:
    """Find where this process may create sandbox groups with memory and pids limits."""
    tag = owner_tag()
    try:
        groups = _own_groups()
        if "memory" in groups and "pids" in groups:
            return _detect_v1(groups, tag)
        if "" in groups:
            return _detect_v2(groups[""], tag)
        return CgroupSupport(None, reason="this process is in no cgroup hierarchy with memory and pids")
    except OSError as error:
        return CgroupSupport(None, reason=f"cannot create cgroups here ({type(error).__name__}: {error}); "
                                          "run the trainer as root or in a delegated cgroup")


_lock = threading.Lock()
_support: dict[int, CgroupSupport] = {}
_names = itertools.count()


def support() -> CgroupSupport:
    """Detected once per process (a forked child detects again: its tag differs)."""
    pid = os.getpid()
    with _lock:
        found = _support.get(pid)
        if found is None:
            found = _support[pid] = detect()
            if found.available:
                atexit.register(_remove_parents, found, pid)
        return found


def _remove_parents(where: CgroupSupport, pid: int) -> None:
    """At exit: remove this trainer's (empty) parent groups; what is still busy is swept by the next trainer."""
    if os.getpid() != pid:
        return
    for parent in where.parents:
        try:
            os.rmdir(parent)
        except OSError:
            pass


class CallGroup:
    """The cgroup of one sandbox: created with its limits, joined by the bootstrap, removed afterwards."""

    def __init__(self, where: CgroupSupport, memory_bytes: int, max_processes: int):
        self.version = where.version
        self.dirs: list[str] = []
        self.procs_fds: list[int] = []
        self.oom_fd: int | None = None
        name = f"call-{next(_names)}"
        try:
            for parent in where.parents:
                path = os.path.join(parent, name)
                try:
                    os.mkdir(path)
                except FileNotFoundError:  # the parent was removed under us (a sweep that took us for dead)
                    os.makedirs(parent, exist_ok=True)
                    if self.version == "v2":
                        _write(os.path.join(parent, "cgroup.subtree_control"), "+memory +pids")
                    os.mkdir(path)
                self.dirs.append(path)
            if self.version == "v1":
                memory, pids = self.dirs
                _write(os.path.join(memory, "memory.limit_in_bytes"), str(memory_bytes))
                if os.path.exists(os.path.join(memory, "memory.memsw.limit_in_bytes")):
                    _write(os.path.join(memory, "memory.memsw.limit_in_bytes"), str(memory_bytes))
                _write(os.path.join(pids, "pids.max"), str(max_processes))
                self._listen_for_oom(memory)
            else:
                (group,) = self.dirs
                _write(os.path.join(group, "memory.max"), str(memory_bytes))
                if os.path.exists(os.path.join(group, "memory.swap.max")):
                    _write(os.path.join(group, "memory.swap.max"), "0")
                _write(os.path.join(group, "memory.oom.group"), "1")
                _write(os.path.join(group, "pids.max"), str(max_processes))
            for path in self.dirs:
                self.procs_fds.append(os.open(os.path.join(path, "cgroup.procs"), os.O_WRONLY | os.O_CLOEXEC))
        except BaseException:
            self.remove()
            raise

    def _listen_for_oom(self, memory: str) -> None:
        control = os.open(os.path.join(memory, "memory.oom_control"), os.O_RDONLY | os.O_CLOEXEC)
        try:
            self.oom_fd = os.eventfd(0, os.EFD_CLOEXEC | os.EFD_NONBLOCK)
            _write(os.path.join(memory, "cgroup.event_control"), f"{self.oom_fd} {control}")
        finally:
            os.close(control)

    def close_procs_fds(self) -> None:
        """The bootstrap has its own copies; the trainer's are no longer needed once it started."""
        for fd in self.procs_fds:
            os.close(fd)
        self.procs_fds = []

    def oom_kills(self) -> int:
        """How many processes the kernel's OOM killer killed in the group (0 if unknown)."""
        if not self.dirs:
            return 0
        name = "memory.oom_control" if self.version == "v1" else "memory.events"
        try:
            with open(os.path.join(self.dirs[0], name)) as handle:
                for line in handle:
                    key, _, value = line.partition(" ")
                    if key == "oom_kill":
                        return int(value)
        except OSError:
            pass
        return 0

    def remove(self) -> None:
        """Remove the group (its processes are gone by now); never raises, failures are logged and counted."""
        self.close_procs_fds()
        if self.oom_fd is not None:
            os.close(self.oom_fd)
            self.oom_fd = None
        for path in reversed(self.dirs):
            for attempt in range(50):  # the last exiting task may still be leaving the group
                try:
                    os.rmdir(path)
                    break
                except FileNotFoundError:
                    break
                except OSError as error:
                    if error.errno != errno.EBUSY or attempt == 49:
                        message = f"could not remove the sandbox cgroup {path}: {error}"
                        cleanup_failures.add(message)
                        logger.error(message)
                        break
                    time.sleep(0.002)
        self.dirs = []
