"""Hostile programs, one test per attack (issue 3 acceptance).

Each test checks that the attack is contained: the caller survives, the call returns within
timeout + 2 s, no process of it remains, nothing outside the per-call temp dir changed, and a
normal call works right after.
"""

from __future__ import annotations

import os
import re
import resource
import shutil
import socket
import subprocess
import sys
import textwrap
import time
import uuid
from pathlib import Path

import pytest

from sod_trainer.environments.sandbox import PythonSandbox, SandboxConfig, isolation_level

REPO_ROOT = Path(__file__).resolve().parents[1]
TIMEOUT_S = 1.5

pytestmark = pytest.mark.skipif(shutil.which("bwrap") is None, reason="bubblewrap (bwrap) is not installed")


@pytest.fixture(scope="module", autouse=True)
def _namespaces_work():
    # bwrap is installed: the sandbox must use it, not silently fall back to rlimits.
    assert isolation_level() in ("bwrap", "bwrap-userns")


@pytest.fixture
def sandbox(temp_root):
    return PythonSandbox(SandboxConfig(timeout_s=TIMEOUT_S, temp_root=str(temp_root), max_processes=32))


def sandbox_processes(config: SandboxConfig, marker: str | None = None) -> list[str]:
    """Processes that belong to a sandbox of this test process: our children, the uids our
    sandboxes run as, or anything whose command line carries the attack's marker."""
    me = os.getpid()
    low = config.sandbox_uid_base + ((me & 0xFFFF) << 10)
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == me:
            continue
        try:
            status = Path(f"/proc/{entry}/status").read_text()
            cmdline = Path(f"/proc/{entry}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        uid = int(re.search(r"^Uid:\s+(\d+)", status, re.M).group(1))
        ppid = int(re.search(r"^PPid:\s+(\d+)", status, re.M).group(1))
        if ppid == me or low <= uid < low + 1024 or (marker and marker in cmdline):
            found.append(f"pid {entry} uid {uid} ppid {ppid}: {cmdline[:100]}")
    return found


def assert_contained(sandbox: PythonSandbox, temp_root: Path, result, started: float, marker: str | None = None,
                     max_s: float = TIMEOUT_S + 2.0):
    elapsed = time.monotonic() - started
    assert elapsed <= max_s, f"the call took {elapsed:.2f} s"
    assert result.duration_s <= max_s
    assert result.isolation in ("bwrap", "bwrap-userns")
    assert sandbox_processes(sandbox.config, marker) == []
    assert list(temp_root.iterdir()) == [], "the per-call temp dir was not removed"
    after = sandbox.run("6 * 7")
    assert after.stdout == "42\n" and not after.error, after


def attack(sandbox: PythonSandbox, code: str):
    started = time.monotonic()
    result = sandbox.run(textwrap.dedent(code))
    return result, started


def test_infinite_loop(sandbox, temp_root):
    result, started = attack(sandbox, "while True:\n    pass\n")
    assert result.timed_out and result.error
    assert "TimeoutError" in result.observation(256)
    assert TIMEOUT_S - 0.1 <= result.duration_s
    assert_contained(sandbox, temp_root, result, started)


def test_loop_ignoring_sigterm(sandbox, temp_root):
    # Ignores SIGTERM, SIGINT and our own in-process alarm: only SIGKILL of the tree stops it.
    result, started = attack(sandbox, """
        import signal
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGALRM, signal.SIGHUP):
            signal.signal(sig, signal.SIG_IGN)
        print("ignoring", flush=True)
        while True:
            pass
    """)
    assert result.timed_out and result.error and result.exit_code is None
    assert result.metadata["killed_at_deadline"]
    assert result.stdout == "ignoring\n"  # output written before the kill is kept
    assert_contained(sandbox, temp_root, result, started)


def test_allocate_8_gib(sandbox, temp_root):
    before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    result, started = attack(sandbox, """
        block = bytearray(8 << 30)
        block[::4096] = b"x" * len(block[::4096])
        print("allocated")
    """)
    assert result.error and "MemoryError" in result.stderr
    assert "allocated" not in result.stdout
    assert resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss - before < 2 << 20  # KiB: < 2 GiB touched
    assert_contained(sandbox, temp_root, result, started)


def test_print_100_mb(sandbox, temp_root):
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    result, started = attack(sandbox, """
        import sys
        written = sys.stdout.write("head-" + "x" * 100_000_000 + "-tail")
    """)
    assert not result.timed_out and result.exit_code == 0
    assert result.output_truncated and result.metadata["output_bytes"] >= 100_000_000
    assert len(result.stdout) <= sandbox.config.max_output_bytes + 100
    assert result.stdout.startswith("head-") and result.stdout.endswith("-tail")
    observation = result.observation(256)
    assert len(observation) <= 256 and "...(truncated)..." in observation and observation.endswith("-tail")
    grown_mib = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024
    assert grown_mib < 50, f"the caller's peak memory grew by {grown_mib:.0f} MiB"
    assert_contained(sandbox, temp_root, result, started)


def test_unbounded_recursion(sandbox, temp_root):
    result, started = attack(sandbox, """
        import sys
        sys.setrecursionlimit(10 ** 9)
        def down(n):
            return down(n + 1) + 1
        down(0)
    """)
    # Depending on the interpreter it overflows the C stack (SIGSEGV), runs out of memory
    # (MemoryError) or is still unwinding at the deadline (killed): an error in every case.
    assert result.error
    assert result.timed_out or result.signal is not None or "MemoryError" in result.stderr
    assert_contained(sandbox, temp_root, result, started)


def test_ctypes_segfault(sandbox, temp_root):
    result, started = attack(sandbox, "import ctypes\nctypes.string_at(0)\n")
    assert result.error and result.signal == "SIGSEGV" and result.exit_code == -11
    assert "SIGSEGV" in result.observation(256)
    assert_contained(sandbox, temp_root, result, started)


def test_kill_parent_process(temp_root):
    # The attack runs under a separate "trainer" process, so that a failure cannot take pytest down.
    attack_code = textwrap.dedent("""
        import os, signal
        for pid in (os.getppid(), 1, TRAINER_PID):
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError as error:
                print("refused", pid, type(error).__name__)
        try:
            os.kill(-1, signal.SIGKILL)
        except OSError as error:
            print("kill(-1) refused", error)
        os.killpg(0, signal.SIGKILL)
    """)
    trainer = textwrap.dedent(f"""
        import os, sys
        sys.path.insert(0, {str(REPO_ROOT / "src")!r})
        from sod_trainer.environments.sandbox import PythonSandbox, SandboxConfig
        sandbox = PythonSandbox(SandboxConfig(timeout_s={TIMEOUT_S}, temp_root={str(temp_root)!r}))
        result = sandbox.run({attack_code!r}.replace("TRAINER_PID", str(os.getpid())))
        print("SURVIVED", result.error, result.signal, result.duration_s, flush=True)
        print("AFTER", sandbox.run("6 * 7").stdout.strip(), flush=True)
    """)
    started = time.monotonic()
    completed = subprocess.run([sys.executable, "-c", trainer], capture_output=True, text=True, timeout=60)
    assert completed.returncode == 0, completed.stderr
    survived = re.search(r"^SURVIVED (\w+) (\w+) ([\d.]+)$", completed.stdout, re.M)
    assert survived, completed.stdout + completed.stderr
    assert survived.group(1) == "True" and survived.group(2) == "SIGKILL"  # it only killed itself
    assert float(survived.group(3)) <= TIMEOUT_S + 2.0
    assert "AFTER 42" in completed.stdout
    assert list(temp_root.iterdir()) == []
    assert time.monotonic() - started < 30


def test_detached_child_with_new_session_sleeps(sandbox, temp_root):
    marker = f"{1000 + uuid.uuid4().int % 1000}.{uuid.uuid4().int % 10**9:09d}"
    result, started = attack(sandbox, f"""
        import os, subprocess, time
        subprocess.Popen(["sleep", "{marker}"], start_new_session=True, stdin=subprocess.DEVNULL,
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        if os.fork() == 0:  # classic daemon: double fork, setsid, close the pipes
            os.setsid()
            if os.fork() == 0:
                os.closerange(0, 3)
                os.execvp("sleep", ["sleep", "{marker}"])
            os._exit(0)
        time.sleep(0.2)
        print("detached")
    """)
    assert result.stdout == "detached\n" and not result.timed_out
    assert result.duration_s < 1.5  # the call does not wait for the sleepers
    assert_contained(sandbox, temp_root, result, started, marker)


def test_spawn_hundreds_of_children(sandbox, temp_root):
    marker = f"{2000 + uuid.uuid4().int % 1000}.{uuid.uuid4().int % 10**9:09d}"
    result, started = attack(sandbox, f"""
        import subprocess
        children = []
        try:
            for _ in range(500):
                children.append(subprocess.Popen(["sleep", "{marker}"]))
        except OSError as error:
            print("stopped:", type(error).__name__)
        print("children:", len(children))
    """)
    spawned = int(re.search(r"children: (\d+)", result.stdout).group(1))
    assert "stopped: BlockingIOError" in result.stdout
    assert spawned < sandbox.config.max_processes  # the interpreter itself counts too
    assert_contained(sandbox, temp_root, result, started, marker)


def test_fork_bomb(sandbox, temp_root):
    result, started = attack(sandbox, """
        import os
        while True:
            try:
                os.fork()
            except OSError:
                pass
    """)
    assert result.timed_out
    assert_contained(sandbox, temp_root, result, started)


def test_read_environment_secret_of_trainer(sandbox, temp_root, monkeypatch):
    secret = "sk-" + uuid.uuid4().hex
    monkeypatch.setenv("SOD_TEST_API_TOKEN", secret)
    result, started = attack(sandbox, f"""
        import glob, os
        print(dict(os.environ))
        checked = 0
        for path in glob.glob("/proc/*/environ") + ["/proc/{os.getpid()}/environ", "/proc/{os.getppid()}/environ"]:
            try:
                print(open(path, "rb").read())
            except OSError as error:
                print(path, type(error).__name__)
            checked += 1
        print("checked", checked)
    """)
    assert "checked" in result.stdout and "SOD_TEST_API_TOKEN" not in result.stdout
    assert secret not in result.stdout and secret not in result.stderr
    assert_contained(sandbox, temp_root, result, started)


def test_read_etc_shadow(sandbox, temp_root):
    result, started = attack(sandbox, "print(open('/etc/shadow').read())\n")
    # not in the sandbox's allowlist (and unreadable for its uid if it were)
    assert result.error and ("FileNotFoundError" in result.stderr or "PermissionError" in result.stderr)
    if os.access("/etc/shadow", os.R_OK):
        first_entry = Path("/etc/shadow").read_text().split(":", 1)[0] + ":"
        assert first_entry not in result.stdout
    assert_contained(sandbox, temp_root, result, started)


def test_write_into_home_directory(sandbox, temp_root):
    target = Path.home() / f"sod_sandbox_attack_{uuid.uuid4().hex}"
    result, started = attack(sandbox, f"""
        import os
        with open({str(target)!r}, "w") as handle:
            handle.write("owned")
        print("wrote", os.path.exists({str(target)!r}))
    """)
    try:
        assert not target.exists()
        assert result.error and ("PermissionError" in result.stderr or "OSError" in result.stderr)
    finally:
        target.unlink(missing_ok=True)
    assert_contained(sandbox, temp_root, result, started)


def test_write_into_project_directory(sandbox, temp_root):
    target = REPO_ROOT / f"sod_sandbox_attack_{uuid.uuid4().hex}"
    package_init = REPO_ROOT / "src" / "sod_trainer" / "__init__.py"
    before = package_init.stat().st_mtime_ns
    result, started = attack(sandbox, f"""
        import os
        for path in ({str(target)!r}, {str(package_init)!r}):
            try:
                os.utime(path) if os.path.exists(path) else open(path, "w").write("owned")
                print("wrote", path)
            except OSError as error:
                print("refused", type(error).__name__, error.strerror)
    """)
    try:
        assert not target.exists()
        assert package_init.stat().st_mtime_ns == before
        # refused either by the read-only bind of / or, when the checkout lives under /tmp (as CI's may), because
        # the call's private /tmp hides it
        assert "wrote" not in result.stdout and result.stdout.count("refused") == 2
    finally:
        target.unlink(missing_ok=True)
    assert_contained(sandbox, temp_root, result, started)


def test_write_outside_temp_dir_via_tmp_and_dev_shm(sandbox, temp_root):
    # /tmp inside is the per-call dir (removed afterwards); other writable-looking places are not.
    result, started = attack(sandbox, """
        for path in ("/tmp/inside.txt", "/dev/shm/x", "/var/tmp/x", "/x"):
            try:
                open(path, "w").write("data")
                print("wrote", path)
            except OSError as error:
                print("refused", path, type(error).__name__)
    """)
    assert "wrote /tmp/inside.txt" in result.stdout
    for path in ("/dev/shm/x", "/var/tmp/x", "/x"):
        assert f"refused {path}" in result.stdout
    assert not Path("/var/tmp/x").exists()
    assert_contained(sandbox, temp_root, result, started)


def test_connect_to_loopback_listener(sandbox, temp_root):
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.bind(("127.0.0.1", 0))
    listener.listen(8)
    listener.setblocking(False)
    port = listener.getsockname()[1]
    try:
        result, started = attack(sandbox, f"""
            import socket
            try:
                socket.create_connection(("127.0.0.1", {port}), timeout=1).sendall(b"exfiltrated")
                print("connected")
            except OSError as error:
                print("blocked", type(error).__name__)
        """)
        assert result.stdout.startswith("blocked")
        with pytest.raises(BlockingIOError):
            listener.accept()
    finally:
        listener.close()
    assert_contained(sandbox, temp_root, result, started)


def test_connect_to_abstract_unix_socket(sandbox, temp_root):
    # Abstract unix sockets live in the network namespace: a fresh one cannot reach the trainer's.
    name = f"sod-test-{uuid.uuid4().hex}"
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind("\0" + name)
    listener.listen(1)
    listener.setblocking(False)
    try:
        result, started = attack(sandbox, f"""
            import socket
            client = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                client.connect("\\0{name}")
                print("connected")
            except OSError as error:
                print("blocked", type(error).__name__)
        """)
        assert result.stdout.startswith("blocked")
        with pytest.raises(BlockingIOError):
            listener.accept()
    finally:
        listener.close()
    assert_contained(sandbox, temp_root, result, started)


def test_write_huge_file(temp_root):
    sandbox = PythonSandbox(SandboxConfig(timeout_s=TIMEOUT_S, temp_root=str(temp_root), max_file_size_mb=4))
    result, started = attack(sandbox, """
        with open("big.bin", "wb") as handle:
            handle.write(b"x" * (16 << 20))
    """)
    assert result.error and "File too large" in result.stderr
    assert_contained(sandbox, temp_root, result, started)


def test_open_thousands_of_files(sandbox, temp_root):
    result, started = attack(sandbox, """
        handles = []
        try:
            for _ in range(100_000):
                handles.append(open("/dev/null"))
        except OSError as error:
            print(type(error).__name__, error.strerror, len(handles))
    """)
    opened = int(result.stdout.split()[-1])
    assert "Too many open files" in result.stdout and opened < sandbox.config.max_open_files
    assert_contained(sandbox, temp_root, result, started)
