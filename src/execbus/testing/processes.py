"""Real agent and worker processes for tests, benchmarks and soaks: one harness.

:class:`AgentProcess` runs ``python -m execbus.agent`` (on a Unix socket in a
work directory, or only the listeners it is given), ready once its socket
accepts or, with JSON logs, once it logs ``agent ready``;
:class:`WorkerProcess` runs ``python -m execbus worker`` with its own HTTP port
for ``/readyz`` (:meth:`~WorkerProcess.wait_ready`,
:meth:`~WorkerProcess.wait_owner`). Every child runs in its own session with
its output in a log file. A child can be signalled, terminated (SIGTERM to it
alone), stopped (SIGTERM to its group, then SIGKILL), crashed
(:meth:`~Managed.kill`: SIGKILL to it alone, as a crash would: an agent's
lifeline survives it), ended with its whole group (:meth:`~Managed.kill_group`)
and started again with the same command line (a restart).

:class:`Processes` keeps the agents and workers of one namespace and
:meth:`Processes.kill` ends them all, whatever happened. Two namespace
cleaners: :func:`delete_namespace` (fast, best effort: the test fixtures' per
test) and :func:`purge` (``execbus purge``'s code: thorough, slower).
:func:`free_port`, :func:`child_env` (``src/`` on ``PYTHONPATH``) and
:func:`fetch_readyz` serve the rest of ``execbus.testing``.

Used by the test fixtures (``tests/conftest.py`` and the agent and security
harnesses), ``bench/e2e.py`` and ``bench/chaos.py``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import pwd
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, Self

SRC = Path(__file__).resolve().parents[2]
NAMESPACE_EXCHANGES = ("requests", "events", "dead", "unrouted", "control")


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


def fetch_readyz(port: int) -> dict[str, object] | None:
    """A worker's readiness document (also when it answers 503), or None."""
    url = f"http://127.0.0.1:{port}/readyz"
    try:
        with urllib.request.urlopen(url, timeout=2) as resp:
            body = resp.read()
    except urllib.error.HTTPError as exc:
        body = exc.read()
        exc.close()
    except OSError:
        return None
    doc: dict[str, object] = json.loads(body)
    return doc


class ProcessDied(RuntimeError):
    """A managed process exited when it should have been running."""


class Managed:
    """One child process: its command line, environment and log; restartable.

    ``cwd``: its working directory; ``user``/``group``: the uid and gid to run
    it as (default group: the user's primary group; no supplementary groups;
    root only).
    """

    def __init__(
        self,
        name: str,
        argv: list[str],
        env: dict[str, str],
        log_path: Path,
        *,
        cwd: Path | None = None,
        user: int | None = None,
        group: int | None = None,
    ) -> None:
        self.name = name
        self.argv = argv
        self.env = env
        self.log_path = log_path
        self.cwd = cwd
        self.user = user
        self.group = group
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> Self:
        """Start it (again): a new session, stdin from /dev/null, output appended to the log."""
        credentials: dict[str, Any] = {}
        if self.user is not None:
            gid = self.group if self.group is not None else pwd.getpwuid(self.user).pw_gid
            credentials = {"user": self.user, "group": gid, "extra_groups": []}
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                self.argv,
                env=self.env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=self.cwd,
                start_new_session=True,
                **credentials,
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
            raise ProcessDied(
                f"{self.name} exited with {self.proc.returncode}:\n{tail(self.log_path)}"
            )

    # -- its log -------------------------------------------------------------

    def log_text(self) -> str:
        """The whole log ("" if unreadable)."""
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def log(self, chars: int = 5000) -> str:
        """The end of the log (for assertion messages)."""
        return self.log_text()[-chars:]

    # -- waiting -------------------------------------------------------------

    def wait_for(self, condition: Callable[[], object], what: str, timeout: float) -> None:
        """Block until ``condition()`` holds; :class:`ProcessDied` if the process exits
        meanwhile, :class:`TimeoutError` (with the log's tail) after ``timeout``."""
        deadline = time.monotonic() + timeout
        while not condition():
            self.check()
            if time.monotonic() > deadline:
                raise TimeoutError(f"{self.name}: {what} after {timeout:g} s:\n{self.log()}")
            time.sleep(0.02)

    async def wait_for_async(
        self, condition: Callable[[], object], what: str, timeout: float
    ) -> None:
        """:meth:`wait_for` in a coroutine."""
        deadline = time.monotonic() + timeout
        while not condition():
            self.check()
            if time.monotonic() > deadline:
                raise TimeoutError(f"{self.name}: {what} after {timeout:g} s:\n{self.log()}")
            await asyncio.sleep(0.05)

    # -- ending it -----------------------------------------------------------

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

    def terminate(self, timeout: float = 30.0) -> int:
        """SIGTERM to the process alone; its exit status. One that does not exit within
        ``timeout`` gets SIGKILL, its whole group with it (then the status says so)."""
        assert self.proc is not None, f"{self.name} was never started"
        self.signal(signal.SIGTERM, group=False)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill_group()
            return self.proc.wait()

    def stop(self, grace: float = 5.0) -> None:
        """SIGTERM, then SIGKILL after ``grace`` seconds (the whole process group)."""
        if not self.alive:
            return
        self.signal(signal.SIGTERM)
        try:
            self.wait(grace)
        except subprocess.TimeoutExpired:
            self.kill_group()

    def kill(self) -> None:
        """SIGKILL the process alone, as a crash would, and reap it (its children live on)."""
        self.signal(signal.SIGKILL, group=False)
        if self.proc is not None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(10)

    def kill_group(self) -> None:
        """SIGKILL the process group and reap the process (whatever state it is in)."""
        if self.proc is None:
            return
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(10)


class AgentProcess(Managed):
    """``python -m execbus.agent --listen unix://<workdir>/<name>.sock ...``.

    ``socket_path``: another socket; ``unix=False``: no Unix listener (``extra``
    gives the listeners); ``json_logs``: ``--log-format json``, and ready once
    it logs ``agent ready`` (:meth:`ready_line`, :meth:`port`) instead of once
    its socket accepts; ``python``: another interpreter (the agent supports
    3.9 and later).
    """

    def __init__(
        self,
        name: str,
        workdir: Path,
        env: dict[str, str],
        *extra: str,
        socket_path: Path | None = None,
        unix: bool = True,
        json_logs: bool = False,
        python: str | None = None,
        log_path: Path | None = None,
        cwd: Path | None = None,
        user: int | None = None,
    ) -> None:
        self.sock = socket_path or workdir / f"{name}.sock"
        self.unix = unix
        self.json_logs = json_logs
        argv = [python or sys.executable, "-m", "execbus.agent"]
        if unix:
            argv += ["--listen", self.address]
        if json_logs:
            argv += ["--log-format", "json"]
        log = log_path or workdir / f"{name}.log"
        super().__init__(name, [*argv, *extra], env, log, cwd=cwd, user=user)

    @property
    def socket_path(self) -> Path:
        return self.sock

    @property
    def address(self) -> str:
        return f"unix://{self.sock}"

    def start(self) -> Self:
        if self.unix:
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

    def ready(self) -> bool:
        """Serving: its ``agent ready`` line logged (JSON logs), else its socket accepting."""
        return self.ready_line() is not None if self.json_logs else self.listening()

    def wait_ready(self, timeout: float = 15.0) -> None:
        """Block until :meth:`ready` (fixtures; bench code awaits :meth:`wait_listening`)."""
        self.wait_for(self.ready, "not ready", timeout)

    async def wait_listening(self, timeout: float = 20.0) -> None:
        await self.wait_for_async(self.listening, "did not listen", timeout)

    # -- its JSON log ------------------------------------------------------------

    def log_lines(self) -> list[dict[str, Any]]:
        """The log's JSON lines, decoded (other lines are left out)."""
        lines = []
        for line in self.log_text().splitlines():
            with contextlib.suppress(ValueError):
                entry = json.loads(line)
                if isinstance(entry, dict):
                    lines.append(entry)
        return lines

    def ready_line(self) -> dict[str, Any] | None:
        return next((e for e in self.log_lines() if e.get("msg") == "agent ready"), None)

    @property
    def addresses(self) -> list[str]:
        """The listener addresses of the ``agent ready`` line."""
        ready = self.ready_line()
        assert ready is not None, f"{self.name} has not logged 'agent ready'"
        return list(ready["listen"])

    def port(self, scheme: str) -> int:
        """The port of its ``scheme`` (tcp, tls, http) listener, from ``agent ready``."""
        url = next(u for u in self.addresses if u.startswith(f"{scheme}://"))
        return int(url.rsplit(":", 1)[1])


class WorkerProcess(Managed):
    """``python -m execbus worker --agent NAME=ADDRESS ... --http-port PORT``."""

    def __init__(
        self,
        name: str,
        workdir: Path,
        env: dict[str, str],
        agents: dict[str, str],
        *extra: str,
        log_path: Path | None = None,
        http_port: int | None = None,
        argv: list[str] | None = None,
    ) -> None:
        """``argv``: the whole command line instead (a compose file's, say), which must
        listen on ``http_port``."""
        self.http_port = http_port or free_port()
        if argv is None:
            argv = [sys.executable, "-m", "execbus", "worker", "--http-port", str(self.http_port)]
            for agent, address in agents.items():
                argv += ["--agent", f"{agent}={address}"]
            argv += extra
        self.args = list(extra)
        super().__init__(name, argv, env, log_path or workdir / f"{name}.log")

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

    def connected(self) -> bool:
        """Connected to the broker (``/readyz``: ``broker.connected``)."""
        broker = (self.readyz() or {}).get("broker")
        return isinstance(broker, dict) and bool(broker.get("connected"))

    def wait_ready(self, timeout: float = 15.0) -> None:
        """Block until it is connected to the broker."""
        self.wait_for(self.connected, "not connected to the broker", timeout)

    def wait_owner(self, agent: str, timeout: float = 15.0) -> None:
        """Block until it owns ``agent`` and is connected to it."""
        self.wait_for(lambda: agent in self.serving(), f"does not own {agent!r}", timeout)


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


# -- namespaces ------------------------------------------------------------------


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
