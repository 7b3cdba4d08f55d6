"""The evaluation harness: batching, metrics against a direct count, files, the toy models, the CLI."""

from __future__ import annotations

import json
import math
import re
from collections import Counter
from contextlib import nullcontext
from itertools import combinations

import pytest

from sod_trainer.environments import ToolEnvironment, ToolResult
from sod_trainer.evaluation import EvaluationConfig, evaluate, format_report, main
from sod_trainer.rewards import make_math_reward
from sod_trainer.rollout.types import GenerationOutput


class PerSampleBackend:
    """Scripted turns per (problem, sample): the k-th first-turn context of a prompt is sample k.

    ``script(problem_text, sample, turn) -> str``. Records the number of contexts of every call.
    """

    def __init__(self, tokenizer, script):
        self.tokenizer = tokenizer
        self.script = script
        self.calls: list[int] = []
        self.seen: Counter[str] = Counter()
        self.eos_token_ids = {tokenizer.eos_token_id}

    def generate(self, contexts, max_new_tokens, stop_strings=()):
        self.calls.append(len(contexts))
        outputs = []
        for context, budget in zip(contexts, max_new_tokens):
            text = self.tokenizer.decode(context)
            problem = re.search(r"<\|im_start\|>user\n(.*?)<\|im_end\|>", text, re.DOTALL).group(1)
            turn = text.count("<|im_start|>assistant") - 1
            if turn == 0:
                sample = self.seen[problem]
                self.seen[problem] += 1
            else:
                sample = int(re.search(r"Sample (\d+)\.", text).group(1))
            ids = self.tokenizer.encode(self.script(problem, sample, turn), add_special_tokens=False)
            ids = ids + [self.tokenizer.eos_token_id]
            outputs.append(GenerationOutput(ids[:budget], "eos" if len(ids) <= budget else "length"))
        return outputs

    def set_seed(self, seed):
        self.seen.clear()  # each seed starts sampling afresh


class EchoTool(ToolEnvironment):
    """A tool world without processes: a turn with a ```python block is a call that prints 'ok'."""

    def step(self, turn_text):
        if "```python" in turn_text:
            return ToolResult(observation="ok", done=False, tool_called=True)
        return ToolResult(observation=None, done=True)


def test_thirty_problems_by_32_samples_is_one_backend_call_per_turn(tokenizer):
    rows = [{"prompt": f"Problem {p}: what is {p} + {p}?", "answer": str(2 * p)} for p in range(30)]

    def script(problem, sample, turn):
        p = int(re.search(r"Problem (\d+)", problem).group(1))
        if turn == 0:
            return f"Sample {sample}. ```python\nprint({p} + {p})\n```"
        return f"\\boxed{{{2 * p if sample % 2 == 0 else 2 * p + 1}}}"

    backend = PerSampleBackend(tokenizer, script)
    report = evaluate(None, tokenizer, rows, backend=backend, environment_factory=EchoTool,
                      reward_funcs=[make_math_reward(strict=True)],
                      config=EvaluationConfig(num_samples=32, max_completion_length=256, pass_k=(1, 32)))
    assert backend.calls == [960, 960]  # turn 1 and turn 2, each for all 30 x 32 trajectories at once
    assert report.num_problems == 30 and report.num_samples == 32
    assert report.mean["average@32"] == pytest.approx(0.5)
    assert report.mean["pass@32"] == 1.0
    assert report.mean["tool_calls_per_trajectory"] == 1.0


# Three problems x four samples, with the real Python tool and the math-verify reward.
PROBLEMS = {"How many apples?": "12", "How many pears?": "7", "How many plums?": "100"}
# The final boxed answer of each sample (None: no box); sample 3 always makes a tool error first;
# sample 2 of the first problem answers without calling the tool.
FINAL = {
    "How many apples?": ["12", "12", "5", "12"],
    "How many pears?": ["3", "3", "7", None],
    "How many plums?": ["100", "99", "98", "97"],
}


def world_script(problem, sample, turn):
    final = FINAL[problem][sample]
    final_text = "I give up." if final is None else f"The answer is \\boxed{{{final}}}."
    if problem == "How many apples?" and sample == 2:
        return f"Sample {sample}. {final_text}"
    if turn == 0:
        code = "print(undefined_name)" if sample == 3 else f"print({final or 0} + 0)"
        return f"Sample {sample}. Let me compute.\n```python\n{code}\n```"
    return final_text


def direct_counts():
    """The expected numbers, counted by hand-rolled code from the script's table."""
    correct = {p: [a == PROBLEMS[p] for a in FINAL[p]] for p in PROBLEMS}
    n = 4

    def pass_k(flags, k):
        subsets = list(combinations(flags, k))
        return sum(any(s) for s in subsets) / len(subsets)

    def majority(answers, flags):
        votes = Counter(a for a in answers if a is not None)
        top = max(votes.values())
        winners = [a for a, c in votes.items() if c == top]
        return sum(flags[answers.index(a)] for a in winners) / len(winners)

    calls = sum(1 for p in PROBLEMS for s in range(n) if not (p == "How many apples?" and s == 2))
    return {
        "average@4": sum(sum(f) / n for f in correct.values()) / 3,
        "pass@1": sum(pass_k(f, 1) for f in correct.values()) / 3,
        "pass@2": sum(pass_k(f, 2) for f in correct.values()) / 3,
        "pass@4": sum(pass_k(f, 4) for f in correct.values()) / 3,
        "maj@4": sum(majority(FINAL[p], correct[p]) for p in PROBLEMS) / 3,
        "tool_calls_per_trajectory": calls / 12,
        "tool_failure_rate": 3 / calls,
        "answered_rate": 11 / 12,
    }


def test_report_numbers_match_a_direct_count_and_files_are_written(tokenizer, tmp_path):
    rows = [{"prompt": p, "answer": a, "problem_id": f"id{i}"} for i, (p, a) in enumerate(PROBLEMS.items())]
    backend = PerSampleBackend(tokenizer, world_script)
    report = evaluate(None, tokenizer, rows, backend=backend, benchmark="hand", model_name="scripted",
                      config=EvaluationConfig(num_samples=4, seeds=(0, 1), max_completion_length=512),
                      output_dir=tmp_path)
    expected = direct_counts()
    assert expected["average@4"] == pytest.approx(5 / 12)  # the table reads as intended
    assert expected["maj@4"] == pytest.approx(1.25 / 3)
    for key, value in expected.items():
        assert report.mean[key] == pytest.approx(value), key
        assert report.std[key] == pytest.approx(0.0), key  # the script ignores the seed
    assert len(report.per_seed) == 2
    assert backend.calls == [12, 11, 12, 11]  # per seed: all 12 first turns, then the 11 that called the tool

    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["mean"]["average@4"] == pytest.approx(5 / 12)
    assert summary["seeds"] == [0, 1] and summary["num_problems"] == 3
    lines = [json.loads(line) for line in (tmp_path / "problems.jsonl").read_text().splitlines()]
    assert len(lines) == 6  # problems x seeds
    pears = next(line for line in lines if line["problem_id"] == "id1" and line["seed"] == 0)
    assert pears["num_correct"] == 1 and pears["reference"] == "7" and pears["majority_answer"] == "3"
    erring = pears["samples"][3]
    assert erring["num_tool_errors"] == 1 and erring["answer"] is None and not erring["correct"]
    assert "NameError" in erring["turns"][0]["observation"]
    assert [run[0] for run in erring["mask_runs"]] == [1, 0, 1]  # model, tool glue, model
    assert sum(run[1] for run in erring["mask_runs"]) == erring["completion_length"]
    assert "<tool_response>" in erring["text"]

    table = format_report(report)
    assert "average@4 (%)" in table and "41.67 ± 0.00" in table


class CountingBackend:
    """Wraps a backend and records how many contexts each call had."""

    def __init__(self, inner):
        self.inner = inner
        self.calls: list[int] = []
        self.eos_token_ids = inner.eos_token_ids

    def generate(self, contexts, max_new_tokens, stop_strings=()):
        self.calls.append(len(contexts))
        return self.inner.generate(contexts, max_new_tokens, stop_strings)


@pytest.fixture(scope="module")
def toy_world(tokenizer):
    """The demo's world: its problems and model architecture; the shipped toy teacher (with its own
    tokenizer) when it has been built, else a randomly initialized one; the student is its layer-dropped copy."""
    import torch

    from sod_trainer.toy.models import TEACHER_DIR, build_model, load_teacher, student_from_teacher, teacher_config
    from sod_trainer.toy.tasks import build_dataset, build_toy_tokenizer

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny models: one thread is fastest, and the CPU is shared
    if (TEACHER_DIR / "config.json").exists():
        tokenizer = build_toy_tokenizer()
        teacher = load_teacher()
    else:
        teacher = build_model(teacher_config(tokenizer), seed=0)
    student = student_from_teacher(teacher)
    yield tokenizer, teacher, student, build_dataset(2, split="eval")
    torch.set_num_threads(threads)


@pytest.mark.parametrize("which", ["teacher", "student"])
def test_toy_models_evaluate_offline_and_the_report_matches_its_own_records(toy_world, which):
    from sod_trainer.rollout import HFGenerationBackend

    tokenizer, teacher, student, dataset = toy_world
    model = teacher if which == "teacher" else student
    backend = CountingBackend(HFGenerationBackend(lambda: nullcontext(model), tokenizer, temperature=1.0, top_p=1.0))
    config = EvaluationConfig(num_samples=3, seeds=(0, 1), max_completion_length=40, max_turns=3, top_p=1.0)
    report = evaluate(model, tokenizer, dataset, config=config, backend=backend, benchmark="toy")
    assert backend.calls[0] == 6 and len(backend.calls) <= 2 * 3  # all 2 x 3 trajectories per call, <= 3 turns
    for seed_index, seed in enumerate((0, 1)):
        records = [r for r in report.problems if r["seed"] == seed]
        samples = [s for r in records for s in r["samples"]]
        assert len(records) == 2 and len(samples) == 6
        metrics = report.per_seed[seed_index]
        assert metrics["average@3"] == pytest.approx(sum(s["correct"] for s in samples) / 6)
        assert metrics["tool_calls_per_trajectory"] == pytest.approx(sum(s["num_tool_calls"] for s in samples) / 6)
        assert metrics["response_length"] == pytest.approx(sum(s["completion_length"] for s in samples) / 6)
        assert all(s["completion_length"] <= 40 for s in samples)
        calls = sum(s["num_tool_calls"] for s in samples)
        errors = sum(s["num_tool_errors"] for s in samples)
        assert metrics["tool_failure_rate"] == pytest.approx(errors / calls if calls else 0.0)
        for record in records:
            assert record["num_correct"] == sum(s["correct"] for s in record["samples"])
    mean = (report.per_seed[0]["average@3"] + report.per_seed[1]["average@3"]) / 2
    assert report.mean["average@3"] == pytest.approx(mean)
    assert report.std["average@3"] == pytest.approx(
        math.sqrt(sum((m["average@3"] - mean) ** 2 for m in report.per_seed)))  # n - 1 = 1


def test_sod_eval_command_line_on_the_toy_benchmark(toy_world, tmp_path, capsys):
    tokenizer, _, student, _ = toy_world
    model_dir = tmp_path / "student"
    student.save_pretrained(model_dir)
    tokenizer.save_pretrained(model_dir)
    report = main(["--model", str(model_dir), "--benchmark", "toy", "--limit", "2", "--num-samples", "2",
                   "--seeds", "0", "--max-completion-length", "32", "--max-turns", "2", "--device", "cpu",
                   "--output-dir", str(tmp_path / "out")])
    assert report.num_problems == 2 and report.num_samples == 2
    printed = capsys.readouterr().out
    assert "average@2 (%)" in printed and "toy" in printed
    assert (tmp_path / "out" / "summary.json").exists()
    assert len((tmp_path / "out" / "problems.jsonl").read_text().splitlines()) == 2


def test_sod_eval_reports_an_unavailable_benchmark_clearly(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--model", str(tmp_path / "unused"), "--benchmark", "math500",
              "--benchmark-path", str(tmp_path / "nowhere.jsonl")])
    assert exit_info.value.code == 2
    assert "does not exist" in capsys.readouterr().err


def test_rows_no_reward_applies_to_are_an_error(tokenizer):
    backend = PerSampleBackend(tokenizer, lambda problem, sample, turn: "\\boxed{1}")
    with pytest.raises(ValueError, match="No reward function applies"):
        evaluate(None, tokenizer, [{"prompt": "q", "answer": None}], backend=backend,
                 reward_funcs=[make_math_reward(strict=True)], environment_factory=EchoTool,
                 config=EvaluationConfig(num_samples=1, max_completion_length=64))


def test_a_model_is_evaluated_in_its_training_format_and_system_prompt(tokenizer):
    """EvaluationConfig.from_training_args carries the rollout options of training: the json tool-call format
    is parsed and run, the tool output is cut at the training length, the system prompt is put first."""
    from sod_trainer import SODConfig

    training = SODConfig(output_dir="unused", tool_call_format="json", max_tool_response_chars=40,
                         max_tool_calling_iterations=3, report_to=[])
    config = EvaluationConfig.from_training_args(training, num_samples=1, system_prompt="You are terse.",
                                                 max_completion_length=512, )
    # 3 tool rounds (TRL's count, as in training) = at most 4 assistant turns
    assert (config.tool_call_format, config.max_tool_response_chars, config.max_turns) == ("json", 40, 4)
    contexts = []

    def script(problem, sample, turn):
        if turn == 0:
            return 'Sample 0. <tool_call>{"name": "code_interpreter", "arguments": {"code": "print(10 ** 60)"}}</tool_call>'
        return "\\boxed{2}"

    backend = PerSampleBackend(tokenizer, script)
    generate = backend.generate
    backend.generate = lambda c, m, s=(): contexts.extend(tokenizer.decode(x) for x in c) or generate(c, m, s)
    report = evaluate(None, tokenizer, [{"prompt": [{"role": "user", "content": "1 + 1?"}], "answer": "2"}],
                      backend=backend, reward_funcs=[make_math_reward(strict=True)], config=config)
    assert "<|im_start|>system\nYou are terse.<|im_end|>" in contexts[0]
    assert "10000000000" in contexts[1] and "0" * 41 not in contexts[1]  # the call ran; output cut at 40 characters
    assert report.mean["tool_calls_per_trajectory"] == 1.0 and report.mean["average@1"] == 1.0
    with pytest.raises(TypeError, match="no field"):
        EvaluationConfig.from_training_args(training, temprature=0.5)


def test_sod_eval_flags_reach_the_evaluation_config():
    from sod_trainer.evaluation import build_parser, config_from_args
    from sod_trainer.prompts import TOOL_SYSTEM_PROMPT

    base = ["--model", "m", "--benchmark", "toy"]
    config = config_from_args(build_parser().parse_args(base))
    assert config.system_prompt == TOOL_SYSTEM_PROMPT and config.tool_call_format == "fenced"
    args = build_parser().parse_args(base + ["--tool-call-format", "json", "--chat-template-kwargs",
                                             '{"enable_thinking": false}', "--system-prompt", "none",
                                             "--max-tool-response-chars", "99"])
    config = config_from_args(args)
    assert (config.tool_call_format, config.chat_template_kwargs, config.system_prompt,
            config.max_tool_response_chars) == ("json", {"enable_thinking": False}, None, 99)
