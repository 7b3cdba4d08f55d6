"""Soak (issue 7): 200 SODTrainer steps of the toy world in which ~10 % of tool calls are hostile.

The run happens in a fresh interpreter (``tests/soak.py``) whose ``TMPDIR`` is a dedicated empty
directory, so that its resident memory, its processes and its temporary files are its own. At the
end: no process of the run is left (neither a descendant nor anything carrying the run's markers),
``TMPDIR`` is empty, resident memory grew by less than 10 % from step 20 to step 200, every hostile
call came back contained, and training finished every step with finite losses.

Slow (about 10 minutes on a 2-core machine): ``pytest -m slow tests/test_soak.py -s`` prints the
memory curve; ``SOD_SOAK_OUT=DIR`` also copies the curve (JSON) and its plot (PNG) there;
``SOD_SOAK_STEPS=N`` shortens the run for experiments; ``SOD_SOAK_TIMEOUT_S`` (default 1500) bounds it.
"""

from __future__ import annotations

import collections
import json
import os
import re
import shutil
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
from soak import EXPECTED, HOSTILE_PROGRAMS

REPO_ROOT = Path(__file__).resolve().parents[1]
STEPS = int(os.environ.get("SOD_SOAK_STEPS", "200"))
RATE = 0.10
TOOL_TIMEOUT_S = 1.0
SLACK_S = 3.0  # a contained call returns within timeout + kill grace + this (a loaded 2-core machine)
MAX_RSS_GROWTH = 0.10
BASELINE_STEP = min(20, max(1, STEPS // 2))
RUN_TIMEOUT_S = int(os.environ.get("SOD_SOAK_TIMEOUT_S", "1500"))  # raise it on a machine shared with other jobs

pytestmark = [
    pytest.mark.slow,
    pytest.mark.timeout(RUN_TIMEOUT_S + 300),
    pytest.mark.skipif(shutil.which("bwrap") is None, reason="bubblewrap (bwrap) is not installed"),
]


@pytest.fixture(scope="module", autouse=True)
def _namespaces_work():
    # bwrap is installed: the sandbox must use it (the run itself asks for isolation="bwrap", so it
    # would fail rather than run hostile code with rlimits only).
    from sod_trainer.environments.sandbox import isolation_level

    assert isolation_level() in ("bwrap", "bwrap-userns")


def leftover_processes(report: dict, marker: str, tmpdir: Path) -> list[str]:
    """Processes anywhere that belong to the finished run: hostile programs (their marker), bwrap
    (its bind of a per-call directory under the run's TMPDIR), sandboxed interpreters and their
    forks (the bootstrap's ``'parent': <run pid>``), or the per-call uids of the run (as root)."""
    pid = report["pid"]
    low = report["sandbox_uid_base"] + ((pid & 0xFFFF) << 10)
    needles = [marker.encode(), str(tmpdir).encode(), f"'parent': {pid},".encode()]
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == os.getpid():
            continue
        try:
            cmdline = Path(f"/proc/{entry}/cmdline").read_bytes()
            status = Path(f"/proc/{entry}/status").read_text()
        except OSError:
            continue
        uid = int(re.search(r"^Uid:\s+(\d+)", status, re.MULTILINE).group(1))
        if any(needle in cmdline for needle in needles) or low <= uid < low + 1024:
            text = cmdline.replace(b"\0", b" ").decode(errors="replace")
            found.append(f"pid {entry} uid {uid}: {text[:160]}")
    return found


def contained(call: dict, kill_grace_s: float, max_chars: int) -> list[str]:
    """What is wrong with one hostile call's outcome (empty: contained)."""
    problems = []
    if call["survivors"]:
        problems.append(f"processes alive after the call returned: {call['survivors']}")
    if call["seconds"] > TOOL_TIMEOUT_S + kill_grace_s + SLACK_S:
        problems.append(f"took {call['seconds']:.2f} s")
    if call["isolation"] not in ("bwrap", "bwrap-userns"):
        problems.append(f"isolation {call['isolation']}")
    if call["observation_chars"] > max_chars:
        problems.append(f"observation of {call['observation_chars']} chars")
    expected = EXPECTED[call["kind"]]
    if expected == "timed_out" and not (call["timed_out"] and call["error"]):
        problems.append("not stopped by the timeout")
    if expected == "error" and not call["error"]:
        problems.append("came back as a success")
    if expected == "truncated_or_timed_out" and not (call["output_truncated"] or call["timed_out"]):
        problems.append("output neither truncated nor stopped")
    return [f"{call['kind']} at step {call['step']}: {problem}" for problem in problems]


def hostile_summary(hostile: list[dict]) -> dict[str, dict]:
    """Per kind: calls, how they came back, how long they took, processes left right after."""
    summary = {}
    for kind in sorted(HOSTILE_PROGRAMS):
        calls = [call for call in hostile if call["kind"] == kind]
        seconds = [call["seconds"] for call in calls] or [0.0]
        summary[kind] = {
            "calls": len(calls), "tool_errors": sum(call["error"] for call in calls),
            "timed_out": sum(call["timed_out"] for call in calls),
            "output_truncated": sum(call["output_truncated"] for call in calls),
            "mean_seconds": round(sum(seconds) / len(seconds), 3), "max_seconds": max(seconds),
            "survivors": sum(len(call["survivors"]) for call in calls),
            "memory_exceeded": sum(call.get("memory_exceeded", False) for call in calls),
        }
    return summary


def save_curve(report: dict, out_dir: Path) -> list[Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    summary = {key: value for key, value in report.items() if key not in ("hostile",)}
    summary["hostile_by_kind"] = hostile_summary(report["hostile"])
    json_path = out_dir / "soak.json"
    json_path.write_text(json.dumps(summary, indent=1) + "\n")
    paths = [json_path]
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return paths
    curve = report["curve"]
    steps = [entry["step"] for entry in curve]
    baseline = next(entry["rss_mib"] for entry in curve if entry["step"] == BASELINE_STEP)
    fig, axes = plt.subplots(1, 2, figsize=(12, 4))
    axes[0].plot(steps, [entry["rss_mib"] for entry in curve], label="trainer RSS")
    axes[0].plot(steps, [entry["anon_mib"] for entry in curve], label="of which anonymous")
    axes[0].axhline(baseline * (1 + MAX_RSS_GROWTH), color="red", linestyle=":",
                    label=f"step-{BASELINE_STEP} RSS + {MAX_RSS_GROWTH:.0%}")
    axes[0].axvline(BASELINE_STEP, color="gray", linestyle=":")
    axes[0].set(title="Trainer resident memory", xlabel="training step", ylabel="MiB",
                ylim=(0, baseline * 1.25))
    axes[1].plot(steps, [entry["tool_calls"] for entry in curve], label="tool calls")
    axes[1].plot(steps, [entry["tool_errors"] for entry in curve], label="tool failures")
    axes[1].plot(steps, [entry["hostile"] for entry in curve], label="hostile calls")
    axes[1].set(title=f"Tool calls ({RATE:.0%} hostile), cumulative", xlabel="training step")
    for ax in axes:
        ax.legend(fontsize=8)
    fig.tight_layout()
    png_path = out_dir / "soak.png"
    fig.savefig(png_path, dpi=100)
    plt.close(fig)
    return [*paths, png_path]


def test_soak_hostile_tool_calls(tmp_path):
    tmpdir = tmp_path / "tmpdir"  # the run's TMPDIR: the sandboxes' per-call directories go here
    tmpdir.mkdir()
    marker = f"sod-soak-{uuid.uuid4().hex[:12]}"
    report_path = tmp_path / "report.json"
    env = {**os.environ, "TMPDIR": str(tmpdir), "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false",
           # torch's compile cache (created on import by deepspeed, via trl) is not ours: keep it elsewhere
           "TORCHINDUCTOR_CACHE_DIR": str(tmp_path / "inductor"),
           "PYTHONPATH": os.pathsep.join([str(REPO_ROOT / "src"), str(REPO_ROOT / "tests"),
                                          os.environ.get("PYTHONPATH", "")])}
    started = time.monotonic()
    completed = subprocess.run(
        [sys.executable, str(REPO_ROOT / "tests" / "soak.py"), str(report_path), "--steps", str(STEPS),
         "--rate", str(RATE), "--tool-timeout", str(TOOL_TIMEOUT_S), "--marker", marker,
         "--output-dir", str(tmp_path / "trainer")],
        check=False, env=env, cwd=tmp_path, timeout=RUN_TIMEOUT_S, stdin=subprocess.DEVNULL,
    )
    wall_s = time.monotonic() - started
    assert completed.returncode == 0, "the soak run failed (its output is above)"
    report = json.loads(report_path.read_text())
    curve, hostile = report["curve"], report["hostile"]
    by_kind = collections.Counter(call["kind"] for call in hostile)

    # The curve, for CI logs (pytest -s) and the docs.
    print(f"\nsoak: {STEPS} steps x {report['rollouts_per_step']} rollouts in {wall_s:.0f} s "
          f"(run {report['seconds']:.0f} s); {report['tool_calls']} tool calls, {report['tool_errors']} failed, "
          f"{len(hostile)} hostile ({len(hostile) / max(report['tool_calls'], 1):.1%})")
    print("  step   RSS MiB  (anon MiB)  fds  hostile  tool calls  failures")
    for entry in curve:
        if entry["step"] % 10 == 0 or entry["step"] in (1, BASELINE_STEP):
            print(f"  {entry['step']:4d}  {entry['rss_mib']:8.1f}  ({entry['anon_mib']:8.1f})  {entry['open_fds']:3d}  "
                  f"{entry['hostile']:7d}  {entry['tool_calls']:10d}  {entry['tool_errors']:8d}")
    print("  hostile kind     calls  errors  timed out  truncated  over memory  mean s  max s  left alive")
    for kind, row in hostile_summary(hostile).items():
        print(f"  {kind:15s} {row['calls']:6d}  {row['tool_errors']:6d}  {row['timed_out']:9d}  "
              f"{row['output_truncated']:9d}  {row['memory_exceeded']:11d}  {row['mean_seconds']:6.2f}  "
              f"{row['max_seconds']:5.2f}  {row['survivors']:10d}")
    report["wall_s"] = round(wall_s, 1)
    saved = save_curve(report, tmp_path / "soak")
    if os.environ.get("SOD_SOAK_OUT"):
        out = Path(os.environ["SOD_SOAK_OUT"])
        out.mkdir(parents=True, exist_ok=True)
        for path in saved:
            shutil.copy(path, out / path.name)

    # (a) no leaked process: none of the run's descendants, and nothing anywhere that carries its marks
    assert report["descendants"] == [], "processes left after trainer.close()"
    assert leftover_processes(report, marker, tmpdir) == []
    # (b) no temporary file or directory left (the per-call sandbox directories live in TMPDIR)
    assert sorted(str(p.relative_to(tmpdir)) for p in tmpdir.rglob("*")) == []
    # (c) resident memory: < 10 % growth from step 20 to the last step; no file-descriptor leak
    rss = {entry["step"]: entry["rss_mib"] for entry in curve}
    growth = rss[STEPS] / rss[BASELINE_STEP] - 1
    print(f"  RSS step {BASELINE_STEP}: {rss[BASELINE_STEP]:.1f} MiB, step {STEPS}: {rss[STEPS]:.1f} MiB "
          f"({growth:+.1%})")
    assert growth < MAX_RSS_GROWTH, f"RSS grew by {growth:.1%} from step {BASELINE_STEP} to {STEPS}"
    fds = {entry["step"]: entry["open_fds"] for entry in curve}
    assert fds[STEPS] <= fds[BASELINE_STEP] + 4, f"open file descriptors {fds[BASELINE_STEP]} -> {fds[STEPS]}"
    # (d) every hostile call came back contained, and training finished every step with finite losses
    assert set(by_kind) == set(HOSTILE_PROGRAMS), f"not every kind of hostile program ran: {dict(by_kind)}"
    if report["tool_calls"] >= 200:
        assert 0.05 <= len(hostile) / report["tool_calls"] <= 0.15
    problems = [p for call in hostile for p in contained(call, report["kill_grace_s"],
                                                          report["max_tool_response_chars"])]
    assert problems == []
    assert [entry["step"] for entry in curve] == list(range(1, STEPS + 1))
    assert report["losses_finite"]
