"""Training, interruption and checkpoints for :class:`~sod_trainer.SODTrainer` (a mixin over ``transformers.Trainer``).

``train`` resumes from the newest *complete* checkpoint (:mod:`sod_trainer.checkpoints`), turns SIGTERM / Ctrl-C
and a teacher or reward server that stays down into a checkpoint at the last finished step (:mod:`.interrupt`,
:mod:`.retry`); ``_save_checkpoint`` also writes the rollout buffer position (``sod_state_<rank>.pt``), the model
card and the completeness marker, and rotates old checkpoints only once the new one counts.
"""

from __future__ import annotations

import logging
import os

import torch
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR, TrainOutput, rotate_checkpoints

from .checkpoints import COMPLETE_MARKER, is_resumable, last_complete_checkpoint, mark_complete, set_aside_incomplete
from .interrupt import TrainingInterrupted
from .retry import ServerUnavailableError

logger = logging.getLogger("sod_trainer.trainer")

__all__ = ["CheckpointingMixin"]


class CheckpointingMixin:
    """``train`` / ``save_model`` / ``_save_checkpoint`` of :class:`~sod_trainer.SODTrainer`; put before ``Trainer``
    in the bases (its ``super()`` calls are ``Trainer``'s)."""

    def train(self, resume_from_checkpoint: str | bool | None = None, **kwargs):
        """As ``Trainer.train``; SIGTERM/Ctrl-C save a checkpoint and return cleanly (see :mod:`.interrupt`)."""
        if isinstance(resume_from_checkpoint, str) and resume_from_checkpoint.strip().lower() in ("true", "false"):
            resume_from_checkpoint = resume_from_checkpoint.strip().lower() == "true"  # `--resume_from_checkpoint true`
        if resume_from_checkpoint is True:
            resume_from_checkpoint = last_complete_checkpoint(self.args.output_dir)
            if resume_from_checkpoint is None:
                raise ValueError(f"resume_from_checkpoint=True but {self.args.output_dir} holds no completely written "
                                 "checkpoint.")
            if self.accelerator.is_main_process:
                set_aside_incomplete(self.args.output_dir, resume_from_checkpoint)
            self.accelerator.wait_for_everyone()
        elif resume_from_checkpoint and not is_resumable(resume_from_checkpoint):
            raise ValueError(f"{resume_from_checkpoint} was not completely written (the run stopped while saving it; "
                             f"it has no {COMPLETE_MARKER}). Resume from an earlier checkpoint, or pass "
                             "resume_from_checkpoint=True for the newest complete one.")
        if resume_from_checkpoint:
            self._load_sod_state(resume_from_checkpoint)
        self.interrupt_handler.install()
        try:
            output = super().train(resume_from_checkpoint=resume_from_checkpoint, **kwargs)
            if self.interrupt_handler.requested:  # stopped by InterruptCallback after a step, checkpoint saved
                output.metrics["interrupted"] = 1.0
            return output
        except TrainingInterrupted as interruption:
            folder = self._save_at_step_boundary()
            logger.warning("Training interrupted by %s: saved %s; resume with train(resume_from_checkpoint=True).",
                           interruption, folder)
            return TrainOutput(self.state.global_step, float("nan"), {"interrupted": 1.0})
        except ServerUnavailableError as error:
            folder = self._save_at_step_boundary()
            message = (f"{error}\nSaved {folder} (step {self.state.global_step}) and stopped. Once the {error.server} "
                       "answers again, resume with trainer.train(resume_from_checkpoint=True) (`sod train ... "
                       "--resume_from_checkpoint true`); it continues from that step.")
            logger.error(message)
            raise type(error)(message, server=error.server, url=error.url, attempts=error.attempts) from error
        finally:
            self.interrupt_handler.restore()

    def _save_at_step_boundary(self) -> str:
        """Save the model as of the last finished optimizer step (a rollout starts a step, so a stop during
        one drops only that step's partial work) and return the checkpoint folder."""
        self.model.zero_grad(set_to_none=True)
        self._buffered_inputs = None
        self._step = self.state.global_step * self.args.gradient_accumulation_steps
        self._save_checkpoint(self.model, trial=None)
        self.control.should_training_stop = True
        return os.path.join(self.args.output_dir, f"{PREFIX_CHECKPOINT_DIR}-{self.state.global_step}")

    def _sod_state_path(self, folder: str) -> str:
        return os.path.join(folder, f"sod_state_{self.accelerator.process_index}.pt")

    def save_model(self, output_dir: str | None = None, _internal_call: bool = False):
        """As ``Trainer.save_model``; also writes the run's rollout format (``sod_rollout.yaml``: tool-call format,
        chat-template arguments, tool output cut, tool rounds), which ``sod eval --model <folder>`` reads."""
        super().save_model(output_dir, _internal_call)
        if self.args.should_save:
            from .evaluation.arguments import write_rollout_file

            write_rollout_file(self.args, output_dir or self.args.output_dir)

    def create_model_card(self, model_name: str | None = None, dataset_name: str | None = None,
                          tags: str | list[str] | None = None) -> None:
        """Write the model card (``README.md`` in ``output_dir``), with TRL's signature: tags ``trl`` and ``sod``,
        the SOD paper's citation and the run's recipe (see :mod:`sod_trainer.model_card`)."""
        from .model_card import write_model_card

        write_model_card(self, model_name=model_name, dataset_name=dataset_name, tags=tags)

    def _save_checkpoint(self, model, trial):
        # as TRL's trainers: the model card is written with every checkpoint
        self.create_model_card(model_name=(self.args.hub_model_id or os.path.basename(os.path.normpath(
            self.args.output_dir))).split("/")[-1])
        # Trainer deletes old checkpoints (save_total_limit) at the end of its save; we do it only once this one
        # is marked complete, so a crash while saving never leaves no resumable checkpoint behind
        save_total_limit, self.args.save_total_limit = self.args.save_total_limit, None
        try:
            super()._save_checkpoint(model, trial)
        finally:
            self.args.save_total_limit = save_total_limit
        folder = os.path.join(self._get_output_dir(trial=trial), f"{PREFIX_CHECKPOINT_DIR}-{self.state.global_step}")
        buffered = None
        if self._buffered_inputs is not None:
            buffered = [{key: value.cpu() for key, value in part.items()} for part in self._buffered_inputs]
        torch.save({"step": self._step, "buffered_inputs": buffered}, self._sod_state_path(folder))
        self.accelerator.wait_for_everyone()  # every process has written its part ...
        if self.args.should_save:
            mark_complete(folder, self.state.global_step)  # ... then the checkpoint counts (crash safety)
            rotate_checkpoints(output_dir=self._get_output_dir(trial=trial), save_total_limit=save_total_limit,
                               best_model_checkpoint=self.state.best_model_checkpoint, use_mtime=True)

    def _load_sod_state(self, folder: str) -> None:
        path = self._sod_state_path(folder)
        if not os.path.exists(path):
            logger.warning("%s has no SOD state (rollout buffer position); starting a fresh rollout batch.", folder)
            return
        state = torch.load(path, weights_only=False)
        self._step = state["step"]
        buffered = state["buffered_inputs"]
        device = self.accelerator.device
        self._buffered_inputs = None if buffered is None else [
            {key: value.to(device) for key, value in part.items()} for part in buffered]
