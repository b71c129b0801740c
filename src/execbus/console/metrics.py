"""The console's own Prometheus metrics (its own registry), served on ``/metrics``."""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from execbus.console.store import ConsoleStore


class _StoreCollector(Collector):
    """Gauges and counters read from the store when scraped."""

    def __init__(self, metrics: ConsoleMetrics) -> None:
        self._metrics = metrics

    def collect(self) -> Iterator[Metric]:
        store = self._metrics.store
        execs = GaugeMetricFamily(
            "execbus_console_execs", "Execs held in the view, by state", labels=["state"]
        )
        for state, n in store.counts()["states"].items():
            execs.add_metric([state], n)
        yield execs
        yield GaugeMetricFamily(
            "execbus_console_execs_max", "Most execs the view holds", value=store.max_execs
        )
        yield CounterMetricFamily(
            "execbus_console_execs_evicted", "Execs evicted to stay bounded", value=store.evicted
        )
        yield CounterMetricFamily(
            "execbus_console_events_malformed",
            "Messages on <ns>.events or <ns>.control that could not be parsed (skipped)",
            value=store.malformed,
        )
        yield GaugeMetricFamily(
            "execbus_console_output_bytes",
            "Output kept for the exec view (text and overhead)",
            value=store.output.total,
        )
        yield GaugeMetricFamily(
            "execbus_console_broker_connected",
            "1 while the console's broker connection is up",
            value=1 if store.broker["connected"] else 0,
        )
        yield GaugeMetricFamily(
            "execbus_console_workers", "Workers in the fleet view", value=len(store.fleet.workers)
        )
        yield GaugeMetricFamily(
            "execbus_console_streams", "Pages following the view live", value=self._metrics.streams
        )
        yield GaugeMetricFamily(
            "execbus_console_sessions", "Logged-in sessions", value=self._metrics.sessions
        )


class ConsoleMetrics:
    def __init__(self, store: ConsoleStore) -> None:
        self.store = store
        self.streams = 0
        self.sessions = 0
        self.registry = CollectorRegistry()
        r = self.registry
        self.events = Counter(
            "execbus_console_events", "Events applied to the view, by type", ["type"], registry=r
        )
        self.announcements = Counter(
            "execbus_console_announcements", "Worker announcements received", registry=r
        )
        self.event_delay = Histogram(
            "execbus_console_event_delay_seconds",
            "From an event's time (the worker's clock) to the console receiving it",
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 10),
            registry=r,
        )
        self.logins = Counter(
            "execbus_console_logins", "Login attempts, by outcome", ["outcome"], registry=r
        )
        self.signals = Counter(
            "execbus_console_signals",
            "Signals sent from the page, by outcome",
            ["outcome"],
            registry=r,
        )
        self.broker_connects = Counter(
            "execbus_console_broker_connects", "Broker connections made (1 at start)", registry=r
        )
        r.register(_StoreCollector(self))

    def render(self) -> bytes:
        return generate_latest(self.registry)
