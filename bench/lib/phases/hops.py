"""The floor of one hop through RabbitMQ: a confirmed publish until a consumer has it.

In this process, on its own connection: a durable quorum queue (what requests
sit on) and an exclusive server-named classic queue (what replies and the
SDK's events come to). The latency budget puts them beside the stages of an
exec (``latency_budget_ms`` in the JSON).
"""

from __future__ import annotations

import asyncio
import time

import aio_pika
from bench.lib import say
from bench.lib.context import Ctx
from bench.lib.measure import Latency
from bench.lib.sections import BrokerHopsSection

from execbus.publishing import Basic, publish_confirmed


async def _hop_latency(channel: aio_pika.abc.AbstractChannel, queue: str, n: int) -> Latency:
    arrived: asyncio.Queue[float] = asyncio.Queue()

    async def on_message(message: aio_pika.abc.AbstractIncomingMessage) -> None:
        arrived.put_nowait(time.perf_counter())
        await message.ack()

    q = await channel.get_queue(queue, ensure=False)
    tag = await q.consume(on_message)
    props = Basic.Properties(delivery_mode=2, content_type="application/json")
    samples = []
    try:
        for i in range(n + 5):
            t0 = time.perf_counter()
            await publish_confirmed(channel, "", queue, b'{"v":1}', props, timeout=10)
            t1 = await asyncio.wait_for(arrived.get(), 10)
            if i >= 5:  # warm-up
                samples.append(t1 - t0)
    finally:
        await q.cancel(tag)
    return Latency.of(samples)


async def broker_hops(ctx: Ctx) -> BrokerHopsSection:
    say("broker hops: confirmed publish -> delivery, quorum and exclusive classic queues")
    connection = await aio_pika.connect(ctx.amqp_url)
    try:
        channel = await connection.channel(publisher_confirms=True)
        quorum = f"{ctx.ns}.bench-hop"
        await channel.declare_queue(quorum, durable=True, arguments={"x-queue-type": "quorum"})
        classic = await channel.declare_queue(exclusive=True, auto_delete=True)
        try:
            q = await _hop_latency(channel, quorum, ctx.plan.hops_n)
            c = await _hop_latency(channel, classic.name, ctx.plan.hops_n)
        finally:
            await channel.queue_delete(quorum)
    finally:
        await connection.close()
    say(f"broker hop p50: quorum {q.p50} ms, classic {c.p50} ms")
    return BrokerHopsSection(q, c)
