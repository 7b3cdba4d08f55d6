"""Attacks of issue 15, one test each, named after the attack: what the first sandbox let through.

Each fails on the sandbox before issue 15 (a host file or socket reached, a key passed between
calls, a nested user namespace or an io_uring ring created, memory split across children beyond
``memory_mb``, a deep tree breaking the clean-up, a relative interpreter path dropping the
namespaces). Listeners, FIFOs and files are set up by the test in host places outside the sandbox's
allowlist (``/run``, ``/var/tmp``, the checkout).
"""

from __future__ import annotations

import ctypes
import errno
import os
import platform
import shutil
import socket
import stat
import sys
import tempfile
import textwrap
import threading
import uuid
from pathlib import Path

import pytest

from sod_trainer.environments import sandbox as sandbox_module
from sod_trainer.environments.sandbox import PythonSandbox, SandboxConfig, _plan_for

# the module's fixtures (bwrap must be in use; a sandbox per test) are the attack suite's own
from test_sandbox_attacks import TIMEOUT_S, _namespaces_work, assert_contained, attack, sandbox  # noqa: F401

REPO_ROOT = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.skipif(shutil.which("bwrap") is None, reason="bubblewrap (bwrap) is not installed")


@pytest.fixture
def host_dir():
    """A world-readable directory on the host, outside /tmp (which the sandbox replaces) and home."""
    path = Path(tempfile.mkdtemp(prefix="sod_escape_", dir="/var/tmp"))
    os.chmod(path, 0o755)
    yield path
    shutil.rmtree(path, ignore_errors=True)


# ------------------------------------------------------------------------------ clean-up


def test_deep_directory_tree_does_not_break_clean_up(sandbox, temp_root):
    result, started = attack(sandbox, """
        import os
        fd = os.open(".", os.O_RDONLY)
        for _ in range(1500):
            os.mkdir("d" * 100, dir_fd=fd)
            child = os.open("d" * 100, os.O_RDONLY, dir_fd=fd)
            os.close(fd)
            fd = child
        print("deep")
    """)
    assert result.stdout == "deep\n", result.stderr
    assert_contained(sandbox, temp_root, result, started)


def test_deep_directory_tree_on_the_host_is_removed_without_recursion(temp_root, monkeypatch):
    # Without namespaces the call's directory is on the host: its removal must survive the tree.
    monkeypatch.setattr(sandbox_module, "_warned", set())
    sandbox = PythonSandbox(SandboxConfig(timeout_s=5.0, temp_root=str(temp_root), isolation="rlimits"))
    with pytest.warns(RuntimeWarning):
        result = sandbox.run(textwrap.dedent("""
            import os
            fd = os.open(".", os.O_RDONLY)
            for _ in range(1500):
                os.mkdir("d" * 100, dir_fd=fd)
                open(os.path.join(f"/proc/self/fd/{fd}", "f"), "w").write("x")
                child = os.open("d" * 100, os.O_RDONLY, dir_fd=fd)
                os.close(fd)
                fd = child
            os.chmod(f"/proc/self/fd/{fd}", 0)
            print("deep")
        """))
    assert result.stdout == "deep\n", result.stderr
    assert list(temp_root.iterdir()) == []
    assert sandbox.run("6 * 7").stdout == "42\n"


# ------------------------------------------------------------------------------ limits per sandbox


def test_memory_split_across_children_is_killed_as_a_whole(temp_root):
    config = SandboxConfig(timeout_s=20.0, temp_root=str(temp_root), memory_mb=512)
    if not _plan_for(config).cgroup.available:
        pytest.skip(f"no cgroup here: {_plan_for(config).cgroup.reason}")
    sandbox = PythonSandbox(config)
    # each child stays under RLIMIT_AS (512 MiB); together they hold 900 MiB
    result, started = attack(sandbox, """
        import os, sys, time, subprocess
        child = "b = bytearray(300 << 20); b[::4096] = b'x' * len(b[::4096]); print('held', flush=True); time.sleep(30)"
        children = [subprocess.Popen([sys.executable, "-c", "import time\\n" + child]) for _ in range(3)]
        for process in children:
            process.wait()
        print("all held")
    """)
    assert "all held" not in result.stdout
    assert result.error and not result.timed_out and result.metadata["memory_exceeded"]
    assert "exceeded memory_mb=512" in result.stderr
    # killed when the limit was hit, not at the 20 s deadline (allocating 900 MiB is slow on a loaded machine)
    assert_contained(sandbox, temp_root, result, started, max_s=15.0)


# ------------------------------------------------------------------------------ the host filesystem


def test_read_world_readable_file_outside_the_allowlist(sandbox, temp_root, host_dir):
    answers = host_dir / "answers.jsonl"
    answers.write_text('{"answer": "42"}\n')
    os.chmod(answers, 0o644)
    targets = [str(answers), str(REPO_ROOT / "pyproject.toml"), "/etc/shadow", "/var/log", "/home", "/root/.bashrc"]
    result, started = attack(sandbox, f"""
        for path in {targets!r}:
            try:
                print("read", path, open(path).read()[:20] if not path.endswith(("log", "home")) else len(__import__("os").listdir(path)))
            except OSError as error:
                print("refused", path, type(error).__name__)
    """)
    assert "read" not in result.stdout.replace("refused", ""), result.stdout
    assert result.stdout.count("refused") == len(targets)
    assert_contained(sandbox, temp_root, result, started)


@pytest.mark.parametrize("where", ["/run", "/var/tmp"])
def test_connect_to_host_unix_socket(sandbox, temp_root, where):
    directory = Path(tempfile.mkdtemp(prefix="sod_escape_", dir=where))
    os.chmod(directory, 0o755)
    path = directory / "bus.sock"
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(str(path))
    os.chmod(path, 0o777)
    listener.listen(4)
    listener.setblocking(False)
    try:
        result, started = attack(sandbox, f"""
            import socket
            client = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                client.connect({str(path)!r})
                client.sendall(b"exfiltrated")
                print("connected")
            except OSError as error:
                print("blocked", type(error).__name__)
        """)
        assert result.stdout.startswith("blocked"), result.stdout + result.stderr
        with pytest.raises(BlockingIOError):
            listener.accept()
    finally:
        listener.close()
        shutil.rmtree(directory, ignore_errors=True)
    assert_contained(sandbox, temp_root, result, started)


def test_write_into_host_fifo(sandbox, temp_root, host_dir):
    fifo = host_dir / "commands.fifo"
    os.mkfifo(fifo, 0o666)
    os.chmod(fifo, 0o666)
    reader = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK)  # so that a writer's open() would not block
    try:
        result, started = attack(sandbox, f"""
            import os
            try:
                fd = os.open({str(fifo)!r}, os.O_WRONLY | os.O_NONBLOCK)
                os.write(fd, b"rm -rf /")
                print("wrote")
            except OSError as error:
                print("blocked", type(error).__name__)
        """)
        assert result.stdout.startswith("blocked"), result.stdout + result.stderr
        assert os.read(reader, 100) == b""  # nothing was written (no writer: end of file)
    finally:
        os.close(reader)
    assert_contained(sandbox, temp_root, result, started)


def test_flock_on_host_file(sandbox, temp_root, host_dir):
    lock = host_dir / "trainer.lock"
    lock.write_text("")
    os.chmod(lock, 0o644)
    result, started = attack(sandbox, f"""
        import fcntl
        try:
            handle = open({str(lock)!r})
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            print("locked")
        except OSError as error:
            print("blocked", type(error).__name__)
    """)
    assert result.stdout.startswith("blocked"), result.stdout + result.stderr
    assert_contained(sandbox, temp_root, result, started)


# ------------------------------------------------------------------------------ the syscall filter

SYSCALL = """
import ctypes, errno
libc = ctypes.CDLL(None, use_errno=True)
def call(name, *args):
    result = libc.syscall(*args) if name.startswith("sys_") else getattr(libc, name)(*args)
    print(name, "ok" if result >= 0 else errno.errorcode[ctypes.get_errno()])
"""


def test_keyring_entry_is_not_read_by_a_later_call(sandbox, temp_root):
    if platform.machine() not in ("x86_64", "aarch64"):
        pytest.skip("syscall numbers for x86_64 and aarch64 only")
    add_key, request_key = (248, 249) if platform.machine() == "x86_64" else (217, 218)
    name = f"sod-note-{uuid.uuid4().hex}".encode()
    note = SYSCALL + textwrap.dedent(f"""
        for keyring in (-4, -5, -3):  # user, user session, session
            serial = libc.syscall({add_key}, b"user", {name!r}, b"the answer is 42", 16, ctypes.c_int(keyring))
            print("added" if serial >= 0 else "refused", errno.errorcode.get(ctypes.get_errno(), ""))
    """)
    read = SYSCALL + textwrap.dedent(f"""
        serial = libc.syscall({request_key}, b"user", {name!r}, None, 0)
        print("found" if serial >= 0 else "missing", errno.errorcode.get(ctypes.get_errno(), ""))
    """)
    first = sandbox.run(note)
    second = sandbox.run(read)  # the same pooled uid as the first call (the slot is reused)
    assert second.stdout.startswith("missing"), second.stdout + second.stderr
    assert "added" not in first.stdout and "EPERM" in first.stdout, first.stdout + first.stderr


def test_nested_user_namespace(sandbox, temp_root):
    result, started = attack(sandbox, SYSCALL + textwrap.dedent("""
        call("unshare", 0x10000000)               # CLONE_NEWUSER
        call("unshare", 0x10000000 | 0x40000000)  # and a network namespace in it
        import os, subprocess
        print("unshare(1)", subprocess.run(["unshare", "-Ur", "true"], capture_output=True).returncode
              if os.path.exists("/usr/bin/unshare") else "absent")
    """))
    lines = result.stdout.splitlines()
    assert lines[:2] == ["unshare EPERM", "unshare EPERM"], result.stdout + result.stderr
    assert lines[2] != "unshare(1) 0"
    assert_contained(sandbox, temp_root, result, started)


def test_io_uring_setup(sandbox, temp_root):
    result, started = attack(sandbox, SYSCALL + textwrap.dedent("""
        params = ctypes.create_string_buffer(120)
        call("sys_io_uring_setup", 425, 4, params)
    """))
    assert result.stdout == "sys_io_uring_setup EPERM\n", result.stdout + result.stderr
    assert_contained(sandbox, temp_root, result, started)


def test_perf_event_bpf_and_ptrace(sandbox, temp_root):
    if platform.machine() != "x86_64":
        pytest.skip("x86_64 syscall numbers")
    result, started = attack(sandbox, SYSCALL + textwrap.dedent("""
        attr = ctypes.create_string_buffer(128)
        attr[4] = 128  # size; type 1 = software counter, config 0 = cpu clock
        attr[0] = 1
        call("sys_perf_event_open", 298, attr, 0, -1, -1, 0)
        call("sys_bpf", 321, 0, attr, 128)
        call("sys_ptrace", 101, 0, 0, 0, 0)  # PTRACE_TRACEME
    """))
    assert result.stdout.splitlines() == ["sys_perf_event_open EPERM", "sys_bpf EPERM", "sys_ptrace EPERM"], (
        result.stdout + result.stderr)
    assert_contained(sandbox, temp_root, result, started)


def test_socket_families_other_than_unix_and_inet(sandbox, temp_root):
    result, started = attack(sandbox, """
        import socket
        for family, kind in (("AF_VSOCK", socket.SOCK_STREAM), ("AF_NETLINK", socket.SOCK_RAW),
                             ("AF_PACKET", socket.SOCK_RAW), ("AF_ALG", socket.SOCK_SEQPACKET),
                             ("AF_UNIX", socket.SOCK_STREAM), ("AF_INET", socket.SOCK_STREAM),
                             ("AF_INET6", socket.SOCK_DGRAM)):
            try:
                socket.socket(getattr(socket, family), kind).close()
                print(family, "ok")
            except OSError as error:
                print(family, error.errno)
    """)
    refused = str(errno.EAFNOSUPPORT)
    assert result.stdout.splitlines() == [f"AF_VSOCK {refused}", f"AF_NETLINK {refused}", f"AF_PACKET {refused}",
                                          f"AF_ALG {refused}", "AF_UNIX ok", "AF_INET ok", "AF_INET6 ok"], (
        result.stdout + result.stderr)
    assert_contained(sandbox, temp_root, result, started)


def test_normal_programs_work_under_the_filter(temp_root):
    sandbox = PythonSandbox(SandboxConfig(timeout_s=30.0, temp_root=str(temp_root)))
    result = sandbox.run(textwrap.dedent("""
        import concurrent.futures, subprocess, numpy, sympy, socket
        with concurrent.futures.ThreadPoolExecutor(2) as pool:
            print(list(pool.map(abs, [-1, -2])))
        print(subprocess.run(["echo", "child"], capture_output=True, text=True).stdout.strip())
        a, b = socket.socketpair()
        a.sendall(b"pair"); print(b.recv(4).decode())
        print(numpy.linalg.inv(numpy.eye(2)).sum(), sympy.factor(sympy.Symbol("x") ** 2 - 1))
    """))
    assert result.stdout == "[1, 2]\nchild\npair\n2.0 (x - 1)*(x + 1)\n", result.stderr
    assert result.metadata["seccomp"] is (_plan_for(sandbox.config).seccomp is not None)


# ------------------------------------------------------------------------------ fallbacks


def test_relative_interpreter_path_keeps_the_namespaces(temp_root, monkeypatch):
    monkeypatch.setattr(sandbox_module, "_plans", {})
    relative = os.path.relpath(sys.executable)
    assert not os.path.isabs(relative)
    sandbox = PythonSandbox(SandboxConfig(timeout_s=5.0, temp_root=str(temp_root), python_executable=relative))
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)  # no fallback, no warning
        result = sandbox.run("import os, socket\nprint(os.getuid() != 0, socket.gethostname())")
    assert result.isolation in ("bwrap", "bwrap-userns") and result.stdout == "True sandbox\n", result


def test_a_probe_failure_other_than_namespaces_is_an_error_not_a_fallback(temp_root, monkeypatch):
    monkeypatch.setattr(sandbox_module, "_plans", {})
    real = sandbox_module._bwrap_prefix
    monkeypatch.setattr(sandbox_module, "_bwrap_prefix",
                        lambda *a, **k: (("--no-such-bwrap-option", *real(*a, **k)[0]), real(*a, **k)[1]))
    with pytest.raises(RuntimeError, match="(?s)could not start although bubblewrap can create namespaces.*"
                                           "no-such-bwrap-option"):
        PythonSandbox(SandboxConfig(temp_root=str(temp_root))).run("1")
