"""Profiles: one extra concurrency-64 run per process, each sampled by py-spy alone.

The worker, the agent and this process (the client) in turn, in the lifecycle
mode ``--profile-mode`` (default ``lean``). Raw stacks go to
``bench/out/profile-<process>.txt``; the section has the summary of each.
"""

from __future__ import annotations

import asyncio

from bench.lib import ROOT, say
from bench.lib.context import Ctx
from bench.lib.measure import measure
from bench.lib.phases.e2e import e2e_op
from bench.lib.profile import Profiler, find_py_spy, summarise_stacks
from bench.lib.sections import ProcessProfile, ProfileSection


async def profile(ctx: Ctx) -> ProfileSection | None:
    if not ctx.args.profile:
        return None
    mode = ctx.args.profile_mode
    exe = find_py_spy()
    if exe is None:
        return ProfileSection(mode, {"error": "py-spy is not installed (make bench-deps)"})
    await ctx.worker(mode)
    one = e2e_op(await ctx.client(), mode)
    processes: dict[str, ProcessProfile | str] = {}
    pids = {k: v for k, v in ctx.pids().items() if k != "broker" and v is not None}
    for name, pid in pids.items():
        say(f"profiling the {name} (pid {pid}) with py-spy during a c=64 {mode} run")
        profiler = Profiler(exe, name, pid)
        try:
            await asyncio.sleep(1.0)  # py-spy attaches
            run = await measure(
                f"e2e {mode} (py-spy on the {name})", ctx.plan.profile_n, 64, one, 0, 1
            )
        finally:
            await asyncio.to_thread(profiler.stop)
        processes[name] = ProcessProfile(
            round(run.per_s, 1),
            str(profiler.file.relative_to(ROOT)),
            summarise_stacks(profiler.file),
        )
    return ProfileSection(mode, processes)
