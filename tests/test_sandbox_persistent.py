"""Persistent mode: one killable sandboxed interpreter per trajectory."""

from __future__ import annotations

import shutil
import time
import uuid

import pytest

from sod_trainer.environments.persistent import PersistentPythonSession
from sod_trainer.environments.sandbox import SandboxConfig, isolation_level

from conftest import cmdline_has
from test_sandbox_attacks import sandbox_processes

# Without namespaces a hostile call (kill the parent) would kill the test runner itself: skip, never run it.
pytestmark = pytest.mark.skipif(shutil.which("bwrap") is None or isolation_level() == "rlimits",
                                reason="bubblewrap (bwrap) is not installed or cannot start a sandbox here")


@pytest.fixture
def session(temp_root):
    with PersistentPythonSession(SandboxConfig(timeout_s=1.0, temp_root=str(temp_root))) as session:
        yield session


def test_variables_functions_and_imports_survive_across_calls(session):
    assert session.run("import numpy as np\nx = 40\ndef inc(v):\n    return v + 1").stdout == ""
    assert session.run("inc(x) + 1").stdout == "42\n"
    assert session.run("np.array([x, inc(x)]).sum()").stdout == "81\n"
    assert session.workers_started == 1 and session.alive


def test_files_in_the_working_directory_survive_until_close(session, temp_root):
    session.run("open('state.txt', 'w').write('kept')")
    assert session.run("open('state.txt').read()").stdout == "'kept'\n"
    assert list(temp_root.iterdir()) == []  # the worker's /tmp is a tmpfs of its own, nothing on the host
    session.close()
    assert list(temp_root.iterdir()) == [] and not session.alive


def test_an_error_keeps_the_state(session):
    session.run("x = 1")
    result = session.run("x += 1\nraise ValueError('boom')")
    assert result.error and "ValueError: boom" in result.stderr and 'File "cell2.py", line 2' in result.stderr
    assert not result.state_reset
    assert session.run("x").stdout == "2\n"


def test_memory_error_keeps_the_worker(session):
    session.run("x = 'alive'")
    result = session.run("block = bytearray(8 << 30)")
    assert "MemoryError" in result.stderr and not result.state_reset
    assert session.run("x").stdout == "'alive'\n"


def test_soft_timeout_keeps_the_state(session):
    session.run("x = 7")
    result = session.run("while True:\n    pass")
    assert result.timed_out and result.error and not result.state_reset
    assert session.run("x").stdout == "7\n" and session.workers_started == 1


def test_loop_ignoring_signals_kills_the_worker_and_resets_the_state(session, temp_root):
    session.run("x = 7")
    started = time.monotonic()
    result = session.run("import signal\nfor s in (signal.SIGALRM, signal.SIGTERM):\n"
                         "    signal.signal(s, signal.SIG_IGN)\nwhile True:\n    pass")
    assert time.monotonic() - started < 1.0 + 2.0
    assert result.timed_out and result.state_reset and result.exit_code is None
    assert "variables from earlier calls were lost" in result.observation(256)
    assert sandbox_processes(session.config) == []
    assert list(temp_root.iterdir()) == []
    after = session.run("x")
    assert "NameError" in after.stderr and not after.state_reset
    assert session.run("6 * 7").stdout == "42\n" and session.workers_started == 2


@pytest.mark.parametrize("code, signal_name, exit_code", [
    ("import os\nos._exit(3)", None, 3),
    ("import ctypes\nctypes.string_at(0)", "SIGSEGV", -11),
])
def test_worker_death_is_an_error_and_resets_the_state(session, code, signal_name, exit_code):
    session.run("x = 1")
    result = session.run(code)
    assert result.error and result.state_reset and result.signal == signal_name and result.exit_code == exit_code
    assert "NameError" in session.run("x").stderr


def test_sys_exit_ends_the_call_not_the_worker(session):
    session.run("x = 1")
    result = session.run("import sys\nsys.exit(2)")
    assert result.exit_code == 2 and result.error and not result.state_reset
    assert session.run("x").stdout == "1\n"


def test_detached_children_are_killed_when_the_call_ends(session):
    marker = f"{3000 + uuid.uuid4().int % 1000}.{uuid.uuid4().int % 10**9:09d}"
    result = session.run(f"import subprocess\nsubprocess.Popen(['sleep', '{marker}'], start_new_session=True)\n"
                         "print('spawned')")
    assert result.stdout == "spawned\n" and session.alive
    leftovers = [p for p in sandbox_processes(session.config, marker) if marker in p]
    assert leftovers == []


def test_output_cap_and_kill_parent_in_persistent_mode(temp_root):
    config = SandboxConfig(timeout_s=2.0, temp_root=str(temp_root), max_output_bytes=10_000)
    with PersistentPythonSession(config) as session:
        big = session.run("import sys\n_ = sys.stdout.write('a' * 50_000_000 + 'END')")
        assert big.output_truncated and big.stdout.endswith("END") and len(big.stdout) < 10_100
        attacked = session.run("import os, signal\ntry:\n    os.kill(os.getppid(), signal.SIGKILL)\n"
                               "except OSError as error:\n    print(type(error).__name__)\nprint('still here')")
        # The worker's parent is the namespace's init, owned by another uid: refused.
        assert attacked.stdout in ("PermissionError\nstill here\n", "still here\n")
        assert not attacked.state_reset and session.workers_started == 1
        assert session.run("1 + 1").stdout == "2\n"


def test_close_kills_the_worker_and_everything_it_started(temp_root):
    session = PersistentPythonSession(SandboxConfig(timeout_s=1.0, temp_root=str(temp_root)))
    session.run("import threading, time\nthreading.Thread(target=time.sleep, args=(60,), daemon=True).start()")
    assert session.alive
    session.close()
    assert not session.alive and sandbox_processes(session.config) == [] and list(temp_root.iterdir()) == []
    session.close()  # idempotent


def test_a_forgotten_session_is_cleaned_up_by_the_garbage_collector(temp_root):
    import gc

    session = PersistentPythonSession(SandboxConfig(timeout_s=1.0, temp_root=str(temp_root)))
    session.run("x = 1")
    config = session.config
    del session
    gc.collect()
    assert sandbox_processes(config) == [] and list(temp_root.iterdir()) == []


def test_worker_started_from_a_short_lived_thread_outlives_it(temp_root):
    # PR_SET_PDEATHSIG (bwrap --die-with-parent) fires when the *thread* that forked bwrap exits:
    # a worker started from a pool thread must not die when that thread retires.
    import threading

    with PersistentPythonSession(SandboxConfig(timeout_s=1.0, temp_root=str(temp_root))) as session:
        thread = threading.Thread(target=session.run, args=("x = 'kept'",))
        thread.start()
        thread.join()
        time.sleep(0.3)
        result = session.run("x")
        assert result.stdout == "'kept'\n" and not result.state_reset and session.workers_started == 1


def test_sandboxes_die_with_the_trainer(temp_root):
    import os
    import signal
    import subprocess
    import sys
    import textwrap
    from pathlib import Path

    marker = f"{4000 + uuid.uuid4().int % 1000}.{uuid.uuid4().int % 10**9:09d}"
    trainer = textwrap.dedent(f"""
        import sys, threading, time
        sys.path.insert(0, {str(Path(__file__).resolve().parents[1] / "src")!r})
        from sod_trainer.environments.persistent import PersistentPythonSession
        from sod_trainer.environments.sandbox import PythonSandbox, SandboxConfig
        config = SandboxConfig(timeout_s=60, temp_root={str(temp_root)!r})
        session = PersistentPythonSession(config)
        session.run("x = 1")
        code = "import subprocess\\nsubprocess.run(['sleep', '{marker}'])"
        threading.Thread(target=session.run, args=(code,), daemon=True).start()
        threading.Thread(target=PythonSandbox(config).run, args=(code,), daemon=True).start()
        print("ready", flush=True)
        time.sleep(60)
    """)
    process = subprocess.Popen([sys.executable, "-c", trainer], stdout=subprocess.PIPE, text=True)
    try:
        assert process.stdout.readline() == "ready\n"
        def sleepers() -> list[str]:
            return [p for p in os.listdir("/proc") if p.isdigit() and int(p) != process.pid and cmdline_has(p, marker)]

        deadline = time.monotonic() + 15.0
        while len(sleepers()) < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert len(sleepers()) == 2  # one sleeper per sandbox, before the trainer dies
        os.kill(process.pid, signal.SIGKILL)
        process.wait()
        deadline = time.monotonic() + 3.0
        while time.monotonic() < deadline and sleepers():
            time.sleep(0.05)
        assert sleepers() == []
    finally:
        if process.poll() is None:
            process.kill()


def test_forged_persistent_mode_status(temp_root):
    # The worker's control pipe is a descriptor the code can reach: it writes a "success" status line (in the
    # old format and the new one) to every descriptor, then fails. The line must be rejected, the call an error.
    from sod_trainer.environments import persistent

    before = int(persistent.control_channel_violations)
    session = PersistentPythonSession(SandboxConfig(timeout_s=10.0, temp_root=str(temp_root)))
    session.run("x = 1")
    forged = session.run(
        "import os\n"
        "for fd in range(3, 64):\n"
        "    for line in (b'{\"status\": 0}\\n', b'2 0 ' + b'0' * 64 + b'\\n'):\n"
        "        try:\n"
        "            os.write(fd, line)\n"
        "        except OSError:\n"
        "            pass\n"
        "raise ValueError('this cell failed')\n")
    assert forged.error and forged.state_reset and forged.metadata["control_channel_forged"], forged
    assert "control channel" in forged.observation(500)
    assert session.control_violations == 1 and int(persistent.control_channel_violations) == before + 1
    # nothing shifted: the next calls get their own results, in a fresh worker
    assert session.run("6 * 7").stdout == "42\n"
    after = session.run("1 / 0")
    assert after.error and "ZeroDivisionError" in after.stderr and not after.metadata["control_channel_forged"]
    assert session.run("'ok'").stdout == "'ok'\n" and session.workers_started == 2
    session.close()
