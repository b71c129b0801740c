"""Events published on ``<ns>.events`` with routing key ``exec.<agent>.<container>.<event>``.

Every event has a stable ``event_id``: the same event published twice (a
redelivery, a takeover by another worker) carries the same id, so consumers
drop duplicates by it.
"""

from __future__ import annotations

import hashlib
from datetime import datetime
from typing import Annotated, Literal

from pydantic import Field, TypeAdapter

from execbus.wire.config import MAX_USER_CHARS, USER_PATTERN, StrictModel, WireBytes
from execbus.wire.ids import AgentName, ContainerId, ExecId
from execbus.wire.records import ErrorInfo, ExitInfo

EVENT_KINDS = ("created", "started", "output", "exited", "failed")


def make_event_id(agent: str, exec_id: str, instance: str, kind: str, extra: str = "") -> str:
    """A deterministic event id: equal inputs give equal ids on every worker."""
    raw = f"{agent}\x00{exec_id}\x00{instance}\x00{kind}\x00{extra}".encode()
    return hashlib.blake2b(raw, digest_size=16).hexdigest()


class EventBase(StrictModel):
    """Fields shared by every event."""

    v: Literal[1] = 1
    event_id: str = Field(max_length=64)
    agent: AgentName
    exec_id: ExecId
    container_id: ContainerId = ""
    time: datetime
    labels: dict[str, str] = Field(default_factory=dict)


class CreatedEvent(EventBase):
    """The exec was registered. Carries env keys only, never values.

    ``user`` is the config's ``user`` (what the command runs as); left out when
    the exec runs as the agent's default user. Workers before it was added never
    send it, so a missing ``user`` may also mean "not told".
    """

    type: Literal["exec.created"] = "exec.created"
    cmd: list[str]
    env_keys: list[str] = Field(default_factory=list)
    tty: bool = False
    user: str | None = Field(
        default=None,
        max_length=MAX_USER_CHARS,
        pattern=USER_PATTERN,
        description="the config's user (name, uid, uid:gid or name:group); "
        "absent when it runs as the agent's default user.",
    )


class StartedEvent(EventBase):
    """The agent spawned the process."""

    type: Literal["exec.started"] = "exec.started"
    pid: int | None = None
    started_at: datetime | None = None


class OutputEvent(EventBase):
    """A chunk of output; ``seq`` counts chunks per stream from 0."""

    type: Literal["exec.output"] = "exec.output"
    stream: Literal["stdout", "stderr"]
    seq: int = Field(ge=0)
    data: WireBytes


class ExitedEvent(EventBase):
    """The process ended."""

    type: Literal["exec.exited"] = "exec.exited"
    exit: ExitInfo


class FailedEvent(EventBase):
    """The exec could not run (start failed, agent unavailable or lost)."""

    type: Literal["exec.failed"] = "exec.failed"
    error: ErrorInfo


Event = Annotated[
    CreatedEvent | StartedEvent | OutputEvent | ExitedEvent | FailedEvent,
    Field(discriminator="type"),
]
EVENT_ADAPTER: TypeAdapter[Event] = TypeAdapter(Event)
