r"""Running an evaluation with the tool loop, the way the paper did (SOD_SPEC §9).

For every seed: sample ``num_samples`` trajectories per problem with the library's own
:class:`~sod_trainer.rollout.RolloutEngine` — all problems x samples in one rollout, so generation is
batched across problems and samples (one backend call per turn for the whole set) — score them with
the reward functions' answer checkers, and compute average@k (the paper's metric), unbiased pass@k,
maj@k, tool calls and tool failure rate per trajectory, and response length. Over seeds, report
mean ± std.

Every option that shapes a rollout in training (system prompt, tool-call format, chat-template
arguments, tool output cut, tool-response glue, turn and token budgets, sandbox limits) is a field of
:class:`EvaluationConfig`; :meth:`EvaluationConfig.from_training_args` copies them from a run's
:class:`~sod_trainer.SODConfig`, so a model is evaluated in the format and under the system prompt it
was trained with.
"""

from __future__ import annotations

import json
import logging
import random
import time
from collections.abc import Callable, Sequence
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field, fields
from functools import partial
from pathlib import Path
from typing import Any

from ..prompts import TOOL_SYSTEM_PROMPT
from ..rewards import default_reward_funcs
from .metrics import mean_std
from .report import EvaluationReport, write_report
from .results import SampleResult, check_completions, problem_metrics, sample_results

logger = logging.getLogger(__name__)

__all__ = ["EvaluationConfig", "DEFAULT_TOOL_SYSTEM_PROMPT", "evaluate", "with_system_prompt"]

DEFAULT_TOOL_SYSTEM_PROMPT = TOOL_SYSTEM_PROMPT
"""Kept for old imports: the one tool system prompt, :data:`sod_trainer.prompts.TOOL_SYSTEM_PROMPT`."""

# SODConfig field -> EvaluationConfig field: the options that shape a rollout the same way in both.
_FROM_TRAINING = {
    "max_tool_calling_iterations": "max_turns",
    "max_completion_length": "max_completion_length",
    "max_prompt_length": "max_prompt_length",
    "max_tool_response_chars": "max_tool_response_chars",
    "tool_call_format": "tool_call_format",
    "tool_response_template": "tool_response_template",
    "chat_template_kwargs": "chat_template_kwargs",
    "tool_timeout": "tool_timeout",
    "tool_workers": "tool_workers",
    "tool_persistent": "tool_persistent",
    "tool_memory_mb": "tool_memory_mb",
    "tool_max_processes": "tool_max_processes",
    "tool_isolation": "tool_isolation",
}


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
    system_prompt: str | None = field(default=TOOL_SYSTEM_PROMPT, metadata={
        "help": "System message put first in every prompt that has none (default: the training one, "
                "sod_trainer.prompts.TOOL_SYSTEM_PROMPT); None leaves prompts as they are."})
    tool_persistent: bool = field(default=False, metadata={
        "help": "One Python worker per trajectory, variables kept across turns (paper: stateless)."})
    tool_memory_mb: int = field(default=1024, metadata={"help": "Address-space limit of each tool process, MiB."})
    tool_max_processes: int = field(default=64, metadata={"help": "Process limit of each tool call's sandbox."})
    tool_isolation: str = field(default="auto", metadata={"help": "Sandbox isolation: auto, bwrap, or rlimits."})
    keep_text: bool = field(default=True, metadata={"help": "Write each trajectory's text into problems.jsonl."})

    @classmethod
    def from_training_args(cls, args: Any, **overrides: Any) -> EvaluationConfig:
        """The rollout options of a training run's :class:`~sod_trainer.SODConfig` (tool-call format, chat-template
        arguments, tool output cut, budgets, sandbox), sampling at the paper's evaluation defaults; ``overrides``
        set any field, e.g. ``system_prompt=`` (the training prompt lives in the dataset, not in SODConfig)."""
        values = {ours: getattr(args, theirs) for theirs, ours in _FROM_TRAINING.items() if hasattr(args, theirs)}
        if "max_turns" in values:  # SODConfig counts tool rounds (as TRL); a trajectory has one assistant turn more
            values["max_turns"] = values["max_turns"] + 1
        if isinstance(values.get("chat_template_kwargs"), str):
            values["chat_template_kwargs"] = json.loads(values["chat_template_kwargs"])
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(overrides) - known)
        if unknown:
            raise TypeError(f"EvaluationConfig has no field(s) {unknown}; fields: {sorted(known)}.")
        return cls(**{**values, **overrides})

    def resolved_pass_k(self) -> list[int]:
        """The k values of pass@k (validated)."""
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



def with_system_prompt(prompt: Any, system_prompt: str | None) -> Any:
    """``prompt`` with ``system_prompt`` first when it is a conversation without a system message (as training's
    :func:`~sod_trainer.data.prepare_dataset` renders rows); plain-text prompts and ``None`` leave it as it is."""
    if not system_prompt or not isinstance(prompt, list) or not prompt:
        return prompt
    if isinstance(prompt[0], dict) and prompt[0].get("role") == "system":
        return prompt
    return [{"role": "system", "content": system_prompt}, *prompt]


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
    """Sample, score and summarize; see the module docstring (every rollout option is a ``config`` field).

    ``model``: a causal LM used through ``HFGenerationBackend`` (ignored when ``backend`` is given,
    e.g. a vLLM backend with the same ``generate(contexts, max_new_tokens, stop_strings)`` method).
    ``dataset``: rows with a prompt column and the reward columns (``answer``, ``choices``, ``tests``),
    e.g. from :func:`sod_trainer.evaluation.load_benchmark`. ``reward_funcs`` default to
    :func:`~sod_trainer.rewards.default_reward_funcs` of the dataset. ``environment_factory``
    defaults to the Python tool with ``config``'s limits.
    """
    from ..data import encode_prompt, row_to_messages
    from ..environments import PythonSandbox, PythonToolEnvironment, SandboxConfig
    from ..rollout import HFGenerationBackend, RolloutEngine, ToolResponseFormatter

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
    from ..environments.function_tools import uses_function_tools

    if uses_function_tools(environment_factory):
        raise ValueError(
            f"evaluate() runs code-interpreter environments (step(turn_text)); {environment_factory!r} is a "
            "TRL-style environment (function tools through the chat template). Evaluate it with "
            "SODTrainer(..., environment_factory=..., eval_dataset=...).evaluate(), which rolls it out as in training.")
    if environment_factory is None:
        sandbox = PythonSandbox(SandboxConfig(
            timeout_s=config.tool_timeout, memory_mb=config.tool_memory_mb, max_processes=config.tool_max_processes,
            isolation=config.tool_isolation,
        ))
        environment_factory = partial(PythonToolEnvironment, parser=config.tool_call_format, sandbox=sandbox,
                                      max_tool_response_chars=config.max_tool_response_chars,
                                      persistent=config.tool_persistent)
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
                messages = [with_system_prompt(row_to_messages(row, i // k, extra), config.system_prompt) for i, (row, extra) in enumerate(zip(expanded, extras))]
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

