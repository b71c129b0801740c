"""One exec record: the registry's unit of state."""

from __future__ import annotations

from datetime import UTC, datetime

from execbus.wire.config import ExecConfig
from execbus.wire.records import FINISHED_STATES, ErrorInfo, ExecInfo, ExecState, ExitInfo

# A settled exit, as plain values: (exit_code, signal, timed_out, started_at,
# finished_at, stdout, stderr, stdout_dropped, stderr_dropped), times as Unix floats.
_PackedExit = tuple[int, str | None, bool, float | None, float | None, bytes, bytes, int, int]


def utc(ts: float | None) -> datetime | None:
    """A Unix timestamp as an aware UTC datetime (``None`` stays ``None``)."""
    return None if ts is None else datetime.fromtimestamp(ts, UTC)


def _ts(when: datetime | None) -> float | None:
    return None if when is None else when.timestamp()


def _pack_exit(info: ExitInfo) -> _PackedExit:
    return (
        info.exit_code,
        info.signal,
        info.timed_out,
        _ts(info.started_at),
        _ts(info.finished_at),
        info.stdout,
        info.stderr,
        info.stdout_dropped,
        info.stderr_dropped,
    )


def _unpack_exit(packed: _PackedExit) -> ExitInfo:
    code, sig, timed_out, started, finished, out, err, out_dropped, err_dropped = packed
    # model_construct: these values were validated when the exit first arrived.
    return ExitInfo.model_construct(
        exit_code=code,
        signal=sig,
        timed_out=timed_out,
        started_at=utc(started),
        finished_at=utc(finished),
        stdout=out,
        stderr=err,
        stdout_dropped=out_dropped,
        stderr_dropped=err_dropped,
    )


class ExecRecord:
    """An exec the registry knows: its config, its state and how it ended.

    ``instance`` is a nonce drawn at create time; event ids derive from it, so
    an exec id reused after removal never repeats an old event id.

    A finished record whose final event went out is *compacted*
    (:meth:`compact`): its config is kept as compact JSON and its exit as plain
    values, and ``config``/``exit`` rebuild the models on demand. Registries
    hold up to ``max_records`` finished execs; this keeps each one near
    0.6 KiB instead of 3 KiB of live pydantic models.
    """

    __slots__ = (
        "_config",
        "_exit",
        "_packed_config",
        "_packed_exit",
        "agent",
        "container_id",
        "created_at",
        "error",
        "exec_id",
        "final_published",
        "finished_at",
        "instance",
        "pid",
        "start_request_id",
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
        start_request_id: str | None = None,
        pid: int | None = None,
        started_at: float | None = None,
        finished_at: float | None = None,
        exit: ExitInfo | None = None,
        error: ErrorInfo | None = None,
        final_published: bool = False,
    ) -> None:
        self.exec_id = exec_id
        self.agent = agent
        self.instance = instance
        self.created_at = created_at
        self.state = state
        self.starting = starting
        self.start_request_id = start_request_id
        self.pid = pid
        self.started_at = started_at
        self.finished_at = finished_at
        self.error = error
        self.final_published = final_published  # the exited/failed event was confirmed
        self._packed_config: bytes | None = None
        self._packed_exit: _PackedExit | None = None
        self.config = config
        self.exit = exit

    def __repr__(self) -> str:
        return f"ExecRecord({self.exec_id!r}, agent={self.agent!r}, state={self.state.value})"

    @property
    def config(self) -> ExecConfig:
        """The exec's config (rebuilt from compact JSON for a compacted record)."""
        if self._config is None:
            assert self._packed_config is not None
            return ExecConfig.model_validate_json(self._packed_config)
        return self._config

    @config.setter
    def config(self, config: ExecConfig) -> None:
        self._config: ExecConfig | None = config
        self._packed_config = None
        self.container_id = config.container_id

    @property
    def exit(self) -> ExitInfo | None:
        """How the process ended, if it did."""
        if self._exit is None and self._packed_exit is not None:
            return _unpack_exit(self._packed_exit)
        return self._exit

    @exit.setter
    def exit(self, exit_info: ExitInfo | None) -> None:
        self._exit: ExitInfo | None = exit_info
        self._packed_exit = None

    @property
    def finished(self) -> bool:
        """True once the exec has exited or failed."""
        return self.state in FINISHED_STATES

    @property
    def compacted(self) -> bool:
        """True once :meth:`compact` has packed the config and exit."""
        return self._config is None

    def compact(self) -> None:
        """Pack a finished record's config and exit; the hot path no longer reads them."""
        if not self.finished or self._config is None:
            return
        self._packed_config = self._config.model_dump_json(exclude_defaults=True).encode()
        self._config = None
        if self._exit is not None:
            self._packed_exit = _pack_exit(self._exit)
            self._exit = None

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
