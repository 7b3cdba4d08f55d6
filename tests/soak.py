"""The soak run of issue 7: SODTrainer on the toy world while ~10 % of tool calls are hostile programs.

Run by ``tests/test_soak.py`` in a fresh interpreter (so that its resident memory and its child
processes are its own, and its ``TMPDIR`` is a dedicated empty directory)::

    python tests/soak.py REPORT_JSON --steps 200 --marker sod-soak-<uuid> --output-dir DIR

:class:`HostileToolEnvironment` wraps the toy world's Python tool: each tool call is, with
probability ``rate`` (drawn from a per-environment seeded RNG), replaced by one of
:data:`HOSTILE_PROGRAMS`. Every hostile call is recorded (its kind, what the sandbox returned, how
long it took, and which processes carrying the call's marker were still alive right after it
returned). A callback records per training step the trainer's resident memory, open file
descriptors, threads and the logged metrics. The report (JSON) also lists the run's descendant
processes after ``trainer.close()``. The assertions are in ``tests/test_soak.py``.
"""

from __future__ import annotations

import argparse
import gc
import itertools
import json
import math
import os
import random
import sys
import threading
import time
from pathlib import Path
from typing import Any

from sod_trainer.environments import PythonToolEnvironment, ToolEnvironment, ToolResult
from sod_trainer.environments.sandbox import PythonSandbox, SandboxConfig

# Each program carries ``{marker}`` (unique per call) in the command line of every process it
# execs, so that a survivor can be found in /proc. Forked (not exec'd) children share the
# interpreter's command line instead, which names the trainer (``'parent': <pid>``).
HOSTILE_PROGRAMS: dict[str, str] = {
    # the in-process TimeoutError stops it
    "infinite_loop": "n = 0\nwhile True:\n    n += 1\n",
    # ignores every catchable signal and the in-process alarm: only SIGKILL of the tree stops it
    "stubborn_loop": (
        "import signal\n"
        "for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGALRM, signal.SIGHUP):\n"
        "    signal.signal(sig, signal.SIG_IGN)\n"
        "while True:\n"
        "    pass\n"
    ),
    # 8 GiB at once, then 64 MiB blocks, touched, until the address-space limit says no
    "memory_bomb": (
        "hoard = []\n"
        "try:\n"
        "    hoard.append(bytearray(8 << 30))\n"
        "except MemoryError:\n"
        "    pass\n"
        "while True:\n"
        "    hoard.append(b'x' * (64 << 20))\n"
    ),
    # every process forks forever (the process limit stops it; the namespace kill ends the rest)
    "fork_bomb": "import os\nwhile True:\n    os.fork()\n",
    # spawns sleeping interpreters until spawning fails
    "spawn_storm": (
        "import subprocess, sys\n"
        "children = []\n"
        "while True:\n"
        "    children.append(subprocess.Popen([sys.executable, '-S', '-c', 'import time; time.sleep(3600)',"
        " '{marker}'], stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))\n"
    ),
    # a classic double-fork daemon (new session, stdio on /dev/null) that outlives the call's main process
    "daemon": (
        "import os, sys\n"
        "if os.fork() == 0:\n"
        "    os.setsid()\n"
        "    if os.fork() == 0:\n"
        "        null = os.open(os.devnull, os.O_RDWR)\n"
        "        for fd in (0, 1, 2):\n"
        "            os.dup2(null, fd)\n"
        "        os.execv(sys.executable, [sys.executable, '-S', '-c',"
        " 'import time\\nwhile True: time.sleep(1)', '{marker}'])\n"
        "    os._exit(0)\n"
        "os.wait()\n"
        "print('daemon started')\n"
    ),
    # 200 MiB to stdout
    "huge_output": (
        "import sys\n"
        "chunk = 'x' * (1 << 20)\n"
        "for _ in range(200):\n"
        "    sys.stdout.write(chunk)\n"
        "print('end of flood')\n"
    ),
    # issue 15: 1,500 nested directories, to break the clean-up (it used to raise RecursionError out of run_code)
    "deep_tree": (
        "import os\n"
        "fd = os.open('.', os.O_RDONLY)\n"
        "for _ in range(1500):\n"
        "    os.mkdir('d' * 100, dir_fd=fd)\n"
        "    child = os.open('d' * 100, os.O_RDONLY, dir_fd=fd)\n"
        "    os.close(fd)\n"
        "    fd = child\n"
        "print('deep tree made')\n"
    ),
    # issue 15: three forked children hold 200 MiB each, under the per-process limit, over memory_mb (512) together
    "memory_split": (
        "import os, time\n"
        "children = []\n"
        "for _ in range(3):\n"
        "    pid = os.fork()\n"
        "    if pid == 0:\n"
        "        hoard = b'x' * (200 << 20)\n"
        "        time.sleep(60)\n"
        "        os._exit(0)\n"
        "    children.append(pid)\n"
        "for pid in children:\n"
        "    os.waitpid(pid, 0)\n"
        "print('all children held their memory')\n"
    ),
    # issue 15: every way out the second pass closed; exits 0 (a success) only if one of them worked
    "escape_attempts": (
        "import ctypes, os, platform, socket\n"
        "libc = ctypes.CDLL(None, use_errno=True)\n"
        "escaped = []\n"
        "if libc.unshare(0x10000000) == 0:\n"
        "    escaped.append('user namespace')\n"
        "if libc.syscall(425, 4, ctypes.create_string_buffer(120)) >= 0:\n"
        "    escaped.append('io_uring')\n"
        "if platform.machine() == 'x86_64' and libc.syscall(248, b'user', b'{marker}', b'note', 4, ctypes.c_int(-4)) >= 0:\n"
        "    escaped.append('keyring')\n"
        "for family in ('AF_VSOCK', 'AF_NETLINK', 'AF_PACKET'):\n"
        "    try:\n"
        "        socket.socket(getattr(socket, family), socket.SOCK_RAW if family != 'AF_VSOCK' else socket.SOCK_STREAM).close()\n"
        "        escaped.append(family)\n"
        "    except OSError:\n"
        "        pass\n"
        "for path in ('{output_dir}', '/run', '/var', '/home'):\n"
        "    if os.path.exists(path):\n"
        "        escaped.append(path)\n"
        "print('escaped:', escaped)\n"
        "raise SystemExit(0 if escaped else 1)\n"
    ),
    # issue 15 (run in a persistent worker): a fake success line on every descriptor, then a failure
    "forged_status": (
        "import os\n"
        "for fd in range(3, 64):\n"
        "    for line in (b'{\"status\": 0}\\n', b'1 0 ' + b'0' * 64 + b'\\n'):\n"
        "        try:\n"
        "            os.write(fd, line)\n"
        "        except OSError:\n"
        "            pass\n"
        "raise ValueError('this cell failed')\n"
    ),
}
PERSISTENT_KINDS = {"forged_status"}  # run in a persistent worker of their own, not the stateless sandbox

# What a contained hostile call looks like, per kind (checked by tests/test_soak.py):
#   error: the tool result is a failure; timed_out: it hit the deadline;
#   truncated_or_timed_out: the output was cut (or the flood was stopped at the deadline).
# For every kind: it returns within the deadline plus slack, and no process of it is left.
EXPECTED: dict[str, str] = {
    "infinite_loop": "timed_out",
    "stubborn_loop": "timed_out",
    "memory_bomb": "error",
    "fork_bomb": "error",
    "spawn_storm": "error",
    "daemon": "returned",  # its main process exits 0; the daemon must be gone when the call returns
    "huge_output": "truncated_or_timed_out",
    "deep_tree": "returned",  # exits 0; the check is that the call returns and nothing of it is left
    "memory_split": "error",  # the sandbox is killed as a whole at memory_mb
    "escape_attempts": "error",  # exits 1 when every attempt was refused
    "forged_status": "error",  # the forged line is rejected: the cell is an error, not a success
}


def processes_with(marker: str, exclude: int | None = None) -> list[str]:
    """Processes whose command line contains ``marker`` (our own and ``exclude`` left out)."""
    needle = marker.encode()
    found = []
    me = os.getpid()
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) in (me, exclude):
            continue
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as handle:
                cmdline = handle.read()
        except OSError:
            continue
        if needle in cmdline:
            text = cmdline.replace(b"\0", b" ").decode(errors="replace")
            found.append(f"pid {entry}: {text[:160]}")
    return found


def resident_mib() -> dict[str, float]:
    """Resident memory of this process, MiB: ``rss`` (psutil, else VmRSS) and its anonymous and
    file-backed parts (``/proc/self/status``; the file-backed part shrinks and grows with the page cache)."""
    status = {}
    for line in Path("/proc/self/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "RssAnon", "RssFile"):
            status[key] = int(value.split()[0]) / 1024
    try:
        import psutil

        rss = psutil.Process().memory_info().rss / 2**20
    except ImportError:
        rss = status.get("VmRSS", 0.0)
    return {"rss_mib": round(rss, 2), "anon_mib": round(status.get("RssAnon", 0.0), 2),
            "file_mib": round(status.get("RssFile", 0.0), 2)}


class Ledger:
    """Counts and records tool calls; shared by every environment of the run (thread-safe)."""

    def __init__(self, marker: str, output_dir: str = "/nonexistent"):
        self.marker = marker
        self.output_dir = output_dir
        self.lock = threading.Lock()
        self.ids = itertools.count()
        self.step = 0
        self.tool_calls = 0
        self.tool_errors = 0
        self.hostile: list[dict[str, Any]] = []

    def record(self, result: ToolResult, hostile: dict[str, Any] | None) -> None:
        with self.lock:
            if result.tool_called:
                self.tool_calls += 1
                self.tool_errors += bool(result.error)
            if hostile is not None:
                self.hostile.append(hostile)


class HostileToolEnvironment(ToolEnvironment):
    """Wraps a tool environment; replaces a seeded share ``rate`` of its tool calls by hostile programs."""

    def __init__(self, inner: PythonToolEnvironment, rng: random.Random, rate: float, ledger: Ledger):
        self.inner = inner
        self.rng = rng
        self.rate = rate
        self.ledger = ledger

    @property
    def stop_strings(self) -> tuple[str, ...]:
        return self.inner.stop_strings

    @property
    def step_timeout_s(self) -> float | None:  # the rollout engine's deadline for one step, where it has one
        return getattr(self.inner, "step_timeout_s", 300.0)

    def reset(self, **row: Any) -> str | None:
        return self.inner.reset(**row)

    def step(self, turn_text: str) -> ToolResult:
        try:
            code = self.inner.parser(turn_text)
        except ValueError:
            code = None
        if code is None or self.rng.random() >= self.rate:
            result = self.inner.step(turn_text)
            self.ledger.record(result, None)
            return result
        kind = self.rng.choice(sorted(HOSTILE_PROGRAMS))
        marker = f"{self.ledger.marker}-{next(self.ledger.ids)}"
        program = HOSTILE_PROGRAMS[kind].replace("{marker}", marker).replace("{output_dir}", self.ledger.output_dir)
        started = time.monotonic()
        if kind in PERSISTENT_KINDS:
            worker = PythonToolEnvironment(sandbox=self.inner.sandbox, persistent=True,
                                           max_tool_response_chars=self.inner.max_tool_response_chars)
            try:
                worker.step("```python\nx = 1\n```")  # a cell before: the forgery has a history to shift
                result = worker.step(f"```python\n{program}```")
            finally:
                worker.close()
        else:
            result = self.inner.step(f"```python\n{program}```")
        elapsed = time.monotonic() - started
        survivors = processes_with(marker)  # the sandbox promises: nothing of the call is left once it returns
        metadata = result.metadata
        self.ledger.record(result, {
            "kind": kind, "step": self.ledger.step, "error": bool(result.error),
            "timed_out": bool(metadata.get("timed_out")), "exit_code": metadata.get("exit_code"),
            "signal": metadata.get("signal"), "output_truncated": bool(metadata.get("output_truncated")),
            "memory_exceeded": bool(metadata.get("memory_exceeded")),
            "isolation": metadata.get("isolation"), "seconds": round(elapsed, 3),
            "observation_chars": len(result.observation or ""), "observation_tail": (result.observation or "")[-80:],
            "survivors": survivors,
        })
        return result

    def close(self) -> None:
        self.inner.close()


def hostile_environment_factory(sandbox: PythonSandbox, ledger: Ledger, rate: float, seed: int,
                                max_tool_response_chars: int = 256):
    counter = itertools.count()

    def make() -> HostileToolEnvironment:
        inner = PythonToolEnvironment(sandbox=sandbox, max_tool_response_chars=max_tool_response_chars)
        return HostileToolEnvironment(inner, random.Random(seed * 1_000_003 + next(counter)), rate, ledger)

    return make


def run(args: argparse.Namespace) -> dict[str, Any]:
    import psutil
    import torch
    from transformers import TrainerCallback
    from transformers.trainer_callback import PrinterCallback

    from sod_trainer import SODConfig, SODTrainer
    from sod_trainer.toy.models import TEACHER_DIR, load_teacher
    from sod_trainer.toy.student import cold_start_student
    from sod_trainer.toy.tasks import build_dataset, load_toy_tokenizer, toy_reward

    started = time.monotonic()
    torch.set_num_threads(1)  # a 2 M-parameter model is overhead-bound; the tool processes need the cores
    me = psutil.Process()
    # never run unprotected; 512 MiB, so that three children of 200 MiB are over it (the memory_split kind)
    sandbox_config = SandboxConfig(timeout_s=args.tool_timeout, isolation="bwrap", memory_mb=512)
    sandbox = PythonSandbox(sandbox_config)
    isolation = sandbox.isolation

    tokenizer = load_toy_tokenizer(TEACHER_DIR)
    teacher = load_teacher(TEACHER_DIR).float().eval()
    student, _ = cold_start_student(teacher, tokenizer, num_trajectories=32, steps=4, batch_size=8, seed=1)
    student.train()
    batch = args.prompts_per_step * args.num_generations
    config = SODConfig(
        output_dir=args.output_dir, max_steps=args.steps, per_device_train_batch_size=batch,
        num_generations=args.num_generations, learning_rate=3e-4, lr_scheduler_type="constant", warmup_steps=0,
        max_completion_length=320, max_tool_calling_iterations=6, tool_workers=4, temperature=1.0,
        logging_steps=1, save_strategy="no", report_to=[], use_cpu=True, seed=args.seed, disable_tqdm=True,
        bf16=False, fp16=False, max_prompt_length=None, dataloader_num_workers=0,
    )
    ledger = Ledger(args.marker, os.path.abspath(args.output_dir))
    curve: list[dict[str, Any]] = []
    logs_by_step: dict[int, dict[str, Any]] = {}

    def say(message: str) -> None:
        print(f"[soak +{time.monotonic() - started:6.1f}s] {message}", file=sys.stderr, flush=True)

    class Record(TrainerCallback):
        def on_step_begin(self, args_, state, control, **kwargs):
            ledger.step = state.global_step + 1

        def on_log(self, args_, state, control, logs=None, **kwargs):
            if logs and "loss" in logs:
                logs_by_step[state.global_step] = dict(logs)

        def on_step_end(self, args_, state, control, **kwargs):
            with ledger.lock:
                hostile, calls, errors = len(ledger.hostile), ledger.tool_calls, ledger.tool_errors
            entry = {"step": state.global_step, "seconds": round(time.monotonic() - started, 1),
                     **resident_mib(), "open_fds": me.num_fds(),
                     "threads": me.num_threads(), "tool_calls": calls, "tool_errors": errors, "hostile": hostile}
            curve.append(entry)
            if state.global_step % 10 == 0 or state.global_step == 1:
                say(f"step {state.global_step}/{args.steps}: RSS {entry['rss_mib']:.1f} MiB, "
                    f"{calls} tool calls ({errors} failed), {hostile} hostile")

    say(f"isolation {isolation}; TMPDIR {os.environ.get('TMPDIR')}; {args.steps} steps x {batch} rollouts, "
        f"hostile rate {args.rate:.0%}, tool timeout {args.tool_timeout:g} s")
    trainer = SODTrainer(
        model=student, teacher_model=teacher, args=config,
        train_dataset=build_dataset(args.prompts_per_step * args.steps, seed=args.seed, split="train"),
        processing_class=tokenizer, reward_funcs=[toy_reward], callbacks=[Record()],
        environment_factory=hostile_environment_factory(sandbox, ledger, args.rate, args.seed),
    )
    trainer.remove_callback(PrinterCallback)
    try:
        trainer.train()
    finally:
        trainer.close()
    del trainer
    gc.collect()
    for entry in curve:
        logs = logs_by_step.get(entry["step"], {})
        for key in ("loss", "tools/failure_frequency", "tools/call_frequency", "skipped_updates"):
            if key in logs:
                entry[key] = logs[key]
    descendants = []
    for child in me.children(recursive=True):
        try:
            descendants.append(f"pid {child.pid} {child.status()}: {' '.join(child.cmdline())[:160]}")
        except psutil.NoSuchProcess:
            continue
    return {
        "pid": os.getpid(), "isolation": isolation, "steps": args.steps, "rollouts_per_step": batch,
        "rate": args.rate, "tool_timeout_s": args.tool_timeout, "kill_grace_s": sandbox_config.kill_grace_s,
        "max_tool_response_chars": 256, "sandbox_uid_base": sandbox_config.sandbox_uid_base,
        "seconds": round(time.monotonic() - started, 1), "curve": curve, "hostile": ledger.hostile,
        "tool_calls": ledger.tool_calls, "tool_errors": ledger.tool_errors, "descendants": descendants,
        "losses_finite": bool(curve) and all(isinstance(e.get("loss"), float) and math.isfinite(e["loss"])
                                             for e in curve),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("report", help="where the JSON report goes")
    parser.add_argument("--output-dir", required=True, help="the trainer's output_dir (nothing is saved)")
    parser.add_argument("--marker", required=True, help="unique string carried by the hostile processes")
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--rate", type=float, default=0.10, help="share of tool calls replaced")
    parser.add_argument("--tool-timeout", type=float, default=1.0)
    parser.add_argument("--prompts-per-step", type=int, default=2)
    parser.add_argument("--num-generations", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    report = run(args)
    Path(args.report).write_text(json.dumps(report, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
