"""Trajectory records built token-in/token-out by the rollout engine (SOD_SPEC §2)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

__all__ = ["Turn", "Trajectory", "GenerationOutput"]


@dataclass
class GenerationOutput:
    """One backend completion: the sampled ids and why sampling stopped (``eos``, ``stop`` or ``length``)."""

    token_ids: list[int]
    finish_reason: str


@dataclass
class Turn:
    """One assistant turn: its span ``[start, end)`` in the completion and what the tool said."""

    start: int
    end: int
    text: str
    finish_reason: str
    tool_called: bool = False
    tool_error: bool = False
    observation: str | None = None
    metadata: dict[str, Any] = field(default_factory=dict)


@dataclass
class Trajectory:
    """Prompt ids, completion ids (model turns and observations) and the mask that tells them apart."""

    prompt_ids: list[int]
    row: dict[str, Any] = field(default_factory=dict)
    completion_ids: list[int] = field(default_factory=list)
    assistant_mask: list[int] = field(default_factory=list)
    turns: list[Turn] = field(default_factory=list)
    truncated: bool = False
    stop_reason: str = ""
    environment_failure: str | None = None
    environment: Any = field(default=None, repr=False)  # the user's environment object (reward ``environments``)

    def append(self, ids: list[int], sampled: bool) -> None:
        self.completion_ids.extend(ids)
        self.assistant_mask.extend([1 if sampled else 0] * len(ids))

    @property
    def completion_length(self) -> int:
        return len(self.completion_ids)

    @property
    def num_turns(self) -> int:
        return len(self.turns)

    @property
    def num_tool_calls(self) -> int:
        return sum(turn.tool_called for turn in self.turns)

    @property
    def num_tool_errors(self) -> int:
        return sum(turn.tool_error for turn in self.turns)

    @property
    def num_function_calls(self) -> int:
        """Tool calls counted as TRL counts them: every call of a turn (a code-interpreter turn runs one)."""
        return sum(int(turn.metadata.get("tool_calls", int(turn.tool_called))) for turn in self.turns)

    @property
    def num_function_call_failures(self) -> int:
        """Failed tool calls counted as TRL counts them (a raised exception, an unknown tool)."""
        return sum(int(turn.metadata.get("tool_failures", int(turn.tool_called and turn.tool_error)))
                   for turn in self.turns)

    @property
    def first_error_turn(self) -> int:
        """0-based index of the first turn whose tool call failed, -1 if none."""
        for index, turn in enumerate(self.turns):
            if turn.tool_error:
                return index
        return -1
