"""The events of an exec, built from its record (pure: no I/O, no state).

Every event id is deterministic (agent, exec id, the record's instance nonce,
kind, and for output the stream and seq), so the same event published twice
(a redelivery, a takeover) carries the same id and consumers drop the copy.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from execbus.agent.results import exit_result
from execbus.registry import ExecRecord
from execbus.registry.records import utc
from execbus.wire import events as ev
from execbus.wire.records import ErrorInfo, ExecState


def _base(agent: str, record: ExecRecord, kind: str, extra: str = "") -> dict[str, Any]:
    return {
        "event_id": ev.make_event_id(agent, record.exec_id, record.instance, kind, extra),
        "agent": agent,
        "exec_id": record.exec_id,
        "container_id": record.container_id,
        "time": datetime.now(UTC),
        "labels": record.config.labels,
    }


def created(agent: str, record: ExecRecord) -> ev.CreatedEvent:
    cfg = record.config
    return ev.CreatedEvent(
        **_base(agent, record, "created"),
        cmd=cfg.cmd,
        env_keys=cfg.env_keys(),
        tty=cfg.tty,
        user=cfg.user,
    )


def started(agent: str, record: ExecRecord) -> ev.StartedEvent:
    return ev.StartedEvent(
        **_base(agent, record, "started"), pid=record.pid, started_at=utc(record.started_at)
    )


def output(agent: str, record: ExecRecord, stream: str, seq: int, data: bytes) -> ev.OutputEvent:
    base = _base(agent, record, "output", f"{stream}:{seq}")
    return ev.OutputEvent(**base, stream=stream, seq=seq, data=data)


def final(agent: str, record: ExecRecord) -> tuple[str, ev.EventBase, str]:
    """``(kind, event, result)`` of a finished exec: ``exited`` with its exit (result:
    ok, nonzero, signalled, timed_out) or ``failed`` with its error (result: its code)."""
    if record.state is ExecState.FAILED and record.error is not None:
        return "failed", failed(agent, record, record.error), record.error.code
    exit_info = record.exit
    assert exit_info is not None, "a finished exec that did not fail has an exit"
    result = exit_result(exit_info.exit_code, exit_info.signal, exit_info.timed_out)
    return "exited", ev.ExitedEvent(**_base(agent, record, "exited"), exit=exit_info), result


def failed(agent: str, record: ExecRecord, error: ErrorInfo) -> ev.FailedEvent:
    return ev.FailedEvent(**_base(agent, record, "failed"), error=error)
