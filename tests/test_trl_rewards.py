"""TRL users' rewards run unchanged (issue 13, item 1): TRL's own ``trl.rewards`` and any function written for
TRL 1.16's GRPOTrainer get the same keyword arguments as there, through ``SODTrainer.train()`` on a scripted
model; metric names are TRL's (checked against the installed TRL's source)."""

from __future__ import annotations

import functools
import inspect
import math
import re

import pandas as pd
import pytest
import torch
from datasets import Dataset
from trl.rewards import accuracy_reward, get_soft_overlong_punishment, think_format_reward

from conftest import make_tiny_model
from scripted import ScriptedBackend
from sod_trainer import SODConfig, SODTrainer
from sod_trainer.environments import PythonToolEnvironment
from test_trl_environments import qwen3, qwen3_base  # noqa: F401 - fixtures: Qwen3's own chat template

RIGHT = "<think>\nOne of three parts.\n</think>\nThe answer is \\boxed{\\frac{1}{3}}."
WRONG = "The answer is \\boxed{\\frac{1}{3}}."
SCRIPTS = {"third": [RIGHT], "half": [WRONG],
           "tool": ["Let me compute.\n```python\nprint(6 * 7)\n```", "So \\boxed{42}."]}
ROWS = [{"prompt": [{"role": "user", "content": "third: what is 1/3?"}], "solution": "\\frac{1}{3}"},
        {"prompt": [{"role": "user", "content": "half: what is 1/2?"}], "solution": "\\frac{1}{2}"}]


def make_trainer(tokenizer, tmp_path, reward_funcs, rows=ROWS, scripts=SCRIPTS, **overrides):
    config = dict(output_dir=str(tmp_path), per_device_train_batch_size=4, num_generations=2,
                  max_completion_length=96, max_tool_calling_iterations=3, max_steps=2, learning_rate=1e-3,
                  report_to=[], use_cpu=True, save_strategy="no", seed=0, logging_steps=1, log_completions=True)
    trainer_kwargs = {key: overrides.pop(key) for key in ("reward_processing_classes", "environment_factory")
                      if key in overrides}
    config.update(overrides)
    trainer = SODTrainer(model=make_tiny_model(tokenizer, seed=0),
                         teacher_model=make_tiny_model(tokenizer, hidden=96, seed=1), args=SODConfig(**config),
                         train_dataset=Dataset.from_list(rows), processing_class=tokenizer,
                         reward_funcs=reward_funcs, **trainer_kwargs)
    trainer.rollout_engine.backend = ScriptedBackend(tokenizer, scripts)
    return trainer


def length_with_eos(tokenizer, text: str) -> int:
    return len(tokenizer.encode(text, add_special_tokens=False)) + 1


def by_prompt(samples, word: str) -> list[dict]:
    return [s for s in samples if word in str(s["prompt"])]


def test_trls_own_reward_functions_score_exactly_as_in_trl(tokenizer, tmp_path):
    """accuracy_reward / think_format_reward read completion[0]["content"]; the overlong punishment reads
    completion_ids. Before: TypeError on plain strings, caught, scored 0."""
    right, wrong = length_with_eos(tokenizer, RIGHT), length_with_eos(tokenizer, WRONG)
    soft = get_soft_overlong_punishment(max_completion_len=right + 2, soft_punish_cache=8)
    trainer = make_trainer(tokenizer, tmp_path, [accuracy_reward, think_format_reward, soft])
    assert trainer.reward_func_names == ["accuracy_reward", "think_format_reward", "soft_overlong_punishment_reward"]
    trainer.train()
    samples = trainer.completion_samples()
    assert len(samples) == 4
    # DAPO's soft punishment with L_max = right + 2, L_cache = 8: (L_max - L_cache - n) / L_cache inside the cache
    assert right - wrong > 6  # WRONG is short enough to get none
    penalty = {"third": -6 / 8, "half": 0.0}
    for word, accuracy, think in (("third", 1.0, 1.0), ("half", 0.0, 0.0)):
        for sample in by_prompt(samples, word):
            assert sample["completion"] == [{"role": "assistant", "content": RIGHT if word == "third" else WRONG}]
            assert sample["rewards"] == pytest.approx({"accuracy_reward": accuracy, "think_format_reward": think,
                                                       "soft_overlong_punishment_reward": penalty[word]})
    log = trainer.state.log_history[-2]
    assert log["rewards/accuracy_reward/mean"] == 0.5 and log["rewards/think_format_reward/mean"] == 0.5
    # the completions table, as TRL writes it, with accuracy_reward's log_extra columns and SOD's step weights
    table = pd.read_parquet(tmp_path / "completions" / "completions_00002.parquet")
    assert list(table.columns) == ["step", "prompt", "completion", "accuracy_reward", "think_format_reward",
                                   "soft_overlong_punishment_reward", "answer_parsed", "gold_parsed", "solution",  # sorted, as TRL
                                   "advantage", "step_weights", "step_divergences"]
    assert set(table["solution"]) == {"\\frac{1}{3}", "\\frac{1}{2}"}
    assert all(len(weights) == 1 and weights[0] == 1.0 for weights in table["step_weights"])  # one step, w_1 = 1
    assert sorted(table["accuracy_reward"]) == [0.0, 0.0, 1.0, 1.0]


def test_every_trl_keyword_reaches_the_reward(tokenizer, tmp_path):
    """completion_ids, trainer_state, log_extra, log_metric, environments, dataset columns, async, partial names."""
    seen = {}

    def inspects(prompts, completions, completion_ids, trainer_state, log_extra, log_metric, environments,
                 solution, **kwargs):
        seen.setdefault("steps", []).append(trainer_state.global_step)
        seen["prompts"], seen["completions"], seen["ids"], seen["environments"] = (prompts, completions,
                                                                                   completion_ids, environments)
        log_metric("my_metric", 2.5)
        log_extra("note", [f"n{i}" for i in range(len(completions))])
        return [float(trainer_state.global_step)] * len(completions)

    async def judge(completions, **kwargs):
        return [0.25] * len(completions)

    def scaled(completions, scale, **kwargs):
        return [scale] * len(completions)

    trainer = make_trainer(tokenizer, tmp_path, [inspects, judge, functools.partial(scaled, scale=3.0)])
    assert trainer.reward_func_names == ["inspects", "judge", "scaled"]
    trainer.train()
    assert seen["steps"] == [0, 1]  # the trainer's state at each rollout batch
    assert all(isinstance(p, list) and p[-1]["role"] == "user" for p in seen["prompts"])
    assert all(c[0]["role"] == "assistant" for c in seen["completions"])
    assert len(seen["environments"]) == 4 and all(isinstance(e, PythonToolEnvironment) for e in seen["environments"])
    for completion, ids in zip(seen["completions"], seen["ids"]):
        assert tokenizer.decode(ids, skip_special_tokens=True) == completion[0]["content"]
    first, second = (entry for entry in trainer.state.log_history if "loss" in entry)
    assert (first["rewards/inspects/mean"], second["rewards/inspects/mean"]) == (0.0, 1.0)
    assert first["rewards/judge/mean"] == 0.25 and first["rewards/scaled/mean"] == 3.0
    assert first["my_metric"] == 2.5
    table = pd.read_parquet(tmp_path / "completions" / "completions_00002.parquet")
    assert list(table["note"]) == ["n0", "n1", "n2", "n3"]


def test_multi_turn_tool_completions_are_assistant_and_tool_messages(tokenizer, tmp_path):
    seen = []

    def record(completions, **kwargs):
        seen.extend(completions)
        return [1.0] * len(completions)

    rows = [{"prompt": [{"role": "user", "content": "tool: 6*7?"}], "solution": "42"}]
    trainer = make_trainer(tokenizer, tmp_path, [record, accuracy_reward], rows=rows, max_steps=1,
                           per_device_train_batch_size=2)
    trainer.train()
    assert [m["role"] for m in seen[0]] == ["assistant", "tool", "assistant"]
    assert seen[0][0]["content"] == SCRIPTS["tool"][0] and seen[0][2]["content"] == SCRIPTS["tool"][1]
    assert seen[0][1]["content"].strip() == "42"  # what the tool printed, as the model was shown it
    # TRL's accuracy_reward reads the first assistant message (no answer there): 0, not an error
    assert trainer.completion_samples()[0]["rewards"]["accuracy_reward"] == 0.0


def test_plain_text_datasets_get_strings(tokenizer, tmp_path):
    seen = {}

    def record(prompts, completions, **kwargs):
        seen["prompts"], seen["completions"] = prompts, completions
        return [1.0] * len(completions)

    rows = [{"prompt": "third: what is 1/3?", "solution": "\\frac{1}{3}"},
            {"prompt": "half: what is 1/2?", "solution": "\\frac{1}{2}"}]
    trainer = make_trainer(tokenizer, tmp_path, [record], rows=rows, max_steps=1)
    trainer.train()
    assert sorted(set(seen["prompts"])) == ["half: what is 1/2?", "third: what is 1/3?"]
    assert sorted(set(seen["completions"])) == sorted([RIGHT, WRONG])


def test_a_row_whose_rewards_are_all_none_gets_no_advantage(tokenizer, tmp_path):
    """As TRL: left out of its group's baseline, advantage 0 (before: None counted as 0 and moved the policy)."""
    def half_of_them(completions, **kwargs):
        return [None if i % 2 == 0 else 1.0 for i in range(len(completions))]

    trainer = make_trainer(tokenizer, tmp_path, [half_of_them], max_steps=1)
    trainer.train()
    samples = trainer.completion_samples()
    assert [math.isnan(s["reward"]) for s in samples] == [True, False, True, False]
    assert [s["advantage"] for s in samples] == [0.0, 0.0, 0.0, 0.0]
    log = trainer.state.log_history[0]
    assert log["reward"] == 1.0 and log["frac_reward_zero_std"] == 0.0


def tiny_reward_model(tokenizer, seed: int = 3):
    from transformers import Qwen3Config, Qwen3ForSequenceClassification

    torch.manual_seed(seed)
    config = Qwen3Config(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                         num_attention_heads=2, num_key_value_heads=1, head_dim=16, num_labels=1,
                         pad_token_id=tokenizer.pad_token_id)
    return Qwen3ForSequenceClassification(config).eval()


def expected_model_rewards(model, tokenizer, samples) -> list[float]:
    values = []
    for sample in samples:
        text = tokenizer.apply_chat_template(sample["prompt"] + sample["completion"], tokenize=False)
        ids = torch.tensor([tokenizer.encode(text, add_special_tokens=False)])
        with torch.no_grad():
            values.append(float(model(input_ids=ids).logits[0, 0]))
    return values


def test_a_reward_model_scores_the_chat_templated_conversation(tokenizer, tmp_path):
    """A PreTrainedModel reward (before: called like a function with keyword arguments, failed, scored 0)."""
    model = tiny_reward_model(tokenizer)
    model.config._name_or_path = "org/tiny-reward-model"
    trainer = make_trainer(tokenizer, tmp_path, [model], max_steps=1, reward_processing_classes=[tokenizer])
    assert trainer.reward_func_names == ["tiny-reward-model"]
    trainer.train()
    samples = trainer.completion_samples()
    got = [s["rewards"]["tiny-reward-model"] for s in samples]
    assert got == pytest.approx(expected_model_rewards(model, tokenizer, samples), abs=1e-5)
    assert len(set(round(v, 6) for v in got)) == 2  # two different completions, two scores


def test_a_reward_model_id_is_loaded_as_trl_loads_it(tokenizer, tmp_path):
    model = tiny_reward_model(tokenizer, seed=4)
    folder = tmp_path / "my-rm"
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    trainer = make_trainer(tokenizer, tmp_path / "run", [str(folder)], max_steps=1)
    assert trainer.reward_func_names == ["my-rm"]
    trainer.train()
    samples = trainer.completion_samples()
    assert [s["rewards"]["my-rm"] for s in samples] == pytest.approx(
        expected_model_rewards(model, tokenizer, samples), abs=1e-5)


def test_something_that_is_not_a_reward_is_refused_at_construction(tokenizer, tmp_path):
    with pytest.raises(TypeError, match=r"reward_funcs\[1\] is 42 \(type int\); each reward must be a callable"):
        make_trainer(tokenizer, tmp_path, [think_format_reward, 42])
    with pytest.raises(ValueError, match=r"number of reward processing classes \(2\) must match"):
        make_trainer(tokenizer, tmp_path, [think_format_reward], reward_processing_classes=[None, None])


# ------------------------------------------------------------------------------------------ metric names

# TRL's metric names whose concept SOD shares (the rest of TRL's are for features SOD does not have: kl, images,
# vLLM importance sampling, cispo / vespo losses, step_time)
SHARED = ["num_tokens", "completions/mean_length", "completions/min_length", "completions/max_length",
          "completions/clipped_ratio", "completions/mean_terminated_length", "completions/min_terminated_length",
          "completions/max_terminated_length", "tools/call_frequency", "tools/failure_frequency", "reward",
          "reward_std", "frac_reward_zero_std", "entropy", "clip_ratio/low_mean", "clip_ratio/high_mean",
          "clip_ratio/region_mean", "clip_ratio/low_min", "clip_ratio/high_max"]


def trl_metric_names() -> set[str]:
    from trl.trainer import grpo_trainer

    return set(re.findall(r'_metrics\[mode\]\["([^"]+)"\]', inspect.getsource(grpo_trainer)))


def test_metric_names_are_trls_where_the_concept_is_the_same(tokenizer, tmp_path):
    trl_names = trl_metric_names()
    assert set(SHARED) <= trl_names, set(SHARED) - trl_names  # drift in TRL is caught here
    assert {"rewards/{reward_func_name}/mean", "rewards/{reward_func_name}/std"} <= set(
        re.findall(r'_metrics\[mode\]\[f"([^"]+)"\]', inspect.getsource(__import__("trl").trainer.grpo_trainer)))
    trainer = make_trainer(tokenizer, tmp_path, [think_format_reward], max_steps=1,
                           scripts={"third": [SCRIPTS["tool"][0], RIGHT], "half": [WRONG]})
    trainer.train()
    log = trainer.state.log_history[0]
    for name in SHARED + ["rewards/think_format_reward/mean", "rewards/think_format_reward/std"]:
        assert name in log and math.isfinite(log[name]), name
    # SOD's own metrics never take a TRL name with another meaning
    sod_only = {"accuracy", "trajectories/mean_length", "tools/timeouts_per_trajectory", "dual_clip_ratio",
                "tools/error_trajectory_ratio", "tools/environment_failures", "steps_per_trajectory", "skipped_updates"}
    assert not sod_only & trl_names
    # completions/mean_length counts model tokens only (TRL's tool_mask); the tool output is in trajectories/
    model_tokens = {"third": length_with_eos(tokenizer, SCRIPTS["tool"][0]) + length_with_eos(tokenizer, RIGHT),
                    "half": length_with_eos(tokenizer, WRONG)}
    assert log["completions/mean_length"] == (model_tokens["third"] + model_tokens["half"]) / 2
    assert log["completions/max_length"] == model_tokens["third"]
    assert log["trajectories/mean_length"] > log["completions/mean_length"]
    assert log["tools/call_frequency"] == 0.5 and log["tools/failure_frequency"] == 0.0
    samples = trainer.completion_samples()
    assert log["num_tokens"] == sum(len(s["prompt_ids"]) + sum(s["assistant_mask"]) for s in samples)


def test_tool_calling_completions_are_the_messages_trl_builds(qwen3, tmp_path):
    """A TRL environment on Qwen3's template: the parsed assistant message (with its tool_calls), one tool message
    per call, the next assistant message; environments= holds the user's objects; get_reward is a source."""
    from test_trl_environments import IncrementEnv, call

    seen = {}

    def record(completions, environments, **kwargs):
        seen["completions"], seen["environments"] = completions, environments
        return [0.5] * len(completions)

    rows = [{"prompt": [{"role": "user", "content": "alpha: reach 5."}], "target": 5}]
    scripts = {"alpha:": [call("increment", a=2) + "\n" + call("increment", a=3), "Done."]}
    trainer = make_trainer(qwen3, tmp_path, [record], rows=rows, scripts=scripts, max_steps=1,
                           per_device_train_batch_size=2, max_completion_length=200,
                           environment_factory=IncrementEnv)
    assert trainer.reward_func_names == ["record", "IncrementEnv"]
    trainer.train()
    completion = seen["completions"][0]
    assert [m["role"] for m in completion] == ["assistant", "tool", "tool", "assistant"]
    calls = [c["function"] for c in completion[0]["tool_calls"]]
    assert calls == [{"name": "increment", "arguments": {"a": 2}}, {"name": "increment", "arguments": {"a": 3}}]
    assert completion[1:3] == [{"role": "tool", "name": "increment", "content": "2"},
                               {"role": "tool", "name": "increment", "content": "5"}]
    assert completion[3]["content"] == "Done."
    assert all(type(e) is IncrementEnv for e in seen["environments"])
    assert trainer.completion_samples()[0]["rewards"] == {"record": 0.5, "IncrementEnv": 1.0}
    log = trainer.state.log_history[0]
    assert log["tools/call_frequency"] == 2.0 and log["tools/failure_frequency"] == 0.0
