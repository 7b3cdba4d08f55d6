"""Benchmark: what one tool round costs the rollout engine's edge, per kind of tool environment (issue 13).

Both variants handle the same sampled turn (one tool call) after the same context, on the tiny BPE tokenizer with
Qwen3's tool tokens and Qwen3's chat template (``trl.chat_template_utils.qwen3_chat_template``):

  function     TRL's kind: ``FunctionToolEnvironment.step`` parses the turn with the template's response parser
               (``trl.chat_template_utils.parse_response`` with the context as prefix), calls the method, and
               ``observation_ids`` renders the tool message through the chat template twice to cut the suffix
  interpreter  the code-interpreter kind's edge: ``TextToolEnvironment`` hands the decoded text to an in-process
               tool (no sandbox: only the edge is timed) and wraps the output in the glue derived once from the
               template (``ToolResponseFormatter``)

Each timing is ``calls`` rounds; rounds of the two variants are interleaved. The machine is shared: absolute times
are context only, the ratio is paired per round.

    python benchmarks/bench_function_tools.py --quick
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common as C  # noqa: E402




class Counter:
    """The same tool for the code-interpreter edge: reads the turn text, returns the counter."""

    def __init__(self):
        self.counter = 0

    def step(self, turn_text):
        from sod_trainer.environments.base import ToolResult

        self.counter += json.loads(turn_text.split("\n")[1])["arguments"]["a"]
        return ToolResult(observation=str(self.counter), done=False, tool_called=True)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--context-tokens", type=int, default=2000, help="completion tokens before the turn")
    args = parser.parse_args(argv)
    rounds, calls = (5, 100) if args.quick else (15, 200)

    from trl.chat_template_utils import qwen3_chat_template

    from sod_trainer.environments.function_tools import FunctionTools
    from sod_trainer.rollout.adapters import TextToolEnvironment, TurnInput
    from sod_trainer.rollout.glue import ToolResponseFormatter
    from sod_trainer.toy.tokenizer import build_tokenizer

    tok = build_tokenizer()
    tok.add_tokens(["<tool_call>", "</tool_call>", "<tool_response>", "</tool_response>", "<think>", "</think>"])
    tok.chat_template = qwen3_chat_template
    setup = FunctionTools(tok, C.IncrementEnv)
    function = setup()
    function.reset()
    interpreter = TextToolEnvironment(Counter(), ToolResponseFormatter(tok))
    prompt = tok.apply_chat_template([{"role": "user", "content": "Reach 5."}], tools=setup.all_tools,
                                     add_generation_prompt=True, tokenize=True, return_dict=False,
                                     chat_template=setup.chat_template)
    filler = tok.encode("First, compute the product. Next, add the remainder. " * 200, add_special_tokens=False)
    context = list(prompt) + filler[:args.context_tokens]
    text = '<tool_call>\n{"name": "increment", "arguments": {"a": 2}}\n</tool_call>'
    ids = tok.encode(text, add_special_tokens=False) + [tok.eos_token_id]
    turn = TurnInput(text=tok.decode(ids, skip_special_tokens=True), token_ids=ids, context_ids=context,
                     ended_with_eos=True, final=False)

    def timed(environment):
        def run():
            start = time.perf_counter()
            for _ in range(calls):
                result = environment.step(turn)
                environment.observation_ids(result, turn)
            return (time.perf_counter() - start) / calls * 1e3
        return run

    times = C.interleave({"function": timed(function), "interpreter": timed(interpreter)}, rounds)
    ratio = C.paired_ratios(times["function"], times["interpreter"])
    rows = [[name, C.summary(values)["median"], C.summary(values)["q1"], C.summary(values)["q3"]]
            for name, values in times.items()]
    print(f"\none tool round at the engine's edge, {len(context)} context tokens, {calls} calls per timing, "
          f"{rounds} rounds (ms per round)\n")
    print(C.table(rows, ["variant", "median ms", "q1", "q3"]))
    print(f"\nfunction / interpreter: {ratio['median_of_paired_ratios']:.2f}x "
          f"[{ratio['paired_ratio_q1']:.2f}, {ratio['paired_ratio_q3']:.2f}]")
    C.save("bench_function_tools", {"context_tokens": len(context), "calls": calls, "rounds": rounds,
                                    "times_ms": times, "ratio": ratio,
                                    "medians_ms": {k: statistics.median(v) for k, v in times.items()}}, args.quick)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
