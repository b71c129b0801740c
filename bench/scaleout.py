#!/usr/bin/env python3
"""Scale-out measurement with real processes: ownership at 1,000 agents and beyond.

For each fleet size in ``--agents`` (comma-separated; the smallest is the
baseline the others are compared with, in the same run), with ``--workers``
workers on a private RabbitMQ node with the management plugin (the broker's
own counters; ``--amqp-url`` uses another broker, without them):

1. starts the agents (names mapped round-robin onto ``--processes`` agent
   processes: ownership is what is measured) and the workers, and times the
   cold start until the ownership is balanced (every agent owned once, loads
   within one);
2. steady state over ``--window`` seconds: broker operations per second as the
   broker counts them (publishes, deliveries, acks, declares, channel and
   connection churn; this script's own announcement listener left out),
   announcement bytes per second, objects on the broker, worker RSS;
3. SIGKILLs the worker owning the most agents and measures, for each agent it
   owned, the time from the kill to the first completed exec (max, median),
   and the agents that changed owner (leave);
4. starts a worker and counts the agents that move to it (join, ideal A/W);
5. stops everything and reports the broker memory the namespace's queues hold
   (per 1,000 agents), then purges the namespace.

Prints one JSON object (``sizes``: one row per size; ``scaling``: each size's
figures relative to the baseline). Usage:
  bench/scaleout.py --agents 100,1000 --workers 20
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "src"))

import aio_pika  # noqa: E402
from aio_pika.abc import AbstractIncomingMessage  # noqa: E402

from execbus.cli.purge import purge_namespace  # noqa: E402
from execbus.testing.broker import RabbitNode  # noqa: E402
from execbus.testing.cluster import Cluster  # noqa: E402
from execbus.testing.management import Counters, Management  # noqa: E402


class Caller:
    """Raw AMQP requests with replies (no SDK: its unknown-agent check would interfere)."""

    def __init__(self, url: str, ns: str) -> None:
        self.url, self.ns = url, ns
        self.futures: dict[str, asyncio.Future[dict[str, Any]]] = {}

    async def __aenter__(self) -> Caller:
        self.conn = await aio_pika.connect(self.url)
        self.channel = await self.conn.channel()
        self.queue = await self.channel.declare_queue(exclusive=True, auto_delete=True)
        await self.queue.consume(self._on_reply, no_ack=True)
        self.exchange = await self.channel.get_exchange(f"{self.ns}.requests")
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.conn.close()

    async def _on_reply(self, message: AbstractIncomingMessage) -> None:
        fut = self.futures.pop(message.correlation_id or "", None)
        if fut is not None and not fut.done():
            fut.set_result(json.loads(message.body))

    async def run(self, agent: str, timeout: float = 60) -> dict[str, Any]:
        corr = uuid.uuid4().hex
        fut: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self.futures[corr] = fut
        body = {"v": 1, "type": "exec.run", "exec_id": corr, "config": {"cmd": ["true"]}}
        message = aio_pika.Message(
            json.dumps(body).encode(), correlation_id=corr, reply_to=self.queue.name
        )
        await self.exchange.publish(message, f"agent.{agent}")
        return await asyncio.wait_for(fut, timeout)

    async def run_all(self, agents: list[str], at_once: int = 64) -> None:
        """One exec on every agent, ``at_once`` in flight (a check that each is served,
        not a load test: 1,000 at once on two cores only measures the queueing)."""
        slots = asyncio.Semaphore(at_once)

        async def one(agent: str) -> dict[str, Any]:
            async with slots:
                return await self.run(agent)

        replies = await asyncio.gather(*(one(a) for a in agents))
        failed = [r for r in replies if not r.get("ok")]
        if failed:
            raise RuntimeError(f"{len(failed)} of {len(agents)} runs failed: {failed[:3]}")


class AnnouncementTap:
    """Counts the announcements on ``<ns>.control`` (messages and body bytes)."""

    def __init__(self, url: str, ns: str) -> None:
        self.url, self.ns = url, ns
        self.messages = self.bytes = 0

    async def __aenter__(self) -> AnnouncementTap:
        self.conn = await aio_pika.connect(self.url)
        channel = await self.conn.channel()
        exchange = await channel.get_exchange(f"{self.ns}.control")
        queue = await channel.declare_queue(exclusive=True, auto_delete=True)
        await queue.bind(exchange, "worker.#")
        await queue.consume(self._on_message, no_ack=True)
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.conn.close()

    async def _on_message(self, message: AbstractIncomingMessage) -> None:
        self.messages += 1
        self.bytes += len(message.body)

    def reset(self) -> None:
        self.messages = self.bytes = 0


def owner_map(cluster: Cluster) -> dict[str, int]:
    return {a: w for w, agents in cluster.ownership().items() for a in agents}


def moved(before: dict[str, int], after: dict[str, int]) -> int:
    return sum(1 for a, w in before.items() if after.get(a) != w)


def mib(n: float) -> float:
    return round(n / 2**20, 1)


async def steady_state(cluster: Cluster, mgmt: Management | None, window: float) -> dict[str, Any]:
    """Broker operations and announcement traffic with nothing happening but membership."""
    async with AnnouncementTap(cluster.amqp_url, cluster.namespace) as tap:
        settled_after = await settle(mgmt)
        print(f"steady state from {time.strftime('%H:%M:%S')}", file=sys.stderr)
        before = await fresh_counters(mgmt) if mgmt else None
        tap.reset()
        started = time.monotonic()
        await asyncio.sleep(window)
        after = await fresh_counters(mgmt) if mgmt else None
        span = time.monotonic() - started
        out: dict[str, Any] = {
            "quiet_after_balance_s": settled_after,
            "announcements_per_s": round(tap.messages / span, 2),
            "announcement_bytes_per_s": round(tap.bytes / span),
            "announcement_bytes_mean": round(tap.bytes / max(tap.messages, 1)),
        }
        if before is not None and after is not None:
            out["broker_ops_per_s"] = broker_rates(before, after, tap.messages / span)
    rss = [w.rss_bytes() for w in cluster.live_workers()]
    out["worker_rss_mib"] = {"max": mib(max(rss)), "median": mib(statistics.median(rss))}
    if mgmt:
        out["broker_objects"] = {
            k: v
            for k, v in mgmt.object_totals().items()
            if k in ("connections", "channels", "queues", "consumers")
        }
    return out


async def status_timing(cluster: Cluster, listen: float = 2.5) -> dict[str, Any]:
    """``execbus status --json`` as an operator runs it: seconds beyond its listening
    time (the queue depths of every agent), and the agents and owners it shows."""
    command = [
        sys.executable, "-m", "execbus", "status", "--json", "--listen", str(listen),
        "--amqp-url", cluster.amqp_url, "--namespace", cluster.namespace,
    ]  # fmt: skip
    started = time.monotonic()
    done = await asyncio.to_thread(
        subprocess.run, command, capture_output=True, text=True, timeout=300, check=False
    )
    took = time.monotonic() - started
    if done.returncode != 0:
        raise RuntimeError(f"execbus status failed: {done.stderr.strip()[-500:]}")
    status = json.loads(done.stdout)
    owned = {a for w in status["workers"] for a in w.get("owned", [])}
    return {
        "status_s": round(took, 2),
        "status_beyond_listen_s": round(took - listen, 2),
        "status_agents": len(status["queues"]),
        "status_owned": len(owned),
    }


async def fresh_counters(mgmt: Management, limit: float = 15.0) -> Counters:
    """The broker's counters read just after it updated them. The overview moves in
    steps (every few seconds, however often statistics are collected), so a rate over
    a window that starts and ends at arbitrary moments can be off by a whole step:
    over 6 s, 10 s worth of publishes. Reading at the steps makes the window whole."""
    first = mgmt.counters()
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        await asyncio.sleep(0.1)
        now = mgmt.counters()
        if now.ops != first.ops:
            return now
    return first


async def settle(mgmt: Management | None, limit: float = 60.0) -> float:
    """Wait until the hand-overs of the cold start are over: no queue declared and no
    channel opened for 8 s (longer than a standby holds an agent before handing it to
    its designated owner: peer expiry + one interval). Seconds waited."""
    started = time.monotonic()
    if mgmt is None:
        await asyncio.sleep(10)
        return 10.0
    quiet, last = 0, mgmt.counters()
    while quiet < 4 and time.monotonic() - started < limit:
        await asyncio.sleep(2)
        now = mgmt.counters()
        churn = sum(now.ops[k] - last.ops[k] for k in ("queue_declared", "channel_created"))
        quiet, last = (quiet + 1 if churn == 0 else 0), now
    return round(time.monotonic() - started, 1)


def broker_rates(before: Counters, after: Counters, tap_rate: float) -> dict[str, float]:
    """Operations per second as the broker counts them, without this script's listener."""
    rates = after.rates(before)
    rates["deliver_get"] = max(0.0, rates["deliver_get"] - tap_rate)
    rates["total"] = sum(v for k, v in rates.items() if k != "total")
    return {k: round(v, 2) for k, v in rates.items() if v or k == "total"}


async def failover_and_moves(cluster: Cluster) -> dict[str, Any]:
    """Kill the busiest worker; time its agents' first exec; then a worker joins."""
    owners = await asyncio.to_thread(cluster.wait_balanced, 60)
    before = await asyncio.to_thread(owner_map, cluster)
    victim_index = max(owners, key=lambda w: len(owners[w]))
    victim = next(w for w in cluster.workers if w.index == victim_index)
    orphans = sorted(owners[victim_index])
    async with Caller(cluster.amqp_url, cluster.namespace) as caller:
        await caller.run_all(cluster.agent_names)
        print(f"killing worker {victim_index} ({len(orphans)} agents)", file=sys.stderr)
        killed = time.monotonic()
        cluster.kill_worker(victim)

        async def first(agent: str) -> float:
            await caller.run(agent)
            return time.monotonic() - killed

        failover = await asyncio.gather(*(first(a) for a in orphans))
        await asyncio.to_thread(cluster.wait_balanced, 60)
        after_kill = await asyncio.to_thread(owner_map, cluster)
        cluster.start_worker()
        await asyncio.to_thread(cluster.wait_balanced, 60)
        after_join = await asyncio.to_thread(owner_map, cluster)
        await caller.run_all(cluster.agent_names)
    return {
        "failover_agents": len(orphans),
        "failover_max_s": round(max(failover), 3),
        "failover_median_s": round(statistics.median(failover), 3),
        "moved_on_leave": moved(before, after_kill),
        "moved_on_join": moved(after_kill, after_join),
        "ideal_moved_on_join": round(len(cluster.agent_names) / len(cluster.live_workers()), 1),
    }


async def measure(
    url: str, mgmt: Management | None, agents: int, args: argparse.Namespace
) -> dict[str, Any]:
    ns = f"scale{uuid.uuid4().hex[:8]}"
    cluster = Cluster(url, ns, Path(tempfile.mkdtemp(prefix="execbus-scale-")))
    print(f"{agents} agents: namespace {ns}, workdir {cluster.workdir}", file=sys.stderr)
    row: dict[str, Any] = {"agents": agents, "workers": args.workers}
    failed = True
    try:
        cluster.start_agents(agents, processes=min(agents, args.processes))
        memory_before = mgmt.memory() if mgmt else 0
        started = time.monotonic()
        for _ in range(args.workers):
            cluster.start_worker()
        owners = await asyncio.to_thread(cluster.wait_balanced, max(60.0, agents / 10))
        row["balanced_after_s"] = round(time.monotonic() - started, 2)
        counts = sorted(len(v) for v in owners.values())
        row["owned_per_worker"] = {"min": counts[0], "max": counts[-1]}
        row.update(await steady_state(cluster, mgmt, args.window))
        row.update(await status_timing(cluster))
        row.update(await failover_and_moves(cluster))
        cluster.stop()
        if mgmt:
            await asyncio.sleep(5)  # closed connections' memory given back
            held = mgmt.memory() - memory_before
            row["broker_memory_per_1000_agents_mib"] = mib(held * 1000 / agents)
        failed = False
    finally:
        cluster.stop()
        await purge(url, ns, cluster.agent_names)
        if failed or args.keep_logs:  # the logs tell why
            print(f"kept the logs in {cluster.workdir}", file=sys.stderr)
        else:
            shutil.rmtree(cluster.workdir, ignore_errors=True)
    return row


async def purge(url: str, ns: str, agents: list[str]) -> None:
    try:
        report = await purge_namespace(url, ns, agents=agents)
        print(report.summary().replace("purged namespace", f"purged {ns}"), file=sys.stderr)
    except Exception as exc:
        print(f"could not purge namespace {ns}: {exc!r}", file=sys.stderr)


def scaling(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Each size's steady-state cost relative to the baseline (the first, smallest size)."""
    base = rows[0]
    out = []
    for row in rows[1:]:
        ratio: dict[str, Any] = {"agents": f"{row['agents']} vs {base['agents']}"}
        for key in ("announcement_bytes_per_s", "announcements_per_s"):
            ratio[key] = round(row[key] / max(base[key], 1e-9), 2)
        if "broker_ops_per_s" in row and "broker_ops_per_s" in base:
            total, base_total = row["broker_ops_per_s"]["total"], base["broker_ops_per_s"]["total"]
            ratio["broker_ops_per_s"] = round(total / max(base_total, 1e-9), 2)
        out.append(ratio)
    return out


async def run(args: argparse.Namespace) -> dict[str, Any]:
    sizes = sorted(int(n) for n in args.agents.split(","))
    node = None if args.amqp_url else RabbitNode(management=True)
    try:
        if node is not None:
            print(f"starting a private RabbitMQ node {node.node}", file=sys.stderr)
            await asyncio.to_thread(node.start)
        url = args.amqp_url or node.url  # type: ignore[union-attr]
        mgmt = Management(node.management_url) if node else None
        rows = [await measure(url, mgmt, n, args) for n in sizes]
    finally:
        if node is not None:
            await asyncio.to_thread(node.stop)
            node.remove()
    return {"sizes": rows, "scaling": scaling(rows)}


def main() -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--agents", default="30", help="fleet sizes, comma-separated (default 30)")
    ap.add_argument("--workers", type=int, default=3, help="workers (default 3)")
    ap.add_argument("--processes", type=int, default=8, help="agent processes (default 8)")
    ap.add_argument("--window", type=float, default=20.0, help="steady-state seconds (20)")
    ap.add_argument("--keep-logs", action="store_true", help="keep the processes' logs")
    ap.add_argument(
        "--amqp-url",
        help="use this broker instead of a private node (no broker counters then)",
    )
    result = asyncio.run(run(ap.parse_args()))
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
