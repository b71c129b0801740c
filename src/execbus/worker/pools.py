"""Pool jobs: a request names a pool instead of an agent.

Requests published with routing key ``pool.<pool>`` land in the shared
quorum queue ``<ns>.pool.<pool>``; every worker that owns at least one agent
of the pool consumes it (competing consumers). The worker that takes a
request places it on the least-loaded agent of the pool it owns, then
handles it exactly like a request for that agent: from then on the exec is
addressed by its agent (the reply and the events name it).

Only ``exec.run`` and ``exec.create`` may go to a pool; everything else
addresses an exec, hence its agent.
"""

from __future__ import annotations

import logging
import time

from aio_pika.abc import AbstractIncomingMessage

from execbus.errors import ConfigError, InvalidRequest
from execbus.wire.ids import is_valid_name
from execbus.wire.requests import CreateRequest, RunRequest
from execbus.worker.acks import Disposition, settle
from execbus.worker.consumer import parse_delivery
from execbus.worker.publisher import Publisher
from execbus.worker.runtime import AgentRuntime

log = logging.getLogger("execbus.worker")


def parse_pool_spec(spec: str) -> tuple[str, list[str]]:
    """``POOL=AGENT[+AGENT...]`` -> (pool, agents)."""
    pool, sep, members = spec.partition("=")
    agents = [a.strip() for a in members.split("+") if a.strip()]
    if not sep or not is_valid_name(pool.strip()) or not agents:
        raise ConfigError(f"pool {spec!r}: expected POOL=AGENT[+AGENT...]")
    return pool.strip(), agents


class PoolConsumer:
    """Consumes one pool's queue and places each request on an owned agent."""

    def __init__(
        self, pool: str, runtimes: list[AgentRuntime], publisher: Publisher, max_bytes: int
    ) -> None:
        self.pool = pool
        self.runtimes = runtimes
        self.publisher = publisher
        self.max_bytes = max_bytes

    def owned(self) -> list[AgentRuntime]:
        return [rt for rt in self.runtimes if rt.owner and rt.consumer is not None]

    async def on_message(self, message: AbstractIncomingMessage) -> None:
        started = time.perf_counter()
        owned = self.owned()
        if not owned:  # ownership moved meanwhile: let another worker take it
            await settle(message, Disposition.requeue("no owned agent"), self.publisher)
            return
        target = min(owned, key=lambda rt: (rt.load(), rt.name))
        assert target.consumer is not None
        try:
            request = parse_delivery(message, self.max_bytes)
            if not isinstance(request, RunRequest | CreateRequest):
                raise InvalidRequest(
                    f"{request.type} cannot go to a pool: address the exec's agent instead"
                )
            if request.pool not in (None, self.pool):
                raise InvalidRequest(f"request for pool {request.pool!r} on pool {self.pool!r}")
        except InvalidRequest as exc:
            await target.consumer.reject(message, exc, started)
            return
        placed = request.model_copy(update={"agent": target.name, "pool": self.pool})
        log.debug("pool %s: placing on agent %s", self.pool, target.name)
        target.consumer.accept(message, placed, started)
