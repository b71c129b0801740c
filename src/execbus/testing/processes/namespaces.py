"""Cleaning up a namespace's queues and exchanges after a test or a benchmark."""

from __future__ import annotations

import asyncio
import contextlib
import subprocess
from collections.abc import Iterable

NAMESPACE_EXCHANGES = ("requests", "events", "dead", "unrouted", "control")


async def delete_namespace(amqp_url: str, namespace: str) -> None:
    """Delete the queues and exchanges of ``namespace``, fast and best effort.

    The queues are listed with ``rabbitmqctl`` (none when it is unavailable),
    the exchanges are the five every namespace has. For a thorough cleanup
    (management API, verified listings) use :func:`purge`.
    """
    import aio_pika

    queues = await _list_queues(namespace)
    connection = await aio_pika.connect(amqp_url)
    async with connection:
        for name in queues:
            channel = await connection.channel()
            with contextlib.suppress(Exception):
                await channel.queue_delete(name)
        for suffix in NAMESPACE_EXCHANGES:
            channel = await connection.channel()
            with contextlib.suppress(Exception):
                await channel.exchange_delete(f"{namespace}.{suffix}")


async def _list_queues(namespace: str) -> list[str]:
    """Queue names with the namespace prefix (rabbitmqctl; empty if unavailable)."""
    try:
        proc = await asyncio.create_subprocess_exec(
            "rabbitmqctl",
            "-q",
            "list_queues",
            "name",
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
        )
        out, _ = await asyncio.wait_for(proc.communicate(), 30)
    except (OSError, TimeoutError):
        return []
    return [n for n in out.decode().split() if n.startswith(f"{namespace}.")]


async def purge(amqp_url: str, namespace: str, agents: Iterable[str]) -> str:
    """Delete every queue and exchange of ``namespace``; a one-line summary of what went."""
    from execbus.cli.purge import purge_namespace

    try:
        async with asyncio.timeout(60):
            report = await purge_namespace(amqp_url, namespace, agents=list(agents))
    except Exception as exc:
        return f"namespace cleanup failed ({exc!r}); run `execbus purge --namespace {namespace}`"
    return report.summary().replace("purged namespace", f"purged namespace {namespace}")
