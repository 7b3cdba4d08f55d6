"""Isolation plans: the interpreter's filesystem layout and the bubblewrap arguments built from it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass
from typing import Any

from ._config import SandboxConfig

@dataclass(frozen=True)
class _Plan:
    level: str  # "bwrap" | "bwrap-userns" | "rlimits"
    python: str
    drop_uid: bool  # run the code as a per-call unprivileged uid (trainer is root)
    bwrap_prefix: tuple[str, ...]  # bwrap options shared by all calls (empty for "rlimits")
    reason: str = ""
    site_paths: tuple[str, ...] = ()  # sys.path entries that `site` would have added
    tmp_binds: tuple[str, ...] = ()  # interpreter paths under /tmp (e.g. a venv), re-exposed over the call's /tmp

    @property
    def namespaces(self) -> bool:
        return self.level != "rlimits"

    def describe(self) -> dict[str, Any]:
        return {
            "isolation": self.level,
            "pid_namespace": self.namespaces,
            "network_isolated": self.namespaces,
            "filesystem_readonly": self.namespaces,
            "unprivileged_uid": self.drop_uid,
        }


def _interpreter_layout(python: str) -> tuple[list[str], list[str]]:
    """(directories the interpreter needs, its site-packages path entries).

    The sandbox starts Python with ``-S`` (no ``site``: ~8 ms less per call), so the bootstrap puts
    site-packages and the directories listed in its ``.pth`` files on ``sys.path`` itself; the
    ``import`` lines of ``.pth`` files are not run.
    """
    if os.path.realpath(python) == os.path.realpath(sys.executable):
        import site

        prefixes = [sys.prefix, sys.base_prefix, sys.exec_prefix, sys.base_exec_prefix]
        site_dirs = site.getsitepackages()
    else:
        query = ("import sys, site, json; print(json.dumps([[sys.prefix, sys.base_prefix, sys.exec_prefix, "
                 "sys.base_exec_prefix], site.getsitepackages()]))")
        completed = subprocess.run([python, "-I", "-c", query], capture_output=True, text=True, timeout=30,
                                   env={"PATH": "/usr/bin:/bin"}, stdin=subprocess.DEVNULL)
        if completed.returncode != 0:
            raise RuntimeError(f"Cannot run the sandbox interpreter {python!r}: {completed.stderr.strip()[-500:]}")
        prefixes, site_dirs = json.loads(completed.stdout)
    paths = set()
    for path in [*prefixes, os.path.dirname(python)]:
        paths.add(os.path.abspath(path))
        paths.add(os.path.realpath(path))
    paths.add(os.path.dirname(os.path.realpath(python)))
    site_paths: list[str] = []
    for site_dir in site_dirs:
        if not os.path.isdir(site_dir) or site_dir in site_paths:
            continue
        site_paths.append(site_dir)
        for name in sorted(os.listdir(site_dir)):
            if not name.endswith(".pth"):
                continue
            try:
                lines = open(os.path.join(site_dir, name), encoding="utf-8").read().splitlines()
            except (OSError, UnicodeDecodeError):
                continue
            for line in lines:
                line = line.strip()
                if not line or line.startswith(("#", "import ", "import\t")):
                    continue
                entry = os.path.abspath(os.path.join(site_dir, line))
                if os.path.isdir(entry) and entry not in site_paths:
                    site_paths.append(entry)
    return sorted(paths), site_paths


def _is_within(path: str, parent: str) -> bool:
    return path == parent or path.startswith(parent.rstrip("/") + "/")


def _bwrap_prefix(config: SandboxConfig, python: str, as_root: bool) -> tuple[str, ...]:
    args = ["--die-with-parent", "--new-session", "--unshare-pid", "--unshare-net", "--unshare-ipc",
            "--unshare-uts", "--unshare-cgroup-try", "--hostname", "sandbox"]
    if not as_root:
        args.append("--unshare-user")
    args += ["--ro-bind", "/", "/", "--dev", "/dev", "--proc", "/proc"]
    hidden = []
    home = os.path.realpath(os.path.expanduser("~"))
    for path in (home, *config.hidden_paths):
        path = os.path.realpath(path)
        if path != "/" and os.path.isdir(path) and path not in hidden:
            hidden.append(path)
    for path in hidden:
        args += ["--tmpfs", path]
    needed = _interpreter_layout(python)[0]
    made_dirs: set[str] = set()
    bound: list[str] = []
    for path in sorted(needed):
        mask = next((h for h in hidden if _is_within(path, h) and path != h), None)
        if (mask is None and path not in hidden) or any(_is_within(path, b) for b in bound):
            continue
        bound.append(path)
        if mask is not None:
            # Directories that bwrap would create on its own get mode 0700, unreadable once we drop
            # privileges: create the ones between the mask and the interpreter path as 0755.
            relative = os.path.relpath(os.path.dirname(path), mask)
            current = mask
            for part in ([] if relative == "." else relative.split(os.sep)):
                current = os.path.join(current, part)
                if current not in made_dirs:
                    made_dirs.add(current)
                    args += ["--perms", "0755", "--dir", current]
        args += ["--ro-bind", path, path]
    return tuple(args)
