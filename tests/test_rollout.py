"""Multi-turn rollouts built token-in/token-out: exact ids, masks, steps, stops (SOD_SPEC §2, §7)."""

from __future__ import annotations

import torch

from scripted import ScriptedBackend
from sod_trainer.environments import PythonToolEnvironment, ToolEnvironment, ToolResult
from sod_trainer.objective import step_ids_from_mask, token_weights
from sod_trainer.rollout import RolloutEngine, ToolResponseFormatter
from sod_trainer.rollout.hf import cut_at_stop
from sod_trainer.scoring import collate_trajectories

CODE_TURN = "Compute it.\n```python\n1234 * 56\n```"
ANSWER_TURN = "The answer is \\boxed{69104}."


def prompt_ids(tokenizer, text):
    return tokenizer.apply_chat_template([{"role": "user", "content": text}], add_generation_prompt=True,
                                         tokenize=False)


def make_engine(tokenizer, scripts, **kwargs):
    backend = ScriptedBackend(tokenizer, scripts)
    kwargs.setdefault("max_completion_length", 256)
    return RolloutEngine(backend, tokenizer, PythonToolEnvironment, **kwargs), backend


def test_glue_is_derived_from_chat_template(tokenizer):
    formatter = ToolResponseFormatter(tokenizer)
    assert formatter.template == ("<|im_end|>\n<|im_start|>user\n<tool_response>\n{observation}\n"
                                  "</tool_response><|im_end|>\n<|im_start|>assistant\n")
    # the model sampled <|im_end|> itself: the glue does not repeat it
    ids = formatter("42", turn_ended_with_eos=True)
    assert tokenizer.decode(ids) == "\n<|im_start|>user\n<tool_response>\n42\n</tool_response><|im_end|>\n<|im_start|>assistant\n"
    ids = formatter("42", turn_ended_with_eos=False)
    assert tokenizer.decode(ids).startswith("<|im_end|>\n<|im_start|>user")


def test_multi_turn_batch_has_exact_ids_mask_steps_and_weights(tokenizer):
    engine, backend = make_engine(tokenizer, {"first": [CODE_TURN, ANSWER_TURN], "second": [ANSWER_TURN]})
    prompts = [tokenizer.encode(prompt_ids(tokenizer, q), add_special_tokens=False) for q in ("first q", "second q")]
    trajectories = engine.rollout(prompts, [{}, {}])
    eos = tokenizer.eos_token_id
    turn1 = tokenizer.encode(CODE_TURN, add_special_tokens=False) + [eos]
    glue = tokenizer.encode("\n<|im_start|>user\n<tool_response>\n69104\n</tool_response><|im_end|>\n"
                            "<|im_start|>assistant\n", add_special_tokens=False)
    turn2 = tokenizer.encode(ANSWER_TURN, add_special_tokens=False) + [eos]
    first, second = trajectories
    assert first.completion_ids == turn1 + glue + turn2
    assert first.assistant_mask == [1] * len(turn1) + [0] * len(glue) + [1] * len(turn2)
    assert [t.tool_called for t in first.turns] == [True, False]
    assert first.turns[0].observation == "69104" and not first.turns[0].tool_error
    assert first.stop_reason == "answer" and not first.truncated
    assert second.completion_ids == turn2 and second.assistant_mask == [1] * len(turn2)
    # all live trajectories generate together: 2 contexts on turn 1, then only the live one
    assert backend.calls == [2, 1]

    batch = collate_trajectories(trajectories, tokenizer.pad_token_id)
    mask = batch["assistant_mask"]
    step_ids = step_ids_from_mask(mask)
    n1, ng, n2 = len(turn1), len(glue), len(turn2)
    assert step_ids[0, :n1].eq(0).all() and step_ids[0, n1:n1 + ng].eq(-1).all()
    assert step_ids[0, n1 + ng:n1 + ng + n2].eq(1).all()
    assert step_ids[1, :n2].eq(0).all() and step_ids[1, n2:].eq(-1).all()  # right padding is no step
    # the packed rows hold prompt + completion from position 0; completion_start points at the completion
    row = batch["input_ids"][0, : len(prompts[0]) + len(first.completion_ids)].tolist()
    assert row == prompts[0] + first.completion_ids
    assert batch["completion_start"].tolist() == [len(prompts[0]), len(prompts[1])]
    # weights: step 1 divergence 0.5, step 2 divergence 1.0 -> w2 = 0.5
    s = torch.zeros(mask.shape)
    s[0, :n1] = 0.5
    s[0, n1 + ng:n1 + ng + n2] = 1.0
    w = token_weights(s, torch.zeros_like(s), mask)
    assert w[0, :n1].eq(1.0).all() and w[0, n1:n1 + ng].eq(0).all()
    assert torch.allclose(w[0, n1 + ng:n1 + ng + n2], torch.tensor(0.5), atol=1e-5)


def test_tool_error_is_flagged_and_observation_is_traceback(tokenizer):
    engine, _ = make_engine(tokenizer, {"q": ["```python\nprint(undefined_name)\n```", ANSWER_TURN]})
    (trajectory,) = engine.rollout([tokenizer.encode(prompt_ids(tokenizer, "q"), add_special_tokens=False)], [{}])
    assert trajectory.turns[0].tool_error and trajectory.first_error_turn == 0
    assert "NameError" in trajectory.turns[0].observation
    assert len(trajectory.turns[0].observation) <= 256


def test_budget_truncates_last_step_and_max_turns_stop(tokenizer):
    engine, _ = make_engine(tokenizer, {"q": [CODE_TURN]}, max_completion_length=30)
    (trajectory,) = engine.rollout([tokenizer.encode(prompt_ids(tokenizer, "q"), add_special_tokens=False)], [{}])
    assert trajectory.completion_length <= 30
    assert trajectory.stop_reason in ("budget", "observation_over_budget")
    engine, _ = make_engine(tokenizer, {"q": [CODE_TURN]}, max_turns=3)
    (trajectory,) = engine.rollout([tokenizer.encode(prompt_ids(tokenizer, "q"), add_special_tokens=False)], [{}])
    assert trajectory.num_turns == 3 and trajectory.stop_reason == "max_turns"
    assert sum(1 for a, b in zip(trajectory.assistant_mask, trajectory.assistant_mask[1:]) if a == 0 and b == 1) == 2


def test_crashing_environment_is_contained(tokenizer):
    class Crashing(ToolEnvironment):
        def step(self, turn_text: str) -> ToolResult:
            raise RuntimeError("tool backend died")

    backend = ScriptedBackend(tokenizer, {"q": [CODE_TURN]})
    engine = RolloutEngine(backend, tokenizer, Crashing, max_completion_length=256)
    (trajectory,) = engine.rollout([tokenizer.encode(prompt_ids(tokenizer, "q"), add_special_tokens=False)], [{}])
    assert trajectory.turns[0].tool_error and trajectory.stop_reason == "environment"
    assert "tool backend died" in trajectory.turns[0].observation


def test_cut_at_stop_keeps_stop_string_and_eos(tokenizer):
    decode = tokenizer.decode
    ids = tokenizer.encode("<code>x=1</code> more text", add_special_tokens=False)
    out = cut_at_stop(ids, {tokenizer.eos_token_id}, ["</code>"], decode)
    assert out.finish_reason == "stop" and decode(out.token_ids).endswith("</code>")
    ids = tokenizer.encode("done", add_special_tokens=False) + [tokenizer.eos_token_id, 5, 6]
    out = cut_at_stop(ids, {tokenizer.eos_token_id}, [], decode)
    assert out.finish_reason == "eos" and out.token_ids[-1] == tokenizer.eos_token_id
    out = cut_at_stop(ids[:2], {tokenizer.eos_token_id}, [], decode)
    assert out.finish_reason == "length"


def test_backend_rollout_window_brackets_all_turns_of_a_batch(tokenizer):
    """A backend with rollout_window (vLLM: sync weights, wake up) is entered once per batch, not per turn."""
    from contextlib import contextmanager

    backend = ScriptedBackend(tokenizer, {"first": [CODE_TURN, ANSWER_TURN]})
    events = []

    @contextmanager
    def rollout_window():
        events.append("enter")
        yield
        events.append(f"exit after {len(backend.calls)} calls")

    backend.rollout_window = rollout_window
    engine = RolloutEngine(backend, tokenizer, PythonToolEnvironment, max_completion_length=256)
    engine.rollout([tokenizer.encode(prompt_ids(tokenizer, "first q"), add_special_tokens=False)], [{}])
    assert events == ["enter", "exit after 2 calls"]
