"""Validation of ``start`` arguments into an :class:`ExecSpec`."""

from __future__ import annotations

import math
import re
from dataclasses import field
from typing import Any

from execbus.agent.compat import slots_dataclass
from execbus.agent.errors import INVALID, AgentError

DEFAULT_OUTPUT_LIMIT = 1024 * 1024
DEFAULT_CONSOLE = (80, 24)
MAX_EXEC_ID = 128
# The protocol's exec id rule (the worker's too): ids become file and cgroup names.
_EXEC_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,127}", re.ASCII)
_CONTAINER_ID = re.compile(r"[\w+.-]+", re.ASCII)
# Room left in a frame for the exec state header next to both captures.
_HEADER_ROOM = 1024 * 1024


@slots_dataclass()
class ExecSpec:
    """A validated start request."""

    exec_id: str
    cmd: list[str]
    env: list[tuple[str, str]] = field(default_factory=list)
    working_dir: str = ""
    user: str = ""
    tty: bool = False
    console_size: tuple[int, int] = DEFAULT_CONSOLE  # (width, height)
    stdin: bool = False
    attach_stdout: bool = True
    attach_stderr: bool = True
    stream_output: bool = False
    output_limit: int = DEFAULT_OUTPUT_LIMIT
    timeout: float | None = None
    container_id: str = ""
    privileged: bool = False
    meta: dict[str, Any] = field(default_factory=dict)


def max_output_limit(max_frame: int) -> int:
    """The largest ``output_limit`` whose exit (two captures) fits one frame."""
    return max(0, (max_frame - _HEADER_ROOM) // 2)


def parse_start(req: dict[str, Any], max_frame: int) -> ExecSpec:
    """Check a start request; raises ``AgentError(invalid)`` naming the bad field."""
    limit = _int(req, "output_limit", DEFAULT_OUTPUT_LIMIT)
    if not 0 <= limit <= max_output_limit(max_frame):
        raise _bad(f"output_limit must be between 0 and {max_output_limit(max_frame)}")
    return ExecSpec(
        exec_id=exec_id_of(req),
        cmd=_cmd(req.get("cmd")),
        env=_env(req.get("env")),
        working_dir=_working_dir(req),
        user=_str(req, "user"),
        tty=_bool(req, "tty"),
        console_size=_console_size(req.get("console_size")),
        stdin=_bool(req, "stdin"),
        attach_stdout=_bool(req, "attach_stdout", default=True),
        attach_stderr=_bool(req, "attach_stderr", default=True),
        stream_output=_bool(req, "stream_output"),
        output_limit=limit,
        timeout=_timeout(req.get("timeout")),
        container_id=_container_id(req),
        privileged=_bool(req, "privileged"),
        meta=_meta(req.get("meta")),
    )


def exec_id_of(req: dict[str, Any]) -> str:
    """The request's ``exec_id``: 1-128 letters, digits, ``_`` and ``-``, not starting
    with ``_`` or ``-`` (so it is a safe file name, never a path)."""
    value = req.get("exec_id")
    if not isinstance(value, str) or not valid_exec_id(value):
        raise _bad(
            f"exec_id must be 1 to {MAX_EXEC_ID} letters, digits, '_' or '-', "
            "starting with a letter or digit"
        )
    return value


def valid_exec_id(value: str) -> bool:
    """True when ``value`` follows the protocol's exec id rule."""
    return _EXEC_ID.fullmatch(value) is not None


def _bad(message: str) -> AgentError:
    return AgentError(INVALID, message)


def _str(req: dict[str, Any], key: str) -> str:
    value = req.get(key)
    if value is None:
        return ""
    if not isinstance(value, str) or "\0" in value:
        raise _bad(f"{key} must be a string")
    return value


def _working_dir(req: dict[str, Any]) -> str:
    value = _str(req, "working_dir")
    if value and not value.startswith("/"):
        raise _bad("working_dir must be an absolute path")
    return value


def _container_id(req: dict[str, Any]) -> str:
    value = _str(req, "container_id")
    # runc's own rule for ids; it also keeps an id from being read as an option.
    if value and (not _CONTAINER_ID.fullmatch(value) or value.startswith("-")):
        raise _bad("container_id may only contain letters, digits, '_', '+', '-' and '.'")
    return value


def _bool(req: dict[str, Any], key: str, *, default: bool = False) -> bool:
    value = req.get(key)
    if value is None:
        return default
    if not isinstance(value, bool):
        raise _bad(f"{key} must be true or false")
    return value


def _int(req: dict[str, Any], key: str, default: int) -> int:
    value = req.get(key)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int):
        raise _bad(f"{key} must be an integer")
    return value


def _cmd(value: object) -> list[str]:
    if not isinstance(value, list) or not value:
        raise _bad("cmd must be a non-empty list of strings")
    if not all(isinstance(arg, str) and "\0" not in arg for arg in value):
        raise _bad("cmd must be a list of strings without NUL bytes")
    if not value[0]:
        raise _bad("cmd[0] must not be empty")
    return list(value)


def _env(value: object) -> list[tuple[str, str]]:
    if value is None:
        return []
    if not isinstance(value, list):
        raise _bad("env must be a list of KEY=VALUE strings")
    pairs = []
    for entry in value:
        if not isinstance(entry, str) or "\0" in entry:
            raise _bad("env entries must be strings without NUL bytes")
        key, sep, val = entry.partition("=")
        if not sep or not key:
            # Name the key only: the value may be a secret.
            raise _bad(f"env entry {key[:64]!r} must have the form KEY=VALUE")
        pairs.append((key, val))
    return pairs


def _console_size(value: object) -> tuple[int, int]:
    if value is None:
        return DEFAULT_CONSOLE
    if not isinstance(value, dict):
        raise _bad("console_size must be an object with width and height")
    width, height = value.get("width"), value.get("height")
    return check_size(width, height)


def check_size(width: object, height: object) -> tuple[int, int]:
    """A terminal size: two integers from 1 to 65535."""
    for name, dim in (("width", width), ("height", height)):
        if isinstance(dim, bool) or not isinstance(dim, int) or not 1 <= dim <= 0xFFFF:
            raise _bad(f"{name} must be an integer from 1 to 65535")
    return width, height  # type: ignore[return-value]


def _timeout(value: object) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise _bad("timeout must be a number of seconds")
    if not math.isfinite(value) or value < 0:
        raise _bad("timeout must be a finite number >= 0")
    return float(value) or None


def _meta(value: object) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise _bad("meta must be a JSON object")
    return value
