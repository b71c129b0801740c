"""What every phase gets: the options, the sizes, and the stack under test on demand.

:class:`Ctx` starts the agent and the worker when a phase first needs them
(so any phase can run alone with ``--phases``): :meth:`Ctx.agent` the agent
(``python -m execbus.agent`` on a Unix socket, with the runc container's
root when there is one), :meth:`Ctx.worker` a worker in a lifecycle-event
mode (``full``: the default events; ``lean``: ``EXECBUS_LIFECYCLE_EVENTS=none``),
replacing the running worker if it is in the other mode, and
:meth:`Ctx.client` one SDK client for the run. The processes come from
:mod:`execbus.testing.processes`, the container from :mod:`execbus.testing.runc`.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import subprocess
import urllib.parse
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.lib import say
from bench.lib.measure import find_broker_pid, proc_status
from bench.lib.report import BenchResult

from execbus import Client
from execbus.testing import runc
from execbus.testing.processes import AgentProcess, Processes, WorkerProcess, purge

AGENT = "a1"
CMD = ["echo", "hi"]
RSS_RECORDS = 100_000
MODES = {"full": "created,started", "lean": "none"}


@dataclass(frozen=True)
class Plan:
    """How many operations each measurement does."""

    name: str
    spawn_n: int  # per concurrency
    agent_n: int  # per concurrency
    e2e_serial: int  # concurrency 1: latency samples (and throughput)
    e2e_n: int  # per concurrency > 1
    warmup: int
    runc_n: int
    celery_n: int
    celery_serial: int
    profile_n: int
    keys_n: int  # keystrokes (interactive latency), per path
    stream_bytes: int
    scale_n: int  # per worker x agent configuration
    hops_n: int


MIB = 1024 * 1024
PLANS = {
    "tiny": Plan("tiny", 60, 60, 40, 120, 10, 4, 100, 20, 200, 30, 20 * MIB, 120, 40),
    "quick": Plan("quick", 300, 300, 150, 800, 50, 10, 400, 50, 600, 100, 50 * MIB, 600, 100),
    "default": Plan(
        "default", 2000, 2000, 1000, 6000, 200, 40, 2000, 200, 3000, 400, 200 * MIB, 3000, 300
    ),
}


@dataclass
class WorkerState:
    """The running worker and its memory at start and after the warm-up."""

    mode: str
    proc: WorkerProcess
    rss_start: float | None
    rss_warm: float | None = None
    records_warm: int = 0


@dataclass
class Ctx:
    args: argparse.Namespace
    plan: Plan
    ns: str
    workdir: Path
    result: BenchResult
    procs: Processes = field(init=False)
    container: runc.BusyboxContainer | None = None
    runc_reason: str | None = None
    agent_runc_ms: float | None = None
    current: WorkerState | None = None
    exits: contextlib.AsyncExitStack = field(default_factory=contextlib.AsyncExitStack)
    _client: Client | None = None
    _broker_pid: int | None = None

    def __post_init__(self) -> None:
        self.procs = Processes(self.workdir, self.args.amqp_url, self.ns)

    @property
    def amqp_url(self) -> str:
        return str(self.args.amqp_url)

    # -- the agent and its container ---------------------------------------

    def _container(self) -> None:
        self.runc_reason = "disabled by --no-runc" if self.args.no_runc else runc.unavailable()
        if self.runc_reason is not None:
            return
        container = runc.BusyboxContainer(self.workdir, f"bench-{self.ns[-8:]}")
        self.container = container
        try:
            container.create()
            say(f"runc container {container.id} running")
        except (RuntimeError, OSError, subprocess.SubprocessError) as exc:
            self.runc_reason = f"cannot run a runc container here: {exc}"
            self.container = None

    async def agent(self) -> AgentProcess:
        """The agent under test (started, with the container, on first use)."""
        if AGENT in self.procs.agents:
            return self.procs.agents[AGENT]
        await asyncio.to_thread(self._container)
        extra = ["--grace", "1"]
        if self.container is not None:
            extra += ["--runc-root", str(self.container.root)]
        agent = self.procs.add_agent(AGENT, *extra)
        await agent.wait_listening()
        return agent

    # -- the worker ----------------------------------------------------------

    async def worker(self, mode: str) -> WorkerState:
        """A worker in lifecycle mode ``mode`` owning the agent (restarted if in the other)."""
        if self.current is not None and self.current.mode == mode and self.current.proc.alive:
            return self.current
        await self.agent()
        if self.current is not None:
            say(f"stopping the {self.current.mode} worker")
            await asyncio.to_thread(self.procs.retire, self.current.proc)
        env = {
            "EXECBUS_REGISTRY_RETENTION": "86400",
            "EXECBUS_REGISTRY_MAX_RECORDS": str(RSS_RECORDS + 50_000),
            "EXECBUS_SHUTDOWN_GRACE": "2",
            "EXECBUS_EVENT_LOOP": self.args.worker_loop,
            "EXECBUS_LIFECYCLE_EVENTS": MODES[mode],
        }
        proc = self.procs.add_worker(agents=[AGENT], **env)
        await self.procs.wait_served([AGENT])
        self.current = WorkerState(mode, proc, proc_status(proc.pid, "VmRSS"))
        say(f"{mode} worker (pid {proc.pid}, lifecycle events {MODES[mode]}) owns {AGENT}")
        return self.current

    def registry_size(self) -> int:
        if self.current is None:
            return 0
        info = self.current.proc.agents().get(AGENT, {})
        execs = info.get("execs")
        return execs if isinstance(execs, int) else 0

    # -- the client and the broker ---------------------------------------------

    async def client(self) -> Client:
        if self._client is None:
            client = Client(self.amqp_url, namespace=self.ns)
            self._client = await self.exits.enter_async_context(client)
        return self._client

    def broker_pid(self) -> int | None:
        if self._broker_pid is None:
            port = urllib.parse.urlsplit(self.amqp_url).port or 5672
            self._broker_pid = find_broker_pid(port)
            self.result.machine.broker_pid = self._broker_pid
        return self._broker_pid

    def pids(self, *, client: bool = True) -> dict[str, int | None]:
        """The processes whose CPU an e2e exec costs (the agent's reaped children too)."""
        out: dict[str, int | None] = {"client": os.getpid()} if client else {}
        if self.current is not None:
            out["worker"] = self.current.proc.pid
        if AGENT in self.procs.agents:
            out["agent"] = self.procs.agents[AGENT].pid
        out["broker"] = self.broker_pid()
        return out

    # -- the end -------------------------------------------------------------------

    async def close(self) -> None:
        """Stop the client and the processes, delete the namespace (errors are reported)."""
        with contextlib.suppress(Exception):
            await self.exits.aclose()
        if self.procs.all():
            say("stopping the worker and the agent")
            await asyncio.to_thread(self.procs.stop, 5.0)
            say(await purge(self.amqp_url, self.ns, [AGENT]))

    def kill(self) -> None:
        """Whatever happened: no process and no container left."""
        self.procs.kill()
        if self.container is not None:
            self.container.delete()


def op_ok(result: Any, stdout: bytes | None = b"hi\n") -> None:
    """Raise unless a run ended with 0 (and ``stdout``, when given)."""
    if result.exit_code != 0 or (stdout is not None and result.stdout != stdout):
        raise RuntimeError(f"exec ended badly: {result}")
