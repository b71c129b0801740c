"""The console's view model: the last N execs, the fleet, the charts' counters.

Pure and synchronous: :meth:`ConsoleStore.apply_event` takes a parsed
:data:`~execbus.wire.events.Event` (from the SDK's subscription) and the time
it arrived; nothing here does I/O or reads a clock. The page's queries
(:meth:`ConsoleStore.query`, :meth:`ConsoleStore.detail`) return plain JSON-able
dicts.

Bounds: at most ``max_execs`` execs (the oldest *finished* exec goes first;
an unfinished one only when none has finished), argv and labels truncated to
a few KiB per exec (:mod:`execbus.console.views`), output in
:class:`~execbus.console.output.OutputStore`'s budget. Lifecycle events are
optional (a worker or request may turn off ``exec.created``/``exec.started``),
so an exec may first be seen at its output or its exit: what is unknown stays
``None``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

from execbus.console.fleet import Fleet
from execbus.console.output import OutputStore
from execbus.console.stats import Stats
from execbus.console.views import STATES, ExecFilter, ExecView, intern, row, timeline
from execbus.wire.control import Announcement
from execbus.wire.events import Event, ExitedEvent, OutputEvent

__all__ = ["ConsoleStore", "ExecFilter", "ExecView"]


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
                agent=intern(event.agent),
                container_id=intern(event.container_id),
                seen_at=now,
                first_event=event.type.removeprefix("exec."),
            )
            self._execs[key] = view
            self.stats.new_exec(view.agent, now)
            self._evict()
        if view.apply(event):
            self._ended(view, event, now)
        elif isinstance(event, OutputEvent):
            self.output.append(key, event.stream, event.data)
        view.changed = self.version + 1
        self.execs_version += 1
        self._changed()
        return view

    def _ended(self, view: ExecView, event: Event, now: float) -> None:
        """The exec's first end: its output is complete, the charts count it."""
        if isinstance(event, ExitedEvent) and view.output_chunks == 0:
            # Not streamed: show what the exit captured (its tail).
            for stream, data in (("stdout", event.exit.stdout), ("stderr", event.exit.stderr)):
                if data:
                    tail = data[-self.output.per_exec :]
                    self.output.append(view.key, stream, tail, final=True)
        self.output.finish(view.key)
        result = view.result or view.state
        self.stats.finished(view.agent, result, now, view.duration, view.e2e)
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
