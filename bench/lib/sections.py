"""The sections of the result, one dataclass per phase (see ``report.py``).

Every section has a ``key``: the field of :class:`~bench.lib.report.BenchResult`
that holds it. ``legacy()`` gives the flat keys earlier runs printed (the
docs quote them).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol

from bench.lib.measure import CpuReport, Latency
from bench.lib.profile import StackSummary


class Section(Protocol):
    @property
    def key(self) -> str: ...


@dataclass
class SpawnSection:
    """The machine's limit: raw asyncio spawns of the command."""

    per_s: float
    by_concurrency: dict[str, float]
    pidfd_per_s: float | None
    c1_p50_ms: float | None
    cpu: CpuReport
    key = "spawn"

    def legacy(self) -> dict[str, Any]:
        return {
            "spawn_per_s": self.per_s,
            "spawn_by_concurrency": self.by_concurrency,
            "spawn_pidfd_per_s": self.pidfd_per_s,
        }


@dataclass
class AgentSection:
    """Execs through the agent alone (``AgentClient``: start, exit, ack)."""

    per_s: float
    by_concurrency: dict[str, float]
    c1_p50_ms: float | None
    cpu: CpuReport
    key = "agent"

    def legacy(self) -> dict[str, Any]:
        return {"agent_per_s": self.per_s, "agent_by_concurrency": self.by_concurrency}


@dataclass
class E2eSection:
    """End to end through the bus, in one lifecycle-event mode.

    ``full``: ``exec.created``, ``exec.started`` and the exit notification;
    ``lean``: the workers run with ``EXECBUS_LIFECYCLE_EVENTS=none`` and each
    request asks ``lifecycle_events: []`` (the exit notification only).
    """

    mode: str
    worker_lifecycle_events: str
    request_lifecycle_events: list[str] | None
    per_s: dict[str, float]
    peak_per_s: float
    peak_concurrency: int
    latency: Latency
    cpu: dict[int, CpuReport]
    cpu_ms_per_exec: dict[str, float]  # at the peak, by role (client, broker, worker, ...)
    cpu_ms_per_exec_total: float
    errors: dict[str, dict[str, int]] = field(default_factory=dict)
    vs_celery_throughput: float | None = None
    vs_celery_p50: float | None = None

    @property
    def key(self) -> str:
        return self.mode

    def legacy(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "e2e_per_s": self.per_s,
            "e2e_peak_per_s": self.peak_per_s,
            "e2e_p50_ms": self.latency.p50,
            "e2e_p99_ms": self.latency.p99,
            "e2e_latency_ms": self.latency,
        }
        if self.errors:
            out["errors"] = self.errors
        return out


@dataclass
class RuncSection:
    """Container execs: ``runc exec`` alone, through the agent, end to end."""

    runc_exec_ms: float | None = None
    agent_runc_ms: float | None = None
    e2e_runc_ms: float | None = None
    runc_state_ms: float | None = None
    n: int = 0
    reason: str | None = None  # why there are no figures
    key = "runc"

    def legacy(self) -> dict[str, Any]:
        detail: dict[str, Any]
        if self.reason is not None:
            detail = {"reason": self.reason}
        else:
            agent, cli, e2e = self.agent_runc_ms, self.runc_exec_ms, self.e2e_runc_ms
            detail = {
                "n": self.n,
                "runc_state_ms": self.runc_state_ms,
                "agent_runc_ms": agent,
                "agent_overhead_ms": round(agent - cli, 2) if agent and cli else None,
                "bus_overhead_ms": round(e2e - agent, 2) if agent and e2e else None,
            }
        return {
            "runc_exec_ms": self.runc_exec_ms,
            "e2e_runc_ms": self.e2e_runc_ms,
            "agent_runc_ms": self.agent_runc_ms,
            "runc": detail,
        }


STAGES = (
    ("client_to_worker", "request sent -> worker built exec.created"),
    ("worker_to_agent", "exec.created -> agent began the exec (agent call)"),
    ("in_agent", "agent began -> process ended and output drained (spawn, run; runc state+exec)"),
    ("agent_to_worker", "process ended -> worker built exec.exited"),
    ("worker_to_client", "exec.exited -> client has the result (reply, delivery, parse)"),
)


@dataclass
class Stages:
    """Median ms of each stage of a concurrency-1 exec (see :data:`STAGES`)."""

    n: int
    cmd: list[str]
    client_to_worker: float | None = None
    worker_to_agent: float | None = None
    in_agent: float | None = None
    agent_to_worker: float | None = None
    worker_to_client: float | None = None
    total: float | None = None


@dataclass
class BreakdownSection:
    host: Stages
    runc: Stages | None = None
    stages: dict[str, str] = field(default_factory=lambda: dict(STAGES))
    key = "breakdown"


@dataclass
class BrokerHopsSection:
    """One confirmed publish to its delivery to a consumer in the same process: the floor
    of a hop through RabbitMQ (a quorum queue: requests; an exclusive classic one: replies)."""

    quorum: Latency
    classic: Latency
    key = "broker_hops"


@dataclass
class CelerySection:
    per_s: float | None = None
    p50_ms: float | None = None
    p99_ms: float | None = None
    n: int | None = None
    celery_version: str | None = None
    worker_processes: int | None = None
    error: str | None = None
    when: str = ""
    key = "celery"


@dataclass
class InteractiveSection:
    """Keystroke -> echo through the bus: ``execbus run -it`` under a pty (``cli``), and
    the SDK's stdin requests + output events from this process (``sdk``)."""

    cmd: list[str]
    cli: Latency
    sdk: Latency
    errors: dict[str, int] = field(default_factory=dict)
    key = "interactive"


@dataclass
class StreamSection:
    """``stream_output`` of a command writing ``bytes`` through the bus to the SDK."""

    bytes: int
    received: int
    chunks: int
    seconds: float
    mb_per_s: float
    exit_code: int | None
    agent_before_mb: float | None
    agent_peak_mb: float | None
    worker_before_mb: float | None
    worker_peak_mb: float | None
    worker_growth_mb: float | None
    key = "stream"


@dataclass
class ScalePoint:
    workers: int
    agents: int
    concurrency: int
    per_s: float
    cpu_ms_per_exec: dict[str, float]  # by role
    cpu_ms_per_exec_total: float
    cpu_share_ours: float
    cpu_share_others: float | None
    total_vs_1x1: float | None = None


@dataclass
class ScalingSection:
    mode: str
    points: list[ScalePoint]
    key = "scaling"


@dataclass
class ProcessProfile:
    e2e_per_s_under_profiler: float
    file: str
    summary: StackSummary


@dataclass
class ProfileSection:
    mode: str
    processes: dict[str, ProcessProfile | str]  # a string: why there is none
    key = "profile"


@dataclass
class WorkerRssSection:
    """Worker ``VmRSS`` with the registry holding 100,000 finished execs."""

    worker_rss_mb: float | None
    records: int
    start_mb: float | None
    after_warmup_mb: float | None
    after_warmup_records: int
    measured_mb: float | None
    mb_per_1000_records: float | None
    mode: str
    fill_per_s: float | None = None
    key = "worker_rss"

    def legacy(self) -> dict[str, Any]:
        info = {
            k: getattr(self, k)
            for k in (
                "records",
                "start_mb",
                "after_warmup_mb",
                "after_warmup_records",
                "measured_mb",
                "mb_per_1000_records",
                "mode",
            )
        }
        out = {"worker_rss_mb": self.worker_rss_mb, "worker_rss": info}
        if self.fill_per_s is not None:
            out["rss_fill_per_s"] = self.fill_per_s
        return out


@dataclass
class FloodSection:
    """Agent ``VmRSS`` while a 100 MiB output runs through (captured up to the limit)."""

    before_mb: float | None
    peak_mb: float | None
    vmhwm_mb: float | None
    flood_bytes: int
    captured: int
    dropped: int
    exit_code: int | None
    seconds: float | None
    key = "flood"

    def legacy(self) -> dict[str, Any]:
        info = {k: v for k, v in vars(self).items() if k != "key"}
        return {"agent_rss_mb": self.peak_mb, "agent_rss": info}
