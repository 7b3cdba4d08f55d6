"""sod-trainer: step-wise on-policy distillation (SOD) for tool-integrated small language models.

Public API (imported lazily so that ``import sod_trainer`` stays fast):
``SODTrainer``, ``SODConfig``, ``ToolEnvironment``, ``ToolResult``, ``PythonToolEnvironment``,
``StepSegmenter``, ``token_weights`` and the other objective functions.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

__version__ = "0.1.0"

_LAZY = {
    "SODTrainer": "sod_trainer.trainer",
    "SODConfig": "sod_trainer.config",
    "ToolEnvironment": "sod_trainer.environments.base",
    "ToolResult": "sod_trainer.environments.base",
    "PythonToolEnvironment": "sod_trainer.environments.python_tool",
    "StepSegmenter": "sod_trainer.segmenters",
    "TurnSegmenter": "sod_trainer.segmenters",
    "FixedLengthSegmenter": "sod_trainer.segmenters",
    "BlankLineSegmenter": "sod_trainer.segmenters",
    "RolloutEngine": "sod_trainer.rollout.engine",
    "Trajectory": "sod_trainer.rollout.types",
    "token_weights": "sod_trainer.objective",
    "step_ids_from_mask": "sod_trainer.objective",
    "step_divergence": "sod_trainer.objective",
    "step_weights": "sod_trainer.objective",
    "group_advantages": "sod_trainer.objective",
    "combined_advantages": "sod_trainer.objective",
    "clipped_surrogate_loss": "sod_trainer.objective",
}

__all__ = sorted(_LAZY) + ["__version__"]


def __getattr__(name: str):
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'sod_trainer' has no attribute {name!r}")


def __dir__():
    return __all__


if TYPE_CHECKING:  # pragma: no cover
    from .config import SODConfig
    from .environments.base import ToolEnvironment, ToolResult
    from .environments.python_tool import PythonToolEnvironment
    from .objective import token_weights
    from .segmenters import StepSegmenter
    from .trainer import SODTrainer
