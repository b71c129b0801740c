"""Memory: the worker holding 100,000 finished execs, the agent under an output flood.

``worker_rss``: the worker's ``VmRSS`` once the execs are finished and held
in its registry (retention one day); ``--full`` pushes execs at concurrency 64
until the registry holds 100,000, otherwise it is extrapolated linearly from
the records pushed since the warm-up. ``flood``: the agent's ``VmRSS``,
sampled every 5 ms, while ``head -c 100MiB /dev/zero`` runs through the
whole system with the default 1 MiB output cap.
"""

from __future__ import annotations

import asyncio
import time

from bench.lib import say
from bench.lib.context import AGENT, RSS_RECORDS, Ctx
from bench.lib.measure import RssPeak, drive, proc_status, r
from bench.lib.phases.e2e import e2e_op
from bench.lib.sections import FloodSection, WorkerRssSection

FLOOD_BYTES = 100 * 1024 * 1024


async def worker_rss(ctx: Ctx) -> WorkerRssSection:
    state = await ctx.worker(ctx.current.mode if ctx.current else "lean")
    one = e2e_op(await ctx.client(), state.mode)
    if state.rss_warm is None:  # the e2e phases did not run on this worker
        await drive(ctx.plan.warmup, 16, one)
        state.rss_warm = proc_status(state.proc.pid, "VmRSS")
        state.records_warm = await asyncio.to_thread(ctx.registry_size)
    records = await asyncio.to_thread(ctx.registry_size)
    fill = None
    if ctx.args.full:
        t = time.perf_counter()
        while records < RSS_RECORDS:
            await drive(min(10_000, RSS_RECORDS - records), 64, one)
            records = await asyncio.to_thread(ctx.registry_size)
            say(f"worker registry: {records} records")
        fill = round((records - state.records_warm) / (time.perf_counter() - t), 1)
    await asyncio.sleep(1.0)  # let the last replies settle
    records = await asyncio.to_thread(ctx.registry_size)
    rss = proc_status(state.proc.pid, "VmRSS")
    per_k = None
    if rss is not None and state.rss_warm is not None and records > state.records_warm:
        per_k = (rss - state.rss_warm) / (records - state.records_warm) * 1000
    if records >= RSS_RECORDS:
        mode, value = "measured", rss
    elif rss is not None and per_k is not None:
        mode = f"extrapolated from {records} records (run with --full to measure)"
        value = rss + per_k * (RSS_RECORDS - records) / 1000
    else:
        mode, value = "not measured", None
    say(f"worker RSS {r(value)} MiB for {RSS_RECORDS} records ({mode})")
    return WorkerRssSection(
        worker_rss_mb=r(value),
        records=records,
        start_mb=r(state.rss_start),
        after_warmup_mb=r(state.rss_warm),
        after_warmup_records=state.records_warm,
        measured_mb=r(rss),
        mb_per_1000_records=r(per_k, 3),
        mode=mode,
        fill_per_s=fill,
    )


async def flood(ctx: Ctx) -> FloodSection:
    await ctx.worker(ctx.current.mode if ctx.current else "lean")
    client = await ctx.client()
    agent_pid = ctx.procs.agents[AGENT].pid
    t = time.perf_counter()
    async with RssPeak({"agent": agent_pid}) as rss:
        result = await client.run(AGENT, ["head", "-c", str(FLOOD_BYTES), "/dev/zero"])
    seconds = time.perf_counter() - t
    section = FloodSection(
        before_mb=r(rss.before["agent"]),
        peak_mb=r(rss.peak["agent"]),
        vmhwm_mb=r(proc_status(agent_pid, "VmHWM")),
        flood_bytes=FLOOD_BYTES,
        captured=len(result.stdout),
        dropped=result.stdout_dropped,
        exit_code=result.exit_code,
        seconds=r(seconds, 2),
    )
    say(
        f"agent RSS peak {section.peak_mb} MiB during a {FLOOD_BYTES >> 20} MiB flood "
        f"({section.captured} captured, {section.dropped} dropped, {seconds:.2f} s)"
    )
    return section
