"""The embedded offline world: tokenizer, tiny models, arithmetic tool-use tasks and ``sod demo``.

From Python, everything a run needs::

    from sod_trainer.toy import build_dataset, toy_reward      # problems and their reward
    SODTrainer(model="toy-student", teacher_model="toy-teacher", train_dataset=build_dataset(64),
               reward_funcs=[toy_reward], args=...)               # the toy models by name, as in recipes

``load_toy_world()`` returns ``(tokenizer, student, teacher)`` as objects. Modules: ``tasks`` (problems,
reference trajectories, datasets, reward), ``models`` (tiny Qwen3 teacher and student, the shipped teacher),
``sft`` (loss on assistant tokens only), ``student`` (cold start), ``evaluation`` (sampling with the real tool),
``diagnostics`` (d_k, w_k, entropy by step), ``plots`` (the demo's figures), ``build`` (the teacher build behind
``scripts/build_toy_teacher.py``) and ``demo`` (``sod demo``).
"""

from __future__ import annotations

import importlib

from .tokenizer import CHATML_TEMPLATE, build_tokenizer

_LAZY = {
    "build_dataset": "tasks", "build_rows": "tasks", "toy_reward": "tasks", "generate_problems": "tasks",
    "build_toy_tokenizer": "tasks", "load_toy_tokenizer": "tasks", "SYSTEM_PROMPT": "tasks",
    "load_toy_world": "models", "load_teacher": "models", "student_from_teacher": "models",
    "TOY_STUDENT": "models", "TOY_TEACHER": "models", "TOY_DATASET": "models",
    "run_demo": "demo",
}

__all__ = ["build_tokenizer", "CHATML_TEMPLATE", *sorted(_LAZY)]


def __getattr__(name: str):
    if name in _LAZY:
        value = getattr(importlib.import_module(f"{__name__}.{_LAZY[name]}"), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'sod_trainer.toy' has no attribute {name!r}")


def __dir__():
    return __all__
