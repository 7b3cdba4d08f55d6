"""Bad inputs (issue 7): each is a clear error at start-up, naming the row, field or value and the fix, or a
failure contained in the run and counted in the metrics. docs/troubleshooting.md ("Bad inputs and what you
see") lists what the user sees; test_reliability.py covers bad rows, long prompts, the chat template, raising
rewards and non-finite values."""

from __future__ import annotations

import logging
import threading
import time

import pytest
from datasets import Dataset

from conftest import make_tiny_model
from scripted import ScriptedBackend
from sod_trainer import SODConfig, SODTrainer
from sod_trainer.data import DatasetRowError
from sod_trainer.environments import PythonToolEnvironment, ToolEnvironment, ToolResult
from sod_trainer.rewards import make_math_reward, make_multiple_choice_reward
from sod_trainer.validation import validate_reward_columns
from test_reliability import ROWS, build, reward

CODE_TURN = "```python\nprint(6 * 7)\n```"


@pytest.fixture
def sod_logs(caplog):
    caplog.set_level(logging.WARNING, logger="sod_trainer")
    return caplog


# ------------------------------------------------------------------------------------------ dataset rows


@pytest.mark.parametrize("row, message", [
    ({"prompt": 123, "answer": "1"},
     r"Dataset row 1: column 'prompt' must be a string or a list of chat messages .* got 123 \(type int\)"),
    ({"messages": "hi", "answer": "1"}, r"Dataset row 1: column 'messages' must be a list of chat messages"),
    ({"problem": 12, "answer": "1"},
     r"Dataset row 1: column 'problem' must be a string, got 12 \(type int\)\. Convert it"),
    ({"messages": [], "answer": "1"}, r"Dataset row 1: column 'messages' is empty\. Give it a user message"),
])
def test_prompt_of_the_wrong_type_names_the_row_the_column_and_the_type(tokenizer, tmp_path, row, message):
    with pytest.raises(DatasetRowError, match=message):
        build(tokenizer, tmp_path, rows=[ROWS[0], row], raw_rows=True)


# ------------------------------------------------------------------------------------------ answers


def test_number_answers_are_compared_as_text():
    math_reward = make_math_reward(strict=True)
    completions = [r"\boxed{42}", r"\boxed{42}", r"\boxed{0.5}", r"\boxed{7}"]
    assert math_reward(prompts=None, completions=completions, answer=[42, 42.0, 0.5, "7"]) == [1.0, 1.0, 1.0, 1.0]
    choice = make_multiple_choice_reward()
    assert choice(prompts=None, completions=[r"\boxed{B}"], answer=[2], choices=[[1, 2]]) == [1.0]


@pytest.mark.parametrize("answer", [["4", "four"], {"value": 4}, True], ids=["list", "dict", "bool"])
def test_answer_that_is_not_text_or_a_number_is_a_contained_counted_reward_failure(tokenizer, tmp_path, sod_logs,
                                                                                   answer):
    rows = [{**row, "answer": answer} for row in ROWS]
    # checked before training (validate_dataset, the default): the first bad row is named
    with pytest.raises(DatasetRowError, match=r"Dataset row 0: .*'answer'"):
        build(tokenizer, tmp_path, rows=rows, raw_rows=True, reward_funcs=(make_math_reward(strict=True),))
    # without the check, the reward raises in training: contained and counted per batch with 'contain'
    trainer = build(tokenizer, tmp_path, rows=rows, raw_rows=True, max_steps=1, validate_dataset=False,
                    reward_funcs=(make_math_reward(strict=True),), reward_failure_policy="contain")
    trainer.train()
    log = trainer.state.log_history[0]
    assert log["rewards/math_reward/failures"] == 1.0
    assert "math_reward: the reference in column 'answer' is" in sod_logs.text
    assert "it must be a string or a number" in sod_logs.text


def test_reward_columns_are_checked_row_by_row_before_training():
    math_reward = make_math_reward(strict=True)
    rows = [{"prompt": "q", "answer": "1"}, {"prompt": "q", "answer": ["1", "one"]}]
    with pytest.raises(DatasetRowError, match=r"Dataset row 1: math_reward: the reference in column 'answer' is "
                                              r"\['1', 'one'\] \(type list\); it must be a string or a number"):
        validate_reward_columns(rows, [math_reward])
    with pytest.raises(ValueError, match=r"math_reward reads the 'answer' column, but the dataset has none \(it has "
                                         r"\['prompt', 'solution'\]\)\. Rename"):
        validate_reward_columns(Dataset.from_list([{"prompt": "q", "solution": "1"}]), [math_reward])
    with pytest.raises(ValueError, match="Every row's 'answer' is empty"):
        validate_reward_columns([{"prompt": "q", "answer": None}], [math_reward])
    validate_reward_columns(Dataset.from_list([{"prompt": "q", "answer": 3}]), [math_reward])  # numbers are fine
    validate_reward_columns(rows, [reward])  # a function of the user's own reads its columns its own way


def test_reward_that_gets_no_answer_column_warns_once(sod_logs):
    math_reward = make_math_reward(strict=True)
    for _ in range(2):
        assert math_reward(prompts=None, completions=[r"\boxed{1}"], solution=["1"]) == [None]
    assert sod_logs.text.count("math_reward: no 'answer' column reached the reward (it got ['solution'])") == 1


# ------------------------------------------------------------------------------------------ teacher


def test_teacher_with_another_saved_tokenizer_of_the_same_size_takes_the_cross_path(tokenizer, tmp_path, caplog):
    """Same vocabulary size, other ids: the teacher's saved tokenizer is found, so the teacher scores the student's
    text in its own tokenization (logged), instead of scoring ids that mean other tokens to it (issue 19)."""
    from sod_trainer.teacher import LocalTeacher
    from sod_trainer.teacher_cross import CrossTokenizerTeacher
    from sod_trainer.toy.tokenizer import build_tokenizer

    other = build_tokenizer(["zebra quantum xylophone " * 50 + "lorem ipsum dolor sit amet consectetur " * 30])
    assert len(other) == len(tokenizer)
    args = SODConfig(output_dir=str(tmp_path), per_device_train_batch_size=2, num_generations=2, report_to=[],
                     use_cpu=True)
    for name, teacher_tokenizer in (("same", tokenizer), ("other", other)):
        teacher_tokenizer.save_pretrained(tmp_path / name)
        teacher = make_tiny_model(tokenizer, seed=1)
        teacher.config._name_or_path = str(tmp_path / name)  # as from_pretrained(path) leaves it
        with caplog.at_level("INFO", logger="sod_trainer.teacher"):
            trainer = SODTrainer(model=make_tiny_model(tokenizer), teacher_model=teacher, args=args,
                                 train_dataset=Dataset.from_list(ROWS), processing_class=tokenizer,
                                 reward_funcs=[reward])
        expected = LocalTeacher if name == "same" else CrossTokenizerTeacher
        assert type(trainer.scorer.teacher) is expected, name
    assert caplog.text.count("cross-tokenizer path") == 1


def test_tokenizer_without_chat_template_is_rejected(tokenizer, tmp_path):
    from sod_trainer.toy.tokenizer import build_tokenizer

    bare = build_tokenizer()
    bare.chat_template = None
    args = SODConfig(output_dir=str(tmp_path), per_device_train_batch_size=2, num_generations=2, report_to=[],
                     use_cpu=True)
    with pytest.raises(ValueError, match=r"has no chat template\. Set `tokenizer\.chat_template`"):
        SODTrainer(model=make_tiny_model(bare), teacher_model=make_tiny_model(bare), args=args,
                   train_dataset=Dataset.from_list(ROWS), processing_class=bare, reward_funcs=[reward])


# ------------------------------------------------------------------------------------------ rewards


def test_reward_function_that_raises_names_itself_and_the_error_in_the_warning(tokenizer, tmp_path, sod_logs):
    def needs_solution(prompts, completions, **kwargs):
        return [1.0 if kwargs["solution"] else 0.0 for _ in completions]

    trainer = build(tokenizer, tmp_path, reward_funcs=(needs_solution, reward), max_steps=1,
                    reward_failure_policy="contain")
    trainer.train()
    assert trainer.state.log_history[0]["rewards/needs_solution/failures"] == 1.0
    assert "Reward function 'needs_solution' failed on this batch (KeyError:" in sod_logs.text
    assert "its reward is left out (None) for this batch" in sod_logs.text


def test_reward_that_cannot_take_the_trainers_arguments_is_refused_at_construction(tokenizer, tmp_path):
    """TRL would fail at the first call; SOD says so before any rollout."""
    def needs_solution(prompts, completions, solution, **kwargs):
        return [1.0] * len(completions)

    def no_kwargs(prompts, completions):
        return [1.0] * len(completions)

    with pytest.raises(ValueError, match=r"'needs_solution' needs the argument 'solution', which is neither one the "
                                         r"trainer passes .* nor a dataset column \(it has \['answer', 'prompt'\]\)"):
        build(tokenizer, tmp_path, reward_funcs=(needs_solution,))
    with pytest.raises(TypeError, match=r"'no_kwargs' takes no \*\*kwargs.*Add \*\*kwargs to its signature"):
        build(tokenizer, tmp_path, reward_funcs=(no_kwargs,))


def test_reward_weights_of_the_wrong_length_are_rejected(tokenizer, tmp_path):
    with pytest.raises(ValueError, match="reward_weights has 2 entries but there are 1 reward functions"):
        build(tokenizer, tmp_path, reward_weights=[1.0, 2.0])


# ------------------------------------------------------------------------------------------ tools


class CrashingStep(ToolEnvironment):
    def step(self, turn_text: str) -> ToolResult:
        raise RuntimeError("tool backend died")


class CrashingReset(PythonToolEnvironment):
    def reset(self, **row):
        raise ConnectionError("database unreachable")


@pytest.mark.parametrize("environment, message", [
    (CrashingStep, "Tool environment CrashingStep raised RuntimeError: tool backend died in step()"),
    (CrashingReset, "Tool environment CrashingReset: reset() raised ConnectionError: database unreachable"),
])
def test_tool_that_crashes_is_contained_and_counted(tokenizer, tmp_path, sod_logs, environment, message):
    trainer = build(tokenizer, tmp_path, max_steps=1, max_completion_length=120)
    trainer.rollout_engine.environment_factory = environment
    trainer.rollout_engine.backend = ScriptedBackend(tokenizer, {"q": [CODE_TURN, r"\boxed{42}"]})
    trainer.train()
    log = trainer.state.log_history[0]
    assert log["tools/failure_frequency"] == 1.0 and log["tools/error_trajectory_ratio"] == 1.0
    assert log["tools/environment_failures"] == 1.0  # told apart from the model's own failed tool calls
    assert message in sod_logs.text


def test_tool_that_hangs_is_abandoned_after_step_timeout_and_counted(tokenizer, tmp_path, sod_logs):
    release = threading.Event()

    class Hangs(ToolEnvironment):
        step_timeout_s = 0.5

        def step(self, turn_text: str) -> ToolResult:
            release.wait(60)
            return ToolResult(observation="late", done=False)

    trainer = build(tokenizer, tmp_path, max_steps=1, max_completion_length=120)
    trainer.rollout_engine.environment_factory = Hangs
    trainer.rollout_engine.backend = ScriptedBackend(tokenizer, {"q": [CODE_TURN, r"\boxed{42}"]})
    start = time.monotonic()
    try:
        trainer.train()
    finally:
        release.set()
    assert time.monotonic() - start < 30
    log = trainer.state.log_history[0]
    assert log["tools/timeouts_per_trajectory"] == 1.0 and log["tools/failure_frequency"] == 1.0
    assert "Tool environment Hangs did not return from step() within 0.5 s (step_timeout_s)" in sod_logs.text


def test_sandboxed_program_that_hangs_times_out_and_is_counted(tokenizer, tmp_path):
    trainer = build(tokenizer, tmp_path, max_steps=1, max_completion_length=200, tool_timeout=1.0)
    trainer.rollout_engine.backend = ScriptedBackend(
        tokenizer, {"q": ["```python\nwhile True:\n    pass\n```", r"\boxed{42}"]})
    trainer.train()
    log = trainer.state.log_history[0]
    assert log["tools/timeouts_per_trajectory"] == 1.0 and log["tools/failure_frequency"] == 1.0


# ------------------------------------------------------------------------------------------ configuration


@pytest.mark.parametrize("overrides, message", [
    (dict(per_device_train_batch_size=4, num_generations=8),
     r"per_device_train_batch_size x steps_per_generation = 4 completions per rollout batch, which is not a "
     r"multiple of num_generations=8\. Make it one \(e\.g\. per_device_train_batch_size=8\)"),
    (dict(num_generations=1), r"num_generations=1 with grpo_coef=1\.0: the GRPO term .* Set num_generations >= 2"),
    (dict(sod_delta=-0.1), r"sod_delta must be >= 0 .* got -0\.1"),
    (dict(max_prompt_length=0), r"max_prompt_length must be >= 1 token, or None for no limit; got 0"),
    (dict(opd_coef=0, grpo_coef=0), r"opd_coef and grpo_coef are both 0: there is nothing to learn from\. Set"),
    (dict(grpo_coef=-1), r"opd_coef and grpo_coef must be >= 0"),
    (dict(generation_batch_size=12),  # set alone, as TRL allows, but not whole optimizer batches
     r"generation_batch_size=12 must be a multiple of the global batch size per_device_train_batch_size \(8\) x "
     r"processes \(1\) = 8; e\.g\. generation_batch_size=16"),
    (dict(generation_batch_size=16, steps_per_generation=1),
     r"generation_batch_size=16 must equal per_device_train_batch_size \(8\) x processes \(1\) x "
     r"steps_per_generation \(1\) = 8; set only one of"),
    (dict(steps_per_generation=3, gradient_accumulation_steps=2),
     r"steps_per_generation=3 must be a multiple of gradient_accumulation_steps=2"),
    (dict(step_segmenter="sentence"),
     r"step_segmenter='sentence' is not one of \('turn', 'fixed_length', 'blank_line'\)"),
    (dict(top_p=0.0), r"top_p must be in \(0, 1\]"),
    (dict(decay_rate=1.5), r"decay_rate must be in \[0, 1\]"),
    (dict(tool_timeout=0), r"tool_timeout must be > 0, got 0"),
    (dict(teacher_model_name_or_path="a", teacher_server_url="http://b"),
     r"Both teacher_model_name_or_path='a' and teacher_server_url='http://b' are set.*Keep one"),
    (dict(use_vllm=True, vllm_max_model_length=1024, max_prompt_length=512, max_completion_length=1024),
     r"vllm_max_model_length=1024 is shorter than max_prompt_length \+ max_completion_length = 512 \+ 1024"),
])
def test_contradictory_config_is_rejected_naming_the_value_and_the_fix(tmp_path, overrides, message):
    config = dict(output_dir=str(tmp_path), per_device_train_batch_size=8, num_generations=2, report_to=[],
                  use_cpu=True)
    config.update(overrides)
    with pytest.raises(ValueError, match=message):
        SODConfig(**config)


def test_vllm_options_without_use_vllm_warn(tmp_path, sod_logs):
    SODConfig(output_dir=str(tmp_path), per_device_train_batch_size=2, num_generations=2, report_to=[],
              use_cpu=True, vllm_mode="server", vllm_server_base_url="http://localhost:8000")
    assert ("use_vllm=False, so vllm_mode='server', vllm_server_base_url='http://localhost:8000' are ignored "
            "(rollouts use HF generate)") in sod_logs.text
