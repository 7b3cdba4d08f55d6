"""``sod eval`` / ``python -m sod_trainer.evaluation``: load a model and a benchmark, evaluate, print the table.

The rollout options (tool-call format, chat-template arguments, system prompt, tool limits, ...) are the
fields of :class:`~sod_trainer.evaluation.EvaluationConfig`; see :func:`config_from_args`.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from dataclasses import fields

from ..rewards import default_reward_funcs
from .arguments import (
    EvalRolloutArguments,
    EvalScriptArguments,
    evaluation_config,
    make_eval_parser,
    parse_eval_args,
)
from .report import EvaluationReport
from .runner import EvaluationConfig, evaluate

__all__ = ["build_parser", "config_from_args", "main"]


def build_parser():
    """The parser of ``sod eval``: TRL's ``TrlParser`` over :class:`~.arguments.EvalScriptArguments` and every
    :class:`EvaluationConfig` field (underscore flags, dashed aliases, ``--config eval.yaml``)."""
    return make_eval_parser()


def _load_eval_dataset(args: EvalScriptArguments):
    if args.benchmark.lower() == "toy":
        from ..toy.tasks import build_dataset

        if args.benchmark_path:
            raise SystemExit("The toy benchmark is generated in process; --benchmark-path does not apply.")
        return build_dataset(args.limit or 30, split="eval"), "toy"
    from .benchmarks import load_benchmark, resolve_benchmark

    spec = resolve_benchmark(args.benchmark)  # the system prompt is added by evaluate(), as configured
    dataset = load_benchmark(spec.name, path=args.benchmark_path, limit=args.limit)
    return dataset, spec.name


def config_from_args(args) -> EvaluationConfig:
    """The :class:`EvaluationConfig` of parsed ``sod eval`` arguments (a namespace from ``build_parser().parse_args``,
    or the ``(script, rollout)`` pair of ``parse_args_and_config``)."""
    if isinstance(args, tuple):
        return evaluation_config(*args)
    script = EvalScriptArguments(**{f.name: getattr(args, f.name) for f in fields(EvalScriptArguments)})
    rollout = EvalRolloutArguments(**{f.name: getattr(args, f.name) for f in fields(EvalRolloutArguments)})
    return evaluation_config(script, rollout)


def main(argv: Sequence[str] | None = None) -> EvaluationReport:
    """Run ``sod eval`` with ``argv`` (default ``sys.argv[1:]``)."""
    try:
        args, rollout, rollout_file = parse_eval_args(list(sys.argv[1:] if argv is None else argv))
        config = evaluation_config(args, rollout)
    except ValueError as error:
        print(f"sod eval: error: {error}", file=sys.stderr)
        raise SystemExit(2) from None
    if rollout_file is not None:
        print(f"sod eval: the model's rollout format from {rollout_file} (flags override it).", file=sys.stderr)
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
    reward_funcs = default_reward_funcs(dataset, strict=args.strict, timeout_s=config.tool_timeout)
    return evaluate(model, tokenizer, dataset, config=config, reward_funcs=reward_funcs, benchmark=benchmark,
                    model_name=args.model, output_dir=args.output_dir, print_table=True)


if __name__ == "__main__":  # pragma: no cover
    main()
