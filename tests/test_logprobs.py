"""Chunked sampled-token log-probs: the custom-backward path for linear heads against a full log_softmax."""

from __future__ import annotations

import pytest
import torch
from conftest import make_tiny_model

from sod_trainer.logprobs import (
    _LinearHeadLogProb,
    _plain_linear_head,
    naive_sampled_token_logprobs,
    sampled_token_logprobs,
)


def _batch(vocab: int, seed: int = 0):
    generator = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, vocab, (3, 20), generator=generator)
    attention = torch.ones_like(ids)
    attention[1, 15:] = 0
    attention[2, 12:] = 0
    start = torch.tensor([5, 7, 3])
    mask = torch.zeros(3, 12, dtype=torch.bool)
    for b in range(3):
        mask[b, : int(attention[b].sum()) - int(start[b])] = True
    mask[0, 4] = False
    return ids, attention, start, mask


def _reference(model, ids, attention, start, mask, temperature):
    """Full (B, T, V) log_softmax and entropy, gathered at the completion positions."""
    logits = model(input_ids=ids, attention_mask=attention).logits.float() / temperature
    logp_all = torch.log_softmax(logits, dim=-1)
    positions = (start.unsqueeze(1) + torch.arange(mask.shape[1])).clamp(max=ids.shape[1] - 1)
    source = (positions - 1).clamp(min=0)
    logps = logp_all.gather(1, source.unsqueeze(-1).expand(-1, -1, logits.shape[-1]))
    entropy = -(logps.exp() * logps).sum(-1)
    logps = logps.gather(-1, ids.gather(1, positions).unsqueeze(-1)).squeeze(-1)
    return logps * mask, entropy * mask


@pytest.mark.parametrize("temperature", [1.0, 0.7])
@pytest.mark.parametrize("bias", [False, True])
def test_custom_backward_matches_full_softmax_values_entropy_and_gradients(tokenizer, temperature, bias):
    model = make_tiny_model(tokenizer)
    if bias:  # a head with a bias (some model families have one)
        head = model.lm_head
        model.lm_head = torch.nn.Linear(head.in_features, head.out_features, bias=True)
        model.lm_head.weight.data.copy_(head.weight.data)
        torch.nn.init.normal_(model.lm_head.bias, std=0.5)
    ids, attention, start, mask = _batch(len(tokenizer))
    advantages = torch.randn(mask.shape, generator=torch.Generator().manual_seed(1))

    logps, entropy = sampled_token_logprobs(model, ids, attention, start, mask, temperature=temperature,
                                            chunk_size=5, with_entropy=True)
    assert _grad_graph_has(logps, "LinearHeadLogProb")
    (logps * advantages).sum().backward()
    chunked = {name: p.grad.clone() for name, p in model.named_parameters()}
    model.zero_grad()

    reference_logps, reference_entropy = _reference(model, ids, attention, start, mask, temperature)
    assert torch.allclose(logps, reference_logps, atol=1e-5)
    assert torch.allclose(entropy, reference_entropy.detach(), atol=1e-5)
    (reference_logps * advantages).sum().backward()
    for name, p in model.named_parameters():
        assert torch.allclose(chunked[name], p.grad, atol=1e-5), name
    if bias:
        assert chunked["lm_head.bias"].abs().sum() > 0


def test_chunked_logprobs_match_the_library_naive_reference(tokenizer):
    model = make_tiny_model(tokenizer)
    ids, attention, start, mask = _batch(len(tokenizer))
    logps, _ = sampled_token_logprobs(model, ids, attention, start, mask, chunk_size=5)
    reference = naive_sampled_token_logprobs(model, ids, attention, start, mask.shape[1])
    assert torch.allclose(logps, reference * mask, atol=1e-5)
    logps.sum().backward()
    chunked = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    (reference * mask).sum().backward()
    for a, p in zip(chunked, model.parameters()):
        assert torch.allclose(a, p.grad, atol=1e-5)


def _grad_graph_has(tensor: torch.Tensor, name: str) -> bool:
    seen, stack = set(), [tensor.grad_fn]
    while stack:
        fn = stack.pop()
        if fn is None or fn in seen:
            continue
        seen.add(fn)
        if name in type(fn).__name__:
            return True
        stack.extend(next_fn for next_fn, _ in fn.next_functions)
    return False


def test_linear_head_takes_the_custom_backward_and_other_heads_fall_back(tokenizer):
    model = make_tiny_model(tokenizer)
    ids, attention, start, mask = _batch(len(tokenizer))
    logps, _ = sampled_token_logprobs(model, ids, attention, start, mask, chunk_size=5)
    assert _grad_graph_has(logps, "LinearHeadLogProb")
    assert _plain_linear_head(model.lm_head, None)
    assert not _plain_linear_head(model.lm_head, 30.0)  # soft-capped logits (Gemma) take the checkpoint path

    class Wrapped(torch.nn.Module):  # e.g. a PEFT LoRA layer around the head
        def __init__(self, inner):
            super().__init__()
            self.inner = inner
            self.weight = inner.weight

        def forward(self, hidden):
            return self.inner(hidden)

    assert not _plain_linear_head(Wrapped(model.lm_head), None)
    model.lm_head = Wrapped(model.lm_head)
    logps_wrapped, _ = sampled_token_logprobs(model, ids, attention, start, mask, chunk_size=5)
    assert not _grad_graph_has(logps_wrapped, "LinearHeadLogProb")
    assert torch.allclose(logps, logps_wrapped, atol=1e-6)


def test_frozen_decoder_with_trainable_head_still_gets_head_gradients(tokenizer):
    model = make_tiny_model(tokenizer)
    for name, parameter in model.named_parameters():
        parameter.requires_grad_(name.startswith("lm_head"))
    ids, attention, start, mask = _batch(len(tokenizer))
    logps, _ = sampled_token_logprobs(model, ids, attention, start, mask, chunk_size=5)
    logps.sum().backward()
    assert model.lm_head.weight.grad is not None and model.lm_head.weight.grad.abs().sum() > 0


def test_autocast_head_recomputes_in_the_same_precision(tokenizer):
    """Under bf16 autocast the forward runs the head in bf16; backward must too (and not mix dtypes)."""
    model = make_tiny_model(tokenizer)
    ids, attention, start, mask = _batch(len(tokenizer))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        logps, _ = sampled_token_logprobs(model, ids, attention, start, mask, chunk_size=5)
    logps.sum().backward()
    fast = {name: p.grad.clone() for name, p in model.named_parameters()}
    model.zero_grad()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        reference, _ = _reference(model, ids, attention, start, mask, 1.0)
    reference.sum().backward()
    assert torch.allclose(logps, reference, atol=0.05)
    for name, p in model.named_parameters():
        assert fast[name].dtype == p.dtype
        assert torch.allclose(fast[name], p.grad, atol=2e-2, rtol=0.1), name


def test_custom_function_gradcheck():
    torch.manual_seed(0)
    hidden = torch.randn(4, 6, dtype=torch.float64, requires_grad=True)
    weight = torch.randn(9, 6, dtype=torch.float64, requires_grad=True)
    bias = torch.randn(9, dtype=torch.float64, requires_grad=True)
    targets = torch.tensor([0, 3, 8, 3])

    def function(h, w, b):
        return _LinearHeadLogProb.apply(h, w, b, targets, 1 / 0.6, False)[0]

    assert torch.autograd.gradcheck(function, (hidden, weight, bias))
