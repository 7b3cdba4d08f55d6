"""SODTrainer end to end on tiny offline models with the real Python tool."""

from __future__ import annotations

import math

import pytest
import torch

from conftest import make_tiny_model
from scripted import SCRIPTS, ScriptedBackend, dataset, reward
from sod_trainer import SODConfig, SODTrainer
from sod_trainer.logprobs import sampled_token_logprobs

def make_trainer(tokenizer, tmp_path, **overrides):
    student, teacher = make_tiny_model(tokenizer, seed=0), make_tiny_model(tokenizer, hidden=96, seed=1)
    config = dict(output_dir=str(tmp_path), per_device_train_batch_size=4, num_generations=2, max_completion_length=160,
                  max_steps=3, learning_rate=5e-3, report_to=[], use_cpu=True, save_strategy="no", seed=0,
                  max_tool_calling_iterations=4, logging_steps=1)
    config.update(overrides)
    trainer = SODTrainer(model=student, teacher_model=teacher, args=SODConfig(**config), train_dataset=dataset(),
                         processing_class=tokenizer, reward_funcs=[reward])
    trainer.rollout_engine.backend = ScriptedBackend(tokenizer, SCRIPTS)
    return trainer


def test_trainer_trains_with_the_python_tool_and_logs_sod_metrics(tokenizer, tmp_path):
    trainer = make_trainer(tokenizer, tmp_path)
    before = {n: p.detach().clone() for n, p in trainer.model.named_parameters()}
    trainer.train()
    changed = [n for n, p in trainer.model.named_parameters() if not torch.equal(before[n], p.detach())]
    assert len(changed) == len(before)
    logs = [entry for entry in trainer.state.log_history if "loss" in entry]
    assert len(logs) == 3
    last = logs[-1]
    for key in ("reward", "accuracy", "completions/mean_length", "tools/call_frequency", "tools/failure_frequency",
                "steps_per_trajectory", "divergence/step_1", "divergence/step_2", "weights/step_2", "weights/mean",
                "weights/min", "patterns/stable", "patterns/erroneous", "patterns/recovery", "entropy",
                "clip_ratio/low_mean", "clip_ratio/high_mean", "dual_clip_ratio"):
        assert key in last and math.isfinite(last[key]), key
    # alpha: 1 tool call, beta: 2 calls of which one fails (NameError) -> 1.5 calls per completion, 1 of 3 failed
    assert last["tools/call_frequency"] == pytest.approx(1.5)
    assert last["tools/failure_frequency"] == pytest.approx(1 / 3)
    assert last["accuracy"] == pytest.approx(0.5)
    assert last["steps_per_trajectory"] == pytest.approx(2.5)
    shares = last["patterns/stable"] + last["patterns/erroneous"] + last["patterns/recovery"]
    assert shares == pytest.approx(1.0)


def test_observation_tokens_get_no_gradient(tokenizer, tmp_path):
    trainer = make_trainer(tokenizer, tmp_path)
    trainer.model.train()
    inputs = trainer._prepare_inputs([row for row in dataset() for _ in range(2)])
    decoder = trainer.model.get_decoder()
    captured = {}

    def hook(_module, _inputs, output):
        output.last_hidden_state.retain_grad()
        captured["hidden"] = output.last_hidden_state

    handle = decoder.register_forward_hook(hook)
    loss = trainer.compute_loss(trainer.model, inputs)
    handle.remove()
    loss.backward()
    grad = captured["hidden"].grad.abs().sum(-1)  # (B, L): final hidden state at p only feeds the logits at p
    loss_mask = inputs["loss_mask"]
    start = inputs["completion_start"]
    for b in range(grad.shape[0]):
        n = int(inputs["attention_mask"][b].sum())
        predicts_model_token = torch.zeros(grad.shape[1], dtype=torch.bool)
        for j in range(loss_mask.shape[1]):
            if loss_mask[b, j]:
                predicts_model_token[start[b] + j - 1] = True
        assert (grad[b][~predicts_model_token] == 0).all(), "observation/prompt positions received gradient"
        assert (grad[b][predicts_model_token] > 0).sum() >= predicts_model_token.sum() * 0.9
        assert n > int(start[b])
    # the batch really has observation tokens inside the completion
    assert (inputs["loss_mask"] == 0).any()


def test_loss_does_not_depend_on_how_the_batch_is_split(tokenizer, tmp_path):
    """Token-mean over the global batch: 1 micro-batch of 4 == 2 accumulated micro-batches of 2."""
    grads = []
    for per_device, accumulation in ((4, 1), (2, 2)):
        trainer = make_trainer(tokenizer, tmp_path, per_device_train_batch_size=per_device,
                               gradient_accumulation_steps=accumulation, steps_per_generation=2 // per_device * 2
                               if per_device == 2 else 1, num_generations=2)
        trainer.model.train()
        torch.manual_seed(0)
        batch = trainer.scorer.build([row for row in dataset() for _ in range(2)], trainer.rollout_engine,
                                     student_logprobs=trainer._student_logprobs)
        trainer.model.zero_grad()
        for part in batch.slices(trainer.args.steps_per_generation, accumulation):
            trainer.compute_loss(trainer.model, part).backward()
        grads.append(torch.cat([p.grad.flatten() for p in trainer.model.parameters()]))
    assert torch.allclose(grads[0], grads[1], rtol=1e-4, atol=1e-7)


def test_teacher_with_another_vocabulary_is_rejected(tokenizer, tmp_path):
    from transformers import Qwen3Config, Qwen3ForCausalLM

    student = make_tiny_model(tokenizer)
    teacher = Qwen3ForCausalLM(Qwen3Config(vocab_size=len(tokenizer) + 100, hidden_size=64, intermediate_size=64,
                                           num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=1,
                                           head_dim=32))
    args = SODConfig(output_dir=str(tmp_path), per_device_train_batch_size=2, num_generations=2, report_to=[],
                     use_cpu=True)
    with pytest.raises(ValueError, match=f"{len(tokenizer) + 100} tokens but the student's has {len(tokenizer)}"):
        SODTrainer(model=student, teacher_model=teacher, args=args, train_dataset=dataset(), processing_class=tokenizer,
                   reward_funcs=[reward])


def test_missing_reward_funcs_with_grpo_is_an_error(tokenizer, tmp_path):
    args = SODConfig(output_dir=str(tmp_path), per_device_train_batch_size=2, num_generations=2, report_to=[],
                     use_cpu=True)
    with pytest.raises(ValueError, match="no reward_funcs"):
        SODTrainer(model=make_tiny_model(tokenizer), teacher_model=make_tiny_model(tokenizer), args=args,
                   train_dataset=dataset(), processing_class=tokenizer)


def test_config_rejects_groups_split_across_processes(tmp_path):
    with pytest.raises(ValueError, match="not a multiple of num_generations=8"):
        SODConfig(output_dir=str(tmp_path), per_device_train_batch_size=4, num_generations=8)
    with pytest.raises(ValueError, match="opd_coef and grpo_coef are both 0"):
        SODConfig(output_dir=str(tmp_path), per_device_train_batch_size=8, opd_coef=0, grpo_coef=0)


def test_pure_sod_without_rewards_runs(tokenizer, tmp_path):
    student, teacher = make_tiny_model(tokenizer), make_tiny_model(tokenizer, hidden=96, seed=1)
    args = SODConfig(output_dir=str(tmp_path), per_device_train_batch_size=4, num_generations=2, max_steps=1,
                     max_completion_length=120, report_to=[], use_cpu=True, save_strategy="no", grpo_coef=0.0,
                     step_weighting="decay")
    trainer = SODTrainer(model=student, teacher_model=teacher, args=args, train_dataset=dataset(),
                         processing_class=tokenizer)
    trainer.rollout_engine.backend = ScriptedBackend(tokenizer, SCRIPTS)
    trainer.train()
    assert math.isfinite(trainer.state.log_history[0]["loss"])


def test_evaluate_runs_rollouts_and_logs_eval_metrics(tokenizer, tmp_path):
    trainer = make_trainer(tokenizer, tmp_path, per_device_eval_batch_size=4)
    trainer.eval_dataset = dataset()
    metrics = trainer.evaluate()
    assert metrics["eval_accuracy"] == pytest.approx(0.5)  # alpha right, beta wrong, 2 samples each
    assert metrics["eval_tools/call_frequency"] == pytest.approx(1.5)
    assert math.isfinite(metrics["eval_loss"])


def test_plain_grpo_needs_no_teacher(tokenizer, tmp_path):
    args = SODConfig(output_dir=str(tmp_path), per_device_train_batch_size=4, num_generations=2, max_steps=1,
                     max_completion_length=120, report_to=[], use_cpu=True, save_strategy="no", opd_coef=0.0)
    trainer = SODTrainer(model=make_tiny_model(tokenizer), args=args, train_dataset=dataset(),
                         processing_class=tokenizer, reward_funcs=[reward])
    trainer.rollout_engine.backend = ScriptedBackend(tokenizer, SCRIPTS)
    trainer.train()
    assert trainer.teacher_model is None and math.isfinite(trainer.state.log_history[0]["loss"])
    with pytest.raises(ValueError, match="No teacher"):
        SODTrainer(model=make_tiny_model(tokenizer), args=SODConfig(output_dir=str(tmp_path), report_to=[],
                   per_device_train_batch_size=8, use_cpu=True), train_dataset=dataset(), processing_class=tokenizer,
                   reward_funcs=[reward])


def test_chunked_entropy_matches_full_softmax(tokenizer):
    model = make_tiny_model(tokenizer)
    ids = torch.randint(3, len(tokenizer), (2, 10))
    start = torch.tensor([2, 4])
    mask = torch.ones(2, 6, dtype=torch.bool)
    _, entropy = sampled_token_logprobs(model, ids, torch.ones_like(ids), start, mask, chunk_size=4, with_entropy=True)
    logits = model(input_ids=ids).logits.float()
    probs = torch.softmax(logits, -1)
    full = -(probs * torch.log_softmax(logits, -1)).sum(-1)
    for b in range(2):
        assert torch.allclose(entropy[b], full[b, start[b] - 1:start[b] + 5], atol=1e-5)
    assert sampled_token_logprobs(model, ids, torch.ones_like(ids), start, mask)[1] is None
