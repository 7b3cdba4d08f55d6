"""``log_completions``: the table TRL's GRPOTrainer writes (parquet, wandb, trackio), plus SOD's step weights.

One record per trajectory of the latest rollout batch (:func:`build_samples`), holding both what TRL's table
shows (prompt, completion, one column per reward, the columns reward functions added with ``log_extra``, the
advantage) and SOD's per-token data (token ids, the model/tool mask, the printable segments) and per-step data
(weights ``w_k``, divergences ``d_k``; filled in by :func:`fill_samples` once known). ``SODTrainer.completion_samples()``
returns them: printing, the table and any other view read that one list.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from typing import Any

logger = logging.getLogger(__name__)

__all__ = ["build_samples", "completions_table", "fill_samples", "write_completions_table"]


def _segments(tokenizer, trajectory) -> list[tuple[str, bool]]:
    """The completion as ``(text, sampled_by_the_model)`` spans, in order."""
    segments = []
    mask = trajectory.assistant_mask
    start = 0
    for position in range(1, len(mask) + 1):
        if position == len(mask) or mask[position] != mask[start]:
            segments.append((tokenizer.decode(trajectory.completion_ids[start:position]), bool(mask[start])))
            start = position
    return segments


def build_samples(tokenizer, trajectories, prompts: Sequence[Any], completions: Sequence[Any],
                  reward_names: Sequence[str], rewards_per_function, rewards, advantages,
                  extra: dict[str, list] | None = None) -> list[dict[str, Any]]:
    """One record per trajectory (see the module docstring); ``rewards_per_function`` is ``(B, F)``, NaN = None."""
    samples = []
    for row, trajectory in enumerate(trajectories):
        samples.append({
            "prompt": prompts[row],
            "completion": completions[row],
            "rewards": {name: float(rewards_per_function[row, j]) for j, name in enumerate(reward_names)},
            "reward": float(rewards[row]),
            "advantage": float(advantages[row]),
            "extra": {column: values[row] for column, values in (extra or {}).items() if row < len(values)},
            "prompt_text": tokenizer.decode(trajectory.prompt_ids),
            "segments": _segments(tokenizer, trajectory),
            "prompt_ids": list(trajectory.prompt_ids),
            "completion_ids": list(trajectory.completion_ids),
            "assistant_mask": list(trajectory.assistant_mask),
            "weights": [], "divergence": [],  # per step; filled by fill_samples (on-policy: after the loss)
            "stop_reason": trajectory.stop_reason,
        })
    return samples


def fill_samples(samples: list[dict[str, Any]], weighting) -> None:
    """Put each sample's step weights and divergences in (rows in batch order)."""
    valid = weighting.valid
    for row, sample in enumerate(samples[: valid.shape[0]]):
        sample["weights"] = weighting.weights_per_step[row][valid[row]].tolist()
        sample["divergence"] = weighting.divergence[row][valid[row]].tolist()


def completions_table(samples: Sequence[dict[str, Any]], step: int) -> dict[str, list]:
    """TRL's completions table (``step``, ``prompt``, ``completion``, a column per reward, the ``log_extra``
    columns, ``advantage``) with SOD's ``step_weights`` and ``step_divergences`` after it."""
    from trl.trainer.utils import strip_images_from_messages

    names = list(dict.fromkeys(name for sample in samples for name in sample["rewards"]))
    extra = list(dict.fromkeys(column for sample in samples for column in sample["extra"]))
    return {
        "step": [step] * len(samples),
        "prompt": [strip_images_from_messages(s["prompt"]) for s in samples],
        "completion": [strip_images_from_messages(s["completion"]) for s in samples],
        **{name: [s["rewards"].get(name, float("nan")) for s in samples] for name in names},
        **{column: [s["extra"].get(column) for s in samples] for column in extra},
        "advantage": [s["advantage"] for s in samples],
        "step_weights": [list(s["weights"]) for s in samples],
        "step_divergences": [list(s["divergence"]) for s in samples],
    }


def write_completions_table(table: dict[str, list], args, step: int) -> str:
    """Write the table as ``<output_dir>/completions/completions_<step>.parquet`` (as TRL) and log it to wandb /
    trackio when they are in ``report_to``; returns the parquet path."""
    import pandas as pd

    folder = os.path.join(args.output_dir, "completions")
    os.makedirs(folder, exist_ok=True)
    path = os.path.join(folder, f"completions_{step:05d}.parquet")
    frame = pd.DataFrame(table)
    frame.to_parquet(path)
    report_to = args.report_to or []
    backends = []
    if "wandb" in report_to:
        import wandb

        if wandb.run is not None:
            backends.append(wandb)
    if "trackio" in report_to:
        import trackio

        backends.append(trackio)
    for backend in backends:
        shown = frame
        if getattr(args, "log_unique_prompts", False):  # prompts are conversations: compare them as text
            shown = frame[~frame["prompt"].astype(str).duplicated()]
        backend.log({"completions": backend.Table(dataframe=shown)})
    return path
