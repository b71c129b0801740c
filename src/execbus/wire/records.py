"""The public view of an exec: its state, exit and error, as replies carry it."""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum

from pydantic import Field

from execbus.wire.config import StrictModel, WireBytes
from execbus.wire.ids import AgentName, ContainerId, ExecId


class ExecState(StrEnum):
    """Lifecycle: created -> running -> exited, or created -> failed."""

    CREATED = "created"
    RUNNING = "running"
    EXITED = "exited"
    FAILED = "failed"


FINISHED_STATES = frozenset({ExecState.EXITED, ExecState.FAILED})


class ErrorInfo(StrictModel):
    """A machine code (see ``execbus.errors.ErrorCode``) and a human message."""

    code: str = Field(max_length=64)
    message: str = Field(max_length=4096)
    exit_code: int | None = Field(default=None, description="126/127 for start failures")


class ExitInfo(StrictModel):
    """How a process ended, and what it wrote (capped, with dropped-byte counts).

    ``stdout``/``stderr`` are left out (null) where the capture was not asked
    for: ``exec.inspect`` and ``exec.wait`` carry it only with
    ``include_output: true``, ``exec.list`` never. The final reply of a run
    and the ``exec.exited`` event always carry it.
    """

    exit_code: int = Field(ge=0, le=255, description="128+n when killed by signal n")
    signal: str | None = Field(default=None, description="e.g. SIGKILL when signalled")
    timed_out: bool = False
    started_at: datetime | None = None
    finished_at: datetime | None = None
    stdout: WireBytes | None = b""
    stderr: WireBytes | None = b""
    stdout_dropped: int = Field(default=0, ge=0)
    stderr_dropped: int = Field(default=0, ge=0)


class ExecInfo(StrictModel):
    """One exec as seen by callers. Env values are never included, only keys."""

    exec_id: ExecId
    agent: AgentName
    container_id: ContainerId = ""
    state: ExecState
    cmd: list[str]
    env_keys: list[str] = Field(default_factory=list)
    working_dir: str | None = None
    user: str | None = None
    tty: bool = False
    privileged: bool = False
    timeout: float | None = None
    labels: dict[str, str] = Field(default_factory=dict)
    pid: int | None = None
    created_at: datetime
    started_at: datetime | None = None
    finished_at: datetime | None = None
    exit: ExitInfo | None = None
    error: ErrorInfo | None = None


class ExecList(StrictModel):
    """The result of ``exec.list``."""

    execs: list[ExecInfo]
