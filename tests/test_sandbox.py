"""The sandbox executor: REPL semantics, results, output capture, limits, fallback, concurrency."""

from __future__ import annotations

import os
import random
import shutil
import sys
import threading
import time
import warnings
from concurrent.futures import ThreadPoolExecutor

import pytest

from sod_trainer.environments import sandbox as sandbox_module
from sod_trainer.environments.sandbox import (
    ExecutionResult,
    PythonSandbox,
    SandboxConfig,
    _HeadTailBuffer,
    add_print_of_last_expression,
    run_code,
    truncate_middle,
)

needs_bwrap = pytest.mark.skipif(shutil.which("bwrap") is None, reason="bubblewrap (bwrap) is not installed")


@pytest.fixture
def sandbox(temp_root):
    return PythonSandbox(SandboxConfig(timeout_s=2.0, temp_root=str(temp_root)))


# ------------------------------------------------------------------------------ REPL semantics


def test_last_bare_expression_is_printed(sandbox):
    assert sandbox.run("x = 20\nx * 2 + 2").stdout == "42\n"
    assert sandbox.run("'text'").stdout == "'text'\n"  # strings shown as the REPL shows them
    assert sandbox.run("import numpy as np\nnp.arange(3)").stdout == "[0 1 2]\n"


def test_no_echo_for_none_print_assignment_or_disabled(sandbox):
    assert sandbox.run("print('once')").stdout == "once\n"
    assert sandbox.run("[].append(1)").stdout == ""
    assert sandbox.run("x = 5").stdout == ""
    assert sandbox.run("for i in range(2):\n    i").stdout == ""
    assert sandbox.run("x = 3\nx", print_last_expression=False).stdout == ""


def test_traceback_keeps_line_numbers_and_source_and_hides_the_bootstrap(sandbox):
    result = sandbox.run("# a comment\nvalues = [1, 2]\n\nvalues[5]\n")
    assert result.error and result.exit_code == 1
    assert 'File "main.py", line 4, in <module>' in result.stderr
    assert "values[5]" in result.stderr and "IndexError: list index out of range" in result.stderr
    assert "_sod_boot" not in result.stderr and "<string>" not in result.stderr


def test_syntax_error_is_an_error(sandbox):
    result = sandbox.run("def f(:\n    pass")
    assert result.error and result.exit_code == 1 and "SyntaxError" in result.stderr


def test_exit_codes(sandbox):
    assert not sandbox.run("import sys\nprint('bye')\nsys.exit(0)").error
    result = sandbox.run("import sys\nsys.exit(3)")
    assert result.exit_code == 3 and result.error
    result = sandbox.run("raise SystemExit('fatal: no input')")
    assert result.exit_code == 1 and "fatal: no input" in result.stderr


def test_exit_and_quit_builtins_and_unicode_output(sandbox):
    # The interpreter starts without `site`; the bootstrap provides what it would have.
    result = sandbox.run("print('π ≈ 3.14159')\nexit()\nprint('unreachable')")
    assert result.stdout == "π ≈ 3.14159\n" and result.exit_code == 0
    assert sandbox.run("quit(4)").exit_code == 4
    assert "numpy" in sandbox.run("import numpy, sys\nnumpy.__file__").stdout


def test_default_recursion_limit_raises_recursion_error(sandbox):
    result = sandbox.run("def f(n):\n    return f(n + 1)\nf(0)")
    assert result.error and "RecursionError" in result.stderr


def test_numpy_and_sympy_are_importable(sandbox):
    result = sandbox.run("import numpy, sympy\nx = sympy.Symbol('x')\nprint(sympy.factor(x**2 - 1), numpy.eye(2).sum())")
    assert result.stdout == "(x - 1)*(x + 1) 2.0\n", result.stderr


def test_stdin_is_closed_unless_given(sandbox):
    result = sandbox.run("input()")
    assert result.error and "EOFError" in result.stderr
    assert sandbox.run("import sys\nprint(sys.stdin.read()[::-1])", stdin="abc").stdout == "cba\n"


def test_large_code_and_stdin(sandbox):
    code = "data = " + repr("y" * 300_000) + "\nimport sys\nprint(len(data), len(sys.stdin.read()))"
    assert sandbox.run(code, stdin="z" * 500_000).stdout == "300000 500000\n"


# An interpreter that lives under /tmp (a venv in a checkout there, as CI's may be) is re-exposed read-only
# inside the call's /tmp, so its top directory shows up in the listing; nothing else may.
INTERPRETER_MOUNTS = sorted({os.path.relpath(p, "/tmp").split(os.sep)[0] for p in (os.path.realpath(sys.prefix),)
                             if p.startswith("/tmp/")})


def test_working_directory_is_a_private_temp_dir_removed_afterwards(sandbox, temp_root):
    result = sandbox.run(
        "import os, tempfile\nopen('notes.txt', 'w').write('x')\n"
        "print(os.getcwd(), os.environ['HOME'], tempfile.gettempdir(), sorted(os.listdir('.')))"
    )
    listing = sorted(["notes.txt", *INTERPRETER_MOUNTS]) if sandbox.isolation != "rlimits" else ["notes.txt"]
    assert result.stdout == f"/tmp /tmp /tmp {listing}\n", result.stderr
    assert list(temp_root.iterdir()) == []
    empty = INTERPRETER_MOUNTS if sandbox.isolation != "rlimits" else []
    assert sandbox.run("import os\nprint(sorted(os.listdir('.')))").stdout == f"{empty}\n"  # nothing carried over


def test_environment_is_scrubbed(sandbox, monkeypatch):
    monkeypatch.setenv("HF_TOKEN", "hf_secret")
    result = sandbox.run("import os\nprint(sorted(os.environ))")
    names = eval(result.stdout)
    assert "HF_TOKEN" not in names
    assert set(names) <= {"PATH", "HOME", "TMPDIR", "LANG", "LC_ALL", "PYTHONIOENCODING", "OMP_NUM_THREADS",
                          "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMEXPR_NUM_THREADS", "MPLBACKEND", "PWD"}


@needs_bwrap
def test_readonly_paths_are_visible_and_hidden_paths_hide_part_of_them(temp_root):
    import tempfile
    from pathlib import Path

    private = Path(tempfile.mkdtemp(dir="/var/tmp"))  # not under /tmp, which the sandbox replaces anyway
    try:
        (private / "data").mkdir()
        (private / "data" / "tests.jsonl").write_text("{}")
        (private / "secret").mkdir()
        (private / "secret" / "credentials.json").write_text("{}")
        for path in (private, private / "data", private / "secret"):
            os.chmod(path, 0o755)
        listing = (f"import os\nfor path in ({str(private / 'data')!r}, {str(private / 'secret')!r}):\n"
                   "    try:\n        print(sorted(os.listdir(path)))\n    except OSError as error:\n"
                   "        print(type(error).__name__)\n"
                   f"print(sorted(os.listdir({os.path.expanduser('~')!r})) if os.path.isdir({os.path.expanduser('~')!r})"
                   " else 'no home')")
        default = PythonSandbox(SandboxConfig(temp_root=str(temp_root))).run(listing).stdout.splitlines()
        shown = PythonSandbox(SandboxConfig(temp_root=str(temp_root), readonly_paths=(str(private),),
                                            hidden_paths=(str(private / "secret"),))).run(listing)
        write = PythonSandbox(SandboxConfig(temp_root=str(temp_root), readonly_paths=(str(private),))).run(
            f"open({str(private / 'data' / 'x')!r}, 'w')")
    finally:
        shutil.rmtree(private)
    # outside the allowlist nothing exists; readonly_paths shows a directory, read-only; hidden_paths empties part of it
    assert default[:2] == ["FileNotFoundError", "FileNotFoundError"]
    assert shown.stdout.splitlines()[:2] == ["['tests.jsonl']", "[]"], shown.stderr
    assert "Read-only file system" in write.stderr
    # Only what the interpreter itself needs may show through of home (e.g. a Python installed under it).
    home = default[2]
    assert home == "no home" or len(eval(home)) <= 1
    with pytest.raises(FileNotFoundError, match="readonly_paths"):
        PythonSandbox(SandboxConfig(temp_root=str(temp_root), readonly_paths=("/nonexistent/sod",))).run("1")


def test_extra_environment_variables_are_passed(temp_root):
    sandbox = PythonSandbox(SandboxConfig(temp_root=str(temp_root), env={"TASK_SEED": "7"}))
    assert sandbox.run("import os\nos.environ['TASK_SEED']").stdout == "'7'\n"


# ------------------------------------------------------------------------------ timeouts and limits


def test_timeout_keeps_output_printed_before_it(sandbox):
    started = time.monotonic()
    result = sandbox.run("import time\nprint('started')\nwhile True:\n    time.sleep(0.01)")
    assert result.timed_out and result.error and result.exit_code == 124
    assert result.stdout == "started\n"
    assert "TimeoutError: execution exceeded the time limit of 2 s" in result.stderr
    assert 'File "main.py", line 4' in result.stderr
    assert result.observation(256).count("TimeoutError") == 1
    assert 2.0 <= time.monotonic() - started < 3.5


def test_per_call_timeout_override(sandbox):
    result = sandbox.run("import time\ntime.sleep(5)", timeout_s=0.5)
    assert result.timed_out and result.duration_s < 2.0


def test_cpu_time_limit(temp_root):
    # Alarm ignored, so only RLIMIT_CPU can stop it before the 10 s wall clock.
    sandbox = PythonSandbox(SandboxConfig(timeout_s=10.0, cpu_time_s=1, temp_root=str(temp_root)))
    result = sandbox.run("import signal\nsignal.signal(signal.SIGALRM, signal.SIG_IGN)\nwhile True:\n    pass")
    assert result.signal == "SIGXCPU" and result.error and not result.timed_out
    assert result.duration_s < 5.0
    assert "killed by signal SIGXCPU" in result.observation(256)


def test_memory_limit_is_configurable(temp_root):
    assert run_code("len(bytearray(300 << 20))", memory_mb=1024, temp_root=str(temp_root)).output == "314572800\n"
    small = run_code("len(bytearray(300 << 20))", memory_mb=256, temp_root=str(temp_root))
    assert small.is_error and "MemoryError" in small.output


def test_run_code_entry_point(temp_root):
    result = run_code("print('hi')\n1 / 0", timeout=2.0, temp_root=str(temp_root))
    assert result.is_error and not result.timed_out
    assert result.output.startswith("hi\n") and "ZeroDivisionError" in result.output
    slow = run_code("while True: pass", timeout=0.5, temp_root=str(temp_root))
    assert slow.timed_out and slow.is_error and "TimeoutError" in slow.output


# ------------------------------------------------------------------------------ output capture


def test_head_tail_buffer_matches_a_reference():
    rng = random.Random(0)
    for cap in (0, 1, 7, 64, 1000):
        for _ in range(30):
            data = bytes(rng.randrange(256) for _ in range(rng.randrange(3000)))
            buffer = _HeadTailBuffer(cap)
            position = 0
            while position < len(data):
                step = rng.choice((1, 3, 50, 700, 5000))
                buffer.feed(data[position:position + step])
                position += step
            head, tail = cap - cap // 2, cap // 2
            assert buffer.total == len(data)
            assert bytes(buffer.head) == data[:head]
            kept = bytes(buffer.head) + b"".join(buffer.tail)[-tail:] if tail else bytes(buffer.head)
            if len(data) <= cap:
                assert bytes(buffer.head) + b"".join(buffer.tail) == data and not buffer.truncated
            else:
                assert buffer.truncated and kept == data[:head] + (data[-tail:] if tail else b"")


def test_output_cap_keeps_head_and_tail(temp_root):
    sandbox = PythonSandbox(SandboxConfig(temp_root=str(temp_root), max_output_bytes=1000))
    result = sandbox.run("for i in range(10000):\n    print(i)")
    assert result.output_truncated and result.metadata["output_bytes"] == sum(len(f"{i}\n") for i in range(10000))
    assert result.stdout.startswith("0\n1\n2\n") and result.stdout.endswith("9998\n9999\n")
    assert "...(truncated)..." in result.stdout and len(result.stdout) < 1100


def test_stdout_then_stderr_in_observation(sandbox):
    result = sandbox.run("import sys\nprint('out')\nprint('err', file=sys.stderr)")
    assert result.observation(256) == "out\nerr" and result.exit_code == 0


def test_truncate_middle():
    assert truncate_middle("abcdef", 10) == "abcdef"
    text = "0123456789" * 10
    cut = truncate_middle(text, 40)
    assert len(cut) == 40 and cut.startswith(text[:11]) and cut.endswith(text[-12:]) and "...(truncated)..." in cut
    assert truncate_middle(text, 0) == text


def test_observation_notes_signal_and_reset():
    killed = ExecutionResult(stdout="partial", stderr="", exit_code=-11, signal="SIGSEGV")
    assert killed.error and killed.observation(256) == "partial\nProcess killed by signal SIGSEGV"
    reset = ExecutionResult(stdout="", stderr="", exit_code=None, timed_out=True, state_reset=True)
    assert reset.observation(256) == ("TimeoutError: execution exceeded the time limit\n"
                                      "(the interpreter was restarted; variables from earlier calls were lost)")


def test_add_print_of_last_expression_source_rewrite():
    namespace: dict = {}
    printed = []
    namespace["print"] = lambda *args: printed.append(args)
    exec(add_print_of_last_expression("x = 2\nx + 1"), namespace)
    assert printed == [(3,)]
    assert add_print_of_last_expression("print(1)") == "print(1)"
    assert add_print_of_last_expression("def (") == "def ("


# ------------------------------------------------------------------------------ isolation and fallback


@needs_bwrap
def test_isolation_is_recorded_in_results(sandbox):
    result = sandbox.run("1")
    assert result.isolation in ("bwrap", "bwrap-userns") and sandbox.isolation == result.isolation
    assert result.metadata["network_isolated"] and result.metadata["filesystem_readonly"]
    assert result.metadata["pid_namespace"]


@needs_bwrap
def test_each_concurrent_call_gets_its_own_process_uid_and_directory(sandbox):
    code = "import os, time\nopen('mine', 'w').write('x')\ntime.sleep(0.4)\nprint(os.getuid(), len(os.listdir('.')))"
    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(lambda _: sandbox.run(code), range(8)))
    assert all(r.exit_code == 0 for r in results), [r.stderr for r in results]
    uids = [int(r.stdout.split()[0]) for r in results]
    mounts = len(INTERPRETER_MOUNTS) if sandbox.isolation != "rlimits" else 0
    assert [r.stdout.split()[1] for r in results] == [str(1 + mounts)] * 8  # no shared working directory
    if sandbox.isolation == "bwrap":
        assert len(set(uids)) == 8 and all(uid >= sandbox.config.sandbox_uid_base for uid in uids)


def test_calls_run_concurrently(sandbox):
    started = time.monotonic()
    with ThreadPoolExecutor(6) as pool:
        results = list(pool.map(lambda i: sandbox.run(f"import time\ntime.sleep(1.0)\n{i}"), range(6)))
    assert [r.stdout for r in results] == [f"{i}\n" for i in range(6)]
    assert time.monotonic() - started < 4.0  # 6 s if serialized


@pytest.fixture
def fresh_plans(monkeypatch):
    monkeypatch.setattr(sandbox_module, "_plans", {})
    monkeypatch.setattr(sandbox_module, "_warned", set())


def test_rlimits_fallback_warns_and_records_it(temp_root, fresh_plans):
    sandbox = PythonSandbox(SandboxConfig(timeout_s=1.0, isolation="rlimits", temp_root=str(temp_root)))
    with pytest.warns(RuntimeWarning, match="SANDBOX WITHOUT NAMESPACES"):
        result = sandbox.run("6 * 7")
    assert result.stdout == "42\n" and result.isolation == "rlimits"
    assert result.metadata["isolation"] == "rlimits" and not result.metadata["network_isolated"]
    started = time.monotonic()
    looping = sandbox.run("import signal\nsignal.signal(signal.SIGALRM, signal.SIG_IGN)\nwhile True: pass")
    assert looping.timed_out and time.monotonic() - started < 3.0
    memory = sandbox.run("bytearray(8 << 30)")
    assert "MemoryError" in memory.stderr
    assert list(temp_root.iterdir()) == []
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # warned once per process, not per call
        sandbox.run("1")


def test_bwrap_required_but_missing_is_an_error(fresh_plans, monkeypatch):
    monkeypatch.setattr(sandbox_module.shutil, "which", lambda name: None)
    with pytest.raises(RuntimeError, match="isolation='bwrap' but bubblewrap"):
        PythonSandbox(SandboxConfig(isolation="bwrap")).run("1")


def test_auto_without_bwrap_falls_back_loudly(fresh_plans, monkeypatch, temp_root):
    monkeypatch.setattr(sandbox_module.shutil, "which", lambda name: None)
    with pytest.warns(RuntimeWarning, match="not installed"):
        result = PythonSandbox(SandboxConfig(temp_root=str(temp_root))).run("1 + 1")
    assert result.isolation == "rlimits" and result.stdout == "2\n"


def test_bwrap_that_cannot_start_falls_back_loudly(fresh_plans, monkeypatch, temp_root):
    # e.g. a container that forbids namespaces: bwrap exists but exits with an error.
    monkeypatch.setattr(sandbox_module.shutil, "which", lambda name: "/bin/false" if name == "bwrap" else None)
    with pytest.warns(RuntimeWarning, match="bubblewrap cannot create namespaces here"):
        result = PythonSandbox(SandboxConfig(temp_root=str(temp_root))).run("1 + 1")
    assert result.isolation == "rlimits" and result.stdout == "2\n"
    with pytest.raises(RuntimeError, match="cannot create namespaces here"):
        monkeypatch.setattr(sandbox_module, "_plans", {})
        PythonSandbox(SandboxConfig(isolation="bwrap")).run("1")


def test_invalid_isolation_value():
    with pytest.raises(ValueError, match="isolation='container'"):
        PythonSandbox(SandboxConfig(isolation="container")).run("1")


def test_sandbox_is_thread_safe_under_mixed_load(sandbox):
    codes = ["1 + 1", "1 / 0", "print('x' * 100000)", "import time\ntime.sleep(0.2)\n'slept'"]
    expected = [lambda r: r.stdout == "2\n", lambda r: "ZeroDivisionError" in r.stderr,
                lambda r: len(r.stdout) == 100001, lambda r: r.stdout == "'slept'\n"]
    errors = []

    def worker(index: int) -> None:
        for round_ in range(3):
            k = (index + round_) % 4
            result = sandbox.run(codes[k])
            if not expected[k](result):
                errors.append((codes[k], result))

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []


def test_code_tests_of_the_code_reward_run_on_this_sandbox(sandbox):
    from sod_trainer.rewards import parse_tests, run_code_tests

    tests = parse_tests([{"input": "3 4\n", "output": "7\n"}, {"input": "10 -2\n", "output": "8"}])
    good = "a, b = map(int, input().split())\nprint(a + b)"
    assert [o.status for o in run_code_tests(good, tests, sandbox)] == ["passed", "passed"]
    wrong = "a, b = map(int, input().split())\nprint(a - b)"
    assert run_code_tests(wrong, tests, sandbox)[0].status == "wrong_answer"
    slow = "while True: pass"
    quick = PythonSandbox(SandboxConfig(timeout_s=0.5, temp_root=sandbox.config.temp_root))
    assert run_code_tests(slow, tests, quick)[0].status == "timeout"


def test_sod_env_reports_the_isolation_and_why(fresh_plans, monkeypatch):
    from sod_trainer.cli import environment_info

    info = environment_info()
    if shutil.which("bwrap") is not None:
        assert info["Sandbox isolation"] in ("bwrap", "bwrap-userns")
        assert info["Sandbox filesystem"].startswith("allowlist, read-only: /usr")
        assert info["Sandbox seccomp"] == "on" or info["Sandbox seccomp"].startswith("off (")
        assert info["Sandbox limits"].startswith(("cgroup v1", "cgroup v2", "rlimits per process only (no cgroup: "))
    monkeypatch.setattr(sandbox_module, "_plans", {})
    monkeypatch.setattr(sandbox_module.shutil, "which", lambda name: None)
    fallback = environment_info()
    assert fallback["Sandbox isolation"].startswith("rlimits (NOT ISOLATED: bubblewrap (bwrap) is not installed")
    assert fallback["Sandbox seccomp"].startswith("off (")
