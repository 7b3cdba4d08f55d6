"""A scripted, scored rollout batch with known tokens, divergences and weights (viewer tests, benchmark)."""

from __future__ import annotations

import torch

from sod_trainer.objective import step_divergence, step_weights
from sod_trainer.rollout.types import Trajectory, Turn
from sod_trainer.scoring import StepWeighting, error_steps_for
from sod_trainer.segmenters import TurnSegmenter
from sod_trainer.viewer import BatchView

PROMPT = "<|im_start|>user\nWhat is 7*6?<|im_end|>\n<|im_start|>assistant\n"
# |s - q| of each model token, cycling within a step: one token in each shading bucket b0..b5
GAP_CYCLE = (0.01, 0.1, 0.3, 0.7, 1.5, 2.5)
STUDENT_LOGP = -0.5

# (text, sampled, tool_error, gap): gap None cycles through GAP_CYCLE, a number is every token's |s - q|
SCRIPTS = {
    # error in step 1, the teacher is lost in step 2 (w = 0.1 / 1.2), step 3 back near step 1 (w = 1): recovery
    "recovery": ([("```python\nprint(x)\n```", True, True, 0.1),
                  ("<tool_response>\nNameError: name 'x' is not defined\n</tool_response>", False, False, None),
                  ("```python\nprint(7*6)\n```", True, False, 1.2),
                  ("<tool_response>\n42\n</tool_response>", False, False, None),
                  ("The answer is \\boxed{42}.", True, False, 0.1)], 1.0),
    # the last step stays far from the teacher (w = 0.25 / 0.75): erroneous
    "erroneous": ([("```python\nprint(y)\n```", True, True, 0.25),
                   ("<tool_response>\nNameError: name 'y' is not defined\n</tool_response>", False, False, None),
                   ("So \\boxed{41}.", True, False, 0.75)], -1.0),
    # one step, every bucket: stable
    "stable": ([("The answer is \\boxed{42}, since 7*6 = 42.", True, False, None)], 0.5),
}
ORDER = ("recovery", "erroneous", "stable")


def scripted_trajectories(tokenizer, repeat: int = 1) -> tuple[list[Trajectory], list[list[float]], list[float]]:
    """The trajectories, every completion token's |s - q| (0 on observations) and the rewards."""
    trajectories, gaps, rewards = [], [], []
    for name in ORDER * repeat:
        parts, reward = SCRIPTS[name]
        trajectory = Trajectory(tokenizer.encode(PROMPT))
        row_gaps: list[float] = []
        for text, sampled, tool_error, gap in parts:
            ids = tokenizer.encode(text)
            start = trajectory.completion_length
            trajectory.append(ids, sampled)
            if sampled:
                trajectory.turns.append(Turn(start, trajectory.completion_length, text, "stop",
                                             tool_called=tool_error or name != "stable", tool_error=tool_error))
                row_gaps += [GAP_CYCLE[i % len(GAP_CYCLE)] if gap is None else gap for i in range(len(ids))]
            else:
                row_gaps += [0.0] * len(ids)
        trajectory.stop_reason = "eos"
        trajectories.append(trajectory)
        gaps.append(row_gaps)
        rewards.append(reward)
    return trajectories, gaps, rewards


def scripted_view(tokenizer, repeat: int = 1, trajectories=None, gaps=None, rewards=None) -> BatchView:
    """A :class:`BatchView` scored as the trainer scores: s_t = -0.5, q_t = s_t - gap, SOD weights."""
    if trajectories is None:
        trajectories, gaps, rewards = scripted_trajectories(tokenizer, repeat)
    width = max(t.completion_length for t in trajectories)
    ids = torch.zeros(len(trajectories), width, dtype=torch.long)
    mask = torch.zeros_like(ids)
    student = torch.zeros(len(trajectories), width)
    teacher = torch.zeros(len(trajectories), width)
    for row, (trajectory, row_gaps) in enumerate(zip(trajectories, gaps)):
        n = trajectory.completion_length
        ids[row, :n] = torch.tensor(trajectory.completion_ids)
        mask[row, :n] = torch.tensor(trajectory.assistant_mask)
        student[row, :n] = torch.where(mask[row, :n].bool(), STUDENT_LOGP, 0.0)
        teacher[row, :n] = student[row, :n] - torch.tensor(row_gaps) * mask[row, :n]
    step_ids = TurnSegmenter()(ids, mask)
    divergence, valid = step_divergence(student, teacher, step_ids)
    weights = step_weights(divergence, valid, scheme="sod")
    view = BatchView(trajectories, torch.tensor(rewards), step_ids, error_steps_for(trajectories, step_ids), teacher)
    view.fill(StepWeighting(divergence, valid, weights, torch.zeros(0)), student)
    return view


def long_trajectory(tokenizer, tokens: int = 20_000, turns: int = 20) -> tuple[Trajectory, list[float]]:
    """One trajectory of about ``tokens`` completion tokens over ``turns`` tool turns (half model, half tool)."""
    model_text = "```python\nresult = total(12, 30) // 4 % 7 - 3\nprint(result)\n```\n"
    tool_text = "<tool_response>\nTraceback (most recent call last):\nNameError: name 'x' is not defined\n</tool_response>\n"
    model_ids, tool_ids = tokenizer.encode(model_text), tokenizer.encode(tool_text)
    per_turn = tokens // turns
    trajectory = Trajectory(tokenizer.encode(PROMPT))
    gaps: list[float] = []
    generator = torch.Generator().manual_seed(0)
    for turn in range(turns):
        start = trajectory.completion_length
        ids = (model_ids * (per_turn // 2 // len(model_ids) + 1))[: per_turn // 2]
        trajectory.append(ids, True)
        trajectory.turns.append(Turn(start, trajectory.completion_length, "", "stop", tool_called=True,
                                     tool_error=turn % 3 == 0))
        gaps += (torch.rand(len(ids), generator=generator) * 3).tolist()
        obs = (tool_ids * (per_turn // 2 // len(tool_ids) + 1))[: per_turn - len(ids)]
        trajectory.append(obs, False)
        gaps += [0.0] * len(obs)
    trajectory.stop_reason = "length"
    return trajectory, gaps
