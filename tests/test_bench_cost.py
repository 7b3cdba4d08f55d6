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
    results = {kind: bench.child(kind, point, 1024, batch_path, 1) for kind in bench.TRAINERS}
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
    point_result = {"axis": "length", "point": point, "results": results, "ratios": bench.ratios(results)}
    assert {"time_sod_over_grpo_plus_teacher", "memory_sod_over_distillation"} <= set(point_result["ratios"])
    met = bench.targets([point_result])
    assert set(met) >= {"memory_le_1.2x_grpo_every_length", "time_le_grpo_plus_teacher_forward_every_length"}
    bench.plot([point_result], tmp_path / "curves.png")
    assert (tmp_path / "curves.png").stat().st_size > 10_000


def test_rollout_comparison_runs_the_same_trl_environment_through_both_loops():
    bench = _load("bench_rollout_vs_trl")
    out = bench.run(prompts=1, group=2, filler=0, rounds=1, hidden=32)
    assert out["same_sampled_tokens"], "both rollouts must sample the same scripted tokens"
    assert out["assistant_turns"] == bench.TURNS and out["observation_tokens"] > 0
    for kind in ("sod", "trl_grpo"):
        assert out[kind]["tokens_per_s_cpu"] > 0 and len(out[kind]["cpu_s"]) == 1
