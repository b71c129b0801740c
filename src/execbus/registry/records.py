"""One exec record: the registry's unit of state."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime

from execbus.wire.config import ExecConfig
from execbus.wire.records import FINISHED_STATES, ErrorInfo, ExecInfo, ExecState, ExitInfo


def utc(ts: float | None) -> datetime | None:
    """A Unix timestamp as an aware UTC datetime (``None`` stays ``None``)."""
    return None if ts is None else datetime.fromtimestamp(ts, UTC)


@dataclass(slots=True, eq=False)
class ExecRecord:
    """An exec the registry knows: its config, its state and how it ended.

    ``instance`` is a nonce drawn at create time; event ids derive from it, so
    an exec id reused after removal never repeats an old event id.
    """

    exec_id: str
    agent: str
    config: ExecConfig
    instance: str
    created_at: float
    state: ExecState = ExecState.CREATED
    starting: bool = False
    start_request_id: str | None = None
    pid: int | None = None
    started_at: float | None = None
    finished_at: float | None = None
    exit: ExitInfo | None = None
    error: ErrorInfo | None = None
    final_published: bool = False  # the exited/failed event was confirmed by the broker

    @property
    def finished(self) -> bool:
        """True once the exec has exited or failed."""
        return self.state in FINISHED_STATES

    @property
    def container_id(self) -> str:
        return self.config.container_id

    def info(self) -> ExecInfo:
        """The public view (env keys only, never values)."""
        cfg = self.config
        return ExecInfo(
            exec_id=self.exec_id,
            agent=self.agent,
            container_id=cfg.container_id,
            state=self.state,
            cmd=cfg.cmd,
            env_keys=cfg.env_keys(),
            working_dir=cfg.working_dir,
            user=cfg.user,
            tty=cfg.tty,
            privileged=cfg.privileged,
            timeout=cfg.timeout,
            labels=cfg.labels,
            pid=self.pid,
            created_at=utc(self.created_at) or datetime.now(UTC),
            started_at=utc(self.started_at),
            finished_at=utc(self.finished_at),
            exit=self.exit,
            error=self.error,
        )
