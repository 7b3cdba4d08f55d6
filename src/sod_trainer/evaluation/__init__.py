"""Evaluation with the tool loop (SOD_SPEC §9): one package, imported in this order (no cycle).

* :mod:`~sod_trainer.evaluation.metrics`: pure metrics: average@k, unbiased pass@k, maj@k, mean ± std;
* :mod:`~sod_trainer.evaluation.benchmarks`: AIME 2024/2025, GPQA-Diamond, LiveCodeBench v6, MATH-500 loaders;
* :mod:`~sod_trainer.evaluation.results`: right or wrong per completion, per-trajectory records, per-run metrics;
* :mod:`~sod_trainer.evaluation.report`: :class:`EvaluationReport`, ``problems.jsonl``/``summary.json``, the table;
* :mod:`~sod_trainer.evaluation.runner`: :class:`EvaluationConfig` and :func:`evaluate`;
* :mod:`~sod_trainer.evaluation.cli`: ``sod eval`` (``python -m sod_trainer.evaluation``).

Python: ``evaluate(model, tokenizer, dataset, config=EvaluationConfig(...))``. The old module names
(``sod_trainer.evaluation_metrics``, ``sod_trainer.evaluation_report``, ``sod_trainer.benchmarks_data``)
are the modules above under another name.
"""

from __future__ import annotations

from .benchmarks import BENCHMARKS, BenchmarkSpec, BenchmarkUnavailableError, list_benchmarks, load_benchmark
from .cli import build_parser, config_from_args, main
from .metrics import average_at_k, majority_at_k, mean_std, pass_at_k
from .report import EvaluationReport, format_report, write_report
from .results import SampleResult, check_completions, problem_metrics, sample_results
from .runner import DEFAULT_TOOL_SYSTEM_PROMPT, EvaluationConfig, evaluate, with_system_prompt

__all__ = [
    "EvaluationConfig",
    "SampleResult",
    "EvaluationReport",
    "DEFAULT_TOOL_SYSTEM_PROMPT",
    "evaluate",
    "with_system_prompt",
    "check_completions",
    "sample_results",
    "problem_metrics",
    "format_report",
    "write_report",
    "build_parser",
    "config_from_args",
    "main",
    "load_benchmark",
    "list_benchmarks",
    "BenchmarkSpec",
    "BenchmarkUnavailableError",
    "BENCHMARKS",
    "average_at_k",
    "pass_at_k",
    "majority_at_k",
    "mean_std",
]
