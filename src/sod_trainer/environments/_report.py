"""What isolation the sandbox gives on this machine, and why: for ``sod env`` and bug reports."""

from __future__ import annotations

import os

from ._config import SandboxConfig


def isolation_report(config: SandboxConfig | None = None) -> dict[str, str]:
    """One line per layer (namespaces, filesystem, seccomp, limits, uid), each with the reason when it is off.

    Probes the sandbox like the trainer's first tool call would (a second or two); never raises: a
    configuration the trainer would refuse is reported as the error it would raise.
    """
    from .sandbox import _plan_for

    config = config or SandboxConfig()
    try:
        plan = _plan_for(config)
    except Exception as error:  # noqa: BLE001 - the report shows what the trainer would raise
        return {"Sandbox": f"ERROR -- the trainer would refuse to start: {type(error).__name__}: {error}"}
    report = {"Sandbox isolation": plan.level + ("" if plan.namespaces else f" (NOT ISOLATED: {plan.reason})")}
    if plan.namespaces:
        report["Sandbox namespaces"] = ("pid, net, ipc, uts, mount, cgroup"
                                        + (", user" if plan.level == "bwrap-userns" else ""))
        etc = ", ".join(os.path.basename(path) for path, _ in plan.etc_files)
        report["Sandbox filesystem"] = ("allowlist, read-only: " + ", ".join(plan.visible)
                                        + f", /etc/alternatives, copies of /etc/{{{etc}}}"
                                        + f"; private /tmp of {config.workdir_mb} MiB")
    else:
        report["Sandbox filesystem"] = "the host's, with the uid's own rights"
    report["Sandbox seccomp"] = "on" if plan.seccomp is not None else f"off ({plan.seccomp_reason})"
    if plan.cgroup.available:
        report["Sandbox limits"] = (f"cgroup {plan.cgroup.version} per call: memory_mb={config.memory_mb} and "
                                    f"max_processes={config.max_processes} for the whole sandbox; rlimits per process")
    else:
        report["Sandbox limits"] = f"rlimits per process only (no cgroup: {plan.cgroup.reason})"
    if plan.drop_uid:
        report["Sandbox uid"] = f"a per-call unprivileged uid from {config.sandbox_uid_base}"
    elif plan.level == "bwrap-userns":
        report["Sandbox uid"] = f"the trainer's ({os.geteuid()}), inside a user namespace of its own"
    else:
        report["Sandbox uid"] = f"the trainer's own ({os.geteuid()})"
    return report
