"""Crash safety (issue 16, item 2): a run killed with SIGKILL mid-step, or while writing a checkpoint, resumes
from the last complete checkpoint and ends exactly where an uninterrupted run ends."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from sod_trainer.checkpoints import COMPLETE_MARKER, is_resumable, last_complete_checkpoint, set_aside_incomplete

SCRIPT = Path(__file__).with_name("crash_script.py")


def _run(output_dir, *flags, result=None, expect_kill=False):
    command = [sys.executable, str(SCRIPT), str(output_dir), *flags] + (["--result", str(result)] if result else [])
    completed = subprocess.run(command, capture_output=True, text=True, timeout=600)
    if expect_kill:
        assert completed.returncode == -signal.SIGKILL, completed.stderr[-3000:]
    else:
        assert completed.returncode == 0, completed.stderr[-3000:]
    return torch.load(result, weights_only=False) if result else None


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    root = tmp_path_factory.mktemp("uninterrupted")
    return _run(root / "run", result=root / "result.pt")


def _same(first, second):
    assert first["params"].keys() == second["params"].keys()
    for key, value in first["params"].items():
        assert torch.equal(value, second["params"][key]), key  # exact: tolerance 0 on CPU


@pytest.mark.slow
def test_sigkill_mid_step_resumes_from_the_last_checkpoint_identically(uninterrupted, tmp_path):
    _run(tmp_path, "--kill-mid-step", "3", expect_kill=True)
    assert sorted(p.name for p in tmp_path.glob("checkpoint-*")) == ["checkpoint-1", "checkpoint-2"]
    resumed = _run(tmp_path, "--resume", result=tmp_path / "result.pt")
    assert resumed["resumed_from"] == "checkpoint-2"
    _same(resumed, uninterrupted)
    assert resumed["losses"] == uninterrupted["losses"] and len(resumed["losses"]) == 4  # history restored, 3-4 equal


@pytest.mark.slow
def test_sigkill_while_writing_a_checkpoint_resumes_from_the_last_complete_one(uninterrupted, tmp_path):
    _run(tmp_path, "--kill-while-saving", "3", expect_kill=True)
    partial = tmp_path / "checkpoint-3"
    assert partial.is_dir() and not (partial / COMPLETE_MARKER).exists()  # killed half-way through
    assert (tmp_path / "checkpoint-2" / COMPLETE_MARKER).is_file()
    resumed = _run(tmp_path, "--resume", result=tmp_path / "result.pt")
    assert resumed["resumed_from"] == "checkpoint-2"
    _same(resumed, uninterrupted)
    assert (tmp_path / "incomplete-checkpoint-3").is_dir()  # set aside, kept for inspection
    assert (tmp_path / "checkpoint-3" / COMPLETE_MARKER).is_file()  # written again, completely


def _fake_checkpoint(folder: Path, complete: bool, state: bool = True) -> Path:
    folder.mkdir(parents=True)
    (folder / "model.safetensors").write_bytes(b"x")
    if state:
        (folder / "trainer_state.json").write_text(json.dumps({"global_step": 1}))
    if complete:
        (folder / COMPLETE_MARKER).write_text("{}")
    return folder


def test_the_newest_complete_checkpoint_is_chosen_and_partial_ones_set_aside(tmp_path):
    _fake_checkpoint(tmp_path / "checkpoint-2", complete=True)
    _fake_checkpoint(tmp_path / "checkpoint-10", complete=True)
    partial = _fake_checkpoint(tmp_path / "checkpoint-12", complete=False, state=True)  # killed before the marker
    assert last_complete_checkpoint(str(tmp_path)) == str(tmp_path / "checkpoint-10")  # not 12, and 10 > 2
    assert not is_resumable(str(partial))
    moved = set_aside_incomplete(str(tmp_path), str(tmp_path / "checkpoint-10"))
    assert moved == [str(tmp_path / "incomplete-checkpoint-12")] and not partial.exists()


def test_checkpoints_from_before_markers_count_when_their_trainer_state_is_there(tmp_path):
    _fake_checkpoint(tmp_path / "checkpoint-1", complete=False, state=True)
    _fake_checkpoint(tmp_path / "checkpoint-2", complete=False, state=False)
    assert last_complete_checkpoint(str(tmp_path)) == str(tmp_path / "checkpoint-1")


def test_resuming_from_an_incomplete_checkpoint_by_path_is_refused(tokenizer, tmp_path):
    from test_reliability import build

    _fake_checkpoint(tmp_path / "checkpoint-1", complete=True)
    _fake_checkpoint(tmp_path / "checkpoint-2", complete=False)
    trainer = build(tokenizer, tmp_path, max_steps=1)
    with pytest.raises(ValueError, match=r"checkpoint-2 was not completely written.*resume_from_checkpoint=True"):
        trainer.train(resume_from_checkpoint=str(tmp_path / "checkpoint-2"))


def test_every_saved_checkpoint_is_marked_complete_and_rotation_waits_for_it(tokenizer, tmp_path):
    from test_reliability import build

    trainer = build(tokenizer, tmp_path, max_steps=3, save_strategy="steps", save_steps=1, save_total_limit=2)
    trainer.train()
    names = sorted(p.name for p in tmp_path.glob("checkpoint-*"))
    assert names == ["checkpoint-2", "checkpoint-3"]
    assert all((tmp_path / name / COMPLETE_MARKER).is_file() for name in names)
    assert os.path.isfile(tmp_path / "checkpoint-3" / "sod_state_0.pt")
