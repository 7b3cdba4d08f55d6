"""``sod ablate``: a seeded grid of objectives x seeds x worlds on the offline toy world, resumable.

For every (world, seed) one cold-start student is made once and saved; every arm of that seed trains from it with
:class:`~sod_trainer.SODTrainer` and is evaluated on the same held-out problems, several samples each. Each run
writes its own JSON file as soon as it ends (atomically), so a killed grid restarts where it stopped: finished runs
are read back, missing ones are run. The grid's settings are saved with it; resuming under other settings is refused
(they would mix in one table). ``report.py`` turns the runs into ``ablation.json``, a Markdown table and plots.
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

__all__ = ["ARMS", "WORLDS", "AblationSettings", "run_grid", "run_path"]

# Each arm is a set of SODConfig overrides (SOD_SPEC §4-§5; `iw_opd`: TRL's IW-OPD token weights).
ARMS: dict[str, dict[str, Any]] = {
    "sod": {"step_weighting": "sod"},
    "uniform": {"step_weighting": "uniform"},
    "decay": {"step_weighting": "decay"},
    "mask_after_error": {"step_weighting": "mask_after_error"},
    "sod_uncapped": {"step_weighting": "sod_uncapped"},
    "iw_opd": {"step_weighting": "iw_opd"},
    "sod_median_ref": {"step_weighting": "sod_median_ref"},  # [ours] (docs/ablation.md, sitting 4)
    "grpo": {"opd_coef": 0.0},
    "sod_no_grpo": {"step_weighting": "sod", "grpo_coef": 0.0},
    "uniform_no_grpo": {"step_weighting": "uniform", "grpo_coef": 0.0},
}

# A world is the tool the student meets (and the cold start that prepares it for that tool).
WORLDS: dict[str, dict[str, Any]] = {
    # the student's own errors: re-using a variable in the stateless tool (NameError), then retrying
    "stateless": {"flaky_tool_rate": 0.0},
    # errors that keep coming whatever the student learns: 20 % of calls fail transiently; the cold start teaches
    # retrying, the teacher never saw such an error (its signal after one is unreliable: SOD's premise)
    "flaky": {"flaky_tool_rate": 0.2},
}


@dataclass
class AblationSettings:
    """Every knob of the grid; :meth:`quick` is a tiny budget for tests and a first look."""

    worlds: list[str] = field(default_factory=lambda: list(WORLDS))
    arms: list[str] = field(default_factory=lambda: list(ARMS))
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2])
    student_layers: tuple[int, ...] = (0, 1, 3)
    # sitting 1 used 256 trajectories x 30 steps, 320 tokens, 6 turns: too short for a retry to fit or be learned
    # (docs/ablation.md, "Amendment before sitting 2"); these are sitting 2's settings
    cold_start_trajectories: int = 512
    cold_start_steps: int = 90
    cold_start_batch_size: int = 16
    train_problems: int = 2000
    train_steps: int = 20
    prompts_per_step: int = 8
    num_generations: int = 4
    learning_rate: float = 3e-4
    max_completion_length: int = 640
    max_turns: int = 8  # assistant turns, in training and evaluation (SODConfig counts tool rounds: max_turns - 1)
    eval_problems: int = 256
    eval_samples: int = 4
    eval_problem_seed: int = 777  # the same held-out problems for every seed and arm (a paired design)
    diagnostics_rollouts: int = 64  # rollouts per evaluation scored for d_k / w_k after clean vs error observations
    tool_workers: int = 4
    threads: int = 1
    device: str = "cpu"

    @classmethod
    def quick(cls, **overrides) -> AblationSettings:
        settings = cls(seeds=[0, 1], cold_start_trajectories=32, cold_start_steps=4, cold_start_batch_size=8,
                       train_problems=16, train_steps=1, prompts_per_step=2, num_generations=2, eval_problems=6,
                       eval_samples=1, diagnostics_rollouts=4, max_completion_length=256, max_turns=5)
        for key, value in overrides.items():
            setattr(settings, key, value)
        return settings

    def validate(self) -> None:
        unknown = [a for a in self.arms if a not in ARMS]
        if unknown:
            raise ValueError(f"Unknown arm(s) {unknown}; choose from {sorted(ARMS)}.")
        unknown = [w for w in self.worlds if w not in WORLDS]
        if unknown:
            raise ValueError(f"Unknown world(s) {unknown}; choose from {sorted(WORLDS)}.")
        if "sod" not in self.arms:
            raise ValueError("The grid compares every arm with 'sod' (paired differences): keep 'sod' in arms.")
        if len(set(self.seeds)) != len(self.seeds) or not self.seeds:
            raise ValueError(f"seeds must be distinct and non-empty, got {self.seeds}.")

    def fingerprint(self) -> dict[str, Any]:
        """What a finished run depends on (not which arms, worlds and seeds are listed, nor threads/workers)."""
        skip = {"worlds", "arms", "seeds", "threads", "tool_workers"}
        return {f.name: _plain(getattr(self, f.name)) for f in fields(self) if f.name not in skip}


def _plain(value):
    return list(value) if isinstance(value, tuple) else value


def run_path(output_dir: Path, world: str, arm: str, seed: int) -> Path:
    return output_dir / "runs" / world / arm / f"seed{seed}.json"


def _write_json(path: Path, payload: dict) -> None:
    """Write atomically: a killed grid never leaves a half-written run behind."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + f".tmp{os.getpid()}")
    tmp.write_text(json.dumps(payload, indent=1, default=str) + "\n")
    os.replace(tmp, path)


def _check_settings(output_dir: Path, settings: AblationSettings) -> None:
    saved = output_dir / "grid_settings.json"
    fingerprint = settings.fingerprint()
    if saved.exists():
        previous = json.loads(saved.read_text())
        changed = {k: (previous.get(k), v) for k, v in fingerprint.items() if previous.get(k) != v}
        if changed:
            detail = ", ".join(f"{k}: {old!r} -> {new!r}" for k, (old, new) in sorted(changed.items()))
            raise ValueError(f"{output_dir} holds a grid run under other settings ({detail}); its runs would mix "
                             "with these in one table. Use another --output_dir, or the saved settings.")
    else:
        _write_json(saved, fingerprint)


# ----------------------------------------------------------------------------------------------- one run
class _Context:
    """What every run of the grid shares: the teacher, its tokenizer, the data, the log function."""

    def __init__(self, settings: AblationSettings, log: Callable[[str], None]):
        import torch

        from ..toy.demo import _load_or_build_teacher
        from ..toy.tasks import build_dataset, build_rows

        torch.set_num_threads(settings.threads)
        self.settings, self.log = settings, log
        self.teacher, self.tokenizer, _, self.teacher_path = _load_or_build_teacher(log, None)
        self.teacher.to(settings.device)
        self.eval_rows = build_rows(settings.eval_problems, seed=settings.eval_problem_seed, split="eval")
        self.train_dataset = build_dataset(settings.train_problems, seed=0, split="train")


def _evaluate(context: _Context, model, world: str, seed: int, page: dict | None = None) -> dict[str, Any]:
    """Held-out accuracy per problem (share of correct samples), tool statistics and step diagnostics."""
    import torch

    from ..toy.diagnostics import aggregate, score_rollouts
    from ..toy.environment import toy_environment_factory
    from ..toy.evaluation import sample_trajectories, summarize

    s = context.settings
    rows = [row for row in context.eval_rows for _ in range(s.eval_samples)]
    torch.manual_seed(50_000 + seed)
    model.eval()
    rollouts = sample_trajectories(
        model, context.tokenizer, rows, max_completion_length=s.max_completion_length, max_turns=s.max_turns,
        batch_size=64, tool_workers=s.tool_workers,
        environment_factory=toy_environment_factory(WORLDS[world]["flaky_tool_rate"], seed=60_000 + seed))
    per_problem = [sum(r.correct for r in rollouts[p * s.eval_samples:(p + 1) * s.eval_samples]) / s.eval_samples
                   for p in range(len(context.eval_rows))]
    scored = rollouts[:s.diagnostics_rollouts]
    diagnostics = aggregate(score_rollouts(model, context.teacher, scored, context.tokenizer.pad_token_id)) \
        if scored else None
    if page is not None and scored:  # the trajectory viewer's page of the scored rollouts (sod_trainer.viewer)
        from ..viewer import write_toy_rollouts_page

        write_toy_rollouts_page(model, context.teacher, context.tokenizer, scored, **page)
    return {"per_problem": per_problem, "accuracy": sum(per_problem) / len(per_problem),
            "summary": summarize(rollouts), "diagnostics": diagnostics}


def _cold_start(context: _Context, output_dir: Path, world: str, seed: int):
    """The (world, seed) cold-start student: made, evaluated and saved once, then loaded."""
    import torch

    from ..toy.models import student_from_teacher
    from ..toy.student import cold_start_student

    s = context.settings
    folder = output_dir / "cold_start" / world
    weights, record = folder / f"seed{seed}.pt", folder / f"seed{seed}.json"
    teacher = context.teacher.cpu()
    try:
        if weights.exists() and record.exists():
            student = student_from_teacher(teacher, layers=s.student_layers)
            student.load_state_dict(torch.load(weights, map_location="cpu"))
            return student.to(s.device), json.loads(record.read_text())
        context.log(f"[{world} seed {seed}] cold start: SFT {s.cold_start_steps} steps on "
                    f"{s.cold_start_trajectories} trajectories, then evaluation")
        student, _ = cold_start_student(
            teacher, context.tokenizer, layers=s.student_layers, num_trajectories=s.cold_start_trajectories,
            steps=s.cold_start_steps, batch_size=s.cold_start_batch_size, seed=seed + 1,
            transient_error_rate=min(1.0, 2 * WORLDS[world]["flaky_tool_rate"]))
    finally:
        context.teacher.to(s.device)
    student.to(s.device)
    evaluation = _evaluate(context, student, world, seed,
                           page=dict(folder=output_dir / "trajectories" / world, name=f"seed{seed}_before"))
    folder.mkdir(parents=True, exist_ok=True)
    tmp = weights.with_suffix(f".tmp{os.getpid()}")
    torch.save(student.state_dict(), tmp)
    os.replace(tmp, weights)
    payload = {"world": world, "seed": seed, "arm": "cold_start", "eval": evaluation}
    _write_json(record, payload)
    return student, payload


def _train(context: _Context, student, output_dir: Path, world: str, arm: str, seed: int) -> list[dict]:
    """One arm from the cold start with SODTrainer; returns the logged training curve."""
    from transformers import TrainerCallback
    from transformers.trainer_callback import PrinterCallback

    from ..config import SODConfig
    from ..toy.environment import toy_environment_factory
    from ..toy.tasks import toy_reward
    from ..trainer import SODTrainer

    s = context.settings
    curve: list[dict] = []

    class Curve(TrainerCallback):
        def on_log(self, args, state, control, logs=None, **kwargs):
            if logs and "loss" in logs:
                curve.append({"step": state.global_step, **{k: v for k, v in logs.items()
                                                              if isinstance(v, (int, float))}})

    scratch = tempfile.TemporaryDirectory(prefix="sod-ablate-")  # nothing is saved: the run's JSON is the record
    config = SODConfig(
        output_dir=scratch.name, max_steps=s.train_steps,
        per_device_train_batch_size=s.prompts_per_step * s.num_generations, num_generations=s.num_generations,
        learning_rate=s.learning_rate, lr_scheduler_type="constant", warmup_steps=0, temperature=1.0,
        max_completion_length=s.max_completion_length, max_tool_calling_iterations=s.max_turns - 1,
        tool_workers=s.tool_workers, logging_steps=1, save_strategy="no", report_to=[],
        use_cpu=s.device == "cpu", seed=seed, disable_tqdm=True, bf16=False, fp16=False, max_prompt_length=None,
        dataloader_num_workers=0, **ARMS[arm])
    teacher = None if ARMS[arm].get("opd_coef", 1.0) == 0 else context.teacher
    trainer = SODTrainer(model=student, teacher_model=teacher, args=config, train_dataset=context.train_dataset,
                         processing_class=context.tokenizer, reward_funcs=[toy_reward], callbacks=[Curve()],
                         environment_factory=toy_environment_factory(WORLDS[world]["flaky_tool_rate"], seed=seed))
    trainer.remove_callback(PrinterCallback)
    try:
        trainer.train()
        done = trainer.state.global_step
    finally:
        trainer.close()
        scratch.cleanup()
    if done < s.train_steps:  # e.g. SIGTERM: SODTrainer stops cleanly; such a run must not enter the table
        raise RuntimeError(f"[{world} seed {seed}] {arm}: training stopped after {done} of {s.train_steps} steps "
                           "(interrupted?); the run is not recorded. Rerun the grid to run it again.")
    return curve


def _run_one(context: _Context, output_dir: Path, world: str, arm: str, seed: int) -> dict:
    student, _ = _cold_start(context, output_dir, world, seed)
    started = time.monotonic()  # the run's own time: the cold start is shared by every arm of the seed
    context.log(f"[{world} seed {seed}] {arm}: training {context.settings.train_steps} steps")
    curve = _train(context, student, output_dir, world, arm, seed)
    evaluation = _evaluate(context, student, world, seed, page=dict(
        folder=output_dir / "trajectories" / world, name=f"seed{seed}_{arm}_after",
        step_weighting=ARMS[arm].get("step_weighting", "sod")))
    payload = {"world": world, "arm": arm, "seed": seed, "overrides": ARMS[arm], "curve": curve, "eval": evaluation,
               "seconds": round(time.monotonic() - started, 1)}
    _write_json(run_path(output_dir, world, arm, seed), payload)
    context.log(f"[{world} seed {seed}] {arm}: held-out accuracy {evaluation['accuracy']:.1%} "
                f"({payload['seconds']:.0f}s)")
    return payload


def run_grid(output_dir: str | os.PathLike, settings: AblationSettings | None = None, *,
             log: Callable[[str], None] = print) -> dict[str, Any]:
    """Run (or finish) the grid in ``output_dir``; returns every run, cold starts included, by key."""
    settings = settings or AblationSettings()
    settings.validate()
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    _check_settings(output_dir, settings)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    todo = [(w, a, s) for w in settings.worlds for s in settings.seeds for a in settings.arms
            if not run_path(output_dir, w, a, s).exists()]
    total = len(settings.worlds) * len(settings.seeds) * len(settings.arms)
    log(f"sod ablate -> {output_dir}: {total} runs, {total - len(todo)} already done, {len(todo)} to run")
    context = _Context(settings, log) if todo else None
    for world, arm, seed in todo:
        if run_path(output_dir, world, arm, seed).exists():  # another process on the same grid finished it
            log(f"[{world} seed {seed}] {arm}: finished meanwhile by another process, skipped")
            continue
        _run_one(context, output_dir, world, arm, seed)
    runs: dict[str, Any] = {"settings": {**asdict(settings), "student_layers": list(settings.student_layers)},
                            "runs": [], "cold_starts": []}
    for world in settings.worlds:
        for seed in settings.seeds:
            cold = output_dir / "cold_start" / world / f"seed{seed}.json"
            if cold.exists():
                runs["cold_starts"].append(json.loads(cold.read_text()))
            for arm in settings.arms:
                runs["runs"].append(json.loads(run_path(output_dir, world, arm, seed).read_text()))
    return runs

