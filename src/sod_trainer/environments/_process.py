"""One sandboxed interpreter: launch, capped output capture, killing the whole tree, clean-up."""

from __future__ import annotations

import collections
import json
import logging
import os
import selectors
import secrets
import signal
import subprocess
import tempfile
import time
from typing import Any

from ._bootstrap import _BOOTSTRAP
from ._config import TRUNCATION_MARKER, SandboxConfig
from ._cgroup import CallGroup
from ._cleanup import WORKDIR_PREFIX, owner_tag, remove_tree
from ._isolation import _Plan
from ._spawn import _memfd, _pidfd_open, _spawner, _uid_pool

logger = logging.getLogger("sod_trainer.environments.sandbox")  # the name it had before the split

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
        self.key = b""  # persistent mode: authenticates the worker's status lines (see persistent.py)
        self.group: CallGroup | None = None
        self.memory_exceeded = False  # the cgroup's OOM killer fired: the whole sandbox was killed
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
        if not plan.namespaces:  # with namespaces /tmp is a tmpfs of the sandbox's own: nothing on the host
            self.workdir = tempfile.mkdtemp(prefix=f"{WORKDIR_PREFIX}{owner_tag()}_", dir=config.temp_root)
            if self.uid is not None:
                os.chown(self.workdir, self.uid, self.uid)
            os.chmod(self.workdir, 0o700)
        cpu = config.resolved_cpu_time_s()
        pass_fds: list[int] = []
        cgroup_fds: list[int] = []
        if plan.cgroup.available:
            self.group = CallGroup(plan.cgroup, int(config.memory_mb) << 20, int(config.max_processes))
            cgroup_fds = list(self.group.procs_fds)
            pass_fds += cgroup_fds
        boot: dict[str, Any] = {
            "mode": self.mode, "uid": self.uid, "timeout": timeout, "show_last": show_last,
            "no_new_privs": not plan.namespaces, "limits": self._limits(cpu),
            "kill_strays": plan.namespaces or plan.drop_uid, "own_pid_namespace": plan.namespaces,
            "parent": os.getpid(), "path": list(plan.site_paths), "cgroup_fds": cgroup_fds,
        }
        if self.mode == "oneshot":
            code_fd = _memfd((code or "").encode("utf-8", "surrogatepass"), "sod_code")
            to_close.append(code_fd)
            pass_fds.append(code_fd)
            boot["code_fd"] = code_fd
        else:
            request_r, self.request_fd = os.pipe()
            self.response_fd, response_w = os.pipe()
            self.key = secrets.token_bytes(32)
            key_fd = _memfd(self.key, "sod_key")
            to_close += [request_r, response_w, key_fd]
            pass_fds += [request_r, response_w, key_fd]
            boot["ctrl"] = [request_r, response_w]
            boot["key_fd"] = key_fd
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
            argv = [*plan.bwrap_prefix, "--perms", "1777", "--size", str(int(config.workdir_mb) << 20),
                    "--tmpfs", "/tmp"]
            made: set[str] = {"/tmp"}
            for path in plan.tmp_binds:  # an interpreter (venv) living under /tmp stays visible, read-only
                parents = []
                current = os.path.dirname(path)
                while current not in made and current != "/":
                    parents.append(current)
                    current = os.path.dirname(current)
                for directory in reversed(parents):
                    made.add(directory)
                    argv += ["--perms", "0755", "--dir", directory]
                argv += ["--ro-bind", path, path]
            for path, content in plan.etc_files:
                etc_fd = _memfd(content, "sod_etc")
                to_close.append(etc_fd)
                pass_fds.append(etc_fd)
                argv += ["--perms", "0644", "--file", str(etc_fd), path]
            argv += ["--remount-ro", "/", "--chdir", "/tmp", "--clearenv"]
            for key, value in inner_env.items():
                argv += ["--setenv", key, value]
            if plan.seccomp is not None:
                seccomp_fd = _memfd(plan.seccomp, "sod_seccomp")
                to_close.append(seccomp_fd)
                pass_fds.append(seccomp_fd)
                argv += ["--seccomp", str(seccomp_fd)]
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
        if self.group is not None:
            self.group.close_procs_fds()
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
        if self.group is not None and self.group.oom_fd is not None and not self.memory_exceeded:
            selector.register(self.group.oom_fd, selectors.EVENT_READ, "oom")
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
                    elif key.data == "oom":
                        selector.unregister(fd)
                        self._on_oom()
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
    def _on_oom(self) -> None:
        """The group hit memory_mb and the kernel killed one of its processes: kill the rest (cgroup v1;
        v2's memory.oom.group does it in the kernel)."""
        self.memory_exceeded = True
        if self.plan.namespaces:
            self._await_info()
            self._kill_namespace()
        elif self.popen is not None:
            try:
                os.killpg(self.popen.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
            self._sweep()

    def check_memory(self) -> bool:
        """Whether the sandbox was killed for exceeding its memory limit (the cgroup's OOM count)."""
        if not self.memory_exceeded and self.group is not None and self.group.oom_kills() > 0:
            self.memory_exceeded = True
        return self.memory_exceeded

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
        """Kill what is left, then release everything; each step runs even if an earlier one failed,
        and the uid slot is released last, whatever happened (a lost slot would block later calls)."""
        if self.closed:
            return
        self.closed = True
        try:
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
        finally:
            for name in ("ns_init_pidfd", "exit_pidfd", "info_fd", "request_fd", "response_fd"):
                fd = getattr(self, name)
                if fd is not None:
                    try:
                        os.close(fd)
                    except OSError:
                        pass
                    setattr(self, name, None)
            try:
                if self.group is not None:
                    self.check_memory()
                    self.group.remove()  # never raises
                if self.workdir is not None:
                    remove_tree(self.workdir)  # never raises: failures are logged and counted
                    self.workdir = None
            finally:
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
