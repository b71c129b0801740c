"""One exec record: the registry's unit of state."""

from __future__ import annotations

from datetime import UTC, datetime

from execbus.wire.config import ExecConfig
from execbus.wire.records import FINISHED_STATES, ErrorInfo, ExecInfo, ExecState, ExitInfo


def utc(ts: float | None) -> datetime | None:
    """A Unix timestamp as an aware UTC datetime (``None`` stays ``None``)."""
    return None if ts is None else datetime.fromtimestamp(ts, UTC)


# A compacted record keeps its config and exit as one bytes object: the config's
# compact JSON, a newline (JSON text never holds a raw one), the exit's JSON.
_SEP = b"\n"


def _pack(config: ExecConfig, exit_info: ExitInfo | None) -> bytes:
    packed = config.model_dump_json(exclude_defaults=True).encode()
    if exit_info is not None:
        packed += _SEP + exit_info.model_dump_json(exclude_defaults=True).encode()
    return packed


class ExecRecord:
    """An exec the registry knows: its config, its state and how it ended.

    ``instance`` is a nonce drawn at create time; event ids derive from it, so
    an exec id reused after removal never repeats an old event id.

    A finished record whose final event went out is *compacted*
    (:meth:`compact`): its config and exit are kept as one compact JSON blob,
    and ``config``/``exit`` rebuild the models on demand. Registries hold up
    to ``max_records`` finished execs; this keeps each one near 0.6 KiB
    instead of 2-3 KiB of live pydantic models.
    """

    __slots__ = (
        "_config",
        "_exit",
        "agent",
        "agent_acked",
        "config_digest",
        "container_id",
        "created_at",
        "error",
        "exec_id",
        "final_published",
        "finished_at",
        "instance",
        "owner",
        "pid",
        "started_at",
        "starting",
        "state",
    )

    def __init__(
        self,
        exec_id: str,
        agent: str,
        config: ExecConfig,
        instance: str,
        created_at: float,
        state: ExecState = ExecState.CREATED,
        starting: bool = False,
        pid: int | None = None,
        started_at: float | None = None,
        finished_at: float | None = None,
        exit: ExitInfo | None = None,
        error: ErrorInfo | None = None,
        final_published: bool = False,
        agent_acked: bool = False,
        owner: str | None = None,
        config_digest: str | None = None,
    ) -> None:
        self.exec_id = exec_id
        self.agent = agent
        self.instance = instance
        self.created_at = created_at
        self.state = state
        self.starting = starting
        self.pid = pid
        self.started_at = started_at
        self.finished_at = finished_at
        self.error = error
        self.final_published = final_published  # the exited/failed event was confirmed
        self.agent_acked = agent_acked  # the agent was told to forget the finished exec
        self.owner = owner  # the caller (AMQP user_id) that created it, if known
        # For a record rebuilt from an agent's journal, whose copy of the config
        # has its env values redacted: the digest of the config it was created with.
        self.config_digest = config_digest
        self.config = config
        self.exit = exit

    def __repr__(self) -> str:
        return f"ExecRecord({self.exec_id!r}, agent={self.agent!r}, state={self.state.value})"

    @property
    def config(self) -> ExecConfig:
        """The exec's config (rebuilt from compact JSON for a compacted record)."""
        config = self._config
        if isinstance(config, bytes):
            return ExecConfig.model_validate_json(config.partition(_SEP)[0])
        return config

    @config.setter
    def config(self, config: ExecConfig) -> None:
        if isinstance(getattr(self, "_config", None), bytes):
            raise ValueError(f"exec {self.exec_id!r} is compacted; its config is settled")
        self._config: ExecConfig | bytes = config
        self.container_id = config.container_id

    @property
    def exit(self) -> ExitInfo | None:
        """How the process ended, if it did."""
        if isinstance(self._config, bytes):
            packed_exit = self._config.partition(_SEP)[2]
            return ExitInfo.model_validate_json(packed_exit) if packed_exit else None
        return self._exit

    @exit.setter
    def exit(self, exit_info: ExitInfo | None) -> None:
        if isinstance(self._config, bytes):
            raise ValueError(f"exec {self.exec_id!r} is compacted; its exit is settled")
        self._exit: ExitInfo | None = exit_info

    @property
    def finished(self) -> bool:
        """True once the exec has exited or failed."""
        return self.state in FINISHED_STATES

    @property
    def compacted(self) -> bool:
        """True once :meth:`compact` has packed the config and exit."""
        return isinstance(self._config, bytes)

    def compact(self) -> None:
        """Pack a finished record's config and exit; the hot path no longer reads them."""
        if self.finished and not isinstance(self._config, bytes):
            self._config = _pack(self._config, self._exit)
            self._exit = None

    def info(self, *, output: bool = True) -> ExecInfo:
        """The public view (env keys only, never values); ``output=False`` leaves the
        captured stdout/stderr out of the exit (inspect and list replies)."""
        cfg = self.config
        exit_info = self.exit
        if exit_info is not None and not output:
            exit_info = exit_info.model_copy(update={"stdout": None, "stderr": None})
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
            exit=exit_info,
            error=self.error,
        )
