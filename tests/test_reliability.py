"""Reliability: exact resume, interruption, bad inputs, non-finite values, determinism (issue 7)."""

from __future__ import annotations

import math
import os
import signal

import psutil
import pytest
import torch
from datasets import Dataset

from conftest import make_tiny_model
from scripted import ScriptedBackend
from sod_trainer import SODConfig, SODTrainer
from sod_trainer.data import DatasetRowError
from sod_trainer.environments import PythonToolEnvironment
from sod_trainer.reward_calling import RewardFailure
from sod_trainer.rewards import completion_text

ROWS = [{"prompt": [{"role": "user", "content": f"q{i}: what is {i} * 1234?"}], "answer": str(i * 1234)}
        for i in range(6)]


def reward(prompts, completions, answer, **kwargs):
    return [1.0 if a in completion_text(c) else -1.0 for c, a in zip(completions, answer)]


def build(tokenizer, tmp_path, rows=ROWS, reward_funcs=(reward,), raw_rows=False, **overrides):
    config = dict(output_dir=str(tmp_path), per_device_train_batch_size=4, num_generations=2,
                  max_completion_length=24, max_tool_calling_iterations=2, max_steps=4, learning_rate=1e-2,
                  report_to=[], use_cpu=True, save_strategy="no", seed=7, logging_steps=1)
    config.update(overrides)
    student, teacher = make_tiny_model(tokenizer, seed=0), make_tiny_model(tokenizer, hidden=96, seed=1)
    return SODTrainer(model=student, teacher_model=teacher, args=SODConfig(**config),
                      train_dataset=rows if raw_rows else Dataset.from_list(rows), processing_class=tokenizer,
                      reward_funcs=list(reward_funcs))


def params(trainer):
    return torch.cat([p.detach().flatten() for p in trainer.model.parameters()])


def metric_history(trainer):
    drop = {"train_runtime", "train_samples_per_second", "train_steps_per_second"}
    return [{k: v for k, v in entry.items() if k not in drop} for entry in trainer.state.log_history]


def test_two_seeded_runs_give_identical_metrics(tokenizer, tmp_path):
    first = build(tokenizer, tmp_path / "a", max_steps=3)
    first.train()
    second = build(tokenizer, tmp_path / "b", max_steps=3)
    second.train()
    assert metric_history(first) == metric_history(second)
    assert torch.equal(params(first), params(second))


def test_resume_from_checkpoint_matches_uninterrupted_run(tokenizer, tmp_path):
    """Interrupted at step 2 and resumed == 4 uninterrupted steps (exact on CPU: tolerance 0)."""
    full = build(tokenizer, tmp_path / "full", save_strategy="steps", save_steps=2)
    full.train()
    assert os.path.isdir(tmp_path / "full" / "checkpoint-2")
    resumed = build(tokenizer, tmp_path / "full")
    resumed.train(resume_from_checkpoint=str(tmp_path / "full" / "checkpoint-2"))
    assert resumed.state.global_step == 4
    assert torch.equal(params(full), params(resumed))


def test_resume_restores_a_partly_consumed_rollout_batch(tokenizer, tmp_path):
    """steps_per_generation=2 with no accumulation: checkpoint-1 sits in the middle of a rollout batch."""
    kwargs = dict(per_device_train_batch_size=2, steps_per_generation=2, save_strategy="steps", save_steps=1)
    full = build(tokenizer, tmp_path / "full", **kwargs)
    full.train()
    resumed = build(tokenizer, tmp_path / "full", **kwargs)
    resumed.train(resume_from_checkpoint=str(tmp_path / "full" / "checkpoint-1"))
    assert torch.equal(params(full), params(resumed))


def _descendants():
    return [p for p in psutil.Process().children(recursive=True) if p.is_running()]


def test_sigterm_during_rollout_with_tool_in_flight_saves_and_exits_cleanly(tokenizer, tmp_path):
    calls = {"n": 0}

    class SignalsMidCall(PythonToolEnvironment):
        def step(self, turn_text):
            calls["n"] += 1
            if calls["n"] == 9:  # second training step, first turn: the signal arrives while the tool runs
                os.kill(os.getpid(), signal.SIGTERM)
            return super().step(turn_text)

    trainer = build(tokenizer, tmp_path, max_completion_length=200)
    trainer.rollout_engine.environment_factory = SignalsMidCall
    trainer.rollout_engine.backend = ScriptedBackend(
        tokenizer, {"q": ["```python\nimport time\ntime.sleep(0.3)\nprint(7)\n```", "\\boxed{7}"]})
    previous = signal.getsignal(signal.SIGTERM)
    output = trainer.train()
    assert output.metrics.get("interrupted") == 1.0
    assert trainer.state.global_step == 1
    assert os.path.isdir(tmp_path / "checkpoint-1")
    assert os.path.exists(tmp_path / "checkpoint-1" / "optimizer.pt")
    assert signal.getsignal(signal.SIGTERM) is previous  # handlers restored
    assert _descendants() == []  # no sandbox process left behind
    assert calls["n"] == 12  # the turn in flight finished; no further turn was started
    resumed = build(tokenizer, tmp_path, max_completion_length=200, max_steps=2)
    resumed.rollout_engine.backend = trainer.rollout_engine.backend
    resumed.train(resume_from_checkpoint=True)
    assert resumed.state.global_step == 2


def test_nonfinite_loss_skips_the_update_and_is_counted(tokenizer, tmp_path):
    def infinite_reward(prompts, completions, **kwargs):
        return [math.inf] * len(completions)

    trainer = build(tokenizer, tmp_path, reward_funcs=(infinite_reward,), max_steps=1)
    before = params(trainer)
    trainer.train()
    assert torch.equal(before, params(trainer))
    assert trainer.state.log_history[0]["skipped_updates"] == 1.0


def broken(prompts, completions, **kwargs):
    raise KeyError("answer")


def test_reward_function_that_raises_fails_the_run_with_its_traceback(tokenizer, tmp_path):
    """As TRL: the default reward_failure_policy='raise' lets the error out, with the function named in a note."""
    trainer = build(tokenizer, tmp_path, reward_funcs=(broken, reward), max_steps=1)
    with pytest.raises(KeyError, match="answer") as caught:
        trainer.train()
    assert any(frame.name == "broken" for frame in caught.traceback)
    if hasattr(caught.value, "add_note"):  # Python >= 3.11 names the function in a note
        assert "raised by the reward function 'broken'" in "".join(caught.value.__notes__)
    assert trainer.state.global_step == 0


def test_contained_reward_failure_is_counted_and_left_out(tokenizer, tmp_path):
    trainer = build(tokenizer, tmp_path, reward_funcs=(broken, reward), max_steps=1,
                    reward_failure_policy="contain")
    trainer.train()
    log = trainer.state.log_history[0]
    assert log["rewards/broken/failures"] == 1.0 and log["rewards/reward/failures"] == 0.0
    assert "rewards/broken/mean" not in log  # left out (None), not scored 0
    assert math.isfinite(log["loss"])


def test_contained_reward_failures_stop_the_run_after_the_configured_number_of_batches(tokenizer, tmp_path):
    trainer = build(tokenizer, tmp_path, reward_funcs=(broken, reward), max_steps=4,
                    reward_failure_policy="contain", max_consecutive_reward_failures=2)
    with pytest.raises(RewardFailure, match=r"\['broken'\] failed on 2 rollout batches in a row "
                                            r"\(max_consecutive_reward_failures=2\)"):
        trainer.train()
    assert trainer.state.global_step == 1  # the first failing batch trained; the second stopped the run


def test_nonfinite_teacher_logprobs_leave_rows_out_of_the_loss(tokenizer, tmp_path):
    trainer = build(tokenizer, tmp_path, max_steps=1)
    score = trainer.scorer.teacher.score

    def nan_first_row(*args):
        logps = score(*args)
        logps[0] = float("nan")
        return logps

    trainer.scorer.teacher.score = nan_first_row
    trainer.train()
    log = trainer.state.log_history[0]
    assert log["nonfinite_logprob_trajectories"] == 1.0 and math.isfinite(log["loss"])


@pytest.mark.parametrize("row, message", [
    ({"answer": "1"}, r"Dataset row 1 has none of the prompt columns"),
    ({"prompt": "   ", "answer": "1"}, r"Dataset row 1: the prompt in column 'prompt' is empty"),
    ({"prompt": [{"content": "hi"}], "answer": "1"}, r"Dataset row 1: column 'prompt' must hold chat messages"),
    ({"prompt": "x " * 400, "answer": "1"}, r"Dataset row 1: the prompt has \d+ tokens, more than max_prompt_length=64"),
])
def test_bad_rows_fail_before_training_naming_the_row(tokenizer, tmp_path, row, message):
    with pytest.raises(DatasetRowError, match=message):  # a plain list: rows of mixed types reach the check
        build(tokenizer, tmp_path, rows=[ROWS[0], row], raw_rows=True, max_prompt_length=64)


def test_long_prompt_left_truncation_is_allowed_when_configured(tokenizer, tmp_path):
    rows = [ROWS[0], {"prompt": "x " * 400, "answer": "1"}]
    build(tokenizer, tmp_path, rows=rows, raw_rows=True, max_prompt_length=64, prompt_truncation="left")


def test_chat_template_without_generation_prompt_is_rejected(tokenizer, tmp_path):
    from sod_trainer.toy.tokenizer import build_tokenizer

    broken = build_tokenizer()
    broken.chat_template = "{% for m in messages %}{{ m['content'] }}{% endfor %}"
    args = SODConfig(output_dir=str(tmp_path), per_device_train_batch_size=2, num_generations=2, report_to=[],
                     use_cpu=True)
    with pytest.raises(ValueError, match="ignores add_generation_prompt"):
        SODTrainer(model=make_tiny_model(broken), teacher_model=make_tiny_model(broken), args=args,
                   train_dataset=Dataset.from_list(ROWS), processing_class=broken, reward_funcs=[reward])


def test_training_twice_in_one_process_works(tokenizer, tmp_path):
    """The optimizer's guarded step stays a bound method (a second train() unwraps step.__func__)."""
    trainer = build(tokenizer, tmp_path, max_steps=1)
    trainer.train()
    trainer.args.max_steps = 2
    trainer.train()
    assert trainer.state.global_step == 2
