"""Multi-turn rollouts: the engine, its generation backends and the trajectory records."""

from .engine import GenerationBackend, RolloutEngine
from .glue import ToolResponseFormatter
from .hf import HFGenerationBackend
from .types import GenerationOutput, Trajectory, Turn

__all__ = ["RolloutEngine", "GenerationBackend", "HFGenerationBackend", "ToolResponseFormatter",
           "Trajectory", "Turn", "GenerationOutput"]
