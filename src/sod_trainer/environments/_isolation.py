"""Isolation plans: the interpreter's filesystem layout and the bubblewrap arguments built from it.

The sandbox's root is an empty tmpfs with only an allowlist bound into it, read-only: the system
directories (``/usr`` and the ``/bin``, ``/sbin``, ``/lib*`` links or directories), a few files of
``/etc`` the C library and Python read, the interpreter's prefixes, its site-packages and the
directories their ``.pth`` files name (an editable install's ``src``), and
``SandboxConfig.readonly_paths``. Nothing else of the host -- ``/home``, ``/root``, ``/run``,
``/var``, ``/srv``, ``/mnt``, data and output directories -- exists inside.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from typing import Any

from ._cgroup import CgroupSupport
from ._config import SandboxConfig

SYSTEM_DIRS = ("/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32")
# What the dynamic loader, the C library (user and group names, time zone, locale aliases) and
# Python's stdlib (mimetypes) read; no credentials, no host configuration beyond that. They are
# copied into the sandbox's root (``--file``), which costs far less than a bind mount each;
# /etc/alternatives (only links, the targets of some /usr/bin links) is bound.
ETC_FILES = ("/etc/ld.so.cache", "/etc/localtime", "/etc/timezone", "/etc/nsswitch.conf", "/etc/passwd",
             "/etc/group", "/etc/hosts", "/etc/host.conf", "/etc/mime.types", "/etc/locale.alias", "/etc/os-release")
ETC_LINKS = "/etc/alternatives"


@dataclass(frozen=True)
class _Plan:
    level: str  # "bwrap" | "bwrap-userns" | "rlimits"
    python: str
    drop_uid: bool  # run the code as a per-call unprivileged uid (trainer is root)
    bwrap_prefix: tuple[str, ...]  # bwrap options shared by all calls (empty for "rlimits")
    reason: str = ""
    site_paths: tuple[str, ...] = ()  # sys.path entries that `site` would have added
    tmp_binds: tuple[str, ...] = ()  # interpreter paths under /tmp (e.g. a venv), re-exposed over the call's /tmp
    seccomp: bytes | None = None  # the compiled BPF filter (namespaced levels only)
    seccomp_reason: str = ""
    cgroup: CgroupSupport = field(default_factory=lambda: CgroupSupport(None, reason="not requested"))
    visible: tuple[str, ...] = ()  # host paths bound into the sandbox (for the report)
    etc_files: tuple[tuple[str, bytes], ...] = ()  # copied into the sandbox's /etc per call

    @property
    def namespaces(self) -> bool:
        return self.level != "rlimits"

    def describe(self) -> dict[str, Any]:
        return {
            "isolation": self.level,
            "pid_namespace": self.namespaces,
            "network_isolated": self.namespaces,
            "filesystem_readonly": self.namespaces,
            "filesystem_allowlist": self.namespaces,
            "unprivileged_uid": self.drop_uid,
            "seccomp": self.seccomp is not None,
            "cgroup": self.cgroup.version,
            "limits": "cgroup" if self.cgroup.available else "rlimits",
        }


def resolve_python(python: str | None) -> str:
    """The interpreter as an absolute path (a bare name is looked up on PATH); symlinks are kept (a venv's)."""
    python = python or sys.executable
    if not python:
        raise RuntimeError("sys.executable is empty: set SandboxConfig.python_executable to an absolute path.")
    if os.sep not in python:
        found = shutil.which(python)
        if found is None:
            raise RuntimeError(f"SandboxConfig.python_executable={python!r} is not on PATH; give an absolute path.")
        python = found
    python = os.path.abspath(python)
    if not os.access(python, os.X_OK):
        raise RuntimeError(f"SandboxConfig.python_executable={python!r} is not an executable file.")
    return python


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
                with open(os.path.join(site_dir, name), encoding="utf-8") as handle:
                    lines = handle.read().splitlines()
            except (OSError, UnicodeDecodeError):
                continue
            for line in lines:
                line = line.strip()
                if not line or line.startswith(("#", "import ", "import\t")):
                    continue
                entry = os.path.abspath(os.path.join(site_dir, line))
                if os.path.isdir(entry) and entry not in site_paths:
                    site_paths.append(entry)
    for entry in site_paths:  # site-packages and .pth directories outside the prefixes (editable installs)
        paths.add(entry)
        paths.add(os.path.realpath(entry))
    return sorted(paths), site_paths


def _is_within(path: str, parent: str) -> bool:
    return path == parent or path.startswith(parent.rstrip("/") + "/")


def _mkdirs(path: str, made: set[str], args: list[str]) -> None:
    """``--dir`` with mode 0755 for each missing ancestor of ``path`` (bwrap would make them 0700 in places)."""
    parts = []
    current = os.path.dirname(path)
    while current not in ("/", "") and current not in made:
        parts.append(current)
        current = os.path.dirname(current)
    for directory in reversed(parts):
        made.add(directory)
        args += ["--perms", "0755", "--dir", directory]


def _first_link(path: str) -> str | None:
    """The first component of ``path`` that is a symbolic link on the host, if any."""
    current = ""
    for part in path.strip("/").split("/"):
        current += "/" + part
        if os.path.islink(current):
            return current
    return None


def etc_contents() -> tuple[tuple[str, bytes], ...]:
    """(path, content) of the /etc files copied into every sandbox (read once per plan)."""
    found = []
    for path in ETC_FILES:
        real = os.path.realpath(path)
        if os.path.isfile(real):
            try:
                with open(real, "rb") as handle:
                    found.append((path, handle.read()))
            except OSError:
                continue
    return tuple(found)


def _bwrap_prefix(config: SandboxConfig, python: str, as_root: bool,
                  cgroupns: bool = True) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """(bwrap options shared by every call, the host paths they make visible)."""
    args = ["--die-with-parent", "--new-session", "--unshare-pid", "--unshare-net", "--unshare-ipc",
            "--unshare-uts", *(["--unshare-cgroup-try"] if cgroupns else []), "--hostname", "sandbox"]
    if not as_root:
        args.append("--unshare-user")
    bound: list[str] = []
    made: set[str] = set()
    for path in SYSTEM_DIRS:
        if os.path.islink(path):
            args += ["--symlink", os.readlink(path), path]
        elif os.path.isdir(path):
            args += ["--ro-bind", path, path]
            bound.append(path)
    args += ["--perms", "0755", "--dir", "/etc"]
    made.add("/etc")
    if os.path.isdir(ETC_LINKS):  # one bind: cheaper than hundreds of --symlink
        args += ["--ro-bind", ETC_LINKS, ETC_LINKS]
    needed = [p for p in _interpreter_layout(python)[0] if not _is_within(p, "/tmp")]
    extra = [os.path.abspath(p) for p in config.readonly_paths]
    for path in extra:
        if not os.path.exists(path):
            raise FileNotFoundError(f"SandboxConfig.readonly_paths has {path!r}, which does not exist.")
    reals = sorted({os.path.realpath(p) for p in set(needed + extra) if p != "/" or p in extra})
    for real in reals:
        if any(_is_within(real, b) for b in bound) or not os.path.exists(real):
            continue
        _mkdirs(real, made, args)
        args += ["--ro-bind", real, real]
        bound.append(real)
    links: set[str] = set()
    for path in sorted(set(needed + extra)):
        link = _first_link(path)
        if link is None or link in links or any(_is_within(link, b) for b in bound):
            continue
        links.add(link)
        _mkdirs(link, made, args)
        args += ["--symlink", os.path.realpath(link), link]  # e.g. a venv reached through a link
    for path in config.hidden_paths:
        path = os.path.abspath(path)
        if any(_is_within(path, b) for b in bound) and os.path.isdir(path):
            args += ["--tmpfs", path]
    args += ["--dev", "/dev", "--proc", "/proc"]
    return tuple(args), tuple(bound)


def _namespaces_refused(bwrap: str, as_root: bool) -> str:
    """bwrap's message if it cannot create namespaces at all on this machine, else ""."""
    probe = [bwrap, "--unshare-pid", "--unshare-net", "--unshare-ipc", "--unshare-uts"]
    if not as_root:
        probe.append("--unshare-user")
    probe += ["--ro-bind", "/", "/", "--", "/bin/true" if os.path.exists("/bin/true") else "true"]
    try:
        completed = subprocess.run(probe, capture_output=True, text=True, timeout=30, stdin=subprocess.DEVNULL,
                                   env={"PATH": "/usr/bin:/bin"}, cwd="/")
    except (OSError, subprocess.SubprocessError) as error:
        return f"{type(error).__name__}: {error}"
    if completed.returncode == 0:
        return ""
    return (completed.stderr or completed.stdout).strip()[-500:] or f"exit status {completed.returncode}"
