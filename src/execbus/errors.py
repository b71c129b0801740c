"""The execbus exception tree.

Every error execbus raises derives from :class:`ExecbusError`. Errors that
travel on the wire carry a stable machine ``code`` (see :class:`ErrorCode`);
:func:`error_for_code` turns a reply's error back into the matching class, so
a client catches the same exception the worker raised.

::

    ExecbusError
    ├── ConfigError                 bad settings or command-line configuration
    ├── InvalidRequest      invalid         a request that fails validation
    ├── NotFound            not_found       unknown exec id
    ├── Conflict            conflict        state does not allow it (second start, ...)
    ├── Forbidden           forbidden       the caller's policy denies it
    ├── Unsupported         unsupported     the agent kind cannot do it (qemu-ga TTY, ...)
    ├── LimitExceeded       limit_exceeded  registry full, too many execs, too large
    ├── ExecTimeout         timeout         waiting for a result took too long
    ├── UnknownAgent        unknown_agent   no worker serves the agent or pool
    ├── StartFailed         start_failed    the process could not be spawned
    │   ├── CommandNotFound        command_not_found       (exit code 127)
    │   ├── CommandNotExecutable   command_not_executable  (exit code 126)
    │   ├── UnknownUser            unknown_user
    │   ├── InvalidWorkingDir      invalid_working_dir     (exit code 126)
    │   ├── ContainerNotFound      container_not_found
    │   └── ContainerNotRunning    container_not_running
    ├── AgentError                          talking to a guest agent went wrong
    │   ├── AgentUnavailable  agent_unavailable  refused, reset, timed out (retryable)
    │   │   └── AgentDisconnected                the link is down (waited for; not retried)
    │   ├── AgentAuthFailed   agent_auth_failed  a refused token or certificate
    │   ├── AgentLost         agent_lost         the agent lost the exec's process
    │   └── AgentProtocolError                   the peer broke the agent protocol
    ├── BrokerError                         talking to RabbitMQ went wrong
    │   ├── BrokerUnavailable                    cannot connect (names the URL)
    │   │   └── BrokerRefused                    credentials, vhost or permissions refused
    │   └── PublishFailed                        no confirm in time, or a nack
    └── InternalError       internal        a bug; the message says what

Third-party exceptions (aio-pika, OS errors) are translated into this tree
where they cross into execbus, always chained with ``raise ... from exc``.
"""

from __future__ import annotations

from enum import StrEnum
from typing import ClassVar

from execbus.agent import errors as agent_codes


class ErrorCode(StrEnum):
    """Stable machine codes carried by error replies and ``exec.failed`` events.

    The codes a guest agent answers with too are its own constants
    (:mod:`execbus.agent.errors`, standard library only), so the two lists cannot
    drift apart; the others exist in execbus alone.
    """

    INVALID = agent_codes.INVALID
    NOT_FOUND = agent_codes.NOT_FOUND
    CONFLICT = agent_codes.CONFLICT
    FORBIDDEN = agent_codes.FORBIDDEN
    UNSUPPORTED = agent_codes.UNSUPPORTED
    LIMIT_EXCEEDED = agent_codes.LIMIT_EXCEEDED
    AGENT_LOST = agent_codes.AGENT_LOST
    START_FAILED = agent_codes.START_FAILED
    COMMAND_NOT_FOUND = agent_codes.COMMAND_NOT_FOUND
    COMMAND_NOT_EXECUTABLE = agent_codes.COMMAND_NOT_EXECUTABLE
    UNKNOWN_USER = agent_codes.UNKNOWN_USER
    INVALID_WORKING_DIR = agent_codes.INVALID_WORKING_DIR
    CONTAINER_NOT_FOUND = agent_codes.CONTAINER_NOT_FOUND
    CONTAINER_NOT_RUNNING = agent_codes.CONTAINER_NOT_RUNNING
    INTERNAL = agent_codes.INTERNAL
    # execbus alone (the worker and the SDK):
    TIMEOUT = "timeout"
    UNKNOWN_AGENT = "unknown_agent"
    AGENT_UNAVAILABLE = "agent_unavailable"
    AGENT_AUTH_FAILED = "agent_auth_failed"


class ExecbusError(Exception):
    """Root of every execbus error."""

    code: ClassVar[ErrorCode] = ErrorCode.INTERNAL

    def __init__(self, message: str = "", *, exit_code: int | None = None) -> None:
        super().__init__(message)
        self.message = message or self.__class__.__doc__ or self.__class__.__name__
        #: For start failures: 127 (not found) or 126 (not executable), as shells do.
        self.exit_code = exit_code


class ConfigError(ExecbusError):
    """Settings or command-line configuration is invalid."""

    code = ErrorCode.INVALID


class InvalidRequest(ExecbusError):
    """The request failed validation."""

    code = ErrorCode.INVALID


class NotFound(ExecbusError):
    """No exec with that id."""

    code = ErrorCode.NOT_FOUND


class Conflict(ExecbusError):
    """The exec's state does not allow the operation."""

    code = ErrorCode.CONFLICT


class Forbidden(ExecbusError):
    """The caller is not allowed to do this."""

    code = ErrorCode.FORBIDDEN


class Unsupported(ExecbusError):
    """The agent cannot do this operation."""

    code = ErrorCode.UNSUPPORTED


class LimitExceeded(ExecbusError):
    """A size or count limit was reached."""

    code = ErrorCode.LIMIT_EXCEEDED


class ExecTimeout(ExecbusError):
    """Waiting for a result took too long."""

    code = ErrorCode.TIMEOUT


class UnknownAgent(ExecbusError):
    """No worker serves this agent or pool."""

    code = ErrorCode.UNKNOWN_AGENT


class StartFailed(ExecbusError):
    """The process could not be started."""

    code = ErrorCode.START_FAILED


class CommandNotFound(StartFailed):
    """The executable was not found (exit code 127)."""

    code = ErrorCode.COMMAND_NOT_FOUND


class CommandNotExecutable(StartFailed):
    """The file is not executable (exit code 126)."""

    code = ErrorCode.COMMAND_NOT_EXECUTABLE


class UnknownUser(StartFailed):
    """The user or group does not exist."""

    code = ErrorCode.UNKNOWN_USER


class InvalidWorkingDir(StartFailed):
    """The working directory does not exist or cannot be entered (exit code 126)."""

    code = ErrorCode.INVALID_WORKING_DIR


class ContainerNotFound(StartFailed):
    """No container with that id."""

    code = ErrorCode.CONTAINER_NOT_FOUND


class ContainerNotRunning(StartFailed):
    """The container exists but is not running."""

    code = ErrorCode.CONTAINER_NOT_RUNNING


class AgentError(ExecbusError):
    """Talking to a guest agent went wrong."""

    code = ErrorCode.AGENT_UNAVAILABLE


class AgentUnavailable(AgentError):
    """The agent could not be reached (refused, reset, timed out); retryable."""

    code = ErrorCode.AGENT_UNAVAILABLE


class AgentDisconnected(AgentUnavailable):
    """The agent's link is down (the call waited for it to come back); not retried:
    the wait was the retry."""


class AgentAuthFailed(AgentError):
    """The agent and the worker could not authenticate each other (a refused
    token, a certificate that failed verification); not retried."""

    code = ErrorCode.AGENT_AUTH_FAILED


class AgentLost(AgentError):
    """The agent restarted or vanished; the processes it ran are gone."""

    code = ErrorCode.AGENT_LOST


class AgentProtocolError(AgentError):
    """The agent broke the protocol (bad frame, bad handshake)."""

    code = ErrorCode.INTERNAL


class BrokerError(ExecbusError):
    """Talking to RabbitMQ went wrong."""

    code = ErrorCode.INTERNAL


class BrokerUnavailable(BrokerError):
    """RabbitMQ could not be reached."""


class BrokerRefused(BrokerUnavailable):
    """RabbitMQ refused us for good: credentials, vhost or permissions (not retried)."""


class PublishFailed(BrokerError):
    """A publish was not confirmed in time, or was nacked."""


class InternalError(ExecbusError):
    """An internal error; the message says what."""

    code = ErrorCode.INTERNAL


_BY_CODE: dict[str, type[ExecbusError]] = {
    ErrorCode.INVALID: InvalidRequest,
    ErrorCode.NOT_FOUND: NotFound,
    ErrorCode.CONFLICT: Conflict,
    ErrorCode.FORBIDDEN: Forbidden,
    ErrorCode.UNSUPPORTED: Unsupported,
    ErrorCode.LIMIT_EXCEEDED: LimitExceeded,
    ErrorCode.TIMEOUT: ExecTimeout,
    ErrorCode.UNKNOWN_AGENT: UnknownAgent,
    ErrorCode.AGENT_UNAVAILABLE: AgentUnavailable,
    ErrorCode.AGENT_AUTH_FAILED: AgentAuthFailed,
    ErrorCode.AGENT_LOST: AgentLost,
    ErrorCode.START_FAILED: StartFailed,
    ErrorCode.COMMAND_NOT_FOUND: CommandNotFound,
    ErrorCode.COMMAND_NOT_EXECUTABLE: CommandNotExecutable,
    ErrorCode.UNKNOWN_USER: UnknownUser,
    ErrorCode.INVALID_WORKING_DIR: InvalidWorkingDir,
    ErrorCode.CONTAINER_NOT_FOUND: ContainerNotFound,
    ErrorCode.CONTAINER_NOT_RUNNING: ContainerNotRunning,
    ErrorCode.INTERNAL: InternalError,
}


def error_for_code(code: str, message: str, exit_code: int | None = None) -> ExecbusError:
    """Build the exception matching a wire error ``code`` (unknown codes -> InternalError)."""
    return _BY_CODE.get(code, InternalError)(message, exit_code=exit_code)


def start_error_for_code(code: str, message: str) -> StartFailed:
    """Like :func:`error_for_code`, but always a :class:`StartFailed`."""
    err = error_for_code(code, message)
    return err if isinstance(err, StartFailed) else StartFailed(message)


# The agent's request errors (``execbus.agent.errors.REQUEST_ERRORS``) in the
# execbus tree; the state-related ones are all a conflict for the caller.
_BY_AGENT_CODE: dict[str, type[ExecbusError]] = {
    agent_codes.INVALID: InvalidRequest,
    agent_codes.NOT_FOUND: NotFound,
    agent_codes.CONFLICT: Conflict,
    agent_codes.NOT_RUNNING: Conflict,
    agent_codes.NOT_TTY: Conflict,
    agent_codes.STDIN_CLOSED: Conflict,
    agent_codes.NOT_FINISHED: Conflict,
    agent_codes.FORBIDDEN: Forbidden,
    agent_codes.LIMIT_EXCEEDED: LimitExceeded,
    agent_codes.UNSUPPORTED: Unsupported,
    agent_codes.INTERNAL: InternalError,
}


def agent_error(code: str, message: str) -> ExecbusError:
    """Translate a guest agent's error response (its protocol ``code``) into this tree."""
    cls = _BY_AGENT_CODE.get(code)
    if cls is None:
        return InternalError(f"the agent answered with unknown error {code[:64]!r}: {message}")
    return cls(message)
