"""On-policy batches: π_old from the loss's own forward pass instead of a separate student pass (issue 6, fix 2)."""

from __future__ import annotations

import math

import pytest
import torch

from scripted import dataset
from sod_trainer import SODConfig
from sod_trainer.on_policy import is_on_policy
from test_trainer import make_trainer

SOD_METRICS = ("entropy", "opd/reverse_kl", "weights/mean", "weights/min", "steps_per_trajectory",
               "divergence/step_1", "divergence/step_2", "weights/step_2", "patterns/stable", "patterns/erroneous",
               "patterns/recovery", "nonfinite_logprob_trajectories")


def _one_batch(trainer, on_policy: bool, scheme: str):
    """Loss, gradients, metrics and student forward passes of one rollout batch (two micro-batches)."""
    trainer._on_policy = on_policy
    trainer.args.step_weighting = scheme
    calls = []
    handle = trainer.model.register_forward_hook(lambda *_: calls.append(1))
    trainer.model.train()
    trainer._metrics["train"].clear()
    rows = [row for row in dataset() for _ in range(2)] * 2
    losses = []
    try:
        for _ in range(2):  # steps_per_generation = gradient_accumulation_steps = 2: one optimizer step
            inputs = trainer._prepare_inputs(rows)
            loss = trainer.compute_loss(trainer.model, inputs)
            loss.backward()
            losses.append(float(loss))
    finally:
        handle.remove()
    grads = {n: p.grad.clone() for n, p in trainer.model.named_parameters()}
    trainer.model.zero_grad(set_to_none=True)
    trainer._step = 0
    metrics = {key: values for key, values in trainer._metrics["train"].items()}
    return losses, grads, metrics, len(calls), trainer._last_samples


@pytest.mark.parametrize("scheme", ["sod", "decay"])
def test_on_policy_batches_give_the_two_pass_gradient_and_metrics_with_one_fewer_forward(tokenizer, tmp_path,
                                                                                          scheme):
    trainer = make_trainer(tokenizer, tmp_path, per_device_train_batch_size=4, gradient_accumulation_steps=2,
                           steps_per_generation=2, log_completions=True)  # samples (with step weights) are kept
    assert trainer._on_policy
    two_pass = _one_batch(trainer, False, scheme)
    one_pass = _one_batch(trainer, True, scheme)
    assert one_pass[0] == pytest.approx(two_pass[0], rel=1e-5, abs=1e-7)
    for name, grad in two_pass[1].items():
        assert torch.allclose(one_pass[1][name], grad, rtol=1e-4, atol=1e-7), name
    # the §10 diagnostics of the whole rollout batch, computed once, equal the two-pass ones
    for key in SOD_METRICS:
        (two,), (one,) = two_pass[2][key], one_pass[2][key]
        assert one == pytest.approx(two, rel=1e-5, abs=1e-6) or (math.isnan(one) and math.isnan(two)), key
    assert two_pass[2]["weights/min"][0] < 1.0  # the scripted batch has a down-weighted step
    # one student forward per micro-batch instead of a scoring pass per row chunk + one per micro-batch
    assert (two_pass[3], one_pass[3]) == (4, 2)
    assert one_pass[4][0]["weights"] == pytest.approx(two_pass[4][0]["weights"], rel=1e-5)


@pytest.mark.parametrize("overrides, expected", [
    ({}, True),
    ({"steps_per_generation": 2, "gradient_accumulation_steps": 2}, True),
    ({"steps_per_generation": 4, "gradient_accumulation_steps": 2}, False),  # two updates per rollout batch
    ({"steps_per_generation": 2, "gradient_accumulation_steps": 1}, False),  # an update inside the batch
    ({"num_iterations": 2}, False),  # the batch is reused after an update
])
def test_on_policy_only_when_no_update_falls_inside_a_rollout_batch(tmp_path, overrides, expected):
    args = SODConfig(output_dir=str(tmp_path), per_device_train_batch_size=4, num_generations=2, **overrides)
    assert is_on_policy(args) is expected


def test_reused_batches_keep_the_separate_old_policy_pass(tokenizer, tmp_path):
    trainer = make_trainer(tokenizer, tmp_path, num_iterations=2, max_steps=2)
    assert not trainer._on_policy
    inputs = trainer._prepare_inputs([row for row in dataset() for _ in range(2)])
    assert "old_logps" in inputs and "sequence_advantages" not in inputs
    trainer.train()
    assert all(math.isfinite(entry["loss"]) for entry in trainer.state.log_history if "loss" in entry)
