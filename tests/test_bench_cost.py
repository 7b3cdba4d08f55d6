"""The cost benchmarks (issue 18) run at a tiny size, so the scripts cannot rot: log-probs vs TRL's fused LM head,
cost curves vs TRL's trainers, and the memory-capped child runner they share."""

from __future__ import annotations

import importlib.util
import json
import statistics
import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


def _load(name: str):
    if str(BENCHMARKS) not in sys.path:
        sys.path.insert(0, str(BENCHMARKS))
    spec = importlib.util.spec_from_file_location(f"_bench_{name}", BENCHMARKS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_limited_child_reports_oom_instead_of_taking_the_machine():
    common = _load("common")
    argv = [sys.executable, "-c", "x = bytearray(3 * 2**30); print('RESULT {}')"]
    out = common.run_limited_child(argv, limit_gib=1.0, timeout=60)
    assert out["oom"] is True and out["limit_gib"] == 1.0
    ok = common.run_limited_child([sys.executable, "-c", "print('RESULT {\"a\": 1}')"], limit_gib=1.0, timeout=60)
    assert ok == {"a": 1}


def test_our_logprobs_match_trls_fused_head_and_are_measured():
    bench = _load("bench_logprobs_vs_trl")
    check = bench.correctness(vocab=2048, tokens=96, hidden=32)
    assert check["match"], check
    assert check["max_abs_logp_difference"] < 1e-4 and check["same_parameters_get_grads"]
    timed = bench.timing(vocab=2048, tokens=96, hidden=32, rounds=1, with_entropy=True)
    for part in ("forward", "backward"):
        assert timed[part]["sod"]["median"] > 0 and timed[part]["trl"]["median"] > 0
        assert timed[part]["sod_over_trl"]["ratio_of_medians"] > 0
    memory = bench.child("trl", "train+entropy", 96, 2048, 32)
    assert memory["extra_peak_mib"] >= 0 and memory["tokens"] == 96


def test_cost_curve_children_replay_sods_trajectories_for_trl(tmp_path):
    bench = _load("bench_cost_curves")
    point = dict(length=160, turns=3, group=2)
    batch_path = str(tmp_path / "batch.json")
    # GRPO measured over 2 steps (and 2 teacher forwards), as with ``--repeats trl_grpo=2``
    results = {kind: bench.child(kind, point, 1024, batch_path, 2 if kind == "trl_grpo" else 1)
               for kind in bench.TRAINERS}
    batch = json.loads(Path(batch_path).read_text())
    # the multi-turn structure reached TRL's trainers: tool observations are masked out of the loss
    assert all(0 in mask for mask in batch["assistant_mask"])
    assert results["sod"]["tool_calls"] == 2 and results["sod"]["turns_seen"] == 3
    tokens = {kind: r["tokens_per_step"] for kind, r in results.items()}
    assert len(set(tokens.values())) == 1, tokens  # every trainer saw the same tokens
    parts = results["sod"]["parts_cpu_s"]
    assert parts["teacher_scoring"] > 0 and parts["rollout_glue"] > 0
    assert parts["sod_overhead"] + parts["model_work"] == pytest.approx(statistics.median(results["sod"]["cpu_s"]),
                                                                         rel=1e-6)
    assert results["trl_grpo"]["teacher_forward_cpu_s"] > 0
    assert len(results["trl_grpo"]["cpu_s"]) == 2 and len(results["trl_grpo"]["teacher_forward_cpu_s_all"]) == 2
    point_result = {"axis": "length", "point": point, "results": results, "ratios": bench.ratios(results)}
    assert {"time_sod_over_grpo_plus_teacher", "memory_sod_over_distillation"} <= set(point_result["ratios"])
    low, high = point_result["ratios"]["time_sod_over_grpo_plus_teacher_range"]
    assert low <= point_result["ratios"]["time_sod_over_grpo_plus_teacher"] <= high
    met = bench.targets([point_result])
    assert set(met) >= {"memory_le_1.2x_grpo_every_length", "time_le_grpo_plus_teacher_forward_every_length"}
    bench.plot([point_result], tmp_path / "curves.png")
    assert (tmp_path / "curves.png").stat().st_size > 10_000


def test_cost_curve_repeats_and_runs_of_separate_trainers_merge_into_one_point():
    bench = _load("bench_cost_curves")
    repeats = bench.parse_repeats(["3", "trl_distillation=1"])
    assert repeats == {"*": 3, "trl_distillation": 1}
    with pytest.raises(ValueError, match="trl_grpoo=2"):
        bench.parse_repeats(["trl_grpoo=2"])
    long_point, short_point = dict(length=16384, turns=4, group=2), dict(length=256, turns=4, group=4)
    assert [bench.steps_for(k, long_point, repeats) for k in bench.TRAINERS] == [3, 3, 1]
    assert bench.steps_for("sod", long_point, {}) == 1 and bench.steps_for("sod", short_point, {}) == 2
    skipped = {"skipped": "--skip"}
    # run A: SOD (3 steps) and the distillation trainer; run B, later, GRPO on the same trajectories
    run_a = {"sod": {"cpu_s": [10.0, 12.0, 11.0], "extra_peak_mib": 100.0}, "trl_grpo": skipped,
             "trl_distillation": {"cpu_s": [40.0], "extra_peak_mib": 400.0}}
    run_b = {"sod": skipped, "trl_grpo": {"cpu_s": [20.0, 22.0, 18.0], "teacher_forward_cpu_s": 5.0,
                                          "teacher_forward_cpu_s_all": [5.0, 4.0, 6.0], "extra_peak_mib": 200.0},
             "trl_distillation": skipped}
    points = []
    for results in (run_a, run_b):
        points = bench.merge_points(points, {"axis": "length", "point": long_point, "results": results,
                                             "ratios": bench.ratios(results)})
    assert len(points) == 1 and "skipped" not in str(points[0]["results"])
    ratios = points[0]["ratios"]
    assert ratios["time_sod_over_grpo_plus_teacher"] == pytest.approx(11 / (20 + 5))
    assert ratios["time_sod_over_grpo_plus_teacher_range"] == pytest.approx([10 / (22 + 6), 12 / (18 + 4)])
    assert ratios["memory_sod_over_grpo"] == pytest.approx(0.5)
    assert ratios["memory_sod_over_distillation"] == pytest.approx(0.25)
    assert bench.spread([11.0, 10.0, 12.0]) == "11.00 [10.00-12.00]" and bench.spread([4.0]) == "4.00"
    # the "ratio does not grow" target is judged per axis, on the ratios of medians; an axis not measured is None
    short = {"sod": {"cpu_s": [1.0, 1.1, 0.9]}, "trl_grpo": {"cpu_s": [1.6, 1.5, 1.7], "teacher_forward_cpu_s": 0.4}}
    points = bench.merge_points(points, {"axis": "length", "point": dict(length=1024, turns=4, group=2),
                                         "results": short, "ratios": bench.ratios(short)})
    points.sort(key=lambda p: p["point"]["length"])
    grows = bench.targets(points)["time_ratio_not_growing_1k_to_16k_and_1_to_16_turns"]
    assert grows["met_length"] is True and grows["met_turns"] is None and grows["met"] is None  # 1k 0.50, 16k 0.44
    short["trl_grpo"]["teacher_forward_cpu_s"] = 1.0  # 1k: 1 / 2.6 = 0.38; 16k: 0.44 = 1.14 x that > 1.10 x
    points[0]["ratios"] = bench.ratios(short)
    assert bench.targets(points)["time_ratio_not_growing_1k_to_16k_and_1_to_16_turns"]["met_length"] is False


def test_rollout_comparison_runs_the_same_trl_environment_through_both_loops():
    bench = _load("bench_rollout_vs_trl")
    out = bench.run(prompts=1, group=2, filler=0, rounds=1, hidden=32)
    assert out["same_sampled_tokens"], "both rollouts must sample the same scripted tokens"
    assert out["assistant_turns"] == bench.TURNS and out["observation_tokens"] > 0
    for kind in ("sod", "trl_grpo"):
        assert out[kind]["tokens_per_s_cpu"] > 0 and len(out[kind]["cpu_s"]) == 1


ROOT = BENCHMARKS.parent
GPU_SCRIPT = ROOT / "scripts" / "gpu_cost_curves.sh"


def test_qwen3_shapes_have_the_real_models_parameter_counts():
    bench = _load("bench_cost_curves")
    common = _load("common")
    student, teacher = bench.make_models(common.tokenizer(), bench.VOCAB, 4096,
                                         {"shape": "qwen3-0.6b", "device": "meta", "dtype": "bfloat16"})
    embedding = bench.VOCAB * 1024, bench.VOCAB * 2560
    counts = [sum(p.numel() for p in m.parameters()) for m in (student, teacher)]
    # Qwen3-0.6B: 0.6B parameters, 0.44B without the (tied) embedding; Qwen3-4B: 4.0B, 3.6B without it
    assert counts[0] == pytest.approx(0.596e9, rel=0.01) and counts[0] - embedding[0] == pytest.approx(0.44e9, rel=0.01)
    assert counts[1] == pytest.approx(4.02e9, rel=0.01) and counts[1] - embedding[1] == pytest.approx(3.63e9, rel=0.01)
    assert {str(p.dtype) for m in (student, teacher) for p in m.parameters()} == {"torch.bfloat16"}
    assert student.config.num_key_value_heads == 8 and teacher.config.head_dim == 128


def test_gpu_cost_script_parses_and_its_command_is_the_benchmarks():
    import subprocess

    subprocess.run(["bash", "-n", str(GPU_SCRIPT)], check=True)
    args = subprocess.run(["bash", str(GPU_SCRIPT), "--print-command"], check=True, capture_output=True,
                          text=True).stdout.split("\n")[:-1]
    assert args[0] == "benchmarks/bench_cost_curves.py"
    bench = _load("bench_cost_curves")
    options = bench.build_parser().parse_args(args[1:])
    assert (options.device, options.dtype, options.shape) == ("cuda", "bfloat16", "qwen3-0.6b")
    lengths = {str(p["length"]) for p in bench.FULL_AXES["length"]}
    assert set(options.lengths.split(",")) <= lengths and options.axes == "length"
    for skip in options.skip:
        kind, length = skip.split(":")
        assert kind in bench.TRAINERS and length in lengths
    # the device's minutes: no child starts after the budget, and a started one is cut at its timeout
    assert options.budget_s + options.child_timeout <= 240


def test_gpu_cost_script_runs_end_to_end_on_cpu_in_bf16(tmp_path):
    """The script's whole path (checks, driver, children with the device/dtype/shape setup, JSON, plot), with the
    CPU standing in for the GPU: narrow models, 128 tokens, no install."""
    import os
    import subprocess

    env = dict(os.environ, OUT=str(tmp_path), PYTHON=sys.executable, SOD_COST_DEVICE="cpu", SOD_COST_SHAPE="narrow",
               SOD_COST_LENGTHS="128", SOD_COST_SKIP="trl_distillation:128", SOD_COST_EXTRA="--quick",
               SOD_COST_SKIP_INSTALL="1")
    done = subprocess.run(["bash", str(GPU_SCRIPT)], env=env, capture_output=True, text=True, timeout=300,
                          check=False)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    saved = json.loads((tmp_path / "bench_cost_curves_gpu_quick.json").read_text())
    assert saved["setup"] == {"device": "cpu", "dtype": "bfloat16", "shape": "narrow",
                              "gradient_checkpointing": True}
    (point,) = saved["points"]
    results = point["results"]
    for kind in ("sod", "trl_grpo"):
        assert results[kind]["model_dtype"] == "bfloat16" and results[kind]["setup"]["gradient_checkpointing"]
        assert len(results[kind]["cpu_s"]) == 2 and results[kind]["extra_peak_mib"] >= 0
    assert "skipped" in results["trl_distillation"]
    assert results["sod"]["tokens_per_step"] == results["trl_grpo"]["tokens_per_step"]
    assert "time_sod_over_grpo_plus_teacher" in point["ratios"]
    assert (tmp_path / "cost_curves_gpu.png").stat().st_size > 10_000
    assert "benchmark exit 0" in (tmp_path / "gpu_cost_curves.log").read_text()


def test_cost_curves_time_budget_skips_children_and_cuda_clock_is_used_for_ratios(tmp_path):
    bench = _load("bench_cost_curves")
    out = bench.measure_point("length", dict(length=1024, turns=4, group=2), 1024, None, 1, str(tmp_path),
                              deadline=0.0)
    assert all("budget" in r["skipped"] for r in out["results"].values())
    # on CUDA, step and teacher-forward times are synchronized wall seconds (CPU seconds would be the launches)
    sod = {"clock": "cuda_wall", "cpu_s": [0.5], "wall_s": [2.0], "extra_peak_mib": 10.0}
    grpo = {"clock": "cuda_wall", "cpu_s": [0.5], "wall_s": [3.0], "teacher_forward_s": 1.0,
            "teacher_forward_s_all": [1.0], "extra_peak_mib": 10.0}
    assert bench.ratios({"sod": sod, "trl_grpo": grpo})["time_sod_over_grpo_plus_teacher"] == pytest.approx(0.5)


def test_cost_curve_childrens_cuda_branch_runs_with_the_cuda_calls_stubbed(tmp_path, monkeypatch):
    """The CUDA-only code of a child (full-batch warm-up, synchronized clock, CUDA memory statistics, the teacher
    forward's warm-up, the result's keys) runs here with torch.cuda's calls replaced and the models kept on the CPU;
    the kernels themselves are the GPU run's business."""
    import torch

    bench = _load("bench_cost_curves")
    calls = {"synchronize": 0}
    allocated = iter(range(10**9))

    def synchronize():
        calls["synchronize"] += 1

    monkeypatch.setattr(torch.cuda, "synchronize", synchronize)
    monkeypatch.setattr(torch.cuda, "empty_cache", lambda: None)
    monkeypatch.setattr(torch.cuda, "reset_peak_memory_stats", lambda: None)
    monkeypatch.setattr(torch.cuda, "memory_allocated", lambda: 100 * 2**20)
    monkeypatch.setattr(torch.cuda, "max_memory_allocated", lambda: 350 * 2**20 + next(allocated))
    monkeypatch.setattr(torch.cuda, "max_memory_reserved", lambda: 500 * 2**20)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda: "stub GPU")
    shapes = sys.modules["cost_setup"]  # make_models builds through cost_setup.build_model
    build = shapes.build_model
    monkeypatch.setattr(shapes, "build_model", lambda *a, **k: build(*a[:5], device="cpu", dtype="float32"))
    point = dict(length=160, turns=3, group=2)
    setup = {"device": "cuda", "dtype": "float32", "shape": "narrow", "gradient_checkpointing": False}
    results = {kind: bench.child(kind, point, 1024, str(tmp_path / "batch.json"), 2, setup)
               for kind in ("sod", "trl_grpo")}
    for r in results.values():
        assert r["clock"] == "cuda_wall" and r["device_name"] == "stub GPU" and "max_memory_allocated" in r["memory"]
        assert r["extra_peak_mib"] == pytest.approx(250, abs=1e-3) and r["baseline_cuda_mib"] == 100
        assert len(r["wall_s"]) == 2 and "baseline_rss_mib" not in r
    grpo = results["trl_grpo"]
    assert len(grpo["teacher_forward_s_all"]) == 2 and "teacher_forward_cpu_s" not in grpo  # warm-up pass dropped
    assert results["sod"]["parts_cpu_s"]["teacher_scoring"] > 0 and calls["synchronize"] > 10
    ratio = bench.ratios(results)["time_sod_over_grpo_plus_teacher"]
    assert ratio == pytest.approx(statistics.median(results["sod"]["wall_s"]) / (
        statistics.median(grpo["wall_s"]) + grpo["teacher_forward_s"]))
