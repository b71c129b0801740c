"""Prometheus metrics of one worker (its own registry, so tests can run many workers)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from execbus.worker.acks import Action, Disposition


class WorkerMetrics:
    """Counters, gauges and histograms exposed on ``/metrics``."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter(
            "execbus_requests", "Requests handled", ["type", "outcome"], registry=r
        )
        self.request_seconds = Histogram(
            "execbus_request_seconds",
            "Request handling latency (delivery to settle)",
            ["type"],
            buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1, 5),
            registry=r,
        )
        self.execs = Counter(
            "execbus_execs_finished",
            "Execs finished, by state and result",
            ["agent", "state", "result"],
            registry=r,
        )
        self.dead_letters = Counter(
            "execbus_dead_lettered",
            "Messages dead-lettered, by reason code",
            ["reason"],
            registry=r,
        )
        self.agent_retries = Counter(
            "execbus_agent_retries", "Agent call retries", ["agent"], registry=r
        )
        self.agent_rpc_seconds = Histogram(
            "execbus_agent_rpc_seconds", "Agent start latency", ["agent"], registry=r
        )
        self.broker_reconnects = Counter(
            "execbus_broker_reconnects", "Broker (re)connections", registry=r
        )
        self.agent_reconnects = Counter(
            "execbus_agent_reconnects", "Agent (re)connections", ["agent"], registry=r
        )
        self.agent_link_down = Counter(
            "execbus_agent_link_down",
            "Changes of an owned agent's link to down (or to another reason)",
            ["agent"],
            registry=r,
        )
        self.agent_owned = Gauge(
            "execbus_agent_owned", "1 while this worker owns the agent", ["agent"], registry=r
        )
        self.agent_connected = Gauge(
            "execbus_agent_connected",
            "1 while this worker's link to the agent is up (see execbus_agent_owned)",
            ["agent"],
            registry=r,
        )
        self.registry_size = Gauge(
            "execbus_registry_records",
            "Exec records held, by state",
            ["agent", "state"],
            registry=r,
        )
        self.inflight = Gauge("execbus_inflight_requests", "Requests being handled", registry=r)
        self.owned = Gauge("execbus_agents_owned", "Agents this worker owns", registry=r)
        self.info = Gauge(
            "execbus_worker_info",
            "Always 1: the worker's version and event loop",
            ["version", "event_loop"],
            registry=r,
        )

    def observe_request(self, request_type: str, disposition: Disposition, seconds: float) -> None:
        self.requests.labels(request_type, disposition.action.value).inc()
        self.request_seconds.labels(request_type).observe(seconds)
        if disposition.action is Action.DEAD_LETTER:
            self.dead_letters.labels(disposition.reason.partition(":")[0] or "unknown").inc()

    def observe_finished(self, agent: str, state: str, result: str) -> None:
        """An exec finished: ``result`` is ok / nonzero / signalled / timed_out / an error code."""
        self.execs.labels(agent, state, result).inc()

    def render(self) -> bytes:
        return generate_latest(self.registry)
