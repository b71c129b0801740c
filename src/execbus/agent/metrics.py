"""The agent's counters, rendered in the Prometheus text exposition format (version 0.0.4).

Standard library only: the agent must run on a bare ``python3``, so there is
no ``prometheus_client`` here. One :class:`AgentMetrics` object is updated at
the few places where execs start and finish (the supervisor) and where
connections open and frames are rejected (the core and the session); the
HTTP endpoint (``execbus.agent.http``) renders it on ``/metrics``.
"""

from __future__ import annotations

import time
from typing import Any

from execbus.agent import results

# How an exec ended; ``failed`` means it could not be spawned.
RESULTS = ("ok", "nonzero", "signalled", "timed_out", "failed")
# Why a frame was refused: undecodable, or larger than --max-frame.
FRAME_REASONS = ("bad", "oversized")
STREAMS = ("stdout", "stderr")

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


def exit_result(exit_info: dict[str, Any] | None) -> str:
    """``ok`` / ``nonzero`` / ``signalled`` / ``timed_out``, or ``failed`` (no exit: the
    process was never spawned)."""
    if exit_info is None:
        return "failed"
    return results.exit_result(
        int(exit_info.get("exit_code", -1)),
        exit_info.get("signal"),
        bool(exit_info.get("timed_out")),
    )


class AgentMetrics:
    """Counters and gauges of one agent process (monotonic since it started)."""

    def __init__(self) -> None:
        self.started_at = time.time()
        self._t0 = time.monotonic()
        self.execs_started = 0
        self.execs_running = 0
        self.execs_finished = dict.fromkeys(RESULTS, 0)
        self.connections_accepted = 0
        self.connections_open = 0
        self.frames_rejected = dict.fromkeys(FRAME_REASONS, 0)
        self.output_captured = dict.fromkeys(STREAMS, 0)
        self.output_dropped = dict.fromkeys(STREAMS, 0)

    # -- updates ----------------------------------------------------------

    def exec_started(self, *, spawned: bool) -> None:
        """A start was attempted: ``spawned`` if a process runs now (else it failed to start)."""
        self.execs_started += 1
        if spawned:
            self.execs_running += 1

    def exec_finished(self, exit_info: dict[str, Any] | None) -> None:
        """An exec ended: its protocol ``exit`` object, or None when it failed to start."""
        result = exit_result(exit_info)
        self.execs_finished[result] += 1
        if exit_info is None:
            return
        self.execs_running = max(0, self.execs_running - 1)
        for stream in STREAMS:
            self.output_captured[stream] += int(exit_info.get(f"{stream}_len") or 0)
            self.output_dropped[stream] += int(exit_info.get(f"{stream}_dropped") or 0)

    def connection_opened(self) -> None:
        self.connections_accepted += 1
        self.connections_open += 1

    def connection_closed(self) -> None:
        self.connections_open = max(0, self.connections_open - 1)

    def frame_rejected(self, code: str) -> None:
        """A frame was refused; ``code`` is the protocol error code (``frame_too_large``, ...)."""
        self.frames_rejected["oversized" if code == "frame_too_large" else "bad"] += 1

    # -- exposition -------------------------------------------------------

    @property
    def uptime(self) -> float:
        return time.monotonic() - self._t0

    def render(self, info: dict[str, str] | None = None) -> bytes:
        """The text exposition format; ``info`` becomes the labels of ``execbus_agent_info``."""
        out = _Exposition()
        if info:
            out.metric(
                "execbus_agent_info", "gauge", "Agent identity (value is always 1).", 1, info
            )
        out.metric(
            "execbus_agent_execs_started_total",
            "counter",
            "Execs the agent tried to spawn (each ends in execbus_agent_execs_finished_total).",
            self.execs_started,
        )
        out.by_label(
            "execbus_agent_execs_finished_total",
            "counter",
            "Execs ended, by result (failed: could not be spawned).",
            "result",
            self.execs_finished,
        )
        out.metric(
            "execbus_agent_execs_running",
            "gauge",
            "Execs whose process is running.",
            self.execs_running,
        )
        out.metric(
            "execbus_agent_connections",
            "gauge",
            "Client connections open now.",
            self.connections_open,
        )
        out.metric(
            "execbus_agent_connections_accepted_total",
            "counter",
            "Client connections accepted.",
            self.connections_accepted,
        )
        out.by_label(
            "execbus_agent_frames_rejected_total",
            "counter",
            "Frames refused, by reason (bad: undecodable; oversized: above --max-frame).",
            "reason",
            self.frames_rejected,
        )
        out.by_label(
            "execbus_agent_output_captured_bytes_total",
            "counter",
            "Output bytes captured for finished execs, by stream.",
            "stream",
            self.output_captured,
        )
        out.by_label(
            "execbus_agent_output_dropped_bytes_total",
            "counter",
            "Output bytes over the capture limit (counted, not kept), by stream.",
            "stream",
            self.output_dropped,
        )
        out.metric(
            "execbus_agent_uptime_seconds",
            "gauge",
            "Seconds since the agent started.",
            round(self.uptime, 3),
        )
        out.metric(
            "execbus_agent_start_time_seconds",
            "gauge",
            "Unix time the agent started at.",
            round(self.started_at, 3),
        )
        return out.encode()


class _Exposition:
    def __init__(self) -> None:
        self._lines: list[str] = []

    def metric(
        self,
        name: str,
        kind: str,
        help_text: str,
        value: float,
        labels: dict[str, str] | None = None,
    ) -> None:
        """One family with a single sample."""
        self.family(name, kind, help_text)
        self.sample(name, value, labels)

    def by_label(
        self, name: str, kind: str, help_text: str, label: str, counts: dict[str, int]
    ) -> None:
        """One family with a sample per value of ``label``."""
        self.family(name, kind, help_text)
        for value, count in counts.items():
            self.sample(name, count, {label: value})

    def family(self, name: str, kind: str, help_text: str) -> None:
        self._lines.append(f"# HELP {name} {_escape_help(help_text)}")
        self._lines.append(f"# TYPE {name} {kind}")

    def sample(self, name: str, value: float, labels: dict[str, str] | None = None) -> None:
        if labels:
            inner = ",".join(f'{k}="{_escape_label(v)}"' for k, v in labels.items())
            name = f"{name}{{{inner}}}"
        self._lines.append(f"{name} {value}")

    def encode(self) -> bytes:
        return ("\n".join(self._lines) + "\n").encode()


def _escape_help(text: str) -> str:
    return text.replace("\\", "\\\\").replace("\n", "\\n")


def _escape_label(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')
