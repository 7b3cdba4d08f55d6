"""The sandbox's seccomp filter: syscalls that tool code has no use for, refused with an error.

Compiled once per process with libseccomp (through ``pyseccomp``, a ctypes binding to
``libseccomp.so.2``) to a BPF program that bubblewrap loads (``--seccomp FD``) right before it
starts the interpreter; every process of the sandbox inherits it and cannot remove it.

Default: allow. Refused with ``EPERM`` (the program sees ``PermissionError``):

* namespaces: ``unshare``/``clone`` with any ``CLONE_NEW*`` flag (a nested user namespace would
  give the code root-like capabilities over fresh network namespaces, raw packet and netfilter
  sockets), ``setns``; ``clone3`` gets ``ENOSYS``, so that the C library falls back to ``clone``,
  whose flags the filter can read;
* keyrings (``add_key``, ``request_key``, ``keyctl``): a key survives the process and is visible to
  a later call under the same uid;
* kernel attack surface that a Python program never needs: ``io_uring_*``, ``perf_event_open``,
  ``bpf``, ``userfaultfd``, ``ptrace``, ``process_vm_readv``/``writev``, ``kcmp``, ``pidfd_getfd``,
  the mount family (``mount``, ``umount2``, ``pivot_root``, ``open_tree``, ``move_mount``, ``fs*``,
  ``mount_setattr``), ``chroot``, ``personality`` (changing the execution domain), module loading,
  ``kexec_*``, ``reboot``, ``swapon``/``swapoff``, ``acct``, ``quotactl``, ``lookup_dcookie``,
  ``name_to_handle_at``/``open_by_handle_at``, ``syslog``, ``vhangup``;
* socket families other than ``AF_UNIX``, ``AF_INET`` and ``AF_INET6`` (``socket``/``socketpair``;
  ``AF_NETLINK``, ``AF_PACKET``, ``AF_VSOCK``, ``AF_ALG``, ...): ``EAFNOSUPPORT``.

Syscalls of another architecture (32-bit ``int 0x80``, x32) kill the process (libseccomp's
default for a foreign architecture). Everything else -- files, threads, ``fork``, pipes,
``mmap``, signals, sockets of the allowed families (inside the empty network namespace) -- works.
"""

from __future__ import annotations

import errno
import os
import threading

_CLONE_NEW_FLAGS = (0x00020000 | 0x02000000 | 0x04000000 | 0x08000000 | 0x10000000 | 0x20000000
                    | 0x40000000 | 0x00000080)  # NEWNS UTS IPC USER PID NET CGROUP TIME
_ALLOWED_FAMILIES = (1, 2, 10)  # AF_UNIX, AF_INET, AF_INET6

DENIED_SYSCALLS = (
    "setns", "add_key", "request_key", "keyctl", "io_uring_setup", "io_uring_enter", "io_uring_register",
    "perf_event_open", "bpf", "userfaultfd", "ptrace", "process_vm_readv", "process_vm_writev", "kcmp",
    "pidfd_getfd", "mount", "umount2", "pivot_root", "open_tree", "move_mount", "fsopen", "fsconfig",
    "fsmount", "fspick", "mount_setattr", "chroot", "personality", "init_module", "finit_module",
    "delete_module", "kexec_load", "kexec_file_load", "reboot", "swapon", "swapoff", "acct", "quotactl",
    "quotactl_fd", "lookup_dcookie", "name_to_handle_at", "open_by_handle_at", "syslog", "vhangup",
)

_lock = threading.Lock()
_compiled: tuple[bytes | None, str] | None = None


def _compile() -> tuple[bytes | None, str]:
    try:
        import pyseccomp as seccomp
    except (ImportError, OSError, AttributeError) as error:  # pyseccomp raises when libseccomp.so.2 is missing
        return None, f"libseccomp is not usable ({type(error).__name__}: {error}); install libseccomp2"
    try:
        rules = seccomp.SyscallFilter(defaction=seccomp.ALLOW)
        refuse = seccomp.ERRNO(errno.EPERM)
        for name in DENIED_SYSCALLS:
            try:
                rules.add_rule(refuse, name)
            except (OSError, ValueError, RuntimeError):
                pass  # not a syscall on this architecture (or unknown to this libseccomp)
        for bit in _bits(_CLONE_NEW_FLAGS):
            for name in ("unshare", "clone"):
                rules.add_rule(refuse, name, seccomp.Arg(0, seccomp.MASKED_EQ, bit, bit))
        try:
            rules.add_rule(seccomp.ERRNO(errno.ENOSYS), "clone3")
        except (OSError, ValueError, RuntimeError):
            pass
        no_family = seccomp.ERRNO(errno.EAFNOSUPPORT)
        for name in ("socket", "socketpair"):
            for low, high in _gaps(_ALLOWED_FAMILIES, 64):
                if low == high:
                    rules.add_rule(no_family, name, seccomp.Arg(0, seccomp.EQ, low))
                elif high == 63:
                    rules.add_rule(no_family, name, seccomp.Arg(0, seccomp.GE, low))
                else:
                    for family in range(low, high + 1):
                        rules.add_rule(no_family, name, seccomp.Arg(0, seccomp.EQ, family))
        read_fd, write_fd = os.pipe()
        try:
            with os.fdopen(write_fd, "wb", closefd=True) as sink:
                rules.export_bpf(sink)
            chunks = []
            while True:
                chunk = os.read(read_fd, 1 << 16)
                if not chunk:
                    break
                chunks.append(chunk)
        finally:
            os.close(read_fd)
        return b"".join(chunks), ""
    except Exception as error:  # noqa: BLE001 - reported as the reason the filter is off
        return None, f"libseccomp could not build the filter ({type(error).__name__}: {error})"


def _bits(mask: int) -> list[int]:
    return [1 << i for i in range(64) if mask >> i & 1]


def _gaps(allowed: tuple[int, ...], limit: int) -> list[tuple[int, int]]:
    """Inclusive ranges of 0..limit-1 not in ``allowed``."""
    gaps, start = [], 0
    for value in sorted(allowed):
        if value > start:
            gaps.append((start, value - 1))
        start = value + 1
    if start < limit:
        gaps.append((start, limit - 1))
    return gaps


def seccomp_program() -> tuple[bytes | None, str]:
    """(the compiled BPF program, "") or (None, why there is none). Built once per process."""
    global _compiled
    with _lock:
        if _compiled is None:
            _compiled = _compile()
        return _compiled
