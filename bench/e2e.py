#!/usr/bin/env python3
"""End-to-end benchmark: execs per second and latency through the whole system.

Starts its own agent (``python -m execbus.agent`` on a Unix socket in a temp
dir) and worker (``python -m execbus worker``, unique namespace ``bench<hex>``)
against the local RabbitMQ and runs these phases (``--phases`` picks some;
each starts what it needs):

* ``spawn``        the machine's limit: raw asyncio spawns of ``echo hi`` at 1/16/32/64 in flight
* ``agent``        execs/s through the agent alone (``AgentClient``; before any worker)
* ``full``         end to end with every lifecycle event: execs/s at 1/16/64, p50/p99 at 1,
                   CPU ms per exec of every process
* ``runc``         ``runc exec`` alone, through the agent alone, and end to end (root + runc)
* ``breakdown``    a concurrency-1 exec split into stages (events + agent timestamps)
* ``hops``         the floor of one broker hop (quorum and exclusive classic queues)
* ``lean``         as ``full``, with ``EXECBUS_LIFECYCLE_EVENTS=none`` and
                   ``lifecycle_events: []`` (the exit notification only)
* ``celery``       the Celery baseline, same run (``--with-celery``)
* ``interactive``  keystroke -> echo of ``execbus run -it`` under a pty, and through the SDK
* ``stream``       MiB/s of ``stream_output`` from ``head -c 200M /dev/zero`` to the SDK
* ``profile``      py-spy on the worker, the agent and the client (``--profile``)
* ``rss``          worker RSS with 100,000 finished execs (measured with ``--full``)
* ``flood``        agent RSS peak while ``head -c 100MiB /dev/zero`` runs through it
* ``scaling``      1 worker x 1 agent, 2 x 2, 2 x 8: execs/s and CPU ms per exec

Progress goes to stderr; one JSON object to stdout and ``bench/out/e2e.json``
(``targets`` says pass/fail); the plot is ``bench/out/throughput.svg``
(``--update-docs`` copies it to docs/). The pieces are in ``bench/lib/``;
the figures and what they mean in docs/performance.md.

Usage: bench/e2e.py [--tiny | --quick | --full] [--phases a,b] [--with-celery] [--profile]
                    [--update-docs] [--amqp-url URL] [--celery-script PATH] [--no-runc]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import signal
import sys
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.lib import ROOT, T0, say
from bench.lib.context import CMD, PLANS, Ctx
from bench.lib.phases import (
    celery,
    containers,
    e2e,
    hops,
    interactive,
    limits,
    memory,
    profiling,
    scaling,
    stream,
)
from bench.lib.report import BenchResult, write_outputs
from bench.lib.sections import Section

Phase = Callable[[Ctx], Awaitable[Section | None]]
PHASES: tuple[tuple[str, Phase], ...] = (
    ("spawn", limits.spawn),
    ("agent", limits.agent),
    ("full", e2e.full),
    ("runc", containers.runc),
    ("breakdown", e2e.breakdown),
    ("hops", hops.broker_hops),
    ("lean", e2e.lean),
    ("celery", celery.celery),
    ("interactive", interactive.interactive),
    ("stream", stream.stream),
    ("profile", profiling.profile),
    ("rss", memory.worker_rss),
    ("flood", memory.flood),
    ("scaling", scaling.scaling),
)
DEFAULT_CELERY = ROOT.parent / "shared" / "bench" / "celery_peer.py"


async def run_bench(ctx: Ctx, only: set[str]) -> None:
    """Every selected phase in order; each section goes into the result."""
    task = asyncio.current_task()
    assert task is not None
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, task.cancel)
    try:
        for name, phase in PHASES:
            if not only or name in only:
                ctx.procs.check_alive()
                section = await phase(ctx)
                if section is not None:
                    ctx.result.add(section)
        ctx.result.celery_ratios()
    finally:
        await ctx.close()


def parse_args() -> argparse.Namespace:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    size = ap.add_mutually_exclusive_group()
    size.add_argument("--tiny", action="store_true", help="the smallest sizes: checks it works")
    size.add_argument("--quick", action="store_true", help="a smoke run (~1 min on a quiet box)")
    size.add_argument(
        "--full", action="store_true", help="also push 100,000 execs to measure worker_rss_mb"
    )
    names = [name for name, _ in PHASES]
    ap.add_argument("--phases", default="", help=f"comma-separated, of: {','.join(names)}")
    ap.add_argument(
        "--amqp-url",
        default=os.environ.get("EXECBUS_AMQP_URL", "amqp://guest:guest@localhost:5672/"),
    )
    ap.add_argument("--with-celery", action="store_true", help="run the Celery baseline too")
    ap.add_argument("--celery-script", type=Path, default=DEFAULT_CELERY)
    ap.add_argument("--profile", action="store_true", help="py-spy an extra c=64 run")
    ap.add_argument("--profile-mode", choices=["lean", "full"], default="lean")
    ap.add_argument("--no-runc", action="store_true", help="skip the runc container figures")
    ap.add_argument(
        "--worker-loop",
        choices=["auto", "uvloop", "asyncio"],
        default="auto",
        help="the workers' EXECBUS_EVENT_LOOP (auto: uvloop when installed); the benchmark "
        "process itself (spawn limit, agent alone, the client) always runs on asyncio's loop",
    )
    ap.add_argument(
        "--update-docs",
        action="store_true",
        help="copy the plot to docs/performance-throughput.svg",
    )
    args = ap.parse_args()
    unknown = set(filter(None, args.phases.split(","))) - set(names)
    if unknown:
        ap.error(f"unknown phase(s): {', '.join(sorted(unknown))}")
    return args


def main() -> int:
    args = parse_args()
    plan = PLANS["tiny" if args.tiny else "quick" if args.quick else "default"]
    ns = f"bench{uuid.uuid4().hex[:8]}"
    workdir = Path(tempfile.mkdtemp(prefix="execbus-bench-"))
    mode = "full" if args.full else plan.name
    result = BenchResult(mode, ns, CMD, args.worker_loop)
    ctx = Ctx(args, plan, ns, workdir, result)
    say(f"execbus e2e benchmark ({mode}), namespace {ns}, workdir {workdir}")
    try:
        asyncio.run(run_bench(ctx, set(filter(None, args.phases.split(",")))))
    except (KeyboardInterrupt, asyncio.CancelledError):
        result.error = "interrupted"
        say("interrupted")
    except Exception as exc:
        result.error = repr(exc)
        say(f"benchmark failed: {exc!r}")
    finally:
        ctx.kill()
        if result.error is None:
            shutil.rmtree(workdir, ignore_errors=True)
        else:
            say(f"logs kept in {workdir}")
    result.machine.loadavg_end = [round(x, 2) for x in os.getloadavg()]
    result.elapsed_s = round(time.monotonic() - T0, 1)
    print(write_outputs(result, args.update_docs))
    if result.error == "interrupted":
        return 130
    return 1 if result.error is not None else 0


if __name__ == "__main__":
    sys.exit(main())
