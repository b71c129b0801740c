#!/usr/bin/env python3
"""Scale-out measurement: balance, failover time and moved agents, with real processes.

Starts A agents and W workers against the local RabbitMQ, waits until the
ownership is balanced, then:

1. SIGKILLs one worker and measures, for each agent it owned, the time from
   the kill to the first completed exec on that agent;
2. starts a new worker and counts the agents that moved.

Prints one JSON object. Usage: bench/scaleout.py [--agents 30] [--workers 3]
At the end it kills its processes, deletes its namespace from the broker
(``execbus purge``'s code) and its temporary directory.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "src"))

import aio_pika  # noqa: E402

from execbus.cli.purge import purge_namespace  # noqa: E402
from execbus.testing.cluster import Cluster  # noqa: E402


class Caller:
    """Raw AMQP requests with replies (no SDK: its unknown-agent check would interfere)."""

    def __init__(self, url: str, ns: str) -> None:
        self.url, self.ns = url, ns
        self.futures: dict[str, asyncio.Future[dict[str, object]]] = {}

    async def __aenter__(self) -> Caller:
        self.conn = await aio_pika.connect(self.url)
        self.channel = await self.conn.channel()
        self.queue = await self.channel.declare_queue(exclusive=True, auto_delete=True)
        await self.queue.consume(self._on_reply, no_ack=True)
        self.exchange = await self.channel.get_exchange(f"{self.ns}.requests")
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.conn.close()

    async def _on_reply(self, message: aio_pika.abc.AbstractIncomingMessage) -> None:
        fut = self.futures.pop(message.correlation_id or "", None)
        if fut is not None and not fut.done():
            fut.set_result(json.loads(message.body))

    async def run(self, agent: str, timeout: float = 30) -> dict[str, object]:
        corr = uuid.uuid4().hex
        fut = asyncio.get_running_loop().create_future()
        self.futures[corr] = fut
        body = {"v": 1, "type": "exec.run", "exec_id": corr, "config": {"cmd": ["true"]}}
        message = aio_pika.Message(
            json.dumps(body).encode(),
            correlation_id=corr,
            message_id=corr,
            reply_to=self.queue.name,
        )
        await self.exchange.publish(message, f"agent.{agent}")
        return await asyncio.wait_for(fut, timeout)


def owner_map(cluster: Cluster) -> dict[str, int]:
    return {a: w for w, agents in cluster.ownership().items() for a in agents}


async def measure(args: argparse.Namespace) -> dict[str, object]:
    ns = f"scale{uuid.uuid4().hex[:8]}"
    cluster = Cluster(args.amqp_url, ns, Path(tempfile.mkdtemp(prefix="execbus-scale-")))
    print(f"namespace {ns}, workdir {cluster.workdir}", file=sys.stderr, flush=True)
    try:
        cluster.start_agents(args.agents)
        t0 = time.monotonic()
        for _ in range(args.workers):
            cluster.start_worker()
        owners = cluster.wait_balanced(timeout=60)
        balanced_after = time.monotonic() - t0
        counts = sorted(len(v) for v in owners.values())
        async with Caller(args.amqp_url, ns) as caller:
            await asyncio.gather(*(caller.run(a) for a in cluster.agent_names))
            victim = cluster.workers[0]
            moved = sorted(owners[victim.index])
            killed = time.monotonic()
            cluster.kill_worker(victim)

            async def first(agent: str) -> float:
                await caller.run(agent)
                return time.monotonic() - killed

            failover = await asyncio.gather(*(first(a) for a in moved))
            after_kill = cluster.wait_balanced(timeout=30)
            before_join = owner_map(cluster)
            cluster.start_worker()
            cluster.wait_balanced(timeout=30)
            after_join = owner_map(cluster)
            await asyncio.gather(*(caller.run(a) for a in cluster.agent_names))
        moved_on_join = sum(1 for a in cluster.agent_names if before_join[a] != after_join[a])
        return {
            "agents": args.agents,
            "workers": args.workers,
            "balanced_after_s": round(balanced_after, 2),
            "owned_per_worker": counts,
            "failover_max_s": round(max(failover), 3),
            "failover_median_s": round(statistics.median(failover), 3),
            "moved_on_kill": len(moved),
            "owned_per_worker_after_kill": sorted(len(v) for v in after_kill.values()),
            "moved_on_join": moved_on_join,
            "ideal_moved_on_join": round(args.agents / args.workers, 1),
        }
    finally:
        cluster.stop()
        try:
            report = await purge_namespace(args.amqp_url, ns, agents=cluster.agent_names)
            print(report.summary().replace("purged namespace", f"purged {ns}"), file=sys.stderr)
        except Exception as exc:
            print(f"could not purge namespace {ns}: {exc!r}", file=sys.stderr)
        shutil.rmtree(cluster.workdir, ignore_errors=True)


def main() -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--agents", type=int, default=30)
    ap.add_argument("--workers", type=int, default=3)
    ap.add_argument(
        "--amqp-url",
        default=os.environ.get("EXECBUS_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/"),
    )
    result = asyncio.run(measure(ap.parse_args()))
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
