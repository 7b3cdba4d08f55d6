"""A trainer that does not run as root gets the ``bwrap-userns`` isolation (user namespace).

Runs the sandbox from a child process as ``nobody`` (uid 65534) with the system Python, and checks
the attacks whose containment differs from the root path: the process-count limit (RLIMIT_NPROC
counted inside the sandbox's own user namespace), detached children, network, filesystem, secrets.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import tempfile
import textwrap
import uuid
from pathlib import Path

import pytest
from conftest import cmdline_has

REPO_ROOT = Path(__file__).resolve().parents[1]
SYSTEM_PYTHON = "/usr/bin/python3"
NOBODY = 65534


def _can_run_unprivileged_namespaces() -> bool:
    if os.geteuid() != 0 or not all(shutil.which(tool) for tool in ("bwrap", "setpriv")):
        return False
    if not os.access(SYSTEM_PYTHON, os.X_OK):
        return False
    probe = subprocess.run(["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups",
                            "bwrap", "--unshare-user", "--unshare-pid", "--ro-bind", "/", "/", "true"],
                           capture_output=True)
    if probe.returncode != 0:
        return False
    # the trainer, run as nobody, imports sod_trainer from this checkout: it must be readable by others
    # (a checkout in a 0700 directory, e.g. one made by mktemp -d, is not)
    readable = subprocess.run(["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups", SYSTEM_PYTHON,
                               "-c", f"open({str(REPO_ROOT / 'src' / 'sod_trainer' / '__init__.py')!r}).read()"],
                              capture_output=True)
    return readable.returncode == 0


pytestmark = pytest.mark.skipif(not _can_run_unprivileged_namespaces(),
                                reason="needs root to switch to nobody, bwrap, setpriv, /usr/bin/python3, "
                                       "unprivileged user namespaces and a checkout readable by nobody")


def test_unprivileged_trainer_is_isolated_by_a_user_namespace():
    marker = f"{5000 + uuid.uuid4().int % 1000}.{uuid.uuid4().int % 10**9:09d}"
    secret = "sk-" + uuid.uuid4().hex
    project_target = REPO_ROOT / f"sod_sandbox_attack_{uuid.uuid4().hex}"
    temp_root = tempfile.mkdtemp(prefix="sod_unprivileged_")
    os.chown(temp_root, NOBODY, NOBODY)
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(4)
    listener.setblocking(False)
    port = listener.getsockname()[1]
    script = textwrap.dedent(f"""
        import json, os, sys, time, warnings
        warnings.simplefilter("ignore")  # numpy is not installed for the system Python
        sys.path.insert(0, {str(REPO_ROOT / "src")!r})
        from sod_trainer.environments.sandbox import PythonSandbox, SandboxConfig
        sandbox = PythonSandbox(SandboxConfig(timeout_s=1.0, max_processes=16, temp_root={temp_root!r}))
        report = {{"isolation": sandbox.isolation, "uid": os.getuid()}}
        spawn = ("import subprocess\\nchildren = []\\ntry:\\n    for _ in range(200):\\n"
                 "        children.append(subprocess.Popen(['sleep', '{marker}'], start_new_session=True))\\n"
                 "except OSError as error:\\n    print(type(error).__name__)\\nprint(len(children))")
        report["spawn"] = sandbox.run(spawn).stdout.split()
        report["network"] = sandbox.run("import socket\\ntry:\\n    socket.create_connection(('127.0.0.1', {port}), 1)\\n"
                                        "    print('connected')\\nexcept OSError as e:\\n    print('blocked')").stdout
        report["write"] = sandbox.run("open({str(project_target)!r}, 'w')").stderr.strip().splitlines()[-1:]
        report["env"] = sandbox.run("import os\\nprint(dict(os.environ))").stdout
        started = time.monotonic()
        hung = sandbox.run("import signal\\nsignal.signal(signal.SIGALRM, signal.SIG_IGN)\\nwhile True: pass")
        report["hung"] = [hung.timed_out, time.monotonic() - started]
        report["after"] = sandbox.run("6 * 7").stdout
        print(json.dumps(report))
    """)
    try:
        completed = subprocess.run(
            ["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups", SYSTEM_PYTHON, "-c", script],
            capture_output=True, text=True, timeout=120, cwd="/",
            env={"PATH": "/usr/bin:/bin", "HOME": "/nonexistent", "SOD_TEST_SECRET": secret},
        )
        assert completed.returncode == 0, completed.stderr
        report = json.loads(completed.stdout.strip().splitlines()[-1])
        leftovers = [pid for pid in os.listdir("/proc") if pid.isdigit() and cmdline_has(pid, marker)]
        with pytest.raises(BlockingIOError):
            listener.accept()
    finally:
        listener.close()
        project_target.unlink(missing_ok=True)
        remaining = os.listdir(temp_root)
        shutil.rmtree(temp_root, ignore_errors=True)
    assert report["isolation"] == "bwrap-userns" and report["uid"] == NOBODY
    # RLIMIT_NPROC inside the sandbox's own user namespace stops it (the interpreter and bwrap's
    # init count too), although the trainer's uid is not root and has other processes.
    assert report["spawn"][0] == "BlockingIOError" and int(report["spawn"][1]) < 16
    assert report["network"] == "blocked\n"
    # the checkout is outside the sandbox's filesystem allowlist: it does not exist there
    assert report["write"] and ("FileNotFoundError" in report["write"][0] or "Read-only file system" in report["write"][0])
    assert not project_target.exists()
    assert secret not in report["env"] and "SOD_TEST_SECRET" not in report["env"]
    assert report["hung"][0] and report["hung"][1] < 1.0 + 2.0
    assert report["after"] == "42\n"
    assert leftovers == [] and remaining == []
