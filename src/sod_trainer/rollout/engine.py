"""RolloutEngine: multi-turn, tool-integrated rollouts, token-in/token-out (SOD_SPEC §2, §7).

All live trajectories of a batch generate together (one backend call per turn); the tool calls of a
turn run concurrently on a thread pool; observation ids are appended with ``assistant_mask = 0``.
A trajectory stops when its turn has no tool call (or the environment says done), after
``max_turns`` assistant turns, when its token budget is spent, or when the observation would not fit.
"""

from __future__ import annotations

import logging
import traceback
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import nullcontext
from typing import Any, Protocol

from ..environments.base import ToolEnvironment, ToolResult
from .glue import ToolResponseFormatter
from .types import GenerationOutput, Trajectory, Turn

logger = logging.getLogger(__name__)

__all__ = ["GenerationBackend", "RolloutEngine"]


class GenerationBackend(Protocol):
    """Samples one assistant turn for each context (token ids), each with its own token budget."""

    def generate(
        self, contexts: list[list[int]], max_new_tokens: list[int], stop_strings: Sequence[str] = ()
    ) -> list[GenerationOutput]: ...


class RolloutEngine:
    """Runs batches of multi-turn rollouts with a generation backend and per-trajectory environments."""

    def __init__(
        self,
        backend: GenerationBackend,
        tokenizer,
        environment_factory: Callable[[], ToolEnvironment],
        *,
        max_completion_length: int,
        max_turns: int = 16,
        tool_workers: int = 8,
        formatter: ToolResponseFormatter | None = None,
        stop_strings: Sequence[str] | None = None,
        should_stop: Callable[[], None] | None = None,
        any_process_live: Callable[[bool], bool] | None = None,
    ):
        self.backend = backend
        self.tokenizer = tokenizer
        self.environment_factory = environment_factory
        self.max_completion_length = max_completion_length
        self.max_turns = max_turns
        self.formatter = formatter or ToolResponseFormatter(tokenizer)
        self.stop_strings = tuple(stop_strings) if stop_strings is not None else None
        self.should_stop = should_stop or (lambda: None)
        # HF generation under ZeRO-3 is a collective (the gather, then every forward step): all processes take
        # the same number of turns, a finished one joining with an empty batch
        self.any_process_live = any_process_live
        self.pool = ThreadPoolExecutor(max_workers=max(1, tool_workers), thread_name_prefix="sod-tool")
        self.eos_token_ids = set(getattr(backend, "eos_token_ids", set())) | {tokenizer.eos_token_id}

    def close(self) -> None:
        self.pool.shutdown(wait=True)

    # ------------------------------------------------------------------ environments
    def make_environments(self, rows: Sequence[dict[str, Any]]) -> tuple[list[ToolEnvironment], list[str | None]]:
        """One environment per row, reset with the row; returns them and any extra prompt text."""
        environments = [self.environment_factory() for _ in rows]
        extras = list(self.pool.map(lambda pair: pair[0].reset(**pair[1]), zip(environments, rows)))
        return environments, extras

    @staticmethod
    def _safe_step(environment: ToolEnvironment, text: str) -> ToolResult:
        try:
            return environment.step(text)
        except Exception as error:  # a crashed tool is contained: an error observation, the run goes on
            logger.warning("Tool environment %s raised %s: %s", type(environment).__name__, type(error).__name__, error)
            return ToolResult(
                observation=f"Error: the tool crashed ({type(error).__name__}: {error})", done=True, error=True,
                tool_called=True, metadata={"environment_exception": traceback.format_exc(limit=3)},
            )

    def _stop_strings(self, environments: Sequence[ToolEnvironment]) -> tuple[str, ...]:
        if self.stop_strings is not None:
            return self.stop_strings
        stops: list[str] = []
        for environment in environments[:1]:
            stops.extend(getattr(environment, "stop_strings", ()))
        return tuple(stops)

    # ------------------------------------------------------------------ rollout
    def rollout(
        self,
        prompt_ids: Sequence[list[int]],
        rows: Sequence[dict[str, Any]],
        environments: Sequence[ToolEnvironment] | None = None,
    ) -> list[Trajectory]:
        """Roll out one trajectory per prompt; ``rows`` are the dataset rows (reach ``reset``)."""
        if environments is None:
            environments, _ = self.make_environments(rows)
        stop_strings = self._stop_strings(environments)
        trajectories = [Trajectory(prompt_ids=list(ids), row=dict(row)) for ids, row in zip(prompt_ids, rows)]
        live = list(range(len(trajectories)))
        # a backend may bracket all turns of a batch (vLLM: one weight sync and wake-up per rollout batch)
        window = getattr(self.backend, "rollout_window", None)
        try:
            with window() if window is not None else nullcontext():
                self._turns(trajectories, live, environments, stop_strings)
        finally:
            for environment in environments:
                try:
                    environment.close()
                except Exception as error:  # closing must never lose the batch
                    logger.warning("Closing %s failed: %s", type(environment).__name__, error)
        return trajectories

    def _turns(self, trajectories: list[Trajectory], live: list[int], environments, stop_strings) -> None:
        """Generate turn after turn for the live trajectories, run their tool calls, append observations."""
        for turn_index in range(self.max_turns):
            if not (self.any_process_live(bool(live)) if self.any_process_live is not None else live):
                break
            self.should_stop()  # raises to abandon the batch when training is being interrupted
            contexts = [trajectories[i].prompt_ids + trajectories[i].completion_ids for i in live]
            budgets = [self.max_completion_length - trajectories[i].completion_length for i in live]
            outputs = self.backend.generate(contexts, budgets, stop_strings)
            stepping: list[tuple[int, str, GenerationOutput]] = []
            for i, output in zip(live, outputs):
                trajectory = trajectories[i]
                start = trajectory.completion_length
                trajectory.append(output.token_ids, sampled=True)
                text = self.tokenizer.decode(output.token_ids, skip_special_tokens=True)
                trajectory.turns.append(Turn(start, trajectory.completion_length, text, output.finish_reason))
                if output.finish_reason == "length":
                    trajectory.truncated = True
                    trajectory.stop_reason = "budget"
                stepping.append((i, text, output))
            results = list(self.pool.map(lambda item: self._safe_step(environments[item[0]], item[1]), stepping))
            still_live = []
            for (i, _, output), result in zip(stepping, results):
                trajectory = trajectories[i]
                turn = trajectory.turns[-1]
                turn.tool_called, turn.tool_error = result.tool_called, result.error
                turn.observation, turn.metadata = result.observation, dict(result.metadata)
                if trajectory.truncated:
                    continue
                if result.done or result.observation is None:
                    trajectory.stop_reason = "answer" if not result.error else "environment"
                    continue
                if turn_index == self.max_turns - 1:
                    trajectory.stop_reason = "max_turns"
                    continue
                glue = self.formatter(result.observation, output.finish_reason == "eos")
                if trajectory.completion_length + len(glue) >= self.max_completion_length:
                    trajectory.stop_reason = "observation_over_budget"
                    continue
                trajectory.append(glue, sampled=False)
                still_live.append(i)
            live = still_live
