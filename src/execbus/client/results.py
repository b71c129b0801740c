"""What a finished exec gives back: :class:`RunResult`, and wire errors as exceptions."""

from __future__ import annotations

from dataclasses import dataclass

from execbus.errors import ExecbusError, InternalError, error_for_code
from execbus.wire.records import ErrorInfo, ExecInfo, ExecState, ExitInfo
from execbus.wire.replies import Reply


@dataclass(frozen=True, slots=True)
class RunResult:
    """How a command ended and what it wrote (captured, capped per stream).

    ``exit_code`` is 128+n when the process was killed by signal n (``signal``
    names it). ``info`` is the worker's record of the exec when its reply
    arrived; ``None`` when only the exit event did (the worker handling the
    exec died before it could answer). ``agent`` is the agent that ran it
    (for a run sent to a pool, the one the pool placed it on).
    """

    exec_id: str
    exit_code: int
    signal: str | None
    timed_out: bool
    stdout: bytes
    stderr: bytes
    stdout_dropped: int
    stderr_dropped: int
    info: ExecInfo | None = None
    agent: str | None = None
    replayed: bool = False

    @property
    def ok(self) -> bool:
        """True when the command exited with status 0."""
        return self.exit_code == 0

    @classmethod
    def from_exit(
        cls,
        exec_id: str,
        exit: ExitInfo,
        info: ExecInfo | None = None,
        agent: str | None = None,
        replayed: bool = False,
    ) -> RunResult:
        """Build a result from an exit (of a reply's record or of an ``exec.exited`` event)."""
        return cls(
            exec_id=exec_id,
            exit_code=exit.exit_code,
            signal=exit.signal,
            timed_out=exit.timed_out,
            stdout=exit.stdout or b"",
            stderr=exit.stderr or b"",
            stdout_dropped=exit.stdout_dropped,
            stderr_dropped=exit.stderr_dropped,
            info=info,
            agent=agent if agent is not None or info is None else info.agent,
            replayed=replayed,
        )


def exception_for(error: ErrorInfo) -> ExecbusError:
    """The typed exception of a wire error; start failures keep their ``exit_code``."""
    return error_for_code(error.code, error.message, error.exit_code)


def exit_code_of(exc: BaseException) -> int | None:
    """The exit code a wire error carried (126/127 for start failures), if any."""
    code = getattr(exc, "exit_code", None)
    return code if isinstance(code, int) else None


def info_of(reply: Reply) -> ExecInfo:
    """The :class:`ExecInfo` of a reply, or its error raised as the typed exception."""
    if not reply.ok:
        raise exception_for(reply.error or ErrorInfo(code="internal", message="error reply"))
    if not isinstance(reply.result, ExecInfo):
        raise InternalError(f"reply to {reply.request_type} carries no exec record")
    return reply.result


def result_of(info: ExecInfo, *, replayed: bool = False) -> RunResult:
    """The :class:`RunResult` of a finished exec record (its error raised if it failed)."""
    if info.state is ExecState.FAILED and info.error is not None:
        raise exception_for(info.error)
    if info.exit is None:
        raise InternalError(f"exec {info.exec_id} is {info.state.value}, not finished")
    return RunResult.from_exit(info.exec_id, info.exit, info, replayed=replayed)
