"""The OCI process of a ``runc exec``: the container's own ``process``, overridden.

:func:`build_process` takes the ``process`` section of the container's
``config.json`` (so capabilities, rlimits, AppArmor, SELinux and
no-new-privileges stay exactly the container's, as with a plain ``runc
exec``) and applies the request: args, env (the requested user's ``HOME``,
then the request's variables), working directory, user and groups, terminal
and console size. ``privileged`` grants every capability the agent itself
holds (its bounding set), by name from :data:`CAPABILITIES`.
"""

from __future__ import annotations

import copy
from typing import Any

from execbus.agent.execspec import ExecSpec
from execbus.agent.spawn import DEFAULT_PATH
from execbus.agent.users import ResolvedUser

# Capability names by number (linux/capability.h), up to CAP_CHECKPOINT_RESTORE (40).
CAPABILITIES = (
    "CAP_CHOWN",
    "CAP_DAC_OVERRIDE",
    "CAP_DAC_READ_SEARCH",
    "CAP_FOWNER",
    "CAP_FSETID",
    "CAP_KILL",
    "CAP_SETGID",
    "CAP_SETUID",
    "CAP_SETPCAP",
    "CAP_LINUX_IMMUTABLE",
    "CAP_NET_BIND_SERVICE",
    "CAP_NET_BROADCAST",
    "CAP_NET_ADMIN",
    "CAP_NET_RAW",
    "CAP_IPC_LOCK",
    "CAP_IPC_OWNER",
    "CAP_SYS_MODULE",
    "CAP_SYS_RAWIO",
    "CAP_SYS_CHROOT",
    "CAP_SYS_PTRACE",
    "CAP_SYS_PACCT",
    "CAP_SYS_ADMIN",
    "CAP_SYS_BOOT",
    "CAP_SYS_NICE",
    "CAP_SYS_RESOURCE",
    "CAP_SYS_TIME",
    "CAP_SYS_TTY_CONFIG",
    "CAP_MKNOD",
    "CAP_LEASE",
    "CAP_AUDIT_WRITE",
    "CAP_AUDIT_CONTROL",
    "CAP_SETFCAP",
    "CAP_MAC_OVERRIDE",
    "CAP_MAC_ADMIN",
    "CAP_SYSLOG",
    "CAP_WAKE_ALARM",
    "CAP_BLOCK_SUSPEND",
    "CAP_AUDIT_READ",
    "CAP_PERFMON",
    "CAP_BPF",
    "CAP_CHECKPOINT_RESTORE",
)


def build_process(
    base: dict[str, Any], spec: ExecSpec, user: ResolvedUser | None
) -> dict[str, Any]:
    """The OCI process for ``runc exec --process``: the container's, overridden."""
    process: dict[str, Any] = copy.deepcopy(base)
    process["args"] = spec.cmd
    process["terminal"] = spec.tty
    process.pop("consoleSize", None)
    if spec.tty:
        width, height = spec.console_size
        process["consoleSize"] = {"width": width, "height": height}
    process["cwd"] = spec.working_dir or process.get("cwd") or "/"
    process["env"] = _env(process.get("env") or [], spec, user)
    if user is not None:
        ids = {"uid": user.uid, "gid": user.gid, "additionalGids": list(user.groups)}
        process["user"] = {**(process.get("user") or {}), **ids}
    if spec.privileged:
        process["capabilities"] = _all_capabilities(process.get("capabilities") or {})
    return process


def _env(base: list[str], spec: ExecSpec, user: ResolvedUser | None) -> list[str]:
    """The container's env, HOME of the requested user, then the request's env."""
    env = dict(entry.partition("=")[::2] for entry in base)
    if user is not None:
        env["HOME"] = user.home
    env.update(spec.env)
    env.setdefault("PATH", DEFAULT_PATH)
    if spec.tty:
        env.setdefault("TERM", "xterm")
    return [f"{k}={v}" for k, v in env.items()]


def _all_capabilities(current: dict[str, Any]) -> dict[str, Any]:
    """Every capability the agent itself may grant (its own bounding set)."""
    bounding = _own_bounding_set()
    every = [name for bit, name in enumerate(CAPABILITIES) if bounding >> bit & 1]
    return {**current, "bounding": every, "effective": every, "permitted": every}


def _own_bounding_set() -> int:
    # runc cannot hand out a capability the agent lacks (a sandbox may drop some).
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("CapBnd:"):
                    return int(line.split()[1], 16)
    except (OSError, ValueError):
        pass
    return (1 << len(CAPABILITIES)) - 1
