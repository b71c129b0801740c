"""Streamed output: ``head -c 200M /dev/zero`` with ``stream_output``, through the bus.

The agent reads the command's output in 64 KiB chunks, the worker publishes
each as an ``exec.output`` event (confirmed: the backpressure), and this
process reads them with ``client.output(...)``. The rate is the bytes the
SDK received over the time from the submit to the exit; the agent's and the
worker's ``VmRSS`` are sampled all along (bounded memory: the peaks must not
grow with the size of the output).
"""

from __future__ import annotations

import time

from bench.lib import say
from bench.lib.context import AGENT, Ctx
from bench.lib.measure import RssPeak, r
from bench.lib.sections import StreamSection

from execbus.wire.ids import new_exec_id


async def stream(ctx: Ctx) -> StreamSection:
    state = await ctx.worker(ctx.current.mode if ctx.current else "lean")
    client = await ctx.client()
    size = ctx.plan.stream_bytes
    agent_pid = ctx.procs.agents[AGENT].pid
    say(f"streamed output: head -c {size >> 20}M /dev/zero, stream_output, to client.output()")
    exec_id = new_exec_id()
    received = chunks = 0
    pids = {"agent": agent_pid, "worker": state.proc.pid}
    async with RssPeak(pids, 0.02) as rss, client.output(AGENT, exec_id, existing=False) as out:
        t0 = time.perf_counter()
        execution = await client.submit(
            AGENT,
            ["head", "-c", str(size), "/dev/zero"],
            exec_id=exec_id,
            stream_output=True,
            lifecycle_events=[],
        )
        async for chunk in out:
            received += len(chunk.data)
            chunks += 1
        result = await execution.result()
        seconds = time.perf_counter() - t0
    mb_per_s = received / (1 << 20) / seconds
    worker0, worker1 = rss.before["worker"], rss.peak["worker"]
    section = StreamSection(
        bytes=size,
        received=received,
        chunks=chunks,
        seconds=round(seconds, 3),
        mb_per_s=round(mb_per_s, 1),
        exit_code=result.exit_code,
        agent_before_mb=r(rss.before["agent"]),
        agent_peak_mb=r(rss.peak["agent"]),
        worker_before_mb=r(worker0),
        worker_peak_mb=r(worker1),
        worker_growth_mb=r(worker1 - worker0) if worker0 is not None else None,
    )
    say(
        f"streamed {received >> 20} MiB in {chunks} chunks, {seconds:.2f} s: "
        f"{section.mb_per_s} MiB/s; agent RSS peak {section.agent_peak_mb} MiB, "
        f"worker {section.worker_before_mb} -> {section.worker_peak_mb} MiB"
    )
    if received != size:
        raise RuntimeError(f"streamed {received} bytes of {size}")
    return section
