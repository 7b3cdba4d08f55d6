r"""Evaluate a model with the tool loop, the way the paper did (SOD_SPEC §9).

For every seed: sample ``num_samples`` trajectories per problem with the library's own
:class:`~sod_trainer.rollout.RolloutEngine` — all problems x samples in one rollout, so generation is
batched across problems and samples (one backend call per turn for the whole set) — score them with
the reward functions' answer checkers, and compute average@k (the paper's metric), unbiased pass@k,
maj@k, tool calls and tool failure rate per trajectory, and response length. Over seeds, report
mean ± std. Writes ``problems.jsonl`` (one line per problem and seed: reference, score, and each
trajectory's text, turns and mask summarized) and ``summary.json``, and prints a table.

Python: ``evaluate(model, tokenizer, dataset, config=EvaluationConfig(...))``; command line:
``python -m sod_trainer.evaluation --model PATH --benchmark aime2024`` (the ``sod eval`` entry point).
"""

from __future__ import annotations

import argparse
import json
import logging
import random
import sys
import time
from collections.abc import Callable, Sequence
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

from .evaluation_metrics import average_at_k, majority_at_k, mean_std, pass_at_k
from .evaluation_report import format_report, write_report
from .rewards import AnswerCheck, RewardFunction, completion_text, default_reward_funcs, last_boxed, normalize_final_answer

logger = logging.getLogger(__name__)

__all__ = [
    "EvaluationConfig",
    "SampleResult",
    "EvaluationReport",
    "DEFAULT_TOOL_SYSTEM_PROMPT",
    "evaluate",
    "check_completions",
    "sample_results",
    "problem_metrics",
    "format_report",
    "build_parser",
    "main",
]

DEFAULT_TOOL_SYSTEM_PROMPT = (
    "You can use a Python code interpreter. To run code, write it in a ```python block; it is executed in a "
    "new process and its output is shown to you. Use it as often as helpful, then give your final answer."
)

# Metrics that are fractions (printed as percentages); the rest are counts or lengths.

@dataclass
class EvaluationConfig:
    """How to sample and what to report. Defaults are the paper's (SOD_SPEC §9) except ``seeds`` (one)."""

    num_samples: int = field(default=32, metadata={"help": "Trajectories per problem (k of average@k)."})
    seeds: tuple[int, ...] = field(default=(0,), metadata={"help": "One full evaluation per seed (paper: 5)."})
    temperature: float = field(default=1.0, metadata={"help": "Sampling temperature (paper: 1.0)."})
    top_p: float = field(default=0.6, metadata={"help": "Nucleus sampling (paper: 0.6 for evaluation)."})
    top_k: int = field(default=0, metadata={"help": "Top-k sampling; 0 disables."})
    max_turns: int = field(default=16, metadata={"help": "Most assistant turns per trajectory (paper: 16)."})
    max_completion_length: int = field(default=20480, metadata={"help": "Response budget, tool tokens included."})
    max_prompt_length: int | None = field(default=None, metadata={"help": "Longest prompt; None: no limit."})
    pass_k: tuple[int, ...] | None = field(default=None, metadata={
        "help": "k values of pass@k; default 1, 2, 4, ... up to num_samples, and num_samples."})
    maj_k: int | None = field(default=None, metadata={"help": "k of maj@k; default num_samples."})
    generation_batch_size: int | None = field(default=None, metadata={
        "help": "Split each turn's generate call into chunks of this many contexts (memory); None: all at once."})
    tool_workers: int = field(default=8, metadata={"help": "Tool calls of a turn run on this many threads."})
    tool_timeout: float = field(default=10.0, metadata={"help": "Wall-clock limit of one tool call, seconds."})
    max_tool_response_chars: int = field(default=256, metadata={"help": "Tool output shown to the model (paper: 256)."})
    tool_call_format: str = field(default="fenced", metadata={"help": "Tool-call parser: fenced, code_tag, json."})
    tool_response_template: str | None = field(default=None, metadata={
        "help": "Glue around an observation; default derived from the chat template."})
    chat_template_kwargs: dict[str, Any] | None = field(default=None, metadata={
        "help": "Extra arguments of apply_chat_template (e.g. {'enable_thinking': True})."})
    keep_text: bool = field(default=True, metadata={"help": "Write each trajectory's text into problems.jsonl."})

    def resolved_pass_k(self) -> list[int]:
        if self.pass_k is not None:
            bad = [k for k in self.pass_k if not 1 <= k <= self.num_samples]
            if bad:
                raise ValueError(f"pass_k values {bad} must lie between 1 and num_samples={self.num_samples}.")
            return sorted(set(self.pass_k))
        values, k = [], 1
        while k < self.num_samples:
            values.append(k)
            k *= 2
        return values + [self.num_samples]


@dataclass
class SampleResult:
    """One scored trajectory."""

    problem_index: int
    sample_index: int
    correct: bool
    answer: str | None
    detail: str
    num_turns: int
    num_tool_calls: int
    num_tool_errors: int
    completion_length: int  # tokens, tool tokens included
    model_tokens: int
    truncated: bool
    stop_reason: str
    mask_runs: list[list[int]]  # run-length assistant mask: [[1, n_model], [0, n_tool], ...]
    text: str | None = None
    turns: list[dict[str, Any]] | None = None


@dataclass
class EvaluationReport:
    """Per-seed metrics, their mean and std over seeds, and the per-problem records."""

    benchmark: str
    model: str
    num_problems: int
    num_samples: int
    seeds: list[int]
    per_seed: list[dict[str, float]]
    mean: dict[str, float]
    std: dict[str, float]
    config: dict[str, Any]
    problems: list[dict[str, Any]] = field(default_factory=list, repr=False)
    seconds: float = 0.0

    def summary(self) -> dict[str, Any]:
        """The JSON summary (everything but the per-problem records)."""
        data = asdict(self)
        data.pop("problems")
        return data

    def table(self) -> str:
        return format_report(self)


# --------------------------------------------------------------------------------------------
# Scoring (shared with the trainer's eval loop)
# --------------------------------------------------------------------------------------------


def _fallback_answer(text: str) -> str | None:
    boxed = last_boxed(text)
    return normalize_final_answer(boxed) if boxed is not None else None


def check_completions(
    reward_funcs: Sequence[Callable], prompts: Sequence[Any], completions: Sequence[str],
    rows: Sequence[dict[str, Any]], trajectories: Sequence[Any] | None = None,
) -> list[AnswerCheck]:
    """Right or wrong for each completion: the first reward function that applies to its row decides.

    Our :class:`~sod_trainer.rewards.RewardFunction` objects answer through ``check`` (correctness
    and the extracted answer, unshaped); any other TRL-style function counts as right when its reward
    is positive, and its answer for maj@k is the normalized last ``\\boxed{}``.
    """
    decided: list[AnswerCheck | None] = [None] * len(completions)
    texts = [completion_text(c) for c in completions]
    for function in reward_funcs:
        pending = [i for i, check in enumerate(decided) if check is None]
        if not pending:
            break
        if isinstance(function, RewardFunction):
            checks = function.check([texts[i] for i in pending], [rows[i] for i in pending])
        else:
            columns = {key: [rows[i].get(key) for i in pending] for key in rows[pending[0]]
                       if key not in ("prompt", "messages")}
            extra = {"trajectories": [trajectories[i] for i in pending]} if trajectories is not None else {}
            values = function(prompts=[prompts[i] for i in pending], completions=[texts[i] for i in pending],
                              **columns, **extra)
            checks = [AnswerCheck(None) if v is None else AnswerCheck(float(v) > 0, _fallback_answer(texts[i]))
                      for v, i in zip(values, pending)]
        for i, check in zip(pending, checks):
            if check.correct is not None:
                decided[i] = check
    missing = [i for i, check in enumerate(decided) if check is None]
    if missing:
        names = [getattr(f, "__name__", type(f).__name__) for f in reward_funcs]
        raise ValueError(
            f"No reward function applies to {len(missing)} completions (e.g. the row with columns "
            f"{sorted(rows[missing[0]])}); reward functions: {names}. Rows need an 'answer' (math / multiple "
            "choice) or 'tests' (code) column, or pass reward_funcs that handle them."
        )
    return decided  # type: ignore[return-value]


def _mask_runs(mask: Sequence[int]) -> list[list[int]]:
    runs: list[list[int]] = []
    for value in mask:
        if runs and runs[-1][0] == value:
            runs[-1][1] += 1
        else:
            runs.append([int(value), 1])
    return runs


def sample_results(trajectories: Sequence[Any], checks: Sequence[AnswerCheck], num_samples: int, tokenizer=None,
                   keep_text: bool = True) -> list[SampleResult]:
    """Per-trajectory records; trajectory ``i`` is sample ``i % num_samples`` of problem ``i // num_samples``."""
    results = []
    for index, (trajectory, check) in enumerate(zip(trajectories, checks)):
        text = turns = None
        if keep_text:
            if tokenizer is not None:
                text = tokenizer.decode(trajectory.completion_ids, skip_special_tokens=False)
            turns = [{"text": t.text, "tool_called": t.tool_called, "tool_error": t.tool_error,
                      "observation": t.observation, "finish_reason": t.finish_reason} for t in trajectory.turns]
        results.append(SampleResult(
            problem_index=index // num_samples, sample_index=index % num_samples, correct=bool(check.correct),
            answer=check.answer, detail=check.detail, num_turns=trajectory.num_turns,
            num_tool_calls=trajectory.num_tool_calls, num_tool_errors=trajectory.num_tool_errors,
            completion_length=trajectory.completion_length, model_tokens=int(sum(trajectory.assistant_mask)),
            truncated=bool(trajectory.truncated), stop_reason=trajectory.stop_reason,
            mask_runs=_mask_runs(trajectory.assistant_mask), text=text, turns=turns,
        ))
    return results


def problem_metrics(results: Sequence[SampleResult], num_samples: int, pass_k: Sequence[int],
                    maj_k: int | None = None, majority_vote: bool = True) -> dict[str, float]:
    """The metrics of one evaluation run (fractions in [0, 1]; counts per trajectory)."""
    problems: dict[int, list[SampleResult]] = {}
    for result in results:
        problems.setdefault(result.problem_index, []).append(result)
    groups = [sorted(problems[p], key=lambda r: r.sample_index) for p in sorted(problems)]
    for group in groups:
        if len(group) != num_samples:
            raise ValueError(f"Problem {group[0].problem_index} has {len(group)} samples, expected {num_samples}.")
    correct = [[r.correct for r in group] for group in groups]
    metrics: dict[str, float] = {f"average@{num_samples}": average_at_k(correct)}
    for k in pass_k:
        metrics[f"pass@{k}"] = pass_at_k(correct, k)
    if majority_vote:
        maj_k = maj_k or num_samples
        metrics[f"maj@{maj_k}"] = majority_at_k([[r.answer for r in g] for g in groups], correct, maj_k)
    n = len(results)
    calls = sum(r.num_tool_calls for r in results)
    metrics.update({
        "tool_calls_per_trajectory": calls / n,
        "tool_failure_rate": (sum(r.num_tool_errors for r in results) / calls) if calls else 0.0,
        "error_trajectory_rate": sum(r.num_tool_errors > 0 for r in results) / n,
        "turns_per_trajectory": sum(r.num_turns for r in results) / n,
        "response_length": sum(r.completion_length for r in results) / n,
        "model_tokens": sum(r.model_tokens for r in results) / n,
        "truncated_rate": sum(r.truncated for r in results) / n,
        "answered_rate": sum(r.answer is not None for r in results) / n,
    })
    return metrics


# --------------------------------------------------------------------------------------------
# The evaluation loop
# --------------------------------------------------------------------------------------------


def _seed_everything(seed: int, backend: Any) -> None:
    random.seed(seed)
    try:
        import numpy

        numpy.random.seed(seed)
    except ImportError:  # pragma: no cover
        pass
    import torch

    torch.manual_seed(seed)
    if hasattr(backend, "set_seed"):
        backend.set_seed(seed)


def _reference(row: dict[str, Any]) -> Any:
    if row.get("answer") is not None:
        return row["answer"]
    return None


def evaluate(
    model: Any,
    tokenizer: Any,
    dataset: Any,
    *,
    config: EvaluationConfig | None = None,
    reward_funcs: Sequence[Callable] | None = None,
    backend: Any = None,
    environment_factory: Callable[[], Any] | None = None,
    benchmark: str | None = None,
    model_name: str | None = None,
    output_dir: str | Path | None = None,
    print_table: bool = False,
) -> EvaluationReport:
    """Sample, score and summarize; see the module docstring.

    ``model``: a causal LM used through ``HFGenerationBackend`` (ignored when ``backend`` is given,
    e.g. a vLLM backend with the same ``generate(contexts, max_new_tokens, stop_strings)`` method).
    ``dataset``: rows with a prompt column and the reward columns (``answer``, ``choices``, ``tests``),
    e.g. from :func:`sod_trainer.benchmarks_data.load_benchmark`. ``reward_funcs`` default to
    :func:`~sod_trainer.rewards.default_reward_funcs` of the dataset. ``environment_factory``
    defaults to the Python tool with ``config``'s limits.
    """
    from .data import encode_prompt, row_to_messages
    from .environments import PythonToolEnvironment, SandboxConfig
    from .rollout import HFGenerationBackend, RolloutEngine, ToolResponseFormatter

    config = config or EvaluationConfig()
    if config.num_samples < 1:
        raise ValueError(f"num_samples must be at least 1, got {config.num_samples}.")
    if not config.seeds:
        raise ValueError("seeds is empty: give at least one seed.")
    rows = [dict(row) for row in dataset]
    if not rows:
        raise ValueError("The evaluation dataset is empty.")
    if reward_funcs is None:
        reward_funcs = default_reward_funcs(dataset if hasattr(dataset, "column_names") else list(rows[0]))
    pass_k = config.resolved_pass_k()
    majority_vote = any(getattr(f, "supports_majority_vote", True) for f in reward_funcs)
    if backend is None:
        if model is None:
            raise ValueError("Pass a model or a generation backend.")
        generation_config = getattr(model, "generation_config", None)
        extra_eos = getattr(generation_config, "eos_token_id", None) if generation_config is not None else None
        extra_eos = [extra_eos] if isinstance(extra_eos, int) else list(extra_eos or [])
        backend = HFGenerationBackend(lambda: nullcontext(model), tokenizer, temperature=config.temperature,
                                      top_p=config.top_p, top_k=config.top_k, eos_token_ids=extra_eos,
                                      batch_size=config.generation_batch_size)
    if environment_factory is None:
        environment_factory = partial(PythonToolEnvironment, parser=config.tool_call_format,
                                      sandbox_config=SandboxConfig(timeout_s=config.tool_timeout),
                                      max_tool_response_chars=config.max_tool_response_chars)
    engine = RolloutEngine(
        backend, tokenizer, environment_factory, max_completion_length=config.max_completion_length,
        max_turns=config.max_turns, tool_workers=config.tool_workers,
        formatter=ToolResponseFormatter(tokenizer, config.tool_response_template, config.chat_template_kwargs),
    )
    k = config.num_samples
    expanded = [row for row in rows for _ in range(k)]  # problem-major: trajectory i is problem i // k
    start_time = time.monotonic()
    per_seed: list[dict[str, float]] = []
    problem_records: list[dict[str, Any]] = []
    try:
        for seed in config.seeds:
            _seed_everything(seed, backend)
            environments, extras = engine.make_environments(expanded)
            try:
                messages = [row_to_messages(row, i // k, extra) for i, (row, extra) in enumerate(zip(expanded, extras))]
                prompt_ids = [encode_prompt(tokenizer, m, max_prompt_length=config.max_prompt_length, index=i // k,
                                            chat_template_kwargs=config.chat_template_kwargs)
                              for i, m in enumerate(messages)]
            except Exception:
                for environment in environments:
                    environment.close()
                raise
            trajectories = engine.rollout(prompt_ids, expanded, environments)
            completions = [tokenizer.decode(t.completion_ids, skip_special_tokens=True) for t in trajectories]
            checks = check_completions(reward_funcs, messages, completions, expanded, trajectories)
            results = sample_results(trajectories, checks, k, tokenizer, keep_text=config.keep_text)
            metrics = problem_metrics(results, k, pass_k, config.maj_k, majority_vote)
            per_seed.append(metrics)
            problem_records.extend(_problem_records(rows, results, k, seed, benchmark))
    finally:
        engine.close()
    keys = list(per_seed[0])
    mean = {key: mean_std([m[key] for m in per_seed])[0] for key in keys}
    std = {key: mean_std([m[key] for m in per_seed])[1] for key in keys}
    report = EvaluationReport(
        benchmark=benchmark or "dataset", model=model_name or _model_name(model), num_problems=len(rows),
        num_samples=k, seeds=list(config.seeds), per_seed=per_seed, mean=mean, std=std,
        config=_jsonable(asdict(config)), problems=problem_records, seconds=time.monotonic() - start_time,
    )
    if output_dir is not None:
        write_report(report, output_dir)
    if print_table:
        print(report.table())
    return report


def _problem_records(rows, results, k, seed, benchmark) -> list[dict[str, Any]]:
    records = []
    for index, row in enumerate(rows):
        samples = results[index * k:(index + 1) * k]
        num_correct = sum(r.correct for r in samples)
        votes: dict[str, int] = {}
        for r in samples:
            if r.answer is not None:
                votes[r.answer] = votes.get(r.answer, 0) + 1
        records.append({
            "benchmark": benchmark or row.get("benchmark"), "seed": seed, "problem_index": index,
            "problem_id": row.get("problem_id", index), "reference": _jsonable(_reference(row)),
            "num_samples": k, "num_correct": num_correct, "accuracy": num_correct / k,
            "majority_answer": max(votes, key=votes.get) if votes else None,
            "samples": [asdict(r) for r in samples],
        })
    return records


def _model_name(model: Any) -> str:
    config = getattr(model, "config", None)
    return str(getattr(config, "_name_or_path", "") or type(model).__name__)


def _jsonable(value: Any) -> Any:
    return json.loads(json.dumps(value, default=str))


# --------------------------------------------------------------------------------------------
# Command line (``sod eval``)
# --------------------------------------------------------------------------------------------


def build_parser(parser: argparse.ArgumentParser | None = None) -> argparse.ArgumentParser:
    """Arguments of ``sod eval`` (pass a subparser to attach them to the ``sod`` command)."""
    parser = parser or argparse.ArgumentParser(
        prog="sod eval", description="Evaluate a model with the Python tool on a benchmark (SOD_SPEC §9).")
    defaults = EvaluationConfig()
    parser.add_argument("--model", required=True, help="Model path or Hub id.")
    parser.add_argument("--tokenizer", default=None, help="Tokenizer path or Hub id (default: the model's).")
    parser.add_argument("--benchmark", required=True,
                        help="aime2024, aime2025, gpqa_diamond, livecodebench_v6, math500, or toy.")
    parser.add_argument("--benchmark-path", default=None,
                        help="Local JSON/JSONL/Parquet/CSV file or folder instead of the Hub.")
    parser.add_argument("--limit", type=int, default=None, help="Evaluate the first N problems only.")
    parser.add_argument("--num-samples", type=int, default=defaults.num_samples)
    parser.add_argument("--seeds", type=int, nargs="+", default=list(defaults.seeds))
    parser.add_argument("--temperature", type=float, default=defaults.temperature)
    parser.add_argument("--top-p", type=float, default=defaults.top_p)
    parser.add_argument("--top-k", type=int, default=defaults.top_k)
    parser.add_argument("--max-turns", type=int, default=defaults.max_turns)
    parser.add_argument("--max-completion-length", type=int, default=defaults.max_completion_length)
    parser.add_argument("--pass-k", type=int, nargs="+", default=None)
    parser.add_argument("--generation-batch-size", type=int, default=None)
    parser.add_argument("--tool-timeout", type=float, default=defaults.tool_timeout)
    parser.add_argument("--tool-workers", type=int, default=defaults.tool_workers)
    parser.add_argument("--strict", action="store_true", help="Math: the paper's exact boxed match, no math-verify.")
    parser.add_argument("--system-prompt", default=None,
                        help="System message (default: a short description of the Python tool; '' for none).")
    parser.add_argument("--dtype", default="auto", help="Model dtype: auto, bfloat16, float16, float32.")
    parser.add_argument("--device", default=None, help="cuda, cpu, ... (default: cuda when available).")
    parser.add_argument("--output-dir", default=None, help="Where problems.jsonl and summary.json go.")
    parser.add_argument("--no-text", action="store_true", help="Leave trajectory text out of problems.jsonl.")
    return parser


def _load_eval_dataset(args: argparse.Namespace):
    system_prompt = DEFAULT_TOOL_SYSTEM_PROMPT if args.system_prompt is None else (args.system_prompt or None)
    if args.benchmark.lower() == "toy":
        from .toy.tasks import build_dataset

        if args.benchmark_path:
            raise SystemExit("The toy benchmark is generated in process; --benchmark-path does not apply.")
        return build_dataset(args.limit or 30, split="eval"), "toy"
    from .benchmarks_data import load_benchmark, resolve_benchmark

    spec = resolve_benchmark(args.benchmark)
    dataset = load_benchmark(spec.name, path=args.benchmark_path, limit=args.limit, system_prompt=system_prompt)
    return dataset, spec.name


def main(argv: Sequence[str] | None = None) -> EvaluationReport:
    """Run ``sod eval`` with ``argv`` (default ``sys.argv[1:]``)."""
    args = build_parser().parse_args(argv)
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from .benchmarks_data import BenchmarkUnavailableError

    try:
        dataset, benchmark = _load_eval_dataset(args)
    except BenchmarkUnavailableError as error:
        print(f"error: {error}", file=sys.stderr)
        raise SystemExit(2) from None
    dtype = "auto" if args.dtype == "auto" else getattr(torch, args.dtype)
    model = AutoModelForCausalLM.from_pretrained(args.model, dtype=dtype)
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    model.to(device)
    tokenizer = AutoTokenizer.from_pretrained(args.tokenizer or args.model)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    config = EvaluationConfig(
        num_samples=args.num_samples, seeds=tuple(args.seeds), temperature=args.temperature, top_p=args.top_p,
        top_k=args.top_k, max_turns=args.max_turns, max_completion_length=args.max_completion_length,
        pass_k=tuple(args.pass_k) if args.pass_k else None, generation_batch_size=args.generation_batch_size,
        tool_timeout=args.tool_timeout, tool_workers=args.tool_workers, keep_text=not args.no_text,
    )
    reward_funcs = default_reward_funcs(dataset, strict=args.strict, timeout_s=args.tool_timeout)
    return evaluate(model, tokenizer, dataset, config=config, reward_funcs=reward_funcs, benchmark=benchmark,
                    model_name=args.model, output_dir=args.output_dir, print_table=True)


if __name__ == "__main__":  # pragma: no cover
    main()
