"""Real agent and worker processes for benchmarks and soaks: one harness.

:class:`Processes` starts ``python -m execbus.agent`` daemons on Unix sockets
and ``python -m execbus worker`` processes (each with its own HTTP port for
``/readyz``) in a work directory, every child in its own session with its
log in ``<workdir>/<name>.log``. A child can be signalled, stopped
(SIGTERM, then SIGKILL) or killed, and started again with the same command
line (a restart). :meth:`Processes.kill` ends them all, whatever happened;
:func:`purge` deletes the namespace's queues and exchanges afterwards
(``execbus purge``'s code).

Used by ``bench/e2e.py`` and ``bench/chaos.py``.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Self

from execbus.testing.cluster import fetch_readyz

SRC = Path(__file__).resolve().parents[2]


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def child_env(base: dict[str, str] | None = None, **extra: str) -> dict[str, str]:
    """``base`` (default: this process's environment) with ``src/`` on PYTHONPATH."""
    env = dict(os.environ if base is None else base)
    env["PYTHONPATH"] = str(SRC) + os.pathsep + env.get("PYTHONPATH", "")
    env.update(extra)
    return env


def tail(path: Path, lines: int = 15) -> str:
    """The last ``lines`` lines of a log file ("" if unreadable)."""
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


class ProcessDied(RuntimeError):
    """A managed process exited when it should have been running."""


class Managed:
    """One child process: its command line, environment and log; restartable."""

    def __init__(self, name: str, argv: list[str], env: dict[str, str], log: Path) -> None:
        self.name = name
        self.argv = argv
        self.env = env
        self.log = log
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> Self:
        """Start it (again): a new session, stdin from /dev/null, output appended to the log."""
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(
                self.argv,
                env=self.env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        return self

    @property
    def pid(self) -> int:
        assert self.proc is not None, f"{self.name} was never started"
        return self.proc.pid

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def check(self) -> None:
        """Raise :class:`ProcessDied`, with the log's tail, if it exited."""
        if self.proc is not None and self.proc.poll() is not None:
            raise ProcessDied(f"{self.name} exited with {self.proc.returncode}:\n{tail(self.log)}")

    def signal(self, sig: int, group: bool = True) -> None:
        """Send ``sig`` to its process group (or to the process alone)."""
        if self.alive:
            assert self.proc is not None
            with contextlib.suppress(ProcessLookupError, PermissionError):
                if group:
                    os.killpg(self.proc.pid, sig)
                else:
                    self.proc.send_signal(sig)

    def wait(self, timeout: float | None = None) -> int | None:
        return None if self.proc is None else self.proc.wait(timeout)

    def stop(self, grace: float = 5.0) -> None:
        """SIGTERM, then SIGKILL after ``grace`` seconds (the whole process group)."""
        if not self.alive:
            return
        self.signal(signal.SIGTERM)
        try:
            self.wait(grace)
        except subprocess.TimeoutExpired:
            self.kill()

    def kill(self) -> None:
        """SIGKILL the process group and reap it."""
        self.signal(signal.SIGKILL)
        if self.proc is not None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(10)


class AgentProcess(Managed):
    """``python -m execbus.agent --listen unix://<workdir>/<name>.sock ...``."""

    def __init__(self, name: str, workdir: Path, env: dict[str, str], *extra: str) -> None:
        self.sock = workdir / f"{name}.sock"
        argv = [sys.executable, "-m", "execbus.agent", "--listen", self.address, *extra]
        super().__init__(name, argv, env, workdir / f"{name}.log")

    @property
    def address(self) -> str:
        return f"unix://{self.sock}"

    def start(self) -> Self:
        with contextlib.suppress(FileNotFoundError):
            self.sock.unlink()  # a killed agent leaves its socket: wait for the new one
        return super().start()

    def listening(self) -> bool:
        if not self.sock.exists():
            return False
        with contextlib.suppress(OSError), socket.socket(socket.AF_UNIX) as s:
            s.connect(str(self.sock))
            return True
        return False

    async def wait_listening(self, timeout: float = 20.0) -> None:
        deadline = time.monotonic() + timeout
        while not self.listening():
            self.check()
            if time.monotonic() > deadline:
                raise TimeoutError(f"{self.name} did not listen:\n{tail(self.log)}")
            await asyncio.sleep(0.05)


class WorkerProcess(Managed):
    """``python -m execbus worker --agent NAME=ADDRESS ... --http-port PORT``."""

    def __init__(
        self, name: str, workdir: Path, env: dict[str, str], agents: dict[str, str], *extra: str
    ) -> None:
        self.http_port = free_port()
        argv = [sys.executable, "-m", "execbus", "worker", "--http-port", str(self.http_port)]
        for agent, address in agents.items():
            argv += ["--agent", f"{agent}={address}"]
        super().__init__(name, [*argv, *extra], env, workdir / f"{name}.log")

    def readyz(self) -> dict[str, object] | None:
        return fetch_readyz(self.http_port)

    def agents(self) -> dict[str, dict[str, object]]:
        """``/readyz``'s agents (each with ``owner``, ``connected``, ``execs``)."""
        doc = self.readyz() or {}
        agents = doc.get("agents")
        if not isinstance(agents, dict):
            return {}
        return {k: v for k, v in agents.items() if isinstance(v, dict)}

    def serving(self) -> set[str]:
        """The agents this worker owns and is connected to."""
        return {k for k, v in self.agents().items() if v.get("owner") and v.get("connected")}


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
                logs = "\n".join(f"{w.name}:\n{tail(w.log)}" for w in live)
                raise TimeoutError(f"agents not served: {sorted(wanted - served)}\n{logs}")
            await asyncio.sleep(0.1)

    def stop(self, grace: float = 5.0) -> None:
        """Stop the workers, then the agents (SIGTERM, then SIGKILL after ``grace``)."""
        for proc in self.all():
            proc.stop(grace)

    def kill(self) -> None:
        for proc in self.all():
            proc.kill()


async def purge(amqp_url: str, namespace: str, agents: Iterable[str]) -> str:
    """Delete every queue and exchange of ``namespace``; a one-line summary of what went."""
    from execbus.cli.purge import purge_namespace

    try:
        async with asyncio.timeout(60):
            report = await purge_namespace(amqp_url, namespace, agents=list(agents))
    except Exception as exc:
        return f"namespace cleanup failed ({exc!r}); run `execbus purge --namespace {namespace}`"
    return report.summary().replace("purged namespace", f"purged namespace {namespace}")
