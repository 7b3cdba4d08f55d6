"""Log-probabilities of the sampled tokens, chunked over tokens: never a (batch, seq, vocab) tensor.

The model's decoder runs once over the whole batch (through the wrapped model, so DDP/DeepSpeed hooks
fire); a forward hook captures its last hidden state, and the output head is applied to chunks of
``chunk_size`` selected tokens at a time. With gradients, no chunk's logits are kept for the backward
pass: for a plain ``nn.Linear`` head (the usual case) a custom autograd function saves only the chunk's
log-normalizer and recomputes the logits once in backward; any other head (soft-capped logits, a PEFT-wrapped
or ZeRO-3-sharded head) is checkpointed and recomputed through ``torch.utils.checkpoint``.
"""

from __future__ import annotations

from contextlib import contextmanager

import torch
from torch.utils.checkpoint import checkpoint

__all__ = ["unwrap_causal_lm", "completion_positions", "sampled_token_logprobs", "naive_sampled_token_logprobs"]


def unwrap_causal_lm(model: torch.nn.Module) -> torch.nn.Module:
    """The ``*ForCausalLM`` module inside DDP / DeepSpeed / PEFT wrappers."""
    while hasattr(model, "module") and isinstance(model.module, torch.nn.Module):
        model = model.module
    if hasattr(model, "get_base_model"):
        model = model.get_base_model()
    return model


@contextmanager
def _capture_hidden(decoder: torch.nn.Module):
    captured: dict[str, torch.Tensor] = {}

    def hook(_module, _inputs, output):
        hidden = output[0] if isinstance(output, tuple) else getattr(output, "last_hidden_state", output)
        captured["hidden"] = hidden

    handle = decoder.register_forward_hook(hook)
    try:
        yield captured
    finally:
        handle.remove()


def _chunk_stats(hidden: torch.Tensor, targets: torch.Tensor, head: torch.nn.Module, temperature: float,
                 softcap: float | None, with_entropy: bool = False) -> tuple[torch.Tensor, torch.Tensor | None]:
    logits = head(hidden).float()
    if softcap:
        logits = torch.tanh(logits / softcap) * softcap
    if temperature != 1.0:
        logits = logits / temperature
    normalizer = torch.logsumexp(logits, dim=-1)
    logps = logits.gather(-1, targets.unsqueeze(-1)).squeeze(-1) - normalizer
    if not with_entropy:  # the softmax over the vocabulary is only paid for when the entropy is wanted
        return logps, None
    # H = lse - sum(p * logits), with p built and multiplied in place: one more vocabulary-sized block, not two
    entropy = normalizer - (logits - normalizer.unsqueeze(-1)).exp_().mul_(logits).sum(-1)
    return logps, entropy


class _LinearHeadLogProb(torch.autograd.Function):
    """Sampled-token log-probs of one chunk through a linear head; backward recomputes only the logits.

    Forward keeps ``hidden``, the head's parameters, the targets and the ``(n,)`` log-normalizer (plus, when
    asked, the entropy, which is not differentiated). Backward rebuilds the ``(n, vocab)`` logits once and turns
    them in place into ``d logp / d logits = onehot(target) - softmax`` (times the incoming gradient and
    ``1 / temperature``): one vocabulary-sized block, as in the forward pass, and no log-sum-exp or softmax
    re-run through autograd as ``torch.utils.checkpoint`` would.
    """

    @staticmethod
    def forward(ctx, hidden, weight, bias, targets, inv_temperature: float, with_entropy: bool):
        raw = torch.nn.functional.linear(hidden, weight, bias)
        ctx.compute_dtype = raw.dtype  # under autocast the head runs in bf16/fp16: backward does the same
        logits = raw.to(torch.promote_types(raw.dtype, torch.float32))
        del raw
        if inv_temperature != 1.0:
            logits = logits * inv_temperature
        normalizer = torch.logsumexp(logits, dim=-1)
        logps = logits.gather(-1, targets.unsqueeze(-1)).squeeze(-1) - normalizer
        if with_entropy:
            entropy = normalizer - (logits - normalizer.unsqueeze(-1)).exp_().mul_(logits).sum(-1)
        else:
            entropy = normalizer.new_empty(0)
        ctx.mark_non_differentiable(entropy)
        ctx.save_for_backward(hidden, weight, bias, targets, normalizer)
        ctx.inv_temperature = inv_temperature
        return logps, entropy

    @staticmethod
    def backward(ctx, grad_logps, _grad_entropy):
        hidden, weight, bias, targets, normalizer = ctx.saved_tensors
        scale, dtype = ctx.inv_temperature, ctx.compute_dtype
        h, w = hidden.to(dtype), weight.to(dtype)
        logits = torch.nn.functional.linear(h, w, None if bias is None else bias.to(dtype))
        logits = logits.to(torch.promote_types(dtype, torch.float32))
        if scale != 1.0:
            logits.mul_(scale)
        grad = grad_logps.to(logits.dtype).unsqueeze(-1)
        grad_logits = logits.sub_(normalizer.unsqueeze(-1)).exp_().mul_(-grad)  # -g * softmax
        grad_logits.scatter_add_(-1, targets.unsqueeze(-1), grad)  # + g at the sampled token
        if scale != 1.0:
            grad_logits.mul_(scale)
        grad_logits = grad_logits.to(dtype)
        grad_hidden = (grad_logits @ w).to(hidden.dtype) if ctx.needs_input_grad[0] else None
        grad_weight = (grad_logits.t() @ h).to(weight.dtype) if ctx.needs_input_grad[1] else None
        grad_bias = grad_logits.sum(0).to(bias.dtype) if bias is not None and ctx.needs_input_grad[2] else None
        return grad_hidden, grad_weight, grad_bias, None, None, None


def _plain_linear_head(head: torch.nn.Module, softcap: float | None) -> bool:
    """Whether the custom autograd function applies: a plain, unsharded ``nn.Linear`` head, no soft-capping.

    A ZeRO-3 shard (``ds_id``) or an FSDP2 ``DTensor`` is only whole inside the module's own forward, and a
    PEFT-wrapped head is not an ``nn.Linear``: those go through ``torch.utils.checkpoint`` and ``head(...)``.
    """
    weight = getattr(head, "weight", None)
    return (type(head) is torch.nn.Linear and not softcap and type(weight) is torch.nn.Parameter
            and not hasattr(weight, "ds_id"))


def completion_positions(completion_start: torch.Tensor, completion_length: int, sequence_length: int) -> torch.Tensor:
    """``(B, C)`` index of completion token j of row b in the packed sequence: ``start[b] + j`` (clamped)."""
    offsets = torch.arange(completion_length, device=completion_start.device)
    return (completion_start.unsqueeze(1) + offsets).clamp(max=sequence_length - 1)


class _FrozenGatheredHead(torch.nn.Module):
    """A frozen ZeRO-3 output head gathered once into plain tensors (LoRA students).

    Each chunk's ``head(hidden)`` is recomputed in the backward pass (activation checkpointing), where ZeRO-3
    does not re-gather a frozen parameter: the recomputation would see a 0-sized shard. One full copy of the
    head (vocab x hidden) is held instead, for this forward/backward only.
    """

    def __init__(self, head: torch.nn.Module):
        super().__init__()
        import deepspeed

        with deepspeed.zero.GatheredParameters(list(head.parameters())):
            self.weight = head.weight.detach().clone()
            bias = getattr(head, "bias", None)
            self.bias = bias.detach().clone() if bias is not None else None

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.linear(hidden, self.weight, self.bias)


def _head_for_chunks(head: torch.nn.Module) -> torch.nn.Module:
    weight = getattr(head, "weight", None)
    if weight is not None and hasattr(weight, "ds_id") and not weight.requires_grad:
        return _FrozenGatheredHead(head)
    return head


def sampled_token_logprobs(
    model: torch.nn.Module,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    completion_start: torch.Tensor,
    token_mask: torch.Tensor,
    *,
    temperature: float = 1.0,
    chunk_size: int = 1024,
    with_entropy: bool = False,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """``(B, C)`` log-probs (and entropies) of the completion tokens of right-padded sequences.

    Row b holds ``prompt + completion`` from position 0 (right padding, so positions are exact);
    its completion starts at ``completion_start[b]``. Only positions where ``token_mask`` (``(B, C)``)
    is set are computed; the rest are 0. Gradients flow when grad mode is on. Peak extra memory is one
    ``(chunk_size, vocab)`` float32 block.
    """
    causal_lm = unwrap_causal_lm(model)
    decoder = causal_lm.get_decoder()
    head = _head_for_chunks(causal_lm.get_output_embeddings())
    softcap = getattr(causal_lm.config, "final_logit_softcapping", None)
    with _capture_hidden(decoder) as captured:
        model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False, logits_to_keep=1)
    hidden = captured.pop("hidden")
    batch, length = token_mask.shape
    positions = completion_positions(completion_start, length, input_ids.shape[1])
    targets = input_ids.gather(1, positions)
    selected = token_mask.bool().reshape(-1).nonzero(as_tuple=True)[0]
    rows = selected // length
    source = positions.reshape(-1).index_select(0, selected) - 1  # the position that predicts the token
    flat_hidden = hidden[rows, source]
    flat_targets = targets.reshape(-1).index_select(0, selected)
    grad = torch.is_grad_enabled() and (flat_hidden.requires_grad
                                        or any(p.requires_grad for p in head.parameters()))
    fused_backward = grad and _plain_linear_head(head, softcap)
    logps_chunks, entropy_chunks = [], []
    for start in range(0, flat_targets.numel(), chunk_size):
        h = flat_hidden[start:start + chunk_size]
        t = flat_targets[start:start + chunk_size]
        if fused_backward:
            logps, entropy = _LinearHeadLogProb.apply(h, head.weight, head.bias, t, 1.0 / temperature,
                                                      with_entropy)
        elif grad:
            logps, entropy = checkpoint(_chunk_stats, h, t, head, temperature, softcap, with_entropy,
                                        use_reentrant=False)
        else:
            logps, entropy = _chunk_stats(h, t, head, temperature, softcap, with_entropy)
        logps_chunks.append(logps)
        if with_entropy:
            entropy_chunks.append(entropy.detach())
    flat_logps = torch.zeros(batch * length, dtype=torch.float32, device=input_ids.device)
    if logps_chunks:
        flat_logps = flat_logps.index_put((selected,), torch.cat(logps_chunks))
    entropy = None
    if with_entropy:
        flat_entropy = torch.zeros(batch * length, dtype=torch.float32, device=input_ids.device)
        if entropy_chunks:
            flat_entropy = flat_entropy.index_put((selected,), torch.cat(entropy_chunks))
        entropy = flat_entropy.view(batch, length)
    return flat_logps.view(batch, length), entropy


def naive_sampled_token_logprobs(
    model: torch.nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor, completion_start: torch.Tensor,
    completion_length: int, temperature: float = 1.0,
) -> torch.Tensor:
    """Reference implementation (full ``log_softmax`` over the vocabulary), for tests and benchmarks."""
    logits = model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False).logits.float() / temperature
    logps = torch.log_softmax(logits[:, :-1], dim=-1).gather(-1, input_ids[:, 1:].unsqueeze(-1)).squeeze(-1)
    positions = completion_positions(completion_start, completion_length, input_ids.shape[1])
    return logps.gather(1, (positions - 1).clamp(min=0))
