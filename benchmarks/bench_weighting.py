"""Benchmark 2: the cost of SOD's step weighting — ``step_weighting="sod"`` vs ``"uniform"``, all else equal.

Two workloads, each a pair of SODTrainers built from the same models and config except ``step_weighting``,
stepped alternately in one process (order swapped every round):

  generate   real HF generation (64 tokens per trajectory, EOS suppressed), tools off, the ``fixed_length``
             segmenter (16-token steps, so 4 steps per trajectory)
  multiturn  a scripted backend that costs nothing + an in-process calculator tool: 4 assistant turns per
             trajectory (3 tool calls, one failing) — the worst case for the ratio, since the step has no
             generation cost to hide behind

Step-level A/B ratios of a 2 % effect are at the edge of what a shared 2-core machine can resolve, so the
benchmark also times every weighting-specific operation inside the real steps (segmentation, error steps,
d_k, w_k, the per-token gather, and the d/w/pattern diagnostics) and reports their share of the step: an
upper bound on what SOD weighting costs, even against an OPD that skipped all of it.

    python benchmarks/bench_weighting.py --quick   # about 1-2 minutes (20 rounds each)
    python benchmarks/bench_weighting.py           # about 3-5 minutes (60 rounds each)
"""

from __future__ import annotations

import argparse
import copy
import functools
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common as C  # noqa: E402
import torch  # noqa: E402

TARGET = 1.02


class OpTimer:
    """Wraps the weighting-specific functions that ``sod_trainer.scoring`` calls and sums their wall time."""

    NAMES = ("step_divergence", "step_weights", "error_steps_for", "per_step_means", "weight_patterns")

    def __init__(self, trainers):
        import sod_trainer.scoring as scoring

        self.totals: dict[str, float] = defaultdict(float)
        self.scoring = scoring
        self.originals = {name: getattr(scoring, name) for name in self.NAMES}
        for name, function in self.originals.items():
            setattr(scoring, name, self._timed(name, function))
        for trainer in trainers:
            segmenter = trainer.scorer.segmenter
            trainer.scorer.segmenter = self._timed("segmenter", segmenter)
        self.gather_original = torch.gather

    def _timed(self, name, function):
        @functools.wraps(function)
        def wrapper(*args, **kwargs):
            start = time.perf_counter()
            try:
                return function(*args, **kwargs)
            finally:
                self.totals[name] += time.perf_counter() - start
        return wrapper

    def take(self) -> dict[str, float]:
        out = dict(self.totals)
        self.totals.clear()
        return out

    def close(self):
        for name, function in self.originals.items():
            setattr(self.scoring, name, function)


def build(workload: str, scheme: str, student, teacher, tok, dataset, output_dir: str):
    from sod_trainer import SODConfig, SODTrainer

    length = 64 if workload == "generate" else 1024
    common = dict(
        output_dir=output_dir, per_device_train_batch_size=8, num_generations=4, max_steps=10_000,
        learning_rate=1e-5, report_to=[], use_cpu=True, save_strategy="no", seed=0, logging_steps=1,
        disable_tqdm=True, max_completion_length=length, grpo_coef=1.0, step_weighting=scheme,
    )
    if workload == "generate":
        args = SODConfig(generation_kwargs={"min_new_tokens": length}, max_tool_calling_iterations=1,
                         step_segmenter="fixed_length", segment_step_tokens=16, **common)
        environment = C.NoToolEnvironment
    else:
        args = SODConfig(max_tool_calling_iterations=8, **common)
        environment = C.CalculatorEnvironment
    trainer = SODTrainer(model=copy.deepcopy(student), teacher_model=copy.deepcopy(teacher), args=args,
                         train_dataset=dataset, processing_class=tok, environment_factory=environment,
                         reward_funcs=[C.constant_reward])
    if workload == "multiturn":
        trainer.rollout_engine.backend = C.ScriptedTurns(tok, turns=3, filler=3)
    return trainer


def run_workload(workload: str, rounds: int) -> dict:
    from datasets import Dataset

    tok = C.tokenizer()
    student = C.tiny_model(tok, hidden=128, layers=2, vocab=2048, seed=0)
    teacher = C.tiny_model(tok, hidden=256, layers=4, vocab=2048, seed=1)
    dataset = Dataset.from_list(C.prompt_rows(256))
    tmp = tempfile.TemporaryDirectory()
    trainers = {scheme: build(workload, scheme, student, teacher, tok, dataset, f"{tmp.name}/{scheme}")
                for scheme in ("sod", "uniform")}
    steppers = {scheme: C.ManualStepper(trainer) for scheme, trainer in trainers.items()}
    timer = OpTimer(trainers.values())
    for stepper in steppers.values():  # warm-up
        stepper.step()
    timer.take()
    op_times: dict[str, list[dict[str, float]]] = {scheme: [] for scheme in trainers}

    def step(scheme):
        def run():
            elapsed = steppers[scheme].step()
            op_times[scheme].append(timer.take())
            return elapsed
        return run

    print(f"\n== workload {workload}")
    times = C.interleave({scheme: step(scheme) for scheme in trainers}, rounds,
                         log=print if rounds <= 20 else None)
    timer.close()
    cpu = {scheme: stepper.cpu_times[1:] for scheme, stepper in steppers.items()}  # [0] is the warm-up
    metrics = {scheme: {k: v[-1] for k, v in trainer._metrics["train"].items() if v}
               for scheme, trainer in trainers.items()}
    for trainer in trainers.values():
        trainer.close()
    tmp.cleanup()

    result = {"times_s": times, "cpu_times_s": cpu, "ratio": C.paired_ratios(times["sod"], times["uniform"]),
              "cpu_ratio": C.paired_ratios(cpu["sod"], cpu["uniform"]),
              "summary": {scheme: C.summary(values) for scheme, values in times.items()},
              "cpu_summary": {scheme: C.summary(values) for scheme, values in cpu.items()}}
    shares = {}
    for scheme in trainers:
        per_step = [sum(ops.values()) for ops in op_times[scheme]]
        by_op = {name: sum(ops.get(name, 0.0) for ops in op_times[scheme]) / len(op_times[scheme])
                 for name in list(OpTimer.NAMES) + ["segmenter"]}
        shares[scheme] = {"weighting_ops_s_per_step": sum(per_step) / len(per_step),
                          "share_of_step": sum(per_step) / sum(times[scheme]), "by_op_s": by_op}
    result["weighting_ops"] = shares
    result["steps_per_trajectory"] = metrics["sod"].get("steps_per_trajectory")
    result["weights_mean_sod"] = metrics["sod"].get("weights/mean")
    return result


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--rounds", type=int, default=None)
    options = parser.parse_args()
    started = time.time()
    plan = {"generate": options.rounds or (20 if options.quick else 60),
            "multiturn": options.rounds or (20 if options.quick else 60)}
    results = {workload: run_workload(workload, rounds) for workload, rounds in plan.items()}
    rows = []
    for workload, r in results.items():
        ratio = r["ratio"]
        ops = r["weighting_ops"]["sod"]
        rows.append([workload, len(r["times_s"]["sod"]), f"{r['summary']['sod']['median']:.3f}",
                     f"{r['summary']['uniform']['median']:.3f}",
                     f"{ratio['median_of_paired_ratios']:.3f} [{ratio['paired_ratio_q1']:.3f}, "
                     f"{ratio['paired_ratio_q3']:.3f}]",
                     f"{r['summary']['sod']['iqr_over_median']:.0%}",
                     f"{r['cpu_ratio']['median_of_paired_ratios']:.3f} [{r['cpu_ratio']['paired_ratio_q1']:.3f}, "
                     f"{r['cpu_ratio']['paired_ratio_q3']:.3f}]",
                     f"{ops['weighting_ops_s_per_step'] * 1e3:.2f} ms ({ops['share_of_step']:.2%})",
                     f"{r['weighting_ops']['uniform']['weighting_ops_s_per_step'] * 1e3:.2f} ms",
                     f"{r['steps_per_trajectory']:.1f}", f"<= {TARGET}"])
    print()
    print(C.table(rows, ["workload", "rounds", "sod step s", "uniform step s", "sod/uniform paired median [IQR]",
                         "IQR/med", "CPU-time ratio [IQR]", "weighting ops per sod step (share)", "same ops, uniform", "steps/traj",
                         "target"]))
    C.save("bench_weighting", {"target": TARGET, "threads": C.THREADS, "workloads": results,
                               "wall_s": time.time() - started}, options.quick)


if __name__ == "__main__":
    main()
