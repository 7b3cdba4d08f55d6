"""Clean-up that the sandboxed code cannot break (issue 15): removal without recursion, the uid slot
released whatever happens, failures logged and counted, leftovers of a crashed trainer removed; and the
cgroup v2 set-up's decisions on a directory tree shaped like one (this machine has cgroup v1)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

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


def _fake_cgroup2(tmp_path, monkeypatch, members: str, controllers: str = "cpu memory pids"):
    """A directory tree shaped like a cgroup v2 mount whose group ``/job`` refuses controllers for its
    children while it holds processes (EBUSY, as the kernel does)."""
    mount = tmp_path / "cgroup2"
    own = mount / "job"
    own.mkdir(parents=True)
    (own / "cgroup.controllers").write_text(controllers + "\n")
    (own / "cgroup.procs").write_text(members)
    monkeypatch.setattr(_cgroup, "_cgroup2_mount", lambda: str(mount))
    real_write = _cgroup._write
    state = {"moved": False}

    def write(path, value):
        if path == str(own / "cgroup.subtree_control") and not state["moved"]:
            raise OSError(16, "Device or resource busy")
        if path.endswith("cgroup.procs") and value == "0":
            state["moved"] = True
        real_write(path, value)

    monkeypatch.setattr(_cgroup, "_write", write)
    return own


def test_cgroup_v2_trainer_alone_moves_into_a_leaf_and_gives_up_the_cgroup_namespace(tmp_path, monkeypatch):
    own = _fake_cgroup2(tmp_path, monkeypatch, members=f"{os.getpid()}\n")
    found = _cgroup._detect_v2("/job", owner_tag())
    assert found.version == "v2" and found.parents == (str(own / f"{_cgroup.GROUP_PREFIX}{owner_tag()}"),)
    assert (own / f"sod-trainer-{owner_tag()}" / "cgroup.procs").read_text() == "0"  # the trainer moved
    assert (own / "cgroup.subtree_control").read_text() == "+memory +pids"
    assert (Path(found.parents[0]) / "cgroup.subtree_control").read_text() == "+memory +pids"
    # sandboxes' groups are siblings of the trainer's leaf: a cgroup namespace rooted there could not join them
    assert found.cgroupns is False


def test_cgroup_v2_shared_with_other_processes_says_why_and_how(tmp_path, monkeypatch):
    _fake_cgroup2(tmp_path, monkeypatch, members=f"{os.getpid()}\n1\n")
    found = _cgroup._detect_v2("/job", owner_tag())
    assert not found.available and "holds other processes" in found.reason and "Delegate=yes" in found.reason
    _fake_cgroup2(tmp_path / "b", monkeypatch, members="", controllers="cpu io")
    found = _cgroup._detect_v2("/job", owner_tag())
    assert not found.available and "memory/pids controller" in found.reason
