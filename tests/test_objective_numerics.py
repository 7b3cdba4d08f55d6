"""Numerics of the step weights (issue 14 item 6) and IW-OPD's token weights pinned against TRL's own code."""

from __future__ import annotations

import types

import pytest
import torch

from sod_trainer.objective import (
    combined_advantages,
    iw_opd_token_weights,
    step_and_token_weights,
    step_divergence,
    step_ids_from_mask,
    step_weights,
    token_weights,
)


# ----------------------------------------------------------------------------- precision
def test_float64_in_float64_out_and_close_logprobs_keep_their_digits():
    # two log-probs 1e-9 apart at magnitude 10: float32 cannot tell them apart (its spacing there is ~1e-6)
    s = torch.tensor([[-10.0, -10.0, 0.0, -10.0]], dtype=torch.float64)
    q = s.clone()
    q[0, 0] -= 2e-9
    q[0, 3] -= 1e-9
    mask = torch.tensor([[1, 0, 0, 1]])
    ids = step_ids_from_mask(mask)
    d, valid = step_divergence(s, q, ids)
    assert d.dtype == torch.float64
    assert d[0].tolist() == pytest.approx([2e-9, 1e-9], rel=1e-6)
    w = step_weights(d, valid, epsilon=1e-12, delta=10.0)
    assert w.dtype == torch.float64
    assert w[0, 1].item() == pytest.approx((2e-9 + 1e-12) / (1e-9 + 1e-12), rel=1e-9)  # ~2.0; float32 gave 1.0
    per_token = token_weights(s, q, mask, epsilon=1e-12, delta=10.0)
    assert per_token.dtype == torch.float64 and per_token[0, 3].item() == pytest.approx(1.998, rel=1e-3)
    adv = combined_advantages(torch.zeros(1, dtype=torch.float64), s, q, per_token)
    assert adv.dtype == torch.float64 and adv[0, 0].item() == pytest.approx(-2e-9, rel=1e-6)


def test_float32_stays_float32_and_half_is_accumulated_in_float32():
    s = torch.tensor([[-1.0, -2.0, 0.0, -3.0]])
    mask = torch.tensor([[1, 1, 0, 1]])
    d, _ = step_divergence(s, s * 0.5, step_ids_from_mask(mask))
    assert d.dtype == torch.float32
    d16, _ = step_divergence(s.bfloat16(), (s * 0.5).bfloat16(), step_ids_from_mask(mask))
    assert d16.dtype == torch.float32
    assert d16[0].tolist() == pytest.approx(d[0].tolist(), rel=1e-2)


# ----------------------------------------------------------------------------- positions outside steps
@pytest.mark.parametrize("poison", [float("nan"), float("inf"), -float("inf")])
@pytest.mark.parametrize("scheme", ["sod", "sod_uncapped", "uniform", "iw_opd", "sod_median_ref"])
def test_nan_or_inf_outside_the_steps_never_reaches_a_weight(poison, scheme):
    # observation and padding positions (mask 0) hold garbage log-probs; the weights must not see them
    s = torch.tensor([[-0.5, -0.7, poison, poison, -0.1, poison]])
    q = torch.tensor([[-0.4, -0.9, poison, 0.0, -0.3, poison]])
    mask = torch.tensor([[1, 1, 0, 0, 1, 0]])
    clean_s = torch.where(mask.bool(), s, torch.zeros_like(s))
    clean_q = torch.where(mask.bool(), q, torch.zeros_like(q))
    got = token_weights(s, q, mask, scheme=scheme)
    expected = token_weights(clean_s, clean_q, mask, scheme=scheme)
    assert torch.isfinite(got).all()
    assert got.tolist() == expected.tolist()
    assert got[0, 2].item() == 0.0 and got[0, 5].item() == 0.0


def test_step_weights_ignore_divergence_of_steps_that_do_not_exist():
    d = torch.tensor([[0.5, float("nan"), float("inf")]])
    valid = torch.tensor([[True, False, False]])
    for scheme in ("sod", "sod_uncapped", "uniform", "sod_median_ref"):
        assert step_weights(d, valid, scheme=scheme).tolist() == [[1.0, 0.0, 0.0]]
    # the batch median reads valid steps only: a NaN in a missing step must not become the reference
    d2 = torch.tensor([[0.01, 0.2, float("nan")], [0.2, 0.2, 0.3]])
    valid2 = torch.tensor([[True, True, False], [True, True, True]])
    w = step_weights(d2, valid2, scheme="sod_median_ref")
    assert torch.isfinite(w).all() and w[0].tolist() == pytest.approx([1.0, 1.0, 0.0])


def test_batch_median_reads_valid_steps_only_and_stays_on_the_device():
    from sod_trainer.objective import _median

    values = torch.tensor([[float("nan"), 3.0, 1.0], [2.0, float("inf"), 10.0]])
    valid = torch.tensor([[False, True, True], [True, False, True]])
    median = _median(values, valid)
    assert isinstance(median, torch.Tensor) and median.dtype == torch.float64 and median.item() == 2.5
    assert _median(torch.full((2, 3), float("nan")), torch.zeros(2, 3, dtype=torch.bool)).item() == 0.0


def test_median_reference_computes_in_float64():
    d = torch.tensor([[1e-9, 2e-9], [1e-9, 1e-9]], dtype=torch.float64)
    w = step_weights(d, torch.ones_like(d, dtype=torch.bool), scheme="sod_median_ref", epsilon=1e-12, delta=10.0)
    assert w.dtype == torch.float64
    # median of (1e-9, 2e-9, 1e-9, 1e-9) = 1e-9: row 0's step 2 gets (1e-9 + eps) / (2e-9 + eps), not 1.0
    assert w[0, 1].item() == pytest.approx((1e-9 + 1e-12) / (2e-9 + 1e-12), rel=1e-9)


# ----------------------------------------------------------------------------- IW-OPD
def _trl_iw_opd_loss(student_logits, tokens, labels, teacher_logps, gamma, epsilon):
    """TRL's own IW-OPD loss (trl.experimental.iw_opd), called on a stand-in for the trainer."""
    from trl.experimental.iw_opd.iw_opd_trainer import IWOPDTrainer

    fake = types.SimpleNamespace(
        temperature=1.0, iw_opd_gamma=gamma, iw_opd_epsilon=epsilon,
        model=types.SimpleNamespace(training=True), _metrics={"train": __import__("collections").defaultdict(list)},
    )
    loss = IWOPDTrainer._compute_iw_opd_loss(fake, student_logits, tokens, labels, teacher_logps)
    return loss, fake._metrics["train"]


@pytest.mark.parametrize("gamma", [0.5, 1.3])
def test_iw_opd_weights_match_trl_implementation(gamma):
    torch.manual_seed(0)
    batch, length, vocab = 3, 11, 7
    logits = torch.randn(batch, length, vocab, dtype=torch.float64)
    tokens = torch.randint(0, vocab, (batch, length))
    mask = torch.tensor([[1, 1, 1, 0, 0, 1, 1, 0, 1, 1, 1],
                         [1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1],
                         [0, 0, 1, 1, 0, 1, 0, 0, 0, 0, 0]])
    labels = torch.where(mask.bool(), tokens, torch.full_like(tokens, -100))
    s = torch.log_softmax(logits, -1).gather(-1, tokens.unsqueeze(-1)).squeeze(-1)
    q = s + torch.randn_like(s)
    trl_loss, trl_metrics = _trl_iw_opd_loss(logits, tokens, labels, q, gamma, 1e-8)

    w = token_weights(s, q, mask, scheme="iw_opd", iw_opd_gamma=gamma)
    ours = (-(s * w * (q - s))).masked_fill(~mask.bool(), 0.0).sum() / mask.sum()
    assert ours.item() == pytest.approx(trl_loss.item(), rel=1e-10)
    on = mask.bool()
    assert w[on].mean().item() == pytest.approx(trl_metrics["iw_opd/mean_weight"][0], rel=1e-10)
    assert w[on].min().item() == pytest.approx(trl_metrics["iw_opd/min_weight"][0], rel=1e-10)
    assert w[on].max().item() == pytest.approx(trl_metrics["iw_opd/max_weight"][0], rel=1e-10)
    assert (w[~on] == 0).all()


def test_iw_opd_first_token_weight_is_one_plus_gamma_and_decreases():
    s = torch.tensor([[-1.0, -2.0, 0.0, -0.5, -0.5]])
    q = torch.tensor([[-0.5, -1.0, 9.0, -0.5, -1.5]])
    mask = torch.tensor([[1, 1, 0, 1, 1]])
    w = iw_opd_token_weights(s, q, mask, gamma=0.5)
    # gaps on model tokens 0.5, 1.0, (skip), 0.0, 1.0; total 2.5
    assert w[0].tolist() == pytest.approx([1.5, 1 + 0.5 * (1 - 0.5 / 2.5), 0.0, 1 + 0.5 * (1 - 1.5 / 2.5),
                                           1 + 0.5 * (1 - 1.5 / 2.5)])


def test_iw_opd_step_view_is_the_mean_token_weight_and_step_weights_refuses_it():
    s = torch.tensor([[-1.0, -2.0, 0.0, -0.5, -0.5]])
    q = torch.tensor([[-0.5, -1.0, 9.0, -0.5, -1.5]])
    ids = step_ids_from_mask(torch.tensor([[1, 1, 0, 1, 1]]))
    _, valid, per_step, per_token = step_and_token_weights(s, q, ids, scheme="iw_opd")
    assert per_step[0].tolist() == pytest.approx([per_token[0, :2].mean().item(), per_token[0, 3:].mean().item()])
    with pytest.raises(ValueError, match="weighs tokens"):
        step_weights(torch.zeros(1, 2), valid, scheme="iw_opd")
