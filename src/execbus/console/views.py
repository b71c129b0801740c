"""One exec as the console knows it, what selects it, and how the page shows it.

:class:`ExecView` is built from events only (any of them may be the first
seen: lifecycle events are optional, and the console may start late), so
what no event told stays ``None``; :meth:`ExecView.apply` takes one event.
Argv, labels and env keys are clipped to a few KiB per exec.
:class:`ExecFilter` is the list's query; :func:`row` and :func:`timeline`
are the JSON the page gets (never env values).
"""

from __future__ import annotations

import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from execbus.console.stats import RESULTS
from execbus.wire import events as ev

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


def intern(text: str) -> str:
    return sys.intern(text) if len(text) <= 64 else text


def clip_argv(cmd: list[str], limit: int = MAX_ARGV_CHARS) -> tuple[tuple[str, ...], bool]:
    """``cmd`` cut to ``limit`` characters in all (argument count kept when it can be)."""
    out: list[str] = []
    used = 0
    for arg in cmd:
        if used + len(arg) > limit:
            out.append(arg[: max(0, limit - used)])
            return tuple(out), True
        out.append(intern(arg))  # argv words repeat across execs (make, -c, ...)
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
        out[intern(key)] = intern(value)
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
    user: str | None = None  # config.user; None: the agent's default, or not told
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

    @property
    def e2e(self) -> float | None:
        """From the created event to the end event (the worker's clock)."""
        if self.event_at is None or self.created_at is None:
            return None
        return self.event_at - self.created_at

    # -- what an event tells --------------------------------------------------

    def apply(self, event: ev.Event) -> bool:
        """Take what ``event`` says about this exec; True when it ended the exec (its
        first exit or failure: an exec ends once, a second end would be a worker bug)."""
        self.gap = False
        if event.labels and self.labels is _NO_LABELS:
            self.labels = clip_labels(event.labels)
        if isinstance(event, ev.CreatedEvent):
            self.cmd, self.cmd_truncated = clip_argv(event.cmd)
            self.env_keys = tuple(event.env_keys)
            if sum(map(len, self.env_keys)) > MAX_ENV_KEYS_CHARS:
                self.env_keys = clip_argv(list(event.env_keys), MAX_ENV_KEYS_CHARS)[0]
            self.tty = event.tty
            self.user = intern(event.user) if event.user is not None else None
            self.created_at = _ts(event.time)
        elif isinstance(event, ev.StartedEvent):
            self._advance("running")
            self.pid = event.pid
            self.started_at = _ts(event.started_at) or _ts(event.time)
        elif isinstance(event, ev.OutputEvent):
            self._advance("running")
            self.output_chunks += 1
            self.output_bytes += len(event.data)
            self.first_output_at = self.first_output_at or _ts(event.time)
            self.last_output_at = _ts(event.time)
        elif isinstance(event, ev.ExitedEvent | ev.FailedEvent) and not self.finished:
            self._end(event)
            return True
        return False

    def _advance(self, state: str) -> None:
        if RANK[state] > RANK[self.state]:
            self.state = state

    def _end(self, event: ev.ExitedEvent | ev.FailedEvent) -> None:
        self.event_at = _ts(event.time)
        if isinstance(event, ev.ExitedEvent):
            self.state = "exited"
            exit = event.exit
            self.exit_code = exit.exit_code
            self.signal = exit.signal
            self.timed_out = exit.timed_out
            if exit.started_at is not None:
                self.started_at = _ts(exit.started_at)  # the agent's own clock: exact run time
            self.finished_at = _ts(exit.finished_at) or self.event_at
            self.dropped = exit.stdout_dropped + exit.stderr_dropped
        else:
            self.state = "failed"
            self.error_code = event.error.code
            self.error_message = event.error.message[:MAX_MESSAGE_CHARS]
            self.exit_code = event.error.exit_code
            self.finished_at = self.event_at


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
        "user": view.user,  # from exec.created: null when not seen or the agent's default
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
