"""Shared fixtures: a tiny in-process tokenizer, tiny Qwen3 student/teacher, no Hub access."""

from __future__ import annotations

import os

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
torch.set_num_threads(min(2, torch.get_num_threads()))


@pytest.fixture(scope="session")
def tokenizer():
    from sod_trainer.toy.tokenizer import build_tokenizer

    return build_tokenizer()


def make_tiny_model(tokenizer, hidden: int = 64, layers: int = 2, seed: int = 0):
    from transformers import Qwen3Config, Qwen3ForCausalLM

    torch.manual_seed(seed)
    config = Qwen3Config(
        vocab_size=len(tokenizer), hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=layers,
        num_attention_heads=2, num_key_value_heads=1, head_dim=32, max_position_embeddings=2048,
        eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id, bos_token_id=None,
        tie_word_embeddings=False,
    )
    return Qwen3ForCausalLM(config)


@pytest.fixture
def temp_root(tmp_path):
    """A fresh directory for the sandbox's per-call directories (tests check that it is left empty)."""
    root = tmp_path / "sandboxes"
    root.mkdir()
    return root


@pytest.fixture
def tiny_models(tokenizer):
    return make_tiny_model(tokenizer, seed=0), make_tiny_model(tokenizer, hidden=96, seed=1)


def cmdline_has(pid: str, marker: str) -> bool:
    """Whether process ``pid``'s command line contains ``marker`` (False once it is gone)."""
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as handle:
            return marker.encode() in handle.read()
    except OSError:
        return False
