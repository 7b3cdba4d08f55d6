"""Tiny Qwen3 teacher and student for the toy world, built in process (nothing from the Hub).

Head dim is 32 everywhere (vLLM's CPU attention kernels reject smaller heads). The teacher has
4 layers of width 256 (2.56 M parameters, 5 MB in bf16); the demo's student keeps the teacher's
width, embeddings and three of its four layers (layers 0, 1, 3: a layer-dropped copy, as in
DistilBERT; 1.97 M parameters), so the cold start takes a minute or two on a CPU instead of the
half hour a from-scratch student would need to learn to copy numbers.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch

__all__ = [
    "ASSETS_DIR",
    "TEACHER_DIR",
    "teacher_config",
    "student_config",
    "build_model",
    "student_from_teacher",
    "load_teacher",
    "count_parameters",
    "TOY_STUDENT",
    "TOY_TEACHER",
    "TOY_DATASET",
    "load_toy_world",
    "resolve_toy_names",
]

TOY_STUDENT = "toy-student"
"""Model name of the toy world's student (``SODTrainer(model="toy-student")``, recipes' ``model_name_or_path``)."""
TOY_TEACHER = "toy-teacher"
"""Model name of the toy world's teacher (``teacher_model="toy-teacher"``, ``teacher_model_name_or_path``)."""
TOY_DATASET = "toy-arithmetic"
"""Dataset name of the toy world's problems in recipes (``dataset_name``); from Python: ``build_dataset``."""

ASSETS_DIR = Path(__file__).parent / "assets"
TEACHER_DIR = ASSETS_DIR / "teacher"


def _config(tokenizer, hidden: int, layers: int, heads: int, kv_heads: int, intermediate: int, max_positions: int):
    from transformers import Qwen3Config

    return Qwen3Config(
        vocab_size=len(tokenizer),
        hidden_size=hidden,
        intermediate_size=intermediate,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=kv_heads,
        head_dim=hidden // heads,
        max_position_embeddings=max_positions,
        rope_theta=10000.0,
        tie_word_embeddings=True,
        bos_token_id=None,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        attention_dropout=0.0,
    )


def teacher_config(tokenizer, max_positions: int = 1024):
    """Teacher: width 256, 4 layers, 8 heads of 32 (4 KV heads), MLP 512."""
    return _config(tokenizer, hidden=256, layers=4, heads=8, kv_heads=4, intermediate=512, max_positions=max_positions)


def student_config(tokenizer, max_positions: int = 1024, layers: int = 2):
    """A from-scratch student: the teacher's width with fewer layers (the demo uses :func:`student_from_teacher`)."""
    return _config(tokenizer, hidden=256, layers=layers, heads=8, kv_heads=4, intermediate=512,
                   max_positions=max_positions)


def build_model(config, seed: int = 0, dtype: torch.dtype = torch.float32):
    """A randomly initialized ``Qwen3ForCausalLM`` for ``config`` (deterministic given ``seed``)."""
    from transformers import Qwen3ForCausalLM

    torch.manual_seed(seed)
    model = Qwen3ForCausalLM(config).to(dtype)
    model.generation_config.pad_token_id = config.pad_token_id
    model.generation_config.eos_token_id = config.eos_token_id
    model.generation_config.bos_token_id = None
    return model


def student_from_teacher(teacher, layers: tuple[int, ...] = (0, 1, 3), dtype: torch.dtype = torch.float32):
    """A smaller student: the teacher's embeddings, final norm and the listed decoder layers (copied)."""
    import copy

    from transformers import Qwen3ForCausalLM

    config = copy.deepcopy(teacher.config)
    config.num_hidden_layers = len(layers)
    if getattr(config, "layer_types", None):
        config.layer_types = [config.layer_types[i] for i in layers]
    student = Qwen3ForCausalLM(config)
    source = teacher.state_dict()
    target = {}
    for key in student.state_dict():
        if key.startswith("model.layers."):
            index = int(key.split(".")[2])
            rest = key.split(".", 3)[3]
            target[key] = source[f"model.layers.{layers[index]}.{rest}"]
        else:
            target[key] = source[key]
    student.load_state_dict({k: v.clone() for k, v in target.items()})
    student.generation_config = copy.deepcopy(teacher.generation_config)
    return student.to(dtype)


def load_teacher(path: str | os.PathLike | None = None, dtype: torch.dtype = torch.float32):
    """The shipped teacher (``toy/assets/teacher``) or one saved by ``scripts/build_toy_teacher.py``."""
    from transformers import Qwen3ForCausalLM

    path = Path(path) if path is not None else TEACHER_DIR
    if not (path / "config.json").exists():
        raise FileNotFoundError(
            f"No toy teacher at {path}. Build it with `python scripts/build_toy_teacher.py --output {path}` "
            "(about 5 minutes on a GPU, 30-60 on 2 CPU cores)."
        )
    model = Qwen3ForCausalLM.from_pretrained(path, dtype=dtype)
    return model


def teacher_info(path: str | os.PathLike | None = None) -> dict:
    """The build record saved next to the teacher (accuracy, steps, time), or {}."""
    path = Path(path) if path is not None else TEACHER_DIR
    record = path / "build_info.json"
    return json.loads(record.read_text()) if record.exists() else {}


def count_parameters(model) -> int:
    """Number of parameters of ``model``."""
    return sum(p.numel() for p in model.parameters())


def load_toy_world(seed: int = 0):
    """``(tokenizer, student, teacher)`` of the offline toy world, float32 on CPU: the shipped teacher
    (``toy/assets/teacher``, trained with ``scripts/build_toy_teacher.py``) and a student made of three of its
    four layers (not fine-tuned: it knows the format but copies numbers and picks operations badly; ``sod demo``
    adds a short cold-start SFT). Without a shipped teacher, untrained models of the same shapes (with a
    warning: such a run only exercises the plumbing)."""
    import logging

    from .tasks import build_toy_tokenizer, load_toy_tokenizer

    if (TEACHER_DIR / "config.json").exists():
        tokenizer = load_toy_tokenizer(TEACHER_DIR)
        teacher = load_teacher()
    else:
        logging.getLogger(__name__).warning(
            "The toy teacher has not been built (python scripts/build_toy_teacher.py): using an untrained toy "
            "teacher, so this run only exercises the training path.")
        tokenizer = build_toy_tokenizer()
        teacher = build_model(teacher_config(tokenizer), seed=seed)
    student = student_from_teacher(teacher)
    return tokenizer, student.to(torch.float32), teacher.to(torch.float32)


def resolve_toy_names(model, teacher_model, processing_class=None, seed: int = 0):
    """``(model, teacher_model, processing_class)`` with the toy names replaced by the toy world's models; the two
    names go together (they share the toy tokenizer)."""
    is_student, is_teacher = isinstance(model, str) and model == TOY_STUDENT, \
        isinstance(teacher_model, str) and teacher_model == TOY_TEACHER
    if not (is_student or is_teacher):
        return model, teacher_model, processing_class
    if not (is_student and is_teacher):
        raise ValueError(f"The toy world's models go together: model={model!r}, teacher_model={teacher_model!r}; "
                         f"use '{TOY_STUDENT}' with '{TOY_TEACHER}' (they share the toy tokenizer).")
    tokenizer, student, teacher = load_toy_world(seed)
    return student, teacher, processing_class if processing_class is not None else tokenizer
