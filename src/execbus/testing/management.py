"""The broker's own counters, read from a node's management HTTP API.

Used by the scale-out benchmark and its test to measure what execbus costs
the broker: operations (publishes, deliveries, acks, declares, channel and
connection churn) as the broker counts them, and the node's memory.
Start the node with ``RabbitNode(management=True)``; its statistics are
collected every second (see :mod:`execbus.testing.broker`).
"""

from __future__ import annotations

import base64
import json
import time
import urllib.parse
import urllib.request
from dataclasses import dataclass
from typing import Any

#: Message operations, from the overview's ``message_stats``.
MESSAGE_OPS = ("publish", "deliver_get", "ack", "redeliver", "return_unroutable", "get_empty")
#: Object churn, from the overview's ``churn_rates``.
CHURN_OPS = (
    "queue_declared",
    "queue_created",
    "queue_deleted",
    "channel_created",
    "channel_closed",
    "connection_created",
    "connection_closed",
)


@dataclass(frozen=True)
class Counters:
    """The broker's cumulative operation counts at one moment."""

    at: float  # when they were read (time.monotonic())
    ops: dict[str, int]

    def rates(self, earlier: Counters) -> dict[str, float]:
        """Operations per second since ``earlier``, by operation (and ``total``)."""
        span = max(self.at - earlier.at, 1e-9)
        rates = {k: (v - earlier.ops.get(k, 0)) / span for k, v in self.ops.items()}
        rates["total"] = sum(rates.values())
        return rates


class Management:
    """A minimal client of the management API (GET only)."""

    def __init__(self, base_url: str, user: str = "guest", password: str = "guest") -> None:
        self.base_url = base_url.rstrip("/")
        token = base64.b64encode(f"{user}:{password}".encode()).decode()
        self._auth = f"Basic {token}"

    def get(self, path: str) -> Any:
        request = urllib.request.Request(
            f"{self.base_url}/api/{path}", headers={"Authorization": self._auth}
        )
        with urllib.request.urlopen(request, timeout=10) as response:
            return json.loads(response.read())

    def counters(self) -> Counters:
        """Cumulative message and churn counts (they move once per statistics interval,
        so rates over a window of N seconds are good to about 1/N)."""
        overview = self.get("overview")
        stats, churn = overview.get("message_stats", {}), overview.get("churn_rates", {})
        ops = {k: int(stats.get(k, 0)) for k in MESSAGE_OPS}
        ops.update({k: int(churn.get(k, 0)) for k in CHURN_OPS})
        return Counters(at=time.monotonic(), ops=ops)

    def node_name(self) -> str:
        return str(self.get("overview")["node"])

    def memory(self, timeout: float = 15.0) -> int:
        """Bytes the node uses (its ``mem_used``; a node that just started has none
        until its first statistics, so wait for them)."""
        node = urllib.parse.quote(self.node_name(), safe="")
        deadline = time.monotonic() + timeout
        while (used := self.get(f"nodes/{node}").get("mem_used")) is None:
            if time.monotonic() > deadline:
                raise TimeoutError("the node reports no memory use")
            time.sleep(0.5)
        return int(used)

    def memory_breakdown(self) -> dict[str, int]:
        """The node's memory by category (``quorum_queue_procs``, ``connection_readers``...)."""
        node = urllib.parse.quote(self.node_name(), safe="")
        memory = self.get(f"nodes/{node}/memory")["memory"]
        return {k: int(v) for k, v in memory.items() if isinstance(v, int)}

    def object_totals(self) -> dict[str, int]:
        """Connections, channels, queues, consumers and exchanges on the node now."""
        totals = self.get("overview").get("object_totals", {})
        return {k: int(v) for k, v in totals.items()}
