"""The edge between the rollout engine and the two kinds of tool environment.

The engine asks one question per assistant turn, "is this a tool call, and which ids come back?", through a
:class:`TurnEnvironment`. Each kind answers with its own small adapter:

* :class:`TextToolEnvironment` wraps the code-interpreter kind (:class:`~sod_trainer.ToolEnvironment`:
  ``step(turn_text)`` reads the decoded turn; the observation is wrapped in the chat template's tool-response glue);
* :class:`~sod_trainer.environments.function_tools.FunctionToolEnvironment` serves TRL's kind (public methods are
  function tools, calls parsed and results rendered through the chat template).

Whatever the kind, the engine appends the returned ids with ``assistant_mask = 0``: step ids, d_k and w_k never know
which kind produced an observation.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any

from ..environments.base import DEFAULT_STEP_TIMEOUT_S, ToolResult

__all__ = ["TurnInput", "TurnEnvironment", "TextToolEnvironment", "as_turn_environment"]


@dataclass
class TurnInput:
    """One sampled assistant turn as the engine hands it to an environment."""

    text: str  # decoded with skip_special_tokens=True (what ToolEnvironment.step reads)
    token_ids: list[int]  # the sampled ids of this turn
    context_ids: list[int]  # prompt + completion before this turn (the parsing prefix)
    ended_with_eos: bool  # the turn ended with the end-of-turn token
    final: bool  # no turn follows (max_tool_calling_iterations reached): its output would never be shown


class TurnEnvironment(ABC):
    """What the engine needs from one trajectory's environment, whatever its kind."""

    environment: Any  # the user's object (reward functions get it in ``environments``)
    stop_strings: tuple[str, ...] = ()
    step_timeout_s: float | None = DEFAULT_STEP_TIMEOUT_S

    @abstractmethod
    def reset(self, **row: Any) -> str | None:
        """Start the trajectory of dataset ``row``; may return text appended to the last prompt message."""

    @abstractmethod
    def step(self, turn: TurnInput) -> ToolResult:
        """Run the turn's tool call(s), if any."""

    @abstractmethod
    def observation_ids(self, result: ToolResult, turn: TurnInput) -> list[int]:
        """The ids appended after the turn for ``result`` (``assistant_mask = 0``)."""

    def prompt_options(self) -> dict[str, Any]:
        """Extra ``apply_chat_template`` arguments for this trajectory's prompt (e.g. ``tools``), and
        ``environment_prompt=True`` when the environment's ``reset`` may supply the whole prompt (TRL's kind)."""
        return {}

    def close(self) -> None:
        """Release the trajectory's resources once it is finished."""


class TextToolEnvironment(TurnEnvironment):
    """Adapter for the code-interpreter kind: ``step(turn_text) -> ToolResult`` and the template's tool glue."""

    def __init__(self, environment: Any, formatter):
        self.environment = environment
        self.formatter = formatter
        self.stop_strings = tuple(getattr(environment, "stop_strings", ()))
        self.step_timeout_s = getattr(environment, "step_timeout_s", DEFAULT_STEP_TIMEOUT_S)

    def reset(self, **row: Any) -> str | None:
        reset = getattr(self.environment, "reset", None)
        return reset(**row) if reset is not None else None

    def step(self, turn: TurnInput) -> ToolResult:
        return self.environment.step(turn.text)

    def observation_ids(self, result: ToolResult, turn: TurnInput) -> list[int]:
        return self.formatter(result.observation, turn.ended_with_eos)

    def close(self) -> None:
        close = getattr(self.environment, "close", None)
        if close is not None:
            close()


def as_turn_environment(environment: Any, formatter) -> TurnEnvironment:
    """``environment`` itself if it already is a :class:`TurnEnvironment`, else the code-interpreter adapter."""
    if isinstance(environment, TurnEnvironment):
        return environment
    return TextToolEnvironment(environment, formatter)
