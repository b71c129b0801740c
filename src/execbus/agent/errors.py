"""Errors the agent answers with (the ``code`` strings of the protocol)."""

from __future__ import annotations

from typing import Any

# Request errors (``ok: false``).
INVALID = "invalid"
NOT_FOUND = "not_found"
CONFLICT = "conflict"
NOT_RUNNING = "not_running"
NOT_TTY = "not_tty"
STDIN_CLOSED = "stdin_closed"
NOT_FINISHED = "not_finished"
FORBIDDEN = "forbidden"
LIMIT_EXCEEDED = "limit_exceeded"
UNSUPPORTED = "unsupported"
INTERNAL = "internal"
# Handshake and framing errors.
HANDSHAKE_REQUIRED = "handshake_required"
UNSUPPORTED_VERSION = "unsupported_version"
UNAUTHORIZED = "unauthorized"
# Start failures (an exec in state ``failed``).
COMMAND_NOT_FOUND = "command_not_found"
COMMAND_NOT_EXECUTABLE = "command_not_executable"
UNKNOWN_USER = "unknown_user"
INVALID_WORKING_DIR = "invalid_working_dir"
CONTAINER_NOT_FOUND = "container_not_found"
CONTAINER_NOT_RUNNING = "container_not_running"
START_FAILED = "start_failed"
AGENT_LOST = "agent_lost"

# Every code, by where it appears. The worker maps each one onto its own
# ``execbus.errors.ErrorCode`` (a test enumerates these groups so the two
# lists cannot drift apart).
REQUEST_ERRORS = (
    INVALID,
    NOT_FOUND,
    CONFLICT,
    NOT_RUNNING,
    NOT_TTY,
    STDIN_CLOSED,
    NOT_FINISHED,
    FORBIDDEN,
    LIMIT_EXCEEDED,
    UNSUPPORTED,
    INTERNAL,
)
HANDSHAKE_ERRORS = (HANDSHAKE_REQUIRED, UNSUPPORTED_VERSION, UNAUTHORIZED)
START_FAILURES = (
    COMMAND_NOT_FOUND,
    COMMAND_NOT_EXECUTABLE,
    UNKNOWN_USER,
    INVALID_WORKING_DIR,
    CONTAINER_NOT_FOUND,
    CONTAINER_NOT_RUNNING,
    START_FAILED,
    AGENT_LOST,
)


class AgentError(Exception):
    """A request failed; answered as ``{"ok": false, "error": {code, message}}``."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message

    def to_wire(self) -> dict[str, Any]:
        """The ``error`` object of an error response."""
        return {"code": self.code, "message": self.message}


class StartFailure(Exception):
    """The process could not be spawned; the exec is kept in state ``failed``."""

    def __init__(self, code: str, message: str, exit_code: int | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.exit_code = exit_code

    def to_wire(self) -> dict[str, Any]:
        """The ``error`` object of a failed exec state."""
        return {"code": self.code, "message": self.message, "exit_code": self.exit_code}


def not_found(message: str) -> StartFailure:
    """The executable does not exist (Docker's exit code 127)."""
    return StartFailure(COMMAND_NOT_FOUND, message, 127)


def not_executable(message: str) -> StartFailure:
    """The executable exists but cannot be run (Docker's exit code 126)."""
    return StartFailure(COMMAND_NOT_EXECUTABLE, message, 126)


def bad_working_dir(message: str) -> StartFailure:
    """The working directory cannot be entered (Docker's exit code 126, as for runc)."""
    return StartFailure(INVALID_WORKING_DIR, message, 126)
