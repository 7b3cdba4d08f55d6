"""Multi-process training on CPU: DDP (gloo), DeepSpeed ZeRO-2 and ZeRO-3 under ``accelerate launch``.

Each configuration runs ``tests/distributed_script.py`` with 2 processes and is compared with a
single-process run of the same script on the same data (a canned multi-turn script per prompt, run
through the real Python tool, so both runs see the same tokens). What must agree, and why it may not
exactly: the losses and grad norms of every step and the final weights. The 2-process runs split each
rollout batch across processes and sum gradients in another order (all-reduce / reduce-scatter), so
they differ from the single-process run by float32 rounding only: ~1e-7 relative measured here; the
tolerance (rtol 1e-4, atol 1e-5) leaves room for other CPUs' BLAS. A real bug in the global-token
normalization or the gradient averaging shows up as a factor of 2.

``--backend hf`` runs real HF generation (greedy) under ZeRO-3, where TRL's ``unwrap_model_for_generation``
gathers the sharded student, and a LoRA student under ZeRO-3: there the comparison is with a
single-process run too (greedy decoding of the same weights, same prompts).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = [pytest.mark.distributed, pytest.mark.timeout(1800)]

SCRIPT = Path(__file__).with_name("distributed_script.py")
SRC = Path(__file__).resolve().parents[1] / "src"
RTOL, ATOL = 1e-4, 1e-5

LAUNCH = {
    "ddp": ["--multi_gpu"],
    "zero2": ["--use_deepspeed", "--zero_stage", "2"],
    "zero3": ["--use_deepspeed", "--zero_stage", "3", "--zero3_init_flag", "false"],
}


def _environment() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(SRC)] + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else []))
    env.setdefault("HF_HUB_OFFLINE", "1")
    env.setdefault("OMP_NUM_THREADS", "1")
    env.pop("CUDA_VISIBLE_DEVICES", None)
    return env


def _stop_tree(pid: int) -> None:
    """Kill a launcher and every process under it (torch's elastic agent starts the ranks in their own sessions)."""
    import psutil

    try:
        parent = psutil.Process(pid)
    except psutil.NoSuchProcess:
        return
    processes = parent.children(recursive=True) + [parent]
    for process in processes:
        try:
            process.kill()
        except psutil.NoSuchProcess:
            pass
    psutil.wait_procs(processes, timeout=30)


def _run(command: list[str], output: Path, timeout: float = 900) -> dict:
    process = subprocess.Popen(command, env=_environment(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                               text=True)
    try:
        log, _ = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        _stop_tree(process.pid)
        log, _ = process.communicate()
        output.with_suffix(".log").write_text(log)
        raise AssertionError(f"{' '.join(command)} did not finish in {timeout} s (hung?):\n{log[-4000:]}") from None
    output.with_suffix(".log").write_text(log)
    assert process.returncode == 0, f"{' '.join(command)} failed ({process.returncode}):\n{log[-6000:]}"
    return json.loads(output.read_text())


def run_single(tmp_path: Path, *extra: str) -> dict:
    output = tmp_path / "single.json"
    return _run([sys.executable, str(SCRIPT), "--output", str(output), *extra], output)


def run_launched(tmp_path: Path, name: str, *extra: str, timeout: float = 900) -> dict:
    accelerate = shutil.which("accelerate", path=os.path.dirname(sys.executable)) or shutil.which("accelerate")
    assert accelerate, "the accelerate command is not installed"
    output = tmp_path / f"{name}.json"
    command = [accelerate, "launch", *LAUNCH[name], "--num_processes", "2", "--num_machines", "1",
               "--mixed_precision", "no", "--dynamo_backend", "no", str(SCRIPT), "--output", str(output), *extra]
    return _run(command, output, timeout=timeout)


def assert_same_training(single: dict, launched: dict, name: str) -> None:
    assert launched["world_size"] == 2, f"{name} ran {launched['world_size']} process(es), not 2"
    assert single["world_size"] == 1
    assert launched["global_step"] == single["global_step"] >= 3
    # the same trajectories were generated (gathered from both processes)
    assert launched["rollouts"] == single["rollouts"]
    for key in ("losses", "grad_norms"):
        assert launched[key] == pytest.approx(single[key], rel=RTOL, abs=ATOL), f"{name} {key}"
    assert launched["rewards"] == pytest.approx(single["rewards"])
    assert launched["steps_per_trajectory"] == pytest.approx(single["steps_per_trajectory"])
    if "trl_metrics" in single:  # gathered over processes, as TRL: the same numbers as one process
        for one, two in zip(single["trl_metrics"], launched["trl_metrics"]):
            assert two == pytest.approx(one), f"{name} TRL metrics"
    assert launched["trainable_checksum"] == pytest.approx(single["trainable_checksum"], rel=RTOL)


@pytest.fixture(scope="module")
def single_scripted(tmp_path_factory):
    return run_single(tmp_path_factory.mktemp("single"))


@pytest.mark.parametrize("name", ["ddp", "zero2", "zero3"])
def test_two_processes_match_a_single_process(name, single_scripted, tmp_path):
    pytest.importorskip("deepspeed") if name.startswith("zero") else None
    launched = run_launched(tmp_path, name)
    if name.startswith("zero"):
        assert launched["zero_stage"] == int(name[-1])
    else:
        assert launched["distributed_type"] == "DistributedType.MULTI_CPU"
    assert_same_training(single_scripted, launched, name)


def test_zero2_with_gradient_accumulation_matches(single_scripted, tmp_path):
    """2 processes x 2 accumulated micro-batches of 2 == 1 process x 1 micro-batch of 8."""
    pytest.importorskip("deepspeed")
    assert_same_training(single_scripted, run_launched(tmp_path, "zero2", "--accumulation", "2"), "zero2+accumulation")


@pytest.mark.parametrize("lora", [False, True], ids=["full", "lora"])
def test_zero3_with_hf_generation(lora, tmp_path):
    """ZeRO-3 sharded student generating with HF generate (gathered), full weights and LoRA."""
    pytest.importorskip("deepspeed")
    extra = ["--backend", "hf"] + (["--lora"] if lora else [])
    single = run_single(tmp_path, *extra)
    launched = run_launched(tmp_path, "zero3", *extra)
    assert launched["zero_stage"] == 3
    assert_same_training(single, launched, f"zero3 hf lora={lora}")


def test_zero3_hf_generation_with_uneven_turns_across_processes(tmp_path):
    """Rank 0's trajectories call the tool twice, rank 1's answer at once (greedy HF generation)."""
    pytest.importorskip("deepspeed")
    extra = ["--backend", "hf", "--uneven-turns"]
    single = run_single(tmp_path, *extra)
    assert max(row[2] for row in single["rollouts"]) == 3 and min(row[2] for row in single["rollouts"]) == 1
    launched = run_launched(tmp_path, "zero3", *extra, timeout=180)
    assert_same_training(single, launched, "zero3 hf uneven turns")


def test_zero3_with_a_teacher_of_another_tokenizer_matches(tmp_path):
    """The cross-tokenizer teacher (issue 19) under ZeRO-3: the sharded teacher is called equally often on both
    processes (one call per micro-batch of rows), and training matches a single process."""
    pytest.importorskip("deepspeed")
    single = run_single(tmp_path, "--cross-tokenizer")
    launched = run_launched(tmp_path, "zero3", "--cross-tokenizer")
    assert single["cross_tokenizer"] and launched["cross_tokenizer"] and launched["zero_stage"] == 3
    assert single["unaligned_tokens"] == [0] * len(single["unaligned_tokens"])
    assert_same_training(single, launched, "zero3 cross-tokenizer teacher")
