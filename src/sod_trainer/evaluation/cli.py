"""``sod eval`` / ``python -m sod_trainer.evaluation``: load a model and a benchmark, evaluate, print the table.

The rollout options (tool-call format, chat-template arguments, system prompt, tool limits, ...) are the
fields of :class:`~sod_trainer.evaluation.EvaluationConfig`; see :func:`config_from_args`.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence

from ..prompts import resolve_system_prompt
from ..rewards import default_reward_funcs
from .report import EvaluationReport
from .runner import EvaluationConfig, evaluate

__all__ = ["build_parser", "config_from_args", "main"]


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
    parser.add_argument("--system-prompt", default="tool",
                        help="System message put first in prompts that have none: 'tool' (default: the training "
                             "prompt, sod_trainer.prompts.TOOL_SYSTEM_PROMPT), 'none', or the text itself.")
    parser.add_argument("--tool-call-format", default=defaults.tool_call_format, choices=["fenced", "code_tag", "json"],
                        help="How the model writes tool calls (as in training).")
    parser.add_argument("--chat-template-kwargs", type=json.loads, default=None,
                        help="JSON object of apply_chat_template arguments, e.g. '{\"enable_thinking\": true}'.")
    parser.add_argument("--max-tool-response-chars", type=int, default=defaults.max_tool_response_chars)
    parser.add_argument("--tool-response-template", default=None,
                        help="Glue around an observation, with '{observation}' (default: from the chat template).")
    parser.add_argument("--max-prompt-length", type=int, default=None)
    parser.add_argument("--dtype", default="auto", help="Model dtype: auto, bfloat16, float16, float32.")
    parser.add_argument("--device", default=None, help="cuda, cpu, ... (default: cuda when available).")
    parser.add_argument("--output-dir", default=None, help="Where problems.jsonl and summary.json go.")
    parser.add_argument("--no-text", action="store_true", help="Leave trajectory text out of problems.jsonl.")
    return parser


def _load_eval_dataset(args: argparse.Namespace):
    if args.benchmark.lower() == "toy":
        from ..toy.tasks import build_dataset

        if args.benchmark_path:
            raise SystemExit("The toy benchmark is generated in process; --benchmark-path does not apply.")
        return build_dataset(args.limit or 30, split="eval"), "toy"
    from .benchmarks import load_benchmark, resolve_benchmark

    spec = resolve_benchmark(args.benchmark)  # the system prompt is added by evaluate(), as configured
    dataset = load_benchmark(spec.name, path=args.benchmark_path, limit=args.limit)
    return dataset, spec.name


def config_from_args(args: argparse.Namespace) -> EvaluationConfig:
    """The :class:`EvaluationConfig` of parsed ``sod eval`` arguments."""
    return EvaluationConfig(
        num_samples=args.num_samples, seeds=tuple(args.seeds), temperature=args.temperature, top_p=args.top_p,
        top_k=args.top_k, max_turns=args.max_turns, max_completion_length=args.max_completion_length,
        max_prompt_length=args.max_prompt_length, pass_k=tuple(args.pass_k) if args.pass_k else None,
        generation_batch_size=args.generation_batch_size, tool_timeout=args.tool_timeout,
        tool_workers=args.tool_workers, keep_text=not args.no_text, system_prompt=resolve_system_prompt(args.system_prompt),
        tool_call_format=args.tool_call_format, chat_template_kwargs=args.chat_template_kwargs,
        max_tool_response_chars=args.max_tool_response_chars, tool_response_template=args.tool_response_template,
    )


def main(argv: Sequence[str] | None = None) -> EvaluationReport:
    """Run ``sod eval`` with ``argv`` (default ``sys.argv[1:]``)."""
    args = build_parser().parse_args(argv)
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from .benchmarks import BenchmarkUnavailableError

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
    config = config_from_args(args)
    reward_funcs = default_reward_funcs(dataset, strict=args.strict, timeout_s=args.tool_timeout)
    return evaluate(model, tokenizer, dataset, config=config, reward_funcs=reward_funcs, benchmark=benchmark,
                    model_name=args.model, output_dir=args.output_dir, print_table=True)


if __name__ == "__main__":  # pragma: no cover
    main()
