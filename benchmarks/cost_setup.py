"""Model shapes and devices of the cost curves (``bench_cost_curves.py``): the narrow CPU models, and Qwen3-0.6B /
Qwen3-4B shapes built with random weights directly on a GPU in bf16 (issue 18, item 4)."""

from __future__ import annotations

import time

import common as C
import torch

STUDENT = dict(hidden=64, layers=2)
TEACHER = dict(hidden=128, layers=2)
# ``--shape``: "narrow" is the CPU default above (heads, head_dim and MLP width as ``common.tiny_model`` sets them);
# "qwen3-0.6b" is Qwen3-0.6B's config for the student and Qwen3-4B's for the teacher (random weights, no Hub)
SHAPES = {
    "narrow": {"student": STUDENT, "teacher": TEACHER},
    "qwen3-0.6b": {
        "student": dict(hidden=1024, layers=28, heads=16, kv_heads=8, head_dim=128, intermediate=3072, tied=True),
        "teacher": dict(hidden=2560, layers=36, heads=32, kv_heads=8, head_dim=128, intermediate=9728, tied=True),
    },
}
DTYPES = ("float32", "bfloat16")
TRAINERS = ("sod", "trl_grpo", "trl_distillation")
CPU_SETUP = {"device": "cpu", "dtype": "float32", "shape": "narrow", "gradient_checkpointing": False}


def qwen3_config(tok, spec: dict, vocab: int, positions: int):
    """A ``Qwen3Config`` of one ``SHAPES`` entry with full Qwen3 dimensions (heads, KV heads, head_dim, MLP)."""
    from transformers import Qwen3Config

    return Qwen3Config(
        vocab_size=vocab, hidden_size=spec["hidden"], intermediate_size=spec["intermediate"],
        num_hidden_layers=spec["layers"], num_attention_heads=spec["heads"], num_key_value_heads=spec["kv_heads"],
        head_dim=spec["head_dim"], max_position_embeddings=positions, rope_theta=1_000_000.0, rms_norm_eps=1e-6,
        eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id, bos_token_id=None,
        tie_word_embeddings=spec["tied"])


def build_model(tok, spec: dict, vocab: int, positions: int, seed: int, device: str = "cpu",
                dtype: str = "float32"):
    """One model of a ``SHAPES`` entry with random weights, created directly on ``device`` in ``dtype``."""
    from transformers import Qwen3ForCausalLM

    if "heads" not in spec:  # the narrow CPU shape: exactly as before
        model = C.tiny_model(tok, hidden=spec["hidden"], layers=spec["layers"], vocab=vocab, seed=seed)
        model.config.max_position_embeddings = positions
        return model if (device, dtype) == ("cpu", "float32") else model.to(device=device, dtype=getattr(torch, dtype))
    torch.manual_seed(seed)
    previous = torch.get_default_dtype()
    torch.set_default_dtype(getattr(torch, dtype))
    try:
        with torch.device(device):
            model = Qwen3ForCausalLM(qwen3_config(tok, spec, vocab, positions))
    finally:
        torch.set_default_dtype(previous)
    model.generation_config.eos_token_id = tok.eos_token_id
    model.generation_config.pad_token_id = tok.pad_token_id
    return model


def make_models(tok, vocab: int, positions: int, setup: dict | None = None):
    """Student and teacher of ``setup["shape"]`` on ``setup["device"]`` in ``setup["dtype"]`` (CPU fp32 narrow)."""
    setup = {**CPU_SETUP, **(setup or {})}
    shape = SHAPES[setup["shape"]]
    student = build_model(tok, shape["student"], vocab, positions, 0, setup["device"], setup["dtype"])
    teacher = build_model(tok, shape["teacher"], vocab, positions, 1, setup["device"], setup["dtype"])
    return student, teacher


def cuda_clock() -> float:
    """Wall seconds after the GPU's queued work is done."""
    torch.cuda.synchronize()
    return time.perf_counter()
