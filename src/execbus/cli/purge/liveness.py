"""Is anything of the namespace alive? Worker announcements, ownership locks, consumers.

Purge refuses a namespace in use unless ``--force``; the announcements also
name the agents and pools whose queues ``--via names`` then probes.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import Iterable
from typing import Any

import aio_pika
from aio_pika.abc import AbstractConnection, AbstractIncomingMessage

from execbus.cli.purge.inventory import Inventory
from execbus.wire.routing import Names


async def live_workers(
    connection: AbstractConnection, names: Names, listen: float
) -> dict[str, dict[str, Any]]:
    """worker id -> its last announcement on ``<ns>.control`` (stopping ones too)."""
    seen: dict[str, dict[str, Any]] = {}
    channel = await connection.channel(publisher_confirms=False)
    try:
        try:
            exchange = await channel.get_exchange(names.control_exchange, ensure=True)
        except aio_pika.exceptions.ChannelNotFoundEntity:
            return seen  # no control exchange: no worker of this namespace runs
        queue = await channel.declare_queue(exclusive=True, auto_delete=True)
        await queue.bind(exchange, "worker.#")

        async def on_message(message: AbstractIncomingMessage) -> None:
            with contextlib.suppress(ValueError, TypeError, KeyError):
                doc = json.loads(message.body)
                if isinstance(doc, dict) and doc.get("worker_id"):
                    seen[str(doc["worker_id"])] = doc

        await queue.consume(on_message, no_ack=True)
        await asyncio.sleep(listen)
    finally:
        with contextlib.suppress(Exception):
            await channel.close()
    return seen


def announced(workers: Iterable[dict[str, Any]], *keys: str) -> set[str]:
    """The names the announcements list under any of ``keys`` (``agents``, ``pools``, ...)."""
    return {name for doc in workers for key in keys for name in _strings(doc.get(key))}


def _strings(value: object) -> list[str]:
    return [str(v) for v in value] if isinstance(value, list) else []


def live_evidence(ns: str, workers: dict[str, dict[str, Any]], inventory: Inventory) -> list[str]:
    """Why the namespace looks alive (empty: nothing runs)."""
    evidence = []
    if workers:
        ids = ", ".join(sorted(workers))
        stopping = [w for w, doc in workers.items() if doc.get("stopping")]
        note = f", {len(stopping)} stopping" if stopping else ""
        evidence.append(f"{len(workers)} worker(s) announcing on {ns}.control{note}: {ids}")
    locks = sorted(q for q in inventory.queues if q.startswith(f"{ns}.owner."))
    if locks:
        evidence.append(f"{len(locks)} ownership lock(s) held: {', '.join(locks)}")
    consumed = sorted(
        q.name
        for q in inventory.queues.values()
        if (q.consumers or 0) > 0
        and q.name.startswith((f"{ns}.agent.", f"{ns}.pool.", f"{ns}.lease.", f"{ns}.holder."))
    )
    if consumed:
        evidence.append(f"queues with consumers: {', '.join(consumed)}")
    return evidence
