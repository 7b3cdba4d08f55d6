"""``sod demo``: the offline toy world end to end, on a CPU, in minutes.

1. load the shipped teacher (``toy/assets/teacher``; built on the fly if missing),
2. cold-start a smaller student (a layer-dropped copy of the teacher, short SFT on a few trajectories,
   some of which re-use a stale variable in the stateless tool and retry),
3. evaluate the student with the real Python tool (accuracy, tool calls and failures, d_k / w_k),
4. train it with :class:`~sod_trainer.SODTrainer` (SOD weights by default),
5. evaluate again; write ``report.json``, PNG plots and a summary table.

Nothing touches the network. ``run_demo(output_dir, quick=False)`` is the API; ``main(argv)`` the CLI.
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import os
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

__all__ = ["DemoSettings", "run_demo", "main"]


@dataclass
class DemoSettings:
    """Every knob of the demo; ``quick()`` shrinks them for tests and first looks (1-3 minutes on 2 CPU cores)."""

    seed: int = 0
    threads: int | None = None
    student_layers: tuple[int, ...] = (0, 1, 3)
    cold_start_trajectories: int = 256
    cold_start_steps: int = 30
    cold_start_batch_size: int = 16
    eval_problems: int = 64
    eval_teacher: bool = False
    train_problems: int = 2000
    sod_steps: int = 20
    prompts_per_step: int = 8
    num_generations: int = 4
    learning_rate: float = 3e-4
    step_weighting: str = "sod"
    grpo_coef: float = 1.0
    opd_coef: float = 1.0  # 0: plain GRPO (the teacher's signal left out), a control
    max_completion_length: int = 320
    max_tool_calling_iterations: int = 6
    tool_workers: int = 4
    compare: list[str] = field(default_factory=list)  # extra weighting schemes trained from the same student
    flaky_tool_rate: float = 0.0  # share of tool calls that fail transiently (toy.environment); 0: the paper's tool

    @classmethod
    def quick(cls, **overrides) -> DemoSettings:
        settings = cls(cold_start_trajectories=32, cold_start_steps=4, cold_start_batch_size=8, eval_problems=6,
                       eval_teacher=False, train_problems=16, sod_steps=2, prompts_per_step=2, num_generations=2)
        for key, value in overrides.items():
            setattr(settings, key, value)
        return settings


class _Progress:
    """Timestamped progress lines (rich when available)."""

    def __init__(self, enabled: bool = True):
        self.enabled = enabled
        self.start = time.monotonic()
        try:
            from rich.console import Console

            self.console = Console(highlight=False)
        except ImportError:  # rich is a dependency, but never let printing break the demo
            self.console = None

    def __call__(self, message: str) -> None:
        if not self.enabled:
            return
        line = f"[{time.monotonic() - self.start:6.1f}s] {message}"
        if self.console is not None:
            self.console.print(line, markup=False)
        else:
            print(line, flush=True)


def _finite(value) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value)


def _load_or_build_teacher(progress: _Progress, teacher_path: str | None):
    from .models import TEACHER_DIR, load_teacher, teacher_info
    from .tasks import load_toy_tokenizer

    path = Path(teacher_path) if teacher_path else TEACHER_DIR
    if not (path / "config.json").exists():
        from .build import build_teacher

        cache = Path(os.environ.get("SOD_DEMO_CACHE", Path.home() / ".cache" / "sod_trainer" / "toy_teacher"))
        if (cache / "config.json").exists():
            path = cache
        else:
            progress(f"No shipped teacher at {path}: building one into {cache} (SFT on CPU, 30-60 minutes; "
                     "scripts/build_toy_teacher.py does the same).")
            build_teacher(cache, steps=1500, batch_size=32, eval_problems=64, eval_every=0, log=progress)
            path = cache
    tokenizer = load_toy_tokenizer(path)
    teacher = load_teacher(path).float().eval()
    return teacher, tokenizer, teacher_info(path), str(path)


def _environment_factory(settings: DemoSettings, seed: int):
    from .environment import toy_environment_factory

    return toy_environment_factory(settings.flaky_tool_rate, seed=seed)


def _evaluate(model, teacher, tokenizer, rows, settings: DemoSettings, seed: int, with_diagnostics: bool = True,
              page: dict | None = None):
    import torch

    from .diagnostics import aggregate, score_rollouts
    from .evaluation import sample_trajectories, summarize

    torch.manual_seed(seed)
    rollouts = sample_trajectories(model, tokenizer, rows, max_completion_length=settings.max_completion_length,
                                   max_turns=settings.max_tool_calling_iterations, batch_size=64,
                                   tool_workers=settings.tool_workers,
                                   environment_factory=_environment_factory(settings, seed=10_000 + seed))
    summary = summarize(rollouts)
    diagnostics = None
    if with_diagnostics:
        diagnostics = aggregate(score_rollouts(model, teacher, rollouts, tokenizer.pad_token_id))
    if page is not None:  # the trajectory viewer's page of these rollouts (sod_trainer.viewer)
        from ..viewer import write_toy_rollouts_page

        write_toy_rollouts_page(model, teacher, tokenizer, rollouts, **page)
    example = None
    for rollout in rollouts:  # show a trajectory with a tool error when there is one
        if rollout.num_tool_errors or example is None:
            example = {"texts": rollout.texts, "observations": rollout.observations, "correct": rollout.correct,
                       "answer": rollout.answer}
            if rollout.num_tool_errors:
                break
    return summary, diagnostics, example


def _train(student, teacher, tokenizer, train_dataset, settings: DemoSettings, scheme: str, output_dir: Path,
           progress: _Progress) -> dict:
    """SOD (or another weighting scheme) with SODTrainer; returns the curve and sanity checks."""
    import torch
    from transformers import TrainerCallback

    from ..config import SODConfig
    from ..trainer import SODTrainer
    from .tasks import toy_reward

    batch = settings.prompts_per_step * settings.num_generations
    scratch = tempfile.TemporaryDirectory(prefix=f"sod-demo-trainer-{scheme}-")  # nothing is saved (save_strategy
    config = SODConfig(                                                          # "no"): no empty folder is left
        output_dir=scratch.name, max_steps=settings.sod_steps,
        per_device_train_batch_size=batch, num_generations=settings.num_generations,
        learning_rate=settings.learning_rate, lr_scheduler_type="constant", warmup_steps=0,
        step_weighting=scheme, grpo_coef=settings.grpo_coef, opd_coef=settings.opd_coef,
        max_completion_length=settings.max_completion_length,
        max_tool_calling_iterations=settings.max_tool_calling_iterations, tool_workers=settings.tool_workers,
        temperature=1.0, logging_steps=1, save_strategy="no", report_to=[], use_cpu=True, seed=settings.seed,
        disable_tqdm=True, bf16=False, fp16=False, max_prompt_length=None, dataloader_num_workers=0,
        gradient_checkpointing=False,  # a 2.5M-parameter model on a CPU: recomputing activations only costs time
    )
    before = {name: p.detach().clone() for name, p in student.named_parameters()}
    curve: list[dict[str, Any]] = []
    started = time.monotonic()

    class Progress(TrainerCallback):
        def on_log(self, args, state, control, logs=None, **kwargs):
            if not logs or "loss" not in logs:
                return
            entry = {"step": state.global_step, "seconds": round(time.monotonic() - started, 1), **logs}
            curve.append(entry)
            progress(f"  {scheme} step {state.global_step}/{settings.sod_steps}: loss {logs['loss']:+.4f}  "
                     f"batch accuracy {logs.get('accuracy', float('nan')):.2f}  "
                     f"tool failures {logs.get('tools/failure_frequency', float('nan')):.2f}  "
                     f"d_1 {logs.get('divergence/step_1', float('nan')):.3f}  "
                     f"w_2 {logs.get('weights/step_2', float('nan')):.2f}")

    trainer = SODTrainer(model=student, teacher_model=teacher, args=config, train_dataset=train_dataset,
                         processing_class=tokenizer, reward_funcs=[toy_reward], callbacks=[Progress()],
                         environment_factory=_environment_factory(settings, seed=settings.seed))
    from transformers.trainer_callback import PrinterCallback

    trainer.remove_callback(PrinterCallback)  # our own progress lines instead of raw log dicts
    try:
        trainer.train()
    finally:
        trainer.close()
        scratch.cleanup()
    student.eval()
    changed = sum(not torch.equal(before[name], p.detach()) for name, p in student.named_parameters())
    return {
        "scheme": scheme,
        "steps": settings.sod_steps,
        "rollouts_per_step": batch,
        "seconds": round(time.monotonic() - started, 1),
        "curve": curve,
        "losses_finite": bool(curve) and all(_finite(entry.get("loss")) for entry in curve),
        "parameters_changed": changed / max(len(before), 1),
    }


def _summary_table(report: dict) -> None:
    try:
        from rich.console import Console
        from rich.table import Table
    except ImportError:
        print(json.dumps({"student": report["student"]}, indent=1))
        return
    table = Table(title="sod demo: the toy tool-use world", show_lines=False)
    for column in ("model", "held-out accuracy", "tool calls / traj.", "tool failures / traj.",
                   "d after clean obs.", "d after error obs."):
        table.add_column(column, justify="right" if column != "model" else "left")

    def row(name, summary, diagnostics):
        contexts = (diagnostics or {}).get("by_context", {})

        def d(context):
            value = contexts.get(context, {}).get("d")
            count = contexts.get(context, {}).get("n", 0)
            return f"{value:.3f} (n={count})" if value is not None else "-"

        table.add_row(name, f"{summary['accuracy']:.1%}", f"{summary['tool_calls_per_trajectory']:.2f}",
                      f"{summary['tool_failures_per_trajectory']:.2f}", d("after_clean"), d("after_error"))

    teacher = report["teacher"]
    if teacher.get("eval"):
        row("teacher", teacher["eval"], None)
    else:
        table.add_row("teacher (at build)", f"{teacher['accuracy_at_build']:.1%}", "", "", "", "")
    row("student, cold start", report["student"]["before"], report["diagnostics"]["before"])
    for name, after in report["student"]["after"].items():
        row(f"student after {name}", after, report["diagnostics"]["after"][name])
    Console().print(table)


def run_demo(output_dir: str | os.PathLike = "sod-demo", quick: bool = False, *, settings: DemoSettings | None = None,
             teacher_path: str | None = None, progress: bool = True, **overrides) -> dict:
    """Run the demo; writes ``report.json`` and plots into ``output_dir`` and returns the report."""
    import torch

    settings = settings or (DemoSettings.quick(**overrides) if quick else DemoSettings(**overrides))
    say = _Progress(progress)
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    # One thread: a 2 M-parameter model is overhead-bound, and the tool processes need the other cores.
    torch.set_num_threads(settings.threads or 1)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # everything is local; never wait on the network
    timing: dict[str, float] = {}
    clock = time.monotonic()

    def lap(name: str) -> None:
        nonlocal clock
        timing[name] = round(time.monotonic() - clock, 1)
        clock = time.monotonic()

    from .models import count_parameters
    from .student import cold_start_student
    from .tasks import build_dataset, build_rows

    say(f"sod demo ({'quick' if quick else 'default'} settings) -> {output_dir}")
    teacher, tokenizer, info, path = _load_or_build_teacher(say, teacher_path)
    say(f"teacher: {count_parameters(teacher) / 1e6:.2f} M parameters from {path} "
        f"(held-out accuracy at build: {info.get('held_out_accuracy', float('nan')):.1%})")
    lap("load_teacher")
    eval_rows = build_rows(settings.eval_problems, seed=settings.seed, split="eval")
    teacher_eval = None
    if settings.eval_teacher:
        say(f"evaluating the teacher on {len(eval_rows)} held-out problems (temperature 1, real tool)...")
        teacher_eval, _, _ = _evaluate(teacher, teacher, tokenizer, eval_rows, settings, seed=settings.seed,
                                       with_diagnostics=False)
        say(f"teacher accuracy {teacher_eval['accuracy']:.1%}")
        lap("eval_teacher")

    say(f"cold-starting the student: layers {settings.student_layers} of the teacher, SFT "
        f"{settings.cold_start_steps} steps on {settings.cold_start_trajectories} trajectories...")
    student, cold = cold_start_student(
        teacher, tokenizer, layers=settings.student_layers, num_trajectories=settings.cold_start_trajectories,
        steps=settings.cold_start_steps, batch_size=settings.cold_start_batch_size, seed=settings.seed + 1,
        transient_error_rate=min(1.0, 2 * settings.flaky_tool_rate),
        callback=lambda step, record: say(f"  SFT step {step}: loss {record['loss']:.3f}"))
    student.eval()
    say(f"student: {count_parameters(student) / 1e6:.2f} M parameters, cold start took {cold.seconds:.0f}s")
    lap("cold_start")

    say(f"evaluating the student on {len(eval_rows)} held-out problems...")
    pages = output_dir / "trajectories"
    before, diagnostics_before, example_before = _evaluate(student, teacher, tokenizer, eval_rows, settings,
                                                           seed=settings.seed, page=dict(folder=pages, name="before"))
    _say_eval(say, "before", before, diagnostics_before)
    lap("eval_before")

    train_dataset = build_dataset(settings.train_problems, seed=settings.seed, split="train")
    schemes = [settings.step_weighting] + [s for s in settings.compare if s != settings.step_weighting]
    cold_state = copy.deepcopy(student.state_dict()) if len(schemes) > 1 else None
    training, after, diagnostics_after, examples_after = {}, {}, {}, {}
    for scheme in schemes:
        if cold_state is not None:
            student.load_state_dict(cold_state)
        say(f"training with SODTrainer, step_weighting={scheme!r}: {settings.sod_steps} steps x "
            f"{settings.prompts_per_step} prompts x {settings.num_generations} samples...")
        training[scheme] = _train(student, teacher, tokenizer, train_dataset, settings, scheme, output_dir, say)
        lap(f"train_{scheme}")
        say(f"evaluating the student after {scheme}...")
        after[scheme], diagnostics_after[scheme], examples_after[scheme] = _evaluate(
            student, teacher, tokenizer, eval_rows, settings, seed=settings.seed,
            page=dict(folder=pages, name=f"after_{scheme}", step_weighting=scheme))
        _say_eval(say, f"after {scheme}", after[scheme], diagnostics_after[scheme])
        lap(f"eval_after_{scheme}")

    report = {
        "settings": {**asdict(settings), "quick": quick},
        "teacher": {"path": path, "parameters": count_parameters(teacher),
                    "accuracy_at_build": info.get("held_out_accuracy"), "build": {
                        k: info.get(k) for k in ("steps", "device", "train_seconds_including_evals",
                                                 "held_out_problems")},
                    "eval": teacher_eval, "accuracy": (teacher_eval or {}).get("accuracy",
                                                                               info.get("held_out_accuracy"))},
        "student": {"parameters": count_parameters(student), "layers_from_teacher": list(settings.student_layers),
                    "cold_start": {"steps": cold.steps, "seconds": round(cold.seconds, 1), "log": cold.log},
                    "before": before, "after": after},
        "training": training,
        "diagnostics": {"before": diagnostics_before, "after": diagnostics_after},
        "examples": {"before": example_before, "after": examples_after},
        "timing_seconds": {**timing, "total": round(time.monotonic() - say.start, 1)},
        "trajectory_pages": {"index": "trajectories/index.html", "before": "trajectories/before.html",
                             "after": {scheme: f"trajectories/after_{scheme}.html" for scheme in schemes}},
    }
    from ..ablation.verdict import answer_lines, load_shipped_verdict

    report["ablation_answer"] = answer_lines(load_shipped_verdict())  # what the ablation has shown (issue 14)
    from .plots import plot_report

    report["plots"] = plot_report(report, output_dir)
    (output_dir / "report.json").write_text(json.dumps(report, indent=1, default=str) + "\n")
    if progress:
        _summary_table(report)
        say(f"report: {output_dir / 'report.json'}; plots: {', '.join(report['plots']) or 'none (no matplotlib)'}")
        say(f"trajectories (token-level viewer, before/after): {pages / 'index.html'}")
        for line in report["ablation_answer"]:
            say(line)
    return report


def _say_eval(say, name: str, summary: dict, diagnostics: dict | None) -> None:
    line = (f"{name}: accuracy {summary['accuracy']:.1%}, tool calls {summary['tool_calls_per_trajectory']:.2f} "
            f"and failures {summary['tool_failures_per_trajectory']:.2f} per trajectory")
    if diagnostics:
        contexts = diagnostics["by_context"]
        parts = [f"{c} {contexts[c]['d']:.3f} (n={contexts[c]['n']})" for c in ("first", "after_clean", "after_error")
                 if contexts[c]["d"] is not None]
        line += "; mean d_k: " + ", ".join(parts)
    say(line)


@dataclass
class DemoArguments:
    """The options of ``sod demo`` (parsed with TRL's ``TrlParser``: underscore flags, dashed aliases)."""

    output_dir: str = field(default="sod-demo", metadata={"help": "Where report.json and the plots go."})
    quick: bool = field(default=False, metadata={"help": "Tiny settings: 1-3 minutes on 2 CPU cores, for tests and a look."})
    steps: int | None = field(default=None, metadata={"help": "SOD training steps."})
    eval_problems: int | None = field(default=None, metadata={"help": "Held-out problems per evaluation."})
    seed: int | None = field(default=None, metadata={"help": "Random seed of the whole demo."})
    threads: int | None = field(default=None, metadata={"help": "torch CPU threads (default: 1)."})
    step_weighting: str | None = field(
        default=None, metadata={"help": "sod (default), uniform, decay, mask_after_error, ..."})
    compare: list[str] | None = field(
        default=None, metadata={"help": "Also train these weighting schemes from the same cold-start student "
                                "(e.g. uniform)."})
    eval_teacher: bool = field(
        default=False, metadata={"help": "Also measure the teacher on the held-out problems (default: report its "
                                 "build record)."})
    teacher: str | None = field(default=None, metadata={"help": "A teacher folder (default: the shipped one)."})
    flaky_tool_rate: float | None = field(
        default=None, metadata={"help": "Share of tool calls that fail transiently (the student must retry; "
                                "default 0)."})


def main(argv: list[str] | None = None) -> int:
    """``sod demo [--quick] [--output_dir DIR] ...``"""
    from ..scripts.train import SODParser

    parser = SODParser(DemoArguments, prog="sod demo", description=__doc__,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    try:
        (args,) = parser.parse_args_and_config(list(sys.argv[1:] if argv is None else argv))
    except ValueError as error:
        print(f"sod demo: error: {error}", file=sys.stderr)
        return 2
    overrides: dict[str, Any] = {}
    for key, value in (("sod_steps", args.steps), ("eval_problems", args.eval_problems), ("seed", args.seed),
                       ("threads", args.threads), ("step_weighting", args.step_weighting),
                       ("compare", args.compare), ("flaky_tool_rate", args.flaky_tool_rate)):
        if value is not None:
            overrides[key] = value
    if args.eval_teacher:
        overrides["eval_teacher"] = True
    try:
        run_demo(args.output_dir, quick=args.quick, teacher_path=args.teacher, **overrides)
    except ImportError as error:
        print(f"sod demo: a dependency is missing ({error}). Install sod-trainer with its dependencies: "
              "pip install sod-trainer (plots need the [plots] extra: pip install 'sod-trainer[plots]').",
              file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
