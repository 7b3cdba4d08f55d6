"""The embedded offline world: tokenizer, tiny models, arithmetic tool-use tasks and ``sod demo``.

``tasks`` (problems, reference trajectories, datasets, reward), ``models`` (tiny Qwen3 teacher and
student, the shipped teacher), ``sft`` (loss on assistant tokens only), ``student`` (cold start),
``evaluation`` (sampling with the real tool), ``diagnostics`` (d_k, w_k, entropy by step), ``build``
(the teacher build behind ``scripts/build_toy_teacher.py``) and ``demo`` (``sod demo``).
"""

from .tokenizer import CHATML_TEMPLATE, build_tokenizer

__all__ = ["build_tokenizer", "CHATML_TEMPLATE", "run_demo"]


def __getattr__(name: str):
    if name == "run_demo":
        from .demo import run_demo

        return run_demo
    raise AttributeError(f"module 'sod_trainer.toy' has no attribute {name!r}")
