"""The toy world's tool: the stateless Python tool, optionally flaky.

``flaky_rate > 0`` makes a share of tool calls fail with a transient error before the code runs
(:data:`~sod_trainer.toy.tasks.TRANSIENT_ERROR`, a traceback), as an overloaded code server would.
The right reaction is to run the same code again. The teacher never saw such an error, so after one
its token-level signal is unreliable, and, unlike the student's own mistakes, these errors do not go
away as the student improves: a knob for keeping SOD's failure mode present throughout training.
"""

from __future__ import annotations

import itertools
import random
from typing import Any

from ..environments import PythonToolEnvironment, ToolResult
from .tasks import TRANSIENT_ERROR

__all__ = ["ToyToolEnvironment", "toy_environment_factory"]

_instances = itertools.count()


class ToyToolEnvironment(PythonToolEnvironment):
    """:class:`PythonToolEnvironment` whose calls fail with probability ``flaky_rate`` (not run)."""

    def __init__(self, flaky_rate: float = 0.0, seed: int | None = None, **kwargs: Any):
        super().__init__(**kwargs)
        if not 0.0 <= flaky_rate < 1.0:
            raise ValueError(f"flaky_rate must be in [0, 1), got {flaky_rate}.")
        self.flaky_rate = flaky_rate
        self.rng = random.Random(seed if seed is not None else next(_instances))

    def step(self, turn_text: str) -> ToolResult:
        if self.flaky_rate and self.rng.random() < self.flaky_rate:
            try:
                code = self.parser(turn_text)
            except ValueError:
                code = None
            if code is not None:
                return ToolResult(observation=TRANSIENT_ERROR, done=False, error=True, tool_called=True,
                                  metadata={"injected_failure": True})
        return super().step(turn_text)


def toy_environment_factory(flaky_rate: float = 0.0, seed: int = 0):
    """A zero-argument factory (for ``SODTrainer(environment_factory=...)``) with reproducible flakiness."""
    counter = itertools.count()

    def make() -> ToyToolEnvironment:
        return ToyToolEnvironment(flaky_rate=flaky_rate, seed=seed * 1_000_003 + next(counter))

    return make
