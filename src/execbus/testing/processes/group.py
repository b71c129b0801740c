"""The agents and workers of one namespace, started, awaited and ended together."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Self

from execbus.testing.processes.agent import AgentProcess
from execbus.testing.processes.helpers import child_env, tail
from execbus.testing.processes.managed import Managed
from execbus.testing.processes.worker import WorkerProcess


class Processes:
    """Agents and workers of one namespace in ``workdir``; ``with`` kills them all at the end."""

    def __init__(self, workdir: Path, amqp_url: str, namespace: str, **env: str) -> None:
        self.workdir = workdir
        self.amqp_url = amqp_url
        self.namespace = namespace
        self.env = child_env(None, **env)
        self.agents: dict[str, AgentProcess] = {}
        self.workers: list[WorkerProcess] = []

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.kill()

    def add_agent(self, name: str, *extra: str) -> AgentProcess:
        """Start an agent (see :meth:`AgentProcess.wait_listening`)."""
        agent = AgentProcess(name, self.workdir, self.env, *extra)
        self.agents[name] = agent
        return agent.start()

    def add_worker(
        self,
        *extra: str,
        agents: Iterable[str] | None = None,
        amqp_url: str | None = None,
        **env: str,
    ) -> WorkerProcess:
        """Start a worker serving ``agents`` (default: every agent added so far)."""
        names = list(self.agents) if agents is None else list(agents)
        worker_env = {
            **self.env,
            "EXECBUS_AMQP_URL": amqp_url or self.amqp_url,
            "EXECBUS_NAMESPACE": self.namespace,
            **env,
        }
        addresses = {name: self.agents[name].address for name in names}
        name = f"worker{len(self.workers)}"
        worker = WorkerProcess(name, self.workdir, worker_env, addresses, *extra)
        self.workers.append(worker)
        return worker.start()

    def retire(self, worker: WorkerProcess, grace: float = 5.0) -> None:
        """Stop a worker for good: it leaves the harness (no longer checked or restarted)."""
        worker.stop(grace)
        self.workers.remove(worker)

    def all(self) -> list[Managed]:
        return [*self.workers, *self.agents.values()]

    def check_alive(self) -> None:
        for proc in self.all():
            proc.check()

    async def wait_served(self, agents: Iterable[str] | None = None, timeout: float = 60.0) -> None:
        """Until every agent (default: all) is owned and connected by one of the live workers."""
        wanted = set(self.agents if agents is None else agents)
        deadline = time.monotonic() + timeout
        while True:
            self.check_alive()
            live = [w for w in self.workers if w.alive]
            served: set[str] = set()
            for worker in live:
                served |= await asyncio.to_thread(worker.serving)
            if wanted <= served:
                return
            if time.monotonic() > deadline:
                logs = "\n".join(f"{w.name}:\n{tail(w.log_path)}" for w in live)
                raise TimeoutError(f"agents not served: {sorted(wanted - served)}\n{logs}")
            await asyncio.sleep(0.1)

    def stop(self, grace: float = 5.0) -> None:
        """Stop the workers, then the agents (SIGTERM, then SIGKILL after ``grace``)."""
        for proc in self.all():
            proc.stop(grace)

    def kill(self) -> None:
        """SIGKILL every process group (workers first)."""
        for proc in self.all():
            proc.kill_group()
