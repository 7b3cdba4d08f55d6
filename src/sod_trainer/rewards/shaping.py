"""Reward shaping: the paper's tool-use shaping for wrong answers and DAPO's overlong penalty."""

from __future__ import annotations

def tool_use_shaping(reward: float, num_turns: int) -> float:
    """The paper's shaping for wrong answers: ``min(-0.6, r + 0.1 * (num_turns - 2) / 2)``.

    More tool turns make a wrong answer less negative, capped at -0.6 (never as good as a right one).
    """
    return min(-0.6, reward + 0.1 * (num_turns - 2) / 2)


def overlong_penalty(length: int, max_completion_length: int, buffer: int = 1024, factor: float = 1.0) -> float:
    """DAPO's soft overlong penalty: 0 up to ``max_len - buffer``, then ``-factor * (L - (max_len - buffer)) / buffer``."""
    threshold = max_completion_length - buffer
    if length <= threshold:
        return 0.0
    return -factor * (length - threshold) / buffer
