"""The objective pinned against naive per-sample Python references (SOD_SPEC §2–§5)."""

from __future__ import annotations

import math
import random

import pytest
import torch

from sod_trainer.objective import (
    STEP_WEIGHTING_SCHEMES,
    clipped_surrogate_loss,
    combined_advantages,
    group_advantages,
    step_ids_from_mask,
    token_weights,
)


# ----------------------------------------------------------------------------- naive references
def naive_steps(mask: list[int]) -> list[list[int]]:
    """Positions of each maximal run of 1s."""
    steps, current = [], []
    for t, m in enumerate(mask):
        if m:
            current.append(t)
        elif current:
            steps.append(current)
            current = []
    if current:
        steps.append(current)
    return steps


def naive_iw_opd(s, q, mask, gamma=0.5, eps=1e-8) -> list[float]:
    """IW-OPD's w_t = 1 + gamma * (1 - prefix_t / total), written as a loop over model tokens."""
    gaps = [abs(q[t] - s[t]) if mask[t] else 0.0 for t in range(len(mask))]
    total = max(sum(gaps), eps)
    out, prefix = [], 0.0
    for t in range(len(mask)):
        out.append(1 + gamma * (1 - prefix / total) if mask[t] else 0.0)
        prefix += gaps[t]
    return out


def naive_step_divergences(s, q, mask) -> list[float]:
    return [sum(abs(s[t] - q[t]) for t in step) / len(step) for step in naive_steps(mask)]


def naive_median(values: list[float]) -> float:
    ordered = sorted(values)
    if not ordered:
        return 0.0
    mid = len(ordered) // 2
    return ordered[mid] if len(ordered) % 2 else (ordered[mid - 1] + ordered[mid]) / 2


def naive_weights(s, q, mask, scheme="sod", eps=1e-6, delta=0.2, error_step=-1, decay=0.9,
                  batch_median=0.0) -> list[float]:
    if scheme == "iw_opd":
        return naive_iw_opd(s, q, mask)
    steps = naive_steps(mask)
    d = [sum(abs(s[t] - q[t]) for t in step) / len(step) for step in steps]
    w = []
    for k in range(len(steps)):
        if scheme in ("sod", "sod_uncapped"):
            if k == 0:
                value = 1.0
            else:
                value = 1.0
                for u in range(k):  # the product form of SOD_SPEC §4, not the telescoped one
                    value *= (d[u] + eps) / (d[u + 1] + eps)
                if scheme == "sod":
                    value = min(value, 1 + delta)
        elif scheme == "sod_median_ref":  # [ours]: reference max(d_1, median d of the whole batch's steps)
            reference = max(d[0], batch_median)
            value = 1.0 if k == 0 else min((reference + eps) / (d[k] + eps), 1 + delta)
        elif scheme == "uniform":
            value = 1.0
        elif scheme == "decay":
            value = decay ** (k - error_step) if (error_step >= 0 and k > error_step) else 1.0
        else:
            value = 0.0 if (error_step >= 0 and k > error_step) else 1.0
        w.append(value)
    out = [0.0] * len(mask)
    for k, step in enumerate(steps):
        for t in step:
            out[t] = w[k]
    return out


def tensors(rows):
    return [torch.tensor(r, dtype=torch.float32) for r in zip(*rows)]


# ----------------------------------------------------------------------------- step ids
def test_step_ids_are_mask_runs_and_off_by_one_matters():
    mask = torch.tensor([[1, 1, 0, 0, 1, 0, 1, 1], [0, 0, 1, 1, 1, 0, 0, 0]])
    assert step_ids_from_mask(mask).tolist() == [[0, 0, -1, -1, 1, -1, 2, 2], [-1, -1, 0, 0, 0, -1, -1, -1]]


def test_one_token_steps_and_no_tool_call():
    assert step_ids_from_mask(torch.tensor([[1, 0, 1, 0, 1]])).tolist() == [[0, -1, 1, -1, 2]]
    assert step_ids_from_mask(torch.tensor([[1, 1, 1, 1]])).tolist() == [[0, 0, 0, 0]]  # one step


# ----------------------------------------------------------------------------- worked cases of SOD_SPEC §4
def _two_step(d1, d2):
    # step 1 = tokens 0-1 (|s-q| = d1), observation = token 2, step 2 = tokens 3-4 (|s-q| = d2)
    s = torch.tensor([[d1, -d1, 0.0, d2, d2]])
    q = torch.zeros_like(s)
    mask = torch.tensor([[1, 1, 0, 1, 1]])
    return token_weights(s, q, mask)


def test_worked_case_cap():
    w = _two_step(0.5, 0.4)
    assert w[0, 3].item() == pytest.approx(1.2)  # min(1.25, 1.2)
    assert w[0, 2].item() == 0.0 and w[0, 0].item() == 1.0


def test_worked_case_drop():
    w = _two_step(0.218, 1.284)
    assert w[0, 3].item() == pytest.approx(0.218 / 1.284, rel=1e-5)
    assert w[0, 3].item() == pytest.approx(0.17, abs=0.005)


def test_worked_case_recovery_trajectory():
    expected = [1.00, 0.73, 0.56, 0.41, 0.76, 1.12, 1.20]
    d1 = 0.3
    d = [d1] + [d1 / w for w in expected[1:-1]] + [d1 / 1.25]  # the last step would be 1.25 -> capped
    mask, s = [], []
    for value in d:
        mask += [1, 1, 0]
        s += [value, value, 0.0]
    w = token_weights(torch.tensor([s]), torch.zeros(1, len(s)), torch.tensor([mask]))
    got = [round(w[0, 3 * k].item(), 2) for k in range(len(d))]
    assert got == expected


def test_zero_divergence_steps_use_epsilon():
    w = _two_step(0.0, 0.0)
    assert w[0, 3].item() == pytest.approx(1.0)
    w = _two_step(0.0, 1.0)
    assert w[0, 3].item() == pytest.approx(1e-6 / (1.0 + 1e-6))


# ----------------------------------------------------------------------------- random cases vs the naive reference
@pytest.mark.parametrize("scheme", STEP_WEIGHTING_SCHEMES)
def test_token_weights_match_naive_reference(scheme):
    rng = random.Random(0)
    for _ in range(30):
        batch, length = 4, rng.randint(1, 24)
        masks, ss, qs, errors = [], [], [], []
        for _ in range(batch):
            mask = [rng.random() < 0.6 for _ in range(length)]
            left = rng.randint(0, 3)  # left padding / right padding both present
            mask = ([0] * left + mask)[:length]
            masks.append([int(m) for m in mask])
            ss.append([rng.uniform(-4, 0) for _ in range(length)])
            qs.append([rng.uniform(-4, 0) for _ in range(length)])
            n_steps = len(naive_steps(masks[-1]))
            errors.append(rng.randint(-1, max(n_steps - 1, -1)))
        s, q, m = torch.tensor(ss), torch.tensor(qs), torch.tensor(masks)
        e = torch.tensor(errors)
        got = token_weights(s, q, m, scheme=scheme, error_steps=e)
        median = naive_median([d for b in range(batch) for d in naive_step_divergences(ss[b], qs[b], masks[b])])
        for b in range(batch):
            expected = naive_weights(ss[b], qs[b], masks[b], scheme=scheme, error_step=errors[b],
                                     batch_median=median)
            assert got[b].tolist() == pytest.approx(expected, rel=1e-5, abs=1e-7), (scheme, b)


def test_decay_and_mask_after_error_affect_only_steps_after_error():
    s = torch.zeros(1, 9)
    mask = torch.tensor([[1, 0, 1, 0, 1, 0, 1, 0, 1]])  # 5 one-token steps
    w = token_weights(s, s, mask, scheme="decay", error_steps=torch.tensor([1]))
    assert w[0, ::2].tolist() == pytest.approx([1.0, 1.0, 0.9, 0.81, 0.729])
    w = token_weights(s, s, mask, scheme="mask_after_error", error_steps=torch.tensor([1]))
    assert w[0, ::2].tolist() == [1.0, 1.0, 0.0, 0.0, 0.0]
    w = token_weights(s, s, mask, scheme="decay", error_steps=torch.tensor([-1]))
    assert w[0, ::2].tolist() == [1.0] * 5


def test_uncapped_exceeds_cap():
    s = torch.tensor([[1.0, 0.0, 0.1]])
    w_capped = token_weights(s, torch.zeros_like(s), torch.tensor([[1, 0, 1]]), scheme="sod")
    w_free = token_weights(s, torch.zeros_like(s), torch.tensor([[1, 0, 1]]), scheme="sod_uncapped")
    assert w_capped[0, 2].item() == pytest.approx(1.2)
    assert w_free[0, 2].item() == pytest.approx((1 + 1e-6) / (0.1 + 1e-6))


def test_median_reference_lifts_clean_steps_after_a_near_deterministic_first_step():
    # row 0: step 1 near-deterministic (d 0.01), then two clean steps (d 0.1) and a step after an error (d 3.0);
    # row 1: d 0.1, 0.1, 0.1, 0.1. Batch median of the 8 step divergences: 0.1.
    mask = torch.tensor([[1, 0, 1, 0, 1, 0, 1]] * 2)
    s = torch.tensor([[0.01, 0, 0.1, 0, 0.1, 0, 3.0], [0.1, 0, 0.1, 0, 0.1, 0, 0.1]])
    q = torch.zeros_like(s)
    paper = token_weights(s, q, mask, scheme="sod")[:, ::2]
    ours = token_weights(s, q, mask, scheme="sod_median_ref")[:, ::2]
    eps = 1e-6
    low = (0.01 + eps) / (0.1 + eps)  # the paper's rule turns both clean steps down to 0.1
    assert paper[0].tolist() == pytest.approx([1.0, low, low, (0.01 + eps) / (3.0 + eps)], rel=1e-5)
    assert ours[0].tolist() == pytest.approx([1.0, 1.0, 1.0, (0.1 + eps) / (3.0 + eps)], rel=1e-5)
    assert ours[0, 3].item() < 0.04  # the step after the error stays turned down
    assert ours[1].tolist() == pytest.approx([1.0] * 4) and paper[1].tolist() == pytest.approx([1.0] * 4)
    # a row whose d_1 exceeds the median keeps the paper's reference (the cap still applies)
    s_big = torch.tensor([[0.5, 0, 0.1, 0, 0.1, 0, 0.1], [0.1, 0, 0.1, 0, 0.1, 0, 0.1]])
    assert token_weights(s_big, q, mask, scheme="sod_median_ref")[0, 2].item() == pytest.approx(1.2)
    assert token_weights(s_big, q, mask, scheme="sod_median_ref").tolist() == \
        token_weights(s_big, q, mask, scheme="sod").tolist()


def test_truncated_last_step_still_counts():
    # a last step cut by the budget has no stop token; it is still a step with its own weight
    s = torch.tensor([[0.5, 0.5, 0.0, 1.0, 1.0, 1.0]])
    w = token_weights(s, torch.zeros_like(s), torch.tensor([[1, 1, 0, 1, 1, 1]]))
    assert w[0, 3:].tolist() == pytest.approx([0.5] * 3, rel=1e-5)


def test_unknown_scheme_and_missing_error_steps_are_errors():
    s = torch.zeros(1, 3)
    with pytest.raises(ValueError, match="Unknown step_weighting"):
        token_weights(s, s, torch.ones(1, 3), scheme="nope")
    with pytest.raises(ValueError, match="error_steps"):
        token_weights(s, s, torch.ones(1, 3), scheme="decay")


# ----------------------------------------------------------------------------- advantages
def test_group_advantages_match_reference():
    rewards = torch.tensor([1.0, -1.0, -1.0, 1.0, 1.0, 1.0])
    got = group_advantages(rewards, 3)
    for g in range(2):
        group = rewards[3 * g:3 * g + 3].tolist()
        mean = sum(group) / 3
        std = math.sqrt(sum((r - mean) ** 2 for r in group) / 2)  # unbiased
        for i in range(3):
            assert got[3 * g + i].item() == pytest.approx((group[i] - mean) / (std + 1e-6))
    assert group_advantages(torch.tensor([0.7, -0.2]), 1).tolist() == pytest.approx([0.7, -0.2])


def test_combined_advantage_formula():
    seq = torch.tensor([0.5, -1.0])
    s = torch.tensor([[-1.0, -2.0], [-0.5, -0.1]])
    q = torch.tensor([[-0.5, -2.5], [-0.5, -1.1]])
    w = torch.tensor([[1.0, 0.0], [1.2, 0.3]])
    got = combined_advantages(seq, s, q, w, grpo_coef=1.0, opd_coef=2.0)
    for b in range(2):
        for t in range(2):
            assert got[b, t].item() == pytest.approx(seq[b].item() + 2.0 * w[b, t].item() * (q[b, t] - s[b, t]).item())


# ----------------------------------------------------------------------------- clipped loss
def naive_token_loss(logp, old, adv, eps_low=0.2, eps_high=0.28, dual=3.0):
    ratio = math.exp(logp - old)
    clipped = min(max(ratio, 1 - eps_low), 1 + eps_high)
    loss = max(-adv * ratio, -adv * clipped)
    if dual is not None and adv < 0:
        loss = min(loss, -adv * dual)
    return loss


def test_clipped_loss_matches_reference_including_dual_clip_and_clip_higher():
    rng = random.Random(1)
    rows, cols = 5, 7
    logp = [[rng.uniform(-3, 0) for _ in range(cols)] for _ in range(rows)]
    old = [[lp + rng.uniform(-2, 2) for lp in row] for row in logp]  # ratios far from 1: every clip region
    adv = [[rng.uniform(-2, 2) for _ in range(cols)] for _ in range(rows)]
    mask = [[int(rng.random() < 0.7) for _ in range(cols)] for _ in range(rows)]
    loss, stats = clipped_surrogate_loss(torch.tensor(logp), torch.tensor(old), torch.tensor(adv), torch.tensor(mask))
    total = sum(naive_token_loss(logp[r][c], old[r][c], adv[r][c]) for r in range(rows) for c in range(cols) if mask[r][c])
    assert loss.item() == pytest.approx(total / sum(map(sum, mask)), rel=1e-5)
    assert stats["dual_clipped"].any() and stats["clipped_high"].any() and stats["clipped_low"].any()


def test_dual_clip_caps_negative_advantage_loss():
    loss, _ = clipped_surrogate_loss(torch.tensor([[math.log(10.0)]]), torch.zeros(1, 1), torch.tensor([[-1.0]]),
                                     torch.ones(1, 1))
    assert loss.item() == pytest.approx(3.0)  # -A * ratio would be 10
    loss, _ = clipped_surrogate_loss(torch.tensor([[math.log(10.0)]]), torch.zeros(1, 1), torch.tensor([[-1.0]]),
                                     torch.ones(1, 1), dual_clip=None)
    assert loss.item() == pytest.approx(10.0)


def test_clip_higher_bounds_positive_advantage_gain():
    loss, _ = clipped_surrogate_loss(torch.tensor([[math.log(2.0)]]), torch.zeros(1, 1), torch.tensor([[1.0]]),
                                     torch.ones(1, 1))
    assert loss.item() == pytest.approx(-1.28)
    grad_logp = torch.tensor([[math.log(2.0)]], requires_grad=True)
    clipped_surrogate_loss(grad_logp, torch.zeros(1, 1), torch.tensor([[1.0]]), torch.ones(1, 1))[0].backward()
    assert grad_logp.grad.item() == 0.0  # clipped: no gradient


def test_loss_normalizer_is_global_token_count():
    logp = torch.zeros(2, 3)
    adv = torch.ones(2, 3)
    mask = torch.tensor([[1, 1, 0], [1, 0, 0]])
    loss, _ = clipped_surrogate_loss(logp, logp, adv, mask, normalizer=10.0)
    assert loss.item() == pytest.approx(-3 / 10)
