"""Benchmark 1: step time and peak memory of SODTrainer vs TRL's DistillationTrainer and GRPOTrainer.

Equal work: the same tiny student (and teacher), the same number of trajectories per optimizer step, the
same completion length for every trajectory (``min_new_tokens = max_completion_length``, so end-of-sequence
never fires), tools off (an environment whose turns never call a tool), fp32, no gradient checkpointing,
one micro-batch per optimizer step. The trainers are stepped in one process, interleaved step by step
(order rotated every round); peak memory is measured in one subprocess per trainer.

Variants:
  sod_opd           SODTrainer, grpo_coef=0 (pure step-weighted distillation)   vs  trl_distillation (beta=1, reverse KL)
  sod_opd_two_pass  the same with the separate π_old pass forced on (what the library did before the on-policy
                    path; shows what that pass costs)
  sod               SODTrainer defaults (GRPO + step-weighted OPD)              vs  trl_grpo (same generations per prompt)

    python benchmarks/bench_vs_trl.py            # full: vocab 2048 and 32768, 20 rounds, memory (about 10 min)
    python benchmarks/bench_vs_trl.py --quick    # vocab 2048, 10 rounds, memory (about 2 minutes)
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common as C  # noqa: E402
import torch  # noqa: E402

VARIANTS = ("sod_opd", "sod_opd_two_pass", "trl_distillation", "sod", "trl_grpo")
BASELINE = {"sod_opd": "trl_distillation", "sod_opd_two_pass": "trl_distillation", "sod": "trl_grpo"}
TARGET = {"sod_opd": 0.8}


def build(kind: str, config: dict, student, teacher, tok, dataset, output_dir: str):
    common = dict(
        output_dir=output_dir, per_device_train_batch_size=config["trajectories"], max_steps=10_000,
        learning_rate=1e-5, report_to=[], use_cpu=True, save_strategy="no", seed=0, logging_steps=1, bf16=False,
        gradient_checkpointing=False, disable_tqdm=True, max_completion_length=config["completion_length"],
        generation_kwargs={"min_new_tokens": config["completion_length"]}, dataloader_num_workers=0,
    )
    student = copy.deepcopy(student)
    if kind.startswith("sod"):
        from sod_trainer import SODConfig, SODTrainer

        pure = kind.startswith("sod_opd")
        args = SODConfig(num_generations=config["num_generations"], grpo_coef=0.0 if pure else 1.0,
                         max_tool_calling_iterations=1, **common)
        kwargs = dict(model=student, teacher_model=copy.deepcopy(teacher), args=args, train_dataset=dataset,
                      processing_class=tok, environment_factory=C.NoToolEnvironment,
                      reward_funcs=None if pure else [C.constant_reward])
        trainer = SODTrainer(**kwargs)
        if kind.endswith("_two_pass"):
            trainer._on_policy = False  # the separate no-grad π_old pass before the loss
        return trainer
    if kind == "trl_distillation":
        from trl import DistillationConfig, DistillationTrainer

        args = DistillationConfig(beta=1.0, temperature=1.0, **common)
        return DistillationTrainer(model=student, teacher_model=copy.deepcopy(teacher), args=args,
                                   train_dataset=dataset, processing_class=tok)
    if kind == "trl_grpo":
        from trl import GRPOConfig, GRPOTrainer

        args = GRPOConfig(num_generations=config["num_generations"], beta=0.0, **common)
        return GRPOTrainer(model=student, reward_funcs=[C.constant_reward], args=args, train_dataset=dataset,
                           processing_class=tok)
    raise ValueError(kind)


def count_work(trainer, stepper) -> dict:
    """One optimizer step, counting the decoder forward passes (and tokens) of the student and the teacher
    outside generation, and the tokens generated."""
    counts = {"student_forward_passes": 0, "student_forward_tokens": 0, "teacher_forward_passes": 0,
              "teacher_forward_tokens": 0, "generated_tokens": 0}
    state = {"generating": False}

    def pre(who):
        def hook(module, args, kwargs):
            if state["generating"]:
                return
            ids = kwargs.get("input_ids", args[0] if args else None)
            counts[f"{who}_forward_passes"] += 1
            counts[f"{who}_forward_tokens"] += int(ids.shape[0] * ids.shape[1]) if ids is not None else 0
        return hook

    student = trainer.model
    handles = [student.get_decoder().register_forward_pre_hook(pre("student"), with_kwargs=True)]
    teacher = getattr(trainer, "teacher_model", None)
    if teacher is not None:
        handles.append(teacher.get_decoder().register_forward_pre_hook(pre("teacher"), with_kwargs=True))
    original = student.generate

    def generate(*args, **kwargs):
        state["generating"] = True
        try:
            out = original(*args, **kwargs)
        finally:
            state["generating"] = False
        width = kwargs["input_ids"].shape[1] if "input_ids" in kwargs else args[0].shape[1]
        counts["generated_tokens"] += int(out.shape[0] * (out.shape[1] - width))
        return out

    had_attribute = "generate" in student.__dict__
    student.generate = generate
    try:
        stepper.step()
    finally:
        for handle in handles:
            handle.remove()
        if had_attribute:
            student.generate = original
        else:
            del student.generate  # back to the class method
    return counts


def peak_memory_child(kind: str, config: dict) -> dict:
    """Runs in a fresh process: peak RSS of two optimizer steps after a warm-up step, largest tensor."""
    from torch.utils._python_dispatch import TorchDispatchMode

    class LargestTensor(TorchDispatchMode):
        def __init__(self):
            super().__init__()
            self.largest = (0, None, None)

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            out = func(*args, **(kwargs or {}))
            for tensor in (out if isinstance(out, (tuple, list)) else (out,)):
                if isinstance(tensor, torch.Tensor) and tensor.numel() * tensor.element_size() > self.largest[0]:
                    self.largest = (tensor.numel() * tensor.element_size(), tuple(tensor.shape), str(func))
            return out

    tok = C.tokenizer()
    student, teacher = make_models(tok, config)
    dataset = make_dataset(config)
    with tempfile.TemporaryDirectory() as tmp:
        trainer = build(kind, config, student, teacher, tok, dataset, tmp)
        stepper = C.ManualStepper(trainer)
        stepper.step()  # warm-up: allocator pools, optimizer state
        with C.PeakRSS() as probe:
            for _ in range(2):
                stepper.step()
        mode = LargestTensor()
        with mode:
            stepper.step()
    size, shape, op = mode.largest
    return {"peak_rss_delta_mib": C.mib(probe.delta), "max_rss_mib": C.mib(C.max_rss_bytes()),
            "largest_tensor_mib": C.mib(size), "largest_tensor_shape": shape, "largest_tensor_op": op}


def make_models(tok, config):
    student = C.tiny_model(tok, hidden=config["student_hidden"], layers=config["student_layers"],
                           vocab=config["vocab"], seed=0)
    teacher = C.tiny_model(tok, hidden=config["teacher_hidden"], layers=config["teacher_layers"],
                           vocab=config["vocab"], seed=1)
    return student, teacher


def make_dataset(config):
    from datasets import Dataset

    return Dataset.from_list(C.prompt_rows(256))


def run_config(config: dict, rounds: int, variants: tuple[str, ...], memory: bool) -> dict:
    tok = C.tokenizer()
    student, teacher = make_models(tok, config)
    dataset = make_dataset(config)
    print(f"\n== config {config['name']}: student {C.count_parameters(student) / 1e6:.2f} M params, teacher "
          f"{C.count_parameters(teacher) / 1e6:.2f} M, vocab {config['vocab']}, {config['trajectories']} "
          f"trajectories x {config['completion_length']} tokens per step")
    tmp = tempfile.TemporaryDirectory()
    trainers = {kind: build(kind, config, student, teacher, tok, dataset, f"{tmp.name}/{kind}") for kind in variants}

    checks = {}
    if "sod_opd" in trainers and "sod_opd_two_pass" in trainers:  # one-pass and two-pass: the same gradient
        rows = [row for row in C.prompt_rows(config["trajectories"] // config["num_generations"], seed=7)
                for _ in range(config["num_generations"])]
        checks["sod_opd"] = C.gradients_match(trainers["sod_opd_two_pass"], trainers["sod_opd"], rows)
        print(f"  gradient check sod_opd (one pass) vs sod_opd_two_pass: {checks['sod_opd']}")

    steppers = {kind: C.ManualStepper(trainer) for kind, trainer in trainers.items()}
    generation_cpu = {kind: [] for kind in trainers}
    for kind, trainer in trainers.items():  # CPU time inside model.generate, per step
        original = trainer.model.generate

        def timed(*args, _original=original, _kind=kind, **kwargs):
            start = time.process_time()
            try:
                return _original(*args, **kwargs)
            finally:
                generation_cpu[_kind].append(time.process_time() - start)

        trainer.model.generate = timed
    work = {}
    for kind, stepper in steppers.items():  # warm-up step, counting the work done
        work[kind] = count_work(trainers[kind], stepper)
    print("  work per step: " + json.dumps(work))
    for kind, stepper in steppers.items():
        stepper.cpu_times.clear()
        generation_cpu[kind].clear()
    times = C.interleave({kind: stepper.step for kind, stepper in steppers.items()}, rounds)
    cpu = {kind: list(stepper.cpu_times) for kind, stepper in steppers.items()}
    # one generate call per step here (one turn, one micro-batch): CPU time of the step outside generation
    rest = {kind: [c - g for c, g in zip(cpu[kind], generation_cpu[kind])] for kind in cpu}

    memory_results = {}
    if memory:
        for kind in variants:
            child = subprocess.run(
                [sys.executable, __file__, "--memory-child", kind, "--config", json.dumps(config)],
                capture_output=True, text=True, timeout=900,
            )
            line = [l for l in child.stdout.splitlines() if l.startswith("MEMORY ")]
            memory_results[kind] = json.loads(line[-1][7:]) if line else {"error": child.stderr[-2000:]}
            print(f"  memory {kind}: {memory_results[kind]}")

    rows, results = [], {}
    for kind in variants:
        stats = C.summary(times[kind])
        cpu_stats = C.summary(cpu[kind])
        entry = {"times_s": times[kind], "cpu_times_s": cpu[kind], "summary": stats, "cpu_summary": cpu_stats,
                 "generation_cpu_s": generation_cpu[kind], "outside_generation_cpu_s": rest[kind],
                 "work": work[kind], "memory": memory_results.get(kind)}
        base = BASELINE.get(kind)
        if base in times:
            entry["vs"] = base
            entry["ratio"] = C.paired_ratios(times[kind], times[base])
            entry["cpu_ratio"] = C.paired_ratios(cpu[kind], cpu[base])
            entry["outside_generation_cpu_ratio"] = C.paired_ratios(rest[kind], rest[base])
            if kind in TARGET:
                entry["target"] = TARGET[kind]
                entry["meets_target_wall"] = entry["ratio"]["median_of_paired_ratios"] <= TARGET[kind]
                entry["meets_target_cpu"] = entry["cpu_ratio"]["median_of_paired_ratios"] <= TARGET[kind]
        if kind in checks:
            entry["gradient_check"] = checks[kind]
        results[kind] = entry
        mem = memory_results.get(kind) or {}
        rows.append([
            kind, stats["median"], f"{stats['iqr_over_median']:.0%}",
            f"{entry['ratio']['median_of_paired_ratios']:.2f} vs {base}" if "ratio" in entry else "-",
            f"{cpu_stats['median']:.3f} ({cpu_stats['iqr_over_median']:.0%})",
            f"{entry['cpu_ratio']['median_of_paired_ratios']:.2f} [{entry['cpu_ratio']['paired_ratio_q1']:.2f}, "
            f"{entry['cpu_ratio']['paired_ratio_q3']:.2f}]" if "ratio" in entry else "-",
            f"<= {TARGET[kind]}" if kind in TARGET else "-",
            f"{statistics.median(generation_cpu[kind]) / cpu_stats['median']:.0%}",
            f"{entry['outside_generation_cpu_ratio']['median_of_paired_ratios']:.2f}" if "ratio" in entry else "-",
            f"{mem.get('peak_rss_delta_mib', float('nan')):.0f}" if mem else "-",
            f"{mem.get('largest_tensor_shape')}" if mem else "-",
            f"{work[kind]['student_forward_passes']}+{work[kind]['teacher_forward_passes']}",
            work[kind]["generated_tokens"],
        ])
    print()
    print(C.table(rows, ["variant", "wall s (median)", "IQR/med", "wall ratio (paired median)", "CPU s (IQR/med)",
                         "CPU ratio [IQR]", "target", "generation share (CPU)", "CPU ratio outside generation",
                         "peak step RSS MiB", "largest tensor", "fwd passes student+teacher", "gen tokens"]))
    for trainer in trainers.values():
        if hasattr(trainer, "close"):
            trainer.close()
    tmp.cleanup()
    return {"config": config, "results": results}


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--rounds", type=int, default=None)
    parser.add_argument("--no-memory", action="store_true")
    parser.add_argument("--variants", default=",".join(VARIANTS))
    parser.add_argument("--memory-child", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--config", default=None, help=argparse.SUPPRESS)
    options = parser.parse_args()
    if options.memory_child:
        print("MEMORY " + json.dumps(peak_memory_child(options.memory_child, json.loads(options.config))))
        return
    base = dict(student_hidden=128, student_layers=2, teacher_hidden=256, teacher_layers=4, trajectories=8,
                num_generations=4, completion_length=64)
    # vocab 2048: the output head's share of the FLOPs (~40 % student, ~15 % teacher) is close to Qwen3-0.6B's
    # and a 4B teacher's; vocab 32768: head-heavy, as a large vocabulary with a small model is
    configs = [dict(base, name="vocab2048", vocab=2048)]
    if not options.quick:
        configs.append(dict(base, name="vocab32768", vocab=32768))
    rounds = options.rounds or (10 if options.quick else 20)
    variants = tuple(v for v in options.variants.split(",") if v)
    started = time.time()
    outputs = [run_config(config, rounds, variants, memory=not options.no_memory) for config in configs]
    C.save("bench_vs_trl", {"rounds": rounds, "threads": C.THREADS, "configs": outputs,
                            "wall_s": time.time() - started}, options.quick)


if __name__ == "__main__":
    main()
