"""How the cost of one training step grows with completion length, tool turns and group size: SODTrainer side by
side with TRL's GRPOTrainer (no teacher: the student's own cost) and TRL's DistillationTrainer, at equal tokens.

What is measured is the *training step on fixed, pre-built trajectories*, not generation: generating 16k tokens
with HF ``generate`` on this CPU would take minutes per point and swamp everything else (rollout cost is
``bench_rollout.py``'s business). The trajectories are multi-turn tool trajectories (``turns - 1`` tool calls to
the in-process calculator, one in three failing, then a final answer), built token-in/token-out by SOD's rollout
engine from a scripted backend (``ScriptedTurns``-style: it returns canned ids instantly); the very same token ids,
with the same mask of tool-observation tokens, are handed to TRL's trainers by replacing their ``_generate`` with
one that returns them (GRPOTrainer then builds its ``tool_mask`` from them exactly as after its tool loop).

Per point and trainer, in a fresh subprocess (address space capped, an over-the-cap point is reported as OOM):
a warm-up step on a 256-token version of the batch, then the measured step(s) — CPU time (one torch thread) and
wall time, and the extra peak RSS of the step over the resident models, optimizer and inputs. The SOD step is
split into its parts (CPU time): the rollout engine's glue (scripted generation, tool calls, observation tokens),
teacher scoring, the rest of batch preparation (rewards, collation, segmentation, advantages, metrics), the loss's
forward pass (the step weights computed inside it counted separately) and the rest (backward, clipping, optimizer).
The GRPO child also times one no-grad teacher forward pass over the same tokens through TRL's fused LM head, for
the target "SOD step <= GRPO step + one teacher forward".

Models: a narrow Qwen3-shaped student (hidden 64, 2 layers) and teacher (hidden 128, 2 layers), vocab 151,936,
built from ``Qwen3Config`` in process; fp32, no gradient checkpointing. Each trainer's step is one optimizer step
on one micro-batch of ``group`` trajectories of one prompt. Axes:

  length  completion 1k, 2k, 4k, 8k, 16k tokens per trajectory, 4 turns, group 2
  turns   1, 4, 16 assistant turns at 1k tokens per trajectory, group 2
  group   4, 8, 16 trajectories at 256 tokens, 4 turns

(the turns and group axes are kept short so that the whole run fits a shared 2-core CPU: one step at 16k x 2
tokens takes minutes per trainer.) By default a point with at most 2,048 tokens per step is measured over 2 steps,
others 1; ``--repeats`` sets the number of measured steps (per trainer if wanted), and then the GRPO child times the
teacher forward as many times. Tables give medians and, with repeats, min-max.

    python benchmarks/bench_cost_curves.py --quick   # vocab 4096, tiny lengths (about a minute)
    python benchmarks/bench_cost_curves.py           # the full curves (tens of minutes on a shared 2-core CPU)
    # endpoints of the length axis, 3 measured steps each (1 for the distillation trainer), batches kept on disk so
    # that a later run can measure another trainer on the same trajectories; then merge the runs
    python benchmarks/bench_cost_curves.py --axes length --lengths 1024,16384 --repeats 3 trl_distillation=1 \
        --workdir /tmp/cost --out bench_cost_curves_r1 --plot none
    python benchmarks/bench_cost_curves.py --report --resume benchmarks/results/bench_cost_curves_r1.json ... \
        --out bench_cost_curves_repeats --plot none

On a GPU (issue 18, item 4; prepared as ``scripts/gpu_cost_curves.sh``): ``--device cuda --dtype bfloat16 --shape
qwen3-0.6b --gradient-checkpointing`` builds a Qwen3-0.6B-shaped student and a Qwen3-4B-shaped teacher (random
weights) on the GPU; times are then synchronized wall seconds, the peak is ``torch.cuda.max_memory_allocated`` over
the measured steps minus what was allocated before them, the warm-up step (and one teacher forward) runs on the full
batch, and no address-space cap is set. ``--child-timeout`` and ``--budget-s`` keep a run inside a device's minutes.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common as C
import torch
from cost_report import forward_times, memory_fit, merge_points, plot, ratios, spread, step_times, targets
from cost_setup import CPU_SETUP, DTYPES, SHAPES, TRAINERS, cuda_clock, make_models

VOCAB = 151_936
WARMUP_TOKENS = 256
FULL_AXES = {
    "length": [dict(length=n, turns=4, group=2) for n in (1024, 2048, 4096, 8192, 16384)],
    "turns": [dict(length=1024, turns=t, group=2) for t in (1, 4, 16)],
    "group": [dict(length=256, turns=4, group=g) for g in (4, 8, 16)],
}
QUICK_AXES = {
    "length": [dict(length=n, turns=2, group=2) for n in (128, 256)],
    "turns": [dict(length=256, turns=t, group=2) for t in (1, 3)],
    "group": [dict(length=128, turns=2, group=g) for g in (2, 4)],
}


# ---------------------------------------------------------------------------------------------- workload
class Scripted(C.ScriptedTurns):
    """``turns`` assistant turns (``turns - 1`` calculator calls, every third failing, then a final answer)
    totalling about ``length`` completion tokens."""

    FILLER = " First, compute the product. Next, add the remainder."

    def __init__(self, tok, length: int, turns: int):
        super().__init__(tok, turns=max(0, turns - 1), filler=1)
        per_filler = len(tok.encode(self.FILLER, add_special_tokens=False))
        calls = max(0, turns - 1)
        texts = []
        for k in range(turns):
            if k < calls:
                code = "print(undefined_name * 7)" if k % 3 == 2 else f"print({123 + k} * {45 + k})"
                texts.append((f"Step {k + 1}.", f"\n```python\n{code}\n```"))
            else:
                texts.append(("The answer is \\boxed{5535}.", ""))
        fixed = sum(len(tok.encode(a + b, add_special_tokens=False)) + 1 for a, b in texts)
        repeats = max(0, (length - fixed - 8 * calls) // (per_filler * turns))
        self.texts = [a + self.FILLER * repeats + b for a, b in texts]
        self.ids = [tok.encode(t, add_special_tokens=False) + [tok.eos_token_id] for t in self.texts]


def common_args(point: dict, output_dir: str, setup: dict | None = None) -> dict:
    setup = {**CPU_SETUP, **(setup or {})}
    return dict(output_dir=output_dir, per_device_train_batch_size=point["group"], max_steps=10_000,
                learning_rate=1e-5, report_to=[], use_cpu=setup["device"] == "cpu", save_strategy="no", seed=0,
                logging_steps=1, bf16=setup["dtype"] == "bfloat16",
                gradient_checkpointing=setup["gradient_checkpointing"], disable_tqdm=True,
                dataloader_num_workers=0, max_completion_length=point["length"] + 1024)


def build_sod(point, student, teacher, tok, dataset, output_dir, setup=None):
    from sod_trainer import SODConfig, SODTrainer

    args = SODConfig(num_generations=point["group"], max_tool_calling_iterations=max(1, point["turns"]),
                     max_prompt_length=None, **common_args(point, output_dir, setup))
    trainer = SODTrainer(model=student, teacher_model=teacher, args=args, train_dataset=dataset,
                         processing_class=tok, environment_factory=C.CalculatorEnvironment,
                         reward_funcs=[C.constant_reward])
    return trainer


def build_trl(kind, point, student, teacher, tok, dataset, output_dir, setup=None):
    if kind == "trl_grpo":
        from trl import GRPOConfig, GRPOTrainer

        args = GRPOConfig(num_generations=point["group"], beta=0.0, **common_args(point, output_dir, setup))
        return GRPOTrainer(model=student, reward_funcs=[C.constant_reward], args=args, train_dataset=dataset,
                           processing_class=tok)
    from trl import DistillationConfig, DistillationTrainer

    args = DistillationConfig(beta=1.0, temperature=1.0, **common_args(point, output_dir, setup))
    return DistillationTrainer(model=student, teacher_model=teacher, args=args, train_dataset=dataset,
                               processing_class=tok)


def fixed_generate(kind: str, trainer, tok, batch: dict):
    """A ``_generate`` for TRL's trainers that returns the pre-built trajectories (same ids as SOD's)."""
    texts = tok.batch_decode([[i for i, m in zip(ids, mask) if m] for ids, mask in
                              zip(batch["completion_ids"], batch["assistant_mask"])], skip_special_tokens=True)

    def generate(prompts):
        n = len(prompts)
        prompt_ids = [list(x) for x in batch["prompt_ids"][:n]]
        completion_ids = [list(x) for x in batch["completion_ids"][:n]]
        tool_mask = [list(x) for x in batch["assistant_mask"][:n]]
        if kind == "trl_grpo":
            completions = [[{"role": "assistant", "content": text}] for text in texts[:n]]
            return prompt_ids, completion_ids, tool_mask, completions, None, {}, None, []
        return prompt_ids, completion_ids, tool_mask, None, []

    trainer._generate = generate


def truncated(batch: dict, tokens: int) -> dict:
    return {"prompt_ids": batch["prompt_ids"], "completion_ids": [x[:tokens] for x in batch["completion_ids"]],
            "assistant_mask": [x[:tokens] for x in batch["assistant_mask"]]}


# ---------------------------------------------------------------------------------------------- SOD's parts
class PartTimer:
    """Seconds spent in the SOD step's parts, by wrapping the methods that do them (``clock``: CPU time, or on
    CUDA a synchronizing wall clock)."""

    def __init__(self, trainer, clock=time.process_time):
        self.clock = clock
        self.totals: dict[str, float] = {}
        self.wrap(trainer, "_generate_and_score", "preparation")
        self.wrap(trainer.rollout_engine, "rollout", "rollout_glue")
        self.wrap(trainer.scorer.teacher, "score", "teacher_scoring")
        self.wrap(trainer, "compute_loss", "loss_forward")
        self.wrap(trainer._on_policy_weighting, "terms", "step_weights")

    def wrap(self, owner, name, label):
        original = getattr(owner, name)

        def timed(*args, **kwargs):
            start = self.clock()
            try:
                return original(*args, **kwargs)
            finally:
                self.totals[label] = self.totals.get(label, 0.0) + self.clock() - start

        setattr(owner, name, timed)

    def take(self, step_cpu: float) -> dict[str, float]:
        t = dict(self.totals)
        self.totals.clear()
        prep, loss = t.get("preparation", 0.0), t.get("loss_forward", 0.0)
        weights = t.get("step_weights", 0.0)
        return {"rollout_glue": t.get("rollout_glue", 0.0), "teacher_scoring": t.get("teacher_scoring", 0.0),
                "other_preparation": prep - t.get("rollout_glue", 0.0) - t.get("teacher_scoring", 0.0),
                "step_weights": weights, "student_forward_and_loss": loss - weights,
                "backward_and_optimizer": step_cpu - prep - loss,
                "sod_overhead": prep - t.get("teacher_scoring", 0.0) + weights,
                "model_work": t.get("teacher_scoring", 0.0) + loss - weights + step_cpu - prep - loss}


# ---------------------------------------------------------------------------------------------- one measurement
def teacher_forward_cpu(teacher, batch: dict, times: int = 1, clock=time.process_time) -> list[float]:
    """Seconds (``clock``: CPU time by default) of ``times`` no-grad teacher passes over the batch's tokens through
    TRL's fused LM head."""
    from trl.trainer.utils import add_fused_lm_head

    add_fused_lm_head(teacher)
    rows = [p + c for p, c in zip(batch["prompt_ids"], batch["completion_ids"])]
    width = max(len(r) for r in rows)
    ids = torch.zeros(len(rows), width, dtype=torch.long)
    attention = torch.zeros_like(ids)
    labels = torch.full_like(ids, -100)
    for i, (row, prompt) in enumerate(zip(rows, batch["prompt_ids"])):
        ids[i, :len(row)] = torch.tensor(row)
        attention[i, :len(row)] = 1
        labels[i, len(prompt):len(row)] = ids[i, len(prompt):len(row)]
    device = next(teacher.parameters()).device
    ids, attention, labels = ids.to(device), attention.to(device), labels.to(device)
    teacher.eval()
    seconds = []
    for _ in range(times):
        start = clock()
        with torch.no_grad():
            teacher(input_ids=ids, attention_mask=attention, labels=labels, fused_lm_head=True)
        seconds.append(clock() - start)
    return seconds


def child(kind: str, point: dict, vocab: int, batch_path: str, steps: int, setup: dict | None = None) -> dict:
    """In a fresh process: one trainer, one point. Warm-up on 256 tokens (on CUDA on the full batch), then
    ``steps`` measured steps.

    ``setup`` (device, dtype, shape, gradient_checkpointing) defaults to the CPU curves' fp32 narrow models. On
    CUDA the times are synchronized wall seconds and the peak is ``torch.cuda.max_memory_allocated`` over the
    measured steps minus what was allocated before them."""
    from datasets import Dataset

    setup = {**CPU_SETUP, **(setup or {})}
    cuda = setup["device"].startswith("cuda")
    clock = cuda_clock if cuda else time.process_time
    tok = C.tokenizer()
    positions = point["length"] + 2048
    student, teacher = make_models(tok, vocab, positions, setup)
    dataset = Dataset.from_list(C.prompt_rows(64))
    out: dict = {"trainer": kind, **point}
    if setup != CPU_SETUP:
        out["setup"] = setup
        out["model_dtype"] = str(next(student.parameters()).dtype).removeprefix("torch.")
        out["model_device"] = next(student.parameters()).device.type
    if cuda:
        out.update(clock="cuda_wall", device_name=torch.cuda.get_device_name(),
                   memory="torch.cuda.max_memory_allocated over the measured steps minus memory_allocated before "
                          "them (weights, optimizer state and inputs resident after the warm-up step not counted)")
    with tempfile.TemporaryDirectory() as tmp:
        if kind == "sod":
            trainer = build_sod(point, student, teacher, tok, dataset, tmp, setup)
            engine = trainer.rollout_engine
            # on CUDA the warm-up is the full batch: kernels (cuBLAS, TRL's Triton heads) are tuned per shape, and
            # the peak counts allocations, not the allocator's cache; on CPU a full warm-up would inflate the RSS
            engine.backend = (Scripted(tok, point["length"], point["turns"]) if cuda else
                              Scripted(tok, WARMUP_TOKENS, min(point["turns"], 2)))
            recorded = []
            original_rollout = engine.rollout

            def rollout(*args, **kwargs):
                trajectories = original_rollout(*args, **kwargs)
                recorded.append(trajectories)
                return trajectories

            engine.rollout = rollout
            stepper = C.ManualStepper(trainer, sync=torch.cuda.synchronize if cuda else None)
            stepper.step()  # warm-up
            engine.backend = Scripted(tok, point["length"], point["turns"])
            parts = PartTimer(trainer, clock)
        else:
            batch = json.loads(Path(batch_path).read_text())
            trainer = build_trl(kind, point, student, teacher, tok, dataset, tmp, setup)
            fixed_generate(kind, trainer, tok, batch if cuda else truncated(batch, WARMUP_TOKENS))
            stepper = C.ManualStepper(trainer, sync=torch.cuda.synchronize if cuda else None)
            stepper.step()  # warm-up
            fixed_generate(kind, trainer, tok, batch)
        gc.collect()
        walls, cpus, split = [], [], []
        if cuda:
            torch.cuda.synchronize()
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()
            before = torch.cuda.memory_allocated()
            for _ in range(steps):
                walls.append(stepper.step())
                cpus.append(stepper.cpu_times[-1])
                if kind == "sod":
                    split.append(parts.take(walls[-1]))
            peak = torch.cuda.max_memory_allocated()
            out.update(wall_s=walls, cpu_s=cpus, extra_peak_mib=C.mib(peak - before),
                       baseline_cuda_mib=C.mib(before), peak_cuda_allocated_mib=C.mib(peak),
                       peak_cuda_reserved_mib=C.mib(torch.cuda.max_memory_reserved()))
        else:
            before = C.rss_bytes()
            with C.PeakRSS() as probe:
                for _ in range(steps):
                    walls.append(stepper.step())
                    cpus.append(stepper.cpu_times[-1])
                    if kind == "sod":
                        split.append(parts.take(cpus[-1]))
            peak = max(C.max_rss_bytes(), probe.peak)
            out.update(wall_s=walls, cpu_s=cpus, extra_peak_mib=C.mib(peak - before),
                       sampled_extra_peak_mib=C.mib(probe.delta), baseline_rss_mib=C.mib(before))
        if kind == "sod":
            trajectories = recorded[-1]
            batch = {"prompt_ids": [t.prompt_ids for t in trajectories],
                     "completion_ids": [t.completion_ids for t in trajectories],
                     "assistant_mask": [t.assistant_mask for t in trajectories]}
            Path(batch_path).write_text(json.dumps(batch))
            out["parts_cpu_s"] = {k: statistics.median(s[k] for s in split) for k in split[0]}
            out["turns_seen"] = statistics.mean(t.num_turns for t in trajectories)
            out["tool_calls"] = statistics.mean(t.num_tool_calls for t in trajectories)
        if kind == "trl_grpo":
            forwards = teacher_forward_cpu(teacher, batch, times=steps + cuda, clock=clock)[cuda:]  # CUDA: 1 warm-up
            key = "teacher_forward_s" if cuda else "teacher_forward_cpu_s"
            out[key] = statistics.median(forwards)
            out[key + "_all"] = forwards
        out["completion_tokens"] = statistics.mean(len(x) for x in batch["completion_ids"])
        out["model_tokens"] = statistics.mean(sum(x) for x in batch["assistant_mask"])
        out["tokens_per_step"] = sum(len(p) + len(c) for p, c in zip(batch["prompt_ids"], batch["completion_ids"]))
        if hasattr(trainer, "close"):
            trainer.close()
    return out


# ---------------------------------------------------------------------------------------------- driver
def default_steps(point: dict) -> int:
    """Measured steps of a point when ``--repeats`` does not say: 2 at up to 2,048 tokens per step, else 1."""
    return 2 if point["length"] * point["group"] <= 2048 else 1


def parse_repeats(values: list[str]) -> dict[str, int]:
    """``["3", "trl_distillation=1"]`` -> ``{"*": 3, "trl_distillation": 1}`` (measured steps per trainer)."""
    out = {}
    for value in values:
        kind, _, count = value.rpartition("=")
        kind = kind or "*"
        if kind not in ("*", *TRAINERS) or not count.isdigit() or int(count) < 1:
            raise ValueError(f"--repeats {value!r}: expected N or KIND=N with N >= 1 and KIND one of {TRAINERS}")
        out[kind] = int(count)
    return out


def steps_for(kind: str, point: dict, repeats: dict[str, int]) -> int:
    """Measured steps of one trainer at one point."""
    return repeats.get(kind, repeats.get("*", default_steps(point)))


def measure_point(axis: str, point: dict, vocab: int, limit_gib: float | None, steps: int | dict, workdir: str,
                  skip: tuple[str, ...] = (), setup: dict | None = None, timeout: float = 3600,
                  deadline: float | None = None) -> dict:
    """One point, one child process per trainer; ``limit_gib`` None: no address-space cap (CUDA needs none, and
    cannot run under one); a child not started by ``deadline`` (``time.time()``) is reported as skipped."""
    batch_path = os.path.join(workdir, f"{axis}_{point['length']}_{point['turns']}_{point['group']}.json")
    results = {}
    for kind in TRAINERS:  # SOD first: it writes the trajectories the others replay
        if f"{kind}:{point['length']}" in skip:
            results[kind] = {"skipped": "left out to fit the session's time (--skip)"}
            print(f"  {axis} {point} {kind}: skipped", flush=True)
            continue
        if deadline is not None and time.time() > deadline:
            results[kind] = {"skipped": "the run's time budget was spent (--budget-s)"}
            print(f"  {axis} {point} {kind}: skipped (time budget spent)", flush=True)
            continue
        if kind != "sod" and not os.path.exists(batch_path):
            results[kind] = {"error": "no trajectories (the SOD child did not finish)"}
            continue
        n = steps_for(kind, point, steps) if isinstance(steps, dict) else steps
        argv = [sys.executable, __file__, "--child", kind, json.dumps(point), str(vocab), batch_path, str(n)]
        if setup and {**CPU_SETUP, **setup} != CPU_SETUP:
            argv.append(json.dumps(setup))
        began = time.time()
        results[kind] = C.run_limited_child(argv, limit_gib, timeout=timeout)
        r = results[kind]
        r["child_seconds"] = time.time() - began  # start-up, models, warm-up and measured steps (sizes a run)
        clock = "gpu wall" if r.get("clock") == "cuda_wall" else "cpu"
        shown = ("OOM" if r.get("oom") else f"{clock} {spread(step_times(r))} s, peak "
                 f"{r['extra_peak_mib']:.0f} MiB" if "cpu_s" in r else "error " + str(r.get("error"))[-400:])
        print(f"  {axis} {point} {kind}: {shown}", flush=True)
    return {"axis": axis, "point": point, "results": results, "ratios": ratios(results)}


def build_parser() -> argparse.ArgumentParser:
    """The command line (also parsed by the tests, against scripts/gpu_cost_curves.sh's command)."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--axes", default="length,turns,group")
    parser.add_argument("--memory-limit-gib", type=float, default=16.0)
    parser.add_argument("--plot", default=None,
                        help="where to write the plot (default docs/images/cost_curves.png; 'none': no plot)")
    parser.add_argument("--repeats", nargs="*", default=[],
                        help="measured steps per trainer and point: N, or KIND=N (default: 2 up to 2,048 tokens "
                             "per step, else 1)")
    parser.add_argument("--workdir", default=None,
                        help="keep the trajectories (written by the SOD child) here, for a later run's TRL children")
    parser.add_argument("--out", default="bench_cost_curves", help="results name under benchmarks/results/")
    parser.add_argument("--resume", nargs="*", default=[], help="results JSON files whose measured points are kept")
    parser.add_argument("--skip", nargs="*", default=[], help="KIND:LENGTH points not to measure")
    parser.add_argument("--lengths", default=None, help="comma-separated: measure only these lengths of each axis")
    parser.add_argument("--turns", default=None, help="comma-separated: measure only these numbers of turns")
    parser.add_argument("--report", action="store_true", help="only merge --resume files: table, targets, plot")
    parser.add_argument("--device", default="cpu", help="cpu (default) or cuda")
    parser.add_argument("--dtype", default="float32", choices=DTYPES,
                        help="model weights' dtype (bfloat16 also turns on the trainers' bf16 autocast)")
    parser.add_argument("--shape", default="narrow", choices=sorted(SHAPES),
                        help="narrow: the CPU curves' student hidden 64 / teacher hidden 128; qwen3-0.6b: Qwen3-0.6B's "
                             "config for the student, Qwen3-4B's for the teacher (random weights)")
    parser.add_argument("--gradient-checkpointing", action="store_true", help="in every trainer")
    parser.add_argument("--child-timeout", type=float, default=3600, help="seconds per child (one trainer, one point)")
    parser.add_argument("--budget-s", type=float, default=None,
                        help="start no child after this many seconds of the run (the rest are reported as skipped)")
    parser.add_argument("--child", nargs="+", default=None, help=argparse.SUPPRESS)
    return parser


def main():
    parser = build_parser()
    options = parser.parse_args()
    if options.child:
        kind, point, vocab, batch_path, steps, *setup = options.child
        setup = json.loads(setup[0]) if setup else None
        print("RESULT " + json.dumps(child(kind, json.loads(point), int(vocab), batch_path, int(steps), setup)))
        return
    setup = {"device": options.device, "dtype": options.dtype, "shape": options.shape,
             "gradient_checkpointing": options.gradient_checkpointing}
    if not options.device.startswith(("cpu", "cuda")):
        parser.error(f"--device {options.device!r}: expected cpu or cuda")
    cuda = options.device.startswith("cuda")
    repeats = parse_repeats(options.repeats)
    vocab = 4096 if options.quick else VOCAB
    axes = QUICK_AXES if options.quick else FULL_AXES
    started = time.time()
    loads = [os.getloadavg()]
    points = []
    for path in options.resume:  # measured points of earlier (partial or parallel) runs; a later file wins
        for old in json.loads(Path(path).read_text())["points"]:
            points = merge_points(points, old)
    done = {(p["axis"], json.dumps(p["point"], sort_keys=True)) for p in points}
    if options.workdir:
        Path(options.workdir).mkdir(parents=True, exist_ok=True)
    with (contextlib.nullcontext(options.workdir) if options.workdir else tempfile.TemporaryDirectory()) as workdir:
        for axis in ([] if options.report else options.axes.split(",")):
            print(f"== axis {axis}", flush=True)
            wanted = options.lengths.split(",") if options.lengths else []
            for point in sorted(axes[axis], key=lambda q: wanted.index(str(q["length"]))
                                if str(q["length"]) in wanted else 0):  # in --lengths' order
                if (axis, json.dumps(point, sort_keys=True)) in done:
                    continue
                if options.lengths and str(point["length"]) not in options.lengths.split(","):
                    continue
                if options.turns and str(point["turns"]) not in options.turns.split(","):
                    continue
                points.append(measure_point(
                    axis, point, vocab, None if cuda else options.memory_limit_gib, repeats, workdir,
                    tuple(options.skip), setup, options.child_timeout,
                    None if options.budget_s is None else started + options.budget_s))
                loads.append(os.getloadavg())
                save(points, vocab, options, loads, started, partial=True)
    order = {axis: i for i, axis in enumerate(("length", "turns", "group"))}
    points.sort(key=lambda p: (order[p["axis"]], p["point"]["length"], p["point"]["turns"], p["point"]["group"]))
    rows = []
    for p in points:
        r, q = p["results"], p["ratios"]

        def cell(kind):
            x = r.get(kind, {})
            if x.get("oom"):
                return "OOM", "OOM"
            if x.get("skipped"):
                return "-", "-"
            if "cpu_s" not in x:
                return "err", "err"
            return spread(step_times(x)), f"{x['extra_peak_mib']:.0f}"

        (st, sm), (gt, gm), (dt, dm) = (cell(k) for k in TRAINERS)
        grpo = r.get("trl_grpo", {})
        forwards = forward_times(grpo, default=float("nan"))
        budget = f"{q.get('time_sod_over_grpo_plus_teacher', float('nan')):.2f}"
        if "time_sod_over_grpo_plus_teacher_range" in q:
            budget += " [{:.2f}-{:.2f}]".format(*q["time_sod_over_grpo_plus_teacher_range"])
        rows.append([p["axis"], p["point"]["length"], p["point"]["turns"], p["point"]["group"], st, gt, dt,
                     spread(forwards), budget, sm, gm, dm,
                     f"{q.get('memory_sod_over_grpo', float('nan')):.2f}",
                     f"{q.get('memory_sod_over_distillation', float('nan')):.2f}",
                     f"{q.get('sod_overhead_share', float('nan')):.0%}"])
    print()
    print(C.table(rows, ["axis", "tokens/traj", "turns", "group", "SOD s", "GRPO s", "Distill s", "teacher fwd s",
                         "SOD/(GRPO+teacher)", "SOD MiB", "GRPO MiB", "Distill MiB", "mem SOD/GRPO",
                         "mem SOD/Distill", "SOD overhead share"]))
    met = targets(points)
    ram = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    fit = memory_fit(points, ram)
    for name, target in met.items():
        print(f"target {name}: {target['met']}")
    print("memory fit: " + json.dumps(fit))
    plot_path = Path(options.plot) if options.plot else (
        Path(__file__).resolve().parents[1] / "docs" / "images" / "cost_curves.png")
    if options.plot == "none":
        pass
    elif not options.quick or options.plot:
        plot_path.parent.mkdir(parents=True, exist_ok=True)
        plot(points, plot_path)
        print(f"plot {plot_path}")
    save(points, vocab, options, loads, started, partial=False)


def save(points, vocab, options, loads, started, partial: bool) -> None:
    """The JSON (rewritten after every point, so that an interrupted run keeps what it measured)."""
    ram = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    shape = SHAPES[getattr(options, "shape", "narrow")]
    cuda = getattr(options, "device", "cpu").startswith("cuda")
    C.save(options.out, {
        "vocab": vocab, "student": shape["student"], "teacher": shape["teacher"], "threads": C.THREADS,
        "setup": {"device": getattr(options, "device", "cpu"), "dtype": getattr(options, "dtype", "float32"),
                  "shape": getattr(options, "shape", "narrow"),
                  "gradient_checkpointing": getattr(options, "gradient_checkpointing", False)},
        "time": "synchronized GPU wall seconds" if cuda else "process CPU seconds (one torch thread)",
        "peak_memory": ("torch.cuda.max_memory_allocated over the measured steps minus memory_allocated before them"
                        if cuda else "peak RSS over the measured steps minus RSS before them"),
        "memory_limit_gib": None if cuda else options.memory_limit_gib, "machine_ram_gib": ram, "partial": partial,
        "repeats": options.repeats or "default (2 steps up to 2,048 tokens per step, else 1)",
        "load_averages_during_run": loads,
        "note": "training step on fixed pre-built trajectories (no generation); "
                + ("one GPU" if cuda else "shared 2-core machine"),
        "points": points, "targets": targets(points), "memory_fit": memory_fit(points, ram),
        "wall_s": time.time() - started}, options.quick)


if __name__ == "__main__":
    main()
