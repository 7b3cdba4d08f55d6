"""Log-probabilities of the sampled tokens, chunked over tokens: never a (batch, seq, vocab) tensor.

The model's decoder runs once over the whole batch (through the wrapped model, so DDP/DeepSpeed hooks
fire); a forward hook captures its last hidden state, and the output head is applied to chunks of
``chunk_size`` selected tokens at a time. With gradients, each chunk is checkpointed so that its
logits are recomputed in the backward pass instead of being kept.
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
    probs = torch.softmax(logits, dim=-1)
    entropy = normalizer - (probs * logits).sum(-1)
    return logps, entropy


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
    logps_chunks, entropy_chunks = [], []
    for start in range(0, flat_targets.numel(), chunk_size):
        h = flat_hidden[start:start + chunk_size]
        t = flat_targets[start:start + chunk_size]
        if torch.is_grad_enabled() and h.requires_grad:
            logps, entropy = checkpoint(_chunk_stats, h, t, head, temperature, softcap, with_entropy,
                                        use_reentrant=False)
        else:
            logps, entropy = _chunk_stats(h, t, head, temperature, softcap, with_entropy)
        logps_chunks.append(logps)
        if entropy is not None:
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
