"""The console's view model: the last N execs, the fleet, the charts' counters.

Pure and synchronous: :meth:`ConsoleStore.apply_event` takes a parsed
:data:`~execbus.wire.events.Event` (from the SDK's subscription) and the time
it arrived; nothing here does I/O or reads a clock. The page's queries
(:meth:`ConsoleStore.query`, :meth:`ConsoleStore.detail`) return plain JSON-able
dicts.

Bounds: at most ``max_execs`` execs (the oldest *finished* exec goes first;
an unfinished one only when none has finished), argv and labels truncated to
a few KiB per exec, output in :class:`~execbus.console.output.OutputStore`'s
budget. Lifecycle events are optional (a worker or request may turn off
``exec.created``/``exec.started``), so an exec may first be seen at its output
or its exit: what is unknown stays ``None``.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from execbus.console.fleet import Fleet
from execbus.console.output import OutputStore
from execbus.console.stats import RESULTS, Stats
from execbus.wire.control import Announcement
from execbus.wire.events import (
    CreatedEvent,
    Event,
    ExitedEvent,
    FailedEvent,
    OutputEvent,
    StartedEvent,
)

STATES = ("created", "running", "exited", "failed")
STATE_FILTERS = (*STATES, "active", "finished")
RANK = {"created": 0, "running": 1, "exited": 2, "failed": 2}
MAX_ARGV_CHARS = 1024  # per exec, all arguments together
MAX_LABEL_CHARS = 1024  # per exec, all keys and values together
MAX_ENV_KEYS_CHARS = 512
MAX_MESSAGE_CHARS = 1024
ROW_ARGS = 16  # arguments shown in a list row
ROW_ARG_CHARS = 160
MAX_FILTER_CHARS = 256
_NO_LABELS: dict[str, str] = {}


def _ts(value: datetime | None) -> float | None:
    return value.timestamp() if value is not None else None


def _intern(text: str) -> str:
    return sys.intern(text) if len(text) <= 64 else text


def clip_argv(cmd: list[str], limit: int = MAX_ARGV_CHARS) -> tuple[tuple[str, ...], bool]:
    """``cmd`` cut to ``limit`` characters in all (argument count kept when it can be)."""
    out: list[str] = []
    used = 0
    for arg in cmd:
        if used + len(arg) > limit:
            out.append(arg[: max(0, limit - used)])
            return tuple(out), True
        out.append(_intern(arg))  # argv words repeat across execs (make, -c, ...)
        used += len(arg)
    return tuple(out), False


def clip_labels(labels: Mapping[str, str], limit: int = MAX_LABEL_CHARS) -> dict[str, str]:
    if not labels:
        return _NO_LABELS
    out: dict[str, str] = {}
    used = 0
    for key, value in labels.items():
        used += len(key) + len(value)
        if used > limit:
            break
        out[_intern(key)] = _intern(value)
    return out


@dataclass(slots=True)
class ExecView:
    """One exec as the console knows it (``None``: not known from the events seen)."""

    exec_id: str
    agent: str
    container_id: str
    seen_at: float  # when the console first heard of it (its clock)
    first_event: str  # the kind of that first event
    cmd: tuple[str, ...] | None = None
    cmd_truncated: bool = False
    env_keys: tuple[str, ...] = ()
    tty: bool | None = None
    labels: dict[str, str] = field(default_factory=lambda: _NO_LABELS)
    state: str = "created"
    pid: int | None = None
    created_at: float | None = None
    started_at: float | None = None
    finished_at: float | None = None
    event_at: float | None = None  # time of the exit event (the worker's clock)
    exit_code: int | None = None
    signal: str | None = None
    timed_out: bool = False
    error_code: str | None = None
    error_message: str | None = None
    output_chunks: int = 0
    output_bytes: int = 0
    first_output_at: float | None = None
    last_output_at: float | None = None
    dropped: int = 0  # output bytes over the capture limit (exit)
    gap: bool = False  # the console was disconnected while this exec was unfinished
    changed: int = 0  # store version of the last change

    @property
    def key(self) -> str:
        return f"{self.agent}/{self.exec_id}"

    @property
    def finished(self) -> bool:
        return self.state in ("exited", "failed")

    @property
    def result(self) -> str | None:
        if self.state == "failed":
            return "failed"
        if self.state != "exited":
            return None
        if self.timed_out:
            return "timed_out"
        if self.signal:
            return "signalled"
        return "ok" if self.exit_code == 0 else "nonzero"

    @property
    def duration(self) -> float | None:
        if self.started_at is None or self.finished_at is None:
            return None
        return max(0.0, self.finished_at - self.started_at)


@dataclass(frozen=True, slots=True)
class ExecFilter:
    """What the exec list shows; empty fields match everything."""

    agent: str = ""
    container: str | None = None  # "~" or "" is the agent's own host
    state: str = ""
    result: str = ""
    label_key: str = ""
    label_value: str | None = None
    q: str = ""  # part of the exec id (case-insensitive)

    @classmethod
    def parse(cls, params: Mapping[str, str]) -> ExecFilter:
        """From query parameters; unknown states/results are ignored."""

        def get(name: str) -> str:
            return (params.get(name) or "").strip()[:MAX_FILTER_CHARS]

        label = get("label")
        key, sep, value = label.partition("=")
        container = get("container")
        state, result = get("state"), get("result")
        return cls(
            agent=get("agent"),
            container=(None if not container else "" if container == "~" else container),
            state=state if state in STATE_FILTERS else "",
            result=result if result in RESULTS else "",
            label_key=key.strip(),
            label_value=value.strip() if sep else None,
            q=get("q").lower(),
        )

    @property
    def empty(self) -> bool:
        return self == ExecFilter()

    def matches(self, v: ExecView) -> bool:
        if self.agent and v.agent != self.agent:
            return False
        if self.container is not None and v.container_id != self.container:
            return False
        if self.state:
            if self.state == "active":
                if v.finished:
                    return False
            elif self.state == "finished":
                if not v.finished:
                    return False
            elif v.state != self.state:
                return False
        if self.result and v.result != self.result:
            return False
        if self.label_key:
            if self.label_key not in v.labels:
                return False
            if self.label_value is not None and v.labels[self.label_key] != self.label_value:
                return False
        return not self.q or self.q in v.exec_id.lower()


class ConsoleStore:
    """Everything the page shows, fed events and announcements."""

    def __init__(
        self,
        max_execs: int = 10_000,
        *,
        expiry: float = 3.0,
        window: int = 300,
        output: OutputStore | None = None,
    ) -> None:
        if max_execs < 1:
            raise ValueError("max_execs must be at least 1")
        self.max_execs = max_execs
        self.fleet = Fleet(expiry=expiry)
        self.stats = Stats(window)
        self.output = output or OutputStore()
        self._execs: dict[str, ExecView] = {}  # in the order first seen
        self._finished: dict[str, None] = {}  # finished execs, in the order they finished
        self.version = 0  # any change
        self.execs_version = 0  # a change of the execs (not of the fleet alone)
        self.events = 0
        self.events_by_type: dict[str, int] = {}
        self.evicted = 0
        self.malformed = 0  # set by the feed (what the subscriptions skipped)
        self.broker: dict[str, Any] = {"connected": False, "since": None, "error": ""}
        self.notices: dict[str, str] = {}  # why part of the view is not live (no worker yet)
        self.on_change: Callable[[], None] | None = None

    # -- input ------------------------------------------------------------

    def _changed(self) -> None:
        self.version += 1
        if self.on_change is not None:
            self.on_change()

    def apply_event(self, event: Event, now: float) -> ExecView:
        """Take one event (duplicates were dropped by the SDK), received at ``now``."""
        self.events += 1
        self.events_by_type[event.type] = self.events_by_type.get(event.type, 0) + 1
        key = f"{event.agent}/{event.exec_id}"
        view = self._execs.get(key)
        if view is None:
            view = ExecView(
                exec_id=event.exec_id,
                agent=_intern(event.agent),
                container_id=_intern(event.container_id),
                seen_at=now,
                first_event=event.type.removeprefix("exec."),
            )
            self._execs[key] = view
            self.stats.new_exec(view.agent, now)
            self._evict()
        view.gap = False
        if event.labels and view.labels is _NO_LABELS:
            view.labels = clip_labels(event.labels)
        if isinstance(event, CreatedEvent):
            view.cmd, view.cmd_truncated = clip_argv(event.cmd)
            view.env_keys = tuple(event.env_keys)
            if sum(map(len, view.env_keys)) > MAX_ENV_KEYS_CHARS:
                view.env_keys = clip_argv(list(event.env_keys), MAX_ENV_KEYS_CHARS)[0]
            view.tty = event.tty
            view.created_at = _ts(event.time)
        elif isinstance(event, StartedEvent):
            self._advance(view, "running")
            view.pid = event.pid
            view.started_at = _ts(event.started_at) or _ts(event.time)
        elif isinstance(event, OutputEvent):
            self._advance(view, "running")
            view.output_chunks += 1
            view.output_bytes += len(event.data)
            view.first_output_at = view.first_output_at or _ts(event.time)
            view.last_output_at = _ts(event.time)
            self.output.append(key, event.stream, event.data)
        elif isinstance(event, ExitedEvent):
            self._finish(view, "exited", event, now)
        elif isinstance(event, FailedEvent):
            self._finish(view, "failed", event, now)
        view.changed = self.version + 1
        self.execs_version += 1
        self._changed()
        return view

    def _advance(self, view: ExecView, state: str) -> None:
        if RANK[state] > RANK[view.state]:
            view.state = state

    def _finish(
        self, view: ExecView, state: str, event: ExitedEvent | FailedEvent, now: float
    ) -> None:
        if view.finished:
            return  # an exec ends once (a second, distinct end would be a worker bug)
        view.state = state
        view.event_at = _ts(event.time)
        if isinstance(event, ExitedEvent):
            exit = event.exit
            view.exit_code = exit.exit_code
            view.signal = exit.signal
            view.timed_out = exit.timed_out
            if exit.started_at is not None:
                view.started_at = _ts(exit.started_at)  # the agent's own clock: exact run time
            view.finished_at = _ts(exit.finished_at) or view.event_at
            view.dropped = exit.stdout_dropped + exit.stderr_dropped
            if view.output_chunks == 0:
                # Not streamed: show what the exit captured (its tail).
                for stream, data in (("stdout", exit.stdout), ("stderr", exit.stderr)):
                    if data:
                        tail = data[-self.output.per_exec :]
                        self.output.append(view.key, stream, tail, final=True)
            self.output.finish(view.key)
        else:
            view.error_code = event.error.code
            view.error_message = event.error.message[:MAX_MESSAGE_CHARS]
            self.output.finish(view.key)
            view.exit_code = event.error.exit_code
            view.finished_at = view.event_at
        e2e = (
            view.event_at - view.created_at
            if view.event_at is not None and view.created_at is not None
            else None
        )
        result = view.result or state
        self.stats.finished(view.agent, result, now, view.duration, e2e)
        self._finished[view.key] = None
        self._evict()

    def _evict(self) -> None:
        while len(self._execs) > self.max_execs:
            if self._finished:
                key = next(iter(self._finished))
                del self._finished[key]
            else:
                key = next(iter(self._execs))
            del self._execs[key]
            self.output.drop(key)
            self.evicted += 1

    def apply_announcement(self, announcement: Announcement, now: float) -> None:
        self.fleet.apply(announcement, now)
        self._changed()

    def tick(self, now: float) -> None:
        """Periodic upkeep (expire silent workers)."""
        if self.fleet.expire(now):
            self._changed()

    def set_broker(self, connected: bool, now: float, error: str = "") -> None:
        """The broker link changed; unfinished execs may have missed events meanwhile."""
        was = self.broker["connected"]
        if connected == was and error == self.broker["error"]:
            return
        self.broker = {"connected": connected, "since": now, "error": error}
        if was and not connected:
            for view in self._execs.values():
                if not view.finished:
                    view.gap = True
                    view.changed = self.version + 1
            self.execs_version += 1
        self._changed()

    def set_notice(self, topic: str, text: str) -> None:
        """Say (or, with ``""``, stop saying) why part of the view is not live."""
        if self.notices.get(topic, "") == text:
            return
        if text:
            self.notices[topic] = text
        else:
            self.notices.pop(topic, None)
        self._changed()

    # -- queries ----------------------------------------------------------

    def __len__(self) -> int:
        return len(self._execs)

    def get(self, agent: str, exec_id: str) -> ExecView | None:
        return self._execs.get(f"{agent}/{exec_id}")

    def newest_first(self) -> Iterator[ExecView]:
        return reversed(self._execs.values())

    def query(self, flt: ExecFilter, limit: int = 200) -> tuple[list[dict[str, Any]], int]:
        """The newest ``limit`` execs matching ``flt`` (as rows) and how many match."""
        rows: list[dict[str, Any]] = []
        if flt.empty:
            for view in self.newest_first():
                if len(rows) >= limit:
                    break
                rows.append(row(view))
            return rows, len(self._execs)
        matched = 0
        for view in self.newest_first():
            if flt.matches(view):
                matched += 1
                if len(rows) < limit:
                    rows.append(row(view))
        return rows, matched

    def counts(self) -> dict[str, Any]:
        """States of the execs held, and the console's own counters."""
        states = dict.fromkeys(STATES, 0)
        for view in self._execs.values():
            states[view.state] += 1
        return {
            "execs": len(self._execs),
            "max_execs": self.max_execs,
            "states": states,
            "events": self.events,
            "malformed": self.malformed,
            "evicted": self.evicted,
        }

    def agents(self) -> list[str]:
        """Agent names seen in events or announcements (for the filter's choices)."""
        names = {view.agent for view in self._execs.values()}
        for worker in self.fleet.workers.values():
            names |= worker.owned
        return sorted(names)

    def detail(self, agent: str, exec_id: str) -> dict[str, Any] | None:
        view = self.get(agent, exec_id)
        if view is None:
            return None
        doc = row(view, full=True)
        doc.update(
            env_keys=list(view.env_keys),
            tty=view.tty,
            pid=view.pid,
            error_message=view.error_message,
            first_event=view.first_event,
            output_chunks=view.output_chunks,
            output_bytes=view.output_bytes,
            dropped=view.dropped,
            timeline=timeline(view),
        )
        return doc


def row(view: ExecView, full: bool = False) -> dict[str, Any]:
    """An exec as the list (or, ``full``, the detail view) shows it. Never env values."""
    cmd: list[str] | None = None
    more = view.cmd_truncated
    if view.cmd is not None:
        if full:
            cmd = list(view.cmd)
        else:
            cmd = [arg[:ROW_ARG_CHARS] for arg in view.cmd[:ROW_ARGS]]
            more = more or len(view.cmd) > ROW_ARGS or any(len(a) > ROW_ARG_CHARS for a in cmd)
    return {
        "key": view.key,
        "id": view.exec_id,
        "agent": view.agent,
        "container": view.container_id,
        "cmd": cmd,
        "cmd_more": more,
        "user": None,  # not in the events (yet)
        "state": view.state,
        "result": view.result,
        "exit_code": view.exit_code,
        "signal": view.signal,
        "timed_out": view.timed_out,
        "error": view.error_code,
        "labels": view.labels,
        "seen_at": view.seen_at,
        "created_at": view.created_at,
        "started_at": view.started_at,
        "finished_at": view.finished_at,
        "duration": view.duration,
        "gap": view.gap,
        "output": view.output_chunks > 0,
    }


def timeline(view: ExecView) -> list[dict[str, Any]]:
    """The lifecycle as far as the events tell, in time order."""
    steps: list[dict[str, Any]] = []
    if view.created_at is not None:
        steps.append({"kind": "created", "time": view.created_at, "note": ""})
    if view.started_at is not None:
        note = f"pid {view.pid}" if view.pid is not None else ""
        steps.append({"kind": "started", "time": view.started_at, "note": note})
    if view.first_output_at is not None:
        note = f"{view.output_chunks} chunks, {view.output_bytes} bytes"
        steps.append({"kind": "output", "time": view.first_output_at, "note": note})
    if view.finished:
        if view.state == "failed":
            note = f"{view.error_code}: {view.error_message}"
        else:
            note = f"exit code {view.exit_code}"
            if view.signal:
                note += f" ({view.signal})"
            if view.timed_out:
                note += ", timed out"
        steps.append({"kind": view.state, "time": view.finished_at, "note": note})
    if view.first_event not in ("created",):
        steps.insert(
            0,
            {
                "kind": "seen",
                "time": view.seen_at,
                "note": f"first seen at exec.{view.first_event} "
                "(earlier lifecycle events off, or before the console started)",
            },
        )
    return steps
