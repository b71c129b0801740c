"""The exec registry of one agent: the lifecycle state machine, pure logic, no I/O.

::

    create ──▶ created ──begin_start──▶ (starting) ──mark_running──▶ running ──notify_exit──▶ exited
                  │                          │                          │
                  │                          └──mark_failed──▶ failed ◀─┘ (agent lost)
                  └── expires after ``created_ttl`` if never started

The exec id is the idempotency key, whatever the request (or AMQP message)
id: a repeated create with the same config returns the existing record, and
any start after the first is a *replay* (:attr:`StartAction.REPLAY`): the
caller gets the recorded outcome, or joins the waiters of a running exec,
and nothing is spawned again. Only a different config under the same id is a
:class:`~execbus.errors.Conflict`.
Finished records are kept for ``retention`` seconds, then :meth:`sweep`
collects them. The number of records is capped; a full registry raises
:class:`~execbus.errors.LimitExceeded` after trying a sweep.
"""

from __future__ import annotations

import builtins
import hashlib
import secrets
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from enum import Enum

from execbus.errors import Conflict, LimitExceeded, NotFound
from execbus.registry.records import ExecRecord
from execbus.wire.config import ExecConfig
from execbus.wire.ids import new_exec_id
from execbus.wire.records import ErrorInfo, ExecState, ExitInfo


@dataclass(frozen=True, slots=True)
class RegistryLimits:
    """How many records, and for how long."""

    max_records: int = 100_000
    retention: float = 3600.0
    created_ttl: float = 600.0


class StartAction(Enum):
    """What the caller of :meth:`ExecRegistry.begin_start` must do next."""

    SPAWN = "spawn"  # ask the agent to start the process
    REPLAY = "replay"  # already started: answer with the exec (its outcome, or at its exit)


@dataclass(frozen=True, slots=True)
class StartDecision:
    """The outcome of :meth:`ExecRegistry.begin_start`."""

    action: StartAction
    record: ExecRecord


class ExecRegistry:
    """Exec records of one agent, indexed by id and by container."""

    def __init__(
        self,
        agent: str,
        limits: RegistryLimits | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.agent = agent
        self.limits = limits or RegistryLimits()
        self._clock = clock
        self._records: dict[str, ExecRecord] = {}
        self._by_container: dict[str, dict[str, None]] = {}

    def __len__(self) -> int:
        return len(self._records)

    def __iter__(self) -> Iterator[ExecRecord]:
        return iter(list(self._records.values()))

    # -- lookups -------------------------------------------------------

    def find(self, exec_id: str) -> ExecRecord | None:
        """The record, or ``None``."""
        return self._records.get(exec_id)

    def get(self, exec_id: str) -> ExecRecord:
        """The record; :class:`NotFound` if there is none."""
        record = self._records.get(exec_id)
        if record is None:
            raise NotFound(f"no exec {exec_id!r} on agent {self.agent!r}")
        return record

    def list(
        self, container_id: str | None = None, include_finished: bool = True
    ) -> list[ExecRecord]:
        """Records, optionally of one container, oldest first."""
        if container_id is None:
            records = list(self._records.values())
        else:
            ids = self._by_container.get(container_id, {})
            records = [self._records[i] for i in ids]
        if not include_finished:
            records = [r for r in records if not r.finished]
        return records

    def list_for_container(self, container_id: str) -> builtins.list[ExecRecord]:
        """Every record of one container (O(k) in its own execs)."""
        return self.list(container_id)

    def counts_by_state(self) -> dict[ExecState, int]:
        """How many records are in each state."""
        counts = dict.fromkeys(ExecState, 0)
        for record in self._records.values():
            counts[record.state] += 1
        return counts

    # -- transitions ---------------------------------------------------

    def create(
        self,
        config: ExecConfig,
        exec_id: str | None = None,
        *,
        instance: str | None = None,
        owner: str | None = None,
    ) -> tuple[ExecRecord, bool]:
        """Register an exec; returns ``(record, created)``.

        A repeated create with the same id and config returns the existing
        record (``created`` is False); with a different config it conflicts.
        """
        exec_id = exec_id or new_exec_id()
        existing = self._records.get(exec_id)
        if existing is not None:
            if not same_config(existing, config):
                raise Conflict(f"exec {exec_id!r} already exists with a different config")
            return existing, False
        self._make_room()
        record = ExecRecord(
            exec_id=exec_id,
            agent=self.agent,
            config=config,
            instance=instance or secrets.token_hex(8),
            created_at=self._clock(),
            owner=owner,
        )
        self._insert(record)
        return record, True

    def begin_start(self, exec_id: str) -> StartDecision:
        """Claim the start of a created exec; every later start is a replay.

        No request (or AMQP message) id plays a part: a caller that re-publishes
        the same request as a new message gets the exec, not a conflict.
        """
        record = self.get(exec_id)
        if record.starting or record.state is not ExecState.CREATED:
            return StartDecision(StartAction.REPLAY, record)
        record.starting = True
        return StartDecision(StartAction.SPAWN, record)

    def abort_start(self, exec_id: str) -> None:
        """Undo :meth:`begin_start` when the start was interrupted before any outcome."""
        record = self.get(exec_id)
        if record.state is ExecState.CREATED:
            record.starting = False

    def mark_running(
        self, exec_id: str, pid: int | None, started_at: float | None = None
    ) -> ExecRecord:
        """The agent spawned the process."""
        record = self.get(exec_id)
        if record.state is not ExecState.CREATED:
            raise Conflict(f"exec {exec_id!r} is {record.state.value}, not created")
        record.state = ExecState.RUNNING
        record.starting = False
        record.pid = pid
        record.started_at = started_at if started_at is not None else self._clock()
        return record

    def mark_failed(self, exec_id: str, error: ErrorInfo) -> bool:
        """The exec could not run (or its agent lost it). False if already finished."""
        record = self.get(exec_id)
        if record.finished:
            return False
        record.state = ExecState.FAILED
        record.starting = False
        record.error = error
        record.finished_at = self._clock()
        return True

    def notify_exit(self, exec_id: str, exit_info: ExitInfo) -> bool:
        """The process ended. False (and no change) if it was already finished."""
        record = self.get(exec_id)
        if record.finished:
            return False
        if record.state is ExecState.CREATED and not record.starting:
            raise Conflict(f"exec {exec_id!r} was never started")
        record.state = ExecState.EXITED
        record.starting = False
        record.exit = exit_info
        record.finished_at = self._clock()
        if record.started_at is None and exit_info.started_at is not None:
            record.started_at = exit_info.started_at.timestamp()
        return True

    def check_resizable(self, exec_id: str) -> ExecRecord:
        """Resize is allowed for running TTY execs only."""
        record = self.get(exec_id)
        if not record.config.tty:
            raise Conflict(f"exec {exec_id!r} has no TTY; resize needs tty=true")
        return self.check_running(exec_id)

    def check_running(self, exec_id: str) -> ExecRecord:
        """Signals and stdin need a running exec."""
        record = self.get(exec_id)
        if record.state is not ExecState.RUNNING:
            raise Conflict(f"exec {exec_id!r} is {record.state.value}, not running")
        return record

    def remove(self, exec_id: str) -> ExecRecord:
        """Forget a created or finished exec; a running one is a conflict."""
        record = self.get(exec_id)
        if record.state is ExecState.RUNNING or record.starting:
            raise Conflict(f"exec {exec_id!r} is running; stop it first or use force")
        self._delete(record)
        return record

    def adopt(self, record: ExecRecord) -> None:
        """Insert or replace a record rebuilt from the agent (takeover); ignores the cap."""
        old = self._records.get(record.exec_id)
        if old is not None:
            self._delete(old)
        self._insert(record)

    def sweep(self, now: float | None = None) -> builtins.list[str]:
        """Collect finished records past retention and never-started ones past their TTL."""
        now = self._clock() if now is None else now
        expired = [r for r in self._records.values() if self._expired(r, now)]
        for record in expired:
            self._delete(record)
        return [r.exec_id for r in expired]

    # -- internals -----------------------------------------------------

    def _expired(self, record: ExecRecord, now: float) -> bool:
        if record.finished:
            return now - (record.finished_at or record.created_at) >= self.limits.retention
        if record.state is ExecState.CREATED and not record.starting:
            return now - record.created_at >= self.limits.created_ttl
        return False

    def _make_room(self) -> None:
        if len(self._records) < self.limits.max_records:
            return
        self.sweep()
        if len(self._records) >= self.limits.max_records:
            raise LimitExceeded(
                f"registry of agent {self.agent!r} holds {len(self._records)} execs, "
                f"the limit is {self.limits.max_records}; remove finished execs or retry later"
            )

    def _insert(self, record: ExecRecord) -> None:
        self._records[record.exec_id] = record
        self._by_container.setdefault(record.container_id, {})[record.exec_id] = None

    def _delete(self, record: ExecRecord) -> None:
        del self._records[record.exec_id]
        ids = self._by_container.get(record.container_id)
        if ids is not None:
            ids.pop(record.exec_id, None)
            if not ids:
                del self._by_container[record.container_id]


def same_config(record: ExecRecord, requested: ExecConfig) -> bool:
    """Whether a repeated create/run asks for the exec already recorded.

    The console size is left out: ``exec.start`` may override it, and the
    record keeps the size the exec was started with. A record rebuilt from an
    agent's journal (env values redacted at rest) compares digests instead.
    """
    if record.config_digest is not None:
        return record.config_digest == config_digest(requested)
    recorded = record.config
    if recorded.console_size == requested.console_size:
        return recorded == requested
    return recorded.model_copy(update={"console_size": None}) == requested.model_copy(
        update={"console_size": None}
    )


def config_digest(config: ExecConfig) -> str:
    """A digest of what makes two configs the same exec (the console size left out)."""
    canonical = config.model_dump_json(exclude={"console_size"}, exclude_defaults=True)
    return hashlib.blake2b(canonical.encode(), digest_size=16).hexdigest()
