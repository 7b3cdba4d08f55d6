"""The toy world: problems, reference trajectories, encoding, tiny models, the shipped teacher."""

from __future__ import annotations

import json

import pytest
import torch

from sod_trainer.toy import tasks
from sod_trainer.toy.tasks import (
    build_rows,
    extract_boxed,
    generate_problem,
    generate_problems,
    reference_messages,
    student_sft_messages,
    toy_reward,
)


@pytest.fixture(scope="module")
def tokenizer():
    return tasks.load_toy_tokenizer()


def test_problems_are_deterministic_and_splits_disjoint():
    assert generate_problem(7) == generate_problem(7)
    train = {p.question for p in generate_problems(200, split="train")}
    held_out = {p.question for p in generate_problems(200, split="eval")}
    assert not train & held_out
    for problem in generate_problems(100):
        assert 2 <= len(problem.steps) <= 4
        assert problem.answer == problem.steps[-1].value >= 0
        assert problem.steps[0].value >= 1000  # too large to compute in the head


def test_phrasing_varies():
    questions = [generate_problem(i).question.split(".")[0].split()[1:3] for i in range(60)]
    assert len({tuple(q) for q in questions}) > 10
    firsts = {reference_messages(generate_problem(i))[0]["content"].split()[0] for i in range(60)}
    assert len(firsts) >= 3


def test_reference_trajectories_match_the_real_tool():
    from sod_trainer.environments import PythonToolEnvironment

    environment = PythonToolEnvironment()
    for seed in range(4):
        problem = generate_problem(seed)
        messages = student_sft_messages(problem, lazy_error_rate=1.0 if seed % 2 else 0.0)
        for turn, observation in zip(messages[0::2], messages[1::2]):
            result = environment.step(turn["content"])
            assert result.observation == observation["content"]
        assert extract_boxed(messages[-1]["content"]) == str(problem.answer)
        assert environment.step(messages[-1]["content"]).done


def test_lazy_error_trajectories_hold_a_name_error_and_retry():
    problem = next(p for p in generate_problems(50) if len(p.steps) >= 3)
    messages = reference_messages(problem, lazy_error=True)
    errors = [m for m in messages if m["role"] == "tool" and "NameError" in m["content"]]
    assert len(errors) == 1
    assert not any("Traceback" in m["content"] for m in reference_messages(problem) if m["role"] == "tool")


def test_reward_and_rows():
    rows = build_rows(3, split="eval")
    assert rows[0]["prompt"][0]["role"] == "system" and rows[0]["prompt"][1]["role"] == "user"
    assert toy_reward(None, ["so \\boxed{1,234}", "\\boxed{5}", "none"], ["1234", "6", "1"]) == [1.0, -1.0, -1.0]
    assert toy_reward(None, [[{"role": "assistant", "content": "\\boxed{7}"}]], ["7"]) == [1.0]


def test_encoding_matches_the_rollout_engine(tokenizer):
    from sod_trainer.rollout.glue import ToolResponseFormatter
    from sod_trainer.toy.sft import encode_conversation

    problem = generate_problem(3)
    messages = reference_messages(problem)
    encoded = encode_conversation(tokenizer, problem.prompt(), messages)
    prompt_ids = tokenizer.encode(
        tokenizer.apply_chat_template(problem.prompt(), tokenize=False, add_generation_prompt=True),
        add_special_tokens=False)
    assert encoded.input_ids[: len(prompt_ids)] == prompt_ids
    # rebuild as the engine does: sampled turn ids + eos, then the glue (eos not repeated)
    formatter = ToolResponseFormatter(tokenizer)
    ids, mask = list(prompt_ids), [0] * len(prompt_ids)
    for message in messages:
        if message["role"] == "assistant":
            turn = tokenizer.encode(message["content"], add_special_tokens=False) + [tokenizer.eos_token_id]
            ids += turn
            mask += [1] * len(turn)
        else:
            glue = formatter(message["content"], True)
            ids += glue
            mask += [0] * len(glue)
    assert encoded.input_ids == ids and encoded.loss_mask == mask
    # the whole thing is what the chat template renders
    text = tokenizer.apply_chat_template(problem.prompt() + messages, tokenize=False)
    assert tokenizer.decode(encoded.input_ids) == text.rstrip("\n")
    # digits are single tokens, observations are masked
    assert all(len(tokenizer.convert_ids_to_tokens(tokenizer.encode(d))) == 1 for d in "0123456789")
    observation_ids = tokenizer.encode(messages[1]["content"], add_special_tokens=False)
    start = next(i for i in range(len(ids)) if ids[i:i + len(observation_ids)] == observation_ids and mask[i] == 0)
    assert set(mask[start:start + len(observation_ids)]) == {0}


def test_model_configs(tokenizer):
    from sod_trainer.toy.models import build_model, count_parameters, student_from_teacher, teacher_config

    config = teacher_config(tokenizer)
    assert config.head_dim >= 32 and config.vocab_size == len(tokenizer)
    teacher = build_model(config)
    student = student_from_teacher(teacher, layers=(0, 1, 3))
    assert count_parameters(student) < count_parameters(teacher)
    assert torch.equal(student.model.layers[2].mlp.up_proj.weight, teacher.model.layers[3].mlp.up_proj.weight)
    ids = torch.tensor([tokenizer.encode("print(12 * 34)")])
    assert student(input_ids=ids).logits.shape[-1] == len(tokenizer)


def test_sft_lowers_the_loss_on_assistant_tokens_only(tokenizer):
    from sod_trainer.toy.models import build_model, teacher_config
    from sod_trainer.toy.sft import encode_conversation, sft_train

    torch.manual_seed(0)
    config = teacher_config(tokenizer)
    config.num_hidden_layers = 1
    model = build_model(config)
    examples = [encode_conversation(tokenizer, p.prompt(), reference_messages(p)) for p in generate_problems(4)]
    result = sft_train(model, examples, steps=6, batch_size=4, learning_rate=3e-3, warmup_steps=1, log_every=3,
                       pad_token_id=tokenizer.pad_token_id)
    assert result.log[-1]["loss"] < result.log[0]["loss"]


def test_shipped_teacher_is_small_and_documented():
    from sod_trainer.toy.models import TEACHER_DIR, teacher_info

    files = list(TEACHER_DIR.iterdir())
    assert sum(f.stat().st_size for f in files) < 8 * 2**20
    info = teacher_info()
    assert info["held_out_accuracy"] >= 0.9
    assert (TEACHER_DIR / "training_log.jsonl").exists()
    json.loads((TEACHER_DIR / "config.json").read_text())


def test_diagnostics_on_a_canned_rollout(tokenizer):
    from sod_trainer.toy.diagnostics import aggregate, classify_pattern, score_rollouts
    from sod_trainer.toy.evaluation import ToyRollout
    from sod_trainer.toy.models import build_model, teacher_config
    from sod_trainer.toy.sft import encode_conversation

    config = teacher_config(tokenizer)
    config.num_hidden_layers = 1
    student, teacher = build_model(config, seed=1), build_model(config, seed=2)
    problem = generate_problem(11)
    messages = student_sft_messages(problem, lazy_error_rate=1.0)
    encoded = encode_conversation(tokenizer, problem.prompt(), messages)
    p = encoded.prompt_length
    turns = [m for m in messages if m["role"] == "assistant"]
    observations = [m["content"] for m in messages if m["role"] == "tool"] + [None]
    rollout = ToyRollout(
        prompt_ids=encoded.input_ids[:p], completion_ids=encoded.input_ids[p:], assistant_mask=encoded.loss_mask[p:],
        turn_errors=[o is not None and "Traceback" in o for o in observations],
        turn_tool_called=[o is not None for o in observations], observations=observations,
        texts=[t["content"] for t in turns], answer=str(problem.answer), correct=True, stop_reason="answer")
    [diagnostics] = score_rollouts(student, teacher, [rollout], tokenizer.pad_token_id)
    assert len(diagnostics.steps) == len(turns)
    assert [s.context for s in diagnostics.steps].count("after_error") == 1
    assert diagnostics.steps[0].weight == 1.0 and all(0 < s.weight <= 1.2 + 1e-6 for s in diagnostics.steps)
    summary = aggregate([diagnostics])
    assert summary["by_context"]["after_error"]["n"] == 1
    assert classify_pattern([1.0, 1.2, 0.9]) == "stable"
    assert classify_pattern([1.0, 0.3, 0.5]) == "erroneous"
    assert classify_pattern([1.0, 0.3, 1.1]) == "recovery"


def test_flaky_tool_environment_and_retry_data():
    from sod_trainer.toy.environment import ToyToolEnvironment, toy_environment_factory
    from sod_trainer.toy.tasks import TRANSIENT_ERROR

    turn = "ok\n```python\nprint(6 * 7)\n```"
    flaky = ToyToolEnvironment(flaky_rate=0.99, seed=0)
    result = flaky.step(turn)
    assert result.error and result.tool_called and result.observation == TRANSIENT_ERROR and not result.done
    assert flaky.step("\\boxed{42}").done  # a final answer is never swallowed
    assert ToyToolEnvironment(flaky_rate=0.0).step(turn).observation == "42"
    make = toy_environment_factory(0.5, seed=3)
    outcomes = [make().step(turn).error for _ in range(40)]
    assert 5 < sum(outcomes) < 35
    messages = student_sft_messages(generate_problem(2), lazy_error_rate=0.0, transient_error_rate=1.0)
    failed = [i for i, m in enumerate(messages) if m["content"] == TRANSIENT_ERROR]
    assert len(failed) == 1
    code = messages[failed[0] - 1]["content"].split("```python")[1]
    assert messages[failed[0] + 1]["content"].split("```python")[1] == code  # the same code, sent again


def test_summarize_tells_the_flaky_tools_failures_from_the_students_own():
    """The recovery rate that tests SOD's premise in the flaky world counts trajectories that met an injected
    failure (TRANSIENT_ERROR), not the student's own tracebacks, and stop reasons are counted."""
    from sod_trainer.toy.evaluation import ToyRollout, summarize
    from sod_trainer.toy.tasks import TRANSIENT_ERROR

    def rollout(observations, correct, stop):
        n = len(observations)
        return ToyRollout([], [], [], [o != "5" for o in observations], [True] * n, observations, ["t"] * n, "5",
                          correct, stop)

    rollouts = [rollout([TRANSIENT_ERROR, "5"], True, "answer"),
                rollout(["NameError: name 'x' is not defined", "5"], False, "budget"),
                rollout([TRANSIENT_ERROR, TRANSIENT_ERROR], False, "answer"),
                rollout(["5"], True, "answer")]
    summary = summarize(rollouts)
    assert summary["share_with_tool_error"] == 0.75
    assert summary["accuracy_with_tool_error"] == 1 / 3
    assert summary["share_with_transient_error"] == 0.5
    assert summary["accuracy_with_transient_error"] == 0.5
    assert summary["stop_reasons"] == {"answer": 3, "budget": 1}
