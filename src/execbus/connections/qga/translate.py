"""Command translation: an exec as ``guest-exec`` arguments, and its answers as results.

Pure functions and values, no I/O: what qemu-ga cannot run
(:func:`unsupported_reason`), the ``guest-exec`` arguments of an exec, a
refused spawn as a start failure with Docker's 126/127 conventions, and a
``guest-exec-status`` answer decoded into an :class:`ExitInfo` (captures
capped, dropped bytes counted) and, for ``stream_output``, output chunks.
Also the identities qemu-ga's handshake compares: ``pid@starttime`` and why
it changed.
"""

from __future__ import annotations

import base64
import binascii
from dataclasses import dataclass
from typing import Any

from execbus.agent.procs import split_stat, stat_start_time
from execbus.agent.signames import signal_name
from execbus.agent.spawn import DEFAULT_PATH
from execbus.errors import AgentProtocolError, ErrorCode
from execbus.registry.records import utc
from execbus.wire.config import ExecConfig
from execbus.wire.records import ErrorInfo, ExitInfo

# qemu-ga's JSON lexer refuses tokens over 64 MiB; stay well below with base64.
MAX_INPUT_DATA = 16 * 1024 * 1024
OUTPUT_CHUNK = 64 * 1024  # emulated output chunks, as large as the execbus agent's

# One emulated output chunk: (stream, seq, data).
Chunk = tuple[str, int, bytes]


def unsupported_reason(config: ExecConfig) -> str | None:
    """Why qemu-ga cannot run ``config`` (``None``: it can; ``working_dir`` is probed)."""
    if config.tty:
        return "qemu-ga cannot allocate a TTY"
    if config.attach_stdin:
        return (
            "qemu-ga cannot stream stdin: guest-exec takes the whole input up front "
            "(attach_stdin is unsupported)"
        )
    if config.container_id:
        return "qemu-ga execs only in the guest itself (container_id must be empty)"
    if config.user is not None:
        return "qemu-ga cannot switch users: commands run as qemu-ga's own user"
    if config.privileged:
        return "qemu-ga cannot run privileged execs: commands get qemu-ga's own privileges"
    return None


def exec_environment(env: list[str]) -> list[str]:
    """The complete environment of an exec: a default PATH plus the configured entries.

    qemu-ga replaces the whole environment when ``env`` is given (and inherits
    its own otherwise), so execs always get a clean one, as with the execbus
    agent (whose default PATH this is).
    """
    if any(entry.startswith("PATH=") for entry in env):
        return list(env)
    return [f"PATH={DEFAULT_PATH}", *env]


def guest_exec_args(config: ExecConfig, input_data: bytes | None) -> dict[str, Any]:
    """The ``guest-exec`` arguments for an exec.

    ``input-data`` is always sent, empty if need be: stdin is then a pipe at
    end of file, never whatever qemu-ga's own stdin happens to be.
    """
    args: dict[str, Any] = {
        "path": config.cmd[0],
        "arg": config.cmd[1:],
        "env": exec_environment(config.env),
        "input-data": base64.b64encode(input_data or b"").decode("ascii"),
        "capture-output": True,
    }
    if config.working_dir is not None:
        args["cwd"] = config.working_dir
    return args


def start_failure(desc: str) -> ErrorInfo:
    """A ``guest-exec`` error as a failed start, with Docker's 126/127 conventions.

    glib (which qemu-ga spawns with) words these as ``Failed to execute child
    process "x" (No such file or directory)`` / ``(Permission denied)``.
    """
    message = f"qemu-ga: {desc}"[:4096]
    if "Failed to execute child process" in desc:
        if "(No such file or directory)" in desc:
            return ErrorInfo(code=ErrorCode.COMMAND_NOT_FOUND, message=message, exit_code=127)
        if "(Permission denied)" in desc:
            return ErrorInfo(code=ErrorCode.COMMAND_NOT_EXECUTABLE, message=message, exit_code=126)
    return ErrorInfo(code=ErrorCode.START_FAILED, message=message)


@dataclass(frozen=True, slots=True)
class Streams:
    """What qemu-ga captured of an exec, decoded (at most 16 MiB per stream)."""

    stdout: bytes
    stderr: bytes
    stdout_truncated: bool
    stderr_truncated: bool

    @classmethod
    def from_status(cls, status: dict[str, Any]) -> Streams:
        return cls(
            decode_output(status.get("out-data")),
            decode_output(status.get("err-data")),
            bool(status.get("out-truncated")),
            bool(status.get("err-truncated")),
        )


def decode_output(encoded: object) -> bytes:
    """A base64 capture (absent: empty); anything else is :class:`AgentProtocolError`."""
    try:
        return base64.b64decode(encoded if isinstance(encoded, str) else "", validate=True)
    except (binascii.Error, ValueError) as exc:
        raise AgentProtocolError("qemu-ga sent output that is not valid base64") from exc


def capped(data: bytes, truncated: bool, limit: int, attached: bool) -> tuple[bytes, int]:
    """One stream capped at ``limit``; the rest counts as dropped.

    qemu-ga itself stops capturing at 16 MiB and only says ``truncated``:
    how much it threw away is unknown, so that adds 1 to the dropped count.
    """
    if not attached:
        return b"", 0
    dropped = max(0, len(data) - limit) + (1 if truncated else 0)
    return data[:limit], dropped


def exit_from_status(
    status: dict[str, Any],
    streams: Streams,
    config: ExecConfig,
    *,
    started_at: float | None,
    finished_at: float,
    timed_out: bool = False,
) -> ExitInfo:
    """An :class:`ExitInfo` from a ``guest-exec-status`` answer with ``exited: true``."""
    limit = config.output_limit
    stdout, stdout_dropped = capped(
        streams.stdout, streams.stdout_truncated, limit, config.attach_stdout
    )
    stderr, stderr_dropped = capped(
        streams.stderr, streams.stderr_truncated, limit, config.attach_stderr
    )
    signum = status.get("signal")
    if isinstance(signum, int) and signum > 0:
        exit_code, sig = min(128 + signum, 255), signal_name(signum)
    else:
        code = status.get("exitcode", 0)
        exit_code, sig = (code if isinstance(code, int) and 0 <= code <= 255 else 255), None
    return ExitInfo(
        exit_code=exit_code,
        signal=sig,
        timed_out=timed_out,
        started_at=utc(started_at),
        finished_at=utc(finished_at),
        stdout=stdout,
        stderr=stderr,
        stdout_dropped=stdout_dropped,
        stderr_dropped=stderr_dropped,
    )


def output_chunks(config: ExecConfig, streams: Streams) -> list[Chunk]:
    """``stream_output`` emulated at exit: the attached captures as (stream, seq, chunk)."""
    chunks: list[Chunk] = []
    for name, data, attached in (
        ("stdout", streams.stdout, config.attach_stdout),
        ("stderr", streams.stderr, config.attach_stderr),
    ):
        if attached:
            pieces = (data[i : i + OUTPUT_CHUNK] for i in range(0, len(data), OUTPUT_CHUNK))
            chunks.extend((name, seq, piece) for seq, piece in enumerate(pieces))
    return chunks


def process_identity(stat: bytes) -> str:
    """``pid@starttime`` from a ``/proc/<pid>/stat`` line: one process, one boot."""
    pid = stat.split(b" ", 1)[0].decode("ascii", "replace")
    return f"{pid}@{stat_start_time(split_stat(stat)) or '?'}"


def restart_cause(old: str, new: str) -> str:
    """Why the agent identity changed: the kernel boot id part tells a reboot apart."""
    if old.partition("/")[0] != new.partition("/")[0]:
        return f"the guest rebooted (boot {old} -> {new})"
    return f"qemu-ga restarted (instance {old} -> {new})"
