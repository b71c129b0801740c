"""A local cluster of real agent and worker processes, for scale-out tests and measurements.

Agents listen on Unix sockets in a work directory; workers serve every agent
and expose their readiness on an HTTP port, from which the cluster reads who
owns what.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from execbus.testing.processes import child_env, fetch_readyz, free_port

__all__ = ["Cluster", "ClusterWorker", "fetch_readyz", "is_balanced"]


@dataclass
class ClusterWorker:
    """One worker process."""

    index: int
    proc: subprocess.Popen[bytes]
    http_port: int
    log_path: Path

    def readyz(self) -> dict[str, object] | None:
        return fetch_readyz(self.http_port)

    def owned(self) -> set[str]:
        doc = self.readyz()
        agents = doc.get("agents", {}) if doc else {}
        if not isinstance(agents, dict):
            return set()
        return {n for n, a in agents.items() if isinstance(a, dict) and a.get("owner")}

    @property
    def alive(self) -> bool:
        return self.proc.poll() is None

    def rss_bytes(self) -> int:
        """The worker process's resident memory (0 once it is gone)."""
        return process_rss(self.proc.pid)


@dataclass
class Cluster:
    """Agents and workers under one namespace."""

    amqp_url: str
    namespace: str
    workdir: Path
    agent_names: list[str] = field(default_factory=list)
    agents: list[subprocess.Popen[bytes]] = field(default_factory=list)
    workers: list[ClusterWorker] = field(default_factory=list)
    pools: list[str] = field(default_factory=list)
    # agent name -> the socket of the process serving it (see start_agents)
    sockets: dict[str, Path] = field(default_factory=dict)

    def env(self) -> dict[str, str]:
        return child_env(EXECBUS_AMQP_URL=self.amqp_url, EXECBUS_NAMESPACE=self.namespace)

    def socket_of(self, name: str) -> Path:
        """The Unix socket agent ``name`` is reached at (several names may share one)."""
        return self.sockets.get(name) or self.workdir / f"{name}.sock"

    def start_agents(self, count: int, prefix: str = "a", processes: int | None = None) -> None:
        """Start ``count`` agents and wait until all listen.

        With ``processes``, the ``count`` agent names map round-robin onto that many
        agent processes (ownership is what scale-out measures, not the agents:
        1,000 names need not cost 1,000 processes). Each name still gets its own
        connection, lease and queue.
        """
        first = len(self.agent_names)
        names = [f"{prefix}{i}" for i in range(first, first + count)]
        hosts = [f"{prefix}proc{first + i}" for i in range(processes)] if processes else names
        for host in hosts:
            self._spawn_agent(host)
        for i, name in enumerate(names):
            self.sockets[name] = self.socket_of(hosts[i % len(hosts)])
            self.agent_names.append(name)
        deadline = time.monotonic() + 30
        for host in hosts:
            while not self.socket_of(host).exists():
                if time.monotonic() > deadline:
                    raise TimeoutError(f"agent {host} did not start")
                time.sleep(0.02)

    def _spawn_agent(self, host: str) -> None:
        cmd = [sys.executable, "-m", "execbus.agent", "--listen", f"unix://{self.socket_of(host)}"]
        with open(self.workdir / f"{host}.log", "wb") as log:
            proc = subprocess.Popen(
                cmd, env=self.env(), stdout=log, stderr=log, start_new_session=True
            )
        self.agents.append(proc)

    def start_worker(self, *extra: str) -> ClusterWorker:
        """Start a worker serving every agent of the cluster."""
        index = len(self.workers)
        port = free_port()
        args = [sys.executable, "-m", "execbus", "worker", "--http-port", str(port)]
        for name in self.agent_names:
            args += ["--agent", f"{name}=unix://{self.socket_of(name)}"]
        for pool in self.pools:
            args += ["--pool", pool]
        log_path = self.workdir / f"worker{index}.log"
        with open(log_path, "wb") as log:
            proc = subprocess.Popen(
                [*args, *extra], env=self.env(), stdout=log, stderr=log, start_new_session=True
            )
        worker = ClusterWorker(index, proc, port, log_path)
        self.workers.append(worker)
        return worker

    def live_workers(self) -> list[ClusterWorker]:
        return [w for w in self.workers if w.alive]

    def ownership(self) -> dict[int, set[str]]:
        """worker index -> agents it owns (live workers only)."""
        return {w.index: w.owned() for w in self.live_workers()}

    def wait_balanced(self, timeout: float = 30.0, slack: int = 1) -> dict[int, set[str]]:
        """Wait until every agent has exactly one owner and loads are within bounds."""
        deadline = time.monotonic() + timeout
        owners: dict[int, set[str]] = {}
        while time.monotonic() < deadline:
            owners = self.ownership()
            if is_balanced(owners, len(self.agent_names), slack):
                return owners
            time.sleep(0.1)
        raise TimeoutError(
            f"not balanced after {timeout} s: { {k: len(v) for k, v in owners.items()} }"
        )

    def kill_worker(self, worker: ClusterWorker) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(worker.proc.pid, signal.SIGKILL)
        worker.proc.wait(10)

    def stop(self) -> None:
        for proc in [*(w.proc for w in self.workers), *self.agents]:
            if proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(10)


def process_rss(pid: int) -> int:
    """Resident memory of process ``pid`` in bytes, from /proc (0 when it is gone)."""
    with contextlib.suppress(OSError, ValueError, IndexError):
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0


def is_balanced(owners: dict[int, set[str]], agents: int, slack: int = 1) -> bool:
    """Every agent owned once; each worker between floor(A/W) and ceil(A/W)+slack."""
    if not owners:
        return False
    counts = [len(v) for v in owners.values()]
    all_owned = [a for v in owners.values() for a in v]
    if len(all_owned) != agents or len(set(all_owned)) != agents:
        return False
    low, high = agents // len(owners), -(-agents // len(owners)) + slack
    return all(low <= c <= high for c in counts)
