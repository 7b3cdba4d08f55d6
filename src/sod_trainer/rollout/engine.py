"""RolloutEngine: multi-turn, tool-integrated rollouts, token-in/token-out (SOD_SPEC §2, §7).

All live trajectories of a batch generate together (one backend call per turn); the tool calls of a
turn run concurrently on up to ``tool_workers`` threads; observation ids are appended with
``assistant_mask = 0``.
A trajectory stops when its turn has no tool call (or the environment says done), after
``max_turns`` assistant turns, when its token budget is spent, or when the observation would not fit.
Environments of either kind (the code interpreter's ``step(turn_text)`` or TRL's function tools) are reached through
one adapter each (:mod:`.adapters`); the engine only sees ids to append.

A failing environment is contained: a ``reset`` or ``step`` that raises, or that has not returned after the
environment's ``step_timeout_s``, ends that trajectory with an error observation (a warning is logged; the
turn counts as a failed tool call, a hang also as a timeout) and the rest of the batch goes on.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
import traceback
from collections.abc import Callable, Sequence
from contextlib import nullcontext
from typing import Any, Protocol

from ..environments.base import DEFAULT_STEP_TIMEOUT_S, ToolEnvironment, ToolResult
from .adapters import TurnEnvironment, TurnInput, as_turn_environment
from .glue import ToolResponseFormatter
from .types import GenerationOutput, Trajectory, Turn

logger = logging.getLogger(__name__)

__all__ = ["GenerationBackend", "RolloutEngine"]

_HUNG = object()  # the result of a call that ran past its environment's step_timeout_s


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
        environment_factory: Callable[[], ToolEnvironment | TurnEnvironment],
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
        self.tool_workers = max(1, tool_workers)
        self.eos_token_ids = set(getattr(backend, "eos_token_ids", set())) | {tokenizer.eos_token_id}

    def close(self) -> None:
        """Nothing to release: tool calls run on short-lived daemon threads (a stuck one never blocks exit)."""

    # ------------------------------------------------------------------ environments
    def make_environments(self, rows: Sequence[dict[str, Any]]) -> tuple[list[TurnEnvironment], list[str | None]]:
        """One environment per row (behind its kind's adapter), reset with the row; returns them and any extra
        prompt text.

        An environment whose ``reset`` raises or hangs is replaced by one that ends the trajectory with an
        error observation at its first turn (its ``close`` is still called)."""
        environments = [self.adapt(self.environment_factory()) for _ in rows]
        outcomes = self._call_all(environments, lambda k: environments[k].reset(**rows[k]))
        extras: list[str | None] = []
        for k, outcome in enumerate(outcomes):
            if outcome is _HUNG or isinstance(outcome, _Failure):
                reason = (f"reset() did not return within {_step_timeout(environments[k]):g} s" if outcome is _HUNG
                          else f"reset() raised {outcome.summary}")
                logger.warning("Tool environment %s: %s; this trajectory ends with an error observation at its "
                               "first turn. Fix the environment's reset().", _name(environments[k]), reason)
                environments[k] = _BrokenEnvironment(environments[k], reason, hung=outcome is _HUNG)
                outcome = None
            extras.append(outcome)
        return environments, extras

    def adapt(self, environment: Any) -> TurnEnvironment:
        """The environment behind the adapter of its kind (see :mod:`.adapters`)."""
        return as_turn_environment(environment, self.formatter)

    def _step_all(self, environments: Sequence[TurnEnvironment], turns: Sequence[TurnInput]) -> list[ToolResult]:
        """``step`` every environment with its turn, concurrently; crashes and hangs become error results."""
        outcomes = self._call_all(environments, lambda k: environments[k].step(turns[k]))
        results = []
        for environment, outcome in zip(environments, outcomes):
            name = _name(environment)
            if outcome is _HUNG:
                limit = _step_timeout(environment)
                logger.warning("Tool environment %s did not return from step() within %g s (step_timeout_s): the "
                               "trajectory ends there with an error observation, counted as a tool timeout. The "
                               "stuck call's thread is left running.", name, limit)
                outcome = ToolResult(
                    observation=f"Error: the tool did not answer within {limit:g} s (TimeoutError).", done=True,
                    error=True, tool_called=True, metadata={
                        "timed_out": True, "environment_hung": True,
                        "environment_failure": f"step() did not return within {limit:g} s"})
            elif isinstance(outcome, _Failure):  # a crashed tool is contained: an error observation, the run goes on
                logger.warning("Tool environment %s raised %s in step(): the trajectory ends there with an error "
                               "observation, counted as a failed tool call. Return ToolResult(error=True) for "
                               "expected failures instead of raising.", name, outcome.summary)
                outcome = ToolResult(
                    observation=f"Error: the tool crashed ({outcome.summary})", done=True, error=True,
                    tool_called=True, metadata={"environment_exception": outcome.traceback,
                                                "environment_failure": f"step() raised {outcome.summary}"})
            results.append(outcome)
        return results

    def _call_all(self, environments: Sequence[ToolEnvironment], function: Callable[[int], Any]) -> list[Any]:
        """``function(k)`` for every environment ``k`` on at most ``tool_workers`` threads at once. Each result is
        the return value, a :class:`_Failure` if it raised, or ``_HUNG`` if it ran past the environment's
        ``step_timeout_s`` (its daemon thread is abandoned: Python cannot stop a thread)."""
        count = len(environments)
        results: list[Any] = [None] * count
        finished: queue.SimpleQueue = queue.SimpleQueue()

        def work(k: int) -> None:
            try:
                value = function(k)
            except Exception as error:
                value = _Failure(error, traceback.format_exc(limit=3))
            finished.put((k, value))

        running: dict[int, float] = {}  # index -> deadline (inf: none)
        started = done = 0
        while done < count:
            while started < count and len(running) < self.tool_workers:
                limit = _step_timeout(environments[started])
                running[started] = time.monotonic() + limit if limit is not None else float("inf")
                threading.Thread(target=work, args=(started,), name=f"sod-tool-{started}", daemon=True).start()
                started += 1
            wait = min(running.values(), default=float("inf")) - time.monotonic()
            try:
                k, value = finished.get(timeout=None if wait == float("inf") else max(0.0, wait))
            except queue.Empty:
                pass
            else:
                if running.pop(k, None) is not None:
                    results[k] = value
                    done += 1
            now = time.monotonic()
            for k in [k for k, deadline in running.items() if deadline <= now]:
                del running[k]
                results[k] = _HUNG
                done += 1
        return results

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
        environments = [self.adapt(environment) for environment in environments]
        stop_strings = self._stop_strings(environments)
        trajectories = [Trajectory(prompt_ids=list(ids), row=dict(row), environment=environment.environment)
                        for ids, row, environment in zip(prompt_ids, rows, environments)]
        live = list(range(len(trajectories)))
        # a backend may bracket all turns of a batch (vLLM: one weight sync and wake-up per rollout batch)
        window = getattr(self.backend, "rollout_window", None)
        try:
            with window() if window is not None else nullcontext():
                self._turns(trajectories, live, environments, stop_strings)
        finally:
            self.close_environments(environments)
        return trajectories

    def close_environments(self, environments: Sequence[ToolEnvironment]) -> None:
        """``close`` every environment; one that raises or hangs is logged and left (closing never loses a batch)."""
        outcomes = self._call_all(environments, lambda k: environments[k].close())
        for environment, outcome in zip(environments, outcomes):
            if outcome is _HUNG or isinstance(outcome, _Failure):
                logger.warning("Closing %s failed: %s", _name(environment),
                               "it did not return in time" if outcome is _HUNG else outcome.summary)

    def _turns(self, trajectories: list[Trajectory], live: list[int], environments, stop_strings) -> None:
        """Generate turn after turn for the live trajectories, run their tool calls, append observations."""
        for turn_index in range(self.max_turns):
            if not (self.any_process_live(bool(live)) if self.any_process_live is not None else live):
                break
            self.should_stop()  # raises to abandon the batch when training is being interrupted
            contexts = [trajectories[i].prompt_ids + trajectories[i].completion_ids for i in live]
            budgets = [self.max_completion_length - trajectories[i].completion_length for i in live]
            outputs = self.backend.generate(contexts, budgets, stop_strings)
            last_turn = turn_index == self.max_turns - 1
            turns = [self._append_turn(trajectories[i], output, last_turn) for i, output in zip(live, outputs)]
            results = self._step_all([environments[i] for i in live], turns)
            live = [i for i, turn, result in zip(live, turns, results)
                    if self._after_tool(trajectories[i], environments[i], turn, result)]

    def _append_turn(self, trajectory: Trajectory, output: GenerationOutput, last_turn: bool) -> TurnInput:
        """Append a sampled turn (``assistant_mask = 1``) and its :class:`Turn`; returns what the tool gets."""
        start = trajectory.completion_length
        context = trajectory.prompt_ids + trajectory.completion_ids
        trajectory.append(output.token_ids, sampled=True)
        text = self.tokenizer.decode(output.token_ids, skip_special_tokens=True)
        trajectory.turns.append(Turn(start, trajectory.completion_length, text, output.finish_reason))
        if output.finish_reason == "length":
            trajectory.truncated = True
            trajectory.stop_reason = "budget"
        return TurnInput(text=text, token_ids=list(output.token_ids), context_ids=context,
                         ended_with_eos=output.finish_reason == "eos", final=last_turn)

    def _after_tool(self, trajectory: Trajectory, environment: TurnEnvironment, turn: TurnInput,
                    result: ToolResult) -> bool:
        """Record the tool result on the last turn and append the observation glue (``assistant_mask = 0``);
        returns whether the trajectory goes on to another turn (else its ``stop_reason`` is set)."""
        record = trajectory.turns[-1]
        record.tool_called, record.tool_error = result.tool_called, result.error
        record.observation, record.metadata = result.observation, dict(result.metadata)
        if result.metadata.get("environment_failure"):  # a crash or a hang, see _step_all
            trajectory.environment_failure = str(result.metadata["environment_failure"])
        if trajectory.truncated:
            return False
        if turn.final and result.metadata.get("tool_calls_not_run"):  # function calls past the last tool round
            trajectory.stop_reason = "max_turns"
            return False
        if result.done or result.observation is None:
            trajectory.stop_reason = "answer" if not result.error else "environment"
            return False
        if turn.final:
            trajectory.stop_reason = "max_turns"
            return False
        glue = environment.observation_ids(result, turn)
        if trajectory.completion_length + len(glue) >= self.max_completion_length:
            trajectory.stop_reason = "observation_over_budget"
            return False
        trajectory.append(glue, sampled=False)
        return True


def _name(environment: Any) -> str:
    """The class name of the user's environment behind an adapter."""
    return type(getattr(environment, "environment", environment)).__name__


def _step_timeout(environment: Any) -> float | None:
    return getattr(environment, "step_timeout_s", DEFAULT_STEP_TIMEOUT_S)


class _Failure:
    """An exception raised by an environment call, kept for the warning and the turn's metadata."""

    def __init__(self, error: Exception, formatted: str):
        self.error = error
        self.summary = f"{type(error).__name__}: {error}"
        self.traceback = formatted


class _BrokenEnvironment(TurnEnvironment):
    """Stands in for an environment whose ``reset`` failed: its first turn ends the trajectory with an error."""

    def __init__(self, adapter: TurnEnvironment, reason: str, hung: bool):
        self.adapter = adapter
        self.environment = adapter.environment
        self.reason = reason
        self.hung = hung
        self.stop_strings = tuple(adapter.stop_strings)

    def reset(self, **row: Any) -> str | None:
        return None

    def observation_ids(self, result: ToolResult, turn: TurnInput) -> list[int]:
        return []

    def step(self, turn: TurnInput) -> ToolResult:
        return ToolResult(observation=f"Error: the tool environment failed to start ({self.reason}).", done=True,
                          error=True, tool_called=True, metadata={"environment_failure": self.reason,
                                                                  "timed_out": self.hung})

    def close(self) -> None:
        self.adapter.close()
