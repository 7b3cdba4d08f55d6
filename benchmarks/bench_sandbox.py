"""Sandbox latency and throughput: a trivial call, stateless and persistent, alone and 64 at once.

    python benchmarks/bench_sandbox.py            # prints a table, writes benchmarks/results/sandbox.json
    python benchmarks/bench_sandbox.py --quick    # fewer calls

Targets (issue 3, on a 2-core machine): stateless trivial-call p50 <= 30 ms and >= 60 calls/s.

The "layers" table (issue 15) shows what each protection costs per stateless call: the same trivial call with
all layers, without the cgroup, without seccomp, and without both (interleaved round by round, so that a
changing load hits every variant alike), and bubblewrap alone (``true`` as the program) with the filesystem
allowlist against the former layout (the host's ``/`` bound read-only).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from sod_trainer.environments.persistent import PersistentPythonSession  # noqa: E402
from sod_trainer.environments.sandbox import PythonSandbox, SandboxConfig  # noqa: E402

TRIVIAL = "1 + 1"


class CpuAccounting:
    """CPU time of this process and everything it starts (bwrap, the sandboxes), from a cgroup-v1
    cpuacct group when one can be created (root): a load-independent cost per call, so the numbers
    mean something on a machine shared with other jobs."""

    root = Path("/sys/fs/cgroup/cpuacct")

    def __init__(self) -> None:
        self.group: Path | None = None
        try:
            group = self.root / f"sod_bench_{os.getpid()}"
            group.mkdir()
            (group / "cgroup.procs").write_text(str(os.getpid()))
            self.group = group
        except OSError:
            pass

    def seconds(self) -> float | None:
        if self.group is None:
            return None
        return int((self.group / "cpuacct.usage").read_text()) / 1e9

    def close(self) -> None:
        if self.group is not None:
            try:
                (self.root / "cgroup.procs").write_text(str(os.getpid()))
                time.sleep(0.2)  # the last sandboxes leave the group as they exit
                self.group.rmdir()
            except OSError:
                pass
            self.group = None


CPU = CpuAccounting()


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))
    return ordered[index]


def summarize(name: str, latencies: list[float], wall_s: float, concurrency: int, cpu_s: float | None) -> dict:
    cpu_ms = None if cpu_s is None else 1000 * cpu_s / len(latencies)
    return {
        "case": name, "concurrency": concurrency, "calls": len(latencies),
        "p50_ms": 1000 * statistics.median(latencies), "p95_ms": 1000 * percentile(latencies, 95),
        "min_ms": 1000 * min(latencies), "mean_ms": 1000 * statistics.fmean(latencies),
        "calls_per_s": len(latencies) / wall_s,
        "cpu_ms_per_call": cpu_ms,  # trainer side + bwrap + sandboxed interpreter
        "idle_machine_calls_per_s": None if not cpu_ms else (os.cpu_count() or 1) * 1000 / cpu_ms,
    }


def cpu_delta(start: float | None) -> float | None:
    now = CPU.seconds()
    return None if start is None or now is None else now - start


def timed(call) -> float:
    start = time.perf_counter()
    result = call()
    elapsed = time.perf_counter() - start
    if result.stdout != "2\n":
        raise RuntimeError(f"unexpected result: {result}")
    return elapsed


def bench_stateless(sandbox: PythonSandbox, calls: int, concurrency: int) -> dict:
    cpu_start = CPU.seconds()
    start = time.perf_counter()
    if concurrency == 1:
        latencies = [timed(lambda: sandbox.run(TRIVIAL)) for _ in range(calls)]
    else:
        with ThreadPoolExecutor(concurrency) as pool:
            latencies = list(pool.map(lambda _: timed(lambda: sandbox.run(TRIVIAL)), range(calls)))
    return summarize("stateless", latencies, time.perf_counter() - start, concurrency, cpu_delta(cpu_start))


def bench_persistent(config: SandboxConfig, calls: int, concurrency: int) -> dict:
    sessions = [PersistentPythonSession(config) for _ in range(concurrency)]
    try:
        start_up = time.perf_counter()
        with ThreadPoolExecutor(concurrency) as pool:  # start the workers (not counted below)
            list(pool.map(lambda s: s.run("0"), sessions))
        start_up = time.perf_counter() - start_up
        per_session = max(1, calls // concurrency)
        cpu_start = CPU.seconds()
        start = time.perf_counter()
        if concurrency == 1:
            latencies = [timed(lambda: sessions[0].run(TRIVIAL)) for _ in range(per_session)]
        else:
            def work(session):
                return [timed(lambda: session.run(TRIVIAL)) for _ in range(per_session)]
            with ThreadPoolExecutor(concurrency) as pool:
                latencies = [x for chunk in pool.map(work, sessions) for x in chunk]
        row = summarize("persistent", latencies, time.perf_counter() - start, concurrency, cpu_delta(cpu_start))
        row["worker_start_s"] = start_up
        return row
    finally:
        for session in sessions:
            session.close()


def bench_layers(calls: int) -> list[dict]:
    """p50 of a trivial stateless call per layer variant, and bwrap alone: allowlist vs. the former ``/`` bind."""
    import warnings

    from sod_trainer.environments.sandbox import _plan_for

    variants = {"all layers": {}, "no cgroup": {"cgroup": "off"}, "no seccomp": {"seccomp": "off"},
                "no seccomp, no cgroup": {"seccomp": "off", "cgroup": "off"}}
    sandboxes = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        for name, extra in variants.items():
            sandboxes[name] = PythonSandbox(SandboxConfig(timeout_s=10.0, **extra))
            for _ in range(3):
                sandboxes[name].run(TRIVIAL)
    plan = _plan_for(SandboxConfig(timeout_s=10.0))
    namespaces = ["--unshare-pid", "--unshare-net", "--unshare-ipc", "--unshare-uts"]
    bwrap_only = {
        "bwrap alone, allowlist": [plan.bwrap_prefix[0], *plan.bwrap_prefix[1:], "/usr/bin/true"],
        "bwrap alone, / read-only (before)": [plan.bwrap_prefix[0], "--ro-bind", "/", "/", *namespaces,
                                             "--dev", "/dev", "--proc", "/proc", "/usr/bin/true"],
    }
    latencies: dict[str, list[float]] = {name: [] for name in [*variants, *bwrap_only]}
    for _ in range(calls):
        for name, sandbox in sandboxes.items():
            latencies[name].append(timed(lambda: sandbox.run(TRIVIAL)))
        for name, argv in bwrap_only.items():
            start = time.perf_counter()
            subprocess.run(argv, check=True)
            latencies[name].append(time.perf_counter() - start)
    return [{"case": name, "calls": len(values), "p50_ms": 1000 * statistics.median(values),
             "p95_ms": 1000 * percentile(values, 95), "min_ms": 1000 * min(values)}
            for name, values in latencies.items()]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=200, help="calls per case")
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--quick", action="store_true", help="50 calls per case")
    parser.add_argument("--output", default=str(Path(__file__).resolve().parent / "results" / "sandbox.json"))
    args = parser.parse_args()
    calls = 50 if args.quick else args.calls

    config = SandboxConfig(timeout_s=10.0)
    sandbox = PythonSandbox(config)
    isolation = sandbox.isolation  # probes once, outside the timings
    for _ in range(5):
        sandbox.run(TRIVIAL)
    load_before = os.getloadavg()
    try:
        rows = [
            bench_stateless(sandbox, calls, 1),
            bench_stateless(sandbox, max(calls, 2 * args.concurrency), args.concurrency),
            bench_persistent(config, calls * 5, 1),
            bench_persistent(config, max(calls, 2 * args.concurrency) * 5, args.concurrency),
        ]
        layers = bench_layers(max(20, calls // 2)) if isolation != "rlimits" else []
    finally:
        CPU.close()
    try:
        bwrap = subprocess.run(["bwrap", "--version"], capture_output=True, text=True).stdout.strip()
    except OSError:
        bwrap = None
    report = {
        "timestamp": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "isolation": isolation, "cpu_count": os.cpu_count(),
        "python": sys.version.split()[0], "platform": platform.platform(), "bwrap": bwrap,
        "load_average_before": load_before, "load_average_after": os.getloadavg(),
        "targets": {"stateless_p50_ms": 30, "stateless_calls_per_s": 60}, "results": rows, "layers": layers,
    }
    header = (f"{'case':<11} {'concurrency':>11} {'calls':>6} {'p50 ms':>8} {'p95 ms':>8} {'min ms':>7} "
              f"{'calls/s':>9} {'CPU ms/call':>12} {'idle calls/s':>13}")
    print(f"sandbox benchmark: isolation={isolation}, {os.cpu_count()} CPUs, load average {load_before[0]:.2f} "
          f"before, {report['load_average_after'][0]:.2f} after")
    print(header)
    print("-" * len(header))
    for row in rows:
        cpu = "n/a" if row["cpu_ms_per_call"] is None else f"{row['cpu_ms_per_call']:.2f}"
        idle = "n/a" if row["idle_machine_calls_per_s"] is None else f"{row['idle_machine_calls_per_s']:.0f}"
        print(f"{row['case']:<11} {row['concurrency']:>11} {row['calls']:>6} {row['p50_ms']:>8.1f} "
              f"{row['p95_ms']:>8.1f} {row['min_ms']:>7.1f} {row['calls_per_s']:>9.1f} {cpu:>12} {idle:>13}")
    print("CPU ms/call: CPU time of the trainer, bwrap and the sandbox per call (cgroup cpuacct); idle calls/s: "
          "what that cost allows on this many idle cores.")
    if layers:
        print(f"\n{'layers (stateless, one at a time, interleaved)':<48} {'calls':>6} {'p50 ms':>8} {'p95 ms':>8} "
              f"{'min ms':>7}")
        for row in layers:
            print(f"{row['case']:<48} {row['calls']:>6} {row['p50_ms']:>8.1f} {row['p95_ms']:>8.1f} {row['min_ms']:>7.1f}")
    Path(args.output).parent.mkdir(parents=True, exist_ok=True)
    Path(args.output).write_text(json.dumps(report, indent=2) + "\n")
    print(f"saved {args.output}")


if __name__ == "__main__":
    main()
