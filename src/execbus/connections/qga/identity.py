"""What the handshake learns about the guest, asked over a :class:`QgaStream`.

``guest-info`` says qemu-ga's version and which commands it allows (execbus
needs ``guest-exec`` and ``guest-exec-status``; ``--block-rpcs`` may take
them away), a probe tells whether ``guest-exec`` takes ``cwd``, and the
guest's boot identity (kernel boot id plus qemu-ga's own ``pid@starttime``,
read through ``guest-file-*``) tells a reboot or a restarted qemu-ga from a
mere reconnect. The hostname is informative only.
"""

from __future__ import annotations

import base64
import contextlib
import logging
from dataclasses import dataclass

from execbus.connections.base import AgentInfo
from execbus.connections.qga.stream import QgaCommandError, QgaStream
from execbus.connections.qga.translate import process_identity
from execbus.errors import Unsupported

log = logging.getLogger("execbus.qga")

REQUIRED_COMMANDS = ("guest-exec", "guest-exec-status")
FILE_COMMANDS = frozenset({"guest-file-open", "guest-file-read", "guest-file-close"})
# A path that cannot exist: probing ``cwd`` with it never spawns anything.
CWD_PROBE_PATH = "/nonexistent/execbus-qga-cwd-probe"


@dataclass(frozen=True, slots=True)
class GuestAgent:
    """What ``guest-info`` said: qemu-ga's version and its enabled commands."""

    version: str
    enabled: frozenset[str]


async def guest_info(stream: QgaStream, *, where: str, timeout: float) -> GuestAgent:
    """qemu-ga's version and commands; :class:`Unsupported` without the exec commands."""
    guest = await stream.call("guest-info", timeout=timeout)
    version = str(guest.get("version", "?"))
    enabled = frozenset(
        str(c.get("name"))
        for c in guest.get("supported_commands", [])
        if isinstance(c, dict) and c.get("enabled")
    )
    missing = [c for c in REQUIRED_COMMANDS if c not in enabled]
    if missing:
        raise Unsupported(
            f"qemu-ga {version} at {where} has {', '.join(missing)} disabled or missing "
            "(see its --block-rpcs/--allow-rpcs); execbus needs guest-exec and "
            "guest-exec-status"
        )
    return GuestAgent(version, enabled)


async def probe_cwd(stream: QgaStream, timeout: float) -> bool:
    """Does this qemu-ga's guest-exec take ``cwd``? (Newer versions do.)

    The probe names a path that cannot exist, so it never spawns anything:
    an old qemu-ga rejects the unknown parameter, a new one fails the spawn.
    """
    try:
        await stream.call("guest-exec", {"path": CWD_PROBE_PATH, "cwd": "/"}, timeout=timeout)
    except QgaCommandError as exc:
        return "'cwd'" not in exc.desc
    return True  # pragma: no cover - the probe path never exists


async def agent_info(
    stream: QgaStream,
    guest: GuestAgent,
    *,
    cwd: bool,
    timeout: float,
    fallback_boot_id: str,
    name: str,
) -> AgentInfo:
    """The :class:`AgentInfo` of a checked qemu-ga (``cwd``: what :func:`probe_cwd` found)."""
    caps = {"signal", "timeout", "env"} | ({"cwd"} if cwd else set())
    return AgentInfo(
        boot_id=await boot_identity(
            stream, guest.enabled, timeout=timeout, fallback=fallback_boot_id, name=name
        ),
        version=1,
        agent_version=f"qemu-ga {guest.version}",
        capabilities=frozenset(caps),
        hostname=await hostname(stream, guest.enabled, timeout=timeout),
    )


async def boot_identity(
    stream: QgaStream, enabled: frozenset[str], *, timeout: float, fallback: str, name: str
) -> str:
    """The guest's kernel boot id and qemu-ga's own pid@starttime.

    It changes when the guest reboots or qemu-ga restarts: exactly when
    qemu-ga has forgotten every pid we know. Read through guest-file-*
    (``/proc/self`` is qemu-ga itself); ``fallback`` (a per-connection random
    id) if those are blocked.
    """
    if not FILE_COMMANDS.issubset(enabled):
        return fallback
    try:
        kernel = await read_guest_file(stream, "/proc/sys/kernel/random/boot_id", timeout)
        stat = await read_guest_file(stream, "/proc/self/stat", timeout)
    except QgaCommandError as exc:
        log.info("qemu-ga %s: no boot id (%s); using a random one", name, exc.desc)
        return fallback
    return f"{kernel.decode('ascii', 'replace').strip()}/{process_identity(stat)}"


async def read_guest_file(stream: QgaStream, path: str, timeout: float) -> bytes:
    """The first 4 KiB of a guest file (enough for the small /proc files read here)."""
    handle = await stream.call("guest-file-open", {"path": path}, timeout=timeout)
    try:
        read = await stream.call(
            "guest-file-read", {"handle": handle, "count": 4096}, timeout=timeout
        )
    finally:
        with contextlib.suppress(QgaCommandError):
            await stream.call("guest-file-close", {"handle": handle}, timeout=timeout)
    return base64.b64decode(str(read.get("buf-b64", "")))


async def hostname(stream: QgaStream, enabled: frozenset[str], *, timeout: float) -> str:
    """The guest's hostname ("" when qemu-ga will not say)."""
    if "guest-get-host-name" not in enabled:
        return ""
    try:
        result = await stream.call("guest-get-host-name", timeout=timeout)
    except QgaCommandError:
        return ""
    return str(result.get("host-name", ""))
