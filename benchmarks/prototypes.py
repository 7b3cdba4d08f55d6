"""Prototypes measured next to the library's code by the benchmarks; not part of the package.

Prototypes 1 (a custom autograd function per log-prob chunk) and 2 (no separate π_old pass when on-policy)
have landed in the library (``sod_trainer.logprobs`` and ``sod_trainer.on_policy``); what is left here:

3. :class:`PipelinedRolloutEngine` — tool calls overlapped with generation (``bench_rollout.py``).
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

from sod_trainer.rollout.engine import RolloutEngine
from sod_trainer.rollout.types import Trajectory


class PipelinedRolloutEngine(RolloutEngine):
    """``RolloutEngine`` whose tool calls run while the model generates: the live trajectories are split into
    ``groups`` halves that take turns — group A's tool calls run on the pool while group B generates, and the
    other way round. Same trajectories (same per-trajectory rules as ``RolloutEngine.rollout``); each
    generate call is smaller, which costs little where tools or per-call overhead dominate."""

    def __init__(self, *args, groups: int = 2, **kwargs):
        super().__init__(*args, **kwargs)
        self.groups = groups
        self.pool = ThreadPoolExecutor(max_workers=self.tool_workers, thread_name_prefix="sod-pipelined")

    def close(self) -> None:
        self.pool.shutdown(wait=True)
        super().close()

    def rollout(self, prompt_ids, rows, environments=None):
        if environments is None:
            environments, _ = self.make_environments(rows)
        environments = [self.adapt(environment) for environment in environments]
        stop_strings = self._stop_strings(environments)
        trajectories = [Trajectory(prompt_ids=list(ids), row=dict(row)) for ids, row in zip(prompt_ids, rows)]
        indices = list(range(len(trajectories)))
        size = -(-len(indices) // self.groups) if indices else 1
        groups = [{"live": indices[g * size:(g + 1) * size], "turn": 0, "pending": None}
                  for g in range(self.groups)]
        try:
            while any(g["live"] or g["pending"] for g in groups):
                for group in groups:
                    if group["pending"] is not None:
                        self._finish_turn(group, trajectories)
                    if group["live"] and group["turn"] < self.max_turns:
                        self.should_stop()
                        self._start_turn(group, trajectories, environments, stop_strings)
                    elif group["pending"] is None:
                        group["live"] = []
        finally:
            self.close_environments(environments)
        return trajectories

    def _start_turn(self, group, trajectories, environments, stop_strings):
        live = group["live"]
        contexts = [trajectories[i].prompt_ids + trajectories[i].completion_ids for i in live]
        budgets = [self.max_completion_length - trajectories[i].completion_length for i in live]
        outputs = self.backend.generate(contexts, budgets, stop_strings)
        last_turn = group["turn"] == self.max_turns - 1
        stepping = []
        for i, output in zip(live, outputs):
            turn = self._append_turn(trajectories[i], output, last_turn)
            stepping.append((i, turn, self.pool.submit(
                lambda env=environments[i], t=turn: self._step_all([env], [t])[0])))
        group["pending"] = (stepping, environments)

    def _finish_turn(self, group, trajectories):
        stepping, environments = group["pending"]
        still_live = [i for i, turn, future in stepping
                      if self._after_tool(trajectories[i], environments[i], turn, future.result())]
        group["live"] = still_live
        group["pending"] = None
        group["turn"] += 1
