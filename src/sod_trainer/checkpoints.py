"""Crash-safe checkpoints: a checkpoint counts only once it is completely written.

``transformers.Trainer`` writes ``checkpoint-N/`` file by file (model, optimizer, scheduler, RNG state, trainer
state); a run killed in the middle (SIGKILL, out of memory, a preempted node) leaves a folder that looks like the
newest checkpoint but cannot be resumed from, and ``get_last_checkpoint`` picks it. :class:`~sod_trainer.SODTrainer`
writes :data:`COMPLETE_MARKER` last, atomically (a temporary file renamed into place), after every process has
written its part; ``resume_from_checkpoint=True`` takes the newest checkpoint with the marker and sets the
incomplete ones after it aside (renamed ``incomplete-checkpoint-N``), so they are neither resumed from nor
counted by ``save_total_limit``.
"""

from __future__ import annotations

import json
import logging
import os
import re
import time

logger = logging.getLogger(__name__)

__all__ = ["COMPLETE_MARKER", "mark_complete", "is_complete", "is_resumable", "last_complete_checkpoint",
           "set_aside_incomplete"]

COMPLETE_MARKER = "sod_checkpoint_complete.json"
_CHECKPOINT = re.compile(r"^checkpoint-(\d+)$")
_TRAINER_STATE = "trainer_state.json"


def mark_complete(folder: str, step: int) -> None:
    """Write the completion marker of ``folder`` (call after every file of the checkpoint is written)."""
    path = os.path.join(folder, COMPLETE_MARKER)
    temporary = f"{path}.tmp-{os.getpid()}"
    with open(temporary, "w", encoding="utf-8") as handle:
        json.dump({"global_step": step, "files": sorted(os.listdir(folder)), "time": time.time()}, handle)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(temporary, path)
    try:  # make the rename itself durable
        directory = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(directory)
        finally:
            os.close(directory)
    except OSError:  # pragma: no cover - not every filesystem lets a folder be fsynced
        pass


def _checkpoints(output_dir: str) -> list[tuple[int, str]]:
    if not os.path.isdir(output_dir):
        return []
    found = []
    for name in os.listdir(output_dir):
        match = _CHECKPOINT.match(name)
        if match and os.path.isdir(os.path.join(output_dir, name)):
            found.append((int(match.group(1)), os.path.join(output_dir, name)))
    return sorted(found)


def is_complete(folder: str) -> bool:
    """Whether ``folder`` is a completely written checkpoint (it has the completion marker)."""
    return os.path.isfile(os.path.join(folder, COMPLETE_MARKER))


def is_resumable(folder: str) -> bool:
    """Complete, or written before completion markers existed (no sibling checkpoint has one) with
    ``trainer_state.json``, which ``Trainer`` writes last."""
    if is_complete(folder):
        return True
    siblings = _checkpoints(os.path.dirname(os.path.abspath(folder)))
    legacy = not any(is_complete(other) for _, other in siblings)
    return legacy and os.path.isfile(os.path.join(folder, _TRAINER_STATE))


def last_complete_checkpoint(output_dir: str) -> str | None:
    """The newest completely written ``checkpoint-N`` under ``output_dir``, or ``None``.

    Folders written before completion markers existed (none has one) count as complete when they hold
    ``trainer_state.json``, which ``Trainer`` writes last.
    """
    checkpoints = _checkpoints(output_dir)
    if any(is_complete(folder) for _, folder in checkpoints):
        complete = [folder for _, folder in checkpoints if is_complete(folder)]
    else:
        complete = [folder for _, folder in checkpoints if os.path.isfile(os.path.join(folder, _TRAINER_STATE))]
    return complete[-1] if complete else None


def set_aside_incomplete(output_dir: str, after: str | None) -> list[str]:
    """Rename the incomplete checkpoints newer than ``after`` to ``incomplete-checkpoint-N`` (kept for
    inspection, ignored by resuming and by ``save_total_limit``); returns their new paths."""
    last_step = int(_CHECKPOINT.match(os.path.basename(after)).group(1)) if after else -1
    moved = []
    for step, folder in _checkpoints(output_dir):
        if step > last_step and not is_complete(folder):
            target = os.path.join(output_dir, f"incomplete-checkpoint-{step}")
            if os.path.exists(target):
                target = f"{target}-{int(time.time())}"
            os.replace(folder, target)
            logger.warning("%s was not completely written (the run stopped while saving it); moved it to %s and "
                           "resumed from %s.", folder, target, after)
            moved.append(target)
    return moved
