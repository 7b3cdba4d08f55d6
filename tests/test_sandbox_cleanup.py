"""Clean-up that the sandboxed code cannot break (issue 15): removal without recursion, the uid slot
released whatever happens, failures logged and counted, leftovers of a crashed trainer removed."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

import pytest

from sod_trainer.environments import _cgroup, _cleanup, _process
from sod_trainer.environments import sandbox as sandbox_module
from sod_trainer.environments._cleanup import WORKDIR_PREFIX, cleanup_failures, owner_tag, remove_tree
from sod_trainer.environments.sandbox import PythonSandbox, SandboxConfig, _plan_for


def _deep_tree(root: str, depth: int, name: str = "d" * 200) -> None:
    """``depth`` nested directories (a path far beyond PATH_MAX), a file in each, the last one mode 000."""
    os.makedirs(root)
    fd = os.open(root, os.O_RDONLY)
    for _ in range(depth):
        os.mkdir(name, dir_fd=fd)
        with open(os.open("f", os.O_WRONLY | os.O_CREAT, 0o600, dir_fd=fd), "w") as handle:
            handle.write("x")
        child = os.open(name, os.O_RDONLY, dir_fd=fd)
        os.close(fd)
        fd = child
    os.chmod(f"/proc/self/fd/{fd}", 0)
    os.close(fd)


def test_remove_tree_survives_depth_width_long_paths_and_unreadable_directories(tmp_path):
    root = str(tmp_path / "tree")
    _deep_tree(root, 1500)
    for i in range(2000):
        os.mkdir(os.path.join(root, f"w{i}"))
    os.symlink("/etc", os.path.join(root, "w0", "link"))  # removed as a link, never followed
    with pytest.raises(RecursionError):
        shutil.rmtree(root)  # what the clean-up used before: it raised out of run_code
    assert remove_tree(root) and not os.path.exists(root)
    assert os.path.isdir("/etc")


def test_removal_failure_is_logged_and_counted_never_raised(tmp_path, monkeypatch, caplog):
    root = tmp_path / "stuck"
    root.mkdir()
    monkeypatch.setattr(_cleanup, "_remove_tree_fd", lambda path: (_ for _ in ()).throw(OSError(16, "busy")))
    monkeypatch.setattr(_cleanup.subprocess, "run", lambda *a, **k: None)  # rm -rf cannot help either
    before = int(cleanup_failures)
    assert remove_tree(str(root)) is False
    assert int(cleanup_failures) == before + 1 and "could not remove" in caplog.text


def test_uid_slot_is_released_even_if_clean_up_fails(temp_root, monkeypatch):
    config = SandboxConfig(timeout_s=5.0, temp_root=str(temp_root))
    if not _plan_for(config).drop_uid:
        pytest.skip("per-call uids only as root")
    free = len(_process._uid_pool._free)

    def broken(*args, **kwargs):
        raise RuntimeError("clean-up broke")

    monkeypatch.setattr(_process, "remove_tree", broken)
    if _plan_for(config).cgroup.available:
        monkeypatch.setattr(_cgroup.CallGroup, "remove", broken)
    with pytest.raises(RuntimeError, match="clean-up broke"):
        PythonSandbox(config).run("1")
    assert len(_process._uid_pool._free) == free


def test_stale_work_dir_of_a_crashed_trainer_is_removed_at_the_next_start(temp_root, monkeypatch):
    crashed = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    dead_tag = f"{crashed.stdout.strip()}-1"
    stale = temp_root / f"{WORKDIR_PREFIX}{dead_tag}_abc123"
    _deep_tree(str(stale), 1200)
    alive = temp_root / f"{WORKDIR_PREFIX}{owner_tag()}_def456"  # a live trainer's: kept
    alive.mkdir()
    foreign = temp_root / "sod_sandbox_unrelated"  # not in our naming scheme: kept
    foreign.mkdir()
    monkeypatch.setattr(sandbox_module, "_plans", {})
    assert PythonSandbox(SandboxConfig(timeout_s=5.0, temp_root=str(temp_root))).run("6 * 7").stdout == "42\n"
    assert sorted(p.name for p in temp_root.iterdir()) == sorted([alive.name, foreign.name])


def test_stale_cgroup_of_a_crashed_trainer_is_removed(tmp_path):
    # the same sweep the trainer runs on its cgroup parent at start-up, on a plain directory tree
    base = tmp_path / "cgroup"
    (base / f"{_cgroup.GROUP_PREFIX}999999999-1" / "call-3").mkdir(parents=True)
    (base / f"{_cgroup.GROUP_PREFIX}{owner_tag()}" / "call-0").mkdir(parents=True)
    assert _cgroup.sweep_stale_groups(str(base)) == 1
    assert [p.name for p in base.iterdir()] == [f"{_cgroup.GROUP_PREFIX}{owner_tag()}"]
