"""Graceful interruption: SIGTERM or Ctrl-C saves a checkpoint and ends training cleanly.

The first signal asks training to stop: between two optimizer steps a checkpoint is saved as usual;
during a rollout the engine stops before the next turn (the tool calls in flight finish or time out,
their sandboxes are closed) and the trainer saves the last completed step. A second Ctrl-C aborts at once.
"""

from __future__ import annotations

import logging
import signal
import threading

from transformers import TrainerCallback

logger = logging.getLogger(__name__)

__all__ = ["TrainingInterrupted", "InterruptHandler", "InterruptCallback"]


class TrainingInterrupted(Exception):
    """Raised inside a rollout when an interruption was requested."""


class InterruptHandler:
    """Installs SIGTERM/SIGINT handlers for the duration of ``train()`` (main thread only)."""

    def __init__(self):
        self.requested = False
        self.signal_name: str | None = None
        self._previous: dict[int, object] = {}

    def install(self) -> None:
        self.requested = False
        if threading.current_thread() is not threading.main_thread():
            return
        for sig in (signal.SIGTERM, signal.SIGINT):
            self._previous[sig] = signal.signal(sig, self._handle)

    def restore(self) -> None:
        for sig, previous in self._previous.items():
            signal.signal(sig, previous)
        self._previous.clear()

    def _handle(self, signum, frame) -> None:
        if self.requested and signum == signal.SIGINT:
            self.restore()
            raise KeyboardInterrupt
        self.requested = True
        self.signal_name = signal.Signals(signum).name
        logger.warning("%s received: saving a checkpoint and stopping (press Ctrl-C again to abort at once).",
                       self.signal_name)

    def check(self) -> None:
        """Raise :class:`TrainingInterrupted` if a stop was requested (called between rollout turns)."""
        if self.requested:
            raise TrainingInterrupted(self.signal_name or "interrupt")


class InterruptCallback(TrainerCallback):
    """After each optimizer step: if a stop was requested, save and stop."""

    def __init__(self, handler: InterruptHandler):
        self.handler = handler

    def on_step_end(self, args, state, control, **kwargs):
        if self.handler.requested:
            control.should_save = True
            control.should_training_stop = True
        return control
